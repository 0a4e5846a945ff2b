"""EntityStore: the engine, schema migrations and the queries the rest of mmkb needs."""
from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from index.store.models import Alias, Document, Entity, Image, IndexVersion, Section, Tag

MIGRATIONS = Path(__file__).parent / "migrations"


class MissingDriverError(RuntimeError):
    """The database URL names a dialect whose Python driver is not installed."""


def with_driver(url: str) -> str:
    """A `postgresql://` URL names no driver, and SQLAlchemy 2.1 then wants psycopg 3; mmkb installs
    psycopg2, so such a URL gets whichever of the two is installed (psycopg 3 first)."""
    if not url.startswith("postgresql://"):
        return url
    driver = next((d for d in ("psycopg", "psycopg2") if importlib.util.find_spec(d)), None)
    return url.replace("postgresql://", f"postgresql+{driver}://", 1) if driver else url


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets foreign keys on and WAL so readers don't block the writer."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(with_driver(url), future=True)
    except ModuleNotFoundError as err:
        raise MissingDriverError(f"the database URL {shown_url(url)} needs the Python module {err.name!r}, which is "
                                 f"not installed: pip install its driver, or name an installed one in the URL "
                                 f"(mmkb installs psycopg2: postgresql+psycopg2://user@host/db)") from None
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


MODALITIES = {"text": "sections", "image": "images"}  # an index per modality, of these rows of the store


def rows_digest(ids: np.ndarray, hashes: np.ndarray) -> str:
    """One SHA-256 for a modality's rows (`EntityStore.row_hashes`): what an index manifest records."""
    return hashlib.sha256(np.ascontiguousarray(ids, np.int64).tobytes()
                          + np.ascontiguousarray(hashes, np.int64).tobytes()).hexdigest()


def shown_url(url: str) -> str:
    """A database URL as printed for people: its password, if any, masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL SQLAlchemy parses: say it as given, it has no password field to hide
        return url


class EntityStore:
    """Entities, their documents, images and tags, and the index versions built from them."""

    def __init__(self, url: str, home: Path, auto_migrate: bool = True) -> None:
        self.url = url
        self.home = Path(home)
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if auto_migrate:
            migrate(self.engine)

    @property
    def shown_url(self) -> str:
        """The database URL to print: a password in it is masked."""
        return shown_url(self.url)

    @classmethod
    def from_settings(cls, settings=None) -> EntityStore:
        from index.config import get_settings

        settings = settings or get_settings()
        return cls(settings.db_url, settings.home_dir)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    # --- reading -------------------------------------------------------------------------------

    def entity(self, key: str) -> Entity | None:
        with self._sessions() as s:
            return s.scalar(select(Entity).where(Entity.key == key))

    def missing_keys(self, keys: Sequence[str]) -> list[str]:
        """The keys among `keys` that no stored entity has, in the order given."""
        with self._sessions() as s:
            held = set(s.scalars(select(Entity.key).where(Entity.key.in_(list(keys)))))
        return [k for k in keys if k not in held]

    def stats(self) -> dict[str, int]:
        with self._sessions() as s:
            return {name: s.scalar(select(func.count()).select_from(model)) or 0
                    for name, model in [("entities", Entity), ("aliases", Alias), ("documents", Document),
                                        ("sections", Section), ("images", Image), ("tags", Tag)]}

    def kinds(self) -> dict[str, int]:
        with self._sessions() as s:
            return dict(s.execute(select(Entity.kind, func.count()).group_by(Entity.kind)).all())

    def row_hashes(self, modality: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, a 64-bit hash of what each holds: a section's text, an image's content hash) of the rows
        one modality's index embeds, in id order: a row added, removed or replaced, even under an id the
        database reused, changes them."""
        if modality not in MODALITIES:
            raise ValueError(f"the index modalities are {' and '.join(MODALITIES)}, not {modality!r}")
        row_id, content = (Section.id, Section.text) if modality == "text" else (Image.id, Image.content_hash)
        ids, hashes = [], []
        with self._sessions() as s:
            for number, held in s.execute(select(row_id, content).order_by(row_id).execution_options(yield_per=5000)):
                ids.append(number)
                hashes.append(int.from_bytes(hashlib.blake2b(held.encode(), digest_size=8).digest(), "little",
                                             signed=True))
        return np.asarray(ids, dtype=np.int64), np.asarray(hashes, dtype=np.int64)

    def rows_signature(self, modality: str) -> list[int]:
        """[count, sum of ids, largest id, sum of content lengths (a section's text, an image's pixels)] of
        one modality's rows: one aggregate query, for telling whether an index still matches the store on
        every search. `row_hashes` is exact (a build uses it); this misses only a row replaced under the
        id the database reused by one of the same length or size."""
        if modality not in MODALITIES:
            raise ValueError(f"the index modalities are {' and '.join(MODALITIES)}, not {modality!r}")
        row_id, size = ((Section.id, func.length(Section.text)) if modality == "text"
                        else (Image.id, Image.width * Image.height))
        with self._sessions() as s:
            row = s.execute(select(func.count(), func.sum(row_id), func.max(row_id), func.sum(size))).one()
        return [int(v or 0) for v in row]

    def rows_of(self, modality: str, ids: Sequence[int]) -> list[tuple[int, str | Path]]:
        """(id, section text or absolute image path) of the given rows of one modality, in id order."""
        row_id, content = (Section.id, Section.text) if modality == "text" else (Image.id, Image.path)
        ids = [int(i) for i in ids]
        out = []
        with self._sessions() as s:
            for start in range(0, len(ids), 1000):  # IN lists stay short
                rows = s.execute(select(row_id, content).where(row_id.in_(ids[start:start + 1000])))
                out += [(r[0], r[1] if modality == "text" else self.home / r[1]) for r in rows]
        return sorted(out)

    def iter_sections(self, batch: int = 2000) -> Iterator[list[tuple[int, str]]]:
        """(section id, text to embed) in id order."""
        last = 0
        with self._sessions() as s:
            while True:
                rows = s.execute(select(Section.id, Section.text)
                                 .where(Section.id > last).order_by(Section.id).limit(batch)).all()
                if not rows:
                    return
                yield [(r[0], r[1]) for r in rows]
                last = rows[-1][0]

    def iter_images(self, batch: int = 2000) -> Iterator[list[tuple[int, Path]]]:
        """(image id, absolute file path) in id order."""
        last = 0
        with self._sessions() as s:
            while True:
                rows = s.execute(select(Image.id, Image.path).where(Image.id > last)
                                 .order_by(Image.id).limit(batch)).all()
                if not rows:
                    return
                yield [(r[0], self.home / r[1]) for r in rows]
                last = rows[-1][0]

    def allowed_ids(self, modality: str, kinds: Sequence[str] | None = None,
                    keys: Sequence[str] | None = None) -> list[int] | None:
        """Row ids of one modality whose entity passes the filter (None: no filter)."""
        if not kinds and not keys:
            return None
        if modality == "text":
            q = (select(Section.id).join(Document, Section.document_id == Document.id)
                 .join(Entity, Document.entity_id == Entity.id))
        else:
            q = select(Image.id).join(Entity, Image.entity_id == Entity.id)
        if kinds:
            q = q.where(Entity.kind.in_(list(kinds)))
        if keys:
            q = q.where(Entity.key.in_(list(keys)))
        with self._sessions() as s:
            return list(s.scalars(q))

    def section_hits(self, ids: Sequence[int]) -> dict[int, dict]:
        """Section id → entity and passage, for turning vector hits into results."""
        with self._sessions() as s:
            rows = s.execute(select(Section.id, Section.heading, Section.text, Section.document_id,
                                    Entity.id, Entity.key, Entity.name, Entity.kind)
                             .join(Document, Section.document_id == Document.id)
                             .join(Entity, Document.entity_id == Entity.id)
                             .where(Section.id.in_(list(ids)))).all()
        return {r[0]: {"section_id": r[0], "heading": r[1], "text": r[2], "document_id": r[3],
                       "entity_id": r[4], "key": r[5], "name": r[6], "kind": r[7]} for r in rows}

    def image_hits(self, ids: Sequence[int]) -> dict[int, dict]:
        """Image id → entity and image file, for turning vector hits into results."""
        with self._sessions() as s:
            rows = s.execute(select(Image.id, Image.path, Image.style, Image.source,
                                    Entity.id, Entity.key, Entity.name, Entity.kind)
                             .join(Entity, Image.entity_id == Entity.id)
                             .where(Image.id.in_(list(ids)))).all()
        return {r[0]: {"image_id": r[0], "path": r[1], "style": r[2], "image_source": r[3],
                       "entity_id": r[4], "key": r[5], "name": r[6], "kind": r[7]} for r in rows}

    def prominence(self, keys: Sequence[str]) -> dict[str, float]:
        """Entity key → how prominent it is, for breaking ties between entities that share a picture
        (France and its overseas regions fly one flag): the `prominence` attribute if the manifest
        gave one, else the population fact, else 0."""
        with self._sessions() as s:
            rows = s.execute(select(Entity.key, Entity.attributes).where(Entity.key.in_(list(keys)))).all()
        out = {}
        for key, attrs in rows:
            attrs = attrs or {}
            value = attrs.get("prominence")
            if value is None:
                value = (attrs.get("facts") or {}).get("population")
            out[key] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
        return out

    def entity_images(self, keys: Sequence[str]) -> dict[str, list[tuple[int, Path, str | None]]]:
        """Entity key → (image id, absolute path, style) of each of its images."""
        with self._sessions() as s:
            rows = s.execute(select(Entity.key, Image.id, Image.path, Image.style)
                             .join(Image, Image.entity_id == Entity.id)
                             .where(Entity.key.in_(list(keys))).order_by(Image.id)).all()
        out: dict[str, list[tuple[int, Path, str | None]]] = {}
        for key, image_id, path, style in rows:
            out.setdefault(key, []).append((image_id, self.home / path, style))
        return out

    def keys_tagged(self, labels: Sequence[str]) -> list[str]:
        """Keys of the entities carrying an accepted tag with any of `labels` (case-insensitive)."""
        wanted = [label.strip().lower() for label in labels]
        with self._sessions() as s:
            return list(s.scalars(select(Entity.key).join(Tag, Tag.entity_id == Entity.id)
                                  .where(func.lower(Tag.label).in_(wanted), Tag.review_state == "accepted")
                                  .distinct().order_by(Entity.key)))

    def names(self) -> list[tuple[str, str, str, list[str], dict]]:
        """(key, kind, name, aliases, attributes) of every entity, in id order: what prompts name."""
        with self._sessions() as s:
            entities = s.execute(select(Entity.id, Entity.key, Entity.kind, Entity.name, Entity.attributes)
                                 .order_by(Entity.id)).all()
            aliases: dict[int, list[str]] = {}
            for entity_id, alias in s.execute(select(Alias.entity_id, Alias.alias).order_by(Alias.id)):
                aliases.setdefault(entity_id, []).append(alias)
        return [(key, kind, name, aliases.get(eid, []), attrs or {}) for eid, key, kind, name, attrs in entities]

    # --- removing ------------------------------------------------------------------------------

    def remove_entities(self, keys: Sequence[str]) -> dict[str, int]:
        """Remove the entities with these keys, with their aliases, documents, sections, images and tags,
        in one transaction; a key no entity has is a KeyError and nothing is removed. Returns what went,
        counted. Image files stay under the data home (content-addressed, other entities may share them);
        the index drops the rows at its next build."""
        keys = list(dict.fromkeys(keys))
        with self.session() as s:
            found = dict(s.execute(select(Entity.key, Entity.id).where(Entity.key.in_(keys))).all())
            if missing := [k for k in keys if k not in found]:
                raise KeyError(", ".join(map(repr, missing)))  # rolls the transaction back: nothing removed
            ids = list(found.values())
            counts = {"entities": len(ids),
                      "sections": s.scalar(select(func.count()).select_from(Section).join(Document)
                                           .where(Document.entity_id.in_(ids))) or 0,
                      "images": s.scalar(select(func.count()).select_from(Image).where(Image.entity_id.in_(ids))) or 0,
                      "tags": s.scalar(select(func.count()).select_from(Tag).where(Tag.entity_id.in_(ids))) or 0}
            for entity in s.scalars(select(Entity).where(Entity.id.in_(ids))):
                s.delete(entity)  # the relationships cascade to its rows
        return counts

    # --- index versions ------------------------------------------------------------------------

    def active_index(self, modality: str) -> IndexVersion | None:
        with self._sessions() as s:
            return s.scalar(select(IndexVersion).where(IndexVersion.modality == modality,
                                                       IndexVersion.active.is_(True)))

    def index_versions(self, modality: str | None = None) -> list[IndexVersion]:
        """Every built index version (of one modality), newest first."""
        with self._sessions() as s:
            q = select(IndexVersion).order_by(IndexVersion.id.desc())
            if modality:
                q = q.where(IndexVersion.modality == modality)
            return list(s.scalars(q))

    def activate_index(self, version: IndexVersion) -> IndexVersion:
        """Record a complete index and make it the active one of its modality, in one transaction."""
        with self.session() as s:
            for old in s.scalars(select(IndexVersion).where(IndexVersion.modality == version.modality,
                                                            IndexVersion.active.is_(True))):
                old.active = False
            version.active = True
            s.add(version)
        return version

    def activate_version(self, modality: str, version_id: int) -> IndexVersion:
        """Make one built version of a modality the active one (an older or a newer one), when its files
        are still there."""
        from index.vectors import MANIFEST_FILE

        with self.session() as s:
            chosen = s.get(IndexVersion, version_id)
            if chosen is None or chosen.modality != modality:
                held = ", ".join(str(v.id) for v in self.index_versions(modality)) or "none"
                raise ValueError(f"no {modality} index version {version_id} (its versions: {held}; "
                                 "`mmkb index versions` lists them)")
            if not (self.home / chosen.path / MANIFEST_FILE).is_file():
                raise ValueError(f"the files of {modality} index version {version_id} are gone ({self.home / chosen.path})")
            for old in s.scalars(select(IndexVersion).where(IndexVersion.modality == modality,
                                                            IndexVersion.active.is_(True))):
                old.active = False
            chosen.active = True
            return chosen

    def rollback_index(self, modality: str) -> IndexVersion:
        """Make the previous version of a modality active again."""
        if modality not in MODALITIES:
            raise ValueError(f"the index modalities are {' and '.join(MODALITIES)}, not {modality!r}")
        with self.session() as s:
            versions = list(s.scalars(select(IndexVersion).where(IndexVersion.modality == modality)
                                      .order_by(IndexVersion.id.desc())))
            current = next((i for i, v in enumerate(versions) if v.active), None)
            if current is None or current + 1 >= len(versions):
                raise ValueError(f"no earlier {modality} index version to roll back to")
            versions[current].active = False
            versions[current + 1].active = True
            return versions[current + 1]
