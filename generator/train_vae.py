"""Train the generator's VAE on composed worldkb scenes and references (L1 + L2 + small KL)."""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from generator.checkpoint import Progress, optimizer_step, save_state, save_weights
from generator.metrics import psnr, ssim
from generator.scenes import Image, SceneSampler, reference_image, to_tensor
from generator.vae import VAE, VAE_PRESETS, deepen_decoder, kl_divergence
from index.config import get_settings
from index.training import check_budget, other_run, same_path, say_if_spent, say_run, training_paths


def vae_batch(sampler: SceneSampler, n: int) -> torch.Tensor:
    """Scenes, plus 2x2 tiles of 32x32 references (a quarter of the batch) so references encode well."""
    out = []
    for i in range(n):
        if i % 4 == 3:
            tile = Image.new("RGB", (64, 64))
            for j in range(4):
                tile.paste(reference_image(sampler.asset().path), ((j % 2) * 32, (j // 2) * 32))
            out.append(to_tensor(tile))
        else:
            out.append(to_tensor(sampler.sample().target()))
    return torch.from_numpy(np.stack(out))


@torch.no_grad()
def evaluate_vae(vae: VAE, n: int = 256, seed: int = 123) -> dict:
    """Reconstruction PSNR/SSIM on scenes of held-out entities."""
    vae.eval()
    x = vae_batch(SceneSampler(held_out=True, seed=seed), n)
    y = torch.cat([vae.decode(vae.encode(x[i:i + 64])) for i in range(0, n, 64)])
    return {"psnr_db": round(psnr(y, x), 2), "ssim": round(ssim(y, x), 4), "images": n}


@torch.no_grad()
def latent_stats(vae: VAE, n: int = 512) -> tuple[float, float]:
    x = vae_batch(SceneSampler(seed=7), n)
    m = torch.cat([vae.posterior(x[i:i + 64])[0] for i in range(0, n, 64)])
    return float(m.mean()), float(m.std())


def train_vae(preset: str = "f8c16", minutes: float = 20.0, batch: int = 16, lr: float = 2e-3,
              kl_weight: float = 1e-4, name: str | None = None, threads: int = 1, resume: bool = True,
              out: Path | None = None, run_dir: Path | None = None) -> Path:
    """`minutes` of training, exported to `out` (default MMKB_HOME/models/<name>), resumed from
    `run_dir`/last.pt (default MMKB_HOME/runs/<name>)."""
    if preset not in VAE_PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose from {', '.join(VAE_PRESETS)}")
    check_budget(minutes, batch)
    torch.set_num_threads(threads)
    name = name or f"vae-{preset}"
    out, run = training_paths(name, out, run_dir)
    say_run(out, run)
    cfg = VAE_PRESETS[preset]
    vae = VAE(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    step, elapsed, seed = 0, 0.0, 0
    if resume and (run / "last.pt").is_file():
        st = torch.load(run / "last.pt", weights_only=False)
        if st.get("preset", preset) != preset or "decoder" in st:
            raise other_run(run / "last.pt", "a decoder fine-tune" if "decoder" in st else f"--preset {st['preset']}")
        vae.load_state_dict(st["model"]); opt.load_state_dict(st["opt"])
        step, elapsed, seed = st["step"], st["elapsed"], st["step"]
        torch.set_rng_state(st["torch_rng"])
        print(f"resumed {name} at step {step} ({elapsed / 60:.1f} min)")
        say_if_spent(run / "last.pt", elapsed, minutes)
    sampler = SceneSampler(seed=seed)  # reseeded by step on resume: data differs, distribution same
    budget, t0, last_save = minutes * 60, time.time() - elapsed, time.time()
    bar = tqdm(desc=f"train vae {preset}", unit="step", initial=step, mininterval=10)
    vae.train()
    while (elapsed := time.time() - t0) < budget:
        frac = elapsed / budget
        for g in opt.param_groups:  # warmup then cosine, by wall time so a resume continues the schedule
            g["lr"] = lr * min(1.0, step / 200) * 0.5 * (1 + math.cos(math.pi * frac))
        x = vae_batch(sampler, batch)
        rec, mean, logvar = vae(x)
        l1, l2 = (rec - x).abs().mean(), (rec - x).pow(2).mean()
        loss = l1 + l2 + kl_weight * kl_divergence(mean, logvar)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", l1=f"{l1.item():.4f}", min=f"{elapsed / 60:.1f}", refresh=False)
        if time.time() - last_save > 120:
            save_state({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                        "torch_rng": torch.get_rng_state(), "preset": preset}, run / "last.pt")
            last_save = time.time()
    bar.close()
    save_state({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                "torch_rng": torch.get_rng_state(), "preset": preset}, run / "last.pt")
    vae.eval()
    shift, scale = latent_stats(vae)
    vae.cfg.shift, vae.cfg.scale = shift, scale
    metrics = evaluate_vae(vae)
    card = (f"# {name}\n\nConvolutional VAE `{preset}` ({sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M params), "
            f"{cfg.factor}x down, {cfg.latent_channels} latent channels.\n\n"
            f"- data: worldkb scenes from generator/scenes.py (seen entities) + 2x2 tiles of references\n"
            f"- steps: {step} x batch {batch}, {elapsed / 60:.1f} min on 2 shared CPU cores ({threads} thread)\n"
            f"- loss: L1 + L2 + {kl_weight} KL; AdamW lr {lr}, cosine by wall time\n"
            f"- latent shift {shift:.4f}, scale {scale:.4f}\n"
            f"- held-out-entity scenes (n={metrics['images']}): PSNR {metrics['psnr_db']} dB, SSIM {metrics['ssim']}\n"
            f"- command: `mmkb train vae --preset {preset} --minutes {minutes} --batch {batch} --out {out}`\n")
    save_weights(vae, {"kind": "vae", "preset": preset, **vae.cfg.to_dict(), "metrics": metrics,
                       "steps": step, "minutes": round(elapsed / 60, 1)}, out, card)
    print(f"{name}: {metrics} → {out}")
    return out


def finetune_decoder(init_from: Path, minutes: float = 45.0, batch: int = 32, lr: float = 5e-4,
                     decoder_blocks: int | None = None, name: str = "vae-decoder-ft", threads: int = 1,
                     resume: bool = True, out: Path | None = None, generated: Path | None = None,
                     generated_fraction: float = 0.5, run_dir: Path | None = None) -> Path:
    """Train only the decoder of a trained VAE, its encoder frozen (as Stable Diffusion's ft-MSE decoder).

    The latents (and the shift/scale the DiT sees) stay exactly as they were, so a DiT trained on this
    VAE keeps working and gets the better decoder for free. `decoder_blocks` deepens the decoder first
    (the new residual blocks start as the identity, `deepen_decoder`). With `generated` (a
    `generated_pool` folder), `generated_fraction` of each batch are latents the DiT generated for
    training scenes, decoded against the scene they were asked for: the decoder learns to render the
    DiT's slightly-off latents as clean images (seen entities only; held-out ones stay unseen).
    """
    from generator.train_dit import load_vae

    check_budget(minutes, batch)
    torch.set_num_threads(threads)
    out, run = training_paths(name, out, run_dir)
    say_run(out, run)
    base = load_vae(Path(init_from))
    before = evaluate_vae(base)
    vae = deepen_decoder(base, decoder_blocks) if decoder_blocks else base
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    opt = torch.optim.AdamW(vae.decoder.parameters(), lr=lr, weight_decay=0.0)
    step, elapsed = 0, 0.0
    if resume and (run / "last.pt").is_file():
        st = torch.load(run / "last.pt", weights_only=False)
        if "decoder" not in st or not same_path(st.get("init_from"), init_from) \
                or st.get("decoder_blocks", decoder_blocks) != decoder_blocks:
            raise other_run(run / "last.pt", "another VAE training" if "decoder" not in st else
                            f"--init-from {st.get('init_from')} --decoder-blocks {st.get('decoder_blocks')}")
        vae.decoder.load_state_dict(st["decoder"]); opt.load_state_dict(st["opt"])
        step, elapsed = st["step"], st["elapsed"]
        torch.set_rng_state(st["torch_rng"])
        print(f"resumed {name} at step {step} ({elapsed / 60:.1f} min)")
        say_if_spent(run / "last.pt", elapsed, minutes)

    def state() -> dict:
        return {"decoder": vae.decoder.state_dict(), "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                "torch_rng": torch.get_rng_state(), "init_from": str(Path(init_from).resolve()),
                "decoder_blocks": decoder_blocks}

    sampler = SceneSampler(seed=1000 + step)
    pool = PoolReader(generated, seed=step) if generated else None
    n_gen = round(batch * generated_fraction) if pool else 0
    budget, t0 = minutes * 60, time.time() - elapsed
    progress = Progress(tqdm(desc="fine-tune vae decoder", unit="step", initial=step, mininterval=10),
                        run / "last.pt", state, every_s=120)
    vae.encoder.eval()
    vae.decoder.train()
    while (elapsed := time.time() - t0) < budget:
        for g in opt.param_groups:  # warmup then cosine, by wall time
            g["lr"] = lr * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        x = vae_batch(sampler, batch - n_gen)
        with torch.no_grad():
            mean, logvar = vae.posterior(x)
            z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        if n_gen:  # the DiT's latents, normalised as the DiT sees them: undo the scale/shift
            z_gen, x_gen = pool.batch(n_gen)
            z, x = torch.cat([z, z_gen * vae.cfg.scale + vae.cfg.shift]), torch.cat([x, x_gen])
        rec = vae.decoder(z)
        loss = (rec - x).abs().mean() + (rec - x).pow(2).mean()
        optimizer_step(opt, vae.decoder, loss)
        step += 1
        progress.update(loss.item(), elapsed)
    progress.close()
    vae.eval()
    metrics = evaluate_vae(vae)
    params = sum(p.numel() for p in vae.decoder.parameters()) / 1e6
    cmd = (f"mmkb train vae --decoder-only --init-from {init_from} --minutes {minutes} --batch {batch} --lr {lr}"
           + (f" --decoder-blocks {decoder_blocks}" if decoder_blocks else "")
           + (f" --generated-from {Path(generated).name.removeprefix('decoder-pool-')} --generated-fraction "
              f"{generated_fraction}" if generated else "")
           + f" --name {name} --out {out}")
    data = "worldkb scenes from generator/scenes.py (seen entities) + 2x2 tiles of references"
    if pool:
        data += (f"; {generated_fraction:.0%} of each batch: {len(pool)} latents generated for training scenes "
                 f"(`generated_pool`, {generated}) decoded against their target scenes")
    card = (f"# {name}\n\nThe VAE `{vae.cfg.factor}x`/{vae.cfg.latent_channels}-channel of `{init_from}` with its "
            f"decoder fine-tuned ({params:.2f}M decoder params, {vae.cfg.dec_blocks} residual block(s) per level); "
            f"the encoder, the latents and their shift/scale are unchanged, so DiTs trained on it still apply.\n\n"
            f"- data: {data}\n"
            f"- steps: {step} x batch {batch}, {elapsed / 60:.1f} min on 2 shared CPU cores ({threads} thread)\n"
            f"- loss: L1 + L2 on decodes of posterior samples{' and of the generated latents' if pool else ''}; "
            f"AdamW lr {lr}, cosine by wall time\n"
            f"- held-out-entity scenes (n={metrics['images']}): PSNR {before['psnr_db']} → {metrics['psnr_db']} dB, "
            f"SSIM {before['ssim']} → {metrics['ssim']}\n"
            f"- command: `{cmd}`\n")
    base_card = Path(init_from) / "MODEL_CARD.md"
    if base_card.is_file():
        earlier = base_card.read_text()
        card += "\n## The VAE it started from\n\n" + ("##" + earlier if earlier.startswith("# ") else earlier)
    preset = json.loads((Path(init_from) / "config.json").read_text()).get("preset")
    save_weights(vae, {"kind": "vae", "preset": preset, **vae.cfg.to_dict(), "metrics": metrics, "decoder_finetune":
                       {"init_from": str(init_from), "steps": step, "minutes": round(elapsed / 60, 1),
                        "before": before, "generated": str(generated) if generated else None,
                        "generated_fraction": generated_fraction if generated else 0.0}}, out, card)
    print(f"{name}: {before} → {metrics} → {out}")
    return out


@torch.no_grad()
def generated_pool(dit: str = "dit-medium-fast", n: int = 8192, batch: int = 64, steps: int = 4, seed: int = 0,
                   out: Path | None = None, threads: int = 1) -> Path:
    """Latents the DiT generates for training scenes of seen entities, beside the images they should
    decode to: what `finetune_decoder(generated=...)` teaches the decoder to map back.

    Written in shards (`pool-<k>.npz`: z float16 (B, C, h, w), x uint8 (B, H, W, 3)), so a stopped run
    keeps what it made and a rerun adds the missing shards."""
    import random

    from generator.dit import euler_sample
    from generator.metrics import to_uint8
    from generator.pipeline import GenerationPipeline
    from generator.train_dit import encode_batch, raw_batch, sample_task

    torch.set_num_threads(threads)
    out = out or get_settings().home_dir / "runs" / f"decoder-pool-{Path(dit).name}"
    out.mkdir(parents=True, exist_ok=True)
    pipe = GenerationPipeline.from_pretrained(dit)
    s = pipe.shortcut
    for k in tqdm(range(n // batch), desc=f"latents from {dit}", unit="shard"):
        path = out / f"pool-{k:05d}.npz"
        if path.is_file():
            continue
        rng, sampler = random.Random(seed * 100_003 + k), SceneSampler(seed=seed * 100_003 + k)
        task = sample_task(rng)
        scenes = [sampler.sample(task) for _ in range(batch)]
        raw = raw_batch(scenes)  # the target pixels, rendered once for the latents and the pool
        b = encode_batch(raw, pipe.vae, pipe.text, scenes)
        noise = torch.randn(b.x.shape, generator=torch.Generator().manual_seed(seed * 100_003 + k))
        z = euler_sample(pipe.dit, noise, b.text, b.text_mask, b.refs, steps, 1.0 if s else 3.0,
                         1.0 if s else 1.5, shortcut=s)
        x = to_uint8(torch.from_numpy(raw["x"]))
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, z=z.numpy().astype(np.float16), x=x)
        tmp.replace(path)
    return out


class PoolReader:
    """Random (generated latent, target image) pairs from `generated_pool` shards."""

    def __init__(self, folder: Path, seed: int = 0) -> None:
        shards = sorted(Path(folder).glob("pool-*.npz"))
        if not shards:
            raise FileNotFoundError(f"no generated latents in {folder}: run generated_pool first")
        data = [np.load(p) for p in shards]
        self.z = np.concatenate([d["z"] for d in data]).astype(np.float32)
        self.x = np.concatenate([d["x"] for d in data])
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.z)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised latents, images in [-1, 1] (n, 3, H, W))."""
        i = self.rng.integers(0, len(self.z), n)
        x = torch.from_numpy(self.x[i]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return torch.from_numpy(self.z[i]), x
