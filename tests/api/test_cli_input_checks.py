"""What a new user runs into: each mistake gets one line that says what was wrong and what to do, and no
command overwrites its own input or an earlier output."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from api.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "300"}


def test_eval_never_writes_over_its_questions_and_names_a_wrong_kind_of_path(tiny_kb, tmp_path):
    questions = tmp_path / "q.jsonl"
    text = json.dumps({"data_id": "q1", "image_id": "btn", "question": "Capital?", "answer": "Thimphu",
                       "data_split": "val_seen"}) + "\n"
    questions.write_text(text)
    images = str(tiny_kb / "images")
    same = runner.invoke(app, ["eval", "kbvqa", str(questions), images, str(questions)], env=WIDE)
    assert same.exit_code == 2 and "is the questions file" in same.output
    page = runner.invoke(app, ["eval", "kbvqa", str(questions), images, str(tmp_path / "p.jsonl"),
                               "--page", str(questions)], env=WIDE)
    assert page.exit_code == 2 and "the page path is the questions file" in page.output
    assert questions.read_text() == text
    folder = runner.invoke(app, ["eval", "kbvqa", images, images, str(tmp_path / "p.jsonl")], env=WIDE)
    assert folder.exit_code == 2 and "the questions path" in folder.output and "is a folder" in folder.output
    file_as_images = runner.invoke(app, ["eval", "kbvqa", str(questions), str(questions), str(tmp_path / "p.jsonl")],
                                   env=WIDE)
    assert file_as_images.exit_code == 2 and "is a file, not a folder" in file_as_images.output


def test_infoseek_reader_takes_a_single_answer_and_reports_the_column_of_bad_json(tmp_path):
    from rag.kbvqa.datasets import read_infoseek

    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"data_id": "q1", "image_id": "i", "question": "Capital?", "answer": "Tbilisi",
                                "answer_eval": "Tiflis", "data_split": "val_seen"}) + "\n")
    [example] = read_infoseek(path)
    assert example.answers == ["Tbilisi"] and example.answer_eval == ["Tiflis"]
    path.write_text('{"data_id": "q1", "answer": \n{"data_id": "q2"}\n')
    with pytest.raises(ValueError, match=r"q.jsonl:1: not valid JSON \(Expecting value at column 29\)"):
        read_infoseek(path)
    path.write_text(json.dumps({"data_id": "q1", "image_id": "i", "question": "Capital?", "answer": "  ",
                                "data_split": "val_seen"}) + "\n")
    with pytest.raises(ValueError, match="'answer' must be a non-empty string or list"):
        read_infoseek(path)


def test_evaluation_page_shows_the_aliases_answer_eval_accepts(tiny_kb, tmp_path):
    from rag.evaluate import evaluation_page
    from rag.kbvqa.datasets import KBVQAExample

    image = tiny_kb / "images" / "btn.png"
    example = KBVQAExample("q1", "btn", "Capital?", ["Tiflis"], ["Tiflis", "Tbilisi"], "val_seen")
    record = {"data_id": "q1", "prediction": "Tbilisi", "correct": True, "retrieved": False, "p_ret": 0.2,
              "retrieved_entities": [], "semantic_tags": {}, "citations": []}
    summary = {"scores": {"splits": {"seen": {"accuracy": 1.0, "count": 1}}}, "overall": 1.0, "all": None,
               "count": 1, "retrieval_recall": None, "skipped_retrieval": 1.0, "latency_p50_ms": 5.0, "errors": {}}
    page = evaluation_page(summary, [record], [example], [image], tmp_path / "p.html").read_text()
    assert "accepted: Tiflis; Tbilisi" in page


def test_ingest_says_an_image_was_left_out_not_the_line_and_a_missing_folder_is_not_found(home, tiny_kb, tmp_path):
    with open(tiny_kb / "manifest.jsonl", "a") as fh:
        fh.write('{"key": "country:ZZZ", "name": "Ghost", "images": [{"path": "images/missing.png"}]}\n'
                 '{"key": "country:YYY", "name": "Cut", \n')
    result = runner.invoke(app, ["index", "ingest", str(tiny_kb)], env=WIDE)
    assert result.exit_code == 1
    assert "skipped an image" in result.output and "stored without this image" in result.output
    assert "skipped the line" in result.output and "at column 39" in result.output
    missing = runner.invoke(app, ["index", "ingest", str(tmp_path / "nowhere")], env=WIDE)
    assert missing.exit_code == 2 and "not found" in missing.output


def test_an_empty_store_and_a_stale_index_say_what_to_run(home, tiny_kb):
    empty = runner.invoke(app, ["index", "search", "--text", "Thimphu"], env=WIDE)
    assert empty.exit_code == 2 and "holds no entities yet" in empty.output and "mmkb demo" in empty.output
    assert runner.invoke(app, ["index", "ingest", str(tiny_kb)]).exit_code == 0
    assert runner.invoke(app, ["index", "build", "--modality", "text"]).exit_code == 0
    fresh = runner.invoke(app, ["index", "search", "--text", "Thimphu"], env=WIDE)
    assert fresh.exit_code == 0 and "note:" not in fresh.output
    more = tiny_kb.parent / "more"
    more.mkdir()
    (more / "manifest.jsonl").write_text(json.dumps({"key": "country:ZZZ", "name": "Zed", "sections": [
        {"heading": "capital", "text": "The capital of Zed is Zedville."}]}) + "\n")
    assert runner.invoke(app, ["index", "ingest", str(more)]).exit_code == 0
    stale = runner.invoke(app, ["index", "search", "--text", "Zedville"], env=WIDE)
    assert stale.exit_code == 0 and "the text index holds 4 sections but the store 5" in stale.output
    stats = runner.invoke(app, ["index", "stats"], env=WIDE)
    assert stats.exit_code == 0 and "entities 4" in stats.output and "mmkb index build" in stats.output
    built = runner.invoke(app, ["index", "build", "--modality", "text"], env=WIDE)
    assert built.exit_code == 0 and "1 added, 0 removed" in built.output
    again = runner.invoke(app, ["index", "build", "--modality", "text"], env=WIDE)
    assert again.exit_code == 0 and "already up to date" in again.output


def test_any_index_version_can_be_made_active_again(home, tiny_kb):
    assert runner.invoke(app, ["index", "ingest", str(tiny_kb)]).exit_code == 0
    for _ in range(2):
        assert runner.invoke(app, ["index", "build", "--modality", "text", "--full"]).exit_code == 0
    listed = runner.invoke(app, ["index", "versions"], env=WIDE)
    rows = [line.split() for line in listed.output.splitlines() if "text" in line]
    assert listed.exit_code == 0 and [r[1] for r in rows] == ["2", "1"] and "yes" in rows[0] and "yes" not in rows[1]
    assert "is active again" in runner.invoke(app, ["index", "rollback", "text"], env=WIDE).output  # back to 1
    forward = runner.invoke(app, ["index", "rollback", "text", "--to", "2"], env=WIDE)
    assert forward.exit_code == 0 and "version 2" in forward.output
    stats = json.loads(runner.invoke(app, ["index", "stats", "--json"]).output)
    assert stats["indexes"]["text"]["id"] == 2
    wrong = runner.invoke(app, ["index", "rollback", "image", "--to", "2"], env=WIDE)
    assert wrong.exit_code == 2 and "no image index version 2" in wrong.output


def test_curation_and_rollback_refuse_names_the_store_does_not_hold(home, tiny_kb, tiny_tagger):
    assert runner.invoke(app, ["index", "ingest", str(tiny_kb)]).exit_code == 0
    kind = runner.invoke(app, ["curate", "tag", "--kind", "planet", "--dry-run", "--tagger", str(tiny_tagger[0])], env=WIDE)
    assert kind.exit_code == 2 and "planet" in kind.output and "country" in kind.output
    key = runner.invoke(app, ["curate", "tags", "--key", "emoji:NOPE"], env=WIDE)
    assert key.exit_code == 2 and "no entity has the key 'emoji:NOPE'" in key.output
    rollback = runner.invoke(app, ["index", "rollback", "planet"], env=WIDE)
    assert rollback.exit_code == 2 and "text and image" in rollback.output


def test_ask_takes_the_image_as_an_option_and_the_question_as_an_argument(home, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    # the question fills the one path no option names; the bad image is then reported, not a missing question
    mixed = runner.invoke(app, ["ask", "--image", str(notes), "What is the capital?"], env=WIDE)
    assert mixed.exit_code == 2 and "not an image" in mixed.output
    extra = runner.invoke(app, ["ask", str(notes), "--question", "A", "B"], env=WIDE)
    assert extra.exit_code == 2 and "'B' is one too many" in extra.output
    for blank in ("", "   "):
        empty = runner.invoke(app, ["ask", str(notes), blank], env=WIDE)
        assert empty.exit_code == 2 and "the question is empty" in empty.output


def test_generate_checks_its_images_and_output_folder_first(tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    bad_ref = runner.invoke(app, ["generate", "--prompt", "a flag", "--ref", str(notes)], env=WIDE)
    assert bad_ref.exit_code == 2 and "not an image that can be read" in bad_ref.output
    folder_ref = runner.invoke(app, ["generate", "--prompt", "a flag", "--ref", str(tmp_path)], env=WIDE)
    assert folder_ref.exit_code == 2 and "is a folder" in folder_ref.output
    bad_edit = runner.invoke(app, ["edit", "--image", str(notes), "--instruction", "make it green"], env=WIDE)
    assert bad_edit.exit_code == 2 and "not an image" in bad_edit.output
    out_file = runner.invoke(app, ["generate", "--prompt", "a flag", "--out", str(notes)], env=WIDE)
    assert out_file.exit_code == 2 and "is a file" in out_file.output
    blank = runner.invoke(app, ["generate", "--prompt", "  "], env=WIDE)
    assert blank.exit_code == 2 and "the prompt is empty" in blank.output


def test_generated_images_never_replace_earlier_ones(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from api.generate_cli import write_outputs

    result = SimpleNamespace(images=[Image.new("RGB", (4, 4))], provenance={"seeds": [0]})
    first = write_outputs(result, tmp_path)
    second = write_outputs(result, tmp_path)
    assert [p.name for p in first + second] == ["sample-0.png", "sample-0-2.png"]
    assert json.loads((tmp_path / "sample-0-2.json").read_text())["file"] == "sample-0-2.png"


def test_bad_settings_and_an_unreachable_database_are_one_line(monkeypatch, capsys, tmp_path):
    from api.cli import main
    from index.config import get_settings

    def run(**env):
        get_settings.cache_clear()
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr("sys.argv", ["mmkb", "index", "stats"])
        with pytest.raises(SystemExit) as exit_:
            main()
        get_settings.cache_clear()
        return exit_.value.code, capsys.readouterr().err

    monkeypatch.setenv("MMKB_HOME", str(tmp_path))
    code, err = run(MMKB_DEVICE="gpu9")
    assert code == 2 and "MMKB_DEVICE='gpu9'" in err and "cuda:N" in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("MMKB_DEVICE")
    code, err = run(MMKB_MEMORY_BUDGET_MB="abc")
    assert code == 2 and "MMKB_MEMORY_BUDGET_MB='abc'" in err
    monkeypatch.delenv("MMKB_MEMORY_BUDGET_MB")
    code, err = run(MMKB_DATABASE_URL="postgresql+psycopg2://nobody:secret@127.0.0.1:1/none")
    assert code == 2 and "cannot use the database" in err and "MMKB_DATABASE_URL" in err
    assert "secret" not in err and len(err.strip().splitlines()) == 1
    code, err = run(MMKB_DATABASE_URL="mysql://nobody:secret@127.0.0.1:1/none")  # its driver is not installed
    assert code == 2 and "'MySQLdb'" in err and "postgresql+psycopg2://" in err and "secret" not in err
    code, err = run(MMKB_DATABASE_URL="postgresql://nobody:secret@127.0.0.1:1/none")  # no driver named
    assert code == 2 and "cannot use the database" in err and "secret" not in err


def test_a_postgresql_url_without_a_driver_gets_an_installed_one(monkeypatch):
    import importlib.util

    from index.store.db import with_driver

    installed = {"psycopg2"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in installed else None)
    assert with_driver("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    installed.add("psycopg")
    assert with_driver("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert with_driver("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert with_driver("sqlite:///x.sqlite") == "sqlite:///x.sqlite"


def test_the_api_reference_page_needs_no_internet():
    from fastapi.testclient import TestClient

    from api.app import create_app

    page = TestClient(create_app()).get("/docs")
    assert page.status_code == 200
    assert "POST /v1/vqa" in page.text and "<code>question</code>" in page.text and "integer 1–8" in page.text
    question = page.text.split("<code>question</code>", 1)[1].split("</tr>", 1)[0]
    assert "required" in question and "default" not in question  # an empty one is the route's 400, not a 422
    assert "400 bad input" in page.text and "503 " in page.text
    assert "http" not in page.text.replace("/openapi.json", "")  # no script or stylesheet from a CDN


def test_train_clip_refuses_a_budget_that_never_ends():
    for args in (["--minutes", "-1"], ["--steps", "0", "--minutes", "0"], ["--batch-size", "0"]):
        r = runner.invoke(app, ["train", "clip", *args, "--run-dir", "/nonexistent/run"], env=WIDE)
        assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output, r.output
