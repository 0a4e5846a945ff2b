"""The image side of the reader's knowledge boundary: has it trained on this entity at all?

RET's tag is learnt from the reader's own closed-book answers, half of them about calibration
entities whose facts its closed-book heads never learn. With about forty calibration countries that
tag cannot tell a country it never saw from one it knows: the flag of an unknown country looks as
much like a flag as any other (worldkb KB-VQA, the reader shipped at commit 7de0691: RET skipped
retrieval for 56% of the Unseen-E country questions, whose closed-book answers were right 3% of the
time). What does tell them apart is how close the image is to the reader's memory of the entities it
trained on (AUROC 0.91 on those countries; only 0.61 on emoji drawn in another icon set, which sit
far from every memory row, so such emoji questions nearly always retrieve).

- memory: the mean reference-image embedding of each entity whose facts the reader trained on;
- familiarity: the highest cosine between a query image's embedding and that memory;
- threshold: the best split (Youden's J) between held-out query views of known entities and views of
  the calibration entities, made at training time; below it the image is taken to show an entity new
  to the reader, and retrieval runs whatever the RET tag says (`rag.pipeline.RAGConfig.familiarity_gate`);
- keys: which entities the memory rows are. An unknown flag that looks like a known one passes the
  threshold (26 of 70 Unseen-E countries did), but the index still names it: when the image's nearest
  indexed entity is not among these keys, the pipeline retrieves too (`MMKBRAG.nearest_unknown`).

Saved beside an mmkb-reader export as `familiarity.safetensors`; an export without it has no gate.
`python -m rag.vlm.familiarity EXPORT` makes it for an export from its training run's data.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np

from index.embedders import _normalise

FILE = "familiarity.safetensors"


def familiarity(image_vecs: np.ndarray, memory: np.ndarray) -> np.ndarray:
    """Highest cosine between each image embedding and the memory's (unit) rows."""
    return (_normalise(np.atleast_2d(image_vecs)) @ memory.T).max(1)


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
          per_entity: int = 2) -> tuple[np.ndarray, float, dict, list[str]] | None:
    """(memory, threshold, stats, the memory rows' entity keys) from a training run's features
    (`rag.vlm.train.Features`): held-out views of the known entities against views of the calibration
    ones; None when the run has no entities on one side."""
    rng = random.Random(seed)
    known_keys = sorted(k for k in known_keys if k in features.entity_vec and k in features.views)
    novel_keys = sorted(k for k in novel_keys if k in features.views)
    if not known_keys or not novel_keys:
        return None
    memory = _normalise(np.stack([features.entity_vec[k] for k in known_keys]))

    def views(keys: list[str]) -> np.ndarray:
        return np.stack([features.label_view(k, rng) for k in keys for _ in range(per_entity)])

    known, novel = familiarity(views(known_keys), memory), familiarity(views(novel_keys), memory)
    threshold = calibrate(known, novel)
    stats = {"known_entities": len(known_keys), "novel_entities": len(novel_keys), "threshold": round(threshold, 4),
             "known_views_above": round(float((known >= threshold).mean()), 3),
             "novel_views_below": round(float((novel < threshold).mean()), 3)}
    return memory, threshold, stats, known_keys


def save(export: Path, memory: np.ndarray, threshold: float, stats: dict, keys: list[str]) -> Path:
    import torch
    from safetensors.torch import save_file

    path = Path(export) / FILE
    save_file({"memory": torch.from_numpy(np.ascontiguousarray(memory)).half(),
               "threshold": torch.tensor([threshold], dtype=torch.float32)}, str(path),
              metadata={"stats": json.dumps(stats), "keys": json.dumps(list(keys))})
    return path


def load(export: Path) -> tuple[np.ndarray, float, frozenset[str] | None] | None:
    """(memory, threshold, known entity keys) saved beside an export (keys None in a file made before
    they were kept), or None when it has none."""
    path = Path(export) / FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:  # one read: the tensors and the keys in the metadata
        memory, threshold, keys = f.get_tensor("memory"), f.get_tensor("threshold"), (f.metadata() or {}).get("keys")
    return _normalise(memory), float(threshold[0]), frozenset(json.loads(keys)) if keys else None


def for_export(export: Path, run_dir: Path | None = None) -> dict:
    """Make `familiarity.safetensors` for an mmkb-reader export from its training run's data (the
    entity splits and query views, cached in the run folder or made again), and record it in the
    export's `training.json`."""
    from index.files import atomic_write_text
    from rag.vlm.train import Features, Trainer, export_setup

    export = Path(export)
    card, cfg = export_setup(export)
    embedder = card["image_embedder"]
    if run_dir is not None:
        cfg.run_dir = str(run_dir)
    records, questions = Trainer.questions(cfg)
    known, novel = Trainer.knowledge_sets(questions)
    built = build(Features(records, known | novel, cfg, embedder), known, novel, seed=cfg.seed)
    if built is None:
        raise ValueError(f"{export}: its training data has no calibration entities to calibrate against")
    save(export, *built)
    card["familiarity"] = built[2]
    atomic_write_text(export / "training.json", json.dumps(card, indent=1, default=str))
    return built[2]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m rag.vlm.familiarity", description=for_export.__doc__)
    p.add_argument("export", type=Path)
    p.add_argument("--run-dir", type=Path, default=None,
                   help="where the training run's features are cached (default: the one it was trained in)")
    args = p.parse_args(argv)
    print(for_export(args.export, args.run_dir))


if __name__ == "__main__":
    main()
