"""KB-VQA benchmarks: InfoSeek, Encyclopedic-VQA and worldkb readers (`datasets`) and scoring (`metrics`)."""
from rag.kbvqa.datasets import KBVQAExample, image_path, read_evqa, read_infoseek, write_infoseek
from rag.kbvqa.metrics import (
    evqa_accuracy,
    evqa_scores,
    infoseek_accuracy,
    infoseek_scores,
    normalize_answer,
    score_example,
)

__all__ = [
    "KBVQAExample",
    "evqa_accuracy",
    "evqa_scores",
    "image_path",
    "infoseek_accuracy",
    "infoseek_scores",
    "normalize_answer",
    "read_evqa",
    "read_infoseek",
    "score_example",
    "write_infoseek",
]
