"""The `mmkb` command line as a user runs it."""
from __future__ import annotations

import json

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
