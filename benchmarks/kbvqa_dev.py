"""Choose MMKB-RAG's thresholds on a worldkb dev set, never on the benchmark.

python benchmarks/kbvqa_dev.py [--vlm PATH] [--gamma 0.5 0.4 0.3] [--per-split 100]
                                [--seed 1 --data runs/kbvqa-dev] [--exclude FOLDER …]
The dev set is another draw of the worldkb KB-VQA questions (seed 1, its own query images and
distortions) with every question the benchmark asks (`runs/kbvqa-bench`, seed 0) removed. Rows: naive
top-k RAG, +SRT, and all three tags at each RET threshold γ. Writes <data>/dev.{json,md}.
A confirmation set for a choice made on the dev set is a third draw with both removed:
`--seed 2 --data runs/kbvqa-conf --exclude runs/kbvqa-dev`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vlm", default=None)
    ap.add_argument("--gamma", type=float, nargs="+", default=[0.5, 0.4, 0.3, 0.1])
    ap.add_argument("--per-split", type=int, default=100)
    ap.add_argument("--data", type=Path, default=ROOT / "runs" / "kbvqa-dev")
    ap.add_argument("--seed", type=int, default=1, help="the draw of --data when it is built here")
    ap.add_argument("--exclude", type=Path, nargs="*", default=[],
                    help="other question folders whose questions are left out too (besides --bench)")
    ap.add_argument("--bench", type=Path, default=ROOT / "runs" / "kbvqa-bench",
                    help="the benchmark's data folder, whose questions are left out")
    args = ap.parse_args()

    from api.demo import prepare_starter_kb
    from benchmarks.kbvqa import ABLATIONS, fmt
    from rag.evaluate import evaluate
    from rag.kbvqa.datasets import read_infoseek
    from rag.kbvqa.worldkb_bench import build
    from rag.pipeline import MMKBRAG

    if args.seed == 0:
        raise SystemExit("--seed 0 is the benchmark's own draw; a dev or confirmation set needs another seed")
    for folder, seed in ((args.bench, 0), (args.data, args.seed)):
        if not (folder / "questions.jsonl").exists():
            build(folder, per_split=args.per_split, seed=seed)
    for folder in args.exclude:
        if not (folder / "questions.jsonl").exists():
            raise SystemExit(f"--exclude {folder}: no questions.jsonl there (build that set first)")
    asked = {e.data_id for folder in (args.bench, *args.exclude) for e in read_infoseek(folder / "questions.jsonl")}
    examples = [e for e in read_infoseek(args.data / "questions.jsonl") if e.data_id not in asked]
    rag = MMKBRAG.load(args.vlm)
    prepare_starter_kb(rag.reference)
    ablations = dict(ABLATIONS)  # the benchmark's own rows, so both score the same settings
    rows = [(name, ablations[name]) for name in ("naive top-k RAG", "+SRT")]
    rows += [(f"RET+SRT+MCT, γ={g}", {**ablations["RET+SRT+MCT (mmkb-rag)"], "gamma": g}) for g in args.gamma]
    results = []
    for name, overrides in rows:
        s = evaluate(rag, examples, args.data / "images", **overrides)
        results.append({"name": name, "config": overrides, "overall": s["overall"], "per_split": s["per_split"],
                        "skipped_retrieval_seen": s["skipped_retrieval_seen"]})
        print(name, round(s["overall"], 3), {k: round(v, 3) for k, v in s["per_split"].items()})
    out = {"questions": len(examples), "vlm": rag.vlm.name, "rows": results}
    (args.data / "dev.json").write_text(json.dumps(out, indent=1, default=str))
    left_out = ", ".join(os.path.relpath(f, ROOT) for f in (args.bench, *args.exclude))
    lines = [f"{args.data.name}: {len(examples)} questions (seed {args.seed}; the questions of {left_out} removed)", "",
             "| method | seen | unseen-Q | unseen-E | overall | skipped (seen) |", "|---|---|---|---|---|---|"]
    for r in results:
        ps = r["per_split"]
        lines.append(f"| {r['name']} | {fmt(ps.get('seen'))} | {fmt(ps.get('unseen_question'))} | "
                     f"{fmt(ps.get('unseen_entity'))} | {fmt(r['overall'])} | {fmt(r['skipped_retrieval_seen'], 2)} |")
    (args.data / "dev.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
