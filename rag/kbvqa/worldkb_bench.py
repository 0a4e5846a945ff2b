"""The worldkb KB-VQA benchmark in InfoSeek format, with query images the index has never seen.

Query images are renderings from other sources than the index (flag-icons flags, OpenMoji emoji;
`index/worldkb/queries/`), each with a random real-photo-like distortion. Splits: `seen` (entities
and phrasings the VLM trained on, new images), `unseen_question` (held-out phrasings) and
`unseen_entity` (entities the VLM never saw).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from rag.kbvqa.datasets import KBVQAExample, write_infoseek
from rag.kbvqa.questions import HELD_OUT_POOLS, TRAINED_POOLS, iter_questions, load_records

QUERY_DIR = Path(__file__).resolve().parents[2] / "index" / "worldkb" / "queries"
DISTORTIONS = ("clean", "rotate", "perspective", "crop", "blur", "noise", "jpeg", "background")


def query_images() -> dict[str, list[Path]]:
    manifest = QUERY_DIR / "manifest.jsonl"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} is missing: build it with `python -m index.worldkb.build_queries`")
    out: dict[str, list[Path]] = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.setdefault(row["key"], []).append(QUERY_DIR / row["path"])
    return out


def split_of(entity_split: str, phrasing: str) -> str | None:
    """The benchmark split of a question: trained phrasings (`train`, `more`) of trained entities are
    `seen`, held-out ones (`unseen`, `probe`) `unseen_question`."""
    if phrasing not in TRAINED_POOLS + HELD_OUT_POOLS:
        raise ValueError(f"unknown phrasing {phrasing!r}")
    if entity_split == "unseen_entity":
        return "unseen_entity"
    if entity_split == "train":
        return "seen" if phrasing in TRAINED_POOLS else "unseen_question"
    return None  # calibration entities are neither seen nor unseen: leave them out


def build(out: Path, per_split: int = 150, seed: int = 0, probe: bool = False) -> Path:
    """Write `out/questions.jsonl` and `out/images/<image_id>.png`; returns the questions file.
    `probe`: instead, one Unseen-Q split asked in PROBE_PHRASINGS (rag.kbvqa.questions), which no
    reader trained on and nobody tuned against."""
    from index.clip.augment import distort

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    queries = query_images()
    by_split: dict[str, dict[str, list]] = {}
    for q in iter_questions(load_records(), "probe" if probe else "all"):
        split = split_of(q.entity_split, q.phrasing)
        if split and q.entity_key in queries and (split == "unseen_question" or not probe):
            by_split.setdefault(split, {}).setdefault(q.question_type, []).append(q)
    (out / "images").mkdir(parents=True, exist_ok=True)
    examples = []
    for split, by_type in sorted(by_split.items()):
        types = sorted(by_type)
        chosen = []
        while len(chosen) < per_split and any(by_type.values()):
            t = types[len(chosen) % len(types)]
            if by_type[t]:
                chosen.append(by_type[t].pop(rng.randrange(len(by_type[t]))))
            else:
                types.remove(t)
        for q in tqdm(chosen, desc=f"kb-vqa {split}"):
            image_id = f"wkb-{len(examples):05d}"
            src = Image.open(rng.choice(queries[q.entity_key])).convert("RGBA")
            distort(src, rng.choice(DISTORTIONS), nrng).convert("RGB").save(out / "images" / f"{image_id}.png")
            examples.append(KBVQAExample(q.data_id, image_id, q.question, q.answers, q.answer_eval, split,
                                         q.question_type, q.entity_key, q.multi_answer))
    return write_infoseek(examples, out / "questions.jsonl")
