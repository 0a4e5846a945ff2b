"""KB-VQA evaluation: run the pipeline over an InfoSeek-format file and score it."""
from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from index.files import atomic_write_text
from index.ingest import image_problem
from rag.kbvqa.datasets import KBVQAExample, image_path
from rag.kbvqa.metrics import evqa_accuracy, evqa_scores, infoseek_scores, score_example, split_group
from rag.pipeline import MMKBRAG, RAGAnswer


def prediction_record(ex: KBVQAExample, out: RAGAnswer, correct: bool) -> dict:
    """One line of the predictions file."""
    return {"data_id": ex.data_id, "prediction": out.answer, "correct": correct, "retrieved": out.retrieved,
            "p_ret": out.p_ret, "familiarity": out.familiarity,
            "unknown_entity": out.unknown_entity, "shared_picture": out.shared_picture,
            "disagreeing_entity": out.disagreeing_entity,
            "confirmed": out.confirmed, "closed_book": out.closed_book,
            "closed_book_probability": out.closed_book_probability, "semantic_tags": asdict(out.tags),
            "retrieved_entities": list(dict.fromkeys(c.entity_key for c in out.candidates)),
            "citations": [{"entity": c.entity_key, "document_id": c.document_id, "relevance": c.relevance,
                           "consistency": c.consistency, "score": round(c.retrieval_score, 4)} for c in out.citations],
            "latency_ms": round(sum(out.timings_ms.values()), 2)}


def evaluate(rag: MMKBRAG, examples: list[KBVQAExample], images_dir: Path, predictions: Path | None = None,
             show_progress: bool = True, metric: str = "infoseek", **overrides) -> dict:
    """Predictions for every example, their scores (`metric` "infoseek": per split and InfoSeek's "All";
    "evqa": E-VQA's exact match, not BEM, per question type), retrieval recall, skip rate and latency.
    Every image is found and decoded before the first question runs (`check_inputs`)."""
    if metric not in ("infoseek", "evqa"):
        raise ValueError(f"unknown metric {metric!r}; choose infoseek or evqa")
    scorer, scores_of = (evqa_accuracy, evqa_scores) if metric == "evqa" else (score_example, infoseek_scores)
    paths = check_inputs(examples, images_dir, predictions)
    records, preds, latencies = [], {}, []
    for ex, path in tqdm(list(zip(examples, paths)), desc="kb-vqa", disable=not show_progress):
        t = time.perf_counter()
        out = rag(path, ex.question, **overrides)
        latencies.append(1000 * (time.perf_counter() - t))
        correct = scorer(out.answer, ex)
        preds[ex.data_id] = out.answer
        rec = prediction_record(ex, out, correct)
        rec["split"] = split_group(ex.split)
        rec["recall"] = ex.entity_key in rec["retrieved_entities"] if ex.entity_key and out.retrieved else None
        records.append(rec)
    scores = scores_of(preds, examples)
    retrieved = [r for r in records if r["retrieved"]]
    with_recall = [r for r in retrieved if r["recall"] is not None]
    seen = [r for r in records if r["split"] == "seen"]
    summary = {
        "scores": scores,
        "per_split": {s: v.get("accuracy") for s, v in scores.get("splits", {}).items()},
        "overall": scores["overall"]["accuracy"],
        "all": scores["all"] if metric == "infoseek" else None,  # E-VQA has no Unseen-Q / Unseen-E
        "retrieval_recall": (sum(r["recall"] for r in with_recall) / len(with_recall)) if with_recall else None,
        "skipped_retrieval": 1 - len(retrieved) / max(1, len(records)),
        "skipped_retrieval_seen": (1 - sum(r["retrieved"] for r in seen) / len(seen)) if seen else None,
        "latency_p50_ms": statistics.median(latencies) if latencies else None,
        "latency_p90_ms": statistics.quantiles(latencies, n=10)[-1] if len(latencies) >= 10 else None,
        "count": len(records),
        "errors": error_sources(records, examples),
    }
    if predictions is not None:
        write_jsonl(records, predictions)
    return summary


def check_inputs(examples: list[KBVQAExample], images_dir: Path, predictions: Path | None = None) -> list[Path]:
    """Each example's image file, once every one exists and decodes (a few ms each, against the
    pipeline's ~100 ms a question) and `predictions` can be a file; else a FileNotFoundError or
    ValueError that names the question and what to fix, before any question runs."""
    if not examples:
        raise ValueError("no questions to evaluate")
    if predictions is not None and Path(predictions).is_dir():
        raise ValueError(f"the predictions path {predictions} is a folder: give a file, e.g. {Path(predictions) / 'predictions.jsonl'}")
    paths = []
    for ex in examples:
        path = image_path(images_dir, ex.image_id)
        if why := image_problem(path):
            raise ValueError(f"question {ex.data_id}: {why}")
        paths.append(path)
    return paths


NO_RETRIEVAL = "answered without retrieval"
NOT_FIRST = "right entity not retrieved first"
READ_WRONG = "right entity first, read wrong"
NO_KB_KEY = "entity not a KB key"
ERROR_CAUSES = (NO_RETRIEVAL, NOT_FIRST, READ_WRONG, NO_KB_KEY)
KB_KEY = re.compile(r"([a-z_]+):[^/\s]+")  # "country:BTN", "emoji:1F600-FE0F"; not a URL or a Wikidata id


def error_sources(records: list[dict], examples: list[KBVQAExample]) -> dict[str, dict[str, int]]:
    """Where the wrong answers come from, per entity kind (the prefix of a KB key: "country", "emoji"):
    the VLM answered alone, the search put another entity first (or found none), or the right entity
    came first and the answer read from it was wrong. `records` are `evaluate`'s, one per example in
    order. A question whose entity is not named by a KB key (E-VQA's Wikipedia URLs, InfoSeek's
    Wikidata ids, none at all) cannot say whether retrieval found it: kind "other", cause NO_KB_KEY
    when it retrieved."""
    if len(records) != len(examples):
        raise ValueError(f"{len(records)} records for {len(examples)} examples: give evaluate's records, in order")
    out: dict[str, dict[str, int]] = {}
    for r, ex in zip(records, examples):
        if r["data_id"] != ex.data_id:
            raise ValueError(f"record {r['data_id']!r} is not example {ex.data_id!r}: give evaluate's records, in order")
        if r["correct"]:
            continue
        kb_key = KB_KEY.fullmatch(ex.entity_key or "")
        if not r["retrieved"]:
            cause = NO_RETRIEVAL
        elif kb_key is None:
            cause = NO_KB_KEY
        elif r["retrieved_entities"][:1] != [ex.entity_key]:
            cause = NOT_FIRST
        else:
            cause = READ_WRONG
        counts = out.setdefault(kb_key.group(1) if kb_key else "other", dict.fromkeys(ERROR_CAUSES, 0))
        counts[cause] += 1
    return out


def errors_markdown(rows: list[tuple[str, dict[str, dict[str, int]]]]) -> str:
    """A table of `error_sources` for each (method name, errors) row, one line per entity kind."""
    causes = [c for c in ERROR_CAUSES if any(e.get(c) for _, errs in rows for e in errs.values())]
    lines = ["| method | entity kind | wrong | " + " | ".join(causes) + " |", "|---|---|---|" + "---|" * len(causes)]
    for name, errs in rows:
        for kind, counts in sorted(errs.items()):
            lines.append(f"| {name} | {kind} | {sum(counts.values())} | "
                         + " | ".join(str(counts.get(c, 0)) for c in causes) + " |")
    return "\n".join(lines) + "\n"


def write_jsonl(records: list[dict], path: Path) -> None:
    """Atomic JSONL write: a temporary file renamed into place (with the usual permissions)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records))
