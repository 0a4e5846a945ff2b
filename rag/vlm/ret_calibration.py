"""RET's second witness: the closed-book answer's own probability, read together with the RET head.

RET's tag ([Ret]/[NoRet], MMKB-RAG arXiv 2504.10074) is a two-way head trained on self-labels: [NoRet]
where the reader's closed-book answer was right. On real query images it ranks those answers less well
than the closed-book head's probability for its own answer does (worldkb KB-VQA, the reader shipped at
2026-11-27: AUROC for "the closed-book answer is right" on seen-entity questions, dev set / benchmark,
RET head 0.79 / 0.84, closed-book probability 0.95 / 0.97), so the shipped RET tag reads both:

    logit P([Ret]) = a · (l[Ret] − l[NoRet]) + b · logit(p_answer) + c

— still a softmax over the two tag logits, the head's pair rescaled and shifted by how sure the
model is of its closed-book answer. (a, b, c) are fitted by logistic regression on self-labels made
as the training's are (questions about entities whose facts the reader learnt and about calibration
entities it never learnt, half each where there are enough; label = its own closed-book answer was
wrong), on query views drawn afresh: the RET head trained on other views of the same entities and
questions, so it is somewhat favoured here, and the fit is kept only if it ranks these self-labels
at least as well as the head alone and a surer closed-book answer means less retrieval.

Saved beside an mmkb-reader export as `ret_calibration.json`; an export without it reads the head
alone. `python -m rag.vlm.ret_calibration EXPORT` makes it for an export from its training data.
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FILE = "ret_calibration.json"


@dataclass(frozen=True)
class RetCalibration:
    head: float  # a: weight of the RET head's logit difference
    closed_book: float  # b: weight of logit(closed-book answer probability)
    bias: float  # c

    def p_ret(self, head_logit: np.ndarray, answer_prob: np.ndarray) -> np.ndarray:
        """P([Ret]) from the head's logit difference l[Ret] − l[NoRet] and the closed-book probability."""
        z = self.head * np.asarray(head_logit, np.float64) + self.closed_book * logit(answer_prob) + self.bias
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def fit(head_logit: np.ndarray, answer_prob: np.ndarray, retrieve: np.ndarray, l2: float = 1e-3,
        steps: int = 50) -> RetCalibration:
    """Logistic regression of the self-label (1 = [Ret]: the closed-book answer was wrong) on the two
    witnesses: Newton's method on the mean log-loss with a small L2 on the weights (three parameters,
    so exact steps are cheap and do not depend on the inputs' scale)."""
    y = np.asarray(retrieve, np.float64)
    if y.min() == y.max():
        raise ValueError("fitting RET's calibration needs questions answered both right and wrong closed-book")
    x = np.stack([np.asarray(head_logit, np.float64), logit(answer_prob), np.ones(len(y))], 1)
    ridge = np.diag([l2, l2, 0.0])
    w = np.zeros(3)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        grad = x.T @ (p - y) / len(y) + ridge @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(y) + ridge + 1e-9 * np.eye(3)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return RetCalibration(*(round(float(v), 4) for v in w))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive outranks a negative (ties count half)."""
    s, pos = np.asarray(scores, np.float64), np.asarray(positive, bool)
    a, b = s[pos], s[~pos]
    if not len(a) or not len(b):
        return float("nan")
    return float((a[:, None] > b[None]).mean() + 0.5 * (a[:, None] == b[None]).mean())


def self_labels(vlm, questions, records: dict[str, dict], n: int = 3000, seed: int = 0,
                drawn_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(head logit, closed-book probability, 1 where the closed-book answer is wrong) for `n`
    questions, half about calibration entities and half about entities whose facts the reader learnt,
    each asked about a fresh query view of one of its entity's images."""
    from tqdm import tqdm

    from index.clip.augment import query_view
    from index.clip.data import load_image
    from index.embedders import open_rgb
    from index.worldkb import DATA_DIR
    from rag.vlm.train import is_correct

    rng, nrng = random.Random(seed), np.random.default_rng([seed, 2])  # not the training's view stream
    calibration = [q for q in questions if q.entity_split == "calibration" and records[q.entity_key]["images"]]
    known = [q for q in questions if q.entity_split == "train" and records[q.entity_key]["images"]]
    pool = rng.sample(calibration, min(len(calibration), n // 2)) + rng.sample(known, min(len(known), n - n // 2))
    if not pool:
        raise ValueError("no training questions with images to self-label for RET's calibration")
    heads, probs, wrong = [], [], []
    for i in tqdm(range(0, len(pool), 64), desc="RET calibration: self-labelling"):
        batch = pool[i:i + 64]
        views = [open_rgb(query_view(load_image(DATA_DIR / rng.choice(records[q.entity_key]["images"])["path"]),
                                     nrng, drawn_fraction)) for q in batch]
        answers, conf, head, _ = vlm.inspect(views, [q.question for q in batch], ret_head_logit=True)
        heads.extend(head.tolist())
        probs.extend(conf.tolist())
        wrong.extend(0 if is_correct(a, q) else 1 for a, q in zip(answers, batch))
    return np.asarray(heads), np.asarray(probs), np.asarray(wrong)


def save(export: Path, calibration: RetCalibration, stats: dict) -> Path:
    from index.files import atomic_write_text

    return atomic_write_text(Path(export) / FILE, json.dumps({**asdict(calibration), "stats": stats}, indent=1))


def load(export: Path) -> RetCalibration | None:
    """The calibration saved beside an export, or None when it has none."""
    path = Path(export) / FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return RetCalibration(float(data["head"]), float(data["closed_book"]), float(data["bias"]))


MIN_PER_LABEL = 20  # self-labels of each kind below which a fit says nothing


def build(vlm, questions, records: dict[str, dict], n: int = 3000, seed: int = 0,
          drawn_fraction: float = 0.25) -> tuple[RetCalibration, dict]:
    """Fit the calibration for a loaded reader (labelling reads its RET head alone, whatever
    calibration it already has) and say how well each witness ranks the self-labels. Raises
    ValueError, saying why, when the fit is not one to ship: too few right or wrong closed-book
    answers to fit, a surer closed-book answer asking for more retrieval, or a ranking of the
    self-labels worse than the head's alone."""
    head, prob, wrong = self_labels(vlm, questions, records, n, seed, drawn_fraction)
    right = wrong == 0
    if min(right.sum(), (~right).sum()) < MIN_PER_LABEL:
        raise ValueError(f"{int(right.sum())} closed-book answers right and {int((~right).sum())} wrong: "
                         f"fitting RET's calibration needs at least {MIN_PER_LABEL} of each")
    cal = fit(head, prob, wrong)
    stats = {"questions": int(len(wrong)), "closed_book_right": round(float(right.mean()), 3),
             "auroc_head": round(auroc(-head, right), 3), "auroc_closed_book": round(auroc(prob, right), 3),
             "auroc_calibrated": round(auroc(-cal.p_ret(head, prob), right), 3), "seed": seed}
    if cal.closed_book >= 0:
        raise ValueError(f"the fitted calibration {cal} retrieves more the surer the closed-book answer is")
    if stats["auroc_calibrated"] < stats["auroc_head"]:
        raise ValueError(f"the fitted calibration ranks the self-labels worse than the RET head alone ({stats})")
    return cal, stats


def for_export(export: Path, n: int = 3000) -> dict:
    """Make `ret_calibration.json` for an mmkb-reader export from its training data, and record it in
    the export's `training.json`."""
    from index.files import atomic_write_text
    from rag.vlm.reader_vlm import ReaderVLM
    from rag.vlm.train import Trainer, export_setup

    export = Path(export)
    card, cfg = export_setup(export)
    records, questions = Trainer.questions(cfg)
    vlm = ReaderVLM.load(export)
    cal, stats = build(vlm, questions, {r["key"]: r for r in records}, n, cfg.seed, cfg.drawn_fraction)
    save(export, cal, stats)
    card["ret_calibration"] = {**asdict(cal), **stats}
    atomic_write_text(export / "training.json", json.dumps(card, indent=1, default=str))
    return card["ret_calibration"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rag.vlm.ret_calibration", description=for_export.__doc__)
    p.add_argument("export", type=Path)
    p.add_argument("--questions", type=int, default=3000, help="self-labelled questions to fit on")
    args = p.parse_args(argv)
    try:
        print(for_export(args.export, args.questions))
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
