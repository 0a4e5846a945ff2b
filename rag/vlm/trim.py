"""Vocabulary trimming for the reader's text encoder: keep the word pieces it needs, drop the rest.

all-MiniLM-L6-v2 carries BERT's 30,522-piece vocabulary: 23 MB of its 45 MB in fp16. The
reader is fine-tuned on worldkb, and most of those rows are never used by it. Trimming keeps

- the special tokens, every single character and single-character continuation (`##x`), so any
  text still tokenizes (a dropped word falls back to smaller pieces, never to [UNK] more often);
- the `common` lowest-id pieces: BERT's vocabulary lists whole words and pieces roughly by
  frequency, so these are the words user questions are made of;
- every piece that the given texts (the KB's documents and the question phrasings) use.

A text made only of kept pieces tokenizes exactly as before (WordPiece takes the longest
matching piece, and every piece it took is still there), so on that text the trimmed model
computes the same function. The result is still a standard `save_pretrained` BERT model and
tokenizer; `python -m rag.vlm.trim CHECKPOINT` trims an exported reader in place.
"""
from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch


def kept_ids(tokenizer, texts: Iterable[str], common: int) -> list[int]:
    """Token ids to keep, in their original order."""
    vocab = tokenizer.get_vocab()
    keep = set(tokenizer.all_special_ids)
    for piece, i in vocab.items():
        if i < common or len(piece.removeprefix("##")) <= 1:
            keep.add(i)
    for text in texts:
        keep.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    return sorted(keep)


def trim(model, tokenizer, texts: Iterable[str], common: int = 5000):
    """(model, tokenizer) with the word-embedding table cut to `kept_ids`; the model is changed in place."""
    from transformers import BertTokenizer

    keep = kept_ids(tokenizer, texts, common)
    # Tokens added after the base vocabulary (mmkb's [IMG], [Ret] …) go back after it, in order.
    first_added = tokenizer.vocab_size  # the base vocabulary's size, without added tokens
    inverse = {i: t for t, i in tokenizer.get_vocab().items()}
    base = [inverse[i] for i in keep if i < first_added]
    extra = [t for t, i in sorted(tokenizer.get_added_vocab().items(), key=lambda kv: kv[1]) if i >= first_added]
    kwargs = {k: tokenizer.init_kwargs[k] for k in ("do_lower_case", "tokenize_chinese_chars", "strip_accents",
                                                     "model_max_length") if k in tokenizer.init_kwargs}
    new_tok = BertTokenizer(vocab={t: i for i, t in enumerate(base)}, **kwargs)
    new_tok.add_special_tokens({"additional_special_tokens": extra})
    order = [tokenizer.convert_tokens_to_ids(t) for t in base + extra]
    table = model.get_input_embeddings().weight.detach()
    emb = torch.nn.Embedding(len(order), table.shape[1], padding_idx=new_tok.pad_token_id)
    with torch.no_grad():
        emb.weight.copy_(table[torch.as_tensor(order)])
    model.set_input_embeddings(emb)
    model.config.vocab_size = len(order)
    if hasattr(model.config, "pad_token_id"):
        model.config.pad_token_id = new_tok.pad_token_id
    return model, new_tok


def corpus_texts() -> list[str]:
    """What the shipped reader reads: the starter KB's records and every question phrasing."""
    from rag.kbvqa.questions import TYPES
    from index.worldkb import DATA_DIR

    texts = [line for line in (DATA_DIR / "manifest.jsonl").read_text().splitlines() if line.strip()]
    for qt in TYPES.values():
        for value in vars(qt).values():
            if isinstance(value, (list, tuple)):
                texts += [v for v in value if isinstance(v, str)]
            elif isinstance(value, str):
                texts.append(value)
    return texts


def trim_checkpoint(path: Path, common: int = 5000) -> tuple[int, int]:
    """Trim an exported reader's encoder in place (written beside, then swapped). Returns (before, after) rows."""
    from transformers import AutoModel, AutoTokenizer

    encoder_dir = Path(path) / "encoder"
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
    model = AutoModel.from_pretrained(str(encoder_dir), dtype=torch.float16)
    before = model.get_input_embeddings().weight.shape[0]
    model, tokenizer = trim(model, tokenizer, corpus_texts(), common)
    tmp = encoder_dir.with_name("encoder.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.half().save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    old = encoder_dir.with_name("encoder.old")
    shutil.rmtree(old, ignore_errors=True)
    encoder_dir.replace(old)
    tmp.replace(encoder_dir)
    shutil.rmtree(old)
    return before, len(tokenizer)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="an exported mmkb-reader folder")
    ap.add_argument("--common", type=int, default=5000, help="keep the pieces below this id (common English)")
    args = ap.parse_args(argv)
    before, after = trim_checkpoint(args.checkpoint, args.common)
    print(json.dumps({"checkpoint": str(args.checkpoint), "vocabulary_before": before, "vocabulary_after": after}))


if __name__ == "__main__":
    main()
