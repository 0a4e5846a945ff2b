"""Contrastive training of mmkb's open_clip embedder on worldkb (`mmkb train clip`).

Each step samples a batch of distinct entities. Every entity contributes two views, often
of different renderings (Google vs Twitter emoji; svg-country-flags flag vs the flag emoji):
a reference-like one (clean or barely changed, as the index holds it) and a query-like one
(heavily augmented, as a photo would show it), and one of its captions. The loss is the symmetric InfoNCE of CLIP (Radford et
al. 2021, arXiv 2103.00020) between the two views (image↔image, as in SimCLR, Chen et al.
2020, arXiv 2002.05709), plus, weighted by `text_weight`, between each view and the caption
(image↔text), plus InfoNCE of each view against a learned proxy of every training entity
(NormFace, Wang et al. 2017, arXiv 1704.06369), which makes every step informative about
all entities; each term has its own learnable temperature. Half of every batch is drawn
from a few look-alike groups (an emoji subcategory, the countries) as hard negatives.

The run keeps a full training state in `run_dir/last.pt`, saved every few minutes and
resumed automatically; the learning rate follows the larger of step and time progress, so a
run that is stopped by `minutes` still ends its cosine schedule. The result is exported as
fp16 safetensors with an `open_clip_config.json` (model and preprocessing), which
`open_clip.create_model_and_transforms("local-dir:<folder>")` loads.

    python -m index.clip.train --minutes 45
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from index.clip import CHECKPOINT_DIR, DEFAULT_CONFIG, RESIZE_MODES, export_config, own_configs, random_init_expected, \
    register_configs
from index.clip.augment import augment_light, distort, query_view
from index.clip.data import HELD_OUT_FRACTION, Entity, load_entities, load_image, split
from index.clip.icons import load_icons
from index.embedders import open_rgb
from index.files import replace_dir
from index.training import other_run, same_path, say_spent, say_run, training_device, training_paths


@dataclass
class TrainConfig:
    """Everything that defines a run besides the model config (saved with the checkpoint)."""

    config: str = DEFAULT_CONFIG
    steps: int | None = 6000  # None: stop by time only
    minutes: float | None = 45.0  # None: stop by steps only
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: float = 0.04  # fraction of the run
    text_weight: float = 0.5
    text_batch: int = 96  # captions per step (the first entities of the shuffled batch)
    proxy_weight: float = 1.0
    hard_negative_fraction: float = 0.5
    cross_rendering: float = 0.8  # chance the two views come from different renderings
    drawn_fraction: float = 0.25  # chance the query view is first redrawn as a flat outlined icon
    init_from: str | None = None  # warm start: open_clip weights (safetensors) to begin from
    # How an image becomes the square input: "squash" (the whole image, aspect not kept) or open_clip's
    # "shortest" (resize the short side, centre crop: cuts the hoist and fly ends off a 4:3 flag).
    resize_mode: str = "squash"
    seed: int = 0
    max_entities: int | None = None  # train on the first N entities only (tests)
    # Extra classes: icon concepts drawn by several icon sets (`index.clip.icons`), a folder with their
    # manifest; `icon_share` of each batch's non-hard-negative half comes from them.
    icons: str | None = None
    icon_share: float = 0.4


# --- data ---------------------------------------------------------------------------------

class Batches(torch.utils.data.IterableDataset):
    """Training batches from `start` on; batch `i` depends only on (seed, i), so resuming
    continues the same sequence."""

    def __init__(self, entities: list[Entity], tokens: list[torch.Tensor], preprocess, cfg: TrainConfig,
                 start: int, extra: int = 0) -> None:
        """`extra`: how many of `entities`, at the end, are extra classes (icon concepts) drawn
        at `cfg.icon_share` of the random part of a batch rather than in proportion to their number."""
        self.entities, self.tokens, self.preprocess, self.cfg, self.start = entities, tokens, preprocess, cfg, start
        self.extra = extra
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(entities):
            groups.setdefault(e.group, []).append(i)
        self.groups = [g for g in groups.values() if len(g) >= 2]

    def _members(self, rng: np.random.Generator) -> np.ndarray:
        n, b = len(self.entities), min(self.cfg.batch_size, len(self.entities))
        chosen: list[int] = []
        want = min(int(b * self.cfg.hard_negative_fraction), sum(map(len, self.groups)))
        while len(chosen) < want and self.groups:
            group = self.groups[int(rng.integers(len(self.groups)))]
            chosen += [int(i) for i in rng.permutation(group)[:want - len(chosen)]]
            chosen = list(dict.fromkeys(chosen))
        rest = np.setdiff1d(np.arange(n), chosen)
        if not self.extra:
            return np.concatenate([np.array(chosen, int), rng.choice(rest, b - len(chosen), replace=False)])
        main, extra = rest[rest < n - self.extra], rest[rest >= n - self.extra]
        k = min(len(extra), round((b - len(chosen)) * self.cfg.icon_share))
        k = max(k, b - len(chosen) - len(main))  # more icons when too few entities are left to fill the batch
        return np.concatenate([np.array(chosen, int), rng.choice(extra, k, replace=False),
                               rng.choice(main, b - len(chosen) - k, replace=False)])

    def _reference_view(self, path: Path, rng: np.random.Generator) -> torch.Tensor:
        return self.preprocess(open_rgb(augment_light(load_image(path), rng)))

    def _query_view(self, path: Path, rng: np.random.Generator, distractors: list) -> torch.Tensor:
        return self.preprocess(open_rgb(query_view(load_image(path), rng, self.cfg.drawn_fraction, distractors)))

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, step])
        members = rng.permutation(self._members(rng))
        a, b, texts = [], [], []
        for i in members:
            e = self.entities[i]
            first = int(rng.integers(len(e.images)))
            second = first
            if len(e.images) > 1 and rng.random() < self.cfg.cross_rendering:
                second = (first + 1 + int(rng.integers(len(e.images) - 1))) % len(e.images)
            others = [load_image(self.entities[j].images[0]) for j in rng.choice(members, 2)]
            a.append(self._reference_view(e.images[first], rng))
            b.append(self._query_view(e.images[second], rng, others))
            if len(texts) < self.cfg.text_batch:
                texts.append(self.tokens[i][int(rng.integers(len(self.tokens[i])))])
        return {"a": torch.stack(a), "b": torch.stack(b), "text": torch.stack(texts),
                "entity": torch.as_tensor(members)}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # With several data-loading processes, worker w makes batches start+w, start+w+n, …; the
        # loader takes from the workers in turn, so the sequence is the same for any worker count.
        info = torch.utils.data.get_worker_info()
        step, stride = self.start + (info.id if info else 0), info.num_workers if info else 1
        while True:
            yield self.batch(step)
            step += stride


def _init_file(init_from: str | Path) -> Path:
    """A warm start's weights file, from a safetensors file, a checkpoint folder or a shipped checkpoint's name."""
    path = Path(init_from)
    if not path.exists() and (CHECKPOINT_DIR / str(init_from)).is_dir():
        path = CHECKPOINT_DIR / str(init_from)
    file = path / "open_clip_model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"--init-from {init_from}: no such weights; give an open_clip safetensors file, a "
                         f"checkpoint folder or a shipped checkpoint's name such as {DEFAULT_CONFIG}")
    return file


def _same_start(saved: str | None, init_file: Path | None) -> bool:
    """Whether a saved run began from the weights `init_file` (however the path was spelled then)."""
    if saved is None or init_file is None:
        return saved is None and init_file is None
    try:
        return same_path(_init_file(saved), init_file)
    except ValueError:  # the weights it began from are gone
        return False


def _image_size_of(weights: Path) -> int | None:
    """The input size an export was trained at, from its `open_clip_config.json` (None: unknown)."""
    try:
        return int(export_config(weights)["model_cfg"]["vision_cfg"]["image_size"])
    except (ValueError, KeyError, TypeError):
        return None


def _warm_start(model: torch.nn.Module, file: Path) -> None:
    """Load open_clip weights from a safetensors file into `model`: the same config, or the same
    network at another input size (the attention pool's positions are then resized)."""
    from safetensors.torch import load_file

    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(file)).items()}
    mine = model.state_dict()
    pool = "visual.attnpool.positional_embedding"
    if pool in state and pool in mine and state[pool].shape != mine[pool].shape:
        state[pool] = resize_pool_positions(state[pool], mine[pool].shape[0])
        print(f"warm start from another input size: attention-pool positions resized to {mine[pool].shape[0] - 1}",
              file=sys.stderr)
    misfit = sorted(set(mine) ^ set(state)) + [k for k in mine.keys() & state.keys() if mine[k].shape != state[k].shape]
    if misfit:
        raise ValueError(f"--init-from {file} holds weights of another model config ({len(misfit)} tensors differ, "
                         f"e.g. {misfit[:3]}); give a checkpoint of this config")
    model.load_state_dict(state)
    print(f"warm start from {file}", file=sys.stderr)


def resize_pool_positions(positions: torch.Tensor, tokens: int) -> torch.Tensor:
    """A ModifiedResNet attention pool's position embeddings (the pooled token, then a square
    grid) resized to `tokens` rows by bilinear interpolation of the grid, so weights trained at
    one input size warm-start a model of another (the convolutions do not depend on it)."""
    old, new = math.isqrt(positions.shape[0] - 1), math.isqrt(tokens - 1)
    if old * old + 1 != positions.shape[0] or new * new + 1 != tokens:
        raise ValueError(f"attention-pool positions of {positions.shape[0]} and {tokens} rows are not "
                         "a pooled token plus a square grid")
    grid = positions[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bilinear", align_corners=False)
    return torch.cat([positions[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1)])


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


# --- evaluation during training -------------------------------------------------------------

@torch.inference_mode()
def _embed(model, preprocess, images: list, batch: int = 256) -> torch.Tensor:
    out = []
    device = next(model.parameters()).device
    for i in range(0, len(images), batch):
        x = torch.stack([preprocess(open_rgb(im)) for im in images[i:i + batch]]).to(device)
        out.append(F.normalize(model.encode_image(x).float(), dim=-1).cpu())
    return torch.cat(out)


def validate(model, preprocess, held_out: list[Entity], countries: list[Entity], seed: int = 1234) -> dict[str, float]:
    """Recall@1 on distorted ("mixed") renderings: held-out emoji across vendors, and
    country flags from the Twitter flag emoji to the svg-country-flags flag."""
    was_training = model.training
    model.eval()

    def recall(index_paths: list[Path], query_paths: list[Path]) -> float:
        rng = np.random.default_rng(seed)
        queries = [distort(load_image(p), "mixed", rng) for p in query_paths]
        sims = _embed(model, preprocess, queries) @ _embed(model, preprocess, [load_image(p) for p in index_paths]).T
        return float((sims.argmax(1) == torch.arange(len(query_paths))).float().mean())

    def style(e: Entity, name: str) -> Path:
        return e.images[e.styles.index(name)]

    metrics = {}
    if held_out:
        g2t = recall([style(e, "emoji-google") for e in held_out], [style(e, "emoji-twitter") for e in held_out])
        t2g = recall([style(e, "emoji-twitter") for e in held_out], [style(e, "emoji-google") for e in held_out])
        metrics["val_emoji_r1"] = (g2t + t2g) / 2
    if countries:
        metrics["val_flag_r1"] = recall([style(e, "flag") for e in countries],
                                        [style(e, "emoji-twitter") for e in countries])
    model.train(was_training)
    return metrics


# --- training -------------------------------------------------------------------------------

def _info_nce(x: torch.Tensor, y: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over matching rows of two normalised batches (CLIP's loss)."""
    logits = log_scale.exp().clamp(max=100) * x @ y.T
    target = torch.arange(len(x), device=x.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class ContrastiveObjective(torch.nn.Module):
    """The CLIP model plus what only training needs (not exported): an image↔image
    temperature and one learned proxy vector per training entity."""

    def __init__(self, model: torch.nn.Module, entities: int, dim: int) -> None:
        super().__init__()
        self.model = model
        self.image_logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.proxy_logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.proxies = torch.nn.Parameter(0.1 * torch.randn(entities, dim))

    def forward(self, batch: dict, cfg: TrainConfig) -> dict:
        both = torch.cat([batch["a"], batch["b"]]).contiguous(memory_format=torch.channels_last)
        images = self.model.encode_image(both, normalize=True)
        fa, fb = images.chunk(2)
        ft = self.model.encode_text(batch["text"], normalize=True)
        image = _info_nce(fa, fb, self.image_logit_scale)
        n = len(ft)  # captions for the first n entities only: the text tower is a quarter of the cost
        caption = (_info_nce(fa[:n], ft, self.model.logit_scale) + _info_nce(fb[:n], ft, self.model.logit_scale)) / 2
        # InfoNCE against every training entity at once, through its proxy (NormFace/ProxyNCA):
        # each view gets a gradient from all entities every step, not only the batch's.
        logits = self.proxy_logit_scale.exp().clamp(max=100) * images @ F.normalize(self.proxies, dim=-1).T
        proxy = F.cross_entropy(logits, batch["entity"].repeat(2))
        loss = image + cfg.text_weight * caption + cfg.proxy_weight * proxy
        return {"loss": loss, "image": image.detach(), "text": caption.detach(), "proxy": proxy.detach()}


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, rest, proxies = [], [], []
    for name, p in module.named_parameters():
        if name == "proxies":
            proxies.append(p)
            continue
        # Matrices and kernels decay; norms, biases, embeddings and temperatures do not.
        no_decay = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (rest if no_decay else decay).append(p)
    # Proxies only get a gradient when their entity is in the batch: they learn 10x faster.
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": rest, "weight_decay": 0.0, "lr_scale": 1.0},
            {"params": proxies, "weight_decay": 0.0, "lr_scale": 10.0}]


def _lr(cfg: TrainConfig, progress: float) -> float:
    if progress < cfg.warmup:
        return cfg.lr * max(progress / cfg.warmup, 0.01)
    t = (progress - cfg.warmup) / max(1 - cfg.warmup, 1e-8)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def export(model: torch.nn.Module, model_cfg: dict, cfg: TrainConfig, out: Path, summary: dict) -> Path:
    """fp16 safetensors + config.json + MODEL_CARD.md in `out`: written to a folder beside it that
    then takes its place, so an interrupted export leaves the old checkpoint whole."""
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "open_clip_model.safetensors"), metadata={"format": "pt", "config": cfg.config})
    record = {k: v for k, v in summary.items() if k != "previous_card"}
    preprocess_cfg = {"resize_mode": cfg.resize_mode}
    (tmp / "config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg,
                                                 "train_cfg": asdict(cfg), "summary": record}, indent=2) + "\n")
    # open_clip's own folder format: `create_model_and_transforms("local-dir:<out>")` reads the
    # model and its preprocessing from it.
    (tmp / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg},
                                                          indent=2) + "\n")
    (tmp / "MODEL_CARD.md").write_text(_model_card(model_cfg, cfg, summary, tmp / "open_clip_model.safetensors"))
    return replace_dir(tmp, out) / "open_clip_model.safetensors"


def command_line(cfg: TrainConfig, run_dir: Path, out: Path, device: str, workers: int) -> str:
    """The `mmkb train clip` command that repeats a run (its data and schedule are all in `cfg`)."""
    parts = ["mmkb train clip", f"--config {cfg.config}", f"--minutes {cfg.minutes}", f"--steps {cfg.steps}",
             f"--batch-size {cfg.batch_size}", f"--lr {cfg.lr}", f"--seed {cfg.seed}",
             f"--drawn-fraction {cfg.drawn_fraction}", f"--resize-mode {cfg.resize_mode}",
             f"--run-dir {run_dir}", f"--out {out}"]
    if cfg.init_from:
        parts.append(f"--init-from {cfg.init_from}")
    if cfg.icons:
        parts.append(f"--icons {cfg.icons} --icon-share {cfg.icon_share}")
    if device != "cpu":
        parts.append(f"--device {device} --workers {workers}")
    return " ".join(parts)


_RESIZE_WORDS = {"squash": "the whole image resized to the square input (aspect not kept, nothing cut off)",
                 "shortest": "open_clip's default preprocessing (resize the short side, centre crop)"}


_STYLE_WORDS = {"emoji-google": "Google (Apache-2.0)", "emoji-twitter": "Twitter (CC-BY-4.0)",
                "emoji-fluent-flat": "Microsoft Fluent flat (MIT)", "emoji-fluent-modern": "Microsoft Fluent modern (MIT)",
                "emoji-emojione": "EmojiOne 2 (CC-BY-4.0)", "emoji-noto-v1": "Noto blob (Apache-2.0)",
                "emoji-emojione-v1": "EmojiOne 1 (CC-BY-SA-4.0)", "emoji-fxemoji": "Firefox OS (Apache-2.0)",
                "emoji-streamline": "Streamline (CC-BY-4.0)"}


def _emoji_renderings() -> str:
    """How many emoji each rendering style draws, as the model card lists them."""
    counts = Counter(st for e in load_entities() if e.kind == "emoji" for st in set(e.styles))
    order = [*_STYLE_WORDS, *sorted(set(counts) - set(_STYLE_WORDS))]
    return "renderings: " + ", ".join(f"{_STYLE_WORDS.get(st, st)} {counts[st]}" for st in order if counts[st])


def _icons_paragraph(cfg: TrainConfig, s: dict) -> str:
    """The model card's words on the icon concepts trained beside worldkb, if any."""
    if not cfg.icons:
        return ""
    return (f"\nAlso trained on {s.get('icon_concepts', 0)} icon concepts (`index.clip.icons`, built by "
            f"`python -m index.clip.icons {cfg.icons}`): everyday things each drawn by several independent Iconify "
            f"icon sources (MIT, Apache-2.0, ISC, CC-BY-4.0; no emoji set), {cfg.icon_share:.0%} of each batch's "
            "random half; concepts named like a held-out emoji are left out.\n")


def _model_card(model_cfg: dict, cfg: TrainConfig, s: dict, path: Path) -> str:
    size_mb = path.stat().st_size / 1e6
    metrics = "\n".join(f"| {k} | {v:.3f} |" for k, v in s.get("metrics", {}).items())
    earlier = s.get("previous_card") or ""
    warm = origin = ""
    if cfg.init_from:
        origin = f"fine-tuned from `{cfg.init_from}` (its own training: \"Earlier training\" below)" if earlier \
            else f"fine-tuned from `{cfg.init_from}` (no model card came with it)"
        warm = f"- Warm start: the weights then in `{cfg.init_from}`"
        size = model_cfg["vision_cfg"]["image_size"]
        if s.get("init_image_size") and s["init_image_size"] != size:
            warm += (f", trained at a {s['init_image_size']} px input (the convolutions carry over; the "
                     f"attention pool's position embeddings were resized to the {size} px grid)")
        warm += "\n"
    if earlier:
        body = earlier.split("\n", 1)[1] if "\n" in earlier else ""  # without its title line
        earlier = "\n## Earlier training (the warm start's own card)\n" + body.replace("\n## ", "\n### ")
    return f"""# {cfg.config}

An open_clip model (ModifiedResNet image tower, transformer text tower)
{origin or 'trained from scratch'} by mmkb on its starter KB, worldkb. It embeds images and texts into one
{model_cfg['embed_dim']}-dimensional space for entity recognition (which country's flag,
which emoji) and text→image search over the KB.

- Parameters: {s['params'] / 1e6:.2f} M ({s['params_visual'] / 1e6:.2f} M image tower); weights fp16,
  {size_mb:.1f} MB; input {model_cfg['vision_cfg']['image_size']} px, {_RESIZE_WORDS[cfg.resize_mode]}.
- Load: `open_clip.create_model_and_transforms("local-dir:<this folder>")` (model and preprocessing
  from `open_clip_config.json`); or `index.clip.register_configs(); open_clip.create_model_and_transforms(
  "{cfg.config}", pretrained="{path.name}", image_resize_mode="{cfg.resize_mode}")`; or
  `index.embedders.load_image_embedder("{cfg.config}")`.

## Data

worldkb (`index/worldkb/data/manifest.jsonl`): 250 countries (the svg-country-flags flag,
public domain, and the Google (Apache-2.0) and Twitter (CC-BY-4.0) flag emoji) and 1620
emoji ({_emoji_renderings()}). Captions are built from each entity's manifest
record: its name, aliases, category and OpenMoji keywords (CC-BY-SA-4.0), a short description.

Held out: {s['held_out']} emoji entities, a fixed {HELD_OUT_FRACTION:.0%} chosen by a hash of the key
(`index.clip.data.is_held_out`), are never trained on; all countries are. Trained on
{s['trained_entities']} entities. flag-icons and OpenMoji images (the benchmark queries,
`index/worldkb/queries/`) are never used in training.
{_icons_paragraph(cfg, s)}
## Training

Two views per entity, from different renderings with probability {cfg.cross_rendering}: a
reference-like one (clean, or a slight crop/rotation/exposure change) and a query-like one
(perspective, rotation, crop/zoom, occlusion, clutter and random backgrounds, blur, noise,
JPEG, mild brightness/contrast; `index/clip/augment.py`); {cfg.drawn_fraction:.0%} of query views are first
redrawn as a flat outlined icon (`augment.drawn`: the image's own palette, dark outlines),
the way another icon set draws the same emoji. Loss: symmetric InfoNCE
image↔image + {cfg.text_weight} × image↔caption (one sampled caption for {cfg.text_batch} of the
entities per step) + {cfg.proxy_weight} × image↔entity proxies
(one learned vector per training entity, dropped at export), learnable temperatures; half of
each batch from look-alike groups (emoji subcategory, countries) as hard negatives.
AdamW (lr {cfg.lr}, weight decay {cfg.weight_decay}, warm-up then cosine), batch
{cfg.batch_size} entities, fp32, seed {cfg.seed}.

- Steps: {s['step']} ({s['step'] * cfg.batch_size * 2} image views)
- Time: {s['elapsed_s'] / 60:.1f} min of training on {s['machine']}; the learning rate follows
  the larger of step and time progress, so the step count depends on the machine's other load
- Command: `{s['command']}` (resumes from `{s.get('run_dir', 'runs/clip')}/last.pt` when interrupted)
{warm}
## Validation at the end of training

Recall@1 on "mixed"-distorted renderings: `val_emoji_r1` = held-out emoji, Twitter → Google
and Google → Twitter among the held-out set; `val_flag_r1` = Twitter flag emoji →
svg-country-flags flags of the 250 countries (entities seen in training, renderings paired).
See `benchmarks/results/entity_recognition.md` for the full benchmark.

| metric | value |
|---|---|
{metrics}
{earlier}"""


def train_clip(minutes: float | None = 45.0, steps: int | None = 6000, config: str = DEFAULT_CONFIG,
               out: str | Path | None = None, resume: bool = True, run_dir: str | Path | None = None,
               batch_size: int = 256, lr: float = 2e-3, seed: int = 0, workers: int = 1, threads: int = 1,
               save_minutes: float = 3.0, eval_minutes: float = 5.0, max_entities: int | None = None,
               progress: bool = True, device: str = "cpu", init_from: str | Path | None = None,
               drawn_fraction: float = 0.25, resize_mode: str = "squash", icons: str | Path | None = None,
               icon_share: float = 0.4) -> Path:
    """Train `config` on worldkb for at most `steps` steps or `minutes` minutes of training
    time (either may be None, not both), then export it to `out` (default:
    MMKB_HOME/models/<config>; the shipped weights are in index/clip/checkpoints/<config>).
    Returns the exported safetensors path; the run's summary is in `out/config.json`, its
    per-step history in `run_dir/last.pt` (default: MMKB_HOME/runs/<config>). `init_from`
    starts a new run from existing weights of the same config (e.g. the shipped checkpoint)
    instead of a random init; a run with saved state in `run_dir` resumes from that instead."""
    import open_clip

    if steps is None and minutes is None:
        raise ValueError("train_clip needs `steps` or `minutes` to know when to stop")
    if (minutes is not None and minutes <= 0) or (steps is not None and steps < 1) or batch_size < 1:
        raise ValueError(f"--minutes must be above 0 and --steps and --batch-size at least 1 "
                         f"(got {minutes}, {steps}, {batch_size})")
    if lr <= 0 or workers < 0 or threads < 1 or not 0 <= drawn_fraction <= 1:
        raise ValueError(f"--lr must be above 0, --workers 0 or more, --drawn-fraction from 0 to 1 "
                         f"(got {lr}, {workers}, {drawn_fraction})")

    if not 0 <= icon_share <= 1:
        raise ValueError(f"--icon-share is the share of a batch's random half drawn from the icons: "
                         f"give a number from 0 to 1, not {icon_share}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize_mode!r}; choose from {', '.join(RESIZE_MODES)}")
    register_configs()
    if config not in open_clip.list_models():
        raise ValueError(f"unknown --config {config!r}: mmkb's own are {', '.join(sorted(own_configs()))} "
                         f"(index/clip/model_configs); any other open_clip model name works too")
    dev = training_device(device)
    # One compute thread plus one data-loading process use the 2 cores; augmentation is about
    # 40% of the CPU time of a step, so a second compute thread gains little.
    torch.set_num_threads(threads)
    cfg = TrainConfig(config=config, steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, seed=seed,
                      max_entities=max_entities, drawn_fraction=drawn_fraction,
                      icons=str(icons) if icons else None, icon_share=icon_share,
                      init_from=str(init_from) if init_from else None, resize_mode=resize_mode)
    out, run_dir = training_paths(config, out, run_dir)
    say_run(out, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "last.pt"

    torch.manual_seed(seed)
    with random_init_expected():
        model, _, preprocess = open_clip.create_model_and_transforms(config, image_resize_mode=resize_mode)
    model_cfg = open_clip.get_model_config(config)
    init_file = _init_file(init_from) if init_from else None
    card = init_file.parent / "MODEL_CARD.md" if init_file else None
    previous_card = card.read_text() if card and card.is_file() else None  # before `out` may overwrite it
    init_image_size = _image_size_of(init_file) if init_file else None
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = model.to(dev, memory_format=torch.channels_last)  # ~1.3x faster convolutions on CPU
    tokenizer = open_clip.get_tokenizer(config)

    entities = load_entities()
    train_set, held_out = split(entities)
    if max_entities:
        train_set, held_out = train_set[:max_entities], held_out[:max_entities]
    extra = load_icons(Path(icons)) if icons else []
    if max_entities:
        extra = extra[:max_entities]
    main_entities = len(train_set)
    train_set = train_set + extra
    countries = [e for e in train_set if e.kind == "country"]
    tokens = [tokenizer(list(e.texts)) for e in train_set]

    objective = ContrastiveObjective(model, len(train_set), model_cfg["embed_dim"]).to(dev)
    optimizer = torch.optim.AdamW(_param_groups(objective, cfg.weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)

    step, elapsed, history, metrics = 0, 0.0, [], {}
    resumed = False
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        saved = state["train_cfg"]
        if not _same_start(state["init_file"] if "init_file" in state else saved.get("init_from"), init_file):
            raise other_run(state_path, f"--init-from {saved['init_from']}" if saved.get("init_from")
                            else "a random init (no --init-from)")
        if saved.get("icons") != cfg.icons or (cfg.icons and saved.get("icon_share") != cfg.icon_share):
            raise other_run(state_path, f"--icons {saved.get('icons')} --icon-share {saved.get('icon_share')}")
        trained_mode = saved.get("resize_mode", "shortest")  # runs before the option: open_clip's
        if trained_mode != cfg.resize_mode:
            raise other_run(state_path, f"--resize-mode {trained_mode}")
        if saved["config"] != config or state["model_cfg"] != model_cfg:
            raise other_run(state_path, f"--config {saved['config']}")
        if state["objective"]["proxies"].shape != objective.proxies.shape:
            raise other_run(state_path, f"other training entities ({state['objective']['proxies'].shape[0]} classes, "
                                        f"not {objective.proxies.shape[0]}: another KB or --icons folder)")
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, history, metrics = state["step"], state["elapsed"], state["history"], state["metrics"]
        resumed = True
        print(f"resumed {state_path} at step {step} ({elapsed / 60:.1f} min)", file=sys.stderr)
    if init_file is not None and not resumed:
        _warm_start(model, init_file)
        model.eval()  # proxies start at the entities' reference embeddings, not at random (batch norm: running stats)
        with torch.no_grad():
            objective.proxies.copy_(_embed(model, preprocess, [load_image(e.images[0]) for e in train_set]))

    def save() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"objective": objective.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": elapsed, "history": history, "metrics": metrics, "train_cfg": asdict(cfg),
                    "model_cfg": model_cfg, "init_file": str(init_file.resolve()) if init_file else None}, tmp)
        tmp.replace(state_path)

    def progress_of() -> float:
        return max(step / steps if steps else 0.0, elapsed / (minutes * 60) if minutes else 0.0)

    if resumed and progress_of() >= 1:
        say_spent(state_path, f"{step} steps in {elapsed / 60:.1f} min",
                  "give a larger --minutes or --steps to train on")
    dataset = Batches(train_set, tokens, preprocess, cfg, step, extra=len(extra))
    loader = torch.utils.data.DataLoader(dataset, batch_size=None,
                                         num_workers=workers, worker_init_fn=_worker_init if workers else None,
                                         prefetch_factor=2 if workers else None, persistent_workers=False,
                                         pin_memory=dev.type == "cuda")
    objective.train()
    bar = tqdm(total=steps, initial=step, desc=f"train {config}", disable=not progress, dynamic_ncols=True)
    last_save = last_eval = time.time()
    tick = time.time()
    batches = iter(loader)
    while progress_of() < 1:
        batch = {k: v.to(dev, non_blocking=True) for k, v in next(batches).items()}
        for group in optimizer.param_groups:
            group["lr"] = _lr(cfg, progress_of()) * group["lr_scale"]
        losses = objective(batch, cfg)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        step += 1
        now = time.time()
        elapsed += now - tick
        tick = now
        record = {"step": step, "elapsed": round(elapsed, 1), "lr": optimizer.param_groups[0]["lr"],
                  **{k: round(float(v.detach()), 4) for k, v in losses.items()}}
        if now - last_eval > eval_minutes * 60:
            metrics = validate(model, preprocess, held_out, countries)
            record.update(metrics)
            last_eval = time.time()
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", img=f"{record['image']:.3f}", txt=f"{record['text']:.3f}",
                        proxy=f"{record['proxy']:.3f}",
                        **{k.removeprefix("val_"): f"{v:.3f}" for k, v in metrics.items()})
        if now - last_save > save_minutes * 60:
            save()
            last_save = time.time()
        tick = time.time()  # evaluation and saving do not count as training time
    bar.close()
    del batches, loader

    metrics = validate(model, preprocess, held_out, countries)
    save()
    model.eval()
    summary = {"step": step, "elapsed_s": round(elapsed, 1), "metrics": metrics,
               "final_loss": float(np.mean([h["loss"] for h in history[-20:]])) if history else None,
               "params": sum(p.numel() for p in model.parameters()),
               "params_visual": sum(p.numel() for p in model.visual.parameters()),
               "trained_entities": main_entities, "icon_concepts": len(extra), "held_out": len(held_out),
               "machine": (f"{torch.cuda.get_device_name(dev)} GPU" if dev.type == "cuda" else
                           f"{platform.machine()} CPU: {torch.get_num_threads()} compute thread(s)")
                          + f" + {workers} data-loading process(es)",
               "command": command_line(cfg, run_dir, out, device, workers), "run_dir": str(run_dir),
               "first_loss": history[0]["loss"] if history else None, "previous_card": previous_card,
               "init_image_size": init_image_size}
    path = export(model, model_cfg, cfg, out, summary)
    print(f"exported {path} (step {step}, {elapsed / 60:.1f} min, {metrics}); training state in {state_path}")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m index.clip.train", description=train_clip.__doc__)
    p.add_argument("--minutes", type=float, default=45.0)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="mmkb-clip-tiny-64 (shipped, 64 px) or mmkb-clip-tiny (the same network at 32 px)")
    p.add_argument("--out", default=None, help="export folder (default: MMKB_HOME/models/<config>)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--run-dir", default=None, help="training state (default: MMKB_HOME/runs/<config>)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-entities", type=int, default=None)
    p.add_argument("--init-from", default=None, help="start from these open_clip weights (fine-tuning)")
    p.add_argument("--drawn-fraction", type=float, default=0.25,
                   help="share of query views redrawn as flat outlined icons (another icon set's style)")
    p.add_argument("--resize-mode", choices=RESIZE_MODES, default="squash",
                   help="squash: the whole image into the square input; shortest: open_clip's centre crop")
    p.add_argument("--device", default="cpu", help="cpu or cuda (then give --workers as many CPU cores as spare)")
    p.add_argument("--icons", default=None,
                   help="also train on the icon concepts in this folder (`python -m index.clip.icons DIR` builds it)")
    p.add_argument("--icon-share", type=float, default=0.4,
                   help="share of each batch's random half drawn from the icon concepts")
    args = p.parse_args(argv)
    train_clip(minutes=args.minutes, steps=args.steps, config=args.config, out=args.out, resume=args.resume,
               run_dir=args.run_dir, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
               workers=args.workers, threads=args.threads, max_entities=args.max_entities, device=args.device,
               init_from=args.init_from, drawn_fraction=args.drawn_fraction, resize_mode=args.resize_mode,
               icons=args.icons, icon_share=args.icon_share)


if __name__ == "__main__":
    main()
