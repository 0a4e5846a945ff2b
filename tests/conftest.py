"""Shared fixtures: a temporary data home, stores on SQLite and PostgreSQL, a tiny KB folder, tiny generator
checkpoints (random weights), a tiny trained reader."""
from __future__ import annotations

import importlib.util
import json
import os
import uuid
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PG_URL = os.environ.get("MMKB_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def benchmark_module():
    """Load a benchmark script (`benchmarks/<name>.py`, not a package) as a module, to test its parts."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh MMKB_HOME; the settings cache is cleared so every test reads its own environment."""
    from index.config import get_settings

    path = tmp_path / "mmkb-home"
    monkeypatch.setenv("MMKB_HOME", str(path))
    monkeypatch.delenv("MMKB_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def _postgres_schema_url() -> tuple[str, str]:
    import sqlalchemy as sa

    schema = f"mmkb_test_{uuid.uuid4().hex[:10]}"
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        engine.dispose()
    except Exception as err:  # no server here: skip, saying why
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} ({type(err).__name__}); start it to run these tests")
    return f"{PG_URL}?options=-csearch_path%3D{schema}", schema


def _drop_schema(schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, home) -> str:
    """A database URL: a SQLite file in the temporary home, or a fresh schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{home / 'mmkb.sqlite'}"
        return
    url, schema = _postgres_schema_url()
    yield url
    _drop_schema(schema)


@pytest.fixture
def store(db_url, home):
    from index.store import EntityStore

    s = EntityStore(db_url, home)
    yield s
    s.engine.dispose()


def _flag(colors: list[tuple[int, int, int]], path: Path, size=(60, 40)) -> None:
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    band = size[1] // len(colors)
    for i, c in enumerate(colors):
        draw.rectangle([0, i * band, size[0], (i + 1) * band + 1], fill=c)
    img.save(path)


TINY_KB = [
    {"key": "country:BTN", "kind": "country", "name": "Bhutan", "aliases": ["Kingdom of Bhutan"],
     "sections": [{"heading": "capital", "text": "The capital of Bhutan is Thimphu.", "source": "test"},
                  {"heading": "region", "text": "Bhutan is in Southern Asia, in Asia.", "source": "test"}],
     "images": [{"path": "images/btn.png", "source": "test", "license": "CC0", "style": "flag"}]},
    {"key": "country:NPL", "kind": "country", "name": "Nepal",
     "sections": [{"heading": "capital", "text": "The capital of Nepal is Kathmandu.", "source": "test"}],
     "images": [{"path": "images/npl.png", "source": "test", "license": "CC0", "style": "flag"}]},
    {"key": "emoji:1F34E", "kind": "emoji", "name": "Red apple", "aliases": ["apple"],
     "sections": [{"heading": "keywords", "text": "Keywords for the Red apple emoji: apple, fruit, red.",
                   "source": "test"}],
     "images": [{"path": "images/apple.png", "source": "test", "license": "CC0", "style": "emoji"}],
     "tags": ["fruit"]},
]


@pytest.fixture
def tiny_kb(tmp_path) -> Path:
    """A KB folder in the ingest format: three entities, their sections and flag-like images."""
    folder = tmp_path / "tiny-kb"
    (folder / "images").mkdir(parents=True)
    _flag([(255, 205, 0), (255, 80, 0)], folder / "images" / "btn.png")
    _flag([(220, 20, 60), (0, 56, 147)], folder / "images" / "npl.png")
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse([5, 5, 35, 35], fill=(200, 0, 0, 255))
    img.save(folder / "images" / "apple.png")
    with open(folder / "manifest.jsonl", "w") as fh:
        for rec in TINY_KB:
            fh.write(json.dumps(rec) + "\n")
    return folder


def perturb(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Random non-zero weights everywhere (adaLN-Zero makes a fresh model output exactly 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """(dit folder, vae folder) of tiny random models, the DiT pointing at the VAE."""
    from generator.checkpoint import save_weights
    from generator.dit import DIT_PRESETS, DiT
    from generator.vae import VAE, VAE_PRESETS

    root = tmp_path_factory.mktemp("gen-ckpt")
    torch.manual_seed(0)
    vae = VAE(VAE_PRESETS["tiny"])
    vae_dir = save_weights(vae, {"kind": "vae", **vae.cfg.to_dict()}, root / "vae-tiny")
    cfg = DIT_PRESETS["tiny"]
    cfg.latent_channels = VAE_PRESETS["tiny"].latent_channels
    dit = perturb(DiT(cfg))
    dit_dir = save_weights(dit, {"kind": "dit", **cfg.to_dict(), "vae": str(vae_dir),
                                 "text_encoder": "all-MiniLM-L6-v2", "default_steps": 2}, root / "dit-tiny")
    cfg.latent_channels = 16  # presets are shared objects: restore
    return dit_dir, vae_dir


@pytest.fixture(scope="session")
def tiny_reader(tmp_path_factory):
    """mmkb-reader trained for a few steps on 12 worldkb entities: every stage runs, quality is not the point."""
    from rag.vlm.train import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("reader")
    cfg = TrainConfig(out=str(root / "model"), run_dir=str(root / "run"), read_steps=3, tag_steps=2,
                      entity_limit=12, views_per_image=1, label_questions=24, batch_closed=8, batch_read=4,
                      batch_tags=6, save_every_s=0)
    path = Trainer(cfg).run(resume=False)
    assert (path / "heads.safetensors").exists() and (path / "encoder" / "config.json").exists()
    card = json.loads((path / "training.json").read_text())
    assert card["label_stats"]["n_srt"] > 0 and card["label_stats"]["known_share"] == 0.5
    assert (path / "familiarity.safetensors").exists() and card["familiarity"]["known_entities"] > 0
    from rag.vlm.reader_vlm import ReaderVLM

    assert len(ReaderVLM.load(path).known_entities) == card["familiarity"]["known_entities"]  # the keys load too
    return path


def _shape(path: Path, shape: str, colour: tuple[int, int, int], size: int = 48) -> None:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    box = [6, 6, size - 6, size - 6]
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=(*colour, 255), outline=(0, 0, 0, 255), width=2)
    img.save(path)


@pytest.fixture(scope="session")
def tiny_tagger(tmp_path_factory):
    """(tagger folder, manifest) of a tagger trained for seconds on coloured shapes with keywords."""
    from index.tagger import TaggerConfig, train_tagger

    root = tmp_path_factory.mktemp("tagger-kb")
    (root / "images").mkdir()
    colours = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 210, 40)}
    with open(root / "manifest.jsonl", "w") as fh:
        for n, (colour, rgb) in enumerate(colours.items()):
            for shape in ("circle", "square"):
                for variant in range(3):
                    name = f"{colour}-{shape}" + (f"-{variant}" if variant else "")
                    _shape(root / "images" / f"{name}.png", shape, tuple(max(0, c - 25 * variant) for c in rgb))
                    words = f"{colour}, {shape} and {'round' if shape == 'circle' else 'corner'}"
                    fh.write(json.dumps({
                        "key": f"emoji:T{n}{shape[0]}{variant}", "kind": "emoji", "name": name.replace("-", " "),
                        "category": "Shapes", "subcategory": f"shape-{shape}",
                        "sections": [{"heading": "keywords", "text": f"Keywords for the {name} emoji: {words}."}],
                        "images": [{"path": f"images/{name}.png", "style": "test"}]}) + "\n")
    torch.manual_seed(0)
    path = train_tagger(TaggerConfig(manifest=str(root / "manifest.jsonl"), min_count=2, views=3, epochs=15,
                                     batch_size=16, lr=5e-3), out=root / "tagger")
    return path, root / "manifest.jsonl"


TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}


@pytest.fixture(scope="session")
def tiny_clip_cfg() -> dict:
    """A tiny open_clip model config (random weights train in seconds)."""
    return json.loads(json.dumps(TINY_CLIP))


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory, tiny_clip_cfg) -> str:
    """The name under which `tiny_clip_cfg` is registered with open_clip."""
    import open_clip

    folder = tmp_path_factory.mktemp("configs")
    (folder / "mmkb-clip-test.json").write_text(json.dumps(tiny_clip_cfg))
    open_clip.add_model_config(folder)
    return "mmkb-clip-test"
