"""Tests for KB-VQA scoring: normalisation, InfoSeek numeric ranges, set IoU, split aggregation, E-VQA EM."""
from __future__ import annotations

import pytest

from rag.kbvqa import metrics
from rag.kbvqa.datasets import KBVQAExample
from rag.kbvqa.metrics import (
    evqa_accuracy,
    evqa_scores,
    infoseek_accuracy,
    infoseek_scores,
    normalize_answer,
    normalize_evqa_answer,
    parse_quantity,
    score_example,
)

POPULATION = {"wikidata": 755030.0, "range": [679527.0, 830533.0]}
BORDERS = "France&&Spain&&Italy&&Germany"


def example(
    answers: list[str] | None = None,
    answer_eval: list | None = None,
    split: str = "val_unseen_question",
    data_id: str = "q1",
    question_type: str | None = None,
    multi_answer: bool = False,
) -> KBVQAExample:
    """A one-question example; answer_eval defaults to the answers, as for string questions."""
    answers = answers if answers is not None else ["Paris"]
    return KBVQAExample(
        data_id=data_id,
        image_id="img",
        question="?",
        answers=answers,
        answer_eval=answer_eval if answer_eval is not None else list(answers),
        split=split,
        question_type=question_type,
        multi_answer=multi_answer,
    )


# --- normalisation and exact match -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  An   apple. ", "apple"),
        ("Theatre of the Absurd", "theatre of absurd"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("a", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_accepts_any_alias():
    item = example(answers=["United States"], answer_eval=["United States of America", "USA", "U.S."])
    assert infoseek_accuracy("the U.S.A.", item)
    assert infoseek_accuracy("us", item)
    assert not infoseek_accuracy("America", item)


def test_exact_match_is_not_substring_match():
    item = example(answer_eval=["Paris"])
    assert not infoseek_accuracy("Paris, France", item)
    assert infoseek_accuracy("paris.", item)


@pytest.mark.parametrize("prediction", ["", "   ", "the", "!"])
def test_empty_prediction_never_matches(prediction):
    assert not infoseek_accuracy(prediction, example(answer_eval=["Paris"]))
    assert not infoseek_accuracy(prediction, example(answer_eval=[POPULATION]))
    assert not evqa_accuracy(prediction, example(answers=["Paris"]))
    assert not score_example(prediction, example(answers=[BORDERS], multi_answer=True))


def test_reference_empty_after_normalisation_is_an_error():
    with pytest.raises(ValueError, match="q1"):
        infoseek_accuracy("paris", example(answer_eval=["The", "!"]))


# --- InfoSeek numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("38,394 km²", 38394.0),
        ("about 755 thousand", 755000.0),
        ("1.2 million", 1.2e6),
        ("3.5 billion years", 3.5e9),
        ("1,000 to 2,000", (1000.0, 2000.0)),
        ("1000-2000", (1000.0, 2000.0)),
        ("-5 to 5", (-5.0, 5.0)),
        ("38,394 km² (14,824 sq mi)", 38394.0),  # second number smaller: first taken alone
        ("1,234,567.5 people", 1234567.5),
        ("no idea", None),
    ],
)
def test_parse_quantity(text, expected):
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    ("prediction", "correct"),
    [
        ("755,030", True),
        ("about 755 thousand", True),
        ("0.76 million inhabitants", True),
        ("830,533", True),  # range bounds are inclusive
        ("679,526", False),
        ("830,534", False),
        ("7,550,300", False),
        ("unknown", False),
    ],
)
def test_number_in_reference_range(prediction, correct):
    assert infoseek_accuracy(prediction, example(answers=["755030"], answer_eval=[POPULATION])) is correct


@pytest.mark.parametrize("reference", [{"wikidata": 100.0}, 100.0])
@pytest.mark.parametrize(
    ("prediction", "correct"),
    [("109.9", True), ("110.2", False), ("90.1", True), ("89.8", False), ("100 km", True)],
)
def test_single_reference_value_allows_ten_percent(reference, prediction, correct):
    assert infoseek_accuracy(prediction, example(answers=["100"], answer_eval=[reference])) is correct


def test_ten_percent_of_a_negative_value():
    item = example(answers=["-40"], answer_eval=[{"wikidata": -40.0}])
    assert infoseek_accuracy("-43", item)
    assert not infoseek_accuracy("-45", item)


@pytest.mark.parametrize(
    ("prediction", "correct"),
    [
        ("140-220", True),  # IoU 60/120 = 0.5 exactly
        ("139 to 220", True),  # 61/121 > 0.5
        ("141 to 220", False),  # 59/119 < 0.5
        ("50 - 250", True),  # covers the reference: 100/200
        ("49 - 250", False),  # 100/201
        ("120 to 130", True),  # inside the reference range counts whatever the IoU
        ("300-400", False),
    ],
)
def test_predicted_range_by_iou(prediction, correct):
    item = example(answers=["150"], answer_eval=[{"wikidata": 150.0, "range": [100.0, 200.0]}])
    assert infoseek_accuracy(prediction, item) is correct


def test_any_numeric_reference_may_match():
    item = example(answers=["1"], answer_eval=[{"wikidata": 10.0}, {"wikidata": 1000.0}])
    assert infoseek_accuracy("1,050", item)
    assert not infoseek_accuracy("500", item)


# --- multi-answer sets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "correct"),
    [
        ("France, Spain", True),  # 2/4
        ("France and Spain", True),
        ("france && spain", True),
        ("France, Spain, Italy and Poland", True),  # 3/5
        ("France, Spain, Poland", False),  # 2/5
        ("France", False),  # 1/4
        ("Italy, Germany, Spain, France", True),
    ],
)
def test_multi_answer_iou_boundaries(prediction, correct):
    assert score_example(prediction, example(answers=[BORDERS], multi_answer=True)) is correct


def test_multi_answer_takes_best_reference_set():
    item = example(answers=["Lyon&&Nice&&Paris&&Lille", "Rome&&Milan"], multi_answer=True)
    assert score_example("Rome", item)  # 1/2 against the second set
    assert not score_example("Lyon", item)


def test_score_example_dispatches_on_answer_kind():
    multi = example(answers=[BORDERS], multi_answer=True)
    numeric = example(answers=["755030"], answer_eval=[POPULATION])
    strings = example(answers=["Paris"])
    assert score_example("Spain and France", multi)
    assert not infoseek_accuracy("Spain and France", multi)  # plain EM would reject the set
    assert score_example("750,000", numeric)
    assert not score_example("750,000", strings)
    assert score_example("The Paris", strings)


# --- aggregation ------------------------------------------------------------------------------


def test_infoseek_all_is_harmonic_mean_of_unseen_splits():
    examples = [
        example(data_id="q1", split="val_unseen_question"),
        example(data_id="q2", split="val_unseen_entity"),
        example(data_id="q3", split="val_unseen_entity"),
    ]
    scores = infoseek_scores({"q1": "Paris", "q2": "Paris", "q3": "Lyon"}, examples)
    assert scores["splits"]["unseen_question"]["accuracy"] == 1.0
    assert scores["splits"]["unseen_entity"] == {"accuracy": 0.5, "correct": 1, "count": 2}
    assert scores["all"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert scores["overall"]["accuracy"] == pytest.approx(2 / 3)


def test_infoseek_all_is_zero_when_one_split_is_zero():
    examples = [example(data_id="q1", split="unseen_question"), example(data_id="q2", split="unseen_entity")]
    scores = infoseek_scores({"q1": "Paris", "q2": "Lyon"}, examples)
    assert scores["splits"]["unseen_question"]["accuracy"] == 1.0
    assert scores["all"] == 0.0


def test_infoseek_missing_split_is_reported_not_zero():
    examples = [example(data_id="q1", split="seen"), example(data_id="q2", split="unseen_question")]
    scores = infoseek_scores({"q1": "Paris", "q2": "Paris"}, examples)
    assert scores["all"] is None
    assert scores["missing_splits"] == ["unseen_entity"]
    assert "unseen_entity" in scores["note"]
    assert scores["splits"]["seen"]["accuracy"] == 1.0


def test_unanswered_count_as_wrong_and_stray_predictions_are_counted():
    examples = [example(data_id="q1", split="unseen_question"), example(data_id="q2", split="unseen_entity")]
    scores = infoseek_scores({"q1": "Paris", "other": "Paris"}, examples)
    assert scores["unanswered"] == 1
    assert scores["unmatched_predictions"] == 1
    assert scores["splits"]["unseen_entity"] == {"accuracy": 0.0, "correct": 0, "count": 1}


def test_duplicate_data_ids_are_an_error():
    with pytest.raises(ValueError, match="duplicate data_id 'q1'"):
        infoseek_scores({"q1": "Paris"}, [example(data_id="q1"), example(data_id="q1")])


# --- Encyclopedic-VQA -------------------------------------------------------------------------


def test_evqa_normalisation_maps_number_words_and_prefix():
    assert normalize_evqa_answer("The answer is: Two") == "2"
    assert normalize_evqa_answer("\u2018True\u2019") == "yes"
    item = example(answers=["two"], question_type="templated")
    assert evqa_accuracy("2", item)
    assert not infoseek_accuracy("2", item)


def test_evqa_multi_answer_uses_set_iou():
    item = example(answers=["red&&yellow&&white"], question_type="multi_answer", multi_answer=True)
    assert evqa_accuracy("Yellow and red", item)  # 2/3
    assert not evqa_accuracy("red", item)  # 1/3
    assert not evqa_accuracy("Yellow and red", example(answers=["red&&yellow&&white"]))  # not multi-answer: EM


def test_evqa_scores_say_em_not_bem_and_split_hops():
    examples = [
        example(data_id="0", answers=["oak"], question_type="templated"),
        example(data_id="1", answers=["1850"], question_type="automatic"),
        example(data_id="2", answers=["Spain"], question_type="2_hop"),
    ]
    scores = evqa_scores({"0": "Oak", "1": "1851", "2": "spain"}, examples)
    assert scores["metric"] == "EM, not BEM"
    assert "EM, NOT BEM" in metrics.__doc__
    assert scores["single_hop"] == {"accuracy": 0.5, "correct": 1, "count": 2}
    assert scores["question_types"]["2_hop"]["accuracy"] == 1.0
    assert scores["all"] == pytest.approx(2 / 3)


def test_split_names_read_alike_without_their_val_or_test_prefix():
    from rag.kbvqa.metrics import split_group

    assert [split_group(s) for s in ("val_unseen_question", "val_unseen_entity", "val_seen", "test_seen",
                                     "seen", "train", "val_", "")] == \
        ["unseen_question", "unseen_entity", "seen", "seen", "seen", "train", "val_", ""]
