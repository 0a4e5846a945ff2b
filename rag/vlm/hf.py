"""Any transformers image-text-to-text model (Qwen2-VL, LLaVA …) behind `rag.vlm.base.VLM`.

Prompts go through the processor's chat template (the image, then the text); retrieved
documents are listed in the prompt as numbered passages. Answers and semantic tags are
generated greedily. Tags are read as in MMKB-RAG (arXiv 2504.10074): the prompt asks for exactly
one of two tag tokens, and one forward pass gives the next-token logits of the pair, whose
softmax (`two_way`) is the tag's probability. `load` adds `[Ret]`/`[NoRet]`/`[Rel]`/`[NoRel]` to
the tokenizer as special tokens when missing, so a model fine-tuned on them can emit them; an
untuned model's tag scores only reflect how it ranks two unseen tokens.

MCT (`consistency`) scores each document of the kept set with its own prompt, which lists the
whole set and asks about passage k: one batched forward pass per document. This gives a graded
P(consistent) per document, where generating a list of consistent indices would give only 0 or 1.

Images and embeddings: the pipeline embeds the query image once with `embed_images` (open_clip
vectors, also used to search the index) and then hands that vector row back to every method. A
generative VLM needs the pixels, so `embed_images` remembers the image behind each row it returns
(a small LRU cache keyed by the row's float32 bytes), and every method accepts either a PIL image
or such a row. A row this instance did not compute (or has evicted) raises `UnknownEmbedding`.
"""
from __future__ import annotations

import inspect
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rag.vlm.base import NOREL, NORET, REL, RET, TAG_TOKENS, Document, SemanticTags, two_way

ImageLike = Image.Image | np.ndarray

TAG_REPLY = "Reply with exactly one of {yes} or {no}."
PROMPTS = {
    "answer": "Answer the question about the image in a few words.\nQuestion: {question}",
    "read": "{passages}\nUsing the passages, answer the question about the image in a few words.\n"
            "Question: {question}",
    "ret": "Question: {question}\nCan this question be answered from the image alone? Reply {yes} if "
           "external knowledge must be retrieved, {no} if not. " + TAG_REPLY,
    "srt": "{passages}\nQuestion: {question}\nIs this passage relevant to the image and the question? "
           "Reply {yes} if relevant, {no} if not. " + TAG_REPLY,
    "mct": "{passages}\nQuestion: {question}\nIs passage [{k}] about the entity in the image, and consistent "
           "with the other passages? Reply {yes} if it is, {no} if not. " + TAG_REPLY,
    "tags": "Question: {question}\nName what the image shows and what the question asks, in one line of the "
            "form: entity: <name>; category: <kind of thing>; attributes: <what is asked, comma separated>",
}
_FIELD = re.compile(r"\b(entity|category|attributes?)\s*[:=]\s*([^;\n|]*)", re.IGNORECASE)
_EMPTY = {"", "none", "unknown", "n/a", "na", "null", "-", "?"}


class UnknownEmbedding(KeyError):
    """An image embedding this HFVLM did not compute, so it has no pixels for it."""


def _auto_model_class():
    import transformers

    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        if hasattr(transformers, name):
            return getattr(transformers, name)
    raise ImportError(f"transformers {transformers.__version__} has no AutoModelForImageTextToText")


def add_tag_tokens(tokenizer, model) -> list[int]:
    """Make each tag a single special token (adding those missing) and grow the embeddings to fit."""
    from tokenizers import AddedToken

    def single(tag: str) -> bool:
        return len(tokenizer.encode(tag, add_special_tokens=False)) == 1

    missing = [AddedToken(t, special=True, normalized=False) for t in TAG_TOKENS
               if not single(t) or t not in tokenizer.all_special_tokens]
    if missing:
        # transformers 5 calls the list "extra_special_tokens", 4.x "additional_special_tokens".
        key = ("extra_special_tokens" if "replace_extra_special_tokens" in
               inspect.signature(tokenizer.add_special_tokens).parameters else "additional_special_tokens")
        tokenizer.add_special_tokens({key: missing}, **{f"replace_{key}": False})
    # Only ever grow: many checkpoints pad the embedding matrix past len(tokenizer).
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    ids = [tokenizer.convert_tokens_to_ids(t) for t in TAG_TOKENS]
    if not all(single(t) for t in TAG_TOKENS):
        raise ValueError(f"the tokenizer still splits the tag tokens {TAG_TOKENS}")
    return ids


def parse_semantic_line(text: str) -> tuple[str | None, str | None, list[str]]:
    """(entity, category, attributes) from an "entity: …; category: …; attributes: …" line."""
    fields: dict[str, str] = {}
    for key, value in _FIELD.findall(text):
        key = "attributes" if key.lower().startswith("attribute") else key.lower()
        fields.setdefault(key, value.strip().strip("\"'<>.").strip())

    def value(key: str) -> str | None:
        v = fields.get(key, "")
        return None if v.lower() in _EMPTY else v

    attrs = [a.strip().strip("\"'<>.").strip() for a in re.split(r"[,/]", fields.get("attributes", ""))]
    return value("entity"), value("category"), [a for a in attrs if a.lower() not in _EMPTY]


class HFVLM:
    """A transformers image-text-to-text model and its processor, as an mmkb VLM (the tag tokens are
    added to the tokenizer, and the embeddings grown, when missing)."""

    def __init__(self, model, processor, image_embedder=None, name: str = "hf", batch_size: int = 4,
                 max_new_tokens: int = 32, max_tag_line_tokens: int = 48, max_passage_chars: int = 1500,
                 cache_size: int = 256) -> None:
        self.model, self.processor, self.name = model.eval(), processor, name
        self.tokenizer = processor.tokenizer
        add_tag_tokens(self.tokenizer, model)
        self.tokenizer.padding_side = "left"  # generation appends to the right end of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size, self.max_new_tokens, self.max_tag_line_tokens = batch_size, max_new_tokens, max_tag_line_tokens
        self.max_passage_chars = max_passage_chars  # a passage is cut there, to bound the prompt
        self._image_embedder = image_embedder
        self._pixels_of: OrderedDict[bytes, Image.Image] = OrderedDict()
        self._cache_size = cache_size
        self.ret_id, self.noret_id = self._ids(RET), self._ids(NORET)
        self.rel_id, self.norel_id = self._ids(REL), self._ids(NOREL)

    def _ids(self, tag: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(tag)

    @classmethod
    def load(cls, path: Path | str, device: str = "cpu", dtype: torch.dtype | str | None = None,
             **kwargs) -> HFVLM:
        """Model and processor from a local folder (nothing is downloaded); dtype defaults to
        float32 on CPU and to the checkpoint's own dtype elsewhere."""
        from transformers import AutoProcessor

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} holds no transformers model (no config.json); HFVLM loads "
                                    "local files only: save the model and processor there first")
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
            raise ValueError(f"{path}: the processor {type(processor).__name__} does not take both images and text")
        if getattr(processor, "chat_template", None) is None:
            processor.chat_template = getattr(processor.tokenizer, "chat_template", None)
            if processor.chat_template is None:
                raise ValueError(f"{path}: neither the processor nor the tokenizer has a chat template")
        dtype = dtype or (torch.float32 if device == "cpu" else "auto")
        model = _auto_model_class().from_pretrained(path, local_files_only=True, dtype=dtype).to(device)
        return cls(model, processor, name=f"hf:{path}", **kwargs)

    # Images: PIL images, or embedding rows computed by `embed_images` (see the module docstring).

    @property
    def image_embedder(self):
        if self._image_embedder is None:
            from index.embedders import load_image_embedder

            self._image_embedder = load_image_embedder()
        return self._image_embedder

    @staticmethod
    def _key(row: np.ndarray) -> bytes:
        return np.ascontiguousarray(row, dtype=np.float32).tobytes()

    def embed_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        """open_clip embeddings (settings' image embedder) for retrieval; rows given as vectors pass
        through. The image behind each computed row is remembered, so the row can stand for it."""
        if not len(images):
            return np.zeros((0, 0), np.float32)
        pil = [i for i, im in enumerate(images) if not isinstance(im, np.ndarray)]
        vecs = self.image_embedder.encode_images([images[i] for i in pil]) if pil else None
        dim = vecs.shape[1] if vecs is not None else np.asarray(images[0]).shape[-1]
        out = np.zeros((len(images), dim), np.float32)
        for j, i in enumerate(pil):
            out[i] = vecs[j]
            self._remember(out[i], self._pixels(images[i]))
        for i, im in enumerate(images):
            if isinstance(im, np.ndarray):
                out[i] = im
        return out

    def _remember(self, row: np.ndarray, image: Image.Image) -> None:
        key = self._key(row)
        self._pixels_of[key] = image
        self._pixels_of.move_to_end(key)
        while len(self._pixels_of) > self._cache_size:
            self._pixels_of.popitem(last=False)

    def _pixels(self, image: ImageLike | str | Path) -> Image.Image:
        if isinstance(image, np.ndarray):
            try:
                return self._pixels_of[self._key(image)]
            except KeyError:
                raise UnknownEmbedding(
                    "HFVLM was given an image embedding it did not compute (or no longer remembers): "
                    "pass the PIL image, or embed it with this HFVLM's embed_images first") from None
        from index.embedders import open_rgb

        return open_rgb(image)

    # Prompts.

    def _passages(self, docs: Sequence[Document]) -> str:
        def passage(i: int, d: Document) -> str:
            title = " — ".join(filter(None, [d.entity_name, d.heading]))
            text = d.text[:self.max_passage_chars]
            return f"[{i}] {title}: {text}" if title else f"[{i}] {text}"

        return "Passages:\n" + "\n".join(passage(i, d) for i, d in enumerate(docs, 1))

    def _chat(self, text: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _inputs(self, images: Sequence[ImageLike], texts: Sequence[str]):
        batch = self.processor(text=[self._chat(t) for t in texts], images=[self._pixels(im) for im in images],
                               return_tensors="pt", padding=True)
        return batch.to(self.model.device, dtype=self.model.dtype)  # casts only the floating tensors

    def _batches(self, n: int):
        return (slice(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size))

    # Generation and tag scores.

    @torch.inference_mode()
    def _generate(self, images, texts, max_new_tokens: int | None = None) -> tuple[list[str], np.ndarray]:
        """Greedy continuations (new tokens only, stripped) and each one's mean token probability."""
        answers, confidence = [], []
        for s in self._batches(len(texts)):
            batch = self._inputs(images[s], texts[s])
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens or self.max_new_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
                                      output_scores=True, return_dict_in_generate=True)
            new = out.sequences[:, batch["input_ids"].shape[1]:]
            answers += [a.strip() for a in self.processor.batch_decode(new, skip_special_tokens=True)]
            confidence.append(self._mean_probability(new, out.scores))
        return answers, np.concatenate(confidence) if confidence else np.zeros(0)

    def _mean_probability(self, new: torch.Tensor, scores: Sequence[torch.Tensor]) -> np.ndarray:
        logp = torch.stack([torch.log_softmax(s.float(), -1) for s in scores], 1)
        logp = logp.gather(-1, new[:, :logp.shape[1], None]).squeeze(-1)
        # Count tokens up to and including the first end-of-sequence token.
        eos = self.model.generation_config.eos_token_id
        eos = torch.tensor([] if eos is None else np.atleast_1d(eos).tolist(), dtype=new.dtype, device=new.device)
        is_eos = torch.isin(new[:, :logp.shape[1]], eos)
        keep = ((is_eos.long().cumsum(1) - is_eos.long()) == 0).float()  # no end token before this one
        return torch.exp((logp * keep).sum(1) / keep.sum(1).clamp(min=1)).cpu().numpy()

    @torch.inference_mode()
    def _tag_probability(self, images, texts, yes: int, no: int) -> np.ndarray:
        """P(first tag) from the next-token logits of the tag pair: one forward pass per batch, run
        through `generate` so each architecture sets its own positions for left-padded rows."""
        out = []
        for s in self._batches(len(texts)):
            batch = self._inputs(images[s], texts[s])
            step = self.model.generate(**batch, max_new_tokens=1, do_sample=False, output_logits=True,
                                       return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id)
            logits = step.logits[0].float().cpu().numpy()
            out.append(two_way(logits[:, yes], logits[:, no]))
        return np.concatenate(out) if out else np.zeros(0)

    # The VLM interface.

    def answer(self, images: Sequence[ImageLike], questions: Sequence[str],
               documents: Sequence[Sequence[Document]] | None = None) -> list[str]:
        """One generated answer per question, from the image alone or with its documents as passages."""
        if documents is None:
            documents = [[] for _ in questions]
        texts = [PROMPTS["read"].format(passages=self._passages(d), question=q) if d
                 else PROMPTS["answer"].format(question=q) for q, d in zip(questions, documents)]
        return self._generate(list(images), texts)[0]

    def read(self, image: ImageLike, question: str, docs: Sequence[Document]) -> tuple[str, float, int]:
        """(answer generated with all the documents in the prompt, 0.0, 0); a generated answer has no
        span score or single source document. Without documents: (closed-book answer, 0.0, -1)."""
        return self.answer([image], [question], [list(docs)])[0], 0.0, 0 if docs else -1

    def retrieval_needed(self, images: Sequence[ImageLike], questions: Sequence[str]) -> np.ndarray:
        """P([Ret]) per question."""
        texts = [PROMPTS["ret"].format(question=q, yes=RET, no=NORET) for q in questions]
        return self._tag_probability(list(images), texts, self.ret_id, self.noret_id)

    def relevance(self, images: Sequence[ImageLike], questions: Sequence[str],
                  documents: Sequence[Document]) -> np.ndarray:
        """SRT: P([Rel]) per (image, question, document) row."""
        texts = [PROMPTS["srt"].format(passages=self._passages([d]), question=q, yes=REL, no=NOREL)
                 for q, d in zip(questions, documents)]
        return self._tag_probability(list(images), texts, self.rel_id, self.norel_id)

    def consistency(self, image: ImageLike, question: str, documents: Sequence[Document]) -> np.ndarray:
        """MCT: P([Rel]) for passage k of the whole kept set, one prompt per document (module docstring)."""
        passages = self._passages(documents)
        texts = [PROMPTS["mct"].format(passages=passages, question=question, k=k, yes=REL, no=NOREL)
                 for k in range(1, len(documents) + 1)]
        return self._tag_probability([image] * len(texts), texts, self.rel_id, self.norel_id)

    known_entities = None  # which entities a hub model trained on is not known here

    def new_entity(self, images: Sequence[ImageLike]) -> None:
        """No memory of the entities a hub model trained on: RET is its tag alone."""
        return None

    def semantic_tags(self, images: Sequence[ImageLike], questions: Sequence[str]) -> list[SemanticTags]:
        """Entity, category and attributes parsed from one generated line; the entity's confidence is the
        line's mean token probability (0 when no entity is named)."""
        texts = [PROMPTS["tags"].format(question=q) for q in questions]
        lines, confidence = self._generate(list(images), texts, self.max_tag_line_tokens)
        out = []
        for line, conf in zip(lines, confidence):
            entity, category, attributes = parse_semantic_line(line)
            out.append(SemanticTags(entity, float(conf) if entity else 0.0, category, attributes))
        return out
