"""The KB-VQA ceiling analysis: which of naive RAG's wrong answers a better choice could fix."""
from __future__ import annotations


def test_ceilings_count_what_a_perfect_ret_and_a_perfect_choice_fix(benchmark_module):
    cb = benchmark_module("kbvqa_ceiling")
    questions = {f"q{i}": {"entity_key": key, "data_split": "seen"} for i, key in
                 enumerate(["country:A", "country:B", "emoji:C", "emoji:D", "emoji:E", "emoji:F"])}

    def naive(correct, retrieved):
        return {"correct": correct, "retrieved_entities": retrieved, "semantic_tags": {"entity": "x", "entity_confidence": 0.1}}

    predictions = {"q0": naive(True, ["country:A"]),
                   "q1": naive(False, ["country:B"]),    # read wrong from the right entity: stays wrong
                   "q2": naive(False, ["emoji:X"]),      # right entity 2nd in the image search
                   "q3": naive(False, ["emoji:X"]),      # not found, but the reader knows it
                   "q4": naive(False, ["emoji:X"]),      # neither
                   "q5": naive(False, ["emoji:X"])}      # the image search has it first, naive's retrieval not
    closed = {k: {"correct": k == "q3"} for k in questions}
    ranked = {"q0": ["country:A"], "q1": ["country:B"], "q2": ["emoji:X", "emoji:C"], "q3": ["emoji:X"],
              "q4": ["emoji:X"], "q5": ["emoji:F", "emoji:X"]}
    report = cb.ceilings(questions, predictions, closed, ranked)
    c = report["counts"]
    assert c["wrong"] == {"country": 1, "emoji": 4}
    assert c["fixable"] == {"country": 0, "emoji": 3} and c["neither"] == {"country": 0, "emoji": 1}
    assert c["search first"] == {"country": 1, "emoji": 1} and c["search 2nd to kth"] == {"country": 0, "emoji": 1}
    assert report["ceiling_perfect_ret"] == 2 / 6 and report["ceiling_perfect_choice"] == 4 / 6
    assert [r["data_id"] for r in report["second_to_kth"]] == ["q2"]
