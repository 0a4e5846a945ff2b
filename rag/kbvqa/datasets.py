"""Readers for KB-VQA benchmarks: InfoSeek JSONL (and worldkb, same format), Encyclopedic-VQA CSV.

InfoSeek (Chen et al., 2023, arXiv 2302.11713) ships one JSON object a line; E-VQA (Mensink et
al., ICCV 2023, arXiv 2306.09224) ships one CSV row a textual question. Both become
`KBVQAExample`, so the files users already have run unchanged.

Multi-answer convention: a reference that needs several parts (E-VQA `multi_answer`, a country's
borders in worldkb) is one string with the parts joined by `&&`, as the E-VQA CSV writes it; in
JSONL an answer may also be given as a list of parts. `answers` holds the accepted alternatives.
"""
from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Union

from index.files import json_line

AnswerEval = Union[str, float, dict[str, Any]]
PART_SEPARATOR = "&&"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INFOSEEK_REQUIRED = ("data_id", "image_id", "question", "answer", "data_split")
EVQA_REQUIRED = ("question", "answer", "dataset_image_ids")
EVQA_ID_COLUMNS = ("data_id", "question_id", "id")


@dataclass
class KBVQAExample:
    """One visual question about an entity, with its accepted answers and benchmark split."""

    data_id: str
    image_id: str
    question: str
    answers: list[str]
    answer_eval: list[AnswerEval]
    split: str
    question_type: str | None = None
    entity_key: str | None = None
    multi_answer: bool = False


def join_parts(parts: Iterable[str]) -> str:
    """One multi-answer reference from its required parts (["a", "b"] -> "a&&b")."""
    return PART_SEPARATOR.join(part.strip() for part in parts)


def answer_parts(answer: str) -> list[str]:
    """The required parts of a multi-answer reference ("a&&b" -> ["a", "b"]), empty parts dropped."""
    return [part.strip() for part in answer.split(PART_SEPARATOR) if part.strip()]


# --- InfoSeek JSONL ---------------------------------------------------------------------------


def _numeric_reference(value: Any, where: str) -> AnswerEval:
    """Check one numeric `answer_eval` entry: a number, or {"wikidata": v, "range": [lo, hi]}."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: answer_eval entry {value!r} is a boolean, not a number")
    if isinstance(value, (int, float)):
        return float(value)
    if "wikidata" not in value and "range" not in value:
        raise ValueError(f"{where}: numeric answer_eval {value!r} needs 'wikidata' or 'range'")
    checked = dict(value)
    if "wikidata" in value:
        checked["wikidata"] = _as_number(value["wikidata"], where, "wikidata")
    if "range" in value:
        bounds = value["range"]
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise ValueError(f"{where}: answer_eval range {bounds!r} must be [low, high]")
        checked["range"] = [_as_number(b, where, "range") for b in bounds]
    return checked


def _as_number(value: Any, where: str, key: str) -> float:
    """A float from a JSON number or numeric string, or a ValueError naming the place."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: answer_eval {key} {value!r} is not a number") from None


def _answer_strings(raw: Any, where: str) -> tuple[list[str], bool]:
    """`answer` as strings; a list entry is a multi-answer reference whose parts are joined by &&."""
    if isinstance(raw, str) and raw.strip():  # one answer, not in a list
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where}: 'answer' must be a non-empty string or list of strings, got {raw!r}")
    answers, has_parts = [], False
    for item in raw:
        if isinstance(item, list) and item and all(isinstance(p, str) for p in item):
            answers.append(join_parts(item))
            has_parts = True
        elif isinstance(item, str):
            answers.append(item)
        else:
            raise ValueError(f"{where}: answer entry {item!r} must be a string or a list of strings")
    return answers, has_parts


def _infoseek_example(record: Any, where: str) -> KBVQAExample:
    """Validate one decoded InfoSeek record and build its example."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in INFOSEEK_REQUIRED if key not in record]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")
    if not isinstance(record["question"], str) or not record["question"].strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string")
    answers, has_parts = _answer_strings(record["answer"], where)
    raw_eval = record.get("answer_eval", answers)
    if not isinstance(raw_eval, list):  # one accepted answer, not in a list; the loop checks its type
        raw_eval = [raw_eval] if str(raw_eval).strip() else []
    if not isinstance(raw_eval, list) or not raw_eval:
        raise ValueError(f"{where}: 'answer_eval' must be a non-empty string, number, dict or list of them, "
                         f"got {raw_eval!r}")
    answer_eval: list[AnswerEval] = []
    for item in raw_eval:
        if isinstance(item, str):
            answer_eval.append(item)
        elif isinstance(item, (int, float, dict)):
            answer_eval.append(_numeric_reference(item, where))
        else:
            raise ValueError(f"{where}: answer_eval entry {item!r} must be a string, number or dict")
    question_type = record.get("question_type")
    entity = record.get("entity_key", record.get("entity_id"))
    return KBVQAExample(
        data_id=str(record["data_id"]),
        image_id=str(record["image_id"]),
        question=record["question"],
        answers=answers,
        answer_eval=answer_eval,
        split=str(record["data_split"]),
        question_type=None if question_type is None else str(question_type),
        entity_key=None if entity is None else str(entity),
        multi_answer=bool(record.get("multi_answer", False)) or has_parts or question_type == "multi_answer",
    )


def read_infoseek(path: str | Path) -> list[KBVQAExample]:
    """Read an InfoSeek-format JSONL file; a malformed line raises ValueError naming file and line."""
    path = Path(path)
    examples = []
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json_line(line)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            examples.append(_infoseek_example(record, where))
    return examples


def infoseek_record(example: KBVQAExample) -> dict[str, Any]:
    """The InfoSeek JSON object for an example; our optional fields only when set."""
    record: dict[str, Any] = {
        "data_id": example.data_id,
        "image_id": example.image_id,
        "question": example.question,
        "answer": list(example.answers),
        "answer_eval": list(example.answer_eval),
        "data_split": example.split,
    }
    if example.question_type is not None:
        record["question_type"] = example.question_type
    if example.entity_key is not None:
        record["entity_key"] = example.entity_key
    if example.multi_answer:
        record["multi_answer"] = True
    return record


def write_infoseek(examples: Iterable[KBVQAExample], path: str | Path) -> Path:
    """Write examples as InfoSeek JSONL atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for example in examples:
                out.write(json.dumps(infoseek_record(example), ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


# --- Encyclopedic-VQA CSV ---------------------------------------------------------------------


def _evqa_answers(raw: str, multi_answer: bool) -> list[str]:
    """`|` separates annotators' alternatives; within a multi-answer alternative `&&` joins the parts."""
    answers = []
    for alternative in raw.split("|"):
        if multi_answer:
            alternative = PART_SEPARATOR.join(answer_parts(alternative))
        if alternative.strip():
            answers.append(alternative.strip())
    return answers


def read_evqa(path: str | Path) -> list[KBVQAExample]:
    """Read an Encyclopedic-VQA CSV, one example a row, its first dataset image as `image_id`."""
    path = Path(path)
    # evidence fields of the train split outgrow csv's default 128 KiB field limit
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    examples = []
    with path.open(encoding="utf-8-sig", newline="") as rows:
        reader = csv.DictReader(rows)
        columns = reader.fieldnames or []
        missing = [c for c in EVQA_REQUIRED if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}")
        id_column = next((c for c in EVQA_ID_COLUMNS if c in columns), None)
        for index, row in enumerate(reader):
            where = f"{path}:{reader.line_num} (row {index})"
            if None in row:
                raise ValueError(f"{where}: more fields than the {len(columns)} header columns")
            if any(row[c] is None for c in EVQA_REQUIRED):
                raise ValueError(f"{where}: fewer fields than the {len(columns)} header columns")
            question_type = (row.get("question_type") or "").strip() or None
            multi_answer = question_type == "multi_answer"
            answers = _evqa_answers(row["answer"], multi_answer)
            image_ids = [i.strip() for i in row["dataset_image_ids"].split("|") if i.strip()]
            if not row["question"].strip():
                raise ValueError(f"{where}: empty question")
            if not answers:
                raise ValueError(f"{where}: empty answer")
            if not image_ids:
                raise ValueError(f"{where}: empty dataset_image_ids")
            # two-hop rows list both articles; the first is the entity shown in the image
            url = (row.get("wikipedia_url") or "").split("|")[0].strip()
            examples.append(
                KBVQAExample(
                    data_id=row[id_column].strip() if id_column else str(index),
                    image_id=image_ids[0],
                    question=row["question"],
                    answers=answers,
                    answer_eval=list(answers),
                    split=(row.get("encyclopedic_vqa_split") or "").strip(),
                    question_type=question_type,
                    entity_key=url or None,
                    multi_answer=multi_answer,
                )
            )
    return examples


# --- images -----------------------------------------------------------------------------------


def image_path(images_dir: str | Path, image_id: str) -> Path:
    """The image file for an id: `DIR/<image_id>.png`, `.jpg` or `.jpeg`, the first that exists; an id
    that already ends in one of those is tried as it is first."""
    images_dir = Path(images_dir)
    names = [f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES]
    if Path(image_id).suffix.lower() in IMAGE_SUFFIXES:
        names.insert(0, image_id)
    for name in names:
        candidate = images_dir / name
        if candidate.is_file():
            return candidate
    where = str(images_dir) if images_dir.is_dir() else f"{images_dir} (no such folder)"
    raise FileNotFoundError(f"no image for {image_id!r} in {where}; tried {', '.join(names)}")
