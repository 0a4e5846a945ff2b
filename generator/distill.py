"""Few-step distillation: a shortcut model (Frans et al., arXiv 2410.12557) with the teacher's
classifier-free guidance baked in (guidance distillation, Meng et al., arXiv 2210.03142).

The student starts as a copy of the flow-matching teacher and learns, per step-size level
d = 2**-k, the average velocity over one step of size d:
- base level (d = 1/16): the teacher's guided velocity at (x_t, t) — 3 teacher branches, no grad;
- coarser levels: self-consistency, s(x_t, t, 2d) = (s(x_t, t, d) + s(x_t + d·s(x_t, t, d), t + d, d)) / 2,
  both halves from the student itself (no grad).
One forward per step afterwards, so 4 steps cost 4 forwards instead of 4 x 3.
"""
from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from generator.checkpoint import Progress, checkpoint_ref, optimizer_step, save_weights
from generator.dit import FLOW_LEVEL, guided_velocity
from generator.pipeline import load_dit, resolve
from generator.scenes import SceneSampler
from generator.text import TextEncoder
from generator.train_dit import DEFAULT_VAE, batches, ema_update, load_vae, machine_label
from index.training import check_budget, other_run, say_if_spent, say_run, training_device, training_paths

BASE_LEVEL = 4  # d = 1/16: the finest step the student learns from the teacher directly


def distill_targets(student, teacher, batch, levels: torch.Tensor, t: torch.Tensor, xt: torch.Tensor,
                    text_scale: float, ref_scale: float) -> torch.Tensor:
    """Per-sample regression targets for the student at (xt, t, level)."""
    target = torch.empty_like(xt)
    base = levels == BASE_LEVEL
    with torch.no_grad():
        if base.any():
            i = base.nonzero().squeeze(1)
            target[i] = guided_velocity(teacher, xt[i], t[i], batch.text[i], batch.text_mask[i],
                                        [r[i] for r in batch.refs], text_scale, ref_scale)
        if (~base).any():
            i = (~base).nonzero().squeeze(1)
            half = levels[i] + 1
            d = (2.0 ** -half.float())[:, None, None, None]
            refs = [r[i] for r in batch.refs]
            s1 = student(xt[i], t[i], batch.text[i], batch.text_mask[i], refs, None, half)
            x2 = xt[i] + d * s1
            s2 = student(x2, t[i] + d[:, 0, 0, 0], batch.text[i], batch.text_mask[i], refs, None, half)
            target[i] = (s1 + s2) / 2
    return target


def distill(teacher: str = "dit-medium", minutes: float = 12.0, batch: int = 32, lr: float = 2e-4,
            text_scale: float = 3.0, ref_scale: float = 1.5, ema_decay: float = 0.99, name: str | None = None,
            vae: Path | None = None, threads: int = 1, resume: bool = True, out: Path | None = None,
            device: str = "cpu", workers: int = 0, run_dir: Path | None = None) -> Path:
    """`minutes` of distilling `teacher` (a name or folder), exported to `out` (default
    MMKB_HOME/models/<name>), resumed from `run_dir`/last.pt (default MMKB_HOME/runs/<name>)."""
    check_budget(minutes, batch)
    dev = training_device(device)
    torch.set_num_threads(threads)
    teacher_path = resolve(teacher)
    if not (teacher_path / "model.safetensors").is_file():
        raise ValueError(f"--teacher {teacher}: no DiT checkpoint there (a shipped name such as dit-medium, "
                         "or a folder `mmkb train dit` wrote)")
    name = name or f"{teacher_path.name}-fast"
    out, run = training_paths(name, out, run_dir)
    say_run(out, run)
    teacher_model, tcfg = load_dit(teacher_path)
    teacher_model = teacher_model.to(dev)
    student = copy.deepcopy(teacher_model).train().requires_grad_(True)
    with torch.no_grad():  # every step-size level starts as the teacher's instantaneous velocity
        student.d_embed.weight[:FLOW_LEVEL] = student.d_embed.weight[FLOW_LEVEL]
    ema = copy.deepcopy(student).requires_grad_(False)
    vae = Path(vae) if vae else resolve(tcfg.get("vae", DEFAULT_VAE.name))  # the latents the teacher learnt
    autoencoder, text = load_vae(vae).to(dev), TextEncoder(device=dev)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    if resume and (run / "last.pt").is_file():
        st = torch.load(run / "last.pt", weights_only=False, map_location=dev)
        if st.get("teacher", str(teacher_path.resolve())) != str(teacher_path.resolve()):
            raise other_run(run / "last.pt", f"--teacher {st['teacher']}")
        student.load_state_dict(st["model"]); ema.load_state_dict(st["ema"]); opt.load_state_dict(st["opt"])
        step, elapsed = st["step"], st["elapsed"]
        print(f"resumed {name} at step {step} ({elapsed / 60:.1f} min)")
        say_if_spent(run / "last.pt", elapsed, minutes)
    sampler, rng = SceneSampler(seed=5000 + step), random.Random(7 + step)
    budget, t0 = minutes * 60, time.time() - elapsed
    bar = tqdm(desc=f"distill {name}", unit="step", initial=step, mininterval=10)
    state = lambda: {"model": student.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),  # noqa: E731
                     "step": step, "elapsed": elapsed, "teacher": str(teacher_path.resolve())}
    progress = Progress(bar, run / "last.pt", state)
    stream = batches(sampler, rng, autoencoder, text, batch, workers, seed=5000 + step)
    while (elapsed := time.time() - t0) < budget:
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        data = next(stream)
        b = data.x.shape[0]
        # half the batch at the base level, the rest spread over the coarser levels 0..BASE_LEVEL-1
        levels = torch.where(torch.arange(b) < b // 2, BASE_LEVEL, torch.randint(0, BASE_LEVEL, (b,))).to(dev)
        d = 2.0 ** -levels.float()
        # t on the grid of the level's step (as the sampler visits it); the base level also between
        k = torch.floor(torch.rand(b, device=dev) / d)
        t = torch.where(levels == BASE_LEVEL, torch.rand(b, device=dev) * (1 - d), k * d).clamp(0, 1 - 1e-4)
        eps = torch.randn_like(data.x)
        xt = (1 - t)[:, None, None, None] * eps + t[:, None, None, None] * data.x
        target = distill_targets(student, teacher_model, data, levels, t, xt, text_scale, ref_scale)
        pred = student(xt, t, data.text, data.text_mask, data.refs, None, levels)
        loss = F.mse_loss(pred, target)
        optimizer_step(opt, student, loss)
        ema_update(ema, student, ema_decay)
        step += 1
        progress.update(loss.item(), elapsed)
    progress.close()
    cfg = {**tcfg, "shortcut": True, "teacher": checkpoint_ref(teacher_path), "text_scale": text_scale, "ref_scale": ref_scale,
           "levels": list(range(BASE_LEVEL + 1)), "default_steps": 4, "distill_steps": step,
           "distill_minutes": round(elapsed / 60, 1)}
    card = (f"# {name}\n\nFew-step student of `{teacher_path.name}`: shortcut model (step-size levels "
            f"1, 2, 4, 8, 16 steps) with CFG distilled in (text {text_scale}, references {ref_scale}).\n\n"
            f"- data: generator/scenes.py tasks on seen entities only\n"
            f"- steps: {step} x batch {batch}, {elapsed / 60:.1f} min on {machine_label(dev, threads, workers)}; "
            f"final loss (mean of last 50) {progress.mean_loss():.4f}\n"
            f"- command: `mmkb train distill --teacher {teacher} --minutes {minutes} --batch {batch}"
            f"{f' --device {device} --workers {workers}' if dev.type != 'cpu' else ''} --out {out}`\n"
            f"- metrics: see benchmarks/results/generation.md\n")
    save_weights(ema.cpu(), cfg, out, card)
    print(f"{name}: {step} steps → {out}")
    return out
