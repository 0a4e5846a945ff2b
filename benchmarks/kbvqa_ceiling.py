"""How far could a better choice among what is already found take naive RAG on the KB-VQA benchmark?

    python benchmarks/kbvqa_ceiling.py [--data runs/kbvqa-bench] [--k 5] [--out benchmarks/results]

Reads the predictions `benchmarks/kbvqa.py` wrote (naive top-k RAG and no retrieval) and searches
the index with each question's picture as `mmkb index search --image` does. For each of naive RAG's
wrong answers it asks: is the reader's closed-book answer right (what a perfect RET could use), and
where does the image search put the right entity among its first `k`? Two ceilings follow: naive RAG
with a perfect RET, and naive RAG with a chooser that also knew which of the first `k` entities is
right (a right entity the reader already read wrong from stays wrong). For the entities second to
k-th it also says whether the reader's entity tag named the right one. Writes `kbvqa_ceiling.json`
and `.md` under `--out`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from index.search import ReferenceIndex  # noqa: E402

NAIVE, CLOSED_BOOK = "predictions-naive-top-k-rag.jsonl", "predictions-no-retrieval.jsonl"


def read_jsonl(path: Path) -> dict[str, dict]:
    if not path.is_file():
        sys.exit(f"{path} not found: run `python benchmarks/kbvqa.py --data {path.parent}` first")
    return {(r := json.loads(line))["data_id"]: r for line in path.read_text().splitlines() if line.strip()}


def ceilings(questions: dict[str, dict], naive: dict[str, dict], closed: dict[str, dict],
             ranked: dict[str, list[str]]) -> dict:
    """The counts and ceilings described in the module docstring; `ranked` = each question's first
    entities by image search."""
    count = Counter()
    tags_right = []
    for data_id, q in questions.items():
        n = naive[data_id]
        if n["correct"]:
            continue
        kind = q["entity_key"].split(":")[0]
        count[f"wrong/{kind}"] += 1
        keys = ranked[data_id]
        rank = keys.index(q["entity_key"]) if q["entity_key"] in keys else None
        read_wrong = n["retrieved_entities"][:1] == [q["entity_key"]]
        count[f"closed-book right/{kind}"] += closed[data_id]["correct"]
        if rank == 0:
            count[f"search first/{kind}"] += 1
        elif rank is not None:
            count[f"search 2nd to kth/{kind}"] += 1
            tag = (n.get("semantic_tags") or {}).get("entity")
            tags_right.append({"data_id": data_id, "entity": q["entity_key"], "split": q["data_split"],
                               "tag": tag, "confidence": (n.get("semantic_tags") or {}).get("entity_confidence")})
        fixable = (rank is not None and not read_wrong) or closed[data_id]["correct"]
        count[f"fixable/{kind}"] += fixable
        count[f"neither/{kind}"] += rank is None and not closed[data_id]["correct"]
    total = len(questions)
    right = sum(1 for r in naive.values() if r["correct"])
    kinds = sorted({k.split("/")[1] for k in count})
    return {"questions": total, "naive_accuracy": right / total,
            "counts": {k: {kind: count[f"{k}/{kind}"] for kind in kinds}
                       for k in ("wrong", "closed-book right", "search first", "search 2nd to kth", "fixable", "neither")},
            "ceiling_perfect_ret": (right + sum(count[f"closed-book right/{k}"] for k in kinds)) / total,
            "ceiling_perfect_choice": (right + sum(count[f"fixable/{k}"] for k in kinds)) / total,
            "second_to_kth": tags_right}


def markdown(report: dict, names: dict[str, str]) -> str:
    c = report["counts"]
    kinds = list(c["wrong"])
    lines = [f"# KB-VQA: what a better choice could still give (`{report['command']}`, {report['date']})", "",
             f"{report['questions']} questions; naive RAG {report['naive_accuracy']:.3f}. Naive RAG's wrong answers:", "",
             "| | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, label in [("wrong", "wrong answers"), ("closed-book right", "the reader's closed-book answer is right"),
                        ("search first", "image search has the right entity first"),
                        ("search 2nd to kth", f"image search has it 2nd to {report['k']}th"),
                        ("fixable", "a perfect chooser fixes"), ("neither", f"neither in the first {report['k']} nor known to the reader")]:
        lines.append(f"| {label} | " + " | ".join(str(c[name][k]) for k in kinds) + " |")
    lines += ["", f"Ceilings: naive RAG with a perfect RET {report['ceiling_perfect_ret']:.3f}; with a chooser that "
              f"also knew which of the first {report['k']} entities is right {report['ceiling_perfect_choice']:.3f}.", "",
              f"The reader's entity tag where the image search has the right entity 2nd to {report['k']}th:", "",
              "| question | split | right entity | entity tag (confidence) |", "|---|---|---|---|"]
    for r in report["second_to_kth"]:
        conf = f"{r['confidence']:.2f}" if r["confidence"] is not None else "–"
        cells = [r["data_id"], r["split"], names.get(r["entity"], r["entity"]), f"{r['tag']} ({conf})"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "runs" / "kbvqa-bench")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    questions = read_jsonl(args.data / "questions.jsonl")
    naive, closed = read_jsonl(args.data / NAIVE), read_jsonl(args.data / CLOSED_BOOK)
    ref = ReferenceIndex.from_settings()
    ranked, names = {}, {}
    for data_id, q in questions.items():
        hits = ref.search(image=args.data / "images" / f"{q['image_id']}.png", k=args.k)
        ranked[data_id] = [h.key for h in hits]
        names.update((h.key, h.name) for h in hits)
    report = ceilings(questions, naive, closed, ranked) | {
        "k": args.k, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python benchmarks/kbvqa_ceiling.py", *(argv if argv is not None else sys.argv[1:])])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kbvqa_ceiling.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "kbvqa_ceiling.md").write_text(markdown(report, names))
    print(markdown(report, names))
    return report


if __name__ == "__main__":
    main()
