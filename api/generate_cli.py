"""`mmkb generate`, `mmkb edit` and `mmkb train vae|dit|distill`: typer sub-apps the main CLI mounts."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from api.console import console
from api.console import OutOption, RunDirOption, readable_image, training, written
from api.console import fail as _fail

app = typer.Typer(help="Generate and edit images with mmkb's DiT.", no_args_is_help=True)
train_app = typer.Typer(help="Train the generator: VAE, DiT, few-step distillation.", no_args_is_help=True)
VaeOption = Annotated[Optional[str], typer.Option(
    show_default=False, help="decode with this VAE (name or folder; default: the one the DiT was trained on), "
                             "e.g. a decoder `mmkb train vae --decoder-only` fine-tuned")]
Seed = Annotated[int, typer.Option(min=0, help="the first image's seed; each next one counts up")]


def write_outputs(result, out: Path, stem: str = "sample") -> list[Path]:
    """One PNG per image and a JSON sidecar beside each (the call's provenance + that image's seed).
    Earlier outputs in `out` are kept: a name already taken gets the next free number (sample-0-2.png)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for img, seed in zip(result.images, result.provenance["seeds"]):
        png, copy = out / f"{stem}-{seed}.png", 1
        while png.exists() or png.with_suffix(".json").exists():
            copy += 1
            png = out / f"{stem}-{seed}-{copy}.png"
        img.save(png)
        sidecar = {**result.provenance, "seed": seed, "file": png.name}
        png.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
        paths.append(png)
    return paths


def _run(prompt: str, refs: list[Path], image: Optional[Path], n: int, steps: Optional[int], seed: int, out: Path,
         fast: bool, int8: bool, text_scale: Optional[float], ref_scale: Optional[float], model: Optional[str],
         stem: str, ground: bool = False, vae: Optional[str] = None) -> None:
    from generator.pipeline import GenerationPipeline

    for p in refs + ([image] if image is not None else []):
        readable_image(p)
    if n < 1:
        _fail(f"--n must be at least 1, got {n}")
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} is a file: give a folder for the images (it is made if missing)")
    if not prompt.strip():
        _fail("the instruction is empty: say what to change, e.g. --instruction 'change the background to green'"
              if image is not None else "the prompt is empty: say what to draw, e.g. --prompt 'the flag of Tuvalu'")
    try:
        pipe = GenerationPipeline.from_pretrained(model, fast=fast, int8=int8, vae=vae)
        options = dict(n=n, steps=steps, seed=seed, text_scale=text_scale, ref_scale=ref_scale)
        if ground:
            from index.search import ReferenceIndex
            from rag.grounding import Grounder, generate_grounded

            reference = ReferenceIndex.from_settings()
            result = generate_grounded(pipe, Grounder(reference), prompt, image=image, **options)
            _say_grounding(result.provenance["grounding"], reference, editing=image is not None)
        else:
            result = pipe(prompt, refs=refs, image=image, **options)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    paths = write_outputs(result, out, stem)
    t = result.provenance["timings_ms"]
    console.print(f"{len(paths)} image(s), {result.provenance['steps']} steps, {t['per_image']} ms/image → [bold]{out}[/]")
    for p in paths:
        print(p)


def _say_grounding(grounding: dict, reference, editing: bool = False) -> None:
    """Which entities the prompt named and the references that stand for them (nothing for an edit
    that names none: most edits name no entity)."""
    if editing and not grounding["mentions"] and not grounding["unresolved"]:
        return
    for m in grounding["mentions"]:
        how = f"{m['how']} {m['score']:.2f}" if m["how"] == "search" else m["how"]
        console.print(f"  {m['text']!r} → {m['key']} ({m['name']}, by {how}); reference {m['style']} image",
                      markup=False)
    for phrase in grounding["unresolved"]:
        console.print(f"  [yellow]no indexed entity matches[/] {phrase!r}: it stays in the prompt as text")
    if not grounding["mentions"]:
        held = reference.store.stats()["entities"]
        hint = "" if held else " (the index holds no entities: run `mmkb demo` or `mmkb index ingest` first)"
        console.print(f"  the instruction names no indexed entity{hint}; editing with the instruction alone" if editing
                      else f"  the prompt names no indexed entity{hint}; generating from the text alone")
    else:
        console.print(f"  caption for the generator: {grounding['caption']!r}", markup=False)


@app.command("generate")
def generate(prompt: Annotated[str, typer.Option(help="what to draw")],
             ref: Annotated[Optional[list[Path]], typer.Option(help="reference image (repeat for up to 3)")] = None,
             n: int = 1, steps: Optional[int] = None, seed: Seed = 0, out: Path = Path("outputs/generate"),
             fast: Annotated[bool, typer.Option(help="few-step distilled model (default 4 steps)")] = False,
             int8: Annotated[bool, typer.Option(help="int8 dynamic quantization of the DiT")] = False,
             text_scale: Optional[float] = None, ref_scale: Optional[float] = None,
             model: Annotated[Optional[str], typer.Option(help="checkpoint name or folder")] = None,
             ground: Annotated[bool, typer.Option(help="without --ref: find the entities the prompt names in the "
                                                       "index and condition on their images")] = True,
             vae: VaeOption = None) -> None:
    """Knowledge-grounded generation: the entities a prompt names ("the flag of Tuvalu on a green background")
    are found in the index and their images become the references; or give the references with --ref
    (composition with 2–3 references)."""
    _run(prompt, list(ref or []), None, n, steps, seed, out, fast, int8, text_scale, ref_scale, model, "sample",
         ground=ground and not ref, vae=vae)


@app.command("edit")
def edit(image: Annotated[Path, typer.Option(help="the image to edit")],
         instruction: Annotated[str, typer.Option(help="e.g. 'change the background to green'")],
         ref: Annotated[Optional[list[Path]], typer.Option(help="a second image, e.g. to swap in")] = None,
         n: int = 1, steps: Optional[int] = None, seed: Seed = 0, out: Path = Path("outputs/edit"),
         fast: bool = False, int8: bool = False, text_scale: Optional[float] = None,
         ref_scale: Optional[float] = None, model: Optional[str] = None,
         ground: Annotated[bool, typer.Option(help="without --ref: the entity the instruction names comes from the "
                                                   "index (\"replace the flag with the flag of Japan\")")] = True,
         vae: VaeOption = None) -> None:
    """Edit an image by instruction (background colour, move, swap with a second image or with an entity
    the instruction names)."""
    _run(instruction, list(ref or []), image, n, steps, seed, out, fast, int8, text_scale, ref_scale, model, "edit",
         ground=ground and not ref, vae=vae)


@train_app.command("vae")
def vae(preset: str = "f8c16", minutes: float = 20.0, batch: int = 32, lr: float = 2e-3, threads: int = 1,
        resume: bool = True,
        decoder_only: Annotated[bool, typer.Option(help="fine-tune only the decoder of --init-from (latents unchanged)")] = False,
        init_from: Annotated[Optional[str], typer.Option(help="a trained VAE (name or folder), for --decoder-only")] = None,
        decoder_blocks: Annotated[Optional[int], typer.Option(help="deepen the decoder to this many blocks per level")] = None,
        generated_from: Annotated[Optional[str], typer.Option(
            help="with --decoder-only: also decode latents this DiT generates for training scenes")] = None,
        generated_fraction: float = 0.5, generated_count: int = 20480,
        name: Optional[str] = None, out: OutOption = None, run_dir: RunDirOption = None) -> None:
    """Train the VAE on composed worldkb scenes; exports to MMKB_HOME/models/NAME (NAME: vae-PRESET) and
    resumes from MMKB_HOME/runs/NAME/last.pt.
    Better decoder for the shipped VAE, DiTs unchanged: --decoder-only --init-from vae-f8c16 --decoder-blocks 2 --lr 1e-3
    (--generated-from dit-medium-fast: half of each batch are the DiT's own latents, made first under
    MMKB_HOME/runs/)."""
    from generator.pipeline import resolve
    from generator.train_vae import finetune_decoder, generated_pool, train_vae

    if decoder_only:
        if not init_from:
            raise typer.BadParameter("--decoder-only fine-tunes a trained VAE: name it with --init-from (e.g. vae-f8c16)")
        if not (resolve(init_from) / "model.safetensors").is_file():
            _fail(f"--init-from {init_from}: no VAE checkpoint there (vae-f8c16, or a folder `mmkb train vae` wrote)")
        if not 0.0 < generated_fraction < 1.0:
            raise typer.BadParameter(f"--generated-fraction is a share of each batch, between 0 and 1, not {generated_fraction}")
        pool = generated_pool(generated_from, n=generated_count, threads=threads) if generated_from else None
        path = training(finetune_decoder, resolve(init_from), minutes=minutes, batch=batch, lr=lr,
                        decoder_blocks=decoder_blocks, name=name or f"{Path(init_from).name}-decoder-ft",
                        threads=threads, resume=resume, out=out, generated=pool,
                        generated_fraction=generated_fraction, run_dir=run_dir)
        written(path, f"mmkb generate --vae {path} --prompt ... (it decodes the latents of {init_from}, so the "
                      f"DiTs trained on that VAE keep working)")
    elif init_from or decoder_blocks or generated_from:
        raise typer.BadParameter("--init-from, --decoder-blocks and --generated-from go with --decoder-only")
    else:
        path = training(train_vae, preset=preset, minutes=minutes, batch=batch, lr=lr, threads=threads, resume=resume,
                        name=name, out=out, run_dir=run_dir)
        written(path, f"mmkb train dit --vae {path} (a DiT learns a VAE's latents)")


@train_app.command("dit")
def dit(preset: str = "medium", minutes: float = 35.0, batch: int = 32, lr: float = 1e-3, threads: int = 1,
        resume: bool = True, device: str = "cpu", workers: int = 0, ema_decay: float = 0.995,
        init_from: Optional[str] = None, name: Optional[str] = None, out: OutOption = None,
        run_dir: RunDirOption = None,
        vae: Annotated[str, typer.Option(
            help="the VAE whose latents it learns (a shipped name or a folder)")] = "vae-f8c16"
        ) -> None:
    """Train the DiT with rectified flow on all tasks; exports to MMKB_HOME/models/NAME (NAME: dit-PRESET) and
    resumes from MMKB_HOME/runs/NAME/last.pt.
    On a GPU: --device cuda --workers 8 (scenes are rendered by the data-loading processes).
    Fine-tune the shipped model: --init-from dit-medium --name dit-medium-ft --lr 3e-4."""
    from generator.pipeline import resolve
    from generator.train_dit import train_dit

    vae_path = resolve(vae)
    if not (vae_path / "model.safetensors").is_file():
        _fail(f"--vae {vae}: no VAE checkpoint there (vae-f8c16, or a folder `mmkb train vae` wrote)")
    out = training(train_dit, preset=preset, minutes=minutes, batch=batch, lr=lr, threads=threads, resume=resume,
                   device=device, workers=workers, ema_decay=ema_decay, init_from=init_from, name=name, out=out,
                   run_dir=run_dir, vae=vae_path)
    written(out, f"mmkb generate --model {out} --prompt ...")


@train_app.command("distill")
def distill(teacher: str = "dit-medium", minutes: float = 12.0, batch: int = 32, text_scale: float = 3.0,
            ref_scale: float = 1.5, threads: int = 1, resume: bool = True, device: str = "cpu",
            workers: int = 0, name: Optional[str] = None, out: OutOption = None,
            run_dir: RunDirOption = None) -> None:
    """Distill the DiT into a few-step shortcut model with guidance baked in; exports to MMKB_HOME/models/NAME
    (NAME: TEACHER-fast) and resumes from MMKB_HOME/runs/NAME/last.pt."""
    from generator.distill import distill as run

    out = training(run, teacher=teacher, minutes=minutes, batch=batch, text_scale=text_scale, ref_scale=ref_scale,
                   threads=threads, resume=resume, device=device, workers=workers, name=name, out=out,
                   run_dir=run_dir)
    written(out, f"mmkb generate --model {out} --prompt ...")

