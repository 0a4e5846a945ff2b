"""KB-VQA answer scoring, reimplemented from the InfoSeek and Encyclopedic-VQA protocols.

InfoSeek (Chen et al., 2023, arXiv 2302.11713; its `infoseek_eval.py`):
  * string and time answers: exact match after SQuAD-style normalisation against any alias;
  * numeric answers: a reference {"wikidata": v, "range": [lo, hi]} (no range: v ± 10%); a
    predicted number counts inside [lo, hi]; a predicted range counts when it lies inside the
    reference range or its IoU with it is >= 0.5. Only the first two numbers of a prediction
    are read; if the second is smaller the first is taken alone ("38,394 km² (14,824 sq mi)");
  * "All" is the harmonic mean of the Unseen-Question and Unseen-Entity accuracies.
  Unlike the official script, examples without a prediction count as wrong (and are reported),
  and scale words are read ("1.2 million" -> 1.2e6).

Encyclopedic-VQA (Mensink et al., ICCV 2023, arXiv 2306.09224; its `evaluation_utils.py`):
  the official score is exact match, falling back to the BEM answer-equivalence model (Bulian et
  al., EMNLP 2022). BEM is not available offline, so `evqa_accuracy` and `evqa_scores` report
  EM, NOT BEM: a lower bound on the official number, not comparable to published E-VQA results.
  Multi-answer questions ("a&&b" references) count when the IoU of the predicted set (split on
  commas, " and ", " & ", "&&") and the reference set is >= 0.5.

worldkb uses InfoSeek's format and rules; its multi-answer questions (a country's borders) use
the E-VQA set-IoU rule. `score_example` dispatches between the three kinds of answer.
Accuracies are fractions in [0, 1].
"""
from __future__ import annotations

import re
import string
from collections import defaultdict
from typing import Callable, Iterable, Mapping

from rag.kbvqa.datasets import AnswerEval, KBVQAExample, answer_parts

NUMERIC_TOLERANCE = 0.1  # InfoSeek: a single reference value v is accepted within v ± 10%
IOU_THRESHOLD = 0.5
_EPSILON = 1e-9  # so an IoU of exactly 0.5 survives floating-point rounding
UNSEEN_QUESTION, UNSEEN_ENTITY = "unseen_question", "unseen_entity"
TWO_HOP = "2_hop"
EVQA_METRIC = "EM, not BEM"

_SCALES = {"thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12}
_NUMBER = re.compile(
    r"(?<![0-9.,])"  # not inside another number
    r"([-+]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?|[-+]?\.[0-9]+)"
    r"(?:\s*(thousand|million|billion|trillion)s?\b)?"
)
_RANGE_DASH = re.compile(r"(?<=[0-9])\s*[-\u2013\u2014]\s*")  # "1000-2000", "1000–2000"
_LIST_SEPARATOR = re.compile(r"&&|,| and | & ")
_EVQA_PUNCTUATION = set(string.punctuation + "\u2018\u2019\u00b4`_")
_EVQA_WORDS = {  # E-VQA standardises these words before matching
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
    "entailment": "yes", "true": "yes", "contradiction": "no", "false": "no",
}

Normalizer = Callable[[str], str]


# --- normalisation ----------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation and the articles a/an/the, collapse whitespace (SQuAD, InfoSeek)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_evqa_answer(text: str) -> str:
    """E-VQA's variant: also drops curly quotes and "the answer is", and maps number words to digits."""
    text = "".join(ch for ch in text.lower() if ch not in _EVQA_PUNCTUATION)
    text = re.sub(r"\b(the answer is|a|an|the)\b", " ", text)
    return " ".join(_EVQA_WORDS.get(word, word) for word in text.split())


def _references(answers: Iterable[str], normalize: Normalizer, data_id: str) -> set[str]:
    """Normalised references; an example whose references all normalise to nothing is an error."""
    references = {normalize(a) for a in answers} - {""}
    if not references:
        raise ValueError(f"example {data_id!r}: no reference answer is left after normalisation")
    return references


# --- numbers (InfoSeek) -----------------------------------------------------------------------


def parse_numbers(text: str) -> list[float]:
    """Every number in the text, in order: thousands separators and units dropped, scale words applied."""
    text = _RANGE_DASH.sub(" to ", text.lower().replace("\u2212", "-"))
    numbers = []
    for digits, scale in _NUMBER.findall(text):
        numbers.append(float(digits.replace(",", "")) * _SCALES.get(scale, 1.0))
    return numbers


def parse_quantity(text: str) -> float | tuple[float, float] | None:
    """A predicted number or (low, high) range from the first two numbers of the text, as InfoSeek reads it."""
    numbers = parse_numbers(text)[:2]
    if not numbers:
        return None
    if len(numbers) == 2 and numbers[0] <= numbers[1]:
        return numbers[0], numbers[1]
    return numbers[0]


def reference_range(reference: AnswerEval, tolerance: float = NUMERIC_TOLERANCE) -> tuple[float, float]:
    """The accepted (low, high) of a numeric reference: its "range", else its value ± tolerance."""
    if isinstance(reference, dict) and "range" in reference:
        low, high = (float(b) for b in reference["range"])
        return min(low, high), max(low, high)
    value = float(reference["wikidata"] if isinstance(reference, dict) else reference)
    low, high = value * (1 - tolerance), value * (1 + tolerance)
    return min(low, high), max(low, high)


def range_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two closed intervals (1 for two equal points)."""
    overlap = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - overlap
    if union <= 0:
        return 1.0 if a == b else 0.0
    return overlap / union


def quantity_matches(quantity: float | tuple[float, float], accepted: tuple[float, float]) -> bool:
    """A number inside the accepted range, or a range inside it or overlapping it with IoU >= 0.5."""
    low, high = accepted
    if isinstance(quantity, tuple):
        inside = low <= quantity[0] and quantity[1] <= high
        return inside or range_iou(quantity, accepted) >= IOU_THRESHOLD - _EPSILON
    return low <= quantity <= high


# --- multi-answer sets (E-VQA, worldkb) -------------------------------------------------------


def answer_set_iou(prediction: str, reference: str, normalize: Normalizer = normalize_answer) -> float:
    """IoU of the predicted items (split on , / and / & / &&) and the reference's && parts."""
    reference_set = {normalize(p) for p in answer_parts(reference)} - {""}
    if not reference_set:
        raise ValueError(f"multi-answer reference {reference!r} has no parts after normalisation")
    predicted = {normalize(item) for item in _LIST_SEPARATOR.split(prediction.lower())} - {""}
    return len(reference_set & predicted) / len(reference_set | predicted)


def multi_answer_match(prediction: str, answers: Iterable[str], normalize: Normalizer = normalize_answer) -> bool:
    """True when the predicted set reaches IoU >= 0.5 with any accepted reference set."""
    return any(answer_set_iou(prediction, a, normalize) >= IOU_THRESHOLD - _EPSILON for a in answers)


# --- per-example scores -----------------------------------------------------------------------


def infoseek_accuracy(prediction: str, example: KBVQAExample) -> bool:
    """InfoSeek's rule: numeric references by range, string references by normalised exact match."""
    if not prediction or not prediction.strip():
        return False
    references = example.answer_eval or example.answers
    numeric = [r for r in references if not isinstance(r, str)]
    strings = [r for r in references if isinstance(r, str)]
    if numeric:
        quantity = parse_quantity(prediction)
        if quantity is not None and any(quantity_matches(quantity, reference_range(r)) for r in numeric):
            return True
    if not strings:
        return False
    return normalize_answer(prediction) in _references(strings, normalize_answer, example.data_id)


def evqa_accuracy(prediction: str, example: KBVQAExample) -> bool:
    """E-VQA exact match (EM, not BEM); multi-answer questions by set IoU >= 0.5."""
    if not prediction or not prediction.strip():
        return False
    if example.multi_answer:
        return multi_answer_match(prediction, example.answers, normalize_evqa_answer)
    references = _references(example.answers, normalize_evqa_answer, example.data_id)
    return normalize_evqa_answer(prediction) in references


def score_example(prediction: str, example: KBVQAExample) -> bool:
    """worldkb and InfoSeek: multi-answer by set IoU, numeric answer_eval by range, else EM over aliases."""
    if example.multi_answer:
        if not prediction or not prediction.strip():
            return False
        return multi_answer_match(prediction, example.answers)
    return infoseek_accuracy(prediction, example)


# --- aggregate scores -------------------------------------------------------------------------


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of two accuracies; 0 when either is 0."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


def split_group(split: str) -> str:
    """InfoSeek's split families: "val_unseen_question" -> "unseen_question"; a "val_" or "test_" prefix
    goes from other names too ("val_seen" -> "seen"), so a file's splits read alike; others unchanged."""
    for family in (UNSEEN_QUESTION, UNSEEN_ENTITY):
        if split.endswith(family):
            return family
    for prefix in ("val_", "test_"):
        if split.startswith(prefix) and len(split) > len(prefix):
            return split[len(prefix):]
    return split


def _tally(outcomes: list[bool]) -> dict[str, float | int | None]:
    """Accuracy, correct and count of a list of outcomes (accuracy None when empty)."""
    correct = sum(outcomes)
    return {"accuracy": correct / len(outcomes) if outcomes else None, "correct": correct, "count": len(outcomes)}


def _score_all(
    predictions: Mapping[str, str],
    examples: Iterable[KBVQAExample],
    scorer: Callable[[str, KBVQAExample], bool],
    group: Callable[[KBVQAExample], str],
) -> tuple[dict[str, list[bool]], int, int]:
    """Outcomes grouped by `group`, with the counts of unanswered examples and unmatched predictions."""
    grouped: dict[str, list[bool]] = defaultdict(list)
    seen: set[str] = set()
    unanswered = 0
    for example in examples:
        if example.data_id in seen:
            raise ValueError(f"duplicate data_id {example.data_id!r}: predictions could not be told apart")
        seen.add(example.data_id)
        prediction = predictions.get(example.data_id)
        if prediction is None:
            unanswered += 1
        grouped[group(example)].append(prediction is not None and scorer(prediction, example))
    return grouped, unanswered, len(set(predictions) - seen)


def infoseek_scores(predictions: Mapping[str, str], examples: Iterable[KBVQAExample]) -> dict:
    """Per-split accuracy and InfoSeek's "all" (harmonic mean of unseen-question and unseen-entity)."""
    grouped, unanswered, unmatched = _score_all(predictions, examples, score_example, lambda e: split_group(e.split))
    splits = {name: _tally(outcomes) for name, outcomes in sorted(grouped.items())}
    scores: dict = {
        "metric": "infoseek",
        "splits": splits,
        "overall": _tally([o for outcomes in grouped.values() for o in outcomes]),
        "all": None,
        "unanswered": unanswered,
        "unmatched_predictions": unmatched,
    }
    missing = [s for s in (UNSEEN_QUESTION, UNSEEN_ENTITY) if s not in splits]
    if missing:
        scores["missing_splits"] = missing
        scores["note"] = (
            f"'all' (harmonic mean of {UNSEEN_QUESTION} and {UNSEEN_ENTITY} accuracy) not computed: "
            f"no {' or '.join(missing)} examples"
        )
    else:
        scores["all"] = harmonic_mean(splits[UNSEEN_QUESTION]["accuracy"], splits[UNSEEN_ENTITY]["accuracy"])
    return scores


def evqa_scores(predictions: Mapping[str, str], examples: Iterable[KBVQAExample]) -> dict:
    """E-VQA accuracy (EM, not BEM) by question type, single-hop (all but 2_hop) and overall."""
    grouped, unanswered, unmatched = _score_all(
        predictions, examples, evqa_accuracy, lambda e: e.question_type or "unspecified"
    )
    single_hop = [o for kind, outcomes in grouped.items() if kind != TWO_HOP for o in outcomes]
    overall = _tally([o for outcomes in grouped.values() for o in outcomes])
    return {
        "metric": EVQA_METRIC,
        "question_types": {kind: _tally(outcomes) for kind, outcomes in sorted(grouped.items())},
        "single_hop": _tally(single_hop),
        "overall": overall,
        "all": overall["accuracy"],
        "unanswered": unanswered,
        "unmatched_predictions": unmatched,
    }
