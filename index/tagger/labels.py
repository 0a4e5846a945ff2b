"""Labels for the multi-label tagger, read from manifest records.

A record's labels are its manifest `tags`, the words of its `keywords` section ("Keywords for
the Grinning face emoji: cheerful, face and grin." → cheerful, face, grin) and its category and
subcategory as `category:…` / `subcategory:…`. The vocabulary keeps the labels that at least
`min_count` training entities carry: a label seen on two entities cannot be learned.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

_SPLIT = re.compile(r",\s*|\s+and\s+")


def keywords(text: str) -> list[str]:
    """The words of a keywords section: the list after the colon, split on commas and "and"."""
    body = text.split(":", 1)[1] if ":" in text else text
    return [w.strip().lower() for w in _SPLIT.split(body.strip().rstrip(".")) if w.strip()]


def record_labels(record: dict) -> list[str]:
    """The labels one manifest record carries (see the module docstring), without repeats."""
    out = [str(t).strip().lower() for t in record.get("tags", []) if str(t).strip()]
    for section in record.get("sections", []):
        if section.get("heading") == "keywords":
            out += keywords(section.get("text", ""))
    for field in ("category", "subcategory"):
        if record.get(field):
            out.append(f"{field}:{record[field]}")
    return list(dict.fromkeys(out))


def vocabulary(label_sets: Iterable[Sequence[str]], min_count: int = 8) -> list[str]:
    """Labels carried by at least `min_count` of the sets, most frequent first (ties by name)."""
    counts = Counter(label for labels in label_sets for label in set(labels))
    kept = [(n, label) for label, n in counts.items() if n >= min_count]
    return [label for n, label in sorted(kept, key=lambda x: (-x[0], x[1]))]


def multi_hot(label_sets: Sequence[Sequence[str]], vocab: Sequence[str]) -> np.ndarray:
    """(len(label_sets), len(vocab)) float32 targets; labels outside the vocabulary are ignored."""
    index = {label: i for i, label in enumerate(vocab)}
    y = np.zeros((len(label_sets), len(vocab)), np.float32)
    for row, labels in enumerate(label_sets):
        for label in labels:
            if label in index:
                y[row, index[label]] = 1.0
    return y


def display(label: str) -> str:
    """How a label reads on a page: `subcategory:face-smiling` → `face-smiling (subcategory)`."""
    field, sep, value = label.partition(":")
    return f"{value} ({field})" if sep and field in ("category", "subcategory") else label
