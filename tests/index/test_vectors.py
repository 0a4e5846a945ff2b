"""Tests for the FAISS vector index: index choice, search accuracy, filters, removal and safe persistence."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from index.vectors import (
    INDEX_FILE,
    MANIFEST_FILE,
    IndexCorruptError,
    IndexSpec,
    VectorIndex,
    choose_index,
    estimate_bytes,
    _steps,
    recall_at_k,
)

COUNT, DIM = 2000, 32
IDS_OFFSET = 1000  # database keys are not positions


def clustered(count: int, dim: int, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit vectors scattered around fixed cluster centres, like embeddings of a few topics."""
    centres = np.random.default_rng(1234).standard_normal((clusters, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(clusters, size=count)] + 0.5 * rng.standard_normal((count, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


SPECS = {
    "flat": IndexSpec("flat", {}),
    "hnsw": IndexSpec("hnsw", {"M": 16, "efConstruction": 80, "efSearch": 16}),
    "ivfpq": IndexSpec("ivfpq", {"nlist": 32, "m": 8, "nbits": 5, "nprobe": 1, "refine": "flat", "k_factor": 8}),
    "ivfpq-sq8": IndexSpec("ivfpq", {"nlist": 32, "m": 8, "nbits": 5, "nprobe": 1, "refine": "sq8", "k_factor": 8}),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny searches run fastest on one thread, and idle OpenMP threads spin on a busy machine."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(COUNT, DIM), np.arange(COUNT, dtype=np.int64) + IDS_OFFSET


@pytest.fixture(scope="module", params=list(SPECS))
def built(request, data) -> VectorIndex:
    vectors, ids = data
    return VectorIndex.build(vectors, ids, spec=SPECS[request.param], show_progress=False, use_gpu=False)


def exact_ids(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :k]]


def test_choose_index_small_collection_is_exact():
    assert choose_index(5_000, 512, 1 << 30).kind == "flat"


def test_choose_index_large_collection_with_room_is_hnsw():
    spec = choose_index(1_000_000, 512, 4 << 30)
    assert spec.kind == "hnsw" and spec.params["M"] == 32
    assert estimate_bytes(spec, 1_000_000, 512) <= 4 << 30


def test_choose_index_shrinks_hnsw_graph_to_fit():
    flat_bytes = 1_000_000 * 512 * 4
    spec = choose_index(1_000_000, 512, flat_bytes + 1_000_000 * 200)
    assert spec.kind == "hnsw" and spec.params["M"] < 32


def test_choose_index_tight_budget_is_ivfpq_within_budget():
    budget = 1_000_000 * 512 * 4 // 3  # a third of the raw vectors
    spec = choose_index(1_000_000, 512, budget)
    assert spec.kind == "ivfpq"
    assert estimate_bytes(spec, 1_000_000, 512) <= budget
    assert 2048 <= spec.params["nlist"] <= 8192  # ~4*sqrt(n) = 4000
    assert spec.params["refine"] == "sq8"


def test_choose_index_small_collection_over_budget_is_compressed():
    assert choose_index(10_000, 512, 10_000 * 512).kind == "ivfpq"


def test_choose_index_impossible_budget_says_so():
    with pytest.raises(ValueError, match="memory budget"):
        choose_index(1_000_000, 512, 1 << 20)


def test_stored_vector_is_its_own_top_hit(built, data):
    vectors, ids = data
    rows = np.arange(0, COUNT, 97)
    scores, found = built.search(vectors[rows], 5)
    assert (found[:, 0] == ids[rows]).all()
    assert np.allclose(scores[:, 0], 1.0, atol=1e-2)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


# sparse graph / one list probed: both need a wider search than they start with to reach 0.95
NARROW = {
    "hnsw": IndexSpec("hnsw", {"M": 4, "efConstruction": 16, "efSearch": 11}),
    "ivfpq": SPECS["ivfpq"],
}


@pytest.mark.parametrize("kind", list(NARROW))
def test_tune_picks_smallest_breadth_reaching_target(kind, data):
    vectors, ids = data
    index = VectorIndex.build(vectors, ids, spec=NARROW[kind], show_progress=False, use_gpu=False)
    queries = clustered(200, DIM, seed=1)  # same topics, unseen vectors
    truth = exact_ids(vectors, ids, queries, 10)
    before = recall_at_k(index.search(queries, 10)[1], truth)
    assert index.tune(0.95, queries, k=10) >= 0.95
    assert recall_at_k(index.search(queries, 10)[1], truth) >= 0.95 > before
    name = "efSearch" if kind == "hnsw" else "nprobe"
    chosen = index.spec.params[name]
    index.spec.params[name] = max(v for v in _steps(1, 2048) if v < chosen)  # the step below
    assert recall_at_k(index.search(queries, 10)[1], truth) < 0.95  # so tune went no wider than needed


@pytest.mark.parametrize("kind", list(NARROW))
def test_tune_without_queries_holds_on_unseen_queries(kind, data):
    vectors, ids = data
    index = VectorIndex.build(vectors, ids, spec=NARROW[kind], show_progress=False, use_gpu=False)
    assert index.tune(0.95) >= 0.95
    queries = clustered(200, DIM, seed=1)
    assert recall_at_k(index.search(queries, 10)[1], exact_ids(vectors, ids, queries, 10)) >= 0.93


@pytest.mark.parametrize("allowed_count", [5, 60, 1500])
def test_allowed_ids_filter_returns_only_allowed(built, data, allowed_count, monkeypatch):
    vectors, ids = data
    if allowed_count == 1500:  # force the filtered index walk rather than the exact subset scan
        monkeypatch.setattr("index.vectors.FLAT_MAX_COUNT", 100)
    allowed = np.random.default_rng(2).choice(ids, allowed_count, replace=False)
    queries = vectors[:20]
    _, found = built.search(queries, 10, allowed_ids=allowed)
    hits = found[found >= 0]
    assert np.isin(hits, allowed).all()
    assert (found >= 0).sum(axis=1).min() == min(10, allowed_count)  # filter does not starve results
    if allowed_count < 100 and built.spec.params.get("refine") != "sq8":  # exact over a small allowed set
        allowed_rows = np.isin(ids, allowed)
        truth = exact_ids(vectors[allowed_rows], ids[allowed_rows], queries, min(10, allowed_count))
        assert recall_at_k(found, truth) == 1.0


def test_allowed_ids_none_present_gives_no_hits(built, data):
    scores, found = built.search(data[0][:3], 4, allowed_ids=np.array([10**9], dtype=np.int64))
    assert (found == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize("kind", list(SPECS))
def test_remove_hides_vectors_and_ids_can_return(kind, data):
    vectors, ids = data
    index = VectorIndex.build(vectors, ids, spec=SPECS[kind], show_progress=False, use_gpu=False)
    gone = ids[:50]
    assert index.remove(np.concatenate([gone, [10**9]])) == 50
    assert index.count == COUNT - 50
    assert np.array_equal(index.ids(), np.sort(ids[50:]))  # the live ids, ascending
    _, found = index.search(vectors[:50], 10)
    assert not np.isin(found, gone).any() and (found >= 0).all()  # removed ones leave no gaps
    _, found = index.search(vectors[:50], 10, allowed_ids=ids[:100])
    assert not np.isin(found, gone).any()
    index.add(vectors[:5], gone[:5])
    assert index.count == COUNT - 45
    assert (index.search(vectors[:5], 1)[1][:, 0] == gone[:5]).all()


def test_add_rejects_duplicate_and_bad_input(data):
    vectors, ids = data
    index = VectorIndex.build(vectors[:100], ids[:100], spec=SPECS["flat"], show_progress=False, use_gpu=False)
    with pytest.raises(ValueError, match="already in the index"):
        index.add(vectors[:2], ids[:2])
    with pytest.raises(ValueError, match="dimension 16"):
        index.add(vectors[:2, :16], [1, 2])
    with pytest.raises(ValueError, match="2 vectors but 3 ids"):
        index.add(vectors[:2], [1, 2, 3])
    nan = vectors[:2].copy()
    nan[1, 3] = np.nan
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        index.add(nan, [1, 2])
    with pytest.raises(ValueError, match="L2-normalised"):
        index.search(vectors[:1] * 3, 5)
    index.add(vectors[100:102].astype(np.float64), [5000, 5001])  # other float types are converted
    assert index.search(vectors[101], 1)[1][0, 0] == 5001


def test_save_load_round_trip(built, data, tmp_path):
    vectors, _ = data
    built.save(tmp_path / "image", embedder="mmkb-clip-tiny")
    manifest = json.loads((tmp_path / "image" / MANIFEST_FILE).read_text())
    assert manifest["embedder"] == "mmkb-clip-tiny" and manifest["count"] == COUNT and manifest["dim"] == DIM
    loaded = VectorIndex.load(tmp_path / "image", expected_dim=DIM, use_gpu=False)
    assert (loaded.kind, loaded.count, loaded.spec.params) == (built.kind, built.count, built.spec.params)
    for got, want in zip(loaded.search(vectors[:20], 5), built.search(vectors[:20], 5)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="embedder makes 64-d"):
        VectorIndex.load(tmp_path / "image", expected_dim=64)
    with pytest.raises(ValueError, match="built with embedder 'mmkb-clip-tiny'"):
        VectorIndex.load(tmp_path / "image", expected_embedder="ViT-B-32")
    with pytest.raises(FileNotFoundError, match="mmkb index build"):
        VectorIndex.load(tmp_path / "text")


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="checks the CPU-only build")
def test_asking_for_a_gpu_without_one_is_an_error(data):
    with pytest.raises(ValueError, match="no GPU"):
        VectorIndex.build(data[0][:10], data[1][:10], use_gpu=True, show_progress=False)


def test_removals_survive_save(data, tmp_path):
    vectors, ids = data
    index = VectorIndex.build(vectors, ids, spec=SPECS["hnsw"], show_progress=False, use_gpu=False)
    index.remove(ids[:10])
    index.save(tmp_path / "text", embedder="e")
    loaded = VectorIndex.load(tmp_path / "text", use_gpu=False)
    assert loaded.count == COUNT - 10
    assert not np.isin(loaded.search(vectors[:10], 5)[1], ids[:10]).any()


def test_corrupted_index_file_is_detected(data, tmp_path):
    vectors, ids = data
    VectorIndex.build(vectors, ids, spec=SPECS["flat"], show_progress=False).save(tmp_path / "text", "e")
    path = tmp_path / "text" / INDEX_FILE
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexCorruptError, match=r"index\.faiss.*checksum.*mmkb index build"):
        VectorIndex.load(tmp_path / "text")


def test_truncated_index_file_is_detected_without_checksum(data, tmp_path):
    vectors, ids = data
    VectorIndex.build(vectors, ids, spec=SPECS["flat"], show_progress=False).save(tmp_path / "text", "e")
    path = tmp_path / "text" / INDEX_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IndexCorruptError, match="mmkb index build"):
        VectorIndex.load(tmp_path / "text", verify=False)


def test_failed_save_keeps_previous_index(data, tmp_path, monkeypatch):
    vectors, ids = data
    VectorIndex.build(vectors[:100], ids[:100], spec=SPECS["flat"], show_progress=False).save(tmp_path / "text", "e")
    bigger = VectorIndex.build(vectors, ids, spec=SPECS["flat"], show_progress=False)

    def disk_full(*args, **kwargs):
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    with pytest.raises(RuntimeError, match="No space"):
        bigger.save(tmp_path / "text", "e")
    assert VectorIndex.load(tmp_path / "text").count == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text"]  # no staging left behind


def test_crash_between_renames_is_recovered_on_load(data, tmp_path):
    vectors, ids = data
    VectorIndex.build(vectors[:100], ids[:100], spec=SPECS["flat"], show_progress=False).save(tmp_path / "text", "e")
    # the state a power cut leaves after save() moved the old index aside but before the new one landed
    (tmp_path / "text").rename(tmp_path / ".text.old-0123")
    with pytest.warns(UserWarning, match="interrupted save"):
        assert VectorIndex.load(tmp_path / "text").count == 100


def test_reconstruct_returns_stored_vectors_by_id(built, data):
    vectors, ids = data
    pick = ids[[5, 0, 17]]
    got = built.reconstruct(pick)
    cos = np.sum(got * vectors[[5, 0, 17]], axis=1) / np.linalg.norm(got, axis=1)
    assert got.shape == (3, vectors.shape[1]) and np.all(cos > 0.9)
    with pytest.raises(KeyError):
        built.reconstruct(np.array([10**12]))


@pytest.mark.parametrize("spec", list(SPECS))
def test_mean_is_over_the_live_vectors_and_a_seeded_sample_of_a_large_index(data, spec):
    vectors, ids = data
    index = VectorIndex.build(vectors, ids, spec=SPECS[spec], show_progress=False, use_gpu=False)
    assert np.allclose(index.mean(), index.reconstruct(index.ids()).mean(0), atol=1e-5)
    if spec == "flat":
        assert np.allclose(index.mean(), vectors.mean(0), atol=1e-5)
    index.remove(ids[:50])
    # removed vectors no longer count (HNSW and IVF keep them as hidden nodes)
    assert np.allclose(index.mean(), index.reconstruct(ids[50:]).mean(0), atol=1e-5)
    sampled = index.mean(sample=40)
    assert np.allclose(sampled, index.mean(sample=40)) and not np.allclose(sampled, index.mean(), atol=1e-6)
    index.remove(ids[50:])
    assert index.count == 0 and np.array_equal(index.mean(), np.zeros(vectors.shape[1], np.float32))
