"""Train the CMA + ASGE tagger on a manifest's labelled entities (default: worldkb's emoji keywords).

The image tower stays frozen: every training image is embedded once per view (the reference
rendering itself plus query-like augmented views, as the embedder trains), and only the tagger's
head (`model.CMATagger`, under a million parameters) trains on those cached features, so a full
run takes minutes on two CPU cores. Entities the embedder holds out (`index.clip.data.is_held_out`)
are held out here too, so the validation and the benchmark measure tagging of entities neither
model ever saw.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from index.clip.augment import query_view
from index.clip.data import is_held_out, load_image
from index.embedders import ImageEmbedder, open_rgb, visual_features
from index.files import replace_dir
from index.tagger.asge import adjacency, asge
from index.tagger.config import LABEL_EMBEDDINGS, TaggerConfig
from index.tagger.labels import multi_hot, record_labels, vocabulary
from index.tagger.model import CMATagger, LinearTagger

log = logging.getLogger(__name__)
CHECKPOINTS = Path(__file__).parent / "checkpoints"
DEFAULT_TAGGER = "mmkb-tagger"


@dataclass
class Example:
    key: str
    path: Path
    labels: list[str]


def load_records(manifest: str | Path) -> list[dict]:
    """The manifest's records (`.jsonl` or `.csv`, read as `mmkb index ingest` reads them); the first
    malformed line, or an entity without a key, is an error naming its file and line."""
    from index.ingest import IngestError, Problem, read_manifest

    problems: list[Problem] = []
    try:
        rows = list(read_manifest(Path(manifest), problems))
    except IngestError as err:
        raise ValueError(str(err)) from None
    problems += [Problem(str(manifest), n, "an entity needs a \"key\"") for n, rec in rows if not rec.get("key")]
    if problems:
        raise ValueError(f"{problems[0]} (see `mmkb index ingest --help` for the format)")
    return [rec for _, rec in rows]


def examples(records: Sequence[dict], root: Path) -> tuple[list[Example], list[Example]]:
    """(training, held-out) images of every record that carries labels."""
    train, held = [], []
    for rec in records:
        labels = record_labels(rec)
        if not labels:
            continue
        for im in rec.get("images", []):
            ex = Example(rec["key"], root / im["path"], labels)
            (held if is_held_out(rec["key"]) else train).append(ex)
    return train, held


def views_of(paths: Sequence[Path], views: int, rng: np.random.Generator,
             drawn_fraction: float) -> Iterator[Image.Image]:
    """Each image as the index holds it, then (views - 1) query-like augmented views of it."""
    for path in paths:
        img = load_image(path)
        yield open_rgb(img)
        for _ in range(views - 1):
            yield open_rgb(query_view(img, rng, drawn_fraction=drawn_fraction))


def extract(embedder: ImageEmbedder, images: Iterator[Image.Image] | Sequence[Image.Image], total: int,
            batch_size: int = 128, desc: str = "tagger features") -> list[torch.Tensor]:
    """The frozen tower's [map, map, pooled] features of every image, fp16 on the CPU."""
    chunks: list[list[torch.Tensor]] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        feats = visual_features(embedder.model, torch.stack(batch).to(embedder.device))
        chunks.append([f.half().cpu() for f in feats])
        batch.clear()

    with tqdm(total=total, desc=desc, unit="img") as bar:
        for img in images:
            batch.append(embedder.preprocess(open_rgb(img)))
            if len(batch) == batch_size:
                flush()
                bar.update(batch_size)
        if batch:
            n = len(batch)
            flush()
            bar.update(n)
    if not chunks:
        raise ValueError("no images to embed")
    return [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def fit(model: torch.nn.Module, feats: list[torch.Tensor], y: torch.Tensor, cfg: TaggerConfig,
        val: tuple[list[torch.Tensor], np.ndarray] | None = None, desc: str = "training tagger") -> list[dict]:
    """Binary cross-entropy over the cached features; AdamW with a cosine schedule."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(y)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    history = []
    with tqdm(total=total, desc=desc, unit="step") as bar:
        for epoch in range(cfg.epochs):
            model.train()
            order = torch.randperm(n, generator=gen)
            losses = []
            for s in range(steps_per_epoch):
                idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                loss = F.binary_cross_entropy_with_logits(model([f[idx] for f in feats]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.update(1)
            row = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
            if val is not None and (epoch + 1 == cfg.epochs or (epoch + 1) % 5 == 0):
                row["val_mAP"] = metrics(predict(model, val[0]), val[1])["mAP"]
            bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
            history.append(row)
    return history


@torch.inference_mode()
def predict(model: torch.nn.Module, feats: list[torch.Tensor], batch_size: int = 512) -> np.ndarray:
    """Label probabilities (N × labels)."""
    model.eval()
    out = [torch.sigmoid(model([f[i:i + batch_size] for f in feats])) for i in range(0, len(feats[0]), batch_size)]
    return torch.cat(out).numpy()


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = truth[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def metrics(probs: np.ndarray, y: np.ndarray, top: int = 3) -> dict[str, float]:
    """The paper's protocol: mAP over labels with a positive, and per-class (C) / overall (O)
    precision, recall and F1 of each image's `top` highest-scoring labels (per-class means over the
    labels with a positive; a label never predicted has precision 0)."""
    y = np.asarray(y) > 0
    aps = [average_precision(probs[:, j], y[:, j]) for j in range(y.shape[1]) if y[:, j].any()]
    pred = np.zeros_like(y)
    rows = np.arange(len(probs))[:, None]
    pred[rows, np.argsort(-probs, axis=1)[:, :top]] = True
    tp = (pred & y).sum(0).astype(float)
    npred, ntrue = pred.sum(0).astype(float), y.sum(0).astype(float)
    has = ntrue > 0  # per-class means over the labels with a positive, as mAP; never predicted → precision 0
    cp = float((tp[has] / np.maximum(npred[has], 1)).mean()) if has.any() else 0.0
    cr = float((tp[has] / ntrue[has]).mean()) if has.any() else 0.0
    op = float(tp.sum() / max(npred.sum(), 1))
    orec = float(tp.sum() / max(ntrue.sum(), 1))

    def f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r else 0.0

    return {"mAP": float(np.mean(aps)) if aps else float("nan"), "CP": cp, "CR": cr, "CF1": f1(cp, cr),
            "OP": op, "OR": orec, "OF1": f1(op, orec), "labels_scored": len(aps), "images": int(len(y))}


def label_text_embeddings(vocab: Sequence[str]) -> np.ndarray:
    """The shipped sentence embedder's vectors of the label words (ASGE's starting point)."""
    from index.embedders import load_text_embedder
    from index.tagger.labels import display

    return load_text_embedder().encode([display(v) for v in vocab])


def label_embeddings(kind: str, vocab: Sequence[str], entity_y: np.ndarray, steps: int,
                     seed: int) -> tuple[np.ndarray, dict]:
    """The CMA head's label embeddings of one `LABEL_EMBEDDINGS` kind, and ASGE's report."""
    if kind not in LABEL_EMBEDDINGS:
        raise ValueError(f"--labels {kind!r}: choose one of {', '.join(LABEL_EMBEDDINGS)}")
    text = label_text_embeddings(vocab)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    graph, report = asge(adjacency(entity_y), text, steps=steps, seed=seed)
    return {"asge": graph, "text": text, "learned": text,
            "text+asge": np.concatenate([text, graph], axis=1)}[kind].astype(np.float32), report


def build_model(kind: str, in_dims: Sequence[int], label_emb: np.ndarray, dim: int) -> torch.nn.Module:
    if kind == "linear":
        return LinearTagger(in_dims[-1], len(label_emb))
    return CMATagger(in_dims, torch.as_tensor(label_emb), dim=dim, learn_labels=(kind == "learned"))


def train_tagger(cfg: TaggerConfig | None = None, out: Path | None = None,
                 embedder: ImageEmbedder | None = None) -> Path:
    """Train, validate on held-out entities and export (fp16 safetensors + config + model card) to `out`
    (default MMKB_HOME/models/mmkb-tagger; the shipped one is index/tagger/checkpoints/mmkb-tagger)."""
    from index.embedders import load_image_embedder
    from index.training import training_paths

    cfg = cfg or TaggerConfig()
    out, _ = training_paths(DEFAULT_TAGGER, out)
    torch.manual_seed(cfg.seed)
    started = time.time()
    records = load_records(cfg.manifest_path)
    train_ex, held_ex = examples(records, cfg.manifest_path.parent)
    vocab = vocabulary([r for r in {e.key: e.labels for e in train_ex}.values()], cfg.min_count)
    if len(vocab) < 2:
        raise ValueError(f"{cfg.manifest_path}: fewer than two labels carried by {cfg.min_count} or more training "
                         "entities; lower --min-count or add tags/keywords to the manifest")
    embedder = embedder or load_image_embedder(cfg.embedder)
    rng = np.random.default_rng(cfg.seed)
    feats = extract(embedder, views_of([e.path for e in train_ex], cfg.views, rng, cfg.drawn_fraction),
                    len(train_ex) * cfg.views, desc="training views")
    y = torch.as_tensor(np.repeat(multi_hot([e.labels for e in train_ex], vocab), cfg.views, axis=0))
    val = None
    if held_ex:
        vf = extract(embedder, (load_image(e.path) for e in held_ex), len(held_ex), desc="held-out images")
        val = (vf, multi_hot([e.labels for e in held_ex], vocab))
    entity_y = multi_hot(list({e.key: e.labels for e in train_ex}.values()), vocab)
    label_emb, graph = label_embeddings(cfg.labels, vocab, entity_y, cfg.asge_steps, cfg.seed)
    in_dims = [f.shape[1] for f in feats]
    model = build_model("learned" if cfg.labels == "learned" else "cma", in_dims, label_emb, cfg.dim)
    history = fit(model, feats, y, cfg, val)
    trained_keys = {e.key for e in train_ex}
    kinds = sorted({r.get("kind") for r in records if r["key"] in trained_keys} - {None})
    summary = {"labels": len(vocab), "kinds": kinds, "training_images": len(train_ex), "training_entities": len({e.key for e in train_ex}),
               "held_out_images": len(held_ex), "held_out_entities": len({e.key for e in held_ex}),
               "asge": graph, "history": history, "minutes": (time.time() - started) / 60,
               "embedder": embedder.name, "embedder_fingerprint": embedder.fingerprint,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
                          + (f", {torch.cuda.get_device_name()}" if embedder.device.startswith("cuda") else "")}
    if val is not None:
        summary["held_out"] = metrics(predict(model, val[0]), val[1])
    return export(model, vocab, in_dims, cfg, out, summary)


def export(model: CMATagger, vocab: Sequence[str], in_dims: Sequence[int], cfg: TaggerConfig, out: Path,
           summary: dict) -> Path:
    """tagger.safetensors (fp16) + config.json + MODEL_CARD.md, swapped in whole."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "tagger.safetensors"), metadata={"format": "pt"})
    config = {"labels": list(vocab), "kinds": summary["kinds"], "in_dims": list(in_dims), "dim": cfg.dim,
              "label_dim": int(model.label_embeddings.shape[1]), "embedder": summary["embedder"],
              "embedder_fingerprint": summary["embedder_fingerprint"], "train_cfg": asdict(cfg), "summary": summary}
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "MODEL_CARD.md").write_text(model_card(config))
    return replace_dir(tmp, out)


def command_line(cfg: TaggerConfig, out: Path) -> str:
    default = TaggerConfig()
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in asdict(cfg).items() if v != getattr(default, k)]
    return " ".join(["mmkb train tagger", *flags, f"--out {out}"])


def model_card(config: dict) -> str:
    s, cfg = config["summary"], config["train_cfg"]
    held = s.get("held_out", {})
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in held.items() if isinstance(v, float))
    return f"""# mmkb-tagger

A multi-label tagger for curation (`mmkb curate tag`): cross-modality attention (CMA) over the frozen
image embedder's feature maps, guided by label embeddings from the label co-occurrence graph (ASGE),
after You et al., "Cross-Modality Attention with Semantic Graph Embedding for Multi-Label
Classification" (arXiv 1912.07872). It suggests keywords, categories and subcategories for an image.

- Labels: {s['labels']} (keywords, `category:…`, `subcategory:…` carried by ≥ {cfg['min_count']} training entities; `config.json`)
- Image tower: `{s['embedder']}` (weights `{s['embedder_fingerprint']}`), frozen; the tagger reads its last two
  feature maps and its pooled embedding. Head weights fp16, `tagger.safetensors`.
- Data: {Path(cfg['manifest']).parent.name if cfg['manifest'] else 'worldkb'} manifest ({', '.join(s.get('kinds', []))}); {s['training_images']} images of
  {s['training_entities']} entities, {cfg['views']} views each (the rendering + query-like augmentations,
  {cfg['drawn_fraction']:.0%} redrawn as flat outlined icons). Held out: {s['held_out_entities']} entities
  ({s['held_out_images']} images) that the embedder never trained on either.
- Label embeddings: {LABEL_EMBEDDINGS[cfg['labels']]}. ASGE on the co-occurrence graph of the training
  entities, from all-MiniLM-L6-v2's vectors of the label words: mean squared gap to the adjacency
  {s['asge']['gap_before']:.4f} → {s['asge']['gap_after']:.4f}; for {s['asge']['nearest_is_neighbour']:.0%} of labels the nearest other label is a graph neighbour.
- Training: binary cross-entropy, AdamW (lr {cfg['lr']}, one-cycle), batch {cfg['batch_size']}, {cfg['epochs']} epochs,
  seed {cfg['seed']}; {s['minutes']:.1f} min in all (features + ASGE + head) on {s.get('machine', 'the machine that ran it')}.
- Command: `{command_line(TaggerConfig(**cfg), Path('index/tagger/checkpoints/mmkb-tagger'))}`

## Held-out entities (never trained on), each image as the KB holds it

| metric | value |
|---|---|
{rows}

mAP over labels with a positive; C/O = per-class / overall precision, recall, F1 of each image's
top-3 labels (the paper's protocol). `python benchmarks/tagging.py` compares it with baselines on the
held-out entities and on OpenMoji drawings (a style no model trained on).
"""


class Tagger:
    """A trained tagger and its image tower: images → label probabilities."""

    def __init__(self, path: str | Path | None = None, embedder: ImageEmbedder | None = None) -> None:
        from safetensors.torch import load_file

        from index.embedders import load_image_embedder

        path = Path(path) if path else CHECKPOINTS / DEFAULT_TAGGER
        if path.is_file():
            path = path.parent
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no tagger at {path}: train one with `mmkb train tagger --out {path}`")
        self.path = path
        self.config = json.loads((path / "config.json").read_text())
        self.labels: list[str] = self.config["labels"]
        if embedder is not None and embedder.fingerprint != self.config["embedder_fingerprint"]:
            log.info("tagger %s reads %s, not the configured %s: loading its own", path,
                     self.config["embedder_fingerprint"], embedder.fingerprint)
            embedder = None
        self.embedder = embedder or load_image_embedder(self.config["embedder"])
        if self.embedder.fingerprint != self.config["embedder_fingerprint"]:
            log.warning("tagger %s was trained on %s, but its image embedder now is %s: retrain it with "
                        "`mmkb train tagger`", path, self.config["embedder_fingerprint"], self.embedder.fingerprint)
        state = load_file(str(path / "tagger.safetensors"))
        self.model = CMATagger(self.config["in_dims"], state["label_embeddings"].float(), dim=self.config["dim"])
        self.model.load_state_dict({k: v.float() for k, v in state.items()})
        self.model.eval()
        self.name = path.name

    def predict(self, images: Sequence[Image.Image | str | Path], batch_size: int = 128) -> np.ndarray:
        """(images × labels) probabilities."""
        return self.predict_with_embeddings(images, batch_size)[0]

    def predict_with_embeddings(self, images: Sequence[Image.Image | str | Path], batch_size: int = 128,
                                layout: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """(images × labels) probabilities and the images' unit-length embeddings (`ImageEmbedder.encode_images`);
        with `layout`, their image search vectors (`ImageEmbedder.encode_search`) from the same features."""
        if not images:
            return np.zeros((0, len(self.labels)), np.float32), np.zeros((0, self.embedder.dim), np.float32)
        feats = extract(self.embedder, (open_rgb(im) for im in images), len(images), batch_size, desc="tagging")
        return predict(self.model, feats), self.embedder.search_vectors_from(feats[-1], feats[-2], layout)

    @property
    def kinds(self) -> list[str]:
        """The entity kinds it trained on (older exports: every kind)."""
        return list(self.config.get("kinds") or [])

    @torch.inference_mode()
    def attention(self, image: Image.Image | str | Path, label: str) -> np.ndarray:
        """Where the label looked: its attention over the cells of the larger (second-to-last) feature
        map, H × W, rescaled to sum to 1 (the rest of its attention went to the smaller map and the
        pooled embedding)."""
        batch = self.embedder.preprocess(open_rgb(image))[None].to(self.embedder.device)
        feats = visual_features(self.embedder.model, batch)
        _, attn = self.model(feats, with_attention=True)
        k = self.labels.index(label)
        first = feats[0]
        cells = first.shape[2] * first.shape[3]
        cell_attn = attn[0, k, :cells]
        return (cell_attn / cell_attn.sum().clamp_min(1e-12)).reshape(first.shape[2], first.shape[3]).numpy()
