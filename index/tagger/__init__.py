"""The multi-label tagger for curation: CMA + ASGE (arXiv 1912.07872) over the image embedder.

The names below load on first use, so `index.tagger.config` (what the command line reads at start-up)
comes without torch."""
from __future__ import annotations

from importlib import import_module

_WHERE = {"DEFAULT_TAGGER": "train", "Tagger": "train", "metrics": "train", "train_tagger": "train",
          "TaggerConfig": "config", "display": "labels", "record_labels": "labels", "vocabulary": "labels"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'index.tagger' has no attribute {name!r}")
    return getattr(import_module(f"index.tagger.{_WHERE[name]}"), name)
