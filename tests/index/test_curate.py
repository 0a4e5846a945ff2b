"""Curation: tag suggestions stored for review, the review itself, tag-filtered search, near-duplicates."""
from __future__ import annotations

import re

import numpy as np
import pytest

from index.curate import (duplicate_page, find_duplicates, known_labels, list_tags, parse_pairs, review_tags,
                          suggest_tags, tag_page)
from index.ingest import ingest_folder


@pytest.fixture
def kb_store(store, tiny_kb):
    ingest_folder(store, tiny_kb)
    return store


@pytest.fixture
def tagger(tiny_tagger):
    from index.tagger import Tagger

    return Tagger(tiny_tagger[0])


ALL = ["country", "emoji"]  # the tiny tagger trained on emoji only


def test_suggestions_are_stored_pending_and_skip_what_the_entity_has(kb_store, tagger, tmp_path):
    assert [s.key for s in suggest_tags(kb_store, tagger, threshold=0.0, write=False)] == ["emoji:1F34E"]
    out = suggest_tags(kb_store, tagger, kinds=ALL, threshold=0.0, top=3)
    assert [s.key for s in out] == ["country:BTN", "country:NPL", "emoji:1F34E"]
    apple = out[2]
    assert {"fruit", "apple", "red"} <= set(apple.known)  # manifest tag + keywords section
    assert "red" not in [label for label, _ in apple.labels] and len(apple.labels) == 3
    rows = list_tags(kb_store, state="pending")
    assert len(rows) == 9 and all(r["source"] == "tagger:tagger" for r in rows)
    # suggesting again updates, never duplicates; a pending label no longer ranked goes
    suggest_tags(kb_store, tagger, kinds=ALL, threshold=0.0, top=3)
    assert len(list_tags(kb_store, state="pending")) == 9
    suggest_tags(kb_store, tagger, kinds=ALL, threshold=0.0, top=1)
    assert len(list_tags(kb_store, state="pending")) == 3
    page = tag_page(out, tmp_path / "tags.html", tagger.name)
    text = page.read_text()
    assert "Red apple" in text and "data:image/png;base64" in text and "mmkb curate review" in text


def test_dry_run_writes_nothing_and_unknown_keys_fail(kb_store, tagger):
    suggest_tags(kb_store, tagger, kinds=ALL, threshold=0.0, write=False)
    assert list_tags(kb_store, state="pending") == []
    with pytest.raises(ValueError, match="no entity with images"):
        suggest_tags(kb_store, tagger, keys=["country:XXX"])
    with pytest.raises(ValueError, match="--top"):
        suggest_tags(kb_store, tagger, top=0)


def test_missing_image_files_are_named(kb_store, tagger):
    path = kb_store.entity_images(["emoji:1F34E"])["emoji:1F34E"][0][1]
    path.unlink()
    with pytest.raises(ValueError, match="re-ingest"):
        suggest_tags(kb_store, tagger)


def test_labels_match_without_case(kb_store, tagger):
    from sqlalchemy import select

    from index.store import Entity, Tag

    with kb_store.session() as s:
        btn = s.scalar(select(Entity).where(Entity.key == "country:BTN"))
        btn.tags.append(Tag(label="YELLOW", source="manifest", review_state="accepted"))
    out = suggest_tags(kb_store, tagger, keys=["country:BTN"], kinds=ALL, threshold=0.0, top=50, write=False)
    assert "yellow" not in [label for label, _ in out[0].labels] and "YELLOW" in out[0].known


def test_review_accepts_rejects_and_rejected_labels_stay_away(kb_store, tagger):
    out = suggest_tags(kb_store, tagger, keys=["country:BTN"], kinds=ALL, threshold=0.0, top=3)
    first, second, third = [label for label, _ in out[0].labels]
    counts = review_tags(kb_store, accept=[("country:BTN", first)], reject=[("country:BTN", second)])
    assert counts == {"accepted": 1, "rejected": 1}
    assert kb_store.keys_tagged([first.upper()]) == ["country:BTN"]
    again = suggest_tags(kb_store, tagger, keys=["country:BTN"], kinds=ALL, threshold=0.0, top=10)
    labels = [label for label, _ in again[0].labels]
    assert first not in labels and second not in labels and third in labels
    with pytest.raises(ValueError, match="no pending tag"):  # all or nothing: the valid pair stays pending
        review_tags(kb_store, accept=[("country:BTN", third), ("country:BTN", "no-such-label")])
    assert ("country:BTN", third) in {(r["key"], r["label"]) for r in list_tags(kb_store, state="pending")}
    with pytest.raises(ValueError, match=re.escape(f"the tag '{first}' on country:BTN is already accepted")):
        review_tags(kb_store, accept=[("country:BTN", first)])
    with pytest.raises(ValueError, match="named twice"):
        review_tags(kb_store, accept=[("country:BTN", third)], reject=[("country:BTN", third.upper())])
    with pytest.raises(ValueError, match="below --reject-below"):
        review_tags(kb_store, accept_above=0.2, reject_below=0.5)
    counts = review_tags(kb_store, accept_above=2.0, reject_below=2.0)  # every pending one is below 2
    assert counts == {"accepted": 0, "rejected": len(list_tags(kb_store, state="rejected")) - 1}
    assert list_tags(kb_store, state="pending") == []


def test_known_labels_reads_tags_keywords_and_category(kb_store):
    from sqlalchemy import select

    from index.store import Entity

    with kb_store.session() as s:
        apple = s.scalar(select(Entity).where(Entity.key == "emoji:1F34E"))
        assert known_labels(apple) == ["fruit", "apple", "red"]  # accepted tag, then keywords, no repeats


def test_parse_pairs():
    assert parse_pairs(["emoji:1F600 = Happy"]) == [("emoji:1F600", "Happy")]
    with pytest.raises(ValueError, match="KEY=LABEL"):
        parse_pairs(["emoji:1F600"])


def test_find_duplicates_pairs_each_once_and_says_what_they_are(kb_store, tmp_path):
    ids = np.array(sorted(i for batch in kb_store.iter_images() for i, _ in batch))
    vecs = np.eye(len(ids), 8, dtype=np.float32)
    vecs[1] = vecs[0]  # Bhutan's and Nepal's flags embed alike
    pairs = find_duplicates(kb_store, vecs, ids, threshold=0.97)
    assert len(pairs) == 1
    p = pairs[0]
    assert {p.a["key"], p.b["key"]} == {"country:BTN", "country:NPL"}
    assert not p.same_entity and not p.identical and p.similarity == pytest.approx(1.0)
    assert find_duplicates(kb_store, vecs, ids, threshold=1.01) == []
    page = duplicate_page(pairs, tmp_path / "dup.html", kb_store.home, 0.97)
    assert "two entities" in page.read_text() and "Bhutan" in page.read_text()


def test_neighbour_labels_vote_from_other_entities_through_the_index(kb_store, tagger):
    from index.config import get_settings
    from index.curate import neighbour_labels
    from index.search import ReferenceIndex

    ref = ReferenceIndex(kb_store, get_settings())
    assert neighbour_labels(ref, tagger, np.zeros((1, 256), np.float32), ["x"]) is None  # no index yet
    ref.build(["image"], show_progress=False)
    images = kb_store.entity_images(["country:BTN", "emoji:1F34E"])
    paths = [images["country:BTN"][0][1], images["emoji:1F34E"][0][1]]
    one_view = ref.embed_image_queries(paths, views=1)
    knn = neighbour_labels(ref, tagger, one_view, ["country:BTN", "emoji:1F34E"])
    _, from_tagger = tagger.predict_with_embeddings(paths, layout=ref.settings.image_layout_weight)
    assert np.allclose(from_tagger, one_view, atol=1e-2)  # one pass gives the images' search vectors
    red = tagger.labels.index("red")
    assert knn[0, red] > 0  # Bhutan's neighbours include the red apple, whose keywords say red
    assert knn[1].sum() == 0  # the apple's own image never votes; the flags carry no labels
    mixed = suggest_tags(kb_store, tagger, keys=["country:BTN"], kinds=ALL, threshold=0.0, top=50, write=False,
                         reference=ref, knn_weight=1.0)
    assert [label for label, _ in mixed[0].labels][0] == "red"


def test_named_keys_are_tagged_whatever_their_kind(kb_store, tagger):
    out = suggest_tags(kb_store, tagger, keys=["country:BTN"], threshold=0.0, write=False)  # tagger: emoji only
    assert [s.key for s in out] == ["country:BTN"]
