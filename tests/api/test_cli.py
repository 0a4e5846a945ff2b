"""The `mmkb` command line as a user runs it."""
from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from api.cli import app

runner = CliRunner()


def test_ingest_build_search_stats(home, tiny_kb):
    result = runner.invoke(app, ["index", "ingest", str(tiny_kb)])
    assert result.exit_code == 0, result.output
    assert "entities added 3" in result.output
    result = runner.invoke(app, ["index", "build", "--modality", "text"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["index", "search", "--text", "Thimphu", "--json", "-k", "2"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits[0]["key"] == "country:BTN" and hits[0]["name"] == "Bhutan"
    assert hits[0]["matched"]["text"] == "The capital of Bhutan is Thimphu."
    assert set(hits[0]) >= {"key", "name", "kind", "score", "matched"}
    paged = runner.invoke(app, ["index", "search", "--text", "Thimphu", "-k", "2", "--page", str(home / "s.html")])
    assert paged.exit_code == 0, paged.output
    page = (home / "s.html").read_text()
    assert "“Thimphu”" in page and "<code>country:BTN</code>" in page and "The capital of Bhutan is Thimphu." in page
    stats = json.loads(runner.invoke(app, ["index", "stats", "--json"]).stdout)
    assert stats["counts"]["entities"] == 3 and stats["indexes"]["text"]["count"] == 4


def test_bad_ingest_reports_file_and_line_and_exits_nonzero(home, tiny_kb):
    with open(tiny_kb / "manifest.jsonl", "a") as fh:
        fh.write('{"key": "country:ZZZ", "name": "Ghost", "images": [{"path": "images/missing.png"}]}\n')
    result = runner.invoke(app, ["index", "ingest", str(tiny_kb)])
    assert result.exit_code == 1
    assert "manifest.jsonl:4" in result.output and "missing.png" in result.output
    assert "entities added 4" in result.output  # the good entities, and Ghost without its image


def test_search_without_index_or_query_is_a_clear_error(home, tiny_kb):
    runner.invoke(app, ["index", "ingest", str(tiny_kb)])
    result = runner.invoke(app, ["index", "search", "--text", "x"])
    assert result.exit_code == 2 and "mmkb index build" in result.output
    result = runner.invoke(app, ["index", "search"])
    assert result.exit_code == 2 and "--text" in result.output


def test_search_refuses_empty_text_unreadable_images_unknown_kinds_and_k_0(home, tiny_kb, tmp_path):
    runner.invoke(app, ["index", "ingest", str(tiny_kb)])
    runner.invoke(app, ["index", "build", "--modality", "text"])
    blank = runner.invoke(app, ["index", "search", "--text", "  "])
    assert blank.exit_code == 2 and "not empty" in blank.output
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    result = runner.invoke(app, ["index", "search", "--image", str(notes)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "not an image that can be read" in result.output
    assert "BytesIO" not in result.output and "Traceback" not in result.output
    planet = runner.invoke(app, ["index", "search", "--text", "Thimphu", "--kind", "planet"], env={"COLUMNS": "300"})
    assert planet.exit_code == 2 and "'planet'" in planet.output and "country" in planet.output
    assert runner.invoke(app, ["index", "search", "--text", "Thimphu", "-k", "0"]).exit_code == 2
    folder = runner.invoke(app, ["index", "search", "--text", "Thimphu", "--page", str(tmp_path)], env={"COLUMNS": "300"})
    assert folder.exit_code == 2 and "is a folder" in folder.output


def test_messages_print_user_data_as_given(home, tiny_kb):
    """An entity key followed by a colon (`thing:B:`) is no emoji code, and brackets are no markup."""
    with open(tiny_kb / "manifest.jsonl", "a") as fh:
        fh.write('{"key": "thing:B", "name": "[b]Bee", "sections": [{"heading": "about", "text": "A bee [b]."}], '
                 '"images": [{"path": "images/missing.png"}]}\n')
    result = runner.invoke(app, ["index", "ingest", str(tiny_kb)], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "thing:B: image file not found" in result.output
    runner.invoke(app, ["index", "build", "--modality", "text"])
    hits = runner.invoke(app, ["index", "search", "--text", "Bee"], env={"COLUMNS": "300"})
    assert hits.exit_code == 0 and "[b]Bee" in hits.output
    missing = runner.invoke(app, ["index", "search", "--image", "[b]nope.png"], env={"COLUMNS": "300"})
    assert missing.exit_code == 2 and "image not found: [b]nope.png" in missing.output


def test_image_files_are_checked_whole(tmp_path):
    """PNG, JPEG and WebP pass; a truncated PNG opens but does not decode, and is refused."""
    from PIL import Image

    from index.ingest import image_problem

    picture = Image.new("RGB", (40, 30), (200, 30, 30))
    for ext in ("png", "jpg", "webp"):
        picture.save(tmp_path / f"ok.{ext}")
        assert image_problem(tmp_path / f"ok.{ext}") is None
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert "is not an image that can be read" in image_problem(tmp_path / "cut.png")
    assert image_problem(tmp_path / "none.png") == f"image not found: {tmp_path / 'none.png'}"


def test_the_command_line_turns_off_transformers_loading_bars(home, monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    runner.invoke(app, ["index", "stats", "--json"])
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_image_search_page_shows_the_query_and_each_hit_s_picture(home, tiny_kb):
    assert runner.invoke(app, ["index", "ingest", str(tiny_kb)]).exit_code == 0
    built = runner.invoke(app, ["index", "build", "--modality", "image"])
    assert built.exit_code == 0, built.output
    query = tiny_kb / "images" / "btn.png"
    result = runner.invoke(app, ["index", "search", "--image", str(query), "-k", "1", "--page", str(home / "p.html")])
    assert result.exit_code == 0, result.output
    page = (home / "p.html").read_text()
    assert "1 entity for <img" in page and f"<code>{query}</code>" in page and "<code>country:BTN</code>" in page
    assert page.count("data:image/png") == 2  # the query and the hit's best-matching picture


def test_remove_takes_entities_out_of_the_store_and_the_next_build_out_of_the_index(home, tiny_kb):
    runner.invoke(app, ["index", "ingest", str(tiny_kb)])
    runner.invoke(app, ["index", "build", "--modality", "text"])
    unknown = runner.invoke(app, ["index", "remove", "emoji:1F34E", "country:ZZZ", "--yes"])
    assert unknown.exit_code == 2 and "'country:ZZZ'" in unknown.output and "nothing was removed" in unknown.output
    asked = runner.invoke(app, ["index", "remove", "emoji:1F34E"], input="n\n")
    assert asked.exit_code == 2 and "nothing removed" in asked.output
    removed = runner.invoke(app, ["index", "remove", "emoji:1F34E", "--yes"])
    assert removed.exit_code == 0, removed.output
    assert "removed 1 entities, 1 sections, 1 pictures, 1 tags" in removed.output
    stale = runner.invoke(app, ["index", "search", "--text", "apple", "--json"])
    assert "emoji:1F34E" not in stale.stdout  # the store no longer has its row, even before a build
    built = runner.invoke(app, ["index", "build", "--modality", "text"])
    assert built.exit_code == 0 and "0 added, 1 removed" in built.output, built.output
    stats = json.loads(runner.invoke(app, ["index", "stats", "--json"]).stdout)
    assert stats["counts"]["entities"] == 2 and stats["indexes"]["text"]["count"] == 3


def test_stats_notes_an_index_built_with_another_embedder_than_the_settings_name(home, tiny_kb, monkeypatch):
    from index.config import get_settings

    runner.invoke(app, ["index", "ingest", str(tiny_kb)])
    runner.invoke(app, ["index", "build", "--modality", "text"])
    assert "note:" not in runner.invoke(app, ["index", "stats"]).output
    monkeypatch.setenv("MMKB_TEXT_EMBEDDER", "another-model")
    get_settings.cache_clear()
    result = runner.invoke(app, ["index", "stats"])
    assert result.exit_code == 0
    assert "built with the embedder all-MiniLM-L6-v2 but MMKB_TEXT_EMBEDDER is another-model" in result.output
