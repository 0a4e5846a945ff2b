"""KB-VQA ablation on the worldkb benchmark (MMKB-RAG, arXiv 2504.10074, Table 2 style).

python benchmarks/kbvqa.py [--per-split 150] [--data runs/kbvqa-bench] [--out benchmarks/results] [--probe]
Rows: no retrieval; naive top-k RAG (with and without the semantic tags, without the closed-book
confirmation); +RET; +SRT; +SRT+MCT; all three; all three with RET's tag alone (no familiarity gate), at
γ 0.1, without the closed-book confirmation, without the shared-picture gate, without the agreement
gate and with RET's head read without the closed-book answer's probability. Columns: accuracy per split,
overall, All (harmonic mean of Unseen-Q and Unseen-E), retrieval recall, share of questions that skipped
retrieval (all and seen), p50 latency per question on this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ABLATIONS = [
    ("no retrieval", {"mode": "no-rag"}),
    ("naive top-k RAG", {"mode": "naive-rag"}),
    # The paper's naive RAG: retrieval from the image and the question alone, without the VLM's semantic tags.
    ("naive top-k RAG, no semantic tags", {"mode": "naive-rag", "use_tags": False}),
    # The reader's span alone, never its own closed-book answer (`RAGConfig.confirm_threshold`).
    ("naive top-k RAG, no closed-book confirmation", {"mode": "naive-rag", "confirm_threshold": None}),
    ("+RET", {"mode": "mmkb-rag", "use_ret": True, "use_srt": False, "use_mct": False}),
    ("+SRT", {"mode": "mmkb-rag", "use_ret": False, "use_srt": True, "use_mct": False}),
    ("+SRT+MCT", {"mode": "mmkb-rag", "use_ret": False, "use_srt": True, "use_mct": True}),
    ("RET+SRT+MCT (mmkb-rag)", {"mode": "mmkb-rag", "use_ret": True, "use_srt": True, "use_mct": True}),
    # RET from the tag alone, without its image side (rag.vlm.familiarity): what the paper's tag does here.
    ("RET+SRT+MCT, RET tag alone", {"mode": "mmkb-rag", "use_ret": True, "use_srt": True, "use_mct": True,
                                    "familiarity_gate": False}),
    # A lower threshold than the default 0.4 (RAGConfig.gamma; the paper's is 0.5): RET retrieves more.
    ("RET+SRT+MCT, γ=0.1", {"mode": "mmkb-rag", "use_ret": True, "use_srt": True, "use_mct": True, "gamma": 0.1}),
    ("RET+SRT+MCT, no closed-book confirmation", {"mode": "mmkb-rag", "use_ret": True, "use_srt": True,
                                                  "use_mct": True, "confirm_threshold": None}),
    ("RET+SRT+MCT, no shared-picture gate", {"mode": "mmkb-rag", "use_ret": True, "use_srt": True, "use_mct": True,
                                             "shared_picture_gate": False}),
    ("RET+SRT+MCT, no agreement gate", {"mode": "mmkb-rag", "use_ret": True, "use_srt": True, "use_mct": True,
                                        "agreement_gate": False}),
    # RET's tag from its head alone, without the closed-book answer's probability (rag.vlm.ret_calibration).
    ("RET+SRT+MCT, RET head without closed-book probability", {"mode": "mmkb-rag", "use_ret": True, "use_srt": True,
                                                              "use_mct": True, "ret_closed_book": False}),
]


# The rows whose wrong answers the markdown breaks down by cause.
ERROR_ROWS = ("naive top-k RAG", "RET+SRT+MCT (mmkb-rag)")
assert set(ERROR_ROWS) <= {name for name, _ in ABLATIONS}, "ERROR_ROWS names a row ABLATIONS no longer has"


def slug(name: str) -> str:
    """A row's predictions file name: "RET+SRT+MCT, γ=0.1" → "ret-srt-mct-γ-0-1"."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def fmt(v, digits=3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-split", type=int, default=150)
    ap.add_argument("--data", type=Path, default=ROOT / "runs" / "kbvqa-bench")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--vlm", default=None)
    ap.add_argument("--only", nargs="*", default=None, help="run only these ablation rows")
    ap.add_argument("--probe", action="store_true",
                    help="ask the never-trained probe phrasings about seen entities (one Unseen-Q split; "
                         "default data runs/kbvqa-probe, results kbvqa_probe.*)")
    args = ap.parse_args()

    from api.demo import prepare_starter_kb
    from index.config import get_settings
    from rag.evaluate import errors_markdown, evaluate
    from rag.kbvqa.datasets import read_infoseek
    from rag.kbvqa.worldkb_bench import build
    from rag.pipeline import MMKBRAG

    if args.probe and args.data == ap.get_default("data"):
        args.data = ROOT / "runs" / "kbvqa-probe"
    stem = "kbvqa_probe" if args.probe else "kbvqa"
    questions = args.data / "questions.jsonl"
    if not questions.exists():
        build(args.data, per_split=args.per_split, probe=args.probe)
    examples = read_infoseek(questions)
    probes = sum(e.data_id.endswith("|probe0") for e in examples)
    if probes != (len(examples) if args.probe else 0):
        sys.exit(f"{questions} holds {probes} probe questions of {len(examples)}: it was built "
                 f"{'without' if args.probe else 'with'} --probe; give another --data folder or delete it")
    rag = MMKBRAG.load(args.vlm)
    prepare_starter_kb(rag.reference)  # as `mmkb demo` does: a fresh home gets the KB and its index
    rag(args.data / "images" / f"{examples[0].image_id}.png", examples[0].question)  # warm-up: load everything once
    rows = []
    for name, overrides in ABLATIONS:
        if args.only and name not in args.only:
            continue
        t = time.time()
        summary = evaluate(rag, examples, args.data / "images", args.data / f"predictions-{slug(name)}.jsonl",
                           page=args.data / f"predictions-{slug(name)}.html", **overrides)
        summary["name"], summary["config"], summary["wall_s"] = name, overrides, round(time.time() - t, 1)
        summary["effective_config"] = asdict(replace(rag.config, **overrides))  # the defaults it ran with too
        rows.append(summary)
        print(name, {k: summary[k] for k in ("per_split", "overall", "all", "retrieval_recall", "skipped_retrieval",
                                            "latency_p50_ms")})
    settings = get_settings()
    benchmark = "worldkb KB-VQA (InfoSeek format)" + (", probe phrasings" if args.probe else "")
    result = {"benchmark": benchmark, "command": " ".join(["python", *sys.argv]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "vlm": rag.vlm.name,
              "image_embedder": settings.image_embedder, "text_embedder": settings.text_embedder,
              "image_index": rag.reference.image_fingerprint,  # weights and layout of the image search vectors
              "questions": len(examples), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    lines = ["| method | seen | unseen-Q | unseen-E | overall | All (HM) | recall@5 | skipped retrieval (all / seen) | p50 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ps = r["per_split"]
        lines.append(f"| {r['name']} | {fmt(ps.get('seen'))} | {fmt(ps.get('unseen_question'))} | "
                     f"{fmt(ps.get('unseen_entity'))} | {fmt(r['overall'])} | {fmt(r['all'])} | "
                     f"{fmt(r['retrieval_recall'])} | {fmt(r['skipped_retrieval'], 2)} / "
                     f"{fmt(r['skipped_retrieval_seen'], 2)} | {fmt(r['latency_p50_ms'], 0)} |")
    explained = [(r["name"], r["errors"]) for r in rows if r["name"] in ERROR_ROWS and r.get("errors")]
    if explained:
        lines += ["", "Where the wrong answers come from (`rag.evaluate.error_sources`):", "",
                  errors_markdown(explained).rstrip()]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results: {args.out / f'{stem}.json'}, {args.out / f'{stem}.md'}")


if __name__ == "__main__":
    main()
