"""Multi-label tagging for curation: CMA + ASGE (arXiv 1912.07872) against baselines.

    python benchmarks/tagging.py [--tagger index/tagger/checkpoints/mmkb-tagger] [--out benchmarks/results]

Labels are worldkb's emoji keywords (OpenMoji), categories and subcategories (the shipped
tagger's vocabulary). Every method reads the same frozen image embedder; the heads train on the
same cached features of the same training views (the training entities' KB renderings plus
augmented query-like views, as `mmkb train tagger` does):

- kNN label transfer: the 10 nearest KB pictures of training entities other than the image's own
  vote with their labels (cosine³), as `mmkb curate tag` does through the image index;
- CLIP zero-shot: cosine between the image and the CLIP text tower's "an emoji: <label>";
- linear: one logistic output per label on the pooled embedding;
- the CMA head with each kind of label embedding: ASGE (the paper's: fitted to the co-occurrence
  graph, fixed), the label words' MiniLM vectors as they are (no graph), both side by side, and
  learned with the head (ablations);
- the shipped checkpoint (`mmkb train tagger`, trained on its own draw of views), alone and averaged
  with the kNN label transfer.

Evaluated where a curator needs it, on entities none of the models trained on (the embedder's
held-out fifth): their KB renderings as stored, the same with the "mixed" distortion, and OpenMoji
drawings (a style no model trained on) of held-out and of training entities. Metrics: mAP over
labels with a positive, CF1 / OF1 of each image's top-3 labels (the paper's protocol), and
tagging throughput. Writes `tagging.json`, `tagging.md` and `tagging.png` under `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from index.clip.augment import distort  # noqa: E402
from index.clip.data import is_held_out, load_image  # noqa: E402
from index.config import get_settings  # noqa: E402
from index.embedders import open_rgb  # noqa: E402
from index.tagger import Tagger  # noqa: E402
from index.tagger.labels import display, multi_hot, record_labels  # noqa: E402
from index.tagger.train import (CHECKPOINTS, DEFAULT_TAGGER, TaggerConfig, build_model, examples, extract, fit,  # noqa: E402
                                label_embeddings, load_records, metrics, predict, views_of)
from index.worldkb.build_queries import QUERY_DIR  # noqa: E402

REPORTED = ("mAP", "CF1", "OF1")


def eval_sets(records: list[dict], root: Path, seed: int) -> dict[str, tuple[list[Image.Image], list[list[str]], list[str]]]:
    """Set name → (images, each image's labels, each image's entity key)."""
    _, held = examples(records, root)
    labels_of = {r["key"]: record_labels(r) for r in records}
    rng = np.random.default_rng(seed)
    clean = [open_rgb(load_image(e.path)) for e in held]
    mixed = [open_rgb(distort(load_image(e.path), "mixed", rng)) for e in held]
    rows = [json.loads(line) for line in (QUERY_DIR / "manifest.jsonl").read_text().splitlines()]
    om = [r for r in rows if r["style"] == "openmoji" and r["key"] in labels_of and labels_of[r["key"]]]
    out = {"held-out entities, KB renderings": (clean, [e.labels for e in held], [e.key for e in held]),
           "held-out entities, mixed distortion": (mixed, [e.labels for e in held], [e.key for e in held])}
    for name, keep in (("OpenMoji drawings, held-out entities", True), ("OpenMoji drawings, training entities", False)):
        sel = [r for r in om if is_held_out(r["key"]) == keep]
        out[name] = ([open_rgb(load_image(QUERY_DIR / r["path"])) for r in sel], [labels_of[r["key"]] for r in sel],
                     [r["key"] for r in sel])
    return out


def knn_scores(train_vecs: np.ndarray, train_y: np.ndarray, train_keys: np.ndarray, vecs: np.ndarray,
               keys: list[str], k: int = 10) -> np.ndarray:
    """What `mmkb curate tag` does through the index: the k nearest KB pictures of *other* entities vote."""
    sims = vecs @ train_vecs.T
    sims[train_keys[None, :] == np.asarray(keys)[:, None]] = -np.inf  # an entity's own pictures never vote
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    w = np.maximum(np.take_along_axis(sims, top, axis=1), 0) ** 3
    return np.einsum("nk,nkl->nl", w, train_y[top]) / np.maximum(w.sum(1, keepdims=True), 1e-9)


def throughput(tagger: Tagger, images: list[Image.Image], seconds: float = 6.0) -> float:
    tagger.predict(images[:64])
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tagger.predict(images[:128])
        n += 128
    return n / (time.perf_counter() - start)


def grid(tagger: Tagger, images: list[Image.Image], truth: list[list[str]], out: Path, n: int = 16) -> None:
    """Held-out OpenMoji drawings with the tagger's top-3 labels (green: the entity carries it)."""
    step = max(1, len(images) // n)
    picks = list(range(0, len(images), step))[:n]
    probs = tagger.predict([images[i] for i in picks])
    cell_w, cell_h, cols = 230, 140, 4
    canvas = Image.new("RGB", (cell_w * cols, cell_h * ((len(picks) + cols - 1) // cols)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, (i, p) in enumerate(zip(picks, probs)):
        x, y = (c % cols) * cell_w, (c // cols) * cell_h
        canvas.paste(images[i].resize((72, 72)), (x + 6, y + 6))
        for r, j in enumerate(np.argsort(-p)[:3]):
            label = tagger.labels[j]
            colour = (0, 130, 0) if label in truth[i] else (190, 0, 0)
            draw.text((x + 84, y + 10 + 18 * r), f"{display(label)[:22]} {p[j]:.2f}", fill=colour)
        draw.text((x + 6, y + 84), "has: " + ", ".join(t for t in truth[i] if ":" not in t)[:34], fill=(90, 90, 90))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def markdown(report: dict) -> str:
    sets = list(report["results"][next(iter(report["results"]))])
    lines = ["# Tagging (CMA + ASGE, arXiv 1912.07872)", "",
             f"{report['date']} · {report['machine']} · command: `{report['command']}`", "",
             f"{report['labels']} labels (keywords, categories, subcategories); image tower `{report['embedder']}` "
             "(frozen). mAP / CF1@3 / OF1@3 on entities no model trained on, and OpenMoji drawings.", "",
             "| method | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for method, res in report["results"].items():
        lines.append(f"| {method} | " + " | ".join(" / ".join(f"{res[s][m]:.3f}" for m in REPORTED) for s in sets) + " |")
    lines += ["", "Set sizes (images): " + ", ".join(f"{s} {n}" for s, n in report["set_sizes"].items()) + ".",
              f"Tagging throughput (shipped tagger, image → labels, {torch.get_num_threads()} threads): "
              f"{report['throughput']:.0f} images/s.", "",
              f"ASGE on the training label graph: mean squared gap {report['asge']['gap_before']:.4f} → "
              f"{report['asge']['gap_after']:.4f}.", "", "![tagging grid](tagging.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tagger", type=Path, default=CHECKPOINTS / DEFAULT_TAGGER)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--views", type=int, help="training views per image (default: the shipped tagger's)")
    ap.add_argument("--epochs", type=int, help="head training epochs (default: the shipped tagger's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shipped = Tagger(args.tagger)
    overrides = {k: v for k, v in (("views", args.views), ("epochs", args.epochs)) if v is not None}
    cfg = TaggerConfig(**{**shipped.config["train_cfg"], "seed": args.seed, **overrides})
    emb = shipped.embedder
    vocab = shipped.labels
    records = load_records(cfg.manifest_path)
    root = cfg.manifest_path.parent
    train_ex, _ = examples(records, root)
    rng = np.random.default_rng(args.seed)
    feats = extract(emb, views_of([e.path for e in train_ex], cfg.views, rng, cfg.drawn_fraction),
                    len(train_ex) * cfg.views, desc="training views")
    y = np.repeat(multi_hot([e.labels for e in train_ex], vocab), cfg.views, axis=0)
    entity_y = multi_hot(list({e.key: e.labels for e in train_ex}.values()), vocab)
    in_dims = [f.shape[1] for f in feats]
    heads, graph = {}, {}
    for name, kind in (("linear", "linear"), ("CMA, learned labels", "learned"), ("CMA, label word vectors (no graph)", "text"),
                       ("CMA, word vectors + ASGE", "text+asge"), ("CMA + ASGE", "asge")):
        label_emb, graph = label_embeddings("asge" if kind == "linear" else kind, vocab, entity_y, cfg.asge_steps, args.seed)
        torch.manual_seed(args.seed)
        model = build_model("linear" if kind == "linear" else ("learned" if kind == "learned" else "cma"),
                            in_dims, label_emb, cfg.dim)
        fit(model, feats, torch.as_tensor(y), cfg, desc=f"training {name}")
        heads[name] = model
    clean = np.arange(0, len(y), cfg.views)  # each training picture as the KB holds it (its first view)
    # kNN searches the image index's vectors, as `mmkb curate tag` does (with the configured layout
    # weight and index views).
    layout = get_settings().image_layout_weight
    memory = emb.encode_search([e.path for e in train_ex], layout, views=get_settings().index_views)
    memory_y, memory_keys = y[clean], np.array([e.key for e in train_ex])
    text = emb.encode_texts([f"an emoji: {display(v)}" for v in vocab])
    sets = eval_sets(records, root, args.seed)
    results: dict[str, dict] = {m: {} for m in ["kNN label transfer", "CLIP zero-shot", *heads, "shipped tagger",
                                                "shipped tagger + kNN (average)"]}
    for set_name, (images, truth, keys) in sets.items():
        t = multi_hot(truth, vocab)
        ef = extract(emb, images, len(images), desc=set_name)
        vec = torch.nn.functional.normalize(ef[-1].float(), dim=-1).numpy()
        knn = knn_scores(memory, memory_y, memory_keys, emb.encode_search(images, layout), keys)
        results["kNN label transfer"][set_name] = metrics(knn, t)
        results["CLIP zero-shot"][set_name] = metrics(vec @ text.T, t)
        for name, model in heads.items():
            results[name][set_name] = metrics(predict(model, ef), t)
        mine = predict(shipped.model, ef)
        results["shipped tagger"][set_name] = metrics(mine, t)
        results["shipped tagger + kNN (average)"][set_name] = metrics((mine + knn) / 2, t)
    om_images, om_truth, _ = sets["OpenMoji drawings, held-out entities"]
    args.out.mkdir(parents=True, exist_ok=True)
    grid(shipped, om_images, om_truth, args.out / "tagging.png")
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
              "command": "python benchmarks/tagging.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "labels": len(vocab), "embedder": emb.fingerprint, "asge": graph,
              "set_sizes": {k: len(v[0]) for k, v in sets.items()},
              "throughput": throughput(shipped, om_images), "results": results}
    (args.out / "tagging.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "tagging.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
