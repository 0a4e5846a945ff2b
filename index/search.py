"""The reference index: builds one FAISS index per modality from the store and searches them.

Modalities: `text` (document sections, sentence-transformers) and `image` (entity images,
open_clip). Hits collapse to entities: within a modality an entity scores the max cosine of
its hits (max fusion: one strong match is enough, several weak ones are not); across
modalities the entity's scores are summed with per-modality weights.

Image queries are scored with the index **centred** (`Settings.image_centre`, a share a): an index
image's score is the query's cosine with the image's vector minus c = a × the index's mean vector,
(q·x − q·c) / ‖x − c‖. A picture that resembles every other sits near the mean, so its plain cosine
with any query is high; centring takes that common part out and compares the query with what is
particular to each picture. It is an index-side variant of "Centering similarity measures to reduce
hubs" (Suzuki et al., EMNLP 2013), which centres the inner products of both sides; centring the query
too did worse here (README "Entity recognition"). The candidates are the plain-cosine nearest images,
re-scored; the stored vectors do not change, so the reader's document pictures, curation and
text→image search see cosines as before.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image as PILImage

from index.config import Settings, get_settings
from index.embedders import load_image_embedder, load_text_embedder
from index.store import MODALITIES, EntityStore, IndexVersion
from index.store.db import rows_digest
from index.vectors import MANIFEST_FILE, VectorIndex, choose_index

TIE_DECIMALS = 5  # scores equal to this many decimals are a tie (float32 cosines of identical images)
# The centre is also scaled by n / (n + CENTRE_PRIOR): an index of a few images, whose mean says
# little about what pictures commonly look like, is barely centred.
CENTRE_PRIOR = 100


def shrunk_centre(mean: np.ndarray, count: int, share: float = 1.0) -> np.ndarray:
    """The centre of an index of `count` vectors whose mean is `mean`: share × mean × n / (n + CENTRE_PRIOR)."""
    return np.asarray(mean, np.float32) * (share * count / (count + CENTRE_PRIOR))


def centred(vectors: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Index vectors as centred search scores them: (x − c) / ‖x − c‖, so a query's dot product with
    one is its cosine with the centred vector."""
    v = np.asarray(vectors, np.float32) - centre
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)


def rescored(ids: list[int], vectors: np.ndarray, centre: np.ndarray, query: np.ndarray) -> list[tuple[float, int]]:
    """(centred score, id) for the stored `vectors` of `ids`, best first. Row by row rather than one
    matrix product, whose rows BLAS may sum in different orders: the same picture stored twice must
    score exactly the same (ties are shared pictures)."""
    scores = (centred(vectors, centre) * np.asarray(query, np.float32)).sum(-1)
    return sorted(((float(s), i) for s, i in zip(scores, ids)), key=lambda f: -f[0])


EMPTY_STORE = "the store holds no entities yet"
FILL_STORE = "`mmkb demo` (the starter KB) or `mmkb index ingest FOLDER`, then `mmkb index build`"


class IndexNotBuiltError(RuntimeError):
    """Search was asked of a modality that has no active index."""


ROWS_ARRAY = "rows"  # beside an index version's manifest: the (id, hash) of each row it was built from


@dataclass
class IndexBuild:
    """What `ReferenceIndex.build` did to one modality: the active version, and whether it was built
    anew ("full"), brought up to the store from the one before ("patched") or already matched it."""

    version: IndexVersion
    how: Literal["full", "patched", "up to date"]
    added: int = 0
    removed: int = 0


@dataclass
class Match:
    """One row that matched: a section or an image."""

    modality: str
    id: int
    score: float
    heading: str | None = None
    text: str | None = None
    path: str | None = None
    style: str | None = None


@dataclass
class EntityHit:
    key: str
    name: str
    kind: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)
    matches: list[Match] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """What `mmkb index search --json` and `POST /v1/search` give per hit: the entity, its scores and
        its best match (a section's text, or an image's path under the data home and style)."""
        best = max(self.matches, key=lambda m: m.score)
        matched = {"modality": best.modality, "score": round(best.score, 4)}
        if best.modality == "text":
            matched.update(section_id=best.id, heading=best.heading, text=best.text)
        else:
            matched.update(image_id=best.id, path=best.path, style=best.style)
        return {"key": self.key, "name": self.name, "kind": self.kind, "score": round(self.score, 4),
                "scores": {m: round(s, 4) for m, s in self.scores.items()}, "matched": matched}


def unknown_kinds(asked: Sequence[str] | None, known: Sequence[str]) -> str | None:
    """None when the store holds entities of every kind `asked` names; else a message naming the kinds
    it lacks and the kinds it has."""
    missing = [k for k in asked or [] if k not in known]
    if not missing:
        return None
    return (f"the index holds no entities of kind {', '.join(map(repr, missing))}; "
            f"its kinds: {', '.join(known) or 'none yet (mmkb index ingest)'}")


class ReferenceIndex:
    """Build, load and search the per-modality FAISS indexes of an EntityStore."""

    def __init__(self, store: EntityStore, settings: Settings | None = None,
                 weights: dict[str, float] | None = None) -> None:
        self.store = store
        self.settings = settings or get_settings()
        self.weights = weights or {"text": 1.0, "image": 1.0}
        self._loaded: dict[str, tuple[int, VectorIndex]] = {}
        self._means: dict[int, np.ndarray] = {}  # index version id → its mean vector

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ReferenceIndex:
        settings = settings or get_settings()
        return cls(EntityStore(settings.db_url, settings.home_dir), settings)

    def text_embedder(self):
        return load_text_embedder(self.settings.text_embedder, self.settings.device)

    def image_embedder(self):
        return load_image_embedder(self.settings.image_embedder, self.settings.device)

    @property
    def image_fingerprint(self) -> str:
        """What the image index records: the embedder's weights, the layout weight of its vectors
        and the views averaged per image."""
        return self.image_embedder().search_fingerprint(self.settings.image_layout_weight, views=self.settings.index_views)

    def embed_images(self, images: Sequence, show_progress: bool = False) -> np.ndarray:
        """Image index vectors (`ImageEmbedder.encode_search` with the configured layout weight and views)."""
        return self.image_embedder().encode_search(images, self.settings.image_layout_weight,
                                                   batch_size=self.settings.batch_size, show_progress=show_progress,
                                                   views=self.settings.index_views)

    def embed_image_queries(self, images: Sequence, views: int | None = None) -> np.ndarray:
        """Query vectors for the image index: `views` (default: the configured query views) of each image."""
        return self.image_embedder().encode_queries(images, views=views or self.settings.query_views,
                                                    layout=self.settings.image_layout_weight)

    # --- building ------------------------------------------------------------------------------

    def build(self, modalities: Sequence[str] = tuple(MODALITIES), show_progress: bool = True,
              full: bool = False) -> list[IndexBuild]:
        """Bring each modality's index up to the store as a new version, made active once complete (the
        old one stays for rollback). Only the rows added, removed or changed since the active version
        are embedded and patched into a copy of it; everything is embedded anew with `full`, or when a
        patch would not do (`_patch_plan`). An index that already matches the store is kept."""
        for modality in modalities:
            if modality not in MODALITIES:
                raise ValueError(f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}")
        return [self._build_one(m, show_progress, full) for m in modalities]

    def _build_one(self, modality: str, show_progress: bool, full: bool) -> IndexBuild:
        # The signature first, then the rows: a change in between shows as stale, never as up to date.
        signature = self.store.rows_signature(modality)
        ids, hashes = self.store.row_hashes(modality)
        if not len(ids):
            raise ValueError(f"nothing to index for {modality}: ingest a KB first (`mmkb index ingest`)")
        fingerprint = self.text_embedder().fingerprint if modality == "text" else self.image_fingerprint
        plan = None if full else self._patch_plan(modality, fingerprint, ids, hashes)
        if plan is not None:
            active, held, gone, fresh = plan
            if not len(gone) and not len(fresh) and self._manifest(active).get("signature") == signature:
                return IndexBuild(active, "up to date")  # without loading the index
            index = VectorIndex.load(self.store.home / active.path)
            # FAISS's HNSW cannot unlink a removed vector: it stays as a hidden node until a rebuild
            if index.kind != "flat" and index.hidden + len(gone) > len(ids) / 5:
                plan = None
        if plan is not None:
            if len(gone):
                index.remove(gone)
            rows = self.store.rows_of(modality, fresh)  # a row removed since the read is not there
            if rows:
                index.add(self._embed_rows(modality, rows, show_progress), np.asarray([r[0] for r in rows], np.int64))
            kept = np.union1d(np.setdiff1d(held, gone), [r[0] for r in rows])
            how = "patched"
        else:
            rows, gone = self.store.rows_of(modality, ids), ()  # exactly the rows read (less any removed since)
            kept = np.asarray([r[0] for r in rows], dtype=np.int64)
            index = VectorIndex.build(self._embed_rows(modality, rows, show_progress), kept,
                                      memory_budget_bytes=self.settings.memory_budget_mb << 20,
                                      show_progress=show_progress)
            how = "full"
        if index.kind != "flat":
            index.tune(self.settings.target_recall)
        recorded = np.isin(ids, kept)  # the rows the index holds, with the hashes they were read with
        ids, hashes = ids[recorded], hashes[recorded]
        # A build in the same second with the same count must not take an earlier version's folder.
        rel = Path("indexes") / modality / f"{time.strftime('%Y%m%d-%H%M%S')}-{index.count}-{uuid.uuid4().hex[:6]}"
        saved = index.save(self.store.home / rel, embedder=fingerprint,
                           notes={"rows": rows_digest(ids, hashes), "signature": signature},
                           arrays={ROWS_ARRAY: np.stack([ids, hashes], axis=1)})
        checksum = json.loads((saved / MANIFEST_FILE).read_text())["sha256"]
        version = IndexVersion(modality=modality, embedder=fingerprint, kind=index.kind, count=index.count,
                               dim=index.dim, path=str(rel), checksum=checksum)
        self._loaded.pop(modality, None)
        return IndexBuild(self.store.activate_index(version), how, added=len(rows), removed=len(gone))

    def _embed_rows(self, modality: str, rows: list, show_progress: bool) -> np.ndarray:
        if modality == "text":
            return self.text_embedder().encode([r[1] for r in rows], batch_size=self.settings.batch_size,
                                               show_progress=show_progress)
        return self.embed_images([r[1] for r in rows], show_progress=show_progress)

    def _patch_plan(self, modality: str, fingerprint: str, ids: np.ndarray, hashes: np.ndarray
                    ) -> tuple[IndexVersion, np.ndarray, np.ndarray, np.ndarray] | None:
        """(the active version, the ids it holds, ids to remove from it, ids to embed and add) to bring
        it to the store's rows, or None when it must be built anew: none active, another embedder, no
        intact record of its rows (indexes built before rows were recorded), or the count calls for
        another index type. `_build_one` also builds anew a graph or list index that would then hide
        more than a fifth as many vectors as it holds."""
        version = self.store.active_index(modality)
        if version is None or version.embedder != fingerprint:
            return None
        held = self._built_rows(version)
        if held is None or version.count != len(held[0]):  # a record that does not describe the index
            return None
        if choose_index(len(ids), version.dim, self.settings.memory_budget_mb << 20).kind != version.kind:
            return None
        old = dict(zip(held[0].tolist(), held[1].tolist()))
        new = dict(zip(ids.tolist(), hashes.tolist()))
        gone = np.asarray([i for i, h in old.items() if new.get(i) != h], dtype=np.int64)
        fresh = np.asarray([i for i, h in new.items() if old.get(i) != h], dtype=np.int64)
        return version, held[0], gone, fresh

    def _manifest(self, version: IndexVersion) -> dict:
        """An index version's manifest ({} when it cannot be read: loading the index reports why)."""
        try:
            manifest = json.loads((self.store.home / version.path / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return manifest if isinstance(manifest, dict) else {}

    def _built_rows(self, version: IndexVersion) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids, hashes) of the rows an index version was built from, when its manifest records them
        and the record is intact."""
        try:
            rows = np.load(self.store.home / version.path / f"{ROWS_ARRAY}.npy", allow_pickle=False)
        except Exception:  # noqa: BLE001 (np.load raises many kinds on a damaged file): build anew
            return None
        if (rows.ndim != 2 or rows.shape[1] != 2 or rows.dtype != np.int64
                or self._manifest(version).get("rows") != rows_digest(rows[:, 0], rows[:, 1])):
            return None
        return rows[:, 0], rows[:, 1]

    # --- searching -----------------------------------------------------------------------------

    def outdated(self, embedders: bool = False, missing: bool = True) -> dict[str, str]:
        """Modality → why its active index does not match the store: none built yet (unless not
        `missing`), or another number of vectors than the store has sections or images (entities
        ingested or removed since), or as many but not the same rows (replaced since, by the store's
        `rows_signature`; indexes built before signatures were recorded are checked by count alone), or, with
        `embedders` (which loads them), built by another embedder than the configured one."""
        stored = self.store.stats()
        out = {}
        for modality, rows in MODALITIES.items():
            version = self.store.active_index(modality)
            if version is None:
                if missing:
                    out[modality] = f"no {modality} index yet"
            elif version.count != stored[rows]:
                out[modality] = f"the {modality} index holds {version.count} {rows} but the store {stored[rows]}"
            elif self._manifest(version).get("signature") not in (None, self.store.rows_signature(modality)):
                out[modality] = f"the {modality} index was built from other {rows} than the store holds now"
            elif (named := self._embedder_named(modality, version)) is not None:
                out[modality] = named
            elif embedders and version.embedder != (self.text_embedder().fingerprint if modality == "text"
                                                    else self.image_fingerprint):
                out[modality] = f"the {modality} index was built with another embedder than the configured one"
        return out

    def _embedder_named(self, modality: str, version: IndexVersion) -> str | None:
        """Why the index's embedder is not the one the settings name, read from the names alone (its
        weights and options are compared where the embedder is loaded)."""
        from index.clip import canonical_spec
        from index.embedders import canonical_text_name

        configured = self.settings.text_embedder if modality == "text" else self.settings.image_embedder
        built = version.embedder if modality == "text" else version.embedder.split("@")[0]
        same = canonical_text_name if modality == "text" else canonical_spec
        if same(built) == same(configured):
            return None
        return (f"the {modality} index was built with the embedder {built} but MMKB_{modality.upper()}_EMBEDDER "
                f"is {configured}")

    def stale(self) -> list[str]:
        """What `outdated` says of the indexes built, as notes that say what to run (the embedders are
        not loaded for it; a search that needs a missing index fails saying so)."""
        return [f"{why}: run `mmkb index build` to search what the store holds"
                for why in self.outdated(missing=False).values()]

    def vector_index(self, modality: str) -> VectorIndex:
        version = self.store.active_index(modality)
        if version is None:
            if not self.store.stats()["entities"]:
                raise IndexNotBuiltError(f"{EMPTY_STORE}: run {FILL_STORE}")
            raise IndexNotBuiltError(f"no {modality} index yet: run `mmkb index build`")
        cached = self._loaded.get(modality)
        if cached and cached[0] == version.id:
            return cached[1]
        index = VectorIndex.load(self.store.home / version.path)
        expected = self.text_embedder().fingerprint if modality == "text" else self.image_fingerprint
        if version.embedder != expected:
            raise IndexNotBuiltError(f"the active {modality} index was built with {version.embedder!r} but "
                                     f"the configured embedder is {expected!r}: run `mmkb index build`")
        self._loaded[modality] = (version.id, index)
        return index

    def search(self, text: str | None = None, image: PILImage.Image | str | Path | None = None, k: int = 10,
               kinds: Sequence[str] | None = None, keys: Sequence[str] | None = None,
               per_modality: int | None = None, text_to_image: bool = False) -> list[EntityHit]:
        """Entities matching a text and/or an image query, best first.

        A text query searches the sections; with `text_to_image` it also searches the images through
        the CLIP text tower (off by default: its cosines run on another scale than MiniLM's, so a
        sum would let weak image matches outrank an exact passage)."""
        if text is None and image is None:
            raise ValueError("give a text or an image query")
        fetch = per_modality or max(4 * k, 20)
        hits: dict[str, EntityHit] = {}
        if text is not None:
            q = self.text_embedder().encode([text])
            self._collect("text", q, fetch, kinds, keys, hits)
            embedder = self.image_embedder() if text_to_image else None
            if embedder is not None and self.store.active_index("image") is not None:
                layout = embedder.layout_of(self.settings.image_layout_weight)
                q = embedder.encode_search_texts([text], layout)
                self._collect("image", q, fetch, kinds, keys, hits, scale=(1 + layout) ** 0.5)  # back to cosines
        if image is not None:
            self._collect("image", self.embed_image_queries([image]), fetch, kinds, keys, hits,
                          centre=self.settings.image_centre > 0)
        return self._ranked(hits)[:k]

    def search_embedding(self, modality: str, query: np.ndarray, k: int = 10, kinds: Sequence[str] | None = None,
                         keys: Sequence[str] | None = None, per_modality: int | None = None) -> list[EntityHit]:
        """Entities for an already-embedded query (one row) against one modality's index; an image
        query is an image's search vector (`embed_image_queries`), scored centred when so configured."""
        hits: dict[str, EntityHit] = {}
        self._collect(modality, np.asarray(query, np.float32).reshape(1, -1), per_modality or max(4 * k, 20),
                      kinds, keys, hits, centre=modality == "image" and self.settings.image_centre > 0)
        return self._ranked(hits)[:k]

    def _ranked(self, hits: dict[str, EntityHit]) -> list[EntityHit]:
        """Best score first; entities tied on score (the same picture under several keys) go by
        prominence, so a French flag names France before the regions that fly it."""
        score = {key: round(h.score, TIE_DECIMALS) for key, h in hits.items()}
        counts = Counter(score.values())
        tied = [key for key, s in score.items() if counts[s] > 1]
        prior = self.store.prominence(tied) if tied else {}
        return sorted(hits.values(), key=lambda h: (-score[h.key], -prior.get(h.key, 0.0)))

    def centre(self, modality: str = "image") -> np.ndarray:
        """The active index's centre: `image_centre` × its mean vector × n / (n + `CENTRE_PRIOR`)."""
        return self._centre_of(self.vector_index(modality), self._loaded[modality][0])

    def _centre_of(self, index: VectorIndex, version: int) -> np.ndarray:
        if version not in self._means:  # a version's vectors never change: its mean is kept
            self._means[version] = index.mean()
        return shrunk_centre(self._means[version], index.count, self.settings.image_centre)

    def _collect(self, modality: str, query: np.ndarray, fetch: int, kinds, keys,
                 hits: dict[str, EntityHit], scale: float = 1.0, centre: bool = False) -> None:
        index = self.vector_index(modality)
        allowed = self.store.allowed_ids(modality, kinds, keys)
        if allowed is not None and not allowed:
            return
        scores, ids = index.search(query, fetch, allowed_ids=None if allowed is None else np.asarray(allowed))
        found = [(scale * float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
        if centre and found:
            ids = [i for _, i in found]
            found = rescored(ids, index.reconstruct(np.array(ids)), self._centre_of(index, self._loaded[modality][0]),
                             query[0])
        rows = (self.store.section_hits if modality == "text" else self.store.image_hits)([i for _, i in found])
        best: dict[str, float] = {}
        for score, row_id in found:
            row = rows.get(row_id)
            if row is None:  # removed from the store since the index was built
                continue
            hit = hits.setdefault(row["key"], EntityHit(row["key"], row["name"], row["kind"], 0.0))
            hit.matches.append(Match(modality, row_id, score, heading=row.get("heading"), text=row.get("text"),
                                     path=row.get("path"), style=row.get("style")))
            best[row["key"]] = max(best.get(row["key"], -1.0), score)
        for key, score in best.items():
            hit = hits[key]
            hit.scores[modality] = max(hit.scores.get(modality, -1.0), score)
            hit.score = sum(self.weights.get(m, 1.0) * s for m, s in hit.scores.items())

