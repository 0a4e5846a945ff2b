"""FAISS vector index for one modality: cosine search over L2-normalised vectors keyed by database ids.

Vectors are float32 and unit length, so inner product is cosine similarity. Every index is wrapped in
`IndexIDMap2`, so results come back as database primary keys and stored vectors can be reconstructed.
The index kind follows autofaiss's rules of thumb (see `choose_index`): exact Flat, HNSW (Malkov &
Yashunin, 2018) or IVF-PQ (Jégou, Douze & Schmid, 2011), optionally re-ranked on finer codes.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
KINDS = ("flat", "hnsw", "ivfpq")
DEFAULT_MEMORY_BUDGET = 4 << 30
FLAT_MAX_COUNT = 20_000  # exact search over this many vectors costs about a millisecond a query
IDMAP_BYTES = 48  # IndexIDMap2 keeps an id per vector plus a reverse-map node
TRAIN_SAMPLE_MIN = 100_000
ADD_BATCH = 65_536
MAX_SEARCH_BREADTH = 4096  # cap on efSearch when a filter widens the search
NORM_TOLERANCE = 1e-2
ALL_IDS = (0, np.iinfo(np.int64).max)  # database ids are non-negative; removed vectors get negative ids


class IndexCorruptError(ValueError):
    """A saved index that cannot be trusted; the cure is to rebuild it."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"{path}: {reason}. Rebuild the index with `mmkb index build`.")


@dataclass
class IndexSpec:
    """Which FAISS index to build and with what parameters; saved in the manifest."""

    kind: str
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {self.kind!r}")


def estimate_bytes(spec: IndexSpec, count: int, dim: int) -> int:
    """Approximate resident memory of an index of `count` vectors built from `spec`."""
    p = spec.params
    fixed = 0
    if spec.kind == "flat":
        per_vector = 4 * dim
    elif spec.kind == "hnsw":
        # level 0 holds 2M neighbours, the upper levels add about M/(M-1); plus level and offset
        per_vector = 4 * dim + 4 * (2 * p["M"] + 1) + 12
    else:
        refine_bytes = {"flat": 4 * dim, "sq8": dim, None: 0}[p.get("refine")]
        per_vector = math.ceil(p["m"] * p["nbits"] / 8) + 16 + refine_bytes  # code, list id, direct map
        fixed = 4 * dim * (p["nlist"] + 2 ** p["nbits"]) + (8 * dim if p.get("refine") == "sq8" else 0)
    return int(fixed + count * (per_vector + IDMAP_BYTES))


def spec_for(kind: str, count: int, dim: int, memory_budget_bytes: int | None = None) -> IndexSpec:
    """The parameters `choose_index` would use for `kind` at this size, fitted to the budget if one is given."""
    if kind == "flat":
        candidates = [IndexSpec("flat", {})]
    elif kind == "hnsw":
        candidates = [IndexSpec("hnsw", {"M": m, "efConstruction": 80, "efSearch": 64}) for m in (32, 24, 16)]
    elif kind == "ivfpq":
        candidates = _ivfpq_candidates(count, dim)
    else:
        raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
    for spec in candidates:
        if memory_budget_bytes is None or estimate_bytes(spec, count, dim) <= memory_budget_bytes:
            return spec
    need = min(estimate_bytes(s, count, dim) for s in candidates)
    raise ValueError(
        f"a {kind} index of {count} vectors of dim {dim} needs about {need / 2**20:.0f} MiB, "
        f"over the memory budget of {memory_budget_bytes / 2**20:.0f} MiB"
    )


def _ivfpq_candidates(count: int, dim: int) -> list[IndexSpec]:
    """IVF-PQ parameter sets for this size, best recall first."""
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(count))))
    nlist = max(1, min(nlist, 2 ** int(math.log2(max(1, count // 39)))))  # k-means wants 39 points a centroid
    train = min(count, max(TRAIN_SAMPLE_MIN, 40 * nlist))
    nbits = 8 if train >= 39 * 256 else max(4, int(math.log2(max(16, train // 39))))
    ms = [m for m in (64, 48, 32, 24, 16, 12, 8, 4) if dim % m == 0 and dim // m >= 2] or [1]
    # Re-ranking on finer codes buys more recall than longer PQ codes, so it is tried first.
    return [
        IndexSpec("ivfpq", {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": min(nlist, 16),
                            "refine": refine, "k_factor": 8, "train_size": train})
        for refine in ("flat", "sq8", None)
        for m in ms
    ]


def choose_index(count: int, dim: int, memory_budget_bytes: int) -> IndexSpec:
    """Pick an index kind and parameters for `count` vectors of `dim` within a memory budget.

    The rule (after autofaiss):
    1. Flat (exact) when count <= FLAT_MAX_COUNT (20k) and the raw vectors fit: brute force over 20k
       vectors takes about a millisecond, so approximation buys nothing.
    2. HNSW with M=32 (else 24, else 16) and efConstruction=80 when the raw vectors plus the graph
       (about 8*M bytes a vector) fit: the fastest high-recall index on a CPU.
    3. IVF-PQ otherwise: nlist ~ 4*sqrt(count) (a power of two, at least 39 training points a list),
       re-ranked on exact vectors, else 8-bit scalar codes, else none, with the longest PQ code (m up
       to 64 sub-quantizers of 8 bits) that fits; trained on a sample of max(100k, 40*nlist) vectors.
    Raises ValueError when not even the smallest IVF-PQ fits.
    """
    if count <= FLAT_MAX_COUNT and estimate_bytes(IndexSpec("flat"), count, dim) <= memory_budget_bytes:
        return IndexSpec("flat", {})
    try:
        return spec_for("hnsw", count, dim, memory_budget_bytes)
    except ValueError:
        return spec_for("ivfpq", count, dim, memory_budget_bytes)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true neighbours (ids >= 0 in `truth`) present in `found`."""
    hits = [np.isin(t[t >= 0], f).mean() for f, t in zip(found, truth) if (t >= 0).any()]
    return float(np.mean(hits)) if hits else 1.0


def _factory_string(spec: IndexSpec) -> str:
    p = spec.params
    if spec.kind == "flat":
        return "IDMap2,Flat"
    if spec.kind == "hnsw":
        return f"IDMap2,HNSW{p['M']},Flat"
    refine = {"flat": ",RFlat", "sq8": ",Refine(SQ8)", None: ""}[p.get("refine")]
    return f"IDMap2,IVF{p['nlist']},PQ{p['m']}x{p['nbits']}{refine}"


def _check_vectors(x: np.ndarray, dim: int | None, name: str) -> np.ndarray:
    """`x` as contiguous float32 rows of unit length, or a ValueError saying what is wrong."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array of shape (count, dim); got {x.dtype} {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have dimension {x.shape[1]} but the index holds {dim}-d vectors")
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # no (count, dim) temporary
    bad = np.flatnonzero(~np.isfinite(norms))
    if len(bad):
        raise ValueError(f"{name} row {bad[0]} contains NaN or inf ({len(bad)} such rows)")
    off = np.flatnonzero(np.abs(norms - 1) > NORM_TOLERANCE)
    if len(off):
        raise ValueError(f"{name} must be L2-normalised; row {off[0]} has norm {norms[off[0]]:.4f}")
    return x


def _check_ids(ids: np.ndarray, count: int | None, name: str = "ids", unique: bool = False) -> np.ndarray:
    """`ids` as a 1-d int64 array of non-negative keys, or a ValueError."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-d array of integer database keys; got {ids.dtype} {ids.shape}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if count is not None and len(ids) != count:
        raise ValueError(f"got {count} vectors but {len(ids)} {name}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name} must be non-negative database keys; got {ids.min()}")
    if unique and len(np.unique(ids)) != len(ids):
        raise ValueError(f"{name} must be unique")
    return ids


def _no_hits(queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((queries, k), -np.inf, dtype=np.float32), np.full((queries, k), -1, dtype=np.int64)


def _steps(lo: int, hi: int) -> list[int]:
    """Search breadths to try, growing by about 1.5x: lo, ..., 16, 24, 32, 48, ..., hi."""
    ladder = {v for i in range(16) for v in (2**i, 3 * 2**i // 2) if lo < v < hi}
    return sorted(ladder | {lo, hi})


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class VectorIndex:
    """The vectors of one modality, searchable by cosine similarity, keyed by database ids.

    Searches may run concurrently; add, remove, tune and save need the index to themselves.
    """

    def __init__(self, index: faiss.IndexIDMap2, spec: IndexSpec, embedder: str | None = None,
                 use_gpu: bool | None = None) -> None:
        if use_gpu and not _gpu_available():
            raise ValueError("use_gpu=True but faiss sees no GPU (is faiss-cpu installed instead of faiss-gpu?)")
        self._index = index  # the CPU index is the one saved; a GPU copy only serves searches
        self.spec = spec
        self.embedder = embedder
        self._use_gpu = _gpu_available() if use_gpu is None else use_gpu
        self._gpu: faiss.Index | None = None
        self._gpu_resources = None
        self._table: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._hidden = int((faiss.vector_to_array(index.id_map) < 0).sum())

    def __repr__(self) -> str:
        return f"VectorIndex(kind={self.kind!r}, count={self.count}, dim={self.dim}, params={self.spec.params})"

    @property
    def count(self) -> int:
        return self._index.ntotal - self._hidden

    @property
    def hidden(self) -> int:
        """Removed vectors a graph or list index still keeps as hidden nodes (until it is rebuilt)."""
        return self._hidden

    @property
    def dim(self) -> int:
        return self._index.d

    @property
    def kind(self) -> str:
        return self.spec.kind

    def size_bytes(self) -> int:
        """Size of the serialised index: what `save` writes and roughly what it holds in memory."""
        return len(faiss.serialize_index(self._index))

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, spec: IndexSpec | None = None,
              memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET, show_progress: bool = True,
              use_gpu: bool | None = None, target_recall: float | None = None) -> VectorIndex:
        """Train (when the kind needs it) and fill an index; tune it when `target_recall` is given."""
        vectors = _check_vectors(vectors, None, "vectors")
        ids = _check_ids(ids, len(vectors), unique=True)
        spec = (IndexSpec(spec.kind, dict(spec.params)) if spec is not None  # tune() edits the params
                else choose_index(len(vectors), vectors.shape[1], memory_budget_bytes))
        index = faiss.index_factory(vectors.shape[1], _factory_string(spec), faiss.METRIC_INNER_PRODUCT)
        if spec.kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efConstruction = spec.params["efConstruction"]
        if not index.is_trained:
            need = spec.params["nlist"]
            if len(vectors) < need:
                raise ValueError(f"an ivfpq index with nlist={need} needs at least {need} vectors to train")
            ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
            ivf.do_polysemous_training = False  # on by default; only Hamming pre-filtering uses it
            size = min(len(vectors), spec.params.get("train_size", TRAIN_SAMPLE_MIN))
            rows = np.sort(np.random.default_rng(0).choice(len(vectors), size, replace=False))
            with tqdm(total=1, desc=f"train {spec.kind} on {size} vectors", disable=not show_progress) as bar:
                index.train(vectors[rows])
                bar.update()
            # IndexIDMap2 reconstructs by position, which an IVF index can only do with a direct map
            ivf.set_direct_map_type(faiss.DirectMap.Array)
        built = cls(index, spec, use_gpu=use_gpu)
        built._append(vectors, ids, show_progress)
        if target_recall is not None:
            built.tune(target_recall)
        return built

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under new database ids."""
        vectors = _check_vectors(vectors, self.dim, "vectors")
        ids = _check_ids(ids, len(vectors), unique=True)
        present = self._id_map()[self._positions_of(ids)]
        if len(present):
            raise ValueError(f"ids already in the index: {present[:5].tolist()}; remove them first")
        self._append(vectors, ids, show_progress=False)

    def remove(self, ids: np.ndarray) -> int:
        """Remove the vectors stored under `ids`; returns how many were there."""
        ids = _check_ids(ids, None)
        if self.kind == "flat":
            removed = self._index.remove_ids(faiss.IDSelectorBatch(ids))
        else:
            # HNSW cannot unlink graph nodes and IVF under an id map cannot renumber, so a removed
            # vector stays as a hidden node (id -2 - position) that every search skips; it keeps the
            # graph navigable and its memory is reclaimed when the index is rebuilt.
            positions = self._positions_of(ids)
            id_map = faiss.vector_to_array(self._index.id_map)
            id_map[positions] = -2 - positions
            faiss.copy_array_to_vector(id_map, self._index.id_map)
            self._index.construct_rev_map()
            self._hidden += len(positions)
            removed = len(positions)
        self._changed()
        return int(removed)

    def search(self, queries: np.ndarray, k: int,
               allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query, best first; id -1 and score -inf where there are fewer hits.

        `allowed_ids` restricts results to those database ids (a metadata filter computed in SQL).
        """
        queries = _check_vectors(queries, self.dim, "queries")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if self.count == 0 or len(queries) == 0:
            return _no_hits(len(queries), k)
        breadth = 1.0
        selector = faiss.IDSelectorRange(*ALL_IDS) if self._hidden else None
        if allowed_ids is not None:
            allowed = np.unique(_check_ids(allowed_ids, None, "allowed_ids"))
            positions = self._positions_of(allowed)
            if len(positions) == 0:
                return _no_hits(len(queries), k)
            if len(positions) <= FLAT_MAX_COUNT:
                return self._search_positions(queries, k, positions)
            # a graph or list walk finds fewer allowed hits the rarer they are, so search wider
            breadth = self.count / len(positions)
            selector = faiss.IDSelectorBatch(allowed)
        params = self._search_params(selector, breadth)
        scores, labels = self._search_with(queries, k, params, selector is None)
        scores[labels < 0] = -np.inf
        return scores, labels

    def tune(self, target_recall: float, sample_queries: np.ndarray | None = None, k: int = 10,
             ground_truth: np.ndarray | None = None) -> float:
        """Set the smallest efSearch (HNSW) / nprobe (IVF) whose recall@k reaches the target; returns the recall.

        Recall is against exact search over the stored vectors (for IVF-PQ without re-ranking, a scan
        of every list), or against `ground_truth` ids when given. Without `sample_queries`, stored
        vectors stand in for queries, left out of their own results and moved off by their
        nearest-neighbour distance so they sit like unseen points; real queries tune more faithfully.
        """
        if not 0 < target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        if self.kind == "flat":
            return 1.0
        if self.count < 2:
            raise ValueError("tuning needs at least two stored vectors")
        if sample_queries is None:
            queries, sources = self._stand_in_queries(1000)
        else:
            queries, sources = _check_vectors(sample_queries, self.dim, "sample_queries"), None
        k = min(k, self.count - 1)
        wanted = k if sources is None else k + 1  # room to drop each stand-in's own source
        if ground_truth is None:
            truth = _leave_out(self._exact(queries, wanted)[1], sources, k)
        else:
            truth = np.asarray(ground_truth)[:, :k]
        name, values = (("efSearch", _steps(wanted, 2048)) if self.kind == "hnsw"
                        else ("nprobe", _steps(1, self.spec.params["nlist"])))
        for value in values:
            self.spec.params[name] = value
            reached = recall_at_k(_leave_out(self.search(queries, wanted)[1], sources, k), truth)
            if reached >= target_recall:
                return reached
        warnings.warn(f"recall@{k} reached only {reached:.3f} (< {target_recall}) at {name}={value}; "
                      "a larger memory budget gives a more accurate index")
        return reached

    def save(self, directory: Path, embedder: str, notes: dict | None = None,
             arrays: dict[str, np.ndarray] | None = None) -> Path:
        """Write `index.faiss` and `manifest.json` so that `directory` always holds a complete index;
        `notes` go into the manifest as they are, each of `arrays` into `<name>.npy` beside it.

        Both files are written and fsynced in a sibling staging directory, which then replaces
        `directory` by two renames; `load` restores the previous index if a crash fell between them.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex}"
        retired = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            index_path = staging / INDEX_FILE
            faiss.write_index(self._index, str(index_path))
            _fsync(index_path)
            manifest = {
                "format": 1, "embedder": embedder, "dim": self.dim, "count": self.count,
                "stored": self._index.ntotal, "kind": self.kind, "params": self.spec.params,
                "sha256": _sha256(index_path), "faiss_version": faiss.__version__,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            manifest.update(notes or {})
            for name, array in (arrays or {}).items():
                np.save(staging / f"{name}.npy", array, allow_pickle=False)
                _fsync(staging / f"{name}.npy")
            (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
            _fsync(staging / MANIFEST_FILE)
            _fsync(staging)
            if directory.exists():
                os.rename(directory, retired)
            os.rename(staging, directory)
            _fsync(directory.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if retired.exists() and not directory.exists():
                os.rename(retired, directory)
            raise
        shutil.rmtree(retired, ignore_errors=True)
        self.embedder = embedder
        return directory

    @classmethod
    def load(cls, directory: Path, verify: bool = True, *, expected_dim: int | None = None,
             expected_embedder: str | None = None, use_gpu: bool | None = None) -> VectorIndex:
        """Read an index written by `save`, checking its checksum (when `verify`), size and dimension."""
        directory = Path(directory)
        _restore_interrupted_save(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no vector index at {directory}; build one with `mmkb index build`")
        manifest_path, index_path = directory / MANIFEST_FILE, directory / INDEX_FILE
        try:
            manifest = json.loads(manifest_path.read_text())
            spec = IndexSpec(manifest["kind"], manifest["params"])
            dim, stored, count = manifest["dim"], manifest["stored"], manifest["count"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise IndexCorruptError(manifest_path, f"unreadable manifest ({e})") from e
        if not index_path.is_file():
            raise IndexCorruptError(index_path, "the index file is missing")
        if verify and _sha256(index_path) != manifest.get("sha256"):
            raise IndexCorruptError(index_path, "checksum does not match manifest.json (file damaged or replaced)")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as e:
            raise IndexCorruptError(index_path, f"faiss cannot read it ({e})") from e
        if not isinstance(index, faiss.IndexIDMap2) or index.d != dim or index.ntotal != stored:
            raise IndexCorruptError(index_path, f"holds {type(index).__name__} d={index.d} n={index.ntotal}, "
                                                f"manifest says IndexIDMap2 d={dim} n={stored}")
        if expected_dim is not None and expected_dim != dim:
            raise ValueError(f"{index_path} holds {dim}-d vectors but the embedder makes {expected_dim}-d ones; "
                             "rebuild the index with `mmkb index build`")
        if expected_embedder is not None and expected_embedder != manifest["embedder"]:
            raise ValueError(f"{index_path} was built with embedder {manifest['embedder']!r}, not "
                             f"{expected_embedder!r}; rebuild the index with `mmkb index build`")
        loaded = cls(index, spec, embedder=manifest["embedder"], use_gpu=use_gpu)
        if loaded.count != count:
            raise IndexCorruptError(index_path, f"holds {loaded.count} live vectors, manifest says {count}")
        return loaded

    def _append(self, vectors: np.ndarray, ids: np.ndarray, show_progress: bool) -> None:
        with tqdm(total=len(vectors), desc=f"add to {self.kind}", unit="vec", disable=not show_progress) as bar:
            for start in range(0, len(vectors), ADD_BATCH):
                stop = start + ADD_BATCH
                self._index.add_with_ids(vectors[start:stop], ids[start:stop])
                bar.update(len(ids[start:stop]))
        self._changed()

    def _changed(self) -> None:
        self._table = None
        self._gpu = None

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of live `ids`, in the order given (approximate for IVF-PQ without refine)."""
        ids = np.asarray(ids, dtype=np.int64)
        positions = self._positions_of(ids)
        if len(positions) != len(ids):
            raise KeyError(f"{len(ids) - len(positions)} of the ids are not in the index")
        return faiss.downcast_index(self._index.index).reconstruct_batch(positions)

    def mean(self, sample: int = 20_000) -> np.ndarray:
        """The mean of the live stored vectors: of all of them up to `sample`, else of `sample` drawn
        at random (seed 0, so the same index always gives the same mean). Zeros for an empty index."""
        _, _, live = self._lookup_table()
        if not len(live):
            return np.zeros(self.dim, np.float32)
        if len(live) > sample:
            live = np.sort(np.random.default_rng(0).choice(live, sample, replace=False))
        vectors = faiss.downcast_index(self._index.index).reconstruct_batch(live)
        return vectors.mean(0, dtype=np.float64).astype(np.float32)

    def ids(self) -> np.ndarray:
        """The database ids of the live vectors, ascending."""
        return self._lookup_table()[1].copy()

    def _id_map(self) -> np.ndarray:
        """Database id of each stored position (negative for removed vectors)."""
        return self._lookup_table()[0]

    def _lookup_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(id of each position, live ids sorted, their positions), rebuilt after each change."""
        if self._table is None:
            id_map = faiss.vector_to_array(self._index.id_map)
            order = np.argsort(id_map, kind="stable")
            live = order[np.searchsorted(id_map[order], 0):]  # removed vectors sort first
            self._table = (id_map, id_map[live], live)
        return self._table

    def _positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Stored positions of those `ids` that are live in the index."""
        _, sorted_ids, positions = self._lookup_table()
        if len(sorted_ids) == 0 or len(ids) == 0:
            return np.empty(0, dtype=np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return positions[at[sorted_ids[at] == ids]]

    def _search_positions(self, queries: np.ndarray, k: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among a few stored positions: cheaper and more accurate than a filtered walk."""
        vectors = faiss.downcast_index(self._index.index).reconstruct_batch(positions)
        sims = queries @ vectors.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        scores, labels = _no_hits(len(queries), k)
        scores[:, : top.shape[1]] = np.take_along_axis(sims, top, axis=1)
        labels[:, : top.shape[1]] = self._id_map()[positions[top]]
        return scores, labels

    def _search_params(self, selector: faiss.IDSelector | None, breadth: float) -> faiss.SearchParameters | None:
        p = self.spec.params
        if self.kind == "flat":
            return faiss.SearchParameters(sel=selector) if selector is not None else None
        if self.kind == "hnsw":
            ef = min(max(MAX_SEARCH_BREADTH, p["efSearch"]), math.ceil(p["efSearch"] * breadth))
            return faiss.SearchParametersHNSW(efSearch=ef, sel=selector)
        nprobe = min(p["nlist"], math.ceil(p["nprobe"] * breadth))
        if p.get("refine") is None:
            return faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        # IndexRefine does not hand the id map's selector to its base index, so translate it here
        base_sel = faiss.IDSelectorTranslated(self._index.id_map, selector) if selector is not None else None
        base = faiss.SearchParametersIVF(nprobe=nprobe, sel=base_sel)
        return faiss.IndexRefineSearchParameters(k_factor=p["k_factor"], base_index_params=base)

    def _search_with(self, queries: np.ndarray, k: int, params: faiss.SearchParameters | None,
                     unfiltered: bool) -> tuple[np.ndarray, np.ndarray]:
        """Search on the GPU copy when there is one and nothing needs an IDSelector (GPUs lack them)."""
        if self._use_gpu and unfiltered and self.kind != "hnsw":
            try:
                if self._gpu is None:
                    self._gpu_resources = faiss.StandardGpuResources()
                    self._gpu = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._index)
                return self._gpu.search(queries, k, params=params)
            except RuntimeError as e:
                warnings.warn(f"GPU search of the {self.kind} index failed ({e}); searching on the CPU")
                self._use_gpu, self._gpu = False, None
        return self._index.search(queries, k, params=params)

    def _stand_in_queries(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors pushed, in a random direction, as far as their nearest neighbour; and their ids."""
        id_map, _, live = self._lookup_table()
        rng = np.random.default_rng(0)
        positions = np.sort(rng.choice(live, min(count, len(live)), replace=False))
        vectors = faiss.downcast_index(self._index.index).reconstruct_batch(positions)
        sources = id_map[positions]
        scores, ids = self._exact(vectors, 2)
        nearest = np.where(ids[:, 0] == sources, scores[:, 1], scores[:, 0])
        step = rng.standard_normal(vectors.shape).astype(np.float32)
        step *= (np.sqrt(np.clip(2 - 2 * nearest, 0, None)) / np.linalg.norm(step, axis=1))[:, None]
        vectors += step
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), sources

    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """True top-k (scores, ids) by brute force over the finest copy of the vectors the index keeps."""
        inner = faiss.downcast_index(self._index.index)
        # a selector pushes brute force off BLAS, so only pass one when there are removed vectors to skip
        live = None
        if self._hidden:
            live = faiss.IDSelectorTranslated(self._index.id_map, faiss.IDSelectorRange(*ALL_IDS))
        if self.kind == "flat":
            exact, params = inner, faiss.SearchParameters(sel=live)
        elif self.kind == "hnsw":
            exact, params = faiss.downcast_index(inner.storage), faiss.SearchParameters(sel=live)
        elif self.spec.params.get("refine") is not None:
            exact, params = faiss.downcast_index(inner.refine_index), faiss.SearchParameters(sel=live)
        else:
            exact, params = inner, faiss.SearchParametersIVF(nprobe=self.spec.params["nlist"], sel=live)
        scores, positions = exact.search(queries, k, params=params)
        return scores, np.where(positions >= 0, self._id_map()[positions], -1)


def _leave_out(found: np.ndarray, sources: np.ndarray | None, k: int) -> np.ndarray:
    """First k ids of each row other than the row's source id (all rows' first k without sources)."""
    if sources is None:
        return found[:, :k]
    return np.stack([row[row != source][:k] for row, source in zip(found, sources)])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():  # some platforms cannot open directories; their renames are still ordered
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _restore_interrupted_save(directory: Path) -> None:
    """Put back the previous index if a save crashed between moving it aside and moving the new one in."""
    if directory.exists():
        return
    retired = sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if retired and (retired[-1] / MANIFEST_FILE).is_file():
        os.rename(retired[-1], directory)
        warnings.warn(f"restored {directory} from an interrupted save")
