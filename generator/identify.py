"""Who is in a generated scene: a pixel-space nearest neighbour over every worldkb rendering (needs
nothing trained) and the trained image embedder; plus the scene checks (background colour,
position, clean background) the benchmark reports."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from generator.scenes import BOX, COLOURS, SLOTS, Asset, asset_box, load_assets


class PixelIdentifier:
    """Nearest worldkb rendering in RGB space, each rendering composited on the scene's background."""

    def __init__(self, assets: tuple[Asset, ...] | None = None) -> None:
        self.assets = assets or load_assets()
        boxes = np.stack([np.asarray(asset_box(a.path), dtype=np.float32) / 255.0 for a in self.assets])
        self.rgb, self.alpha = boxes[..., :3], boxes[..., 3:]
        self.keys = [a.key for a in self.assets]

    def __call__(self, crop: np.ndarray, background: np.ndarray) -> str:
        """crop (32, 32, 3) uint8; background (3,) uint8 → entity key."""
        bg = background.astype(np.float32) / 255.0
        rendered = self.rgb * self.alpha + bg * (1 - self.alpha)
        d = ((rendered - crop.astype(np.float32)[None] / 255.0) ** 2).reshape(len(self.keys), -1).sum(1)
        return self.keys[int(d.argmin())]


class EmbedderIdentifier:
    """Nearest worldkb rendering (on white) by the trained image embedder's cosine similarity."""

    def __init__(self, assets: tuple[Asset, ...] | None = None, cache: Path | None = None) -> None:
        from index.embedders import load_image_embedder

        self.embedder = load_image_embedder()
        self.trained = self.embedder.trained
        self.assets = assets or load_assets()
        self.keys = [a.key for a in self.assets]
        self.fingerprint = self.embedder.fingerprint  # name@weights: retrained weights get their own cache
        self.cache_tag = self.fingerprint.replace("/", "_")  # usable in a file name
        if cache is not None:
            cache = cache.with_name(f"{cache.stem}-{self.cache_tag}{cache.suffix}")
        if cache is not None and cache.is_file():
            self.bank = np.load(cache)
        else:
            self.bank = self.embedder.encode_images([a.path for a in self.assets])
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.save(cache, self.bank)

    def __call__(self, crops: list[np.ndarray]) -> list[str]:
        e = self.embedder.encode_images([Image.fromarray(c) for c in crops])
        return [self.keys[int(i)] for i in (e @ self.bank.T).argmax(1)]


def crop(img: np.ndarray, slot: str) -> np.ndarray:
    x, y = SLOTS[slot]
    return img[y:y + BOX, x:x + BOX]


def outside_mask(slots: list[str], size: int = 64, margin: int = 2) -> np.ndarray:
    """True where no object box (grown by `margin`) covers the pixel."""
    m = np.ones((size, size), dtype=bool)
    for s in slots:
        x, y = SLOTS[s]
        m[max(0, y - margin):y + BOX + margin, max(0, x - margin):x + BOX + margin] = False
    return m


def background_colour(img: np.ndarray, slots: list[str]) -> np.ndarray:
    m = outside_mask(slots)
    return np.median(img[m], axis=0) if m.any() else np.median(img.reshape(-1, 3), axis=0)


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    d = [np.abs(np.array(COLOURS[n]) - rgb).sum() for n in names]
    return names[int(np.argmin(d))]


def is_clean(img: np.ndarray, slots: list[str], tol: int = 24, max_share: float = 0.01) -> bool:
    """No visible noise/speckle: ≤ 1% of the pixels outside the objects differ from the background by > tol."""
    m = outside_mask(slots)
    bg = background_colour(img, slots)
    off = np.abs(img[m].astype(np.int32) - bg.astype(np.int32)).max(axis=1) > tol
    return bool(off.mean() <= max_share)


def placed_slot(img: np.ndarray, bg: np.ndarray, tol: int = 48) -> str | None:
    """The slot whose centre is nearest the centroid of the foreground (pixels far from the background)."""
    fg = np.abs(img.astype(np.int32) - bg.astype(np.int32)).max(axis=2) > tol
    if fg.sum() < 16:
        return None
    ys, xs = np.nonzero(fg)
    cy, cx = ys.mean(), xs.mean()
    return min(SLOTS, key=lambda s: (SLOTS[s][0] + BOX / 2 - cx) ** 2 + (SLOTS[s][1] + BOX / 2 - cy) ** 2)
