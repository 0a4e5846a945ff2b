"""Train the DiT with rectified flow (logit-normal t) on composed worldkb scenes, all tasks mixed.

Each batch holds one task (so reference shapes line up); text and references are dropped at
random so one network gives the unconditional, reference-only and full branches that CFG needs.
"""
from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from generator.checkpoint import CHECKPOINTS, Progress, checkpoint_ref, load_weights, optimizer_step, save_weights
from generator.dit import DIT_PRESETS, DiT
from generator.scenes import TASKS, Scene, SceneSampler, to_tensor
from generator.text import TextEncoder
from generator.vae import VAE, VAEConfig
from index.training import check_budget, other_run, say_if_spent, say_run, training_device, training_paths

DEFAULT_VAE = CHECKPOINTS / "vae-f8c16"


def load_vae(path: Path = DEFAULT_VAE) -> VAE:
    cfg, state = load_weights(path)
    keys = VAEConfig.__dataclass_fields__
    vae = VAE(VAEConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in keys}))
    vae.load_state_dict(state)
    return vae.eval().requires_grad_(False)


@dataclass
class Batch:
    x: torch.Tensor               # target latents (B, C, 8, 8)
    text: torch.Tensor
    text_mask: torch.Tensor
    refs: list[torch.Tensor]      # reference latents, one tensor per reference slot
    scenes: list[Scene]


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def encode_images(vae: VAE, images: list) -> torch.Tensor:
    return encode_arrays(vae, np.stack([to_tensor(im) for im in images]))


@torch.no_grad()
def encode_arrays(vae: VAE, arrays: np.ndarray) -> torch.Tensor:
    """(B, 3, H, W) float32 in [-1, 1] → latents on the VAE's device."""
    return vae.encode(torch.from_numpy(arrays).to(_device(vae)))


def make_batch(sampler: SceneSampler, vae: VAE, text: TextEncoder, n: int, task: str) -> Batch:
    scenes = [sampler.sample(task) for _ in range(n)]
    return encode_batch(raw_batch(scenes), vae, text, scenes)


def encode_batch(raw: dict, vae: VAE, text: TextEncoder, scenes: list[Scene]) -> Batch:
    """A raw batch (pixels as arrays, captions) → latents and text features on the models' device."""
    return Batch(encode_arrays(vae, raw["x"]), *text(raw["captions"]),
                 [encode_arrays(vae, r) for r in raw["refs"]], scenes)


def raw_batch(scenes: list[Scene]) -> dict:
    """The pixel work of a batch (rendering, references), done where the scenes are drawn."""
    return {"x": np.stack([to_tensor(s.target()) for s in scenes]),
            "refs": [np.stack([to_tensor(s.refs[i]) for s in scenes]) for i in range(len(scenes[0].refs))],
            "captions": [s.caption for s in scenes]}


class SceneStream(torch.utils.data.IterableDataset):
    """Rendered training batches from data-loading processes (the GPU path's CPU work); each worker
    draws its own scenes from its own seed."""

    def __init__(self, seed: int, batch: int) -> None:
        self.seed, self.batch = seed, batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info else 0
        sampler, rng = SceneSampler(seed=self.seed * 1000 + wid), random.Random(self.seed * 1000 + wid + 1)
        while True:
            task = sample_task(rng)  # one task per batch, so reference shapes line up
            yield raw_batch([sampler.sample(task) for _ in range(self.batch)])


def batches(sampler: SceneSampler, rng: random.Random, vae: VAE, text: TextEncoder, batch: int,
            workers: int, seed: int):
    """Training batches forever: drawn in this process, or by `workers` data-loading processes."""
    if workers <= 0:
        while True:
            yield make_batch(sampler, vae, text, batch, sample_task(rng))
    loader = torch.utils.data.DataLoader(SceneStream(seed, batch), batch_size=None, num_workers=workers,
                                         prefetch_factor=4, persistent_workers=True)
    for raw in loader:
        yield encode_batch({"x": raw["x"].numpy(), "refs": [r.numpy() for r in raw["refs"]],
                            "captions": raw["captions"]}, vae, text, [])


def drop_conditions(b: int, n_refs: int, p_both: float = 0.05, p_text: float = 0.1, p_refs: float = 0.1,
                    gen: torch.Generator | None = None, device: torch.device | str = "cpu",
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample keep flags for (text, references): both dropped, text only dropped, references only dropped."""
    r = torch.rand(b, generator=gen).to(device)
    keep_text = ~((r < p_both) | ((r >= p_both) & (r < p_both + p_text)))
    keep_refs = ~((r < p_both) | ((r >= p_both + p_text) & (r < p_both + p_text + p_refs)))
    if n_refs == 0:  # text-to-image: text drop alone gives the unconditional branch
        keep_text = r >= p_both + p_text
    return keep_text, keep_refs[:, None].expand(-1, n_refs)


def logit_normal(b: int, gen: torch.Generator | None = None) -> torch.Tensor:
    return torch.sigmoid(torch.randn(b, generator=gen))


def _randn_like(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Noise drawn on the CPU (the same numbers on any device for a given generator), moved to x's device."""
    return torch.randn(x.shape, generator=gen).to(x.device) if gen is not None else torch.randn_like(x)


def flow_loss(model: DiT, batch: Batch, gen: torch.Generator | None = None) -> torch.Tensor:
    """Rectified flow: x_t = (1 − t)·ε + t·x, regress v = x − ε (t ~ logit-normal, SD3)."""
    b = batch.x.shape[0]
    keep_text, keep_refs = drop_conditions(b, len(batch.refs), gen=gen, device=batch.x.device)
    t = logit_normal(b, gen).to(batch.x.device)
    eps = _randn_like(batch.x, gen)
    xt = (1 - t)[:, None, None, None] * eps + t[:, None, None, None] * batch.x
    v = model(xt, t, batch.text, batch.text_mask & keep_text[:, None], batch.refs, keep_refs)
    return F.mse_loss(v, batch.x - eps)


def sample_task(rng: random.Random) -> str:
    return rng.choices(list(TASKS), weights=list(TASKS.values()))[0]


@torch.no_grad()
def ema_update(ema: DiT, model: DiT, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


def train_dit(preset: str = "medium", minutes: float = 35.0, batch: int = 32, lr: float = 1e-3,
              ema_decay: float = 0.995, name: str | None = None, vae: Path = DEFAULT_VAE, threads: int = 1,
              resume: bool = True, out: Path | None = None, device: str = "cpu", workers: int = 0,
              init_from: Path | str | None = None, run_dir: Path | None = None) -> Path:
    """`minutes` of training, exported to `out` (default MMKB_HOME/models/<name>), resumed from
    `run_dir`/last.pt (default MMKB_HOME/runs/<name>); `device` "cuda" trains on a GPU, with
    `workers` data-loading processes rendering the scenes. `init_from` (a checkpoint folder of the
    same preset, e.g. the shipped one) starts a new run from its weights instead of a random init."""
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose from {', '.join(DIT_PRESETS)}")
    check_budget(minutes, batch)
    dev = training_device(device)
    torch.set_num_threads(threads)
    name = name or f"dit-{preset}"
    out, run = training_paths(name, out, run_dir)
    say_run(out, run)
    cfg = DIT_PRESETS[preset]
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    autoencoder, text = load_vae(vae).to(dev), TextEncoder(device=dev)
    model = DiT(cfg).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    step, elapsed, seen = 0, 0.0, 0
    before, earlier = 0, ""  # samples and model card of the weights a warm start began from
    began, latents = None, str(Path(vae).resolve())  # the warm start's folder and the VAE, as the state records them
    if init_from:
        from generator.pipeline import load_dit, resolve

        start_dir = resolve(init_from)
        if not (start_dir / "model.safetensors").is_file():
            raise ValueError(f"--init-from {init_from}: no DiT checkpoint there (a shipped name such as dit-medium, "
                             "or a folder `mmkb train dit` wrote)")
        began = str(start_dir.resolve())
        start, start_cfg = load_dit(start_dir)
        if start_cfg.get("kind") != "dit" or start.cfg != cfg:
            held = f"a DiT of preset {start_cfg['preset']!r}" if start_cfg.get("preset") else \
                f"a {start_cfg.get('kind', 'model')} of another shape"
            raise ValueError(f"--init-from {init_from} holds {held}, not of preset {preset!r}: pass the preset it was "
                             f"trained with, or a {preset!r} checkpoint")
        model.load_state_dict(start.state_dict())
        ema.load_state_dict(start.state_dict())
        before = int(start_cfg.get("samples_total", start_cfg.get("samples", 0)))
        earlier = (start_dir / "MODEL_CARD.md").read_text() if (start_dir / "MODEL_CARD.md").is_file() else ""
        print(f"warm start from {start_dir} ({before} samples before)")
    if resume and (run / "last.pt").is_file():
        st = torch.load(run / "last.pt", weights_only=False, map_location=dev)
        legacy = st.get("init_from") != (str(init_from) if init_from else None)  # states before "began"
        if (st["began"] != began) if "began" in st else legacy:
            raise other_run(run / "last.pt", f"--init-from {st.get('init_from')}" if st.get("init_from")
                            else "a random init (no --init-from)")
        if st.get("preset", preset) != preset:
            raise other_run(run / "last.pt", f"--preset {st['preset']}")
        if st.get("vae", latents) != latents:
            raise other_run(run / "last.pt", f"--vae {st['vae']}")
        model.load_state_dict(st["model"]); ema.load_state_dict(st["ema"]); opt.load_state_dict(st["opt"])
        step, elapsed, seen = st["step"], st["elapsed"], st["seen"]
        # The lineage as it was when the run began (the warm start's folder may since hold this run's output).
        before, earlier = st.get("before", before), st.get("earlier", earlier)
        torch.set_rng_state(st["torch_rng"].cpu())
        print(f"resumed {name} at step {step} ({elapsed / 60:.1f} min)")
        say_if_spent(run / "last.pt", elapsed, minutes)
    sampler, rng = SceneSampler(seed=1000 + step), random.Random(step)
    budget, t0 = minutes * 60, time.time() - elapsed
    bar = tqdm(desc=f"train dit {preset}", unit="step", initial=step, mininterval=10)
    state = lambda: {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),  # noqa: E731
                     "step": step, "elapsed": elapsed, "seen": seen, "torch_rng": torch.get_rng_state(),
                     "preset": preset, "init_from": str(init_from) if init_from else None,
                     "began": began, "vae": latents, "before": before, "earlier": earlier}
    progress = Progress(bar, run / "last.pt", state)
    stream = batches(sampler, rng, autoencoder, text, batch, workers, seed=1000 + step)
    while (elapsed := time.time() - t0) < budget:
        frac = elapsed / budget
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        data = next(stream)
        loss = flow_loss(model, data)
        optimizer_step(opt, model, loss)
        ema_update(ema, model, 0.0 if step < 100 else ema_decay)
        step, seen = step + 1, seen + batch
        progress.update(loss.item(), elapsed)
    progress.close()
    card = (f"# {name}\n\nDiT `{preset}` ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params; "
            f"width {cfg.width}, depth {cfg.depth}, heads {cfg.heads}, patch {cfg.patch}) over the latents of "
            f"`{Path(vae).name}`; text = frozen all-MiniLM-L6-v2 token features. EMA weights ({ema_decay}).\n\n"
            f"- data: generator/scenes.py tasks {TASKS} on seen entities only (held-out entities never used)\n"
            f"- objective: rectified flow, logit-normal t; drops: 5% both, 10% text, 10% references\n"
            f"- steps: {step} x batch {batch} = {seen} samples, {elapsed / 60:.1f} min on {machine_label(dev, threads, workers)}, "
            f"AdamW lr {lr}, final loss (mean of last 50) {progress.mean_loss():.4f}\n"
            f"- command: `mmkb train dit --preset {preset} --minutes {minutes} --batch {batch} --lr {lr}"
            f"{f' --device {device} --workers {workers}' if dev.type != 'cpu' else ''}"
            f"{f' --ema-decay {ema_decay}' if ema_decay != 0.995 else ''}"
            f"{f' --init-from {init_from}' if init_from else ''}"
            f"{f' --name {name}' if name != f'dit-{preset}' else ''}"
            f" --out {out}`\n"
            f"- metrics: see benchmarks/results/generation.md\n")
    if init_from:
        card += (f"- warm start: the weights then in `{init_from}` ({before} samples before this run; "
                 f"{before + seen} in all)\n" + (f"\n## Earlier training\n\n{_demote(earlier)}" if earlier else ""))
    save_weights(ema.cpu(), {"kind": "dit", "preset": preset, **cfg.to_dict(), "vae": checkpoint_ref(vae),
                       "text_encoder": "all-MiniLM-L6-v2", "steps": step, "samples": seen,
                       "samples_total": before + seen, "minutes": round(elapsed / 60, 1), "shortcut": False}, out, card)
    print(f"{name}: {step} steps → {out}")
    return out


def _demote(card: str) -> str:
    """An earlier model card nested below the new one's "## Earlier training": its headings two levels
    down (lines inside fenced code are left alone)."""
    out, fenced = [], False
    for line in card.splitlines(keepends=True):
        fenced ^= line.startswith("```")
        out.append(f"##{line}" if line.startswith("#") and not fenced else line)
    return "".join(out)


def machine_label(dev: torch.device, threads: int, workers: int) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} ({workers} data-loading processes)"
    return f"the CPU ({threads} thread{'s' if threads > 1 else ''})"
