"""The interface every VLM backend implements, and the tags of MMKB-RAG (arXiv 2504.10074).

Tags are read from first-token logits: a tag's score is the softmax over its two tag tokens
(`[Ret]`/`[NoRet]`, `[Rel]`/`[NoRel]`), for an encoder a two-way head over the same input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

RET, NORET, REL, NOREL = "[Ret]", "[NoRet]", "[Rel]", "[NoRel]"
TAG_TOKENS = (RET, NORET, REL, NOREL)


@dataclass
class Document:
    """A retrieved passage with the entity it belongs to (and that entity's reference image)."""

    id: int
    entity_key: str
    entity_name: str
    text: str
    heading: str = ""
    score: float = 0.0
    image: Image.Image | None = None
    image_embedding: np.ndarray | None = None


@dataclass
class SemanticTags:
    """What the VLM says about an image and question, used as retrieval queries."""

    entity: str | None = None  # entity guess, e.g. "Bhutan"
    entity_confidence: float = 0.0
    category: str | None = None  # e.g. "country", "emoji: Food & Drink"
    attributes: list[str] = field(default_factory=list)  # e.g. ["capital"]
    # P(entity kind) for each kind the VLM knows ("country", "emoji": a category's part before ":"),
    # summed over that kind's categories; empty where the backend gives no probabilities.
    kinds: dict[str, float] = field(default_factory=dict)

    def ruled_out_kinds(self, floor: float) -> set[str]:
        """Kinds the VLM knows and gives less than `floor`: a photo it is sure shows a flag rules out
        emoji. A kind it never learnt (a user's own KB) is never ruled out."""
        return {k for k, p in self.kinds.items() if p < floor}

    def queries(self) -> list[str]:
        """Text queries for the index, most specific first."""
        out = []
        if self.entity:
            out.append(" ".join([self.entity, *self.attributes]))
        if self.category or self.attributes:
            out.append(" ".join(filter(None, [self.category, *self.attributes])))
        return out


@runtime_checkable
class VLM(Protocol):
    """Answer, score tags and emit semantic tags, each batched."""

    name: str

    def answer(self, images: list[Image.Image], questions: list[str],
               documents: list[list[Document]] | None = None) -> list[str]:
        """One answer per question, from the image alone or from the documents given."""

    def retrieval_needed(self, images: list[Image.Image], questions: list[str]) -> np.ndarray:
        """P([Ret]) per question: softmax over the [Ret]/[NoRet] first-token logits."""

    def relevance(self, images: list[Image.Image], questions: list[str], documents: list[Document]) -> np.ndarray:
        """P([Rel]) per (image, question, document) triple (SRT)."""

    def consistency(self, image: Image.Image, question: str, documents: list[Document]) -> np.ndarray:
        """MCT: P(consistent) for each document of the kept set, in one pass over the set."""

    def semantic_tags(self, images: list[Image.Image], questions: list[str]) -> list[SemanticTags]:
        """Entity guess, category and attributes per question."""

    def new_entity(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray] | None:
        """RET's image side: (familiarity, whether the image shows an entity the model never trained
        on) per image, or None when the model keeps no memory of its entities."""

    known_entities: frozenset[str] | None  # the entity keys it trained on, where it keeps them (else None)


def two_way(logit_yes: np.ndarray, logit_no: np.ndarray) -> np.ndarray:
    """Softmax over a pair of tag-token logits → probability of the first tag."""
    return 1.0 / (1.0 + np.exp(np.asarray(logit_no, np.float64) - np.asarray(logit_yes, np.float64)))
