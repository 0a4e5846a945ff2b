"""KB-VQA evaluation: run the pipeline over an InfoSeek-format file and score it."""
from __future__ import annotations

import html
import json
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from index.files import atomic_write_text, html_page, thumbnail_url
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
             show_progress: bool = True, metric: str = "infoseek", page: Path | None = None, **overrides) -> dict:
    """Predictions for every example, their scores (`metric` "infoseek": per split and InfoSeek's "All";
    "evqa": E-VQA's exact match, not BEM, per question type), retrieval recall, skip rate and latency.
    Every image is found and decoded before the first question runs (`check_inputs`). With `page`, also
    a page of the questions, wrong answers first (`evaluation_page`)."""
    if metric not in ("infoseek", "evqa"):
        raise ValueError(f"unknown metric {metric!r}; choose infoseek or evqa")
    scorer, scores_of = (evqa_accuracy, evqa_scores) if metric == "evqa" else (score_example, infoseek_scores)
    paths = check_inputs(examples, images_dir, predictions, page, vlm=getattr(rag, "vlm", None))
    gamma = getattr(getattr(rag, "config", None), "gamma", 0.5)
    records, preds, latencies = [], {}, []
    for ex, path in tqdm(list(zip(examples, paths)), desc="kb-vqa", disable=not show_progress):
        t = time.perf_counter()
        out = rag(path, ex.question, **overrides)
        latencies.append(1000 * (time.perf_counter() - t))
        correct = scorer(out.answer, ex)
        preds[ex.data_id] = out.answer
        rec = prediction_record(ex, out, correct)
        rec["ret_reason"] = out.image_side_reason(overrides.get("gamma", gamma))
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
    if page is not None:
        def entity_image(keys: Sequence[str]) -> dict[str, Path]:
            return {k: images[0][1] for k, images in rag.reference.store.entity_images(keys).items() if images}

        evaluation_page(summary, records, examples, paths, page, entity_image, metric)
    return summary


def check_inputs(examples: list[KBVQAExample], images_dir: Path, predictions: Path | None = None,
                 page: Path | None = None, vlm=None) -> list[Path]:
    """Each example's image file, once every one exists and decodes (a few ms each, against the
    pipeline's ~100 ms a question), `vlm` (when it can say) takes every question, and `predictions`
    and `page` can be files; else a FileNotFoundError or ValueError that names the question and what
    to fix, before any question runs."""
    if not examples:
        raise ValueError("no questions to evaluate")
    if predictions is not None:
        check_writable(predictions, "predictions", "predictions.jsonl")
    if page is not None:
        if predictions is not None and Path(page).resolve() == Path(predictions).resolve():
            raise ValueError(f"the page and the predictions are both {page}: give the page another path")
        check_writable(page, "page", "kbvqa.html")
    paths = []
    question_problem = getattr(vlm, "question_problem", lambda question: None)  # the hf backend's window is long
    for ex in examples:
        try:
            path = image_path(images_dir, ex.image_id)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"question {ex.data_id}: {err}") from None
        if why := image_problem(path) or question_problem(ex.question):
            raise ValueError(f"question {ex.data_id}: {why}")
        paths.append(path)
    return paths


def check_writable(path: Path, what: str, example: str) -> None:
    """A ValueError unless a file can be written at `path` (its folders made as needed): not a folder
    itself, and its nearest existing folder is a writable folder, not a file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"the {what} path {path} is a folder: give a file, e.g. {path / example}")
    nearest = next(p for p in path.absolute().parents if p.exists())
    if not nearest.is_dir():
        raise ValueError(f"the {what} path {path} cannot be made: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ValueError(f"the {what} path {path} cannot be written: {nearest} is not writable")


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
        if (found := error_cause(r, ex)) is not None:
            kind, cause = found
            out.setdefault(kind, dict.fromkeys(ERROR_CAUSES, 0))[cause] += 1
    return out


def metric_rows(summary: dict, metric: str = "infoseek") -> list[tuple[str, float | None, int | None]]:
    """(label, accuracy, count) rows of `evaluate`'s metric table, as `mmkb eval kbvqa` prints it and
    its page shows it: per split (InfoSeek) or question type (E-VQA, exact match), overall, and
    InfoSeek's "All"."""
    scores = summary["scores"]
    groups = ({**scores["question_types"], "single-hop (all but 2_hop)": scores["single_hop"]} if metric == "evqa"
              else scores["splits"])
    rows = [(name or "(none given)", v.get("accuracy"), v.get("count")) for name, v in groups.items()]
    rows.append(("overall", summary["overall"], summary["count"]))
    if metric != "evqa":
        rows.append(("All (HM of unseen Q/E)", summary["all"], None))
    return rows


def cause_rows(errors: dict[str, dict[str, int]]) -> tuple[list[str], list[tuple[str, list[int]]]]:
    """The entity kinds of `error_sources`'s counts and one row per cause that occurs, then the total."""
    kinds = sorted(errors)
    rows = [(cause, [errors[k][cause] for k in kinds]) for cause in ERROR_CAUSES if any(errors[k][cause] for k in kinds)]
    return kinds, rows + [("wrong answers", [sum(errors[k].values()) for k in kinds])]


def error_cause(record: dict, example: KBVQAExample) -> tuple[str, str] | None:
    """(entity kind, cause) of a wrong answer (see `error_sources`); None for a right one."""
    if record["correct"]:
        return None
    kb_key = KB_KEY.fullmatch(example.entity_key or "")
    if not record["retrieved"]:
        cause = NO_RETRIEVAL
    elif kb_key is None:
        cause = NO_KB_KEY
    elif record["retrieved_entities"][:1] != [example.entity_key]:
        cause = NOT_FIRST
    else:
        cause = READ_WRONG
    return (kb_key.group(1) if kb_key else "other"), cause


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


def evaluation_page(summary: dict, records: list[dict], examples: list[KBVQAExample], paths: list[Path], out: Path,
                    entity_image: Callable[[Sequence[str]], dict[str, Path]] | None = None,
                    metric: str = "infoseek", limit: int = 300, shown_entities: int = 5) -> Path:
    """A self-contained page of an evaluation (`evaluate`'s summary and records, in the examples' order):
    the metric table and where the wrong answers come from, then the questions, wrong answers first (at
    most `limit`), each with its image, answer and accepted answers, what RET decided, the VLM's tags,
    the first `shown_entities` retrieved entities (a picture of each through `entity_image`, the
    question's own entity outlined) and the citations."""
    order = sorted(range(len(records)), key=lambda i: bool(records[i]["correct"]))[:limit]
    keys = list(dict.fromkeys(k for i in order for k in records[i]["retrieved_entities"][:shown_entities]))
    pictures = entity_image(keys) if entity_image and keys else {}
    thumbs = {k: thumbnail_url(p, 40) for k, p in pictures.items()}
    rows = "".join(_question_row(records[i], examples[i], paths[i], thumbs, shown_entities) for i in order)
    wrong = sum(1 for r in records if not r["correct"])
    questions = f"{summary['count']} question{'' if summary['count'] == 1 else 's'}"
    intro = (f"{questions}, {wrong} answered wrong; "
             f"retrieval recall {number_text(summary.get('retrieval_recall'))}, "
             f"skipped retrieval {number_text(summary.get('skipped_retrieval'), '.2f')}, "
             f"p50 {number_text(summary.get('latency_p50_ms'), '.0f')} ms. Wrong answers first"
             f"{f'; the first {limit} of {len(records)} questions shown' if len(records) > limit else ''}."
             + (" E-VQA accuracy is exact match, not BEM." if metric == "evqa" else ""))
    body = (_metric_table(summary, metric) + _cause_table(summary.get("errors") or {})
            + "<h2>Questions</h2><table><tr><th>image</th><th>question</th><th>answer</th><th>RET and tags</th>"
            f"<th>first {shown_entities} entities retrieved (the question's own outlined)</th><th>citations</th></tr>"
            + rows + "</table>")
    return atomic_write_text(out, html_page("KB-VQA evaluation", intro, body))


def number_text(x: float | None, fmt: str = ".3f") -> str:
    """A metric as the table and the page show it: "–" where there is none."""
    return "–" if x is None else format(x, fmt)


def _whole_or_exact(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else format(x, ".15g")


def _metric_table(summary: dict, metric: str) -> str:
    head = "question type" if metric == "evqa" else "split"
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{number_text(acc)}</td>"
                   f"<td>{'' if n is None else n}</td></tr>"
                   for label, acc, n in metric_rows(summary, metric))
    return f"<table><tr><th>{head}</th><th>accuracy</th><th>count</th></tr>{rows}</table>"


def _cause_table(errors: dict[str, dict[str, int]]) -> str:
    if not errors:
        return ""
    kinds, rows = cause_rows(errors)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in kinds)
    body = "".join(f"<tr><td>{html.escape(cause)}</td>" + "".join(f"<td>{n}</td>" for n in counts) + "</tr>"
                   for cause, counts in rows)
    return f"<h2>Where the wrong answers come from</h2><table><tr><th>cause</th>{head}</tr>{body}</table>"


def _accepted(ex: KBVQAExample, shown: int = 4) -> str:
    """The accepted answers as people read them: the answers and answer_eval's aliases, with InfoSeek's
    numeric ranges."""
    texts = list(dict.fromkeys([*ex.answers, *(e for e in ex.answer_eval if isinstance(e, str))]))
    answers = "; ".join(texts[:shown]) + (" …" if len(texts) > shown else "")
    ranges = [f"{_whole_or_exact(lo)}–{_whole_or_exact(hi)}" for e in ex.answer_eval if isinstance(e, dict) and (r := e.get("range"))
              for lo, hi in [r]]
    return html.escape(answers + (f" (range {', '.join(ranges)})" if ranges else ""))


def _question_row(r: dict, ex: KBVQAExample, image: Path, thumbs: dict[str, str], shown_entities: int) -> str:
    """One question of the page: image, question, answer against the accepted ones, RET, entities, citations."""
    esc = html.escape
    where = " · ".join(x for x in (esc(ex.data_id), esc(r.get("split") or ex.split or ""),
                                   f"entity <code>{esc(ex.entity_key)}</code>" if ex.entity_key else "") if x)
    cause = error_cause(r, ex)
    verdict = f"<br><span class='wrong'>{esc(cause[1])}</span>" if cause else ""
    p_ret = f" (P([Ret]) {r['p_ret']:.2f})" if r.get("p_ret") is not None else ""
    how = ("retrieved" if r["retrieved"] else "answered without retrieval") + p_ret
    if r.get("ret_reason"):
        how += f" because {esc(r['ret_reason'])}"
    if r.get("confirmed"):
        how += "; the VLM's own answer, confirmed by the first document read"
    tags = r.get("semantic_tags") or {}
    tag_text = " / ".join(esc(str(t)) for t in (tags.get("entity"), tags.get("category")) if t) or "–"
    found = []
    for k in r["retrieved_entities"][:shown_entities]:
        own = ' class="right"' if k == ex.entity_key else ""
        picture = f'<img src="{thumbs[k]}"{own} title="{esc(k)}" alt="">' if thumbs.get(k) else ""
        found.append(f"{picture}<code{own}>{esc(k)}</code>")
    cites = "; ".join(f"<code>{esc(c['entity'])}</code> § {esc(str(c['document_id']))}"
                      + (f" P([Rel]) {c['relevance']:.2f}" if c.get("relevance") is not None else "")
                      for c in r.get("citations", []))
    return (f'<tr><td><img src="{thumbnail_url(image, 96)}" alt=""></td>'
            f"<td>{esc(ex.question)}<br><span class='p'>{where}</span></td>"
            f"<td><b class='{'right' if r['correct'] else 'wrong'}'>{esc(str(r['prediction']))}</b><br>"
            f"<span class='p'>accepted: {_accepted(ex)}</span>{verdict}</td>"
            f"<td>{how}<br><span class='p'>tags: {tag_text}</span></td>"
            f"<td>{'<br>'.join(found) or '–'}</td><td class='p'>{cites or '–'}</td></tr>")
