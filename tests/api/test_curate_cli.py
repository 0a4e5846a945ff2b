"""`mmkb curate …` and `mmkb index search --tag` as a curator runs them."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from api.cli import app

runner = CliRunner()


def test_tag_review_and_search_by_tag(home, tiny_kb, tiny_tagger):
    assert runner.invoke(app, ["index", "ingest", str(tiny_kb)]).exit_code == 0
    tagger = str(tiny_tagger[0])
    result = runner.invoke(app, ["curate", "tag", "--tagger", tagger, "--threshold", "0", "--top", "2", "--json",
                                 "--kind", "country", "--kind", "emoji"])
    assert result.exit_code == 0, result.output
    suggested = json.loads(result.stdout)
    assert [s["key"] for s in suggested] == ["country:BTN", "country:NPL", "emoji:1F34E"]
    assert (home / "curation" / "tags.html").is_file()
    label = suggested[0]["suggested"][0]["label"]
    result = runner.invoke(app, ["curate", "review", "--accept", f"country:BTN={label}", "--reject-below", "2"])
    assert result.exit_code == 0 and "accepted 1, rejected 5" in result.output, result.output
    rows = json.loads(runner.invoke(app, ["curate", "tags", "--state", "accepted", "--json"]).stdout)
    assert {(r["key"], r["label"]) for r in rows} == {("country:BTN", label), ("emoji:1F34E", "fruit")}
    assert runner.invoke(app, ["index", "build", "--modality", "text"]).exit_code == 0
    hits = json.loads(runner.invoke(app, ["index", "search", "--text", "capital", "--tag", label, "--json"]).stdout)
    assert [h["key"] for h in hits] == ["country:BTN"]
    result = runner.invoke(app, ["index", "search", "--text", "capital", "--tag", "nothing-has-this"])
    assert result.exit_code == 2 and "no entity has an accepted tag" in result.output


def test_curation_errors_are_clear(home, tiny_kb, tmp_path):
    runner.invoke(app, ["index", "ingest", str(tiny_kb)])
    result = runner.invoke(app, ["curate", "review"])
    assert result.exit_code == 2 and "say what to review" in result.output
    result = runner.invoke(app, ["curate", "review", "--accept", "country:BTN"])
    assert result.exit_code == 2 and "KEY=LABEL" in result.output
    result = runner.invoke(app, ["curate", "review", "--accept", "emoji:NOPE=mouth"])
    assert result.exit_code == 2 and "no entity has the key 'emoji:NOPE'" in result.output
    result = runner.invoke(app, ["curate", "tag", "--tagger", str(tmp_path / "none")])
    assert result.exit_code == 2 and "mmkb train tagger" in result.output
    result = runner.invoke(app, ["curate", "dedup"])
    assert result.exit_code == 2 and "mmkb index build" in result.output
    result = runner.invoke(app, ["curate", "review", "--accept-above", "0.2", "--reject-below", "0.5"])
    assert result.exit_code == 2 and "below --reject-below" in result.output
    result = runner.invoke(app, ["train", "tagger", "--views", "0"])
    assert result.exit_code == 2 and "--views must be at least 1" in result.output
    result = runner.invoke(app, ["train", "tagger", "--labels", "graph"])
    assert result.exit_code == 2 and "choose one of" in result.output
    result = runner.invoke(app, ["curate", "tags", "--state", "maybe"])
    assert result.exit_code == 2 and "pending, accepted or rejected" in result.output


def test_dedup_reports_pairs_on_a_page(home, tiny_kb):
    import shutil

    shutil.copy(tiny_kb / "images" / "btn.png", tiny_kb / "images" / "btn-copy.png")
    with open(tiny_kb / "manifest.jsonl", "a") as fh:  # Nepal holds Bhutan's flag too: a mislabelled image
        fh.write(json.dumps({"key": "country:NPL", "name": "Nepal", "kind": "country",
                             "images": [{"path": "images/btn-copy.png", "style": "flag"}]}) + "\n")
    assert runner.invoke(app, ["index", "ingest", str(tiny_kb)]).exit_code == 0
    assert runner.invoke(app, ["index", "build", "--modality", "image"]).exit_code == 0
    result = runner.invoke(app, ["curate", "dedup", "--json"])
    assert result.exit_code == 0, result.output
    pairs = json.loads(result.stdout)
    assert any({p["a"]["key"], p["b"]["key"]} == {"country:BTN", "country:NPL"} and p["same_file"] for p in pairs)
    assert "Near-duplicate images" in (home / "curation" / "duplicates.html").read_text()
