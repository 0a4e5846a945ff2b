"""The generation pipeline: one `__call__` for text-to-image, reference generation, editing and
composition; loads with one call; the fast path (few-step distilled model, int8) is explicit."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from generator import MAX_SEED
from generator.checkpoint import CHECKPOINTS, load_weights
from generator.dit import DiT, DiTConfig, euler_sample
from generator.metrics import to_uint8
from generator.scenes import CANVAS, reference_image, to_tensor
from generator.text import TextEncoder
from generator.train_dit import load_vae

DEFAULT_DIT, FAST_DIT = "dit-medium", "dit-medium-fast"
MAX_REFS = 3


def resolve(name: str | Path) -> Path:
    """A checkpoint folder from a path, a shipped name (generator/checkpoints) or the name of one trained
    here (MMKB_HOME/models, where `mmkb train vae|dit|distill` export)."""
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if (CHECKPOINTS / str(name)).is_dir():
        return CHECKPOINTS / str(name)
    from index.config import get_settings

    trained = get_settings().home_dir / "models" / str(name)
    return trained if trained.is_dir() else CHECKPOINTS / str(name)


def load_dit(path: Path) -> tuple[DiT, dict]:
    cfg, state = load_weights(path)
    keys = DiTConfig.__dataclass_fields__
    model = DiT(DiTConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in keys}))
    model.load_state_dict(state)
    return model.eval().requires_grad_(False), cfg


def open_image(img: Image.Image | str | Path, what: str) -> tuple[Image.Image, str]:
    if isinstance(img, Image.Image):
        return img, "<PIL image>"
    p = Path(img)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    return Image.open(p), str(p)


def source_image(img: Image.Image) -> Image.Image:
    """An image to edit, as the DiT sees it: 64x64 RGB (transparent → white)."""
    img = img.convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, img).convert("RGB").resize((CANVAS, CANVAS), Image.LANCZOS)


@dataclass
class GenerationResult:
    images: list[Image.Image]
    provenance: dict = field(default_factory=dict)


class GenerationPipeline:
    """prompt (+ up to 3 reference images, + an image to edit) → n images and their provenance."""

    def __init__(self, dit: DiT, dit_config: dict, vae, text: TextEncoder, name: str = "", int8: bool = False) -> None:
        self.dit, self.config, self.vae, self.text, self.name, self.int8 = dit, dit_config, vae, text, name, int8
        self.shortcut = bool(dit_config.get("shortcut", False))
        self.vae_path: Path | None = None  # where the VAE was loaded from, when known

    @classmethod
    def from_pretrained(cls, dit: str | Path | None = None, fast: bool = False, int8: bool = False,
                        vae: str | Path | None = None) -> "GenerationPipeline":
        """Default: the flow-matching DiT with CFG (most precise). fast=True: the few-step distilled model."""
        path = resolve(dit or (FAST_DIT if fast else DEFAULT_DIT))
        model, cfg = load_dit(path)
        if int8:
            from generator.quantize import quantize_int8
            model = quantize_int8(model)
        vae_path = resolve(vae or cfg.get("vae", "vae-f8c16"))
        autoencoder = load_vae(vae_path)
        if autoencoder.cfg.latent_channels != model.cfg.latent_channels:
            raise ValueError(f"the VAE {vae_path} makes {autoencoder.cfg.latent_channels}-channel latents but the DiT "
                             f"{path.name} reads {model.cfg.latent_channels}: give a VAE of its own kind")
        pipe = cls(model, cfg, autoencoder, TextEncoder(cfg.get("text_encoder")), path.name, int8)
        pipe.vae_path = vae_path
        return pipe

    def default_steps(self) -> int:
        return int(self.config.get("default_steps", 4 if self.shortcut else 50))

    @torch.no_grad()
    def __call__(self, prompt: str, refs: list[Image.Image | str | Path] = (), image: Image.Image | str | Path | None = None,
                 n: int = 1, steps: int | None = None, seed: int = 0, text_scale: float | None = None,
                 ref_scale: float | None = None) -> GenerationResult:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if not 0 <= seed <= MAX_SEED - (n - 1):
            raise ValueError(f"the seed must be between 0 and {MAX_SEED - (n - 1)} for {n} image(s) (each image's "
                             f"seed counts up from it), got {seed}")
        steps = self.default_steps() if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if len(refs) + (image is not None) > MAX_REFS:
            raise ValueError(f"at most {MAX_REFS} reference images (an image to edit counts as one), got "
                             f"{len(refs) + (image is not None)}")
        if self.shortcut and (text_scale is not None or ref_scale is not None):
            raise ValueError(f"{self.name} has guidance distilled in (text {self.config['text_scale']}, "
                             f"references {self.config['ref_scale']}); it takes no guidance scales")
        text_scale = float(self.config.get("text_scale", 3.0) if text_scale is None else text_scale)
        ref_scale = float(self.config.get("ref_scale", 1.5) if ref_scale is None else ref_scale)
        if self.shortcut:
            text_scale = ref_scale = 1.0  # the distilled model already outputs the guided velocity
        pictures, used = [], []
        if image is not None:
            img, where = open_image(image, "image to edit")
            pictures.append(source_image(img))
            used.append({"role": "edit source", "path": where, "sha1": _sha1(pictures[-1])})
        for r in refs:
            img, where = open_image(r, "reference image")
            pictures.append(reference_image(img))
            used.append({"role": "reference", "path": where, "sha1": _sha1(pictures[-1])})

        t0 = time.perf_counter()
        feats, mask = self.text([prompt])
        ref_latents = [self.vae.encode(torch.from_numpy(to_tensor(p))[None]).repeat(n, 1, 1, 1) for p in pictures]
        t1 = time.perf_counter()
        f = self.vae.cfg.factor
        noise = torch.cat([torch.randn(1, self.dit.cfg.latent_channels, CANVAS // f, CANVAS // f,
                                       generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])
        z = euler_sample(self.dit, noise, feats.repeat(n, 1, 1), mask.repeat(n, 1), ref_latents, steps,
                         text_scale, ref_scale, shortcut=self.shortcut)
        t2 = time.perf_counter()
        images = [Image.fromarray(a) for a in to_uint8(self.vae.decode(z))]
        t3 = time.perf_counter()
        provenance = {
            "prompt": prompt, "references": used, "n": n, "steps": steps, "seeds": [seed + i for i in range(n)],
            "text_scale": None if self.shortcut else text_scale, "ref_scale": None if self.shortcut else ref_scale,
            "model": self.name, "few_step": self.shortcut, "int8": self.int8, "size": [CANVAS, CANVAS],
            "timings_ms": {"condition": round(1000 * (t1 - t0), 1), "sample": round(1000 * (t2 - t1), 1),
                           "decode": round(1000 * (t3 - t2), 1), "total": round(1000 * (t3 - t0), 1),
                           "per_image": round(1000 * (t3 - t0) / n, 1)},
        }
        return GenerationResult(images, provenance)


def _sha1(img: Image.Image) -> str:
    return hashlib.sha1(np.asarray(img).tobytes()).hexdigest()[:12]
