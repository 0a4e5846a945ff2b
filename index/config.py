"""One settings object for all of mmkb, read from the environment (`MMKB_...`)."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from index.clip import DEFAULT_CONFIG

# The view counts a query image and an index image may be embedded with, and what the second one is.
VIEW_CHOICES = {"query_views": ((1, 3), "itself, zoomed out, central crop"),
                "index_views": ((1, 2), "itself and zoomed out")}


def text_embedder_problem(name: str) -> str | None:
    """What is wrong with a text embedder setting written as a path (from /, . or ~, or naming something on
    disk), seen without loading it; None otherwise (a model name is checked where it loads)."""
    name = name.strip()
    if not name:
        return "empty: give a sentence-transformers model name or folder"
    path = Path(name).expanduser()
    if not (name.startswith(("/", ".", "~")) or path.exists()):
        return None
    if not path.exists():
        return f"no such folder {name}: give a sentence-transformers model folder or name"
    if not path.is_dir():
        return f"{name} is a file: give the sentence-transformers model folder"
    if not any((path / f).is_file() for f in ("modules.json", "config.json")):
        return f"{name} is not a sentence-transformers model folder (it has no modules.json or config.json)"
    return None


class Settings(BaseSettings):
    """Where mmkb keeps its data and which models it uses; every field is `MMKB_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="MMKB_", extra="ignore")

    home: Path = Path("~/.mmkb")
    database_url: str | None = None  # default: SQLite file under `home`
    text_embedder: str = "all-MiniLM-L6-v2"
    image_embedder: str = DEFAULT_CONFIG  # an open_clip model name, optionally "name:pretrained"
    vlm: str = "mmkb-reader"  # or a path to an mmkb-reader export, or hf:<path> for a transformers VLM
    device: str = "auto"  # "auto" picks cuda when torch sees a GPU
    memory_budget_mb: int = 4096  # FAISS index type is chosen to fit this
    target_recall: float = 0.95
    batch_size: int = 64
    # An image query is embedded as the mean of 3 views (itself, zoomed out, central crop;
    # index.embedders.query_views) or as itself alone (1). Measured on a second draw of the entity
    # benchmark's distortions (seed 1): flags 0.949 → 0.953, cross-vendor emoji 0.835 → 0.839, OpenMoji
    # 0.189 → 0.204, for three image embeddings per query.
    query_views: int = 3
    # Image search vectors also carry where things are in the picture (index.embedders.encode_search):
    # score = (embedding cosine + w × mean cosine of the 2×2 layout cells) / (1 + w); 0 turns it off.
    # Chosen on the seed-1 draw of the entity benchmark (README "Entity recognition").
    image_layout_weight: float = 0.25
    # An index image's search vector is the mean of 2 views (itself and zoomed out;
    # index.embedders.index_views) or the image alone (1). Chosen on the seed-1 draw of the entity
    # benchmark (README "Entity recognition", index views).
    index_views: int = 2
    # Image queries score an index image by their cosine with its vector minus this share of the index's
    # mean vector (index.search, "centring"), which takes some of the pull of pictures that resemble
    # everything off the ranking; 0 ranks by the plain cosine, 1 centres fully. Chosen on the seed-1
    # draw of the entity benchmark (README "Entity recognition"). Nothing stored changes: no rebuild.
    image_centre: float = 0.5

    @field_validator("text_embedder")
    @classmethod
    def _text_embedder(cls, v: str) -> str:
        if why := text_embedder_problem(v):
            raise ValueError(why)
        return v.strip()

    @field_validator("image_embedder")
    @classmethod
    def _image_embedder(cls, v: str) -> str:
        from index.clip import embedder_spec

        embedder_spec(v)  # a path that is not there is reported before any command runs
        return v.strip()

    @field_validator("image_layout_weight")
    @classmethod
    def _layout(cls, v: float) -> float:
        if not 0 <= v <= 10:
            raise ValueError("MMKB_IMAGE_LAYOUT_WEIGHT is between 0 (embedding alone) and 10")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v.strip()):
            raise ValueError(f"MMKB_DEVICE is auto, cpu, cuda, cuda:N (a GPU's number) or mps, not {v!r}")
        return v.strip()

    @field_validator("image_centre")
    @classmethod
    def _centre(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError("MMKB_IMAGE_CENTRE is between 0 (plain cosines) and 1 (the index fully centred)")
        return v

    @field_validator("query_views", "index_views")
    @classmethod
    def _views(cls, v: int, info) -> int:
        allowed, second = VIEW_CHOICES[info.field_name]
        if v not in allowed:
            raise ValueError(f"MMKB_{info.field_name.upper()} is 1 (the image alone) or {allowed[1]} ({second})")
        return v

    @property
    def home_dir(self) -> Path:
        path = self.home.expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'mmkb.sqlite'}"

    @property
    def index_dir(self) -> Path:
        return self.home_dir / "indexes"

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache
def get_settings() -> Settings:
    return Settings()
