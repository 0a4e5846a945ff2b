"""worldkb entities as training and evaluation data for the image/text embedder.

Each entity has several reference renderings (a country: its svg-country-flags flag and the
Google and Twitter flag emoji; an emoji: its Google and Twitter renderings) and a few texts
built from its manifest record. A fixed fifth of the emoji entities, chosen by a hash of the
key, is held out of training entirely so that benchmarks can measure recognition of entities
the embedder has never seen.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image

from index.worldkb import DATA_DIR, MANIFEST

HELD_OUT_FRACTION = 0.2


@dataclass(frozen=True)
class Entity:
    """One worldkb entity with its reference images (paths, styles) and its texts."""

    key: str
    kind: str
    name: str
    images: tuple[Path, ...]
    styles: tuple[str, ...]
    texts: tuple[str, ...] = field(repr=False)
    group: str = ""  # look-alikes: an emoji's subcategory; all countries share one


def is_held_out(key: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Whether an emoji entity is kept out of training (stable: a hash of its key)."""
    if not key.startswith("emoji:"):
        return False
    digest = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def _section(record: dict, heading: str) -> str | None:
    return next((s["text"] for s in record.get("sections", []) if s["heading"] == heading), None)


def entity_texts(record: dict) -> tuple[str, ...]:
    """Captions for one manifest record: name, aliases, category/keywords, a description."""
    name = record["name"]
    texts = [name]
    if record["kind"] == "country":
        texts += [f"flag of {name}", f"the flag of {name}"]
        texts += [a for a in record.get("aliases", []) if len(a) > 3 and not a.startswith("flag-")][:3]
        region = _section(record, "region")
        if region:
            texts.append(f"the flag of {name}. {region}")
    else:
        texts.append(f"{name} emoji")
        texts += [a.replace("_", " ") for a in record.get("aliases", [])][:2]
        if record.get("category"):
            texts.append(f"{name}, an emoji in {record['category']} ({record.get('subcategory', '')})")
        keywords = _section(record, "keywords")
        if keywords:
            # "Keywords for the X emoji: a, b and c." -> "a, b, c"
            words = keywords.split(":", 1)[-1].strip().rstrip(".").replace(" and ", ", ")
            texts.append(f"{name} emoji: {words}")
    return tuple(dict.fromkeys(t for t in texts if t))


def load_entities(manifest: Path = MANIFEST) -> list[Entity]:
    """All worldkb entities in manifest order."""
    out = []
    with open(manifest) as f:
        for line in f:
            rec = json.loads(line)
            root = manifest.parent
            out.append(Entity(rec["key"], rec["kind"], rec["name"],
                              tuple(root / im["path"] for im in rec["images"]),
                              tuple(im["style"] for im in rec["images"]), entity_texts(rec),
                              rec.get("subcategory") or rec["kind"]))
    return out


@lru_cache(maxsize=None)
def load_image(path: Path) -> Image.Image:
    """A reference image, decoded once (RGB flags, RGBA emoji)."""
    img = Image.open(path)
    img.load()
    return img


def split(entities: list[Entity]) -> tuple[list[Entity], list[Entity]]:
    """(trained on, held out)."""
    return ([e for e in entities if not is_held_out(e.key)], [e for e in entities if is_held_out(e.key)])


__all__ = ["DATA_DIR", "Entity", "entity_texts", "is_held_out", "load_entities", "load_image", "split"]
