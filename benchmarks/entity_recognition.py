"""Entity recognition with the image/text embedder: which worldkb entity does a query show?

    python benchmarks/entity_recognition.py [--model mmkb-clip-tiny-64] [--distortions clean mixed …]
                                            [--out benchmarks/results] [--quick]

Queries are renderings the index does not hold, distorted at benchmark time with
`index.clip.augment.distort` (each distortion, fixed seeds):

- flags: flag-icons queries (index/worldkb/queries) → the 250 countries; the index holds every
  image of each country (svg-country-flags flag, Google and Twitter flag emoji). flag-icons draws
  some territories with another country's flag (Saint Barthélemy with the French tricolour …):
  a query accepts every entity whose flag-icons picture is the same (`same_picture`); `strict`
  rows count only the label.
- emoji cross-vendor: index = one Google image per emoji entity (1620), queries = the Twitter
  renderings, and the reverse; reported on the held-out entities (never trained on) and on all.
- emoji third style: OpenMoji queries → the 1620 emoji entities (every index image: Google, Twitter and,
  for most of them, Fluent flat and modern, EmojiOne 2 and Noto's blob design).

The headline method searches as `mmkb index search --image` does: three views per query, the
layout in every search vector, each index image as the mean of two views (`MMKB_INDEX_VIEWS`) and
the index centred (`MMKB_IMAGE_CENTRE`; its centre is the mean search vector of every worldkb
image, as the shipped index's is); the columns beside it drop those one at a time.
Several images of one entity collapse to their best score (entity-level fusion). Besides
the trained model, the same queries go to baselines: raw pixels (32×32 RGB, cosine), colour
histograms (8×8×8 RGB bins, Hellinger) and the same architecture untrained (seed 0).
Text→entity: the entity's name through the CLIP text tower against its images. Throughput:
images/s on 1 and 2 CPU threads at the model's resolution, batch 64, with and without
preprocessing. Writes `entity_recognition.json`, `.md` and `.png` (a few queries of each task at
the last distortion with the first three entities the headline method found) under `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

# Before torch starts OpenMP: on a shared machine, busy-waiting threads that lose their core
# make 2-thread inference ~30x slower than 1 thread (measured); passive waiting avoids it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout
from index.clip import DEFAULT_CONFIG  # noqa: E402
from index.clip.augment import DISTORTIONS, distort  # noqa: E402
from index.clip.data import Entity, is_held_out, load_entities, load_image  # noqa: E402
from index.config import get_settings  # noqa: E402
from index.embedders import ImageEmbedder, open_rgb  # noqa: E402
from index.search import centred, shrunk_centre  # noqa: E402
from index.worldkb.build_queries import QUERY_DIR  # noqa: E402

KS = (1, 5, 20)
TARGETS = {"flags": 0.95, "emoji_cross_vendor": 0.85, "throughput": 200.0}
SUBSETS = ("all", "strict", "held-out", "trained")
SHOWN = 6  # queries per task in the picture of what the search found
Encoder = Callable[[Sequence[Image.Image]], np.ndarray]
# A method embeds the index images and the queries with one encoder, or with (index, query) encoders.
Method = Encoder | tuple[Encoder, Encoder]


# --- encoders -----------------------------------------------------------------------------

def _remembered(encode: Callable) -> Callable:
    """`encode` that hands the same list of images (the same object) its last result again."""
    last: dict = {}

    def run(images):
        if last.get("images") is not images:
            last.update(images=images, vectors=encode(images))
        return last["vectors"]
    return run


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pixels(images: Sequence[Image.Image]) -> np.ndarray:
    """Raw-pixel baseline: 32×32 RGB (on white), mean-removed per image, cosine."""
    x = np.stack([np.asarray(open_rgb(im).resize((32, 32), Image.Resampling.BILINEAR), np.float32).ravel()
                  for im in images])
    return _unit(x - x.mean(1, keepdims=True))


def histograms(images: Sequence[Image.Image]) -> np.ndarray:
    """Colour-histogram baseline: 8×8×8 RGB bins (on white), square-rooted, cosine = Hellinger."""
    out = []
    for im in images:
        q = np.asarray(open_rgb(im), np.uint8).reshape(-1, 3) // 32
        h = np.bincount(q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2], minlength=512).astype(np.float32)
        out.append(np.sqrt(h / h.sum()))
    return _unit(np.stack(out))


def untrained_clip(name: str) -> ImageEmbedder:
    """The same architecture with a fixed-seed random init (what `load_image_embedder` gives untrained)."""
    import open_clip

    emb = ImageEmbedder.__new__(ImageEmbedder)
    torch.manual_seed(0)
    emb.model, _, emb.preprocess = open_clip.create_model_and_transforms(name)
    emb.model.eval()
    emb.tokenizer, emb.device, emb.name, emb.trained = open_clip.get_tokenizer(name), "cpu", f"{name} (untrained)", False
    emb.dim = int(emb.model.text_projection.shape[1])
    return emb


# --- retrieval ----------------------------------------------------------------------------

class EntityIndex:
    """Images of entities; a query's score for an entity is its best image (fusion by max)."""

    def __init__(self, keys: list[str], images: list[Image.Image], owners: list[str]) -> None:
        self.keys = keys
        self.images, self.owners = images, owners
        pos = {k: i for i, k in enumerate(keys)}
        per: list[list[int]] = [[] for _ in keys]
        for j, owner in enumerate(owners):
            per[pos[owner]].append(j)
        width = max(len(p) for p in per)
        self.slots = np.array([p + [p[0]] * (width - len(p)) for p in per])  # pad by repeating
        self.pos = pos

    def ranks(self, query_vecs: np.ndarray, image_vecs: np.ndarray, truth: list[str],
              answers: list[frozenset[str]] | None = None) -> np.ndarray:
        """0-based rank of the true entity for each query; with `answers`, of the best-placed
        entity a query accepts (its truth and the entities whose query shows the same picture)."""
        return self.rank_in(self.scores(query_vecs, image_vecs), truth, answers)

    def scores(self, query_vecs: np.ndarray, image_vecs: np.ndarray) -> np.ndarray:
        """(queries, entities): each entity's best image."""
        return (query_vecs @ image_vecs.T)[:, self.slots].max(-1)

    def rank_in(self, scores: np.ndarray, truth: list[str],
                answers: list[frozenset[str]] | None = None) -> np.ndarray:
        """`ranks` from already computed entity scores."""
        if answers is None:
            true = scores[np.arange(len(truth)), [self.pos[k] for k in truth]]
        else:
            if len(answers) != len(truth):
                raise ValueError(f"{len(answers)} answer sets for {len(truth)} queries")
            true = np.array([scores[i, [self.pos[k] for k in keys | {truth[i]}]].max()
                             for i, keys in enumerate(answers)])
        return (scores > true[:, None]).sum(1)


def recalls(ranks: np.ndarray) -> dict[str, float]:
    return {f"r@{k}": float((ranks < k).mean()) for k in KS} | {"n": int(len(ranks))}


def same_picture(images: list[Image.Image], truth: list[str], tolerance: float = 0.5) -> list[frozenset[str]]:
    """For each query, its truth and the truths of every other query that shows the same picture
    (mean absolute difference below `tolerance` of 255 at 64×48): from the picture alone any of
    those entities is a right answer (see the module docstring)."""
    x = np.stack([np.asarray(open_rgb(im).resize((64, 48), Image.Resampling.BOX), np.float32).ravel()
                  for im in images])
    out = []
    for i in range(len(images)):
        same = np.abs(x - x[i]).mean(1) < tolerance
        out.append(frozenset(truth[j] for j in np.flatnonzero(same)) | {truth[i]})
    return out


def _distorted(images: list[Image.Image], name: str, seed: int) -> list[Image.Image]:
    d = DISTORTIONS.index(name)
    return [distort(im, name, np.random.default_rng([seed, d, i])) for i, im in enumerate(images)]


# --- tasks --------------------------------------------------------------------------------

def tasks(entities: list[Entity], quick: bool) -> list[dict]:
    """(name, index, queries, truth, subsets) for every task; queries clean, distorted later."""
    rows = [json.loads(line) for line in (QUERY_DIR / "manifest.jsonl").read_text().splitlines()]
    countries = [e for e in entities if e.kind == "country"]
    emoji = [e for e in entities if e.kind == "emoji"]
    if quick:
        emoji = [e for e in emoji if is_held_out(e.key)] + [e for e in emoji if not is_held_out(e.key)][:100]

    def style(e: Entity, s: str) -> Image.Image:
        return load_image(e.images[e.styles.index(s)])

    def all_images(es: list[Entity]) -> EntityIndex:
        return EntityIndex([e.key for e in es], [load_image(p) for e in es for p in e.images],
                           [e.key for e in es for _ in e.images])

    keys = [e.key for e in emoji]
    held = np.array([is_held_out(k) for k in keys])
    flags = _queries([r for r in rows if r["style"] == "flag-icons"])
    out = [{"name": "flags (flag-icons → all images of 250 countries)", "domain": "flags",
            "index": all_images(countries), **flags, "subsets": None,
            "answers": same_picture(flags["queries"], flags["truth"])}]
    for src, dst in [("twitter", "google"), ("google", "twitter")]:
        out.append({"name": f"emoji cross-vendor ({src} → {dst})", "domain": "emoji_cross_vendor",
                    "index": EntityIndex(keys, [style(e, f"emoji-{dst}") for e in emoji], keys),
                    "queries": [style(e, f"emoji-{src}") for e in emoji], "truth": keys,
                    "subsets": {"held-out": held, "trained": ~held}})
    om = [r for r in rows if r["style"] == "openmoji" and r["key"] in set(keys)]
    out.append({"name": "emoji third style (OpenMoji → every other drawing)", "domain": "emoji_openmoji",
                "index": all_images(emoji), **_queries(om),
                "subsets": {"held-out": np.array([r["held_out"] for r in om]),
                            "trained": ~np.array([r["held_out"] for r in om])}})
    return out


def _queries(rows: list[dict]) -> dict:
    return {"queries": [load_image(QUERY_DIR / r["path"]) for r in rows], "truth": [r["key"] for r in rows]}


def run_tasks(methods: dict[str, Method], task_list: list[dict], distortions: Sequence[str],
              seed: int) -> tuple[list[dict], list[dict]]:
    """Recall rows per task, distortion and method, and what the first method found for a few queries
    of each task at the last distortion (`shown_queries`, for `grid`)."""
    encoders = {m: enc if isinstance(enc, tuple) else (enc, enc) for m, enc in methods.items()}
    first = next(iter(encoders), None)
    results, shown = [], []
    for task in task_list:
        index_vecs = {m: enc[0](task["index"].images) for m, enc in encoders.items()}
        for d in tqdm(distortions, desc=task["name"][:40], leave=False):
            queries = _distorted(task["queries"], d, seed)
            for m, enc in encoders.items():
                query_vecs = enc[1](queries)
                scores = task["index"].scores(query_vecs, index_vecs[m])
                if m == first and d == distortions[-1]:
                    shown += shown_queries(task, d, queries, query_vecs, index_vecs[m])
                ranks = task["index"].rank_in(scores, task["truth"], task.get("answers"))
                row = {"task": task["name"], "domain": task["domain"], "distortion": d, "method": m,
                       "all": recalls(ranks)}
                if task.get("answers") is not None:  # the labels alone, as if every picture named one entity
                    row["strict"] = recalls(task["index"].rank_in(scores, task["truth"]))
                for sub, mask in (task["subsets"] or {}).items():
                    row[sub] = recalls(ranks[mask])
                results.append(row)
    return results, shown


def shown_queries(task: dict, distortion: str, queries: list[Image.Image], query_vecs: np.ndarray,
                  image_vecs: np.ndarray, n: int = SHOWN, top: int = 3) -> list[dict]:
    """`n` evenly spaced queries of the task (of its held-out entities where it has them) with their
    `top` entities, each shown by its best-scoring index image."""
    index = task["index"]
    subsets = task["subsets"] or {}
    pool = np.flatnonzero(subsets["held-out"]) if "held-out" in subsets else np.arange(len(queries))
    if not len(pool):
        return []
    picks = pool[np.unique(np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int))]
    sims = query_vecs[picks] @ image_vecs.T
    answers = task.get("answers")
    out = []
    for row, i in enumerate(picks):
        per_entity = sims[row][index.slots]  # (entities, images per entity)
        best = per_entity.max(-1)
        accepted = (answers[i] if answers is not None else frozenset()) | {task["truth"][i]}
        hits = [{"key": index.keys[e], "score": float(best[e]), "right": index.keys[e] in accepted,
                 "image": index.images[index.slots[e, per_entity[e].argmax()]]} for e in np.argsort(-best)[:top]]
        out.append({"task": task["name"], "distortion": distortion, "query": queries[i],
                    "truth": task["truth"][i], "hits": hits})
    return out


def grid(shown: list[dict], names: dict[str, str], out: Path, per_row: int = 3) -> None:
    """A picture of `shown_queries`: per task, each query (its true entity named under it) and its
    top entities, framed green where right and red where wrong."""
    from PIL import ImageDraw, ImageFont

    def font_of(size: int):
        try:  # DejaVu draws names such as Curaçao; Pillow's own font lacks some letters
            return ImageFont.truetype("DejaVuSans.ttf", size)
        except OSError:
            try:
                return ImageFont.load_default(size=size)
            except (TypeError, ImportError, OSError):  # Pillow before 10.1, or without FreeType: a bitmap font
                return ImageFont.load_default()

    font, big = font_of(10), font_of(13)
    thumb, cell_w, row_h, head_h = 64, 84, 106, 26
    block_w = cell_w * 4 + 24
    tasks_shown = list(dict.fromkeys(s["task"] for s in shown))
    rows = {t: [s for s in shown if s["task"] == t] for t in tasks_shown}
    height = sum(head_h + row_h * -(-len(r) // per_row) for r in rows.values()) + 8
    canvas = Image.new("RGB", (block_w * per_row + 8, height), "white")
    draw = ImageDraw.Draw(canvas)

    def label(x: int, y: int, text: str, colour=(60, 60, 60), width: int = 13) -> None:
        """`text` in at most two lines of `width` characters under a picture."""
        lines = textwrap.wrap(text, width, break_long_words=True, max_lines=2, placeholder="…")
        draw.multiline_text((x, y), "\n".join(lines), fill=colour, font=font, spacing=1)

    y = 4
    for task, items in rows.items():
        heading = task.replace("→", "to")  # the default font has no arrow
        draw.text((6, y + 5), f"{heading} · {items[0]['distortion']} · first three entities", fill="black", font=big)
        y += head_h
        for c, s in enumerate(items):
            x0, y0 = 6 + (c % per_row) * block_w, y + (c // per_row) * row_h
            canvas.paste(open_rgb(s["query"]).resize((thumb, thumb)), (x0, y0))
            label(x0, y0 + thumb + 4, names.get(s["truth"], s["truth"]), (0, 0, 0))
            ax, ay = x0 + thumb + 4, y0 + thumb // 2
            draw.line((ax, ay, ax + 9, ay), fill="black", width=2)
            draw.polygon(((ax + 13, ay), (ax + 8, ay - 4), (ax + 8, ay + 4)), fill="black")
            for h, hit in enumerate(s["hits"]):
                x = x0 + cell_w * (h + 1)
                colour = (0, 140, 0) if hit["right"] else (200, 0, 0)
                draw.rectangle((x - 3, y0 - 3, x + thumb + 2, y0 + thumb + 2), outline=colour, width=3)
                canvas.paste(open_rgb(hit["image"]).resize((thumb, thumb)), (x, y0))
                label(x, y0 + thumb + 4, names.get(hit["key"], hit["key"]), colour)
        y += row_h * -(-len(items) // per_row)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def text_to_entity(emb: ImageEmbedder, entities: list[Entity]) -> dict[str, dict]:
    """Each entity's name → all entities by their images (max fusion); recall by group."""
    index = EntityIndex([e.key for e in entities], [load_image(p) for e in entities for p in e.images],
                        [e.key for e in entities for _ in e.images])
    ranks = index.ranks(emb.encode_texts([e.name for e in entities]), emb.encode_images(index.images),
                        [e.key for e in entities])
    groups = {"countries": np.array([e.kind == "country" for e in entities]),
              "emoji held-out": np.array([is_held_out(e.key) for e in entities]),
              "emoji trained": np.array([e.kind == "emoji" and not is_held_out(e.key) for e in entities])}
    return {g: recalls(ranks[m]) for g, m in groups.items()} | {"all": recalls(ranks)}


def throughput(emb: ImageEmbedder, images: list[Image.Image], threads: int, seconds: float = 8.0,
               batch: int = 64, views: int = 1, layout: float = 0.0, index_views: int = 1) -> dict:
    """Images/s at batch 64 on `threads` threads: from PIL images (open_rgb + preprocess +
    model, search vectors with `layout`) and from ready tensors (model only); with `views` 3, also
    query images/s as search embeds them (three views each); with `index_views` 2, index images/s
    as `mmkb index build` embeds them."""
    torch.set_num_threads(threads)
    images = (images * (batch // len(images) + 1))[:batch * 8] if len(images) < batch * 8 else images[:batch * 8]
    tensors = torch.stack([emb.preprocess(open_rgb(im)) for im in images[:batch]])

    def rate(fn: Callable[[int], None]) -> tuple[float, float]:
        """(images/s of wall-clock time, images per CPU-second this process used)."""
        fn(0)  # warm-up
        n, start, cpu, i = 0, time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - start < seconds:
            fn(i)
            n, i = n + batch, i + 1
        return n / (time.perf_counter() - start), n / (time.process_time() - cpu)

    def with_pre(i: int) -> None:
        j = (i * batch) % len(images)
        emb.encode_search(images[j:j + batch], layout, batch_size=batch)

    def without(_: int) -> None:
        with torch.inference_mode():
            emb.model.encode_image(tensors)

    def index_images(i: int) -> None:
        j = (i * batch) % len(images)
        emb.encode_search(images[j:j + batch], layout, batch_size=batch, views=index_views)

    def queries(i: int) -> None:
        j = (i * batch) % len(images)
        emb.encode_queries(images[j:j + batch], views=views, batch_size=batch, layout=layout)

    (pre, pre_cpu), (model, model_cpu) = rate(with_pre), rate(without)
    # On a shared machine wall-clock rates depend on the other load; images per CPU-second
    # say what one dedicated core does.
    out = {"with_preprocessing": pre, "model_only": model, "with_preprocessing_per_cpu_s": pre_cpu,
           "model_only_per_cpu_s": model_cpu, "batch": batch, "threads": threads, "layout": layout}
    if views > 1:
        out["queries_with_views"], out["queries_with_views_per_cpu_s"] = rate(queries)
        out["views"] = views
    if index_views > 1:
        out["index_with_views"], out["index_with_views_per_cpu_s"] = rate(index_images)
        out["index_views"] = index_views
    return out | {"load_average": os.getloadavg()}


# --- report -------------------------------------------------------------------------------

def summarise(results: list[dict], methods: list[str]) -> dict:
    """Mean recall@1 over distortions, per domain (and subset) and method."""
    out: dict[str, dict] = {}
    for r in results:
        for sub in SUBSETS:
            if sub in r:
                out.setdefault(f"{r['domain']}/{sub}", {}).setdefault(r["method"], []).append(r[sub]["r@1"])
    return {k: {m: float(np.mean(v[m])) for m in methods if m in v} for k, v in out.items()}


def targets_met(report: dict) -> dict[str, bool]:
    """The issue's targets for the trained model (mean recall@1 over distortions; images/s).

    The issue asks for queries from renderings not used in training. The embedder trains on both
    vendors' renderings of its training entities (other random distortions of the same pictures),
    so only the held-out entities' cross-vendor queries meet that condition; the "all" and
    "trained" rows are reported but are not the target."""
    model, summary = report["methods"][0], report["summary"]
    out = {"flags r@1 ≥ 0.95": summary["flags/all"][model] >= TARGETS["flags"],
           "emoji cross-vendor (held-out entities) r@1 ≥ 0.85":
               summary["emoji_cross_vendor/held-out"][model] >= TARGETS["emoji_cross_vendor"]}
    out["throughput ≥ 200 images/s"] = max(t["with_preprocessing"] for t in report["throughput"]) >= TARGETS["throughput"]
    return out


def markdown(report: dict) -> str:
    methods = report["methods"]
    lines = [f"# Entity recognition ({report['model']})", "",
             f"{report['date']} · {report['machine']} · command: `{report['command']}`", "",
             "Image→entity recall@1, mean over the distortions "
             f"({', '.join(report['distortions'])}); targets: flags ≥ {TARGETS['flags']}, "
             f"emoji cross-vendor ≥ {TARGETS['emoji_cross_vendor']}.", "",
             "| domain / queries | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for k, v in report["summary"].items():
        lines.append(f"| {k} | " + " | ".join(f"{v.get(m, float('nan')):.3f}" for m in methods) + " |")
    if any("strict" in r for r in report["results"]):
        lines += ["", "flags/all accepts, for a query, every country whose flag-icons picture is the same "
                  "picture (`same_picture`: flag-icons draws several territories with another country's flag, "
                  "e.g. Saint Barthélemy with the French tricolour), which no image method can tell apart; "
                  "flags/strict counts only the query's own label."]
    lines += ["", "emoji_cross_vendor/trained (and so /all) queries are other distortions of renderings the embedder "
              "trained on: only /held-out meets the issue's condition (queries from renderings not used in training)."]
    lines += ["", "Targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in report["targets_met"].items())]
    if report.get("shown_queries"):
        lines += ["", f"What {methods[0]} found for {SHOWN} evenly spaced queries of each task (held-out entities "
                  f"where the task has them), \"{report['distortions'][-1]}\" distortion: the query with its entity's "
                  "name, then the first three entities, each by its best-scoring index image (green: right, red: wrong).",
                  "", "![queries and the entities found](entity_recognition.png)"]
    lines += ["", f"## {methods[0]}: recall@1 / @5 / @20 per distortion", "",
              "| task | subset | " + " | ".join(report["distortions"]) + " |",
              "|---|---|" + "---|" * len(report["distortions"])]
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for r in report["results"]:
        if r["method"] != methods[0]:
            continue
        for sub in SUBSETS:
            if sub in r:
                x = r[sub]
                rows.setdefault((r["task"], f"{sub} (n={x['n']})"), {})[r["distortion"]] = \
                    f"{x['r@1']:.2f} / {x['r@5']:.2f} / {x['r@20']:.2f}"
    for (task, sub), cells in rows.items():
        lines.append(f"| {task} | {sub} | " + " | ".join(cells.get(d, "") for d in report["distortions"]) + " |")
    lines += ["", "## Text → entity (name → the entity's images), recall@1 / @5", "",
              "| group | " + " | ".join(report["text_to_entity"]) + " |", "|---|" + "---|" * len(report["text_to_entity"])]
    groups = next(iter(report["text_to_entity"].values()))
    for g in groups:
        lines.append(f"| {g} (n={groups[g]['n']}) | " + " | ".join(
            f"{t[g]['r@1']:.3f} / {t[g]['r@5']:.3f}" for t in report["text_to_entity"].values()) + " |")
    lines += ["", "## Throughput", "",
              f"Images/s at batch {report['throughput'][0]['batch']}, {report['image_size']} px; with preprocessing = "
              f"PIL image → open_rgb → resize/crop/normalise → model"
              + (f" → search vector with layout {report['layout']:g}" if report.get("layout") else "")
              + f" (target ≥ {TARGETS['throughput']:.0f}). "
              "The machine is shared: the load average is the other work running at the time, and images "
              "per CPU-second say what one dedicated core does.", "",
              "| threads | with preprocessing | model only | per CPU-s, with preprocessing | per CPU-s, model only "
              "| query images/s (3 views each) | index images/s (2 views each) | load average |",
              "|---|---|---|---|---|---|---|---|"]
    for t in report["throughput"]:
        q = f"{t['queries_with_views']:.0f}" if "queries_with_views" in t else "–"
        ix = f"{t['index_with_views']:.0f}" if "index_with_views" in t else "–"
        lines.append(f"| {t['threads']} | {t['with_preprocessing']:.0f} | {t['model_only']:.0f} | "
                     f"{t['with_preprocessing_per_cpu_s']:.0f} | {t['model_only_per_cpu_s']:.0f} | {q} | {ix} | "
                     f"{', '.join(f'{x:.1f}' for x in t['load_average'])} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_CONFIG, help="an open_clip spec for ImageEmbedder")
    p.add_argument("--distortions", nargs="+", default=list(DISTORTIONS), choices=DISTORTIONS)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="for the recall runs; throughput is measured on 1 and 2 threads")
    p.add_argument("--query-views", type=int, default=3, choices=(1, 3),
                   help="views per query image for the headline method, as `mmkb index search` embeds them "
                        "(MMKB_QUERY_VIEWS); with 3, the one-view model is a row beside it")
    p.add_argument("--layout", type=float, default=None,
                   help="layout weight of the headline method's search vectors (default MMKB_IMAGE_LAYOUT_WEIGHT); "
                        "above 0, the same model without it is a row beside it")
    p.add_argument("--index-views", type=int, default=None, choices=(1, 2),
                   help="views averaged per index image for the headline method (default MMKB_INDEX_VIEWS); "
                        "with 2, the same search vectors from the index image alone are a row beside it")
    p.add_argument("--centre", type=float, default=None,
                   help="the share of the index's mean the headline method's index is centred by, 0–1 (default "
                        "MMKB_IMAGE_CENTRE); above 0, the same search vectors uncentred are a row beside it")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: emoji = the held-out ones + 100 others, distortions clean and mixed")
    args = p.parse_args(argv)
    if args.centre is not None and not 0 <= args.centre <= 1:
        p.error(f"--centre is between 0 and 1, not {args.centre:g}")
    torch.set_num_threads(args.threads)
    distortions = ["clean", "mixed"] if args.quick else args.distortions

    trained = ImageEmbedder(args.model)
    name = args.model.partition(":")[0]
    layout = trained.layout_of(get_settings().image_layout_weight if args.layout is None else args.layout)
    views = args.query_views
    methods: dict[str, Method] = {args.model: trained.encode_images}
    if views == 3:
        methods = {f"{args.model} + 3 query views": (trained.encode_images, trained.encode_queries), **methods}
    query = partial(trained.encode_queries, views=views, layout=layout)
    if layout:
        name_layout = f"{args.model}{' + 3 query views' if views == 3 else ''} + layout {layout:g}"
        methods = {name_layout: (partial(trained.encode_search, layout=layout), query), **methods}
    index_views = get_settings().index_views if args.index_views is None else args.index_views
    if index_views > 1:  # the search default first: its row is the one the targets are checked on
        headline = f"{args.model}{' + 3 query views' if views == 3 else ''}{f' + layout {layout:g}' if layout else ''}" \
                   f" + {index_views} index views"
        methods = {headline: (partial(trained.encode_search, layout=layout, views=index_views), query), **methods}
    entities = load_entities()
    centre = get_settings().image_centre if args.centre is None else args.centre
    if centre:  # the shipped index's centre: the mean search vector of every worldkb image
        plain, first = next(iter(methods.items()))
        index_encoder, query_encoder = first if isinstance(first, tuple) else (first, first)
        index_encoder = _remembered(index_encoder)  # the centred row and the plain one embed the same images
        kb = index_encoder([load_image(p) for e in entities for p in e.images])
        c = shrunk_centre(kb.mean(0), len(kb), centre)
        methods[plain] = (index_encoder, query_encoder)
        methods = {f"{plain} + centred {centre:g}": (lambda images: centred(index_encoder(images), c), query_encoder),
                   **methods}
    methods |= {f"{name} untrained": untrained_clip(name).encode_images, "pixels 32×32": pixels,
                "colour histogram": histograms}
    results, shown = run_tasks(methods, tasks(entities, args.quick), distortions, args.seed)
    report = {
        "model": args.model, "trained": trained.trained, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "command": "python benchmarks/entity_recognition.py " + " ".join(map(shlex.quote, argv or sys.argv[1:])),
        "distortions": distortions, "methods": list(methods), "targets": TARGETS,
        "summary": summarise(results, list(methods)), "results": results, "shown_queries": len(shown),
        "text_to_entity": {args.model: text_to_entity(trained, entities),
                           f"{name} untrained": text_to_entity(untrained_clip(name), entities)},
        "image_size": trained.model.visual.image_size,
        "layout": layout,
        "index_views": index_views,
        "centre": centre,
        "throughput": [throughput(trained, [load_image(e.images[0]) for e in entities[::10]], n, views=views,
                                  layout=layout, index_views=index_views) for n in (1, 2)],
    }
    report["targets_met"] = targets_met(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "entity_recognition.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "entity_recognition.md").write_text(markdown(report))
    if shown:
        grid(shown, {e.key: e.name for e in entities}, args.out / "entity_recognition.png")
    print(markdown(report))
    print(f"wrote {args.out / 'entity_recognition.json'}, {args.out / 'entity_recognition.md'} and "
          f"{args.out / 'entity_recognition.png'}")
    return report


if __name__ == "__main__":
    main()
