"""The entity store and ingest, on SQLite and on the PostgreSQL server."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import inspect

from index.ingest import IngestError, ingest_folder
from index.store import IndexVersion


def test_migration_creates_every_table(store):
    tables = set(inspect(store.engine).get_table_names())
    assert {"entities", "aliases", "documents", "sections", "images", "tags", "index_versions",
            "alembic_version"} <= tables


def test_ingest_stores_entities_sections_images_and_tags(store, tiny_kb):
    report = ingest_folder(store, tiny_kb, show_progress=False)
    assert report.ok and report.added == 3 and report.images_added == 3
    assert store.stats() == {"entities": 3, "aliases": 2, "documents": 3, "sections": 4, "images": 3, "tags": 1}
    btn = store.entity("country:BTN")
    assert btn.name == "Bhutan" and btn.kind == "country"
    paths = [p for batch in store.iter_images() for _, p in batch]
    assert all(p.is_file() and p.is_relative_to(store.home) for p in paths)


def test_names_and_images_for_grounding(store, tiny_kb):
    """What rag.grounding reads, on SQLite and PostgreSQL alike."""
    ingest_folder(store, tiny_kb, show_progress=False)
    rows = {key: (kind, name, aliases) for key, kind, name, aliases, _ in store.names()}
    assert rows["country:BTN"] == ("country", "Bhutan", ["Kingdom of Bhutan"])
    assert rows["emoji:1F34E"] == ("emoji", "Red apple", ["apple"])
    images = store.entity_images(["country:BTN", "emoji:1F34E"])
    (image_id, path, style), = images["country:BTN"]
    assert isinstance(image_id, int) and path.is_file() and style == "flag"
    assert images["emoji:1F34E"][0][2] == "emoji"


def test_reingest_is_idempotent(store, tiny_kb):
    ingest_folder(store, tiny_kb, show_progress=False)
    before = store.stats()
    report = ingest_folder(store, tiny_kb, show_progress=False)
    assert (report.added, report.updated, report.unchanged, report.images_added) == (0, 0, 3, 0)
    assert store.stats() == before


def test_changed_sections_replace_the_old_document(store, tiny_kb):
    ingest_folder(store, tiny_kb, show_progress=False)
    lines = (tiny_kb / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["sections"][0]["text"] = "The capital of Nepal is Kathmandu, its largest city."
    lines[1] = json.dumps(rec)
    (tiny_kb / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    report = ingest_folder(store, tiny_kb, show_progress=False)
    assert (report.updated, report.unchanged) == (1, 2)
    texts = [t for batch in store.iter_sections() for _, t in batch]
    assert "The capital of Nepal is Kathmandu, its largest city." in texts
    assert "The capital of Nepal is Kathmandu." not in texts


def test_bad_input_is_reported_with_line_and_good_items_kept(store, tiny_kb):
    ingest_folder(store, tiny_kb, show_progress=False)
    before = store.stats()
    (tiny_kb / "images" / "broken.png").write_bytes((tiny_kb / "images" / "btn.png").read_bytes()[:60])
    bad = [
        '{"key": "country:XXA", "name": "Missing image", "images": [{"path": "images/nope.png"}]}',
        "{not json",
        '{"key": "country:XXB", "name": "Truncated", "images": [{"path": "images/broken.png"}]}',
        '{"name": "no key"}',
        '{"key": "country:XXC", "name": "Good one", "sections": [{"text": "Fine."}]}',
    ]
    with open(tiny_kb / "manifest.jsonl", "a") as fh:
        fh.write("\n".join(bad) + "\n")
    report = ingest_folder(store, tiny_kb, show_progress=False)
    messages = {p.line: p.message for p in report.problems}
    assert "image file not found" in messages[4] and "nope.png" in messages[4]
    assert "not valid JSON" in messages[5]
    assert "truncated" in messages[6]
    assert "key" in messages[7]
    assert store.entity("country:XXC").name == "Good one"
    after = store.stats()
    assert after["images"] == before["images"] and after["entities"] == before["entities"] + 3


def test_csv_manifest_rows_merge_by_key(store, tmp_path, tiny_kb):
    folder = tmp_path / "csvkb"
    folder.mkdir()
    (folder / "btn.png").write_bytes((tiny_kb / "images" / "btn.png").read_bytes())
    (folder / "manifest.csv").write_text(
        "key,name,kind,aliases,heading,text,image\n"
        "country:BTN,Bhutan,country,Druk Yul|BT,capital,The capital of Bhutan is Thimphu.,btn.png\n"
        "country:BTN,Bhutan,country,,region,Bhutan is in Asia.,\n")
    report = ingest_folder(store, folder, show_progress=False)
    assert report.ok and report.added == 1
    assert store.stats()["sections"] == 2 and store.stats()["aliases"] == 2


def test_manifests_saved_with_a_byte_order_mark_read_alike(store, tmp_path, tiny_kb):
    """Spreadsheet programs and Windows editors start UTF-8 files with a BOM; the first key must still read."""
    (tiny_kb / "manifest.jsonl").write_bytes(b"\xef\xbb\xbf" + (tiny_kb / "manifest.jsonl").read_bytes())
    assert ingest_folder(store, tiny_kb, show_progress=False).added == 3
    folder = tmp_path / "csvkb"
    folder.mkdir()
    (folder / "manifest.csv").write_text("\ufeffkey,name,kind,heading,text\nthing:A,A,thing,about,A is a thing.\n",
                                         encoding="utf-8")
    report = ingest_folder(store, folder, show_progress=False)
    assert report.ok and report.added == 1


def test_removing_entities_takes_their_rows_and_nothing_else(store, tiny_kb):
    ingest_folder(store, tiny_kb, show_progress=False)
    with pytest.raises(KeyError, match="country:ZZZ"):
        store.remove_entities(["country:BTN", "country:ZZZ"])  # one unknown key: nothing removed
    assert store.stats()["entities"] == 3
    gone = store.remove_entities(["country:BTN", "country:BTN"])
    assert gone == {"entities": 1, "sections": 2, "images": 1, "tags": 0}
    assert store.entity("country:BTN") is None and store.entity("country:NPL") is not None
    assert store.stats() == {"entities": 2, "aliases": 1, "documents": 2, "sections": 2, "images": 2, "tags": 1}


def test_missing_manifest_is_a_clear_error(store, tmp_path):
    with pytest.raises(IngestError, match="manifest.jsonl or manifest.csv"):
        ingest_folder(store, tmp_path, show_progress=False)


def test_filters_and_index_versions(store, tiny_kb):
    ingest_folder(store, tiny_kb, show_progress=False)
    assert store.allowed_ids("text") is None
    emoji_sections = store.allowed_ids("text", kinds=["emoji"])
    assert len(emoji_sections) == 1
    assert len(store.allowed_ids("image", keys=["country:BTN", "country:NPL"])) == 2
    v1 = store.activate_index(IndexVersion(modality="text", embedder="e", kind="flat", count=4, dim=8,
                                           path="a", checksum="x"))
    v2 = store.activate_index(IndexVersion(modality="text", embedder="e", kind="flat", count=4, dim=8,
                                           path="b", checksum="y"))
    assert store.active_index("text").id == v2.id
    assert store.rollback_index("text").id == v1.id
    assert store.active_index("text").path == "a"
    with pytest.raises(ValueError, match="no earlier"):
        store.rollback_index("image")


def test_replace_images_makes_a_line_s_images_the_entity_s_unless_one_fails_to_read(store, tiny_kb):
    """A rebuilt KB that dropped a wrong drawing drops it from the store too; a typo in a path does not
    cost the images already stored."""
    import shutil

    shutil.copy(tiny_kb / "images" / "npl.png", tiny_kb / "images" / "npl2.png")
    lines = (tiny_kb / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["images"].append({"path": "images/npl2.png", "source": "wrong", "style": "flag"})
    (tiny_kb / "manifest.jsonl").write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    ingest_folder(store, tiny_kb, show_progress=False)
    assert len(store.entity_images(["country:BTN"])["country:BTN"]) == 2
    (tiny_kb / "manifest.jsonl").write_text("\n".join(lines) + "\n")  # by default images are only added
    assert ingest_folder(store, tiny_kb, show_progress=False).images_removed == 0
    assert len(store.entity_images(["country:BTN"])["country:BTN"]) == 2
    typo = {**rec, "images": [rec["images"][0], {"path": "images/nope.png"}]}
    (tiny_kb / "manifest.jsonl").write_text("\n".join([json.dumps(typo), *lines[1:]]) + "\n")
    report = ingest_folder(store, tiny_kb, show_progress=False, replace_images=True)
    assert report.images_removed == 0 and len(report.problems) == 1
    assert len(store.entity_images(["country:BTN"])["country:BTN"]) == 2
    (tiny_kb / "manifest.jsonl").write_text("\n".join(lines) + "\n")  # the drawing is gone from the KB
    report = ingest_folder(store, tiny_kb, show_progress=False, replace_images=True)
    assert report.ok and (report.updated, report.images_removed) == (1, 1)
    (kept,) = store.entity_images(["country:BTN"])["country:BTN"]
    assert kept[1].read_bytes() == (tiny_kb / "images" / "btn.png").read_bytes()
    assert store.stats()["images"] == 3


def test_a_picture_redrawn_under_its_name_is_added_beside_the_old_one_and_said(store, tiny_kb, monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    from api.cli import app
    from index.config import get_settings

    ingest_folder(store, tiny_kb, show_progress=False)
    Image.new("RGB", (30, 20), (0, 90, 200)).save(tiny_kb / "images" / "npl.png")
    report = ingest_folder(store, tiny_kb, show_progress=False)
    assert (report.updated, report.images_added, report.kept_unlisted) == (1, 1, 1)
    assert len(store.entity_images(["country:NPL"])["country:NPL"]) == 2
    Image.new("RGB", (30, 20), (200, 90, 0)).save(tiny_kb / "images" / "npl.png")
    monkeypatch.setenv("MMKB_DATABASE_URL", store.url)
    get_settings.cache_clear()
    out = CliRunner().invoke(app, ["index", "ingest", str(tiny_kb)], env={"COLUMNS": "300"})
    assert out.exit_code == 0 and "1 entities gained a picture" in out.output and "--replace-images" in out.output
    assert ingest_folder(store, tiny_kb, show_progress=False, replace_images=True).kept_unlisted == 0
