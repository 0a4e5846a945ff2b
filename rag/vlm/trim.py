"""Vocabulary trimming for the reader's text encoder: keep the word pieces it needs, drop the rest.

all-MiniLM-L6-v2 carries BERT's 30,522-piece vocabulary: 23 MB of its 45 MB in fp16. The
reader is fine-tuned on worldkb, and most of those rows are never used by it. Trimming keeps

- the special tokens, every single character and single-character continuation (`##x`), so any
  text still tokenizes (a dropped word falls back to smaller pieces, never to [UNK] more often);
- the `common` lowest-id pieces: BERT's vocabulary lists whole words and pieces roughly by
  frequency, so these are the words everyday questions are made of;
- every piece that the given texts use (for the shipped reader: the KB's names, sections and
  facts, and the training phrasings of the questions; never the held-out phrasings);

and drops BERT's 994 `[unusedN]` placeholders. A text made only of kept pieces tokenizes exactly
as before (WordPiece takes the longest matching piece, and every piece it took is still there),
so on that text the trimmed model computes the same function; other words split into more,
smaller pieces. The result is still a standard `save_pretrained` BERT model and tokenizer, so it
loads on its own; mmkb's `load_reader` goes further and `expand`s it back onto the full pretrained
vocabulary of the installed all-MiniLM-L6-v2 (rows of pieces the fine-tuning never read are the
pretrained ones), so nothing is lost in mmkb. `python -m rag.vlm.trim CHECKPOINT [--common N]` trims
an export; one trimmed already is first put back on the full vocabulary as `load_reader` does (pieces
it had dropped get their pretrained rows, the rows mmkb reads for them anyway) and trimmed again.

The default keeps no common words beyond the KB's (`common` = FIRST_WORD: every id below it is a
special token or a character, kept anyway): within mmkb the dropped rows come back from the installed
all-MiniLM-L6-v2, so more common words would serve only a user who loads the encoder folder on its
own, or `load_reader` when all-MiniLM-L6-v2 is not installed (it then reads the trimmed vocabulary, and
a question's words outside the KB split into smaller pieces), at 0.77 MB per thousand words (the
shipped reader kept the pieces below id 8,000 until 2026-12-07: 11,390 pieces against 7,796).
"""
from __future__ import annotations

import argparse
import inspect
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from index.files import replace_dir

FIRST_WORD = 1996  # BERT uncased: ids below are specials, [unusedN] and single characters


def kept_ids(tokenizer, texts: Iterable[str], common: int) -> list[int]:
    """Token ids to keep, in their original order."""
    keep = set(tokenizer.all_special_ids)
    for piece, i in tokenizer.get_vocab().items():
        if i >= tokenizer.vocab_size or (FIRST_WORD <= i < common) or \
                (len(piece.removeprefix("##")) <= 1 and not piece.startswith("[unused")):
            keep.add(i)
    for text in texts:
        keep.update(tokenizer(text, add_special_tokens=False)["input_ids"])
    return sorted(keep)


def _wordpiece_tokenizer(pieces: list[str], like):
    """A BERT tokenizer over `pieces` (ids in list order) with `like`'s settings, on transformers 4 or 5."""
    from transformers import BertTokenizer, BertTokenizerFast

    kwargs = {k: like.init_kwargs[k] for k in ("do_lower_case", "tokenize_chinese_chars", "strip_accents",
                                               "model_max_length") if k in like.init_kwargs}
    kwargs.update({k: getattr(like, k) for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")})
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers 5: a dict will do
        return BertTokenizer(vocab={p: i for i, p in enumerate(pieces)}, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:  # transformers 4: from a vocab.txt
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(pieces) + "\n")
        return BertTokenizerFast(vocab_file=str(vocab_file), **kwargs)


def trim(model, tokenizer, texts: Iterable[str], common: int = FIRST_WORD):
    """(model, tokenizer) with the word-embedding table cut to `kept_ids`; the model is changed in place."""
    keep = kept_ids(tokenizer, texts, common)
    inverse = {i: t for t, i in tokenizer.get_vocab().items()}
    # Tokens added after the base vocabulary (mmkb's [IMG], [Ret] …) go back after it, in order.
    base = [inverse[i] for i in keep if i < tokenizer.vocab_size]
    extra = [inverse[i] for i in keep if i >= tokenizer.vocab_size]
    new_tok = _wordpiece_tokenizer(base, tokenizer)
    if extra:
        key = ("extra_special_tokens" if "replace_extra_special_tokens" in
               inspect.signature(new_tok.add_special_tokens).parameters else "additional_special_tokens")
        new_tok.add_special_tokens({key: extra})
    order = torch.as_tensor(keep)  # sorted ids: the base pieces, then the added tokens
    new_ids = new_tok.get_vocab()
    if [new_ids[t] for t in base + extra] != list(range(len(order))):
        raise RuntimeError("the trimmed tokenizer did not keep the pieces in order; nothing was changed")
    table = model.get_input_embeddings().weight.detach()
    emb = torch.nn.Embedding(len(order), table.shape[1], padding_idx=new_tok.pad_token_id,
                             dtype=table.dtype, device=table.device)
    with torch.no_grad():
        emb.weight.copy_(table[order.to(table.device)])
    model.set_input_embeddings(emb)
    model.config.vocab_size = len(order)
    model.config.pad_token_id = new_tok.pad_token_id
    model.config.mmkb_trimmed = {"from": len(tokenizer), "to": len(order), "common": common}
    return model, new_tok


def expand(model, tokenizer, text_model: str):
    """The inverse of `trim` for reading: a trimmed encoder back on the full vocabulary of the
    pretrained `text_model` it was fine-tuned from. Kept pieces keep their fine-tuned rows; dropped
    pieces get the pretrained rows (fine-tuning does not move rows of pieces it never reads).
    Returns (model, full tokenizer); the model is changed in place."""
    from transformers import AutoModel, AutoTokenizer

    from index.embedders import _resolve_sentence_model
    from rag.vlm.reader import SPECIAL_TOKENS

    path = str(_resolve_sentence_model(text_model))
    full = AutoTokenizer.from_pretrained(path)
    full.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    ours, known = tokenizer.get_vocab(), full.get_vocab()  # get_vocab builds a new dict per call
    unknown = [t for t in ours if t not in known]
    if unknown:
        raise ValueError(f"the trimmed vocabulary has pieces {unknown[:5]} that {text_model} lacks: "
                         f"it was not fine-tuned from {text_model}")
    trimmed = model.get_input_embeddings().weight.detach()
    pretrained = AutoModel.from_pretrained(path).get_input_embeddings().weight.detach()
    table = torch.zeros(len(full), trimmed.shape[1], dtype=trimmed.dtype)  # added tokens: all kept, set below
    table[:len(pretrained)] = pretrained
    rows = torch.as_tensor([known[t] for t in ours])
    table[rows] = trimmed[torch.as_tensor(list(ours.values()))].to(table.device)
    emb = torch.nn.Embedding(*table.shape, padding_idx=full.pad_token_id, dtype=table.dtype, device=trimmed.device)
    with torch.no_grad():
        emb.weight.copy_(table)
    model.set_input_embeddings(emb)
    model.config.vocab_size = len(table)
    model.config.pad_token_id = full.pad_token_id
    if hasattr(model.config, "mmkb_trimmed"):
        del model.config.mmkb_trimmed
    return model, full


def corpus_texts() -> list[str]:
    """What the shipped reader is trained to read: the starter KB's names, aliases, sections and
    facts, and the training phrasings of every question type (not the held-out ones)."""
    from index.worldkb import DATA_DIR
    from rag.kbvqa.questions import TYPES

    texts = []
    for line in (DATA_DIR / "manifest.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        texts += [rec["name"], *rec.get("aliases", []), json.dumps(rec.get("facts", {}), ensure_ascii=False)]
        texts += [f"{s.get('heading', '')} {s.get('text', '')}" for s in rec.get("sections", [])]
    for qt in TYPES.values():
        texts += [*qt.train, *qt.more, qt.heading, qt.name.replace("_", " ")]
    return texts


def trim_checkpoint(path: Path, common: int = FIRST_WORD) -> tuple[int, int]:
    """Trim an exported reader's encoder: written beside it, then swapped in. An export trimmed already
    is expanded onto its pretrained text model first (what `load_reader` reads) and trimmed again.
    Returns the vocabulary sizes (before, after)."""
    from transformers import AutoModel, AutoTokenizer

    encoder_dir = Path(path) / "encoder"
    if not (encoder_dir / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no encoder/config.json: give an exported mmkb-reader folder")
    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
    model = AutoModel.from_pretrained(str(encoder_dir), dtype=torch.float16)
    before = len(tokenizer)
    if getattr(model.config, "mmkb_trimmed", None):
        from rag.vlm.reader import ReaderConfig

        reader_config = Path(path) / "config.json"  # the text model it was fine-tuned from, as load_reader reads it
        saved = json.loads(reader_config.read_text()) if reader_config.is_file() else {}
        model, tokenizer = expand(model, tokenizer, saved.get("text_model") or ReaderConfig().text_model)
    model, tokenizer = trim(model, tokenizer, corpus_texts(), common)
    tmp = encoder_dir.with_name("encoder.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.half().save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    replace_dir(tmp, encoder_dir)
    return before, len(tokenizer)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="an exported mmkb-reader folder")
    ap.add_argument("--common", type=int, default=FIRST_WORD,
                    help=f"also keep every piece below this id (BERT's common English words; {FIRST_WORD}: none)")
    args = ap.parse_args(argv)
    if args.common < FIRST_WORD:
        ap.error(f"--common below {FIRST_WORD} keeps no common words, as {FIRST_WORD} does; give {FIRST_WORD} or "
                 "more (to keep the whole vocabulary, do not trim: `mmkb train vlm --trim-common 0`)")
    before, after = trim_checkpoint(args.checkpoint, args.common)
    print(json.dumps({"checkpoint": str(args.checkpoint), "vocabulary_before": before, "vocabulary_after": after}))


if __name__ == "__main__":
    main()
