"""Building and searching the reference index over a tiny KB (real MiniLM text embedder)."""
from __future__ import annotations

import pytest

from index.ingest import ingest_folder
from index.search import IndexNotBuiltError, ReferenceIndex
from index.store import EntityStore


@pytest.fixture
def ref(home, tiny_kb):
    from index.config import get_settings

    settings = get_settings()
    store = EntityStore(settings.db_url, settings.home_dir)
    ingest_folder(store, tiny_kb, show_progress=False)
    return ReferenceIndex(store, settings)


def test_search_before_build_says_what_to_run(ref):
    with pytest.raises(IndexNotBuiltError, match="mmkb index build"):
        ref.search(text="Thimphu")


def test_text_search_finds_the_entity_whose_document_answers(ref):
    ref.build(["text"], show_progress=False)
    hits = ref.search(text="Thimphu", k=3)
    assert hits[0].key == "country:BTN" and set(hits[0].scores) == {"text"}
    assert "Thimphu" in hits[0].matches[0].text
    assert ref.search(text="Kathmandu", k=1)[0].key == "country:NPL"


def test_image_search_returns_entities_and_kind_filter_applies(ref, tiny_kb):
    ref.build(["text", "image"], show_progress=False)
    both = ref.search(text="Thimphu", k=3, text_to_image=True)
    assert all(set(h.scores) <= {"text", "image"} for h in both) and any("image" in h.scores for h in both)
    hits = ref.search(image=tiny_kb / "images" / "npl.png", k=3)
    assert hits[0].key == "country:NPL" and hits[0].scores["image"] == pytest.approx(1.0, abs=1e-3)
    assert len({h.key for h in hits}) == len(hits)  # several images of an entity collapse into one hit
    only_emoji = ref.search(image=tiny_kb / "images" / "npl.png", k=3, kinds=["emoji"])
    assert [h.key for h in only_emoji] == ["emoji:1F34E"]


def test_rebuild_keeps_the_old_version_for_rollback(ref):
    first = ref.build(["text"], show_progress=False)[0]
    second = ref.build(["text"], show_progress=False)[0]
    assert ref.store.active_index("text").id == second.id
    ref.store.rollback_index("text")
    assert ref.store.active_index("text").id == first.id
    assert ref.search(text="Thimphu", k=1)[0].key == "country:BTN"


def test_index_built_with_other_weights_is_refused(ref, monkeypatch):
    """Retrained weights under the same model name still make the old index stale."""
    ref.build(["text", "image"], show_progress=False)
    assert ref.store.active_index("image").embedder.startswith("mmkb-clip-tiny@")
    other = type("Other", (), {"fingerprint": "mmkb-clip-tiny@0123456789ab"})()
    monkeypatch.setattr(ref, "image_embedder", lambda: other)
    ref._loaded.clear()
    with pytest.raises(IndexNotBuiltError, match="mmkb index build"):
        ref.vector_index("image")
