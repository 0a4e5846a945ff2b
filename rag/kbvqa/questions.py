"""KB-VQA questions about worldkb entities, in InfoSeek form, with the splits the evaluation needs.

Each question type has training phrasings and held-out phrasings (Unseen-Q). Entities are split
by a hash of their key: Unseen-E entities are never seen by the VLM in training; `calibration`
entities are held out of closed-book training so that RET labels ([Ret] when the model's own
closed-book answer is wrong) exist for entities the model does not know.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from index.worldkb import MANIFEST


@dataclass(frozen=True)
class QuestionType:
    name: str
    kind: str  # entity kind it applies to
    heading: str  # the document section that answers it
    train: tuple[str, ...]
    unseen: tuple[str, ...]
    numeric: bool = False
    multi: bool = False


QUESTION_TYPES = [
    QuestionType("capital", "country", "capital",
                 ("What is the capital of this country?", "Which city is the capital of the country with this flag?",
                  "Name the capital city of this country."),
                 ("The country of this flag is governed from which city?",)),
    QuestionType("region", "country", "region",
                 ("Which continent is this country in?", "In which region of the world is the country with this flag?"),
                 ("Where in the world would you find the country this flag represents?",)),
    QuestionType("subregion", "country", "region",
                 ("Which subregion is this country in?", "What part of its continent is the country with this flag in?"),
                 ("Name the subregion the country of this flag belongs to.",)),
    QuestionType("currency", "country", "currencies",
                 ("What is the currency of this country?", "Which currency is used in the country with this flag?"),
                 ("What money do people pay with in the country this flag stands for?",)),
    QuestionType("language", "country", "languages",
                 ("What is the official language of this country?", "Which language is spoken officially in the country with this flag?"),
                 ("People in the country of this flag officially speak what language?",)),
    QuestionType("area", "country", "area",
                 ("What is the area of this country in square kilometres?", "How large is the country with this flag in square kilometres?"),
                 ("How many square kilometres does the country of this flag cover?",), numeric=True),
    QuestionType("population", "country", "population",
                 ("What is the population of this country?", "How many people live in the country with this flag?"),
                 ("How many inhabitants does the country of this flag have?",), numeric=True),
    QuestionType("borders", "country", "borders",
                 ("Which countries border this country?", "Name the neighbouring countries of the country with this flag."),
                 ("The country of this flag shares land borders with which countries?",), multi=True),
    QuestionType("calling_code", "country", "calling code",
                 ("What is the international calling code of this country?", "Which phone code do you dial for the country with this flag?"),
                 ("To phone the country of this flag from abroad, which code do you dial?",)),
    QuestionType("demonym", "country", "demonym",
                 ("What are people from this country called?", "What is the demonym of the country with this flag?"),
                 ("How do you call a person from the country this flag represents?",)),
    QuestionType("tld", "country", "top-level domain",
                 ("What is the internet top-level domain of this country?", "Which web domain ending belongs to the country with this flag?"),
                 ("Websites of the country of this flag end in which domain?",)),
    QuestionType("emoji_name", "emoji", "name",
                 ("What is the name of this emoji?", "What is this emoji called?"),
                 ("Which emoji is shown in this picture?",)),
    QuestionType("emoji_category", "emoji", "category",
                 ("Which category does this emoji belong to?", "In which emoji category is this symbol?"),
                 ("Under which group of the emoji keyboard would you find this one?",)),
    QuestionType("emoji_subcategory", "emoji", "category",
                 ("What is the subcategory of this emoji?", "Which emoji subcategory is this symbol in?"),
                 ("What is the finer category of this emoji?",)),
    QuestionType("emoji_version", "emoji", "version",
                 ("In which Emoji version was this emoji added?", "Which Emoji version introduced this symbol?"),
                 ("Since which Emoji version does this emoji exist?",)),
    QuestionType("emoji_codepoint", "emoji", "name",
                 ("What are the code points of this emoji?", "Which Unicode code points encode this emoji?"),
                 ("How is this emoji written in Unicode code points?",)),
]
TYPES = {q.name: q for q in QUESTION_TYPES}


def _bucket(key: str, salt: str) -> float:
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def entity_split(key: str) -> str:
    """`unseen_entity` (20%), `calibration` (15%) or `train` — fixed by the key."""
    b = _bucket(key, "mmkb-vlm")
    return "unseen_entity" if b < 0.20 else "calibration" if b < 0.35 else "train"


def answers_for(qtype: QuestionType, facts: dict[str, Any], record: dict[str, Any]) -> tuple[list[str], list] | None:
    """(accepted answers, InfoSeek answer_eval) or None when the entity lacks the fact."""
    f = facts
    match qtype.name:
        case "capital" | "language" | "currency" | "calling_code" | "tld":
            field_ = {"capital": "capital", "language": "languages", "currency": "currencies",
                      "calling_code": "calling_codes", "tld": "tld"}[qtype.name]
            values = f.get(field_) or []
            return (values, values) if values else None
        case "region" | "subregion" | "demonym":
            v = f.get(qtype.name)
            return ([v], [v]) if v else None
        case "area" | "population":
            v = f.get(qtype.name)
            if not v:
                return None
            return [str(int(v)) if float(v).is_integer() else str(v)], [
                {"wikidata": float(v), "range": [0.9 * float(v), 1.1 * float(v)]}]
        case "borders":  # one answer whose required parts are joined by "&&" (E-VQA multi-answer form)
            v = f.get("borders") or []
            return (["&&".join(v)], ["&&".join(v)]) if v else None
        case "emoji_name":
            names = [f["name"], *record.get("aliases", [])]
            return names, names
        case "emoji_category" | "emoji_subcategory" | "emoji_version":
            v = f.get(qtype.name.removeprefix("emoji_"))
            return ([v], [v]) if v else None
        case "emoji_codepoint":
            return [f["code_points"]], [f["code_points"]]
    return None


@dataclass
class Question:
    data_id: str
    entity_key: str
    entity_name: str
    question_type: str
    question: str
    answers: list[str]
    answer_eval: list
    phrasing: str  # "train" or "unseen"
    entity_split: str
    multi_answer: bool = False
    extra: dict = field(default_factory=dict)


def load_records(manifest: Path = MANIFEST) -> list[dict[str, Any]]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]


def iter_questions(records: list[dict[str, Any]], phrasings: str = "all") -> Iterator[Question]:
    """Every (entity, question type, phrasing) the KB supports."""
    for rec in records:
        facts = rec.get("facts") or {}
        for qt in QUESTION_TYPES:
            if qt.kind != rec["kind"]:
                continue
            ans = answers_for(qt, facts, rec)
            if ans is None:
                continue
            pools = [("train", qt.train), ("unseen", qt.unseen)]
            for phrasing, texts in pools:
                if phrasings not in ("all", phrasing):
                    continue
                for i, text in enumerate(texts):
                    yield Question(f"{rec['key']}|{qt.name}|{phrasing}{i}", rec["key"], rec["name"], qt.name, text,
                                   ans[0], ans[1], phrasing, entity_split(rec["key"]), qt.multi)


def answer_sentence(rec: dict[str, Any], qtype: QuestionType) -> str | None:
    """The document section that answers a question type for an entity."""
    return next((s["text"] for s in rec["sections"] if s["heading"] == qtype.heading), None)
