"""Token batches for mmkb-reader: query image tokens, question, and none, one or a set of documents."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rag.vlm.reader import DIMG, DOC, IMG, ReaderConfig

DOC_PREFIX = f"{DIMG} "
MIN_DOCUMENT_TOKENS = 64  # a question may take the reader's window up to what a document needs


def longest_question(cfg: ReaderConfig) -> int:
    """The most word pieces a question may have: the window less the image tokens, the special tokens
    ([CLS] and two [SEP]) and room for a document."""
    return cfg.max_len - cfg.image_tokens - 3 - MIN_DOCUMENT_TOKENS


@dataclass
class ReaderBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    image: torch.Tensor  # (B, image_dim)
    doc_images: torch.Tensor | None  # (B, n_docs, image_dim)
    offsets: np.ndarray  # (B, L, 2) character offsets into the second text
    second: np.ndarray  # (B, L) True where a token belongs to the second text (documents)
    second_texts: list[str]

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "token_type_ids": self.token_type_ids, "image": self.image, "doc_images": self.doc_images}


def question_problem(tokenizer, cfg: ReaderConfig, question: str) -> str | None:
    """Why the reader cannot take a question (too many word pieces for its window), or None."""
    limit = longest_question(cfg)
    if (n := len(tokenizer.tokenize(question))) <= limit:
        return None
    return (f"the question is {n} word pieces long; the reader takes at most {limit} (its window of "
            f"{cfg.max_len} also holds the image and the documents): ask it in fewer words")


def make_batch(tokenizer, cfg: ReaderConfig, questions: list[str], images: np.ndarray,
               docs: list[list[str]] | None = None, doc_images: list[list[np.ndarray]] | None = None,
               mode: str = "single") -> ReaderBatch:
    """mode "single": one document per question (docs[i] has one item); "set": all docs in one pass."""
    for q in questions:
        if why := question_problem(tokenizer, cfg, q):
            raise ValueError(why)
    first = [" ".join([IMG] * cfg.image_tokens) + " " + q for q in questions]
    if docs is None:
        second = None
    elif mode == "single":
        second = [DOC_PREFIX + d[0] for d in docs]
    else:
        second = [" ".join(f"{DOC} {DOC_PREFIX}{t}" for t in d) for d in docs]
    enc = tokenizer(first, second, truncation="only_second" if second else True, max_length=cfg.max_len,
                    padding=True, return_offsets_mapping=True, return_tensors="np")
    ids = torch.as_tensor(enc["input_ids"])
    seq = np.array([[s == 1 for s in enc.sequence_ids(i)] for i in range(len(first))])
    dimgs = None
    if docs is not None:
        n = max(len(d) for d in docs)
        dimgs = torch.zeros(len(docs), n, cfg.image_dim)
        for i, row in enumerate(doc_images or []):
            for j, v in enumerate(row):
                if v is not None:
                    dimgs[i, j] = torch.as_tensor(np.asarray(v, np.float32))
        present = (ids == tokenizer.convert_tokens_to_ids(DIMG)).sum(1)
        keep = int(present.max()) if len(present) else 0
        dimgs = dimgs[:, :max(keep, 1)]
    return ReaderBatch(ids, torch.as_tensor(enc["attention_mask"]), torch.as_tensor(enc["token_type_ids"]),
                       torch.as_tensor(np.asarray(images, np.float32)), dimgs, enc["offset_mapping"], seq,
                       second or [""] * len(first))


def span_targets(batch: ReaderBatch, answer_chars: list[tuple[int, int] | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token start/end of each answer's character span in the second text; 0 ([CLS]) where there is none."""
    starts, ends = [], []
    for i, span in enumerate(answer_chars):
        s = e = 0
        if span is not None:
            a, b = span
            toks = [t for t in range(len(batch.second[i])) if batch.second[i][t]]
            inside = [t for t in toks if batch.offsets[i][t][0] < b and batch.offsets[i][t][1] > a]
            if inside:
                s, e = inside[0], inside[-1]
        starts.append(s)
        ends.append(e)
    return torch.tensor(starts), torch.tensor(ends)


def best_span(batch: ReaderBatch, i: int, start: np.ndarray, end: np.ndarray, max_tokens: int,
              skip_ids: set[int]) -> tuple[str, float]:
    """The highest-scoring answer span in row i's documents and its score minus the no-answer score."""
    ids = batch.input_ids[i].tolist()
    cand = [t for t in range(len(ids)) if batch.second[i][t] and ids[t] not in skip_ids]
    if not cand:
        return "", -1e9
    s_sorted = sorted(cand, key=lambda t: -start[t])[:20]
    e_sorted = sorted(cand, key=lambda t: -end[t])[:20]
    best, score = (0, 0), -1e9
    for s in s_sorted:
        for e in e_sorted:
            if s <= e < s + max_tokens and start[s] + end[e] > score:
                best, score = (s, e), start[s] + end[e]
    a, b = batch.offsets[i][best[0]][0], batch.offsets[i][best[1]][1]
    null = start[0] + end[0]
    return batch.second_texts[i][a:b].strip(" ."), float(score - null)
