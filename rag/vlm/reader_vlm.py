"""The VLM interface over mmkb-reader: batched answers, tag scores and semantic tags."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rag.vlm.base import Document, SemanticTags
from rag.vlm.inputs import best_span, make_batch, question_problem
from rag.vlm.reader import DIMG, DOC, IMG, MMKBReader, load_reader
from rag.vlm.ret_calibration import RetCalibration

ImageLike = Image.Image | np.ndarray


class ReaderVLM:
    """mmkb-reader behind `rag.vlm.base.VLM`; images may be PIL images or precomputed embeddings."""

    rank_penalty = 1.0  # see read()

    def __init__(self, model: MMKBReader, tokenizer, image_embedder=None, name: str = "mmkb-reader",
                 memory: tuple[np.ndarray, float, frozenset[str] | None] | None = None,
                 ret_calibration: RetCalibration | None = None) -> None:
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.cfg = model.cfg
        # The entities it trained on, as image embeddings, and the familiarity below which an image
        # shows an entity new to it, and those entities' keys (rag.vlm.familiarity); None: an export
        # made before it existed.
        self.memory, self.familiarity_threshold, self.known_entities = memory if memory else (None, None, None)
        # RET read together with the closed-book answer's probability (rag.vlm.ret_calibration); None:
        # the head alone (an export made before it existed).
        self.ret_calibration = ret_calibration
        self._image_embedder = image_embedder
        self._skip = {tokenizer.convert_tokens_to_ids(t) for t in (IMG, DIMG, DOC)} | {
            tokenizer.sep_token_id, tokenizer.cls_token_id, tokenizer.pad_token_id}

    @classmethod
    def load(cls, path: Path | str, device: str = "cpu") -> ReaderVLM:
        from rag.vlm import familiarity, ret_calibration

        model, tokenizer = load_reader(Path(path), device)
        return cls(model, tokenizer, name=str(path), memory=familiarity.load(Path(path)),
                   ret_calibration=ret_calibration.load(Path(path)))

    def question_problem(self, question: str) -> str | None:
        """Why this reader cannot take a question (longer than its window allows), or None."""
        return question_problem(self.tokenizer, self.cfg, question)

    def familiarity(self, images) -> np.ndarray | None:
        """How close each image is to the entities this reader trained on (highest cosine), or None
        without a memory."""
        if self.memory is None:
            return None
        from rag.vlm.familiarity import familiarity

        return familiarity(self.embed_images(images), self.memory)

    def new_entity(self, images) -> tuple[np.ndarray, np.ndarray] | None:
        """(familiarity, whether it is below the calibrated threshold) per image: RET's image side."""
        scores = self.familiarity(images)
        return None if scores is None else (scores, scores < self.familiarity_threshold)

    @property
    def image_embedder(self):
        if self._image_embedder is None:
            from index.embedders import load_image_embedder

            from index.config import get_settings

            self._image_embedder = load_image_embedder(self.cfg.image_embedder, get_settings().device)
        return self._image_embedder

    def embed_images(self, images: list[ImageLike]) -> np.ndarray:
        """Image embeddings; rows already given as vectors pass through."""
        if all(isinstance(im, np.ndarray) for im in images):
            return np.stack(images).astype(np.float32)
        pil = [i for i, im in enumerate(images) if not isinstance(im, np.ndarray)]
        out = np.zeros((len(images), self.cfg.image_dim), np.float32)
        if pil:
            out[pil] = self.image_embedder.encode_images([images[i] for i in pil])
        for i, im in enumerate(images):
            if isinstance(im, np.ndarray):
                out[i] = im
        return out

    @staticmethod
    def _doc_vector(doc: Document, dim: int) -> np.ndarray:
        return doc.image_embedding if doc.image_embedding is not None else np.zeros(dim, np.float32)

    @torch.inference_mode()
    def _hidden(self, questions, images, docs=None, mode="single"):
        dvecs = None if docs is None else [[self._doc_vector(d, self.cfg.image_dim) for d in row] for row in docs]
        texts = None if docs is None else [[d.text for d in row] for row in docs]
        batch = make_batch(self.tokenizer, self.cfg, questions, self.embed_images(images), texts, dvecs, mode)
        return batch, self.model.encode(**batch.model_inputs())

    @torch.inference_mode()
    def answer(self, images, questions, documents=None) -> list[str]:
        if documents is None:
            _, h = self._hidden(questions, images)
            idx = self.model.closed_book(h)["answer"].argmax(-1).tolist()
            return [self.cfg.answers[i] if self.cfg.answers else "" for i in idx]
        out = []
        for image, question, docs in zip(images, questions, documents):
            out.append(self.read(image, question, docs)[0] if docs else "")
        return out

    @torch.inference_mode()
    def read(self, image: ImageLike, question: str, docs: list[Document]) -> tuple[str, float, int]:
        """The best answer span over the documents: (answer, span score, index of the document it came from).
        Documents come in the caller's order of preference (retrieval, then SRT): each place down costs
        `rank_penalty` in span-logit units, since the span head tells sections apart far better than it
        tells look-alike entities apart (worldkb bench, naive RAG: 0.23 without the penalty, 0.59 with 1.0)."""
        batch, h = self._hidden([question] * len(docs), [image] * len(docs), [[d] for d in docs])
        start, end = (t.float().numpy() for t in self.model.span_logits(h))
        best = ("", -1e9, -1)
        for i in range(len(docs)):
            text, score = best_span(batch, i, start[i], end[i], self.cfg.max_answer_tokens, self._skip)
            score -= self.rank_penalty * i
            if text and score > best[1]:
                best = (text, score, i)
        return best

    def _p_ret(self, h: torch.Tensor, answer_prob: torch.Tensor, calibrated: bool = True,
               head_logit: bool = False) -> np.ndarray:
        """P([Ret]): the softmax over the RET head's two tag logits, read with the closed-book answer's
        probability where the export has a calibration (`calibrated=False`: the head alone;
        `head_logit`: the head's l[Ret] − l[NoRet] itself)."""
        logits = self.model.ret_logits(h).float()
        diff = logits[:, 0] - logits[:, 1]  # softmax over the pair = sigmoid of the difference
        if head_logit:
            return diff.numpy()
        if calibrated and self.ret_calibration is not None:
            return self.ret_calibration.p_ret(diff.numpy(), answer_prob.float().numpy())
        return torch.sigmoid(diff).numpy()

    @torch.inference_mode()
    def retrieval_needed(self, images, questions, calibrated: bool = True) -> np.ndarray:
        _, h = self._hidden(questions, images)
        conf = torch.softmax(self.model.closed_book(h)["answer"], -1).max(-1).values
        return self._p_ret(h, conf, calibrated)

    @torch.inference_mode()
    def relevance(self, images, questions, documents: list[Document]) -> np.ndarray:
        _, h = self._hidden(questions, images, [[d] for d in documents])
        return torch.softmax(self.model.rel_logits(h), -1)[:, 0].numpy()

    @torch.inference_mode()
    def consistency(self, image, question, documents: list[Document]) -> np.ndarray:
        batch, h = self._hidden([question], [image], [documents], mode="set")
        logits = self.model.mct_logits(h, batch.input_ids)
        p = torch.softmax(logits, -1)[:, 0].numpy()
        return np.concatenate([p, np.full(len(documents) - len(p), 0.5)]) if len(p) < len(documents) else p

    @torch.inference_mode()
    def inspect(self, images, questions, calibrated: bool = True,
                ret_head_logit: bool = False) -> tuple[list[str], np.ndarray, np.ndarray, list[SemanticTags]]:
        """Closed-book answers, their probabilities, P([Ret]) (see `_p_ret` for the two flags) and
        semantic tags from one pass over the image and question."""
        _, h = self._hidden(questions, images)
        conf, idx = torch.softmax(self.model.closed_book(h)["answer"], -1).max(-1)
        answers = [self.cfg.answers[i] for i in idx.tolist()]
        p_ret = self._p_ret(h, conf, calibrated, ret_head_logit)
        return answers, conf.float().numpy(), p_ret, self._tags(h, len(questions))

    @torch.inference_mode()
    def semantic_tags(self, images, questions) -> list[SemanticTags]:
        _, h = self._hidden(questions, images)
        return self._tags(h, len(questions))

    def _tags(self, h: torch.Tensor, n: int) -> list[SemanticTags]:
        heads = {k: torch.softmax(v, -1) for k, v in self.model.closed_book(h).items()}
        kind_of = [c.split(":")[0].strip() for c in self.cfg.categories or []]
        out = []
        for i in range(n):
            conf, e = heads["entity"][i].max(-1)
            cat = self.cfg.categories[int(heads["category"][i].argmax())] if self.cfg.categories else None
            attr = self.cfg.attributes[int(heads["attribute"][i].argmax())] if self.cfg.attributes else None
            kinds: dict[str, float] = {}
            for kind, p in zip(kind_of, heads["category"][i].tolist()):
                kinds[kind] = kinds.get(kind, 0.0) + p
            out.append(SemanticTags(entity=self.cfg.entities[int(e)] if self.cfg.entities else None,
                                    entity_confidence=float(conf), category=cat,
                                    attributes=[attr.replace("_", " ")] if attr else [], kinds=kinds))
        return out
