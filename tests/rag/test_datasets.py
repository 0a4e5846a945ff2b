"""Tests for KB-VQA readers: InfoSeek JSONL (errors, round trip, atomic write), E-VQA CSV, image lookup."""
from __future__ import annotations

import csv
import json

import pytest

from rag.kbvqa.datasets import (
    KBVQAExample,
    answer_parts,
    image_path,
    join_parts,
    read_evqa,
    read_infoseek,
    write_infoseek,
)

STRING_LINE = {
    "data_id": "infoseek_val_00000001",
    "image_id": "oven_01",
    "question": "Which country is this building in?",
    "answer": ["France"],
    "answer_eval": ["France", "French Republic"],
    "data_split": "val_unseen_question",
    "entity_id": "Q243",
    "question_type": "String",
}
NUMERIC_LINE = {
    "data_id": "infoseek_val_00000002",
    "image_id": "oven_02",
    "question": "What is the population of this city?",
    "answer": ["755030"],
    "answer_eval": [{"wikidata": 755030.0, "range": [679527.0, 830533.0]}],
    "data_split": "val_unseen_entity",
}
EVQA_COLUMNS = [
    "question", "answer", "dataset_image_ids", "dataset_name", "dataset_category_id", "question_type",
    "wikipedia_url", "wikipedia_title", "evidence", "evidence_section_id", "encyclopedic_vqa_split",
]


def write_jsonl(path, lines: list) -> None:
    """Lines as JSON objects, or raw text for strings."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def write_evqa(path, rows: list[dict], columns: list[str] = EVQA_COLUMNS) -> None:
    """An E-VQA CSV with the given rows; missing columns left empty."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


# --- InfoSeek ---------------------------------------------------------------------------------


def test_read_infoseek_string_and_numeric(tmp_path):
    path = tmp_path / "val.jsonl"
    write_jsonl(path, [STRING_LINE, "", NUMERIC_LINE])
    first, second = read_infoseek(path)
    assert first == KBVQAExample(
        data_id="infoseek_val_00000001",
        image_id="oven_01",
        question="Which country is this building in?",
        answers=["France"],
        answer_eval=["France", "French Republic"],
        split="val_unseen_question",
        question_type="String",
        entity_key="Q243",
        multi_answer=False,
    )
    assert second.answer_eval == [{"wikidata": 755030.0, "range": [679527.0, 830533.0]}]
    assert second.entity_key is None and second.question_type is None


def test_answer_eval_defaults_to_answers(tmp_path):
    path = tmp_path / "own.jsonl"
    line = {k: v for k, v in STRING_LINE.items() if k != "answer_eval"}
    write_jsonl(path, [line])
    assert read_infoseek(path)[0].answer_eval == ["France"]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"data_id": "x", "question": ', "not valid JSON"),
        ({k: v for k, v in STRING_LINE.items() if k != "image_id"}, "missing key.*image_id"),
        ({**STRING_LINE, "answer": 5}, "'answer' must be a non-empty string or list"),
        ({**STRING_LINE, "answer": []}, "'answer' must be a non-empty string or list"),
        ({**NUMERIC_LINE, "answer_eval": [{"range": [1.0]}]}, r"range \[1.0\] must be \[low, high\]"),
        ({**NUMERIC_LINE, "answer_eval": [{"unit": "km"}]}, "needs 'wikidata' or 'range'"),
        ({**NUMERIC_LINE, "answer_eval": [{"wikidata": "many"}]}, "wikidata 'many' is not a number"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "broken.jsonl"
    write_jsonl(path, [STRING_LINE, NUMERIC_LINE, bad_line])
    with pytest.raises(ValueError, match=message) as raised:
        read_infoseek(path)
    assert f"{path}:3:" in str(raised.value)


def test_write_infoseek_round_trip_and_replace(tmp_path):
    source = tmp_path / "val.jsonl"
    write_jsonl(source, [STRING_LINE, NUMERIC_LINE])
    examples = read_infoseek(source)
    multi = KBVQAExample("w1", "img", "Which countries border it?", ["France&&Spain"], ["France&&Spain"],
                         "seen", multi_answer=True)
    target = tmp_path / "out" / "copy.jsonl"
    target.parent.mkdir()
    target.write_text("old contents\n")
    assert write_infoseek([*examples, multi], target) == target
    assert read_infoseek(target) == [*examples, multi]
    assert [p.name for p in target.parent.iterdir()] == ["copy.jsonl"]  # no temporary left behind


def test_write_infoseek_failure_keeps_old_file(tmp_path):
    target = tmp_path / "keep.jsonl"
    write_jsonl(target, [STRING_LINE])

    def examples():
        yield read_infoseek(target)[0]
        raise RuntimeError("generator broke mid-write")

    with pytest.raises(RuntimeError):
        write_infoseek(examples(), target)
    assert json.loads(target.read_text()) == STRING_LINE
    assert [p.name for p in tmp_path.iterdir()] == ["keep.jsonl"]


def test_answer_given_as_list_of_parts_is_multi_answer(tmp_path):
    path = tmp_path / "worldkb.jsonl"
    write_jsonl(path, [{**STRING_LINE, "answer": [["France", " Spain "]], "answer_eval": ["x"]}])
    (item,) = read_infoseek(path)
    assert item.answers == ["France&&Spain"]
    assert item.multi_answer
    assert answer_parts(join_parts([" France", "Spain "])) == ["France", "Spain"]
    assert answer_parts("a && && b") == ["a", "b"]


# --- Encyclopedic-VQA -------------------------------------------------------------------------


def test_read_evqa_answers_images_and_hops(tmp_path):
    path = tmp_path / "test.csv"
    write_evqa(path, [
        {"question": "What colour are its flowers?", "answer": "white|cream", "question_type": "templated",
         "dataset_image_ids": "4c1b|9d2e|77aa", "wikipedia_url": "https://en.wikipedia.org/wiki/Oak",
         "evidence": "Line one,\nline \"two\"", "encyclopedic_vqa_split": "test"},
        {"question": "Which colours?", "answer": "red && yellow&&white|yellow&&red", "question_type": "multi_answer",
         "dataset_image_ids": "1234", "encyclopedic_vqa_split": "test"},
        {"question": "Where was its architect born?", "answer": "Barcelona", "question_type": "2_hop",
         "dataset_image_ids": "abcd", "wikipedia_url": "https://a|https://b", "encyclopedic_vqa_split": "test"},
    ])
    first, second, third = read_evqa(path)
    assert (first.data_id, second.data_id, third.data_id) == ("0", "1", "2")
    assert first.answers == ["white", "cream"] and first.answer_eval == ["white", "cream"]
    assert first.image_id == "4c1b"
    assert first.entity_key == "https://en.wikipedia.org/wiki/Oak"
    assert not first.multi_answer and first.split == "test"
    assert second.answers == ["red&&yellow&&white", "yellow&&red"]
    assert second.multi_answer and second.question_type == "multi_answer"
    assert third.entity_key == "https://a" and third.question_type == "2_hop"


def test_read_evqa_uses_id_column_when_present(tmp_path):
    path = tmp_path / "ids.csv"
    write_evqa(path, [{"question_id": "evqa-7", "question": "q?", "answer": "a", "dataset_image_ids": "i"}],
               columns=["question_id", *EVQA_COLUMNS])
    assert read_evqa(path)[0].data_id == "evqa-7"


def test_read_evqa_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    write_evqa(path, [{"question": "q?", "answer": "a"}], columns=["question", "answer"])
    with pytest.raises(ValueError, match="missing column.*dataset_image_ids"):
        read_evqa(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "q?", "answer": " | ", "dataset_image_ids": "i"}, "empty answer"),
        ({"question": "q?", "answer": "a", "dataset_image_ids": "|"}, "empty dataset_image_ids"),
    ],
)
def test_read_evqa_bad_row_names_line(tmp_path, row, message):
    path = tmp_path / "bad.csv"
    write_evqa(path, [{"question": "q?", "answer": "a", "dataset_image_ids": "i"}, row])
    with pytest.raises(ValueError, match=message) as raised:
        read_evqa(path)
    assert f"{path}:3 (row 1)" in str(raised.value)


# --- images -----------------------------------------------------------------------------------


def test_image_path_tries_png_then_jpg(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpeg").write_bytes(b"x")
    (tmp_path / "c.png").write_bytes(b"x")
    (tmp_path / "c.jpg").write_bytes(b"x")
    assert image_path(tmp_path, "a") == tmp_path / "a.jpg"
    assert image_path(tmp_path, "b") == tmp_path / "b.jpeg"
    assert image_path(tmp_path, "c") == tmp_path / "c.png"
    assert image_path(tmp_path, "a.jpg") == tmp_path / "a.jpg"  # an id written with its file's extension


def test_infoseek_file_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "q.jsonl"
    record = {"data_id": "q1", "image_id": "a", "question": "Q?", "answer": ["x"], "answer_eval": ["x"],
              "data_split": "val"}
    path.write_text("\ufeff" + json.dumps(record) + "\n", encoding="utf-8")
    assert read_infoseek(path)[0].data_id == "q1"


def test_image_path_missing_names_what_was_tried(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'oven_9'.*tried oven_9.png, oven_9.jpg, oven_9.jpeg"):
        image_path(tmp_path, "oven_9")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        image_path(tmp_path / "absent", "oven_9")
