"""KB-VQA evaluation: run the pipeline over an InfoSeek-format file and score it."""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from rag.kbvqa.datasets import KBVQAExample, image_path
from rag.kbvqa.metrics import infoseek_scores, score_example, split_group
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
             show_progress: bool = True, **overrides) -> dict:
    """Predictions for every example, InfoSeek scores, retrieval recall, skip rate and latency."""
    records, preds, latencies = [], {}, []
    for ex in tqdm(examples, desc="kb-vqa", disable=not show_progress):
        t = time.perf_counter()
        out = rag(image_path(images_dir, ex.image_id), ex.question, **overrides)
        latencies.append(1000 * (time.perf_counter() - t))
        correct = score_example(out.answer, ex)
        preds[ex.data_id] = out.answer
        rec = prediction_record(ex, out, correct)
        rec["split"] = split_group(ex.split)
        rec["recall"] = ex.entity_key in rec["retrieved_entities"] if ex.entity_key and out.retrieved else None
        records.append(rec)
    scores = infoseek_scores(preds, examples)
    retrieved = [r for r in records if r["retrieved"]]
    with_recall = [r for r in retrieved if r["recall"] is not None]
    seen = [r for r in records if r["split"] == "seen"]
    summary = {
        "scores": scores,
        "per_split": {s: v.get("accuracy") for s, v in scores["splits"].items()},
        "overall": scores["overall"]["accuracy"],
        "all": scores["all"],
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


ERROR_CAUSES = ("answered without retrieval", "right entity not retrieved first", "right entity first, read wrong",
                "no entity key")


def error_sources(records: list[dict], examples: list[KBVQAExample]) -> dict[str, dict[str, int]]:
    """Where the wrong answers come from, per entity kind ("country", "emoji"; the key's prefix):
    the VLM answered alone, the search put another entity first (or never found it), or the right
    entity came first and the answer read from it was wrong. Examples without an entity key (E-VQA,
    most InfoSeek files) count under "no entity key"."""
    by_id = {ex.data_id: ex for ex in examples}
    out: dict[str, dict[str, int]] = {}
    for r in records:
        if r["correct"]:
            continue
        key = by_id[r["data_id"]].entity_key
        kind = key.split(":", 1)[0] if key and ":" in key else "all"
        if not r["retrieved"]:
            cause = ERROR_CAUSES[0]
        elif not key:
            cause = ERROR_CAUSES[3]
        elif r["retrieved_entities"][:1] != [key]:
            cause = ERROR_CAUSES[1]
        else:
            cause = ERROR_CAUSES[2]
        counts = out.setdefault(kind, {c: 0 for c in ERROR_CAUSES})
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
    """Atomic JSONL write: a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
