"""Vocabulary trimming of the reader's text encoder (rag.vlm.trim) and warm starts from a trimmed export."""
from __future__ import annotations

import torch

from rag.vlm.reader import SPECIAL_TOKENS, load_reader, load_text_encoder
from rag.vlm.trim import trim

KB_TEXT = "The capital of Bhutan is Thimphu. [DOC] Its currency is the ngultrum [Rel]"


def test_trimmed_encoder_reads_kept_text_exactly_as_before():
    encoder, tok = load_text_encoder("all-MiniLM-L6-v2")
    encoder.eval()
    before = tok(KB_TEXT, return_tensors="pt")
    with torch.no_grad():
        want = encoder(**before).last_hidden_state
    encoder, small = trim(encoder, tok, [KB_TEXT], common=2000)
    assert len(small) < 5000 < len(tok)
    assert encoder.get_input_embeddings().weight.shape[0] == len(small)
    after = small(KB_TEXT, return_tensors="pt")
    assert small.convert_ids_to_tokens(after["input_ids"][0]) == tok.convert_ids_to_tokens(before["input_ids"][0])
    with torch.no_grad():
        got = encoder(**after).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)
    # dropped words still tokenize, into smaller pieces rather than [UNK]
    assert small.unk_token not in small.tokenize("an unmistakable zeppelin")
    assert all(small.convert_tokens_to_ids(t) != small.unk_token_id for t in SPECIAL_TOKENS)


def test_training_exports_a_trimmed_reader_and_warm_starts_from_it(tiny_reader, tmp_path):
    from rag.vlm.train import TrainConfig, Trainer

    from transformers import AutoTokenizer

    assert len(AutoTokenizer.from_pretrained(str(tiny_reader / "encoder"))) < 20000  # the export is trimmed
    assert "- Vocabulary: " in (tiny_reader / "MODEL_CARD.md").read_text()  # and says so in its card
    model, tok = load_reader(tiny_reader)  # and reads with the full vocabulary again
    assert len(tok) == 30522 + len(SPECIAL_TOKENS) == model.encoder.get_input_embeddings().weight.shape[0]
    cfg = TrainConfig(out=str(tmp_path / "model"), run_dir=str(tmp_path / "run"), entity_limit=12)
    trainer = Trainer(cfg)
    trainer.warm_start(tiny_reader)  # rows go back to their tokens' places in the full vocabulary
    row = trainer.model.encoder.get_input_embeddings().weight[trainer.tok.convert_tokens_to_ids("capital")]
    assert torch.allclose(row, model.encoder.get_input_embeddings().weight[tok.convert_tokens_to_ids("capital")])


def test_expand_restores_the_full_vocabulary_with_the_fine_tuned_rows():
    from rag.vlm.trim import expand

    encoder, tok = load_text_encoder("all-MiniLM-L6-v2")
    with torch.no_grad():  # as if fine-tuned: the kept rows move
        encoder.get_input_embeddings().weight[tok.convert_tokens_to_ids("capital")] += 1.0
    moved = encoder.get_input_embeddings().weight[tok.convert_tokens_to_ids("capital")].clone()
    encoder, small = trim(encoder, tok, [KB_TEXT], common=2000)
    encoder, full = expand(encoder, small, "all-MiniLM-L6-v2")
    assert len(full) == len(tok) and full.tokenize("an unmistakable zeppelin") == tok.tokenize("an unmistakable zeppelin")
    table = encoder.get_input_embeddings().weight
    assert torch.equal(table[full.convert_tokens_to_ids("capital")], moved)
    base, _ = load_text_encoder("all-MiniLM-L6-v2")
    z = full.convert_tokens_to_ids("zeppelin")
    assert torch.equal(table[z], base.get_input_embeddings().weight[z])


def test_a_trimmed_export_trims_again_and_reads_as_before(tiny_reader, tmp_path):
    """Re-trimming keeps fewer common words; mmkb reads the rows it dropped from the pretrained model."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from rag.vlm.trim import FIRST_WORD, trim_checkpoint

    export = tmp_path / "reader"
    shutil.copytree(tiny_reader, export)
    first = len(AutoTokenizer.from_pretrained(str(export / "encoder")))
    before, after = trim_checkpoint(export, common=3000)  # more common words than the fixture kept
    assert before == first and after > first
    before, after = trim_checkpoint(export)  # the default: characters and the KB's pieces only, as exported
    assert after == first
    assert json.loads((export / "encoder" / "config.json").read_text())["mmkb_trimmed"]["common"] == FIRST_WORD
    model, tok = load_reader(export)
    ref, ref_tok = load_reader(tiny_reader)
    assert tok.get_vocab() == ref_tok.get_vocab()
    kept = tok.convert_tokens_to_ids(["capital", "currency"])  # pieces of the KB: their fine-tuned rows
    assert torch.equal(model.encoder.get_input_embeddings().weight[kept],
                       ref.encoder.get_input_embeddings().weight[kept])


def test_the_trim_command_refuses_a_common_that_keeps_nothing(capsys):
    import pytest

    from rag.vlm.trim import main

    with pytest.raises(SystemExit):
        main(["nowhere", "--common", "0"])
    assert "--trim-common 0" in capsys.readouterr().err
