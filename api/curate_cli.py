"""`mmkb curate …` (tag suggestions, review, near-duplicates) and `mmkb train tagger`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from api.console import OutOption, console, stdout, written
from api.console import fail as _fail
from index.tagger.config import TaggerConfig

curate_app = typer.Typer(help="Curate the reference index: tag suggestions to review, near-duplicate images.",
                         no_args_is_help=True)
_DEFAULT = TaggerConfig()


def _pages_dir() -> Path:
    from index.config import get_settings

    return get_settings().home_dir / "curation"


def tagger(out: OutOption = None, embedder: Annotated[Optional[str], typer.Option(
               help="image embedder whose features it reads (default: the configured one)")] = None,
           manifest: Annotated[Optional[Path], typer.Option(help="a manifest.jsonl with tags or keywords sections "
                                                                  "(default: worldkb's)")] = None,
           min_count: int = _DEFAULT.min_count, views: int = _DEFAULT.views, epochs: int = _DEFAULT.epochs,
           dim: int = _DEFAULT.dim, lr: float = _DEFAULT.lr, seed: int = _DEFAULT.seed,
           labels: Annotated[str, typer.Option(help="label embeddings: asge | text | text+asge | learned")] = _DEFAULT.labels) -> None:
    """Train the CMA + ASGE multi-label tagger (arXiv 1912.07872) over the frozen image embedder: minutes on a CPU.
    Exports to MMKB_HOME/models/mmkb-tagger unless --out says otherwise."""
    from index.tagger.train import train_tagger

    if manifest is not None and not manifest.is_file():
        _fail(f"manifest not found: {manifest}")
    try:
        cfg = TaggerConfig(manifest=str(manifest) if manifest else None, embedder=embedder, min_count=min_count,
                           views=views, epochs=epochs, dim=dim, lr=lr, seed=seed, labels=labels)
        path = train_tagger(cfg, out=out)
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    held = json.loads((path / "config.json").read_text())["summary"].get("held_out")
    if held:
        console.print(f"held-out entities: mAP {held['mAP']:.3f}, CF1@3 {held['CF1']:.3f}, OF1@3 {held['OF1']:.3f}")
    written(path, f"mmkb curate tag --tagger {path}")


def _check_keys(store, keys: list[str]) -> None:
    """Fail naming the keys no stored entity has."""
    if keys and (missing := store.missing_keys(keys)):
        _fail(f"no entity has the key {', '.join(map(repr, missing))}: see `mmkb index search --text NAME` for keys")


def _load_tagger(path: Optional[Path]):
    from index.tagger import Tagger

    try:
        return Tagger(path)
    except FileNotFoundError as err:
        _fail(str(err))


@curate_app.command("tag")
def curate_tag(kind: Annotated[Optional[list[str]], typer.Option(help="only entities of these kinds")] = None,
               key: Annotated[Optional[list[str]], typer.Option(help="only these entity keys")] = None,
               threshold: float = 0.3, top: int = 5,
               knn_weight: Annotated[float, typer.Option(help="weight of the labels of the image index's nearest "
                                                              "other entities (0: the tagger alone)")] = 0.5,
               tagger_path: Annotated[Optional[Path], typer.Option("--tagger", help="a tagger folder")] = None,
               page: Optional[Path] = None,
               dry_run: Annotated[bool, typer.Option(help="show suggestions without storing them")] = False,
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Suggest tags for entities from their images; stored as pending tags, shown on a page."""
    from index.curate import knn_unavailable, suggest_tags, tag_page
    from index.search import ReferenceIndex, unknown_kinds

    if not 0.0 <= threshold <= 1.0:
        _fail(f"--threshold is a probability between 0 and 1, not {threshold}")
    if top < 1:
        _fail(f"--top must be at least 1, not {top}")
    if not 0.0 <= knn_weight <= 1.0:
        _fail(f"--knn-weight is between 0 and 1, not {knn_weight}")
    model = _load_tagger(tagger_path)
    reference = ReferenceIndex.from_settings()
    store = reference.store
    if why := unknown_kinds(kind, list(store.kinds())):
        _fail(why)
    _check_keys(store, key or [])
    if knn_weight and (why := knn_unavailable(reference, model)):
        console.print(f"[yellow]{why}: suggesting from the tagger alone[/]")
    try:
        suggestions = suggest_tags(store, model, kinds=kind, keys=key, threshold=threshold, top=top,
                                   write=not dry_run, reference=reference if knn_weight else None,
                                   knn_weight=knn_weight)
    except ValueError as err:
        _fail(str(err))
    page = tag_page(suggestions, page or _pages_dir() / "tags.html", model.name)
    with_any = [s for s in suggestions if s.labels]
    if as_json:
        print(json.dumps([{"key": s.key, "name": s.name, "suggested": [{"label": lab, "p": round(p, 4)}
                                                                        for lab, p in s.labels]}
                          for s in suggestions], ensure_ascii=False, indent=2))
    else:
        table = Table("entity", "name", "suggested (probability)")
        for s in with_any[:20]:
            table.add_row(escape(s.key), escape(s.name), escape(", ".join(f"{lab} {p:.2f}" for lab, p in s.labels)))
        stdout().print(table)
    stored = "not stored (--dry-run)" if dry_run else "stored as pending tags (`mmkb curate review`)"
    console.print(f"{len(with_any)} of {len(suggestions)} entities got suggestions, {stored}; page: [bold]{page}[/]")


@curate_app.command("review")
def curate_review(accept_above: Annotated[Optional[float], typer.Option(help="accept pending tags this probable")] = None,
                  reject_below: Annotated[Optional[float], typer.Option(help="reject pending tags less probable")] = None,
                  accept: Annotated[Optional[list[str]], typer.Option(help="KEY=LABEL to accept")] = None,
                  reject: Annotated[Optional[list[str]], typer.Option(help="KEY=LABEL to reject")] = None) -> None:
    """Accept or reject pending tags; accepted ones filter `mmkb index search --tag`."""
    from index.curate import parse_pairs, review_tags
    from index.store import EntityStore

    if accept_above is None and reject_below is None and not accept and not reject:
        _fail("say what to review: --accept-above P, --reject-below P, --accept KEY=LABEL or --reject KEY=LABEL")
    store = EntityStore.from_settings()
    try:
        accepted, rejected = parse_pairs(accept or []), parse_pairs(reject or [])
        _check_keys(store, list(dict.fromkeys(key for key, _ in accepted + rejected)))
        counts = review_tags(store, accept_above, reject_below, accepted, rejected)
    except ValueError as err:
        _fail(str(err))
    console.print(f"accepted {counts['accepted']}, rejected {counts['rejected']}")


@curate_app.command("tags")
def curate_tags(key: Optional[str] = None,
                state: Annotated[Optional[str], typer.Option(help="pending, accepted or rejected")] = None,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List tags with their source, confidence and review state."""
    from index.curate import list_tags
    from index.store import EntityStore

    if state not in (None, "pending", "accepted", "rejected"):
        _fail(f"--state is pending, accepted or rejected, not {state!r}")
    store = EntityStore.from_settings()
    _check_keys(store, [key] if key is not None else [])
    rows = list_tags(store, state, key)
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    table = Table("entity", "label", "source", "confidence", "state")
    for r in rows:
        table.add_row(escape(r["key"]), escape(r["label"]), escape(r["source"]), f"{r['confidence']:.2f}", r["state"])
    stdout().print(table)


@curate_app.command("dedup")
def curate_dedup(threshold: float = 0.97, page: Optional[Path] = None,
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Near-duplicate images in the active image index (shared pictures, mislabelled or repeated images)."""
    from index.curate import duplicate_page, index_duplicates
    from index.search import IndexNotBuiltError, ReferenceIndex

    if not -1.0 <= threshold <= 1.0:
        _fail(f"--threshold is a cosine between -1 and 1, not {threshold}")
    ref = ReferenceIndex.from_settings()
    try:
        pairs = index_duplicates(ref, threshold)
    except IndexNotBuiltError as err:
        _fail(str(err))
    page = duplicate_page(pairs, page or _pages_dir() / "duplicates.html", ref.store.home, threshold)
    if as_json:
        print(json.dumps([{"a": {k: p.a[k] for k in ("key", "image_id", "path")},
                           "b": {k: p.b[k] for k in ("key", "image_id", "path")},
                           "cosine": round(p.similarity, 4), "same_entity": p.same_entity, "same_file": p.identical}
                          for p in pairs], ensure_ascii=False, indent=2))
    cross = sum(1 for p in pairs if not p.same_entity)
    console.print(f"{len(pairs)} {'pair' if len(pairs) == 1 else 'pairs'} at cosine ≥ {threshold} ({cross} between "
                  f"two entities); page: [bold]{page}[/]")
