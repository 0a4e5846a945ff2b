"""Benchmark the three vector index kinds on synthetic clustered embeddings: speed, memory, recall.

    python benchmarks/vector_search.py [--sizes 100000 1000000] [--dim 512] [--queries 1000]
                                       [--out benchmarks/results] [--quick]

For each size it builds the exact Flat index (which also gives the ground truth), HNSW and IVF-PQ
with the parameters `choose_index` would pick for them, tunes HNSW efSearch / IVF nprobe to the
target recall@10 on a separate set of tuning queries, then measures on held-out queries. The data
are unit vectors in overlapping Gaussian clusters: cluster centres gather around a few topic
directions, and each cluster spreads along its own random 64-d subspace plus isotropic noise, since
real embeddings have a low local intrinsic dimension (`--intrinsic-dim 0`: isotropic clusters).
Writes `vector_search.json` and `vector_search.md` under `--out`.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
from rich.console import Console
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout
from index.vectors import (  # noqa: E402
    DEFAULT_MEMORY_BUDGET,
    IndexSpec,
    VectorIndex,
    choose_index,
    recall_at_k,
    spec_for,
)

K = 10
console = Console()


class ClusteredEmbeddings:
    """A fixed mixture of clusters to draw unit vectors from, in chunks to bound memory."""

    def __init__(self, dim: int, clusters: int, intrinsic_dim: int, topics: int = 100, topic_spread: float = 0.7,
                 spread: float = 1.0, noise: float = 0.3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.intrinsic_dim, self.spread, self.noise = dim, intrinsic_dim, spread, noise
        # clusters of one topic overlap (centre cosine ~0.67), as related entities do
        topic_of = _unit(rng.standard_normal((topics, dim), dtype=np.float32))[rng.integers(topics, size=clusters)]
        self.centres = _unit(topic_of + topic_spread * _unit(rng.standard_normal((clusters, dim), dtype=np.float32)))
        if intrinsic_dim:
            # rows of norm ~1, so a standard normal mix of them has norm ~sqrt(intrinsic_dim)
            self.bases = rng.standard_normal((clusters, intrinsic_dim, dim), dtype=np.float32) / np.sqrt(dim)

    def sample(self, count: int, seed: int, chunk: int = 100_000, desc: str = "generate") -> np.ndarray:
        """`count` unit vectors; the same seed gives the same vectors."""
        rng = np.random.default_rng(seed)
        out = np.empty((count, self.dim), dtype=np.float32)
        for start in tqdm(range(0, count, chunk), desc=desc, unit="chunk", leave=False):
            out[start : start + chunk] = self._chunk(rng, min(chunk, count - start))
        return out

    def _chunk(self, rng: np.random.Generator, count: int) -> np.ndarray:
        labels = rng.integers(len(self.centres), size=count)
        x = self.centres[labels].copy()
        if self.intrinsic_dim:
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(len(self.centres) + 1))
            scale = self.spread / np.sqrt(self.intrinsic_dim)
            for c in np.flatnonzero(np.diff(bounds)):
                rows = order[bounds[c] : bounds[c + 1]]
                mix = rng.standard_normal((len(rows), self.intrinsic_dim), dtype=np.float32)
                x[rows] += scale * mix @ self.bases[c]
            noise = self.noise
        else:
            noise = np.hypot(self.spread, self.noise)
        x += (noise / np.sqrt(self.dim)) * rng.standard_normal(x.shape, dtype=np.float32)
        return _unit(x)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rss_bytes() -> int:
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_memory() -> None:
    """Hand freed heap back to the OS so the next RSS delta counts only the next index."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def latencies_ms(index: VectorIndex, queries: np.ndarray, desc: str) -> np.ndarray:
    """Wall time of each query searched on its own, in milliseconds."""
    for q in queries[:10]:  # warm caches and lazily built lookup tables
        index.search(q, K)
    times = np.empty(len(queries))
    for i, q in enumerate(tqdm(queries, desc=desc, leave=False)):
        start = time.perf_counter()
        index.search(q, K)
        times[i] = time.perf_counter() - start
    return times * 1e3


def measure(kind: str, index: VectorIndex, build_s: float, rss_delta: int, queries: np.ndarray,
            truth: np.ndarray, latency_queries: int, threads: int) -> dict:
    """Speed, memory and recall of one built index."""
    faiss.omp_set_num_threads(1)  # one query uses one core anyway; spare threads only add overhead
    lat = latencies_ms(index, queries[:latency_queries], f"{kind} single queries")
    faiss.omp_set_num_threads(threads)
    index.search(queries[:K], K)
    start = time.perf_counter()
    _, found = index.search(queries, K)
    batch_s = time.perf_counter() - start
    return {
        "kind": kind, "params": dict(index.spec.params), "count": index.count,
        "build_s": round(build_s, 2), "index_bytes": index.size_bytes(),
        "rss_delta_bytes": rss_delta,
        "p50_ms": round(float(np.percentile(lat, 50)), 4), "p99_ms": round(float(np.percentile(lat, 99)), 4),
        "latency_queries": len(lat), "latency_threads": 1,
        "batch_qps": round(len(queries) / batch_s, 1), "batch_threads": threads,
        "recall_at_10": round(recall_at_k(found, truth), 4),
    }


def bench_size(count: int, args: argparse.Namespace, threads: int) -> list[dict]:
    """Build, tune and measure every index kind on `count` vectors."""
    clusters = args.clusters
    data = ClusteredEmbeddings(args.dim, clusters, args.intrinsic_dim)
    console.rule(f"[bold]{count:,} vectors x {args.dim}-d, {clusters} clusters")
    vectors = data.sample(count, seed=1, desc="base vectors")
    ids = np.arange(count, dtype=np.int64)
    queries = data.sample(args.queries, seed=2, desc="queries")
    tune_queries = data.sample(args.queries, seed=3, desc="tuning queries")
    budgets = {  # the budgets under which choose_index picks each kind at this size
        "flat": None,
        "hnsw": DEFAULT_MEMORY_BUDGET,
        "ivfpq": int(0.4 * count * args.dim * 4),
    }
    rows, flat_p50 = [], None
    for kind in ("flat", "hnsw", "ivfpq"):
        spec = IndexSpec("flat", {}) if kind == "flat" else spec_for(kind, count, args.dim, budgets[kind])
        picked = choose_index(count, args.dim, budgets[kind]).kind if budgets[kind] else "flat"
        console.print(f"[cyan]{kind}[/]: {spec.params} (choose_index picks {picked} under this budget)")
        release_memory()
        before = rss_bytes()
        start = time.perf_counter()
        index = VectorIndex.build(vectors, ids, spec=spec, use_gpu=False)
        build_s = time.perf_counter() - start
        rss_delta = rss_bytes() - before
        if kind == "flat":
            truth = index.search(queries, K)[1]
            tune_truth = index.search(tune_queries, K)[1]
            tuned = None
        else:
            start = time.perf_counter()
            reached = index.tune(args.target_recall, tune_queries, k=K, ground_truth=tune_truth)
            param = "efSearch" if kind == "hnsw" else "nprobe"
            tuned = {"param": param, "value": index.spec.params[param],
                     "tune_s": round(time.perf_counter() - start, 1), "tuning_recall": round(reached, 4)}
            console.print(f"  tuned {tuned['param']}={tuned['value']} (tuning-set recall@10 {reached:.3f})")
        latency_queries = min(args.queries, 200) if kind == "flat" else args.queries  # exact is slow
        row = measure(kind, index, build_s, rss_delta, queries, truth, latency_queries, threads)
        row.update(size=count, tuned=tuned, memory_budget_bytes=budgets[kind], chooser_picks=picked)
        flat_p50 = flat_p50 or row["p50_ms"]
        row["speedup_vs_flat_p50"] = round(flat_p50 / row["p50_ms"], 1)
        console.print(f"  build {row['build_s']}s, {row['index_bytes'] / 2**20:.0f} MiB, p50 {row['p50_ms']:.3f} ms, "
                      f"p99 {row['p99_ms']:.3f} ms, {row['batch_qps']:.0f} q/s, recall@10 {row['recall_at_10']:.3f}, "
                      f"{row['speedup_vs_flat_p50']}x vs flat")
        rows.append(row)
        del index
    return rows


def machine_info(threads: int) -> dict:
    model = ""
    if Path("/proc/cpuinfo").exists():
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    return {
        "cpu_count": os.cpu_count(), "cpu_model": model, "faiss_threads": threads,
        "faiss_version": faiss.__version__, "numpy_version": np.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
    }


def markdown(report: dict) -> str:
    """The results as a markdown table with the machine and the target verdict."""
    m, c = report["machine"], report["config"]
    lines = [
        "# Vector search benchmark", "",
        f"`{m['command']}` on {m['cpu_count']} CPUs ({m['cpu_model']}), faiss {m['faiss_version']}, {m['date']}.",
        f"{c['dim']}-d unit vectors in {c['clusters']} overlapping clusters with {c['intrinsic_dim'] or 'full'}-d "
        "local spread; "
        f"{c['queries']} held-out queries; recall@10 against exact search; efSearch/nprobe tuned to "
        f"recall@10 >= {c['target_recall']} on a separate tuning set. Single-query latency on "
        f"1 thread, batch throughput ({c['queries']} queries at once) on {m['faiss_threads']} threads.", "",
        "| vectors | index | parameters | build s | index MiB | RSS delta MiB | p50 ms | p99 ms | batch q/s "
        "| recall@10 | speedup vs flat p50 |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        p = {k: v for k, v in r["params"].items() if k not in ("train_size", "efConstruction")}
        params = ", ".join(f"{k}={v}" for k, v in p.items()) or "exact"
        lines.append(f"| {r['size']:,} | {r['kind']} | {params} | {r['build_s']:.1f} | {r['index_bytes'] / 2**20:.0f} "
                     f"| {r['rss_delta_bytes'] / 2**20:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
                     f"| {r['batch_qps']:,.0f} | {r['recall_at_10']:.3f} | {r['speedup_vs_flat_p50']:.1f}x |")
    t = report["target"]
    lines += ["", f"Target at {t['size']:,}: recall@10 >= {t['recall']}, p50 <= {t['p50_ms']} ms, >= {t['speedup']}x "
              f"faster than exact: **{'met' if t['met_by'] else 'not met'}**"
              + (f" by {', '.join(t['met_by'])}." if t["met_by"] else "."), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--intrinsic-dim", type=int, default=64, help="local dimension of each cluster; 0: isotropic")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="a 20k-vector smoke run")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries, args.clusters = [20_000], min(args.queries, 200), 20
    threads = faiss.omp_get_max_threads()
    results = [row for size in args.sizes for row in bench_size(size, args, threads)]
    largest = max(args.sizes)
    target = {"size": largest, "recall": args.target_recall, "p50_ms": 2.0, "speedup": 50,
              "met_by": [r["kind"] for r in results if r["size"] == largest and r["kind"] != "flat"
                         and r["recall_at_10"] >= args.target_recall and r["p50_ms"] <= 2.0
                         and r["speedup_vs_flat_p50"] >= 50]}
    report = {"machine": machine_info(threads), "config": {k: str(v) if isinstance(v, Path) else v
                                                          for k, v in vars(args).items()},
              "target": target, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "vector_search_quick" if args.quick else "vector_search"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    console.print(f"wrote {args.out / f'{name}.json'} and {args.out / f'{name}.md'}")


if __name__ == "__main__":
    main()
