"""The CMA + ASGE tagger: labels, the label graph embedding, the head, metrics, training and loading."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from index.tagger.asge import adjacency, asge
from index.tagger.labels import display, keywords, multi_hot, record_labels, vocabulary
from index.tagger.model import CMATagger, LinearTagger
from index.tagger.train import average_precision, metrics


def test_keywords_and_record_labels():
    assert keywords("Keywords for the Grinning face emoji: cheerful, face, grin and happy.") == \
        ["cheerful", "face", "grin", "happy"]
    rec = {"tags": ["Fruit", "fruit"], "category": "Food & Drink", "subcategory": "food-fruit",
           "sections": [{"heading": "keywords", "text": "Keywords for the Red apple emoji: apple, fruit and red."}]}
    assert record_labels(rec) == ["fruit", "apple", "red", "category:Food & Drink", "subcategory:food-fruit"]
    assert record_labels({"sections": []}) == []
    assert display("subcategory:food-fruit") == "food-fruit (subcategory)" and display("red") == "red"


def test_vocabulary_keeps_labels_with_enough_entities():
    sets = [["a", "b"], ["a", "c"], ["a", "b", "b"], ["d"]]
    assert vocabulary(sets, min_count=2) == ["a", "b"]
    y = multi_hot([["a", "zzz"], ["b"]], ["a", "b"])
    assert y.tolist() == [[1, 0], [0, 1]]


def test_adjacency_is_symmetric_with_unit_diagonal():
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    a = adjacency(y)
    assert np.allclose(a, a.T) and np.allclose(np.diag(a), 1)
    # P(1|0) = 1/2, P(0|1) = 1 → 0.75; labels 0 and 2 never meet
    assert a[0, 1] == pytest.approx(0.75) and a[0, 2] == 0


def test_asge_fits_the_graph_and_returns_unit_rows():
    y = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1], [1, 0, 0, 0]])
    emb, report = asge(adjacency(y), np.random.default_rng(0).normal(size=(4, 16)), steps=300)
    assert report["gap_after"] < report["gap_before"] / 5
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[1, 3]
    assert report["nearest_is_neighbour"] == 1.0


def test_cma_head_shapes_and_attention():
    labels = torch.randn(5, 12)
    model = CMATagger([8, 16, 6], labels, dim=32)
    feats = [torch.randn(3, 8, 4, 4), torch.randn(3, 16, 2, 2), torch.randn(3, 6)]
    logits, attn = model(feats, with_attention=True)
    assert logits.shape == (3, 5) and attn.shape == (3, 5, 16 + 4 + 1)
    assert torch.equal(logits, model(feats))
    assert not torch.allclose(attn[:, 0], attn[:, 1])  # each label attends in its own way
    assert "label_embeddings" not in dict(model.named_parameters())  # ASGE's stay fixed
    learned = CMATagger([8, 16, 6], labels, dim=32, learn_labels=True)
    assert "label_embeddings" in dict(learned.named_parameters())
    assert LinearTagger(6, 5)(feats).shape == (3, 5)


def test_metrics_edge_cases():
    assert average_precision(np.array([0.9, 0.1]), np.array([0, 0])) != average_precision(
        np.array([0.9, 0.1]), np.array([0, 0]))  # NaN: a label without positives has no AP
    assert average_precision(np.array([0.9, 0.5, 0.1]), np.array([0, 1, 1])) == pytest.approx((1 / 2 + 2 / 3) / 2)
    y = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])
    perfect = np.array([[0.9, 0.1, 0.0, 0.0], [0.1, 0.9, 0.0, 0.0]])
    m = metrics(perfect, y, top=1)
    assert m["mAP"] == 1.0 and m["OP"] == 1.0 and m["OR"] == 1.0 and m["labels_scored"] == 2
    m3 = metrics(perfect, y, top=3)  # top-3 of 4 labels: every truth found, a third of predictions right
    assert m3["OR"] == 1.0 and m3["OP"] == pytest.approx(1 / 3)


def test_train_export_and_load(tiny_tagger):
    from index.tagger import Tagger

    path, manifest = tiny_tagger
    config = json.loads((path / "config.json").read_text())
    assert (path / "tagger.safetensors").is_file() and (path / "MODEL_CARD.md").is_file()
    assert "mmkb train tagger" in (path / "MODEL_CARD.md").read_text()
    tagger = Tagger(path)
    assert tagger.labels == config["labels"] and {"red", "blue"} <= set(tagger.labels)
    images = [manifest.parent / "images" / "red-circle.png", manifest.parent / "images" / "blue-square.png"]
    probs = tagger.predict(images)
    assert probs.shape == (2, len(tagger.labels)) and ((probs >= 0) & (probs <= 1)).all()
    red, blue = tagger.labels.index("red"), tagger.labels.index("blue")
    assert probs[0, red] > probs[0, blue] and probs[1, blue] > probs[1, red]
    cells = tagger.attention(images[0], "red")
    assert cells.shape == (4, 4) and cells.sum() == pytest.approx(1.0, abs=1e-4)  # the larger map, rescaled


def test_a_relative_manifest_path_trains_and_exports(tmp_path, tiny_tagger, monkeypatch):
    from index.tagger import TaggerConfig, train_tagger

    _, manifest = tiny_tagger
    monkeypatch.chdir(manifest.parent)
    path = train_tagger(TaggerConfig(manifest="manifest.jsonl", min_count=2, views=1, epochs=1), out=tmp_path / "t")
    card = (path / "MODEL_CARD.md").read_text()
    assert "--manifest manifest.jsonl" in card and "(emoji)" in card
    assert json.loads((path / "config.json").read_text())["kinds"] == ["emoji"]


def test_config_refuses_nonsense():
    from index.tagger import TaggerConfig

    with pytest.raises(ValueError, match="--epochs must be at least 1"):
        TaggerConfig(epochs=0)
    with pytest.raises(ValueError, match="choose one of"):
        TaggerConfig(labels="graph")


def test_tagger_errors_are_clear(tmp_path, tiny_tagger):
    from index.tagger import Tagger, TaggerConfig, train_tagger

    with pytest.raises(FileNotFoundError, match="mmkb train tagger"):
        Tagger(tmp_path / "nothing-here")
    _, manifest = tiny_tagger
    with pytest.raises(ValueError, match="lower --min-count"):
        train_tagger(TaggerConfig(manifest=str(manifest), min_count=1000, views=1, epochs=1), out=tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_label_embedding_kinds():
    from index.tagger.train import label_embeddings

    vocab = ["red", "blue", "round"]
    y = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]], np.float32)
    text, report = label_embeddings("text", vocab, y, steps=50, seed=0)
    both, _ = label_embeddings("text+asge", vocab, y, steps=50, seed=0)
    graph, _ = label_embeddings("asge", vocab, y, steps=50, seed=0)
    assert text.shape == graph.shape == (3, 384) and both.shape == (3, 768)
    assert np.allclose(both[:, :384], text) and np.allclose(both[:, 384:], graph)
    assert report["gap_after"] < report["gap_before"]
    with pytest.raises(ValueError, match="choose one of"):
        label_embeddings("graph", vocab, y, steps=1, seed=0)


def test_bad_manifest_lines_are_named(tmp_path):
    from index.tagger.train import load_records

    bad = tmp_path / "manifest.jsonl"
    bad.write_text('{"key": "a"}\n{not json\n')
    with pytest.raises(ValueError, match="manifest.jsonl:2: not valid JSON"):
        load_records(bad)
    bad.write_text('{"name": "no key"}\n')
    with pytest.raises(ValueError, match="manifest.jsonl:1: an entity needs a"):
        load_records(bad)
