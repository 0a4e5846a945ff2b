"""Query-like distortions of reference images, for training the embedder and for benchmarks.

A photo of a flag or an emoji differs from the reference rendering by viewpoint
(perspective, rotation), framing (scale, crop), other things in front of it or around it
(occlusion, clutter, a background), and the camera (blur, noise, JPEG). Colour carries the
identity of flags and emoji, so hue is never changed; brightness and contrast only mildly.

`augment(img, rng)` is the random training pipeline; `distort(img, name, rng)` applies one
named distortion from `DISTORTIONS`, deterministic for a given `rng` state, as the
benchmark does. Both keep the input's size and mode; transparent pixels stay transparent
unless a background is drawn behind them (open_rgb later composites them on white).
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

DISTORTIONS = ("clean", "perspective", "rotate", "crop", "occlude", "blur", "noise", "jpeg",
               "background", "mixed")
CLEAR = (0, 0, 0, 0)


def _rgba(img: Image.Image) -> Image.Image:
    return img.convert("RGBA") if img.mode != "RGBA" else img.copy()


def _on(img: Image.Image, background: Image.Image) -> Image.Image:
    """`img` (RGBA) composited over an opaque background of the same size."""
    return Image.alpha_composite(background.convert("RGBA"), img)


def _white(size: tuple[int, int]) -> Image.Image:
    return Image.new("RGBA", size, (255, 255, 255, 255))


def _finish(img: Image.Image, mode: str) -> Image.Image:
    """Back to the caller's mode; RGB callers get transparency on white, as references."""
    if mode == "RGBA":
        return img
    return _on(img, _white(img.size)).convert(mode)


def _colour(rng: np.random.Generator) -> tuple[int, int, int, int]:
    return (*(int(c) for c in rng.integers(0, 256, 3)), 255)


# --- geometry -------------------------------------------------------------------------

def _perspective_coeffs(src: np.ndarray, dst: np.ndarray) -> list[float]:
    """Coefficients PIL's PERSPECTIVE transform needs to map output points `dst` to `src`."""
    rows = []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.array(rows, float), src.reshape(8)).tolist()


def perspective(img: Image.Image, rng: np.random.Generator, strength: float = 0.3) -> Image.Image:
    """A viewpoint change: each corner moves inwards by up to `strength` of the side."""
    w, h = img.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    jitter = rng.uniform(0, strength, (4, 2)) * [w, h] * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    dst = src + jitter
    coeffs = _perspective_coeffs(src, dst)
    return _rgba(img).transform((w, h), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC,
                                fillcolor=CLEAR)


def rotate(img: Image.Image, rng: np.random.Generator, max_degrees: float = 30.0) -> Image.Image:
    """An in-plane rotation; the whole rotated image is fitted back into the frame."""
    angle = float(rng.uniform(-max_degrees, max_degrees))
    turned = _rgba(img).rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=CLEAR)
    return _fit(turned, img.size, 1.0, (0.5, 0.5))


def _fit(img: Image.Image, size: tuple[int, int], scale: float, where: tuple[float, float]) -> Image.Image:
    """`img` resized to `scale` of the frame (aspect kept) and placed at relative `where`."""
    w, h = size
    k = scale * min(w / img.width, h / img.height)
    nw, nh = max(1, round(img.width * k)), max(1, round(img.height * k))
    small = img.resize((nw, nh), Image.Resampling.BICUBIC)
    canvas = Image.new("RGBA", size, CLEAR)
    canvas.alpha_composite(small, (round((w - nw) * where[0]), round((h - nh) * where[1])))
    return canvas


def crop(img: Image.Image, rng: np.random.Generator, area: tuple[float, float] = (0.5, 0.85),
         aspect: float = 1.3) -> Image.Image:
    """A closer framing: a random crop of `area` of the image, stretched back to full size."""
    w, h = img.size
    a = rng.uniform(*area)
    r = np.exp(rng.uniform(-np.log(aspect), np.log(aspect)))
    cw, ch = min(w, round(w * np.sqrt(a * r))), min(h, round(h * np.sqrt(a / r)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return _rgba(img).crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BICUBIC)


def zoom_out(img: Image.Image, rng: np.random.Generator, scale: tuple[float, float] = (0.55, 0.9),
             aspect: float = 1.25) -> Image.Image:
    """A farther framing: the image smaller (and a little squashed) somewhere in the frame."""
    r = np.exp(rng.uniform(-np.log(aspect), np.log(aspect)))
    squashed = _rgba(img).resize((max(1, round(img.width * r)), img.height), Image.Resampling.BICUBIC)
    return _fit(squashed, img.size, rng.uniform(*scale), tuple(rng.uniform(0, 1, 2)))


# --- things in the scene ----------------------------------------------------------------

def occlude(img: Image.Image, rng: np.random.Generator, area: tuple[float, float] = (0.1, 0.25)) -> Image.Image:
    """One to three opaque shapes in front, covering `area` of the frame in total."""
    out = _rgba(img)
    w, h = out.size
    n = int(rng.integers(1, 4))
    draw = ImageDraw.Draw(out)
    for _ in range(n):
        a = rng.uniform(*area) / n
        r = np.exp(rng.uniform(-0.7, 0.7))
        bw, bh = max(2, round(w * np.sqrt(a * r))), max(2, round(h * np.sqrt(a / r)))
        x, y = int(rng.integers(-bw // 3, w - bw // 2)), int(rng.integers(-bh // 3, h - bh // 2))
        box = (x, y, x + bw, y + bh)
        (draw.ellipse if rng.random() < 0.4 else draw.rectangle)(box, fill=_colour(rng))
    return out


def background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A random opaque backdrop: a colour, a gradient, a texture, stripes or shapes."""
    w, h = size
    kind = int(rng.integers(0, 5))
    if kind == 0:
        return Image.new("RGBA", size, _colour(rng))
    if kind == 1:
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
        a, b = np.array(_colour(rng)[:3], float), np.array(_colour(rng)[:3], float)
        ramp = (a[None] * (1 - t[:, None]) + b[None] * t[:, None]).astype(np.uint8)
        arr = np.broadcast_to(ramp[None], (h, w, 3)) if len(t) == w else np.broadcast_to(ramp[:, None], (h, w, 3))
        return Image.fromarray(np.ascontiguousarray(arr)).convert("RGBA")
    if kind == 2:
        coarse = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).convert("RGBA")
    canvas = Image.new("RGBA", size, _colour(rng))
    draw = ImageDraw.Draw(canvas)
    if kind == 3:
        step = int(rng.integers(4, 16))
        c = _colour(rng)
        for i in range(-h, w + h, 2 * step):
            draw.polygon([(i, 0), (i + step, 0), (i + step + h, h), (i + h, h)], fill=c)
        return canvas
    return clutter(canvas, rng, n=int(rng.integers(3, 9)))


def clutter(img: Image.Image, rng: np.random.Generator, n: int = 3,
            distractors: Sequence[Image.Image] = ()) -> Image.Image:
    """Other things drawn over the frame: random shapes, or other (distractor) images."""
    out = _rgba(img)
    w, h = out.size
    draw = ImageDraw.Draw(out)
    for _ in range(n):
        if distractors and rng.random() < 0.7:
            other = _rgba(distractors[int(rng.integers(0, len(distractors)))])
            k = rng.uniform(0.25, 0.5) * min(w / other.width, h / other.height)
            small = other.resize((max(1, round(other.width * k)), max(1, round(other.height * k))),
                                 Image.Resampling.BICUBIC)
            out.alpha_composite(small, (int(rng.integers(-small.width // 2, w - small.width // 2)),
                                        int(rng.integers(-small.height // 2, h - small.height // 2))))
            draw = ImageDraw.Draw(out)
            continue
        s = rng.uniform(0.1, 0.35) * min(w, h)
        x, y = rng.uniform(-s / 2, w - s / 2), rng.uniform(-s / 2, h - s / 2)
        box = (x, y, x + s * np.exp(rng.uniform(-0.5, 0.5)), y + s)
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse(box, fill=_colour(rng))
        elif shape == 1:
            draw.rectangle(box, fill=_colour(rng))
        else:
            draw.line(box, fill=_colour(rng), width=int(rng.integers(1, 4)))
    return out


def on_background(img: Image.Image, rng: np.random.Generator, scale: tuple[float, float] = (0.6, 0.9),
                  distractors: Sequence[Image.Image] = ()) -> Image.Image:
    """The object, smaller, somewhere on a random backdrop (possibly with other things)."""
    bg = background(img.size, rng)
    if distractors and rng.random() < 0.5:
        bg = clutter(bg, rng, n=int(rng.integers(1, 3)), distractors=distractors)
    placed = _fit(_rgba(img), img.size, rng.uniform(*scale), tuple(rng.uniform(0, 1, 2)))
    return _on(placed, bg)


# --- the camera -----------------------------------------------------------------------

def _photometric(fn: Callable[[Image.Image], Image.Image]) -> Callable[[Image.Image], Image.Image]:
    """Apply `fn` to the RGB content and keep the alpha channel (blur spreads it too)."""
    def apply(img: Image.Image) -> Image.Image:
        rgba = _rgba(img)
        alpha = rgba.getchannel("A")
        # Colour under transparent pixels would bleed in: use white there, as it is displayed.
        rgb = fn(_on(rgba, _white(rgba.size)).convert("RGB"))
        return Image.merge("RGBA", (*rgb.split(), alpha))
    return apply


def blur(img: Image.Image, rng: np.random.Generator, radius: tuple[float, float] = (0.7, 1.5)) -> Image.Image:
    """Out of focus or moving: a Gaussian blur of the colours and the silhouette."""
    r = float(rng.uniform(*radius))
    return _rgba(img).filter(ImageFilter.GaussianBlur(r))


def noise(img: Image.Image, rng: np.random.Generator, sigma: tuple[float, float] = (6.0, 18.0)) -> Image.Image:
    """Sensor noise: additive Gaussian noise per pixel and channel."""
    s = float(rng.uniform(*sigma))

    def add(rgb: Image.Image) -> Image.Image:
        arr = np.asarray(rgb, np.float32) + rng.normal(0, s, (rgb.height, rgb.width, 3)).astype(np.float32)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return _photometric(add)(img)


def jpeg(img: Image.Image, rng: np.random.Generator, quality: tuple[int, int] = (8, 30)) -> Image.Image:
    """Compression artefacts: a JPEG round trip at low quality."""
    q = int(rng.integers(quality[0], quality[1] + 1))

    def roundtrip(rgb: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        rgb.save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return _photometric(roundtrip)(img)


def light(img: Image.Image, rng: np.random.Generator, amount: float = 0.15) -> Image.Image:
    """Mild exposure and contrast changes; never hue or saturation."""
    def adjust(rgb: Image.Image) -> Image.Image:
        rgb = ImageEnhance.Brightness(rgb).enhance(1 + rng.uniform(-amount, amount))
        return ImageEnhance.Contrast(rgb).enhance(1 + rng.uniform(-amount, amount))
    return _photometric(adjust)(img)


# --- drawing style ---------------------------------------------------------------------

def drawn(img: Image.Image, rng: np.random.Generator, colours: tuple[int, int] = (4, 8),
          line: tuple[int, int] = (1, 2)) -> Image.Image:
    """The same subject drawn as a flat icon: a few flat colours (no shading or gradients) and
    dark outlines around the silhouette and between clearly different colour regions, as icon
    sets such as OpenMoji draw emoji. The palette is the image's own (median cut), so colours
    keep their hue."""
    rgba = _rgba(img)
    alpha = np.asarray(rgba.getchannel("A")) > 127
    k = int(rng.integers(colours[0], colours[1] + 1))
    flat = _on(rgba, _white(rgba.size)).convert("RGB").quantize(k, method=Image.Quantize.MEDIANCUT)
    flat = flat.filter(ImageFilter.ModeFilter(5))  # small regions (anti-aliasing, shading) merge away
    labels = np.asarray(flat).astype(np.int16)
    palette = np.asarray(flat.getpalette()[:3 * 256], np.float32).reshape(-1, 3)
    rgb = palette[labels].astype(np.uint8)
    regions = np.where(alpha, labels, -1)
    edge = np.zeros_like(alpha)
    for axis in (0, 1):
        other = np.roll(regions, 1, axis)
        # Ink only where neighbouring palette colours differ by more than 80 (of 441, RGB distance):
        # shading steps of one surface stay unlined, real parts (eyes, a flag's bands) get a line.
        distinct = np.linalg.norm(palette[np.maximum(regions, 0)] - palette[np.maximum(other, 0)], axis=-1) > 80
        edge |= (regions != other) & (((regions < 0) != (other < 0)) | distinct)
    edge[0, :] = edge[:, 0] = False  # np.roll wraps around: the first row/column compare with the last
    width = int(rng.integers(line[0], line[1] + 1))
    ink = edge
    if width > 1:  # a 1-px line is the edge itself; MaxFilter(1) crashes some Pillow builds (SIGFPE)
        ink = np.asarray(Image.fromarray(edge.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(2 * width - 1))) > 0
    rgb[ink] = int(rng.integers(0, 50))
    silhouette = Image.fromarray((alpha | ink).astype(np.uint8) * 255)
    return Image.merge("RGBA", (*Image.fromarray(rgb).split(), silhouette))


# --- named distortions and the training pipeline ----------------------------------------

def _mixed(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Two to four distortions together, as a casual photo would show them."""
    out = _rgba(img)
    geometric = [perspective, rotate, crop]
    out = geometric[int(rng.integers(0, 3))](out, rng)
    if rng.random() < 0.5:
        out = on_background(out, rng)
    if rng.random() < 0.3:
        out = occlude(out, rng, area=(0.08, 0.18))
    camera = [blur, noise, jpeg]
    out = camera[int(rng.integers(0, 3))](out, rng)
    return light(out, rng)


NAMED: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "clean": lambda img, rng: _rgba(img),
    "perspective": perspective,
    "rotate": rotate,
    "crop": crop,
    "occlude": occlude,
    "blur": blur,
    "noise": noise,
    "jpeg": jpeg,
    "background": on_background,
    "mixed": _mixed,
}


def distort(img: Image.Image, name: str, rng: np.random.Generator) -> Image.Image:
    """One named distortion of `img` (see `DISTORTIONS`), same size and mode as the input."""
    if name not in NAMED:
        raise ValueError(f"unknown distortion {name!r}; one of {DISTORTIONS}")
    if name == "clean":
        return img.copy()
    return _finish(NAMED[name](img, rng), img.mode)


def augment(img: Image.Image, rng: np.random.Generator, distractors: Sequence[Image.Image] = ()) -> Image.Image:
    """A random training view of `img`: a random subset of every distortion, often several."""
    out = _rgba(img)
    if rng.random() < 0.5:
        out = crop(out, rng, area=(0.45, 1.0), aspect=1.5)
    elif rng.random() < 0.5:
        out = zoom_out(out, rng, scale=(0.5, 1.0), aspect=1.4)
    if rng.random() < 0.4:
        out = perspective(out, rng, strength=float(rng.uniform(0.1, 0.35)))
    if rng.random() < 0.4:
        out = rotate(out, rng, max_degrees=35)
    if rng.random() < 0.5:
        out = on_background(out, rng, scale=(0.5, 1.0), distractors=distractors)
    elif distractors and rng.random() < 0.2:
        out = clutter(out, rng, n=int(rng.integers(1, 3)), distractors=distractors)
    if rng.random() < 0.35:
        out = occlude(out, rng, area=(0.05, 0.3))
    if rng.random() < 0.3:
        out = blur(out, rng, radius=(0.4, 1.8))
    if rng.random() < 0.3:
        out = noise(out, rng, sigma=(3.0, 22.0))
    if rng.random() < 0.35:
        out = jpeg(out, rng, quality=(6, 60))
    if rng.random() < 0.5:
        out = light(out, rng, amount=0.2)
    return _finish(out, img.mode)


def query_view(img: Image.Image, rng: np.random.Generator, drawn_fraction: float = 0.0,
               distractors: Sequence[Image.Image] = ()) -> Image.Image:
    """A query-like training view: with probability `drawn_fraction` first redrawn as a flat
    outlined icon (another icon set's style), then `augment`ed. Give `img` with its alpha: the
    outline follows the silhouette."""
    if drawn_fraction and rng.random() < drawn_fraction:
        img = drawn(img, rng)
    return augment(img, rng, distractors)


def augment_light(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A reference-like training view: the rendering as the index holds it, or nearly so."""
    if rng.random() < 0.5:
        return img.copy()
    out = crop(img, rng, area=(0.75, 1.0), aspect=1.15) if rng.random() < 0.5 else _rgba(img)
    if rng.random() < 0.3:
        out = rotate(out, rng, max_degrees=8)
    return _finish(light(out, rng, amount=0.1), img.mode)
