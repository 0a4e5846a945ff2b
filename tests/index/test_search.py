"""Building and searching the reference index over a tiny KB (real MiniLM text embedder)."""
from __future__ import annotations

import pytest

from index.clip import DEFAULT_CONFIG
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
    # three query views (itself, zoomed out, central crop) averaged: the indexed image itself scores near 1
    assert ref.settings.query_views == 3
    assert hits[0].key == "country:NPL" and 0.9 < hits[0].scores["image"] < 1.0 + 1e-4
    assert len({h.key for h in hits}) == len(hits)  # several images of an entity collapse into one hit
    only_emoji = ref.search(image=tiny_kb / "images" / "npl.png", k=3, kinds=["emoji"])
    assert [h.key for h in only_emoji] == ["emoji:1F34E"]


def test_rebuild_keeps_the_old_version_for_rollback(ref):
    first = ref.build(["text"], show_progress=False)[0].version
    second = ref.build(["text"], show_progress=False, full=True)[0].version
    assert ref.store.active_index("text").id == second.id != first.id
    assert first.path != second.path  # built in the same second with the same count: each keeps its folder
    ref.store.rollback_index("text")
    assert ref.store.active_index("text").id == first.id
    assert ref.search(text="Thimphu", k=1)[0].key == "country:BTN"


def test_rows_replaced_one_for_one_make_the_index_stale(ref, tiny_kb):
    """Same counts, other rows: a redrawn picture and a reworded passage (SQLite may even reuse the
    ids) are noticed from the digest each manifest records."""
    import json

    from PIL import Image, ImageDraw

    from tests.conftest import TINY_KB

    ref.build(["text", "image"], show_progress=False)
    assert ref.outdated() == {}
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(img).rectangle([5, 5, 35, 35], fill=(0, 150, 0, 255))
    img.save(tiny_kb / "images" / "apple.png")
    records = [dict(r) for r in TINY_KB]
    records[1] = {**records[1], "sections": [{"heading": "capital", "text": "Nepal's capital is Kathmandu.",
                                              "source": "test"}]}
    (tiny_kb / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    before = ref.store.stats()
    ingest_folder(ref.store, tiny_kb, show_progress=False, replace_images=True)
    assert ref.store.stats() == before  # one for one
    assert ref.outdated() == {"text": "the text index was built from other sections than the store holds now",
                              "image": "the image index was built from other images than the store holds now"}
    assert all("mmkb index build" in note for note in ref.stale())
    ref.build(["image"], show_progress=False)
    assert set(ref.outdated()) == {"text"}


def test_an_index_whose_manifest_records_no_rows_is_checked_by_count(ref):
    import json

    version = ref.build(["text"], show_progress=False)[0].version
    manifest = ref.store.home / version.path / "manifest.json"
    held = json.loads(manifest.read_text())
    del held["rows"]
    manifest.write_text(json.dumps(held))
    assert ref.outdated(missing=False) == {}
    assert ref.build(["text"], show_progress=False)[0].how == "full"  # nothing to patch from


def test_build_patches_in_only_what_changed_and_matches_a_full_build(ref, tiny_kb):
    import json

    import numpy as np
    from PIL import Image

    from index.vectors import VectorIndex
    from tests.conftest import TINY_KB, _flag

    first = {b.version.modality: b for b in ref.build(show_progress=False)}
    assert {b.how for b in first.values()} == {"full"}
    again = {b.version.modality: b for b in ref.build(show_progress=False)}
    assert all(again[m].how == "up to date" and again[m].version.id == first[m].version.id for m in again)

    _flag([(0, 106, 78), (244, 42, 65)], tiny_kb / "images" / "bgd.png")
    Image.new("RGB", (40, 40), (0, 120, 0)).save(tiny_kb / "images" / "apple.png")  # redrawn in place
    records = [*TINY_KB, {"key": "country:BGD", "kind": "country", "name": "Bangladesh",
                          "sections": [{"heading": "capital", "text": "The capital of Bangladesh is Dhaka.",
                                        "source": "test"}],
                          "images": [{"path": "images/bgd.png", "source": "test", "style": "flag"}]}]
    (tiny_kb / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ingest_folder(ref.store, tiny_kb, show_progress=False, replace_images=True)
    assert set(ref.outdated()) == {"text", "image"}

    patched = {b.version.modality: b for b in ref.build(show_progress=False)}
    assert patched["text"].how == "patched" and (patched["text"].added, patched["text"].removed) == (1, 0)
    assert patched["image"].how == "patched" and (patched["image"].added, patched["image"].removed) == (2, 1)
    assert ref.outdated() == {}
    assert ref.search(text="Dhaka", k=1)[0].key == "country:BGD"
    assert ref.search(image=tiny_kb / "images" / "bgd.png", k=1)[0].key == "country:BGD"

    full = {b.version.modality: b for b in ref.build(show_progress=False, full=True)}
    for modality in ("text", "image"):
        a = VectorIndex.load(ref.store.home / patched[modality].version.path)
        b = VectorIndex.load(ref.store.home / full[modality].version.path)
        ids, _ = ref.store.row_hashes(modality)
        assert a.count == b.count == len(ids)
        assert np.allclose(a.reconstruct(ids), b.reconstruct(ids), atol=1e-5)


def test_build_starts_anew_when_the_count_calls_for_another_index_type(ref, monkeypatch):
    import index.search
    from index.vectors import IndexSpec

    ref.build(["text"], show_progress=False)
    monkeypatch.setattr(index.search, "choose_index", lambda count, dim, budget: IndexSpec("hnsw", {}))
    assert ref.build(["text"], show_progress=False)[0].how == "full"


def test_a_graph_index_is_patched_by_additions_and_rebuilt_when_removals_would_hide_too_much(ref, tiny_kb, monkeypatch):
    import json

    import index.search
    import index.vectors
    from index.vectors import spec_for
    from tests.conftest import TINY_KB

    hnsw = lambda count, dim, budget: spec_for("hnsw", count, dim, budget)  # noqa: E731
    monkeypatch.setattr(index.vectors, "choose_index", hnsw)
    monkeypatch.setattr(index.search, "choose_index", hnsw)
    assert ref.build(["text"], show_progress=False)[0].version.kind == "hnsw"
    more = [*TINY_KB, {"key": "country:BGD", "kind": "country", "name": "Bangladesh",
                       "sections": [{"heading": "capital", "text": "The capital of Bangladesh is Dhaka."}]}]
    (tiny_kb / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in more))
    ingest_folder(ref.store, tiny_kb, show_progress=False)
    added = ref.build(["text"], show_progress=False)[0]
    assert (added.how, added.added, added.removed, added.version.kind) == ("patched", 1, 0, "hnsw")
    assert ref.search(text="Dhaka", k=1)[0].key == "country:BGD"
    more[0] = {**more[0], "sections": [{"heading": "capital", "text": "Thimphu is the capital of Bhutan."}]}
    (tiny_kb / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in more))
    ingest_folder(ref.store, tiny_kb, show_progress=False)
    # two sections out of five would stay as hidden nodes (more than a fifth): built anew
    assert ref.build(["text"], show_progress=False)[0].how == "full"
    assert ref.outdated(missing=False) == {}


def test_a_row_replaced_under_a_reused_id_is_patched(ref, tiny_kb):
    """SQLite gives a new row the largest id again when the row that held it was deleted."""
    from sqlalchemy import select

    from index.store import Image

    ref.build(["image"], show_progress=False)
    with ref.store.session() as s:
        last = s.scalar(select(Image).order_by(Image.id.desc()).limit(1))
        entity_id, last_id, path = last.entity_id, last.id, last.path
        s.delete(last)
        s.flush()
        twin = Image(entity_id=entity_id, content_hash="0" * 64, path=path.replace(".png", "-b.png"), width=40,
                     height=40, style="emoji")
        s.add(twin)
        s.flush()
        reused = twin.id == last_id
    (ref.store.home / twin.path).write_bytes((tiny_kb / "images" / "btn.png").read_bytes())
    patched = ref.build(["image"], show_progress=False)[0]
    assert (patched.how, patched.added, patched.removed) == ("patched", 1, 1) and (reused or "postgresql" in ref.store.url)
    assert ref.search(image=tiny_kb / "images" / "btn.png", k=2, kinds=["emoji"])[0].scores["image"] > 0.9


def test_a_row_stored_while_a_full_build_ran_is_added_by_the_next_build(ref, monkeypatch):
    """The index records exactly the rows it embedded: one stored after they were read comes next time."""
    ids, hashes = ref.store.row_hashes("text")
    read_early = ref.store.row_hashes
    monkeypatch.setattr(ref.store, "row_hashes", lambda modality: (ids[:-1], hashes[:-1]))
    first = ref.build(["text"], show_progress=False, full=True)[0]
    assert first.version.count == len(ids) - 1
    monkeypatch.setattr(ref.store, "row_hashes", read_early)
    assert "text" in ref.outdated()
    later = ref.build(["text"], show_progress=False)[0]
    assert (later.how, later.added, later.removed, later.version.count) == ("patched", 1, 0, len(ids))


def test_a_damaged_rows_record_means_a_full_build(ref):
    version = ref.build(["text"], show_progress=False)[0].version
    (ref.store.home / version.path / "rows.npy").write_bytes(b"")
    assert ref.build(["text"], show_progress=False)[0].how == "full"


def test_index_built_with_other_weights_is_refused(ref, monkeypatch):
    """Retrained weights under the same model name still make the old index stale."""
    ref.build(["text", "image"], show_progress=False)
    assert ref.store.active_index("image").embedder.startswith(f"{DEFAULT_CONFIG}@")
    other = type("Other", (), {"fingerprint": f"{DEFAULT_CONFIG}@0123456789ab",
                               "search_fingerprint": lambda self, layout, views=1: self.fingerprint})()
    monkeypatch.setattr(ref, "image_embedder", lambda: other)
    ref._loaded.clear()
    with pytest.raises(IndexNotBuiltError, match="mmkb index build"):
        ref.vector_index("image")


def test_entities_sharing_a_picture_rank_by_prominence(home, tmp_path):
    """Saint Martin flies the French flag: an image of it names France first, not the entity
    the index returns first among equals; a `prominence` attribute overrides the population."""
    import json

    from index.config import get_settings
    from tests.conftest import _flag

    kb = tmp_path / "kb"
    (kb / "images").mkdir(parents=True)
    _flag([(0, 35, 149), (255, 255, 255), (237, 41, 57)], kb / "images" / "tricolour.png")
    _flag([(0, 0, 0), (221, 0, 0), (255, 206, 0)], kb / "images" / "deu.png")
    # FAISS returns tied vectors latest-added first: France goes in first, so only the tie-break
    # puts it first.
    rows = [("country:FRA", "France", {"facts": {"population": 67391582}}, "tricolour"),
            ("country:MAF", "Saint Martin", {"facts": {"population": 38659}}, "tricolour"),
            ("country:DEU", "Germany", {"facts": {"population": 83240525}}, "deu"),
            ("country:XFR", "Tiny France", {"prominence": 1e9, "facts": {"population": 10}}, None)]
    with open(kb / "manifest.jsonl", "w") as fh:
        for key, name, attrs, image in rows:
            images = [{"path": f"images/{image}.png", "source": "test", "license": "CC0", "style": "flag"}] if image else []
            fh.write(json.dumps({"key": key, "kind": "country", "name": name, **attrs, "images": images,
                                 "sections": [{"heading": "name", "text": f"{name}.", "source": "test"}]}) + "\n")
    settings = get_settings()
    store = EntityStore(settings.db_url, settings.home_dir)
    ingest_folder(store, kb, show_progress=False)
    ref = ReferenceIndex(store, settings)
    ref.build(["image"], show_progress=False)
    hits = ref.search(image=kb / "images" / "tricolour.png", k=3)
    assert [h.key for h in hits[:2]] == ["country:FRA", "country:MAF"]
    assert hits[0].score == pytest.approx(hits[1].score, abs=1e-5)
    assert store.prominence(["country:XFR", "country:FRA", "country:DEU"]) == \
        {"country:XFR": 1e9, "country:FRA": 67391582.0, "country:DEU": 83240525.0}


def test_one_query_view_embeds_the_image_alone(ref, tiny_kb):
    ref.settings = ref.settings.model_copy(update={"index_views": 1})  # each index image alone too
    ref.build(["image"], show_progress=False)
    ref.settings = ref.settings.model_copy(update={"query_views": 1})
    hits = ref.search(image=tiny_kb / "images" / "npl.png", k=1)
    assert hits[0].key == "country:NPL" and hits[0].scores["image"] == pytest.approx(1.0, abs=1e-3)


def test_query_views_frame_the_image_three_ways():
    from PIL import Image

    from index.embedders import query_views

    img = Image.new("RGB", (40, 20), (200, 10, 10))
    img.paste((0, 0, 255), (10, 5, 30, 15))
    same, zoomed, cropped = query_views(img)
    assert same is img and zoomed.size == img.size and cropped.size == (35, 18)
    assert zoomed.getpixel((0, 0)) == (200, 10, 10)  # the margin takes the border's colour
    assert zoomed.getpixel((20, 10)) == (0, 0, 255)


def test_query_views_setting_is_checked(monkeypatch):
    from pydantic import ValidationError

    from index.config import Settings

    monkeypatch.setenv("MMKB_QUERY_VIEWS", "1")
    assert Settings().query_views == 1
    monkeypatch.setenv("MMKB_QUERY_VIEWS", "2")
    with pytest.raises(ValidationError, match="1 \\(the image alone\\) or 3"):
        Settings()


def test_image_search_vectors_carry_the_layout_and_another_weight_needs_a_rebuild(ref, tiny_kb):
    import numpy as np

    from index.embedders import LAYOUT_DIM, LAYOUT_GRID

    ref.build(["image"], show_progress=False)
    emb = ref.image_embedder()
    version = ref.store.active_index("image")
    assert ref.settings.image_layout_weight == 0.25
    assert version.embedder == f"{emb.fingerprint}+layout0.25/2x2x128s0+views2"
    assert version.dim == emb.dim + LAYOUT_GRID ** 2 * LAYOUT_DIM
    images = [tiny_kb / "images" / "npl.png", tiny_kb / "images" / "btn.png"]
    vecs = emb.encode_search(images, 0.25)
    plain = emb.encode_images(images)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.allclose(emb.pooled(vecs), plain, atol=1e-4)  # the embedding the reader reads is inside
    assert np.allclose(emb.encode_search(images, 0.0), plain)
    text = emb.encode_search_texts(["Nepal"], 0.25)
    assert text.shape == (1, vecs.shape[1]) and not text[:, emb.dim:].any()
    ref.build(["text"], show_progress=False)
    hits = ref.search(text="Nepal", k=10, text_to_image=True)
    key, score = next((h.key, h.scores["image"]) for h in hits if "image" in h.scores)
    pictures = [path for _, path, _ in ref.store.entity_images([key])[key]]
    indexed = emb.pooled(emb.encode_search(pictures, 0.25, views=ref.settings.index_views))
    best = float((emb.encode_texts(["Nepal"]) @ indexed.T).max())
    assert score == pytest.approx(best, abs=1e-3)  # text→image scores stay the embeddings' cosines
    ref.settings = ref.settings.model_copy(update={"image_layout_weight": 0.0})
    ref._loaded.clear()
    with pytest.raises(IndexNotBuiltError, match="mmkb index build"):
        ref.vector_index("image")
    ref.build(["image"], show_progress=False)
    assert ref.store.active_index("image").dim == emb.dim
    assert ref.search(image=images[0], k=1)[0].key == "country:NPL"


def test_index_images_are_the_mean_of_two_views_and_another_count_needs_a_rebuild(ref, tiny_kb):
    import numpy as np

    from index.embedders import LAYOUT_DIM, LAYOUT_GRID, index_views, open_rgb

    emb = ref.image_embedder()
    images = [tiny_kb / "images" / "npl.png", tiny_kb / "images" / "btn.png"]
    vecs = emb.encode_search(images, 0.25, views=2)
    assert vecs.shape == (2, emb.dim + LAYOUT_GRID ** 2 * LAYOUT_DIM)
    # each part stays unit-length, so a dot product is still (embedding cosine + w × cell cosine) / (1 + w)
    assert np.allclose(np.linalg.norm(vecs[:, :emb.dim], axis=1), 1 / 1.25 ** 0.5, atol=1e-5)
    cells = vecs[:, emb.dim:].reshape(2, LAYOUT_GRID ** 2, LAYOUT_DIM)
    assert np.allclose(np.linalg.norm(cells, axis=2), 0.25 ** 0.5 / LAYOUT_GRID / 1.25 ** 0.5, atol=1e-5)
    both = emb.encode_images([v for im in images for v in index_views(open_rgb(im))]).reshape(2, 2, -1).mean(1)
    assert np.allclose(emb.pooled(vecs), both / np.linalg.norm(both, axis=1, keepdims=True), atol=1e-4)
    assert np.allclose(emb.encode_search(images[:1], 0.25, views=2, batch_size=1), vecs[:1], atol=1e-5)
    plain = emb.encode_search(images, 0.0, views=2)  # without the layout: the mean embedding alone
    assert np.allclose(plain, emb.pooled(vecs), atol=1e-4)
    with pytest.raises(ValueError, match="index views is 1"):
        emb.encode_search(images, 0.25, views=3)

    ref.build(["image"], show_progress=False)
    assert ref.store.active_index("image").embedder.endswith("+views2")
    ref.settings = ref.settings.model_copy(update={"index_views": 1})
    ref._loaded.clear()
    with pytest.raises(IndexNotBuiltError, match="mmkb index build"):
        ref.vector_index("image")
    ref.build(["image"], show_progress=False)
    assert not ref.store.active_index("image").embedder.endswith("+views2")
    assert ref.search(image=images[0], k=1)[0].key == "country:NPL"


def test_index_views_setting_is_checked(monkeypatch):
    from pydantic import ValidationError

    from index.config import Settings

    monkeypatch.setenv("MMKB_INDEX_VIEWS", "3")
    with pytest.raises(ValidationError, match="1 \\(the image alone\\) or 2"):
        Settings()


def test_an_image_tower_without_feature_maps_searches_with_its_embedding_alone():
    from types import SimpleNamespace

    from index.embedders import ImageEmbedder

    emb = ImageEmbedder.__new__(ImageEmbedder)  # a tower open_clip gives no forward_intermediates for
    emb.model, emb.fingerprint = SimpleNamespace(visual=object()), "hf-tower@0123456789ab"
    assert emb.layout_of(0.5) == 0.0 and emb.search_fingerprint(0.5) == "hf-tower@0123456789ab"


def test_a_tower_whose_last_map_is_smaller_than_the_grid_has_no_layout():
    from index.embedders import ImageEmbedder

    emb = ImageEmbedder("mmkb-clip-tiny")  # the 32 px network: its last feature map is 1×1
    assert emb.layout_of(0.25) == 0.0 and emb.search_fingerprint(0.25) == emb.fingerprint


def test_layout_weight_setting_is_checked(monkeypatch):
    from pydantic import ValidationError

    from index.config import Settings

    monkeypatch.setenv("MMKB_IMAGE_LAYOUT_WEIGHT", "-1")
    with pytest.raises(ValidationError, match="between 0"):
        Settings()


def test_image_queries_score_against_the_centred_index(ref, tiny_kb):
    """An image's score is its query's cosine with (x − c) / ‖x − c‖, c the index mean times the
    setting's share and n / (n + CENTRE_PRIOR); MMKB_IMAGE_CENTRE=0 gives plain cosines; text→image
    stays plain."""
    import numpy as np

    from index.search import CENTRE_PRIOR, centred

    ref.build(["text", "image"], show_progress=False)
    assert ref.settings.image_centre == 0.5
    ref.settings = ref.settings.model_copy(update={"image_centre": 1.0})
    index = ref.vector_index("image")
    ids = index.ids()
    stored = index.reconstruct(ids)
    c = stored.mean(0) * len(ids) / (len(ids) + CENTRE_PRIOR)
    assert np.allclose(ref.centre(), c, atol=1e-6)
    ref.settings = ref.settings.model_copy(update={"image_centre": 0.5})  # read on every search: no reload
    c = c / 2
    assert np.allclose(ref.centre(), c, atol=1e-6)
    q = ref.embed_image_queries([tiny_kb / "images" / "npl.png"])[0]
    expected = centred(stored, c) @ q
    hits = ref.search_embedding("image", q, k=10)
    rows = ref.store.image_hits([int(i) for i in ids])
    best = {}
    for i, s in zip(ids, expected):
        key = rows[int(i)]["key"]
        best[key] = max(best.get(key, -9.0), float(s))
    assert [h.key for h in hits] == sorted(best, key=lambda k: -best[k])
    assert np.allclose([h.score for h in hits], [best[h.key] for h in hits], atol=1e-5)
    assert [m.score for m in hits[0].matches] == sorted((m.score for m in hits[0].matches), reverse=True)
    assert ref.search(image=tiny_kb / "images" / "npl.png", k=1)[0].score == pytest.approx(hits[0].score, abs=1e-5)

    ref.settings = ref.settings.model_copy(update={"image_centre": 0.0})  # plain cosines, no rebuild
    plain = ref.search_embedding("image", q, k=10)
    assert plain[0].score == pytest.approx(float(np.max(stored @ q)), abs=1e-5)
    text_plain = ref.search(text="Thimphu", k=3, text_to_image=True)
    ref.settings = ref.settings.model_copy(update={"image_centre": 0.5})
    text_centred = ref.search(text="Thimphu", k=3, text_to_image=True)
    assert [(h.key, h.scores) for h in text_centred] == [(h.key, h.scores) for h in text_plain]


def test_image_centre_setting_is_read_from_the_environment(monkeypatch):
    from index.config import Settings

    monkeypatch.setenv("MMKB_IMAGE_CENTRE", "0")
    assert Settings().image_centre == 0
    for bad in ("1.5", "-0.1"):
        monkeypatch.setenv("MMKB_IMAGE_CENTRE", bad)
        with pytest.raises(ValueError, match="MMKB_IMAGE_CENTRE is between 0"):
            Settings()


def test_rescored_reorders_by_the_centred_cosine_and_identical_pictures_tie_exactly():
    import numpy as np

    from index.search import rescored

    def unit(v):
        v = np.asarray(v, np.float32)
        return v / np.linalg.norm(v)

    q, a, b = unit([1, 0, 0.5]), unit([1, 0.3, 1]), unit([1, 0, 2])
    centre = np.array([0, 0, 0.6], np.float32)
    assert a @ q > b @ q + 0.1  # a first by the plain cosine
    found = [(float(a @ q), 1), (float(b @ q), 2)] + [(float(a @ q), i) for i in range(3, 40)]
    vectors = np.stack([a, b] + [a] * 37)
    out = rescored([i for _, i in found], vectors, centre, q)
    assert out[0][1] == 2  # b first once the common part is taken out
    expected_b = float((b - centre) @ q / np.linalg.norm(b - centre))
    assert out[0][0] == pytest.approx(expected_b, abs=1e-6)
    assert len({s for s, i in out if i != 2}) == 1  # 38 copies of a: one score, not 38 rounding variants
    assert rescored([], np.zeros((0, 3), np.float32), centre, q) == []
