"""The image side of the reader's knowledge boundary: has it trained on this entity at all?

RET's tag is learnt from the reader's own closed-book answers, half of them about calibration
entities it never trained on. With about forty calibration countries that tag cannot tell a country it
never saw from one it knows: the flag of an unknown country looks as much like a flag as any other
(worldkb KB-VQA, reader of 2026-11-26: RET skipped retrieval for 56% of the Unseen-E country
questions, whose closed-book answers were right 3% of the time). What does tell them apart is how
close the image is to the reader's memory of the entities it trained on (AUROC 0.91 there).

- memory: the mean reference-image embedding of each entity whose facts the reader trained on;
- familiarity: the highest cosine between a query image's embedding and that memory;
- threshold: the best split (Youden's J) between held-out query views of known entities and views of
  the calibration entities, made at training time; below it the entity is new to the reader and
  retrieval is needed whatever the RET tag says (`rag.pipeline.RAGConfig.familiarity_gate`).

Saved beside an mmkb-reader export as `familiarity.safetensors`; an export without it has no gate.
`python -m rag.vlm.familiarity EXPORT` makes it for an export from its training run's data.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

FILE = "familiarity.safetensors"


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def familiarity(image_vecs: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """Highest cosine between each image embedding and the memory's rows."""
    return (_unit(image_vecs) @ _unit(memory).T).max(1)


def calibrate(known: np.ndarray, novel: np.ndarray) -> float:
    """The threshold that best separates known from novel scores: the largest true-known rate
    minus false-known rate (Youden's J) among the observed values."""
    known, novel = np.asarray(known, np.float64), np.asarray(novel, np.float64)
    if not len(known) or not len(novel):
        raise ValueError("calibrating familiarity needs scores of both known and novel entities")
    candidates = np.unique(np.concatenate([known, novel]))
    j = [(known >= t).mean() - (novel >= t).mean() for t in candidates]
    return float(candidates[int(np.argmax(j))])


def build(features, known_keys: set[str], novel_keys: set[str], seed: int = 0,
          per_entity: int = 2) -> tuple[np.ndarray, float, dict]:
    """(memory, threshold, stats) from a training run's features (`rag.vlm.train.Features`):
    held-out views of the known entities against views of the calibration ones."""
    rng = random.Random(seed)
    keys = sorted(k for k in known_keys if k in features.entity_vec)
    memory = np.stack([features.entity_vec[k] for k in keys]).astype(np.float32)

    def views(ks: set[str]) -> np.ndarray:
        return np.stack([features.label_view(k, rng) for k in sorted(ks) if k in features.views
                         for _ in range(per_entity)])

    known, novel = familiarity(views(known_keys), memory), familiarity(views(novel_keys), memory)
    threshold = calibrate(known, novel)
    stats = {"known_entities": len(keys), "threshold": round(threshold, 4),
             "known_views_above": round(float((known >= threshold).mean()), 3),
             "novel_views_below": round(float((novel < threshold).mean()), 3),
             "novel_entities": len({k for k in novel_keys if k in features.views})}
    return memory, threshold, stats


def save(export: Path, memory: np.ndarray, threshold: float, stats: dict) -> Path:
    import torch
    from safetensors.torch import save_file

    path = Path(export) / FILE
    save_file({"memory": torch.from_numpy(np.ascontiguousarray(memory)).half(),
               "threshold": torch.tensor([threshold], dtype=torch.float32)}, str(path),
              metadata={"stats": json.dumps(stats)})
    return path


def load(export: Path) -> tuple[np.ndarray, float] | None:
    """(memory, threshold) saved beside an export, or None when it has none."""
    path = Path(export) / FILE
    if not path.is_file():
        return None
    from safetensors.numpy import load_file

    t = load_file(str(path))
    return t["memory"].astype(np.float32), float(t["threshold"][0])


def for_export(export: Path) -> dict:
    """Make `familiarity.safetensors` for an mmkb-reader export from its training run's data."""
    from rag.vlm.train import TrainConfig, Trainer

    card = json.loads((Path(export) / "training.json").read_text())
    cfg = TrainConfig(**{k: v for k, v in card["train_config"].items() if k in TrainConfig.__dataclass_fields__})
    trainer = Trainer(cfg)  # its data and features (cached in the run folder), not its weights
    memory, threshold, stats = build(trainer.features, *trainer.knowledge_sets(), seed=cfg.seed)
    save(export, memory, threshold, stats)
    return stats


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rag.vlm.familiarity", description=for_export.__doc__)
    p.add_argument("export", type=Path)
    args = p.parse_args(argv)
    print(for_export(args.export))


if __name__ == "__main__":
    main()
