"""The tagger's training settings (no torch here: the command line reads its defaults at start-up)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from index.worldkb import MANIFEST

LABEL_EMBEDDINGS = {
    "asge": "ASGE: fitted to the label co-occurrence graph, from the label words' MiniLM vectors (the paper)",
    "text": "the label words' MiniLM vectors as they are (no graph)",
    "text+asge": "both side by side (concatenated)",
    "learned": "learned with the head from the MiniLM vectors (no graph; ablation)",
}


@dataclass
class TaggerConfig:
    manifest: str | None = None  # None: worldkb's (`index/worldkb/data/manifest.jsonl`)
    embedder: str | None = None  # None: the configured image embedder (settings.image_embedder)
    min_count: int = 8           # a label needs this many training entities
    views: int = 4               # per training image: the rendering itself + (views - 1) augmented
    drawn_fraction: float = 0.25
    epochs: int = 5
    batch_size: int = 256
    lr: float = 2e-3
    dim: int = 128
    asge_steps: int = 400
    labels: str = "asge"         # label embeddings: asge | text | text+asge | learned (see LABEL_EMBEDDINGS)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("min_count", "views", "epochs", "batch_size", "dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be above 0, not {self.lr}")
        if not 0.0 <= self.drawn_fraction <= 1.0:
            raise ValueError(f"drawn_fraction is a share between 0 and 1, not {self.drawn_fraction}")
        if self.labels not in LABEL_EMBEDDINGS:
            raise ValueError(f"--labels {self.labels!r}: choose one of {', '.join(LABEL_EMBEDDINGS)}")

    @property
    def manifest_path(self) -> Path:
        return Path(self.manifest) if self.manifest else MANIFEST
