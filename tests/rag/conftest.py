"""Fixtures shared by the MMKB-RAG tests."""
from __future__ import annotations

import json

import pytest


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
