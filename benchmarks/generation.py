"""Generator benchmark: reference fidelity (seen vs held-out, with vs without references), text
following (background colour, position, clean backgrounds), editing, composition, VAE
reconstruction, and speed at 50 / 8 / 4 / 1 steps. Writes benchmarks/results/generation.{json,md,png}.

    python benchmarks/generation.py [--n 64] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from generator.checkpoint import RUNS
from generator.dit import euler_sample
from generator.identify import (EmbedderIdentifier, PixelIdentifier, background_colour, crop, is_clean,
                                nearest_colour, placed_slot)
from generator.metrics import to_uint8
from generator.pipeline import GenerationPipeline, resolve
from generator.scenes import COLOURS, SLOTS, SceneSampler
from generator.train_dit import make_batch
from generator.train_vae import evaluate_vae

RESULTS = Path(__file__).resolve().parent / "results"
FLAG_DIR = Path("index/worldkb/data/images/flags")


def generate_scenes(pipe: GenerationPipeline, scenes_batch, steps: int, seed: int = 0, drop_refs: bool = False,
                    text_scale: float = 3.0, ref_scale: float = 1.5) -> np.ndarray:
    """Images (N, 64, 64, 3) uint8 for a Batch of scenes, sampled as one batch."""
    b = scenes_batch
    noise = torch.randn(b.x.shape, generator=torch.Generator().manual_seed(seed))
    refs = [] if drop_refs else b.refs
    s = pipe.shortcut
    with torch.no_grad():
        z = euler_sample(pipe.dit, noise, b.text, b.text_mask, refs, steps,
                         1.0 if s else text_scale, 1.0 if s else ref_scale, shortcut=s)
        return to_uint8(pipe.vae.decode(z))


def score(images: np.ndarray, scenes, pixel: PixelIdentifier, embed: EmbedderIdentifier | None,
          check_position: bool = True) -> dict:
    """Per-set accuracies: every object identified in its slot (pixel NN, embedder), colour, position, clean."""
    n = len(scenes)
    ok_pix = ok_emb = ok_col = ok_pos = clean = 0
    for img, sc in zip(images, scenes):
        slots = [s for _, s in sc.objects]
        bg = background_colour(img, slots)
        crops = [crop(img, s) for s in slots]
        keys = [a.key for a, _ in sc.objects]
        ok_pix += all(pixel(c, bg) == k for c, k in zip(crops, keys))
        if embed is not None:
            ok_emb += embed(crops) == keys
        ok_col += nearest_colour(bg) == sc.colour
        if check_position and len(slots) == 1:
            ok_pos += placed_slot(img, bg) == slots[0]
        clean += is_clean(img, slots)
    out = {"n": n, "fidelity_pixel_nn": ok_pix / n, "background_colour": ok_col / n, "clean_background": clean / n}
    if embed is not None:
        out["fidelity_embedder"] = ok_emb / n
    if check_position and len(scenes[0].objects) == 1:
        out["position"] = ok_pos / n
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


class RowCache:
    """Rows already measured for a checkpoint (keyed by its file time), so a rerun only adds what is missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, pipe: GenerationPipeline, *key, compute):
        ckpt = Path("generator/checkpoints") / pipe.name / "model.safetensors"
        vae = Path(pipe.vae_path or "") / "model.safetensors"  # a row decoded by another VAE is another row
        k = "|".join([pipe.name, str(ckpt.stat().st_mtime if ckpt.is_file() else 0)] + [str(x) for x in key]
                     + ([f"vae={pipe.vae_path}@{vae.stat().st_mtime}"] if vae.is_file() else []))
        if k not in self.rows:
            self.rows[k] = compute()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.rows, indent=1))
        return self.rows[k]


def latency(pipe: GenerationPipeline, steps: int, refs: list[str], repeats: int = 7) -> float:
    """Median wall time (ms) of one 64x64 image through the whole pipeline (text, refs, sampling, decode)."""
    pipe("the flag on a blue background", refs=refs, steps=steps)  # warm up
    times = []
    colours = list(COLOURS)
    for i in range(repeats):  # a new prompt each call, so the text encoder's cache does not hide its cost
        prompt = f"the flag {list(SLOTS)[i % len(SLOTS)]} on a {colours[(i + steps) % len(colours)]} background"
        pipe.text.cache.pop(prompt, None)
        t = time.perf_counter()
        pipe(prompt, refs=refs, steps=steps, seed=i)
        times.append(1000 * (time.perf_counter() - t))
    return round(statistics.median(times), 1)


def grid(pipe: GenerationPipeline, out: Path, seeds: int = 4) -> None:
    """Rows: a prompt (+ references/source, left), then `seeds` outputs."""
    held = SceneSampler(held_out=True, seed=77)
    rows = []
    for task in ["t2i", "ref", "ref", "compose2", "compose3", "edit_colour", "edit_move", "edit_swap"]:
        sc = (SceneSampler(seed=78) if task == "t2i" else held).sample(task)
        image = sc.refs[0] if task.startswith("edit") else None
        refs = sc.refs[1:] if task.startswith("edit") else sc.refs
        res = pipe(sc.caption, refs=refs, image=image, n=seeds, seed=0)
        rows.append((sc.caption, sc.refs, res.images))
    cell, pad, text_w = 96, 6, 300
    w = text_w + 3 * (48 + pad) + seeds * (cell + pad)
    canvas = Image.new("RGB", (w, len(rows) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (caption, refs, imgs) in enumerate(rows):
        y = pad + i * (cell + pad)
        words, line, lines = caption.split(), "", []
        for wd in words:
            if len(line) + len(wd) > 42:
                lines.append(line); line = ""
            line += wd + " "
        lines.append(line)
        draw.multiline_text((pad, y + 4), "\n".join(lines), fill="black")
        for j, r in enumerate(refs):
            canvas.paste(r.resize((48, 48), Image.NEAREST), (text_w + j * (48 + pad), y + 24))
        for j, im in enumerate(imgs):
            canvas.paste(im.resize((cell, cell), Image.NEAREST), (text_w + 3 * (48 + pad) + j * (cell + pad), y))
    canvas.save(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=48, help="scenes per evaluated set")
    ap.add_argument("--n-fidelity", type=int, default=192,
                    help="scenes in the held-out one-reference set (the fidelity headline: ±5 points at 95%% near 87%%; 48 gives ±9)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher", default="dit-medium")
    ap.add_argument("--fast", default="dit-medium-fast")
    ap.add_argument("--task-steps", type=int, default=16, help="teacher steps for the task table")
    ap.add_argument("--vae", default=None, help="a VAE (name or folder) instead of the one the DiTs name")
    ap.add_argument("--skip-embedder", action="store_true")
    ap.add_argument("--quality-only", action="store_true", help="no latency, grid or report (fills the row cache)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": {"cpu_threads": args.threads, "load_average_at_start": os.getloadavg(),
                                 "torch": torch.__version__, "platform": platform.platform()}, "n": args.n,
               "n_fidelity": args.n_fidelity}
    teacher = GenerationPipeline.from_pretrained(args.teacher, vae=args.vae)
    fast = GenerationPipeline.from_pretrained(args.fast, vae=args.vae) if resolve(args.fast).is_dir() else None
    pixel = PixelIdentifier()
    embed = None
    if not args.skip_embedder:
        embed = EmbedderIdentifier(cache=RUNS / "generation_bench" / "asset_embeddings.npy")
        if not embed.trained:
            embed = None
            results["embedder"] = "not trained: embedder fidelity skipped"
    results["vae"] = evaluate_vae(teacher.vae)

    def scenes(task: str, held_out: bool, seed: int, n: int = args.n):
        return make_batch(SceneSampler(held_out=held_out, seed=seed), teacher.vae, teacher.text, n, task)

    sets = {"held_out_ref": scenes("ref", True, 11, args.n_fidelity), "seen_ref": scenes("ref", False, 12),
            "held_out_compose2": scenes("compose2", True, 13), "held_out_compose3": scenes("compose3", True, 14),
            "seen_t2i_by_name": scenes("t2i", False, 15), "held_out_edit_colour": scenes("edit_colour", True, 16),
            "held_out_edit_move": scenes("edit_move", True, 17), "held_out_edit_swap": scenes("edit_swap", True, 18)}
    with torch.no_grad():  # the ceiling: the ground-truth scenes through the VAE alone
        results["vae_round_trip"] = score(to_uint8(teacher.vae.decode(sets["held_out_ref"].x)),
                                          sets["held_out_ref"].scenes, pixel, embed)
    print("vae round trip", results["vae_round_trip"], flush=True)
    configs = [("teacher+cfg", teacher, 50), ("teacher+cfg", teacher, 8), ("teacher+cfg", teacher, 4),
               ("teacher+cfg", teacher, 1)]
    if fast is not None:
        configs += [("few-step", fast, 16), ("few-step", fast, 8), ("few-step", fast, 4), ("few-step", fast, 1)]
    quality = []
    t0 = time.time()
    judge = embed.cache_tag if embed else "noemb"  # rows judged by other weights are not reused
    cache = RowCache(RUNS / "generation_bench" / f"rows-n{args.n}-f{args.n_fidelity}-{judge}.json")
    for label, pipe, steps in configs:  # fidelity vs steps on the held-out reference set
        row = {"model": label, "steps": steps, **cache.get(pipe, "held_out_ref", steps, True, compute=lambda: score(
            generate_scenes(pipe, sets["held_out_ref"], steps), sets["held_out_ref"].scenes, pixel, embed))}
        quality.append(row)
        print(row, f"{time.time() - t0:.0f}s", flush=True)
    results["held_out_ref_by_steps"] = quality
    tasks = []
    for label, pipe, steps in [("teacher+cfg", teacher, args.task_steps)] + ([("few-step", fast, 4)] if fast else []):
        for name, b in sets.items():
            row = {"set": name, "model": label, "steps": steps, "references": True,
                   **cache.get(pipe, name, steps, True, compute=lambda: score(
                       generate_scenes(pipe, b, steps), b.scenes, pixel, embed, check_position=not name.endswith("swap")))}
            tasks.append(row)
            print(row, f"{time.time() - t0:.0f}s", flush=True)
        for name in ["held_out_ref", "seen_ref"]:
            row = {"set": name, "model": label, "steps": steps, "references": False,
                   **cache.get(pipe, name, steps, False, compute=lambda: score(
                       generate_scenes(pipe, sets[name], steps, drop_refs=True), sets[name].scenes, pixel, embed))}
            tasks.append(row)
            print(row, flush=True)
    results["tasks"] = tasks
    if args.quality_only:
        return
    flag = str(sorted(FLAG_DIR.glob("*.png"))[0])
    speed = []
    for label, pipe, steps in [("teacher+cfg", teacher, s) for s in (50, 8, 4, 1)] + \
            ([("few-step", fast, s) for s in (8, 4, 1)] if fast else []):
        speed.append({"model": label, "steps": steps, "ms_per_image": latency(pipe, steps, [flag])})
        print(speed[-1], flush=True)
    if fast is not None:
        q8 = GenerationPipeline.from_pretrained(args.fast, int8=True, vae=args.vae)
        speed.append({"model": "few-step int8", "steps": 4, "ms_per_image": latency(q8, 4, [flag])})
        row = {"model": "few-step int8", "steps": 4, **score(generate_scenes(q8, sets["held_out_ref"], 4),
                                                             sets["held_out_ref"].scenes, pixel, embed)}
        quality.append(row)
        print(speed[-1], row, flush=True)
        from generator.quantize import to_bf16
        bf = GenerationPipeline(to_bf16(fast.dit), fast.config, fast.vae, fast.text, fast.name + " bf16")
        bf.dit = _Bf16(bf.dit)
        speed.append({"model": "few-step bf16", "steps": 4, "ms_per_image": latency(bf, 4, [flag], repeats=3)})
        row = {"model": "few-step bf16", "steps": 4, **score(generate_scenes(bf, sets["held_out_ref"], 4),
                                                             sets["held_out_ref"].scenes, pixel, embed)}
        quality.append(row)
        print(speed[-1], row, flush=True)
    results["speed"] = speed
    results["machine"]["load_average_at_end"] = os.getloadavg()
    grid(fast or teacher, RESULTS / "generation.png")
    (RESULTS / "generation.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "generation.md").write_text(markdown(results))
    print(markdown(results))


class _Bf16(torch.nn.Module):
    """Runs a bf16 DiT on fp32 inputs and returns fp32."""

    def __init__(self, dit: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.cfg = dit, dit.cfg

    def forward(self, x, t, text, text_mask, refs=(), ref_mask=None, level=None):
        bf = torch.bfloat16
        return self.inner(x.to(bf), t, text.to(bf), text_mask, [r.to(bf) for r in refs], ref_mask, level).float()


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `p` measured on `n` trials ((0, 1) without trials)."""
    if n <= 0:
        return 0.0, 1.0
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def markdown(r: dict) -> str:
    pct = lambda v: "–" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    emb = "fidelity_embedder" in (r["held_out_ref_by_steps"][0] if r.get("held_out_ref_by_steps") else {})
    nf = r.get("n_fidelity", r["n"])
    lines = [f"# Generator benchmark\n", f"n = {r['n']} scenes per set ({nf} in the held-out one-reference set); "
             f"64x64 images; machine: {r['machine']}\n",
             f"VAE (f8c16) reconstruction on held-out-entity scenes: PSNR {r['vae']['psnr_db']} dB, SSIM {r['vae']['ssim']}\n",
             *([f"The ceiling — the ground-truth held-out scenes encoded and decoded by the VAE alone: fidelity "
                f"{pct(r['vae_round_trip']['fidelity_pixel_nn'])} (pixel NN), "
                f"{pct(r['vae_round_trip'].get('fidelity_embedder'))} (embedder)\n"] if r.get("vae_round_trip") else []),
             "## Held-out entities, one reference: fidelity and speed by steps\n",
             "| model | steps | fidelity (pixel NN, 95% interval) | fidelity (embedder) | bg colour | position | clean bg | ms / image |",
             "|---|---|---|---|---|---|---|---|"]
    speed = {(s["model"], s["steps"]): s["ms_per_image"] for s in r.get("speed", [])}
    for q in r["held_out_ref_by_steps"]:
        lo, hi = wilson(q["fidelity_pixel_nn"], q["n"])
        lines.append(f"| {q['model']} | {q['steps']} | {pct(q['fidelity_pixel_nn'])} ({100 * lo:.0f}–{100 * hi:.0f}) | "
                     f"{pct(q.get('fidelity_embedder')) if emb else 'n/a'} | {pct(q['background_colour'])} | "
                     f"{pct(q.get('position'))} | {pct(q['clean_background'])} | {speed.get((q['model'], q['steps']), '–')} |")
    lines += ["\n## Tasks\n", "| set | model | steps | refs | fidelity (pixel NN) | fidelity (embedder) | bg colour | position | clean bg |",
              "|---|---|---|---|---|---|---|---|---|"]
    for q in r["tasks"]:
        lines.append(f"| {q['set']} | {q['model']} | {q['steps']} | {'–' if 't2i' in q['set'] else 'yes' if q['references'] else 'no'} | "
                     f"{pct(q['fidelity_pixel_nn'])} | {pct(q.get('fidelity_embedder')) if emb else 'n/a'} | "
                     f"{pct(q['background_colour'])} | {pct(q.get('position'))} | {pct(q['clean_background'])} |")
    lines += ["\n## Latency (one 64x64 image, whole pipeline)\n", "| model | steps | ms / image |", "|---|---|---|"]
    lines += [f"| {s['model']} | {s['steps']} | {s['ms_per_image']} |" for s in r.get("speed", [])]
    lines.append("\nFidelity: every object in the scene identified as the right entity among all 1870 worldkb "
                 "entities (3990 renderings) from its 32x32 slot crop. Chance is ~0.05%.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
