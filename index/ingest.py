"""Ingest a KB folder: a JSONL or CSV manifest of entities, sections and image paths.

JSONL, one entity a line:
  {"key": "country:BTN", "name": "Bhutan", "kind": "country", "aliases": ["Kingdom of Bhutan"],
   "sections": [{"heading": "capital", "text": "The capital of Bhutan is Thimphu.", "source": "..."}],
   "images": [{"path": "images/BTN.png", "source": "...", "license": "...", "style": "flag"}],
   "tags": ["asia"], ...other fields are kept as attributes}
CSV, one section or image a row (rows with the same key merge):
  key,name,kind,aliases,heading,text,image      (aliases joined with "|")
Re-ingesting is idempotent (content hashes); a line's sections replace the entity's document from the
same source, and its images are added to the entity's (with `replace_images`, `mmkb index ingest
--replace-images`, they replace them, unless one fails to read). A bad line or file is reported with
file and line and skipped; good items are kept; each entity is written in its own savepoint, so
nothing already stored is lost.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import select
from tqdm import tqdm

from index.files import json_line
from index.store import Alias, Document, Entity, EntityStore, Image, Section, Tag

KNOWN_FIELDS = {"key", "name", "kind", "aliases", "sections", "images", "tags", "source", "license"}
MAX_IMAGE_BYTES = 50 * 1024 * 1024


class IngestError(ValueError):
    """A manifest that cannot be read at all."""


@dataclass
class Problem:
    file: str
    line: int | None
    message: str
    skipped: str = "the line"  # what was left out: the whole line, or one image of an entity stored without it

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    images_added: int = 0
    images_removed: int = 0
    kept_unlisted: int = 0  # entities that gained a picture and keep others their line no longer lists
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def find_manifest(folder: Path) -> Path:
    for name in ("manifest.jsonl", "manifest.csv"):
        if (folder / name).is_file():
            return folder / name
    raise IngestError(f"{folder} has no manifest.jsonl or manifest.csv; "
                      "see `mmkb index ingest --help` for the format")


def read_manifest(path: Path, problems: list[Problem]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) pairs; malformed lines go to `problems`."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json_line(line)
                except ValueError as err:
                    problems.append(Problem(str(path), n, str(err)))
                    continue
                if not isinstance(rec, dict):
                    problems.append(Problem(str(path), n, "expected a JSON object per line"))
                    continue
                yield n, rec
    elif path.suffix == ".csv":
        yield from _read_csv(path, problems)
    else:
        raise IngestError(f"{path}: manifest must be .jsonl or .csv")


def _read_csv(path: Path, problems: list[Problem]) -> Iterator[tuple[int, dict[str, Any]]]:
    merged: dict[str, tuple[int, dict[str, Any]]] = {}
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "key" not in reader.fieldnames or "name" not in reader.fieldnames:
            raise IngestError(f"{path}: the CSV header must include key and name "
                              "(columns: key,name,kind,aliases,heading,text,image)")
        for n, row in enumerate(reader, 2):
            key = (row.get("key") or "").strip()
            if not key:
                problems.append(Problem(str(path), n, "empty key"))
                continue
            _, rec = merged.setdefault(key, (n, {"key": key, "name": row.get("name") or "", "kind": row.get("kind"),
                                                 "aliases": [], "sections": [], "images": []}))
            rec["aliases"] += [a.strip() for a in (row.get("aliases") or "").split("|") if a.strip()]
            if (row.get("text") or "").strip():
                rec["sections"].append({"heading": row.get("heading") or "text", "text": row["text"].strip()})
            if (row.get("image") or "").strip():
                rec["images"].append({"path": row["image"].strip()})
    yield from merged.values()


def _validate(rec: dict[str, Any]) -> str | None:
    if not isinstance(rec.get("key"), str) or ":" not in rec["key"]:
        return "missing or malformed key (expected '<kind>:<id>', e.g. 'country:BTN')"
    if not isinstance(rec.get("name"), str) or not rec["name"].strip():
        return f"{rec['key']}: missing name"
    for fld in ("aliases", "sections", "images", "tags"):
        if fld in rec and not isinstance(rec[fld], list):
            return f"{rec['key']}: {fld} must be a list"
    for s in rec.get("sections", []):
        if not isinstance(s, dict) or not isinstance(s.get("text"), str) or not s["text"].strip():
            return f"{rec['key']}: each section needs a non-empty text"
    for im in rec.get("images", []):
        if not isinstance(im, dict) or not isinstance(im.get("path"), str):
            return f"{rec['key']}: each image needs a path"
    return None


def read_image(path: Path) -> tuple[bytes, int, int, str]:
    """Bytes, size and format of an image file; raises ValueError for a missing or broken one."""
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ValueError(f"image larger than {MAX_IMAGE_BYTES >> 20} MB: {path}")
    data = path.read_bytes()
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            img.verify()
        with PILImage.open(io.BytesIO(data)) as img:
            img.load()  # verify() misses truncated pixel data; a full decode catches it
            return data, img.width, img.height, (img.format or "png").lower()
    except Exception as err:  # PIL raises many types for broken files
        raise ValueError(f"unreadable or truncated image {path}: {unreadable_reason(err)}") from err


def image_problem(path: Path) -> str | None:
    """What keeps an image file from being used, in a sentence that says what to give instead, or None
    when Pillow decodes it whole (a truncated file opens but does not decode)."""
    if Path(path).is_dir():
        return f"{path} is a folder: give an image file (PNG, JPEG or WebP)"
    try:
        with PILImage.open(path) as img:
            img.load()
    except FileNotFoundError:
        return f"image not found: {path}"
    except Exception as err:  # PIL raises many types for broken files
        return f"{path} is not an image that can be read ({unreadable_reason(err)}): give a PNG, JPEG or WebP file"
    return None


def unreadable_reason(err: Exception) -> str:
    """Why Pillow could not decode a file, in words: for an unknown format Pillow's own message names
    its in-memory buffer ("<_io.BytesIO object at 0x…>"), which says nothing to a user."""
    return "not a picture format Pillow can read" if isinstance(err, PILImage.UnidentifiedImageError) else str(err)


def store_blob(home: Path, data: bytes, ext: str) -> tuple[str, str]:
    """Write bytes content-addressed under `home/images`, atomically; returns (hash, relative path)."""
    digest = hashlib.sha256(data).hexdigest()
    rel = f"images/{digest[:2]}/{digest}.{ext}"
    dest = home / rel
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    return digest, rel


def _document_hash(rec: dict[str, Any]) -> str:
    body = json.dumps([[s.get("heading"), s["text"], s.get("source")] for s in rec.get("sections", [])])
    return hashlib.sha256(body.encode()).hexdigest()


def ingest_folder(store: EntityStore, folder: Path | str, manifest: Path | str | None = None,
                  show_progress: bool = True, replace_images: bool = False) -> IngestReport:
    """Ingest every entity of a folder's manifest into the store; returns what changed and what failed.
    `replace_images`: a line that lists images and whose images all read makes them all the entity's
    images (others are removed, with their tags); by default images are only ever added."""
    folder = Path(folder)
    if not folder.exists():
        raise IngestError(f"{folder} not found: give the folder that holds manifest.jsonl or manifest.csv")
    if not folder.is_dir():
        raise IngestError(f"{folder} is a file, not a folder: give the folder that holds it (or --manifest FILE)")
    path = Path(manifest) if manifest else find_manifest(folder)
    report = IngestReport()
    records = list(read_manifest(path, report.problems))
    with store.session() as session:
        for line, rec in tqdm(records, desc=f"ingesting {path.name}", disable=not show_progress):
            error = _validate(rec)
            if error:
                report.problems.append(Problem(str(path), line, error))
                continue
            images = []
            for im in rec.get("images", []):
                img_path = (folder / im["path"]).resolve()
                try:
                    images.append((im, *read_image(img_path)))
                except ValueError as err:
                    report.problems.append(Problem(str(path), line, f"{rec['key']}: {err}; the entity is stored "
                                                   "without this image", skipped="an image"))
            # an image that failed to read, or a line that lists none (a CSV row of text), removes nothing
            complete = len(images) == len(rec.get("images", [])) > 0
            try:
                with session.begin_nested():
                    _upsert(session, store.home, rec, images, report, replace_images=replace_images and complete)
            except Exception as err:  # one bad entity must not lose the others
                report.problems.append(Problem(str(path), line, f"{rec['key']}: {err}"))
    return report


def _upsert(session, home: Path, rec: dict[str, Any], images: list, report: IngestReport,
            replace_images: bool = False) -> None:
    """Add or update one entity. With `replace_images` the line's images are all the entity has: images
    stored before and not listed are removed, with their tags (a rebuilt KB that dropped a wrong drawing)."""
    entity = session.scalar(select(Entity).where(Entity.key == rec["key"]))
    attributes = {k: v for k, v in rec.items() if k not in KNOWN_FIELDS}
    kind = rec.get("kind") or rec["key"].split(":", 1)[0]
    changed = False
    is_new = entity is None
    if is_new:
        entity = Entity(key=rec["key"], kind=kind, name=rec["name"].strip(), attributes=attributes,
                        source=rec.get("source"), license=rec.get("license"))
        session.add(entity)
        session.flush()
        report.added += 1
    else:
        new = (kind, rec["name"].strip(), attributes, rec.get("source"), rec.get("license"))
        if new != (entity.kind, entity.name, entity.attributes, entity.source, entity.license):
            entity.kind, entity.name, entity.attributes, entity.source, entity.license = new
            changed = True
    aliases = list(dict.fromkeys(a.strip() for a in rec.get("aliases", []) if isinstance(a, str) and a.strip()))
    if [a.alias for a in entity.aliases] != aliases:
        entity.aliases.clear()
        session.flush()
        entity.aliases.extend(Alias(alias=a) for a in aliases)
        changed = True
    if rec.get("sections"):
        digest = _document_hash(rec)
        source = rec.get("source") or "manifest"
        current = [d for d in entity.documents if d.source == source]
        if not any(d.content_hash == digest for d in current):
            for d in current:
                entity.documents.remove(d)
            session.flush()
            entity.documents.append(Document(
                title=rec["name"], source=source, license=rec.get("license"), content_hash=digest,
                sections=[Section(position=i, heading=s.get("heading") or "text", text=s["text"].strip(),
                                  source=s.get("source")) for i, s in enumerate(rec["sections"])]))
            changed = True
    known = {im.content_hash for im in entity.images}
    listed, added = set(), False
    for meta, data, width, height, fmt in images:
        digest, rel = store_blob(home, data, fmt)
        listed.add(digest)
        if digest in known:
            continue
        known.add(digest)
        entity.images.append(Image(content_hash=digest, path=rel, width=width, height=height,
                                   source=meta.get("source"), license=meta.get("license"), style=meta.get("style")))
        report.images_added += 1
        changed = added = True
    if added and not is_new and not replace_images and known - listed:
        report.kept_unlisted += 1  # likely a redrawn picture saved under the same name
    if replace_images:
        for im in [im for im in entity.images if im.content_hash not in listed]:
            entity.images.remove(im)
            report.images_removed += 1
            changed = True
    have_tags = {(t.label, t.source) for t in entity.tags}
    for label in rec.get("tags", []):
        if isinstance(label, str) and (label, "manifest") not in have_tags:
            entity.tags.append(Tag(label=label, source="manifest", review_state="accepted"))
            changed = True
    session.flush()
    if not is_new:
        if changed:
            report.updated += 1
        else:
            report.unchanged += 1
