"""Scene compositor: real worldkb assets (flags, emoji) placed on coloured backgrounds in
layouts that a caption describes, for the generator's five tasks (text-to-image, reference
generation, editing, 2- and 3-reference composition).

Objects sit in 32x32 boxes on an 8-px grid of a 64x64 canvas, so with an 8x VAE a box is 4x4
latent tokens, the same as a 32x32 reference. A deterministic ~10% of entities (by a hash of
the key) is held out: never a training target nor reference, only used in evaluation.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "index" / "worldkb" / "data"
CANVAS, BOX = 64, 32
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40),
    "orange": (240, 140, 30), "purple": (130, 50, 170), "pink": (240, 140, 190), "black": (20, 20, 20),
    "gray": (128, 128, 128), "white": (255, 255, 255), "light blue": (110, 200, 240),
}
SLOTS: dict[str, tuple[int, int]] = {  # name -> (x, y) of the 32x32 box's top-left corner
    "in the center": (16, 16), "on the left": (0, 16), "on the right": (32, 16), "at the top": (16, 0),
    "at the bottom": (16, 32), "at the top left": (0, 0), "at the top right": (32, 0),
    "at the bottom left": (0, 32), "at the bottom right": (32, 32),
}
PAIRS = [("on the left", "on the right"), ("at the top", "at the bottom"),
         ("at the top left", "at the bottom right"), ("at the top right", "at the bottom left")]
TRIPLES = [("at the top left", "at the top right", "at the bottom"),
           ("at the top", "at the bottom left", "at the bottom right")]
ORDINALS = ["first", "second", "third"]
TASKS = {"t2i": 0.08, "ref": 0.42, "compose2": 0.15, "compose3": 0.05, "edit_colour": 0.1,
         "edit_move": 0.1, "edit_swap": 0.1}


@dataclass(frozen=True)
class Asset:
    key: str
    kind: str
    name: str
    style: str
    path: str


def is_held_out(key: str, fraction: float = 0.1) -> bool:
    """Deterministic held-out split by a hash of the entity key."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 1000 < fraction * 1000


# The renderings the shipped DiTs were trained and benchmarked on. worldkb also holds Fluent emoji
# (`emoji-fluent-flat`, `emoji-fluent-modern`, added for the embedder); adding them here changes the
# training and benchmark draws, so it goes with a retrained DiT.
ASSET_STYLES = ("flag", "emoji-google", "emoji-twitter")


@lru_cache(maxsize=2)
def load_assets(data: Path = DATA, styles: tuple[str, ...] = ASSET_STYLES) -> tuple[Asset, ...]:
    """Every (entity, rendering) of worldkb in one of `styles`; each rendering is an asset."""
    out = []
    with open(data / "manifest.jsonl") as f:
        for line in f:
            e = json.loads(line)
            for im in e.get("images", []):
                if im.get("style", "") in styles:
                    out.append(Asset(e["key"], e["kind"], e["name"], im["style"], str(data / im["path"])))
    return tuple(out)


def fit_box(img: Image.Image, box: int = BOX) -> Image.Image:
    """An RGBA box x box image with `img` scaled to fit, centred, transparent around it."""
    img = img.convert("RGBA")
    s = box / max(img.size)
    w, h = max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))
    out = Image.new("RGBA", (box, box), (0, 0, 0, 0))
    out.paste(img.resize((w, h), Image.LANCZOS), ((box - w) // 2, (box - h) // 2))
    return out


@lru_cache(maxsize=8192)
def asset_box(path: str) -> Image.Image:
    return fit_box(Image.open(path))


def reference_image(img: Image.Image | str, box: int = BOX) -> Image.Image:
    """A reference as the DiT sees it: fitted into box x box on white, RGB."""
    boxed = asset_box(img) if isinstance(img, str) else fit_box(img, box)
    bg = Image.new("RGBA", (box, box), (255, 255, 255, 255))
    return Image.alpha_composite(bg, boxed).convert("RGB")


def render(objects: list[tuple[str, str]], colour: str) -> Image.Image:
    """A 64x64 scene: (asset path, slot name) pairs on a plain background."""
    canvas = Image.new("RGBA", (CANVAS, CANVAS), COLOURS[colour] + (255,))
    for path, slot in objects:
        canvas.alpha_composite(asset_box(path), SLOTS[slot])
    return canvas.convert("RGB")


@dataclass
class Scene:
    """One training/evaluation example: caption, references and the target scene."""
    task: str
    caption: str
    colour: str
    objects: list[tuple[Asset, str]]          # what the target shows, and where
    refs: list[Image.Image] = field(default_factory=list)
    ref_keys: list[str] = field(default_factory=list)

    def target(self) -> Image.Image:
        return render([(a.path, s) for a, s in self.objects], self.colour)


def thing(a: Asset) -> str:
    return "flag" if a.kind == "country" else "emoji"


def named(a: Asset) -> str:
    return f"the flag of {a.name}" if a.kind == "country" else f"the {a.name.lower()} emoji"


def article(colour: str) -> str:
    return ("an " if colour[0] in "aeiou" else "a ") + colour


def _where(slot: str, rng: random.Random) -> str:
    return "" if slot == "in the center" and rng.random() < 0.5 else f" {slot}"


class SceneSampler:
    """Draws scenes for a task from a pool of assets (train: seen entities; eval: held-out ones)."""

    def __init__(self, assets: tuple[Asset, ...] | None = None, held_out: bool = False, seed: int = 0) -> None:
        assets = assets if assets is not None else load_assets()
        self.assets = [a for a in assets if is_held_out(a.key) == held_out]
        self.rng = random.Random(seed)

    def asset(self) -> Asset:
        return self.rng.choice(self.assets)

    def sample(self, task: str | None = None) -> Scene:
        r = self.rng
        task = task or r.choices(list(TASKS), weights=list(TASKS.values()))[0]
        colour = r.choice(list(COLOURS))
        if task in ("t2i", "ref"):
            a, slot = self.asset(), r.choice(list(SLOTS))
            if task == "t2i":
                return Scene(task, f"{named(a)}{_where(slot, r)} on {article(colour)} background", colour, [(a, slot)])
            return Scene(task, f"the {thing(a)}{_where(slot, r)} on {article(colour)} background", colour,
                         [(a, slot)], [reference_image(a.path)], [a.key])
        if task in ("compose2", "compose3"):
            k = 2 if task == "compose2" else 3
            slots = list(r.choice(PAIRS if k == 2 else TRIPLES))
            if r.random() < 0.5:
                r.shuffle(slots)
            assets = [self.asset() for _ in range(k)]
            parts = [f"the {ORDINALS[i]} {slots[i]}" for i in range(k)]
            caption = (", ".join(parts[:-1]) + " and " + parts[-1]) + f" on {article(colour)} background"
            return Scene(task, caption, colour, list(zip(assets, slots)),
                         [reference_image(a.path) for a in assets], [a.key for a in assets])
        # editing: the source scene is the first reference (64x64), the target is the edited scene
        a, slot = self.asset(), r.choice(list(SLOTS))
        src_colour = colour
        source = render([(a.path, slot)], src_colour)
        if task == "edit_colour":
            new = r.choice([c for c in COLOURS if c != src_colour])
            return Scene(task, f"change the background to {new}", new, [(a, slot)], [source], [a.key])
        if task == "edit_move":
            new = r.choice([s for s in SLOTS if s != slot])
            return Scene(task, f"move it to {new.split(' ', 1)[1]}", src_colour, [(a, new)], [source], [a.key])
        b = self.asset()
        return Scene(task, f"replace the {thing(a)} with the second image", src_colour, [(b, slot)],
                     [source, reference_image(b.path)], [a.key, b.key])


def to_tensor(img: Image.Image) -> np.ndarray:
    """HWC uint8 → CHW float32 in [-1, 1]."""
    return np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
