"""The HTTP API on a tiny KB: KB-VQA, grounded generation, search, the page, and clear errors."""
from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from api.app import create_app
from api.deps import Services


@pytest.fixture
def services(home, tiny_kb):
    from index.config import get_settings
    from index.ingest import ingest_folder
    from index.search import ReferenceIndex
    from index.store import EntityStore

    settings = get_settings()
    store = EntityStore(settings.db_url, settings.home_dir)
    ingest_folder(store, tiny_kb, show_progress=False)
    s = Services()
    s._reference = ReferenceIndex(store, settings)
    return s


def test_vqa_before_the_index_is_built_says_what_to_run(services, tiny_kb, tiny_reader):
    from rag.pipeline import MMKBRAG
    from rag.vlm.reader_vlm import ReaderVLM

    services._rag = MMKBRAG(ReaderVLM.load(tiny_reader), services.reference)
    client = TestClient(create_app(services))
    with open(tiny_kb / "images" / "btn.png", "rb") as fh:
        r = client.post("/v1/vqa", files={"image": ("btn.png", fh, "image/png")},
                        data={"question": "What is the capital of this country?", "mode": "naive-rag"})
    assert r.status_code == 503 and "mmkb index build" in r.json()["detail"]


def test_vqa_answers_with_citations_and_refuses_bad_input(services, tiny_kb, tiny_reader):
    from rag.pipeline import MMKBRAG
    from rag.vlm.reader_vlm import ReaderVLM
    from rag.vlm.ret_calibration import RetCalibration

    services.reference.build(show_progress=False)
    services._rag = MMKBRAG(ReaderVLM.load(tiny_reader), services.reference)
    client = TestClient(create_app(services))
    flag = (tiny_kb / "images" / "btn.png").read_bytes()
    r = client.post("/v1/vqa", files={"image": ("btn.png", flag, "image/png")},
                    data={"question": "What is the capital of this country?", "mode": "naive-rag"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["retrieved"] and body["mode"] == "naive-rag" and isinstance(body["answer"], str)
    assert body["citations"] and body["citations"][0]["entity_key"] == "country:BTN"
    assert set(body["tags"]) >= {"entity", "category", "attributes"}
    bad = client.post("/v1/vqa", files={"image": ("notes.txt", b"not a picture", "text/plain")},
                      data={"question": "What is the capital of this country?"})
    assert bad.status_code == 400 and "notes.txt" in bad.json()["detail"] and "PNG" in bad.json()["detail"]
    for blank in ("  ", ""):  # an empty form field is a 400 that says so, not "Field required"
        empty = client.post("/v1/vqa", files={"image": ("btn.png", flag, "image/png")}, data={"question": blank})
        assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    mode = client.post("/v1/vqa", files={"image": ("btn.png", flag, "image/png")},
                       data={"question": "Capital?", "mode": "sometimes-rag"})
    assert mode.status_code == 400 and "naive-rag" in mode.json()["detail"]
    assert client.post("/v1/vqa", data={"question": "Capital?"}).status_code == 422  # no image
    # RET's switches, as `mmkb ask` has them: its calibrated tag never retrieves, its head alone at γ 0 does
    services._rag.vlm.ret_calibration = RetCalibration(0.0, 0.0, -20.0)
    q = {"question": "What is the capital of this country?", "familiarity_gate": "false"}
    skip = client.post("/v1/vqa", files={"image": ("btn.png", flag, "image/png")}, data=q).json()
    assert not skip["retrieved"] and skip["closed_book"] == skip["answer"] and skip["closed_book_probability"] > 0
    head = client.post("/v1/vqa", files={"image": ("btn.png", flag, "image/png")},
                       data={**q, "ret_closed_book": "false", "confirm": "false"}).json()
    expected = services._rag.vlm.retrieval_needed([str(tiny_kb / "images" / "btn.png")], [q["question"]],
                                                  calibrated=False)[0]
    assert head["p_ret"] == pytest.approx(float(expected), abs=1e-5) and head["p_ret"] > 1e-6
    assert head["confirmed"] is False
    # γ per request: at 0 even the calibrated tag that never asks retrieves; outside [0, 1] is refused
    low = client.post("/v1/vqa", files={"image": ("btn.png", flag, "image/png")}, data={**q, "gamma": "0"}).json()
    assert low["retrieved"] and low["p_ret"] >= 0
    assert client.post("/v1/vqa", files={"image": ("btn.png", flag, "image/png")},
                       data={**q, "gamma": "2"}).status_code == 422


def test_generate_grounds_the_prompt_and_returns_pngs(services, tiny_checkpoints):
    from generator.pipeline import GenerationPipeline

    services._generators[False, False] = GenerationPipeline.from_pretrained(tiny_checkpoints[0])
    client = TestClient(create_app(services))
    r = client.post("/v1/generate", data={"prompt": "the flag of Bhutan on the left and the red apple emoji on the "
                                                    "right on a pink background", "n": "2", "steps": "1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 2
    img = Image.open(io.BytesIO(base64.b64decode(body["images"][0].split(",", 1)[1])))
    assert img.size == (64, 64)
    p = body["provenance"]
    assert p["caption"] == "the first on the left and the second on the right on a pink background"
    assert [u["entity"] for u in p["references"]] == ["country:BTN", "emoji:1F34E"] and p["seeds"] == [0, 1]
    home = str(services.reference.store.home)
    assert home not in r.text and all(u["path"].startswith("images/") for u in p["references"])  # no server paths
    empty = client.post("/v1/generate", data={"prompt": ""})
    assert empty.status_code == 400 and "say what to draw" in empty.json()["detail"]
    scene = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 90, 200)).save(scene, format="PNG")
    no_edit = client.post("/v1/generate", files={"image": ("scene.png", scene.getvalue(), "image/png")})
    assert no_edit.status_code == 400 and "say what to change" in no_edit.json()["detail"]
    huge = client.post("/v1/generate", data={"prompt": "the flag of Bhutan", "seed": str(10**20)})
    assert huge.status_code == 422 and "4294967295" in huge.text
    plain = client.post("/v1/generate", data={"prompt": "the flag of Bhutan on a blue background", "steps": "1",
                                              "ground": "false"})
    assert plain.status_code == 200 and plain.json()["provenance"]["references"] == []
    too_many = client.post("/v1/generate", data={"prompt": "x", "n": "50"})
    assert too_many.status_code == 422
    four = client.post("/v1/generate", data={"prompt": "Bhutan, Nepal, the red apple emoji and the flag of Chad",
                                             "steps": "1"})
    assert four.status_code == 200  # Chad is not in the tiny KB: three entities, Chad's words stay text
    crowd = client.post("/v1/generate", data={"prompt": "x"}, files=[("refs", (f"r{i}.png", _png_bytes(), "image/png"))
                                                                        for i in range(4)])
    assert crowd.status_code == 400 and "at most 3" in crowd.json()["detail"]
    given = client.post("/v1/generate", data={"prompt": "the flag on a blue background", "steps": "1"},
                        files=[("refs", ("mine.png", _png_bytes(), "image/png"))])
    assert given.status_code == 200, given.text
    used = given.json()["provenance"]["references"]
    assert len(used) == 1 and used[0]["role"] == "reference" and "grounding" not in given.json()["provenance"]
    edit = client.post("/v1/generate", data={"prompt": "replace the flag with the flag of Bhutan", "steps": "1"},
                       files={"image": ("scene.png", _png_bytes(), "image/png")})
    assert edit.status_code == 200, edit.text
    p = edit.json()["provenance"]
    assert p["caption"] == "replace the flag with the second image"
    assert [u.get("entity") for u in p["references"]] == [None, "country:BTN"]


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_search_health_and_page(services, tiny_kb):
    services.reference.build(["text"], show_progress=False)
    client = TestClient(create_app(services))
    hits = client.post("/v1/search", data={"text": "Thimphu", "k": "2"}).json()["hits"]
    assert hits[0]["key"] == "country:BTN" and "text" in hits[0]["scores"]
    assert hits[0]["matched"]["text"] == "The capital of Bhutan is Thimphu."
    assert client.post("/v1/search", data={}).status_code == 400
    as_json = client.post("/v1/search", json={"text": "Thimphu"})
    assert as_json.status_code == 415 and "form fields" in as_json.json()["detail"]
    assert client.post("/v1/search", data={"text": "Thimphu"}).status_code == 200  # url-encoded forms are forms
    planet = client.post("/v1/search", data={"text": "Thimphu", "kind": "planet"})
    assert planet.status_code == 400 and "'planet'" in planet.json()["detail"] and "country" in planet.json()["detail"]
    health = client.get("/health").json()
    assert health["entities"] == 3 and health["indexed"]["text"] > 0 and health["indexed"]["image"] is None
    assert health["stale"] == []
    page = client.get("/")
    assert page.status_code == 200 and all(route in page.text for route in ("/v1/vqa", "/v1/search", "/v1/generate",
                                                                             "/v1/tags"))
    services.reference.build(["image"], show_progress=False)
    flag = (tiny_kb / "images" / "npl.png").read_bytes()
    seen = client.post("/v1/search", files={"image": ("npl.png", flag, "image/png")}, data={"pictures": "true"})
    matched = seen.json()["hits"][0]["matched"]
    assert seen.json()["hits"][0]["key"] == "country:NPL" and matched["path"].startswith("images/")
    assert matched["thumbnail"].startswith("data:image/png;base64,")


def test_mmkb_serve_runs_the_app_on_the_given_port(monkeypatch, home):
    import uvicorn
    from typer.testing import CliRunner

    from api.cli import app as cli

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    r = CliRunner().invoke(cli, ["serve", "--port", "8123", "--vlm", "some/reader"])
    assert r.exit_code == 0, r.output
    assert seen["port"] == 8123 and seen["host"] == "127.0.0.1" and "http://127.0.0.1:8123/" in r.output
    assert "0 entities (run `mmkb demo`" in r.output
    assert seen["app"].state.services.vlm_name == "some/reader"
    assert {"/v1/vqa", "/v1/generate", "/v1/search", "/health"} <= set(seen["app"].openapi()["paths"])


def test_tags_suggests_labels_for_an_image(services, tiny_tagger):
    from index.tagger import Tagger

    path, manifest = tiny_tagger
    services._tagger = Tagger(path)
    client = TestClient(create_app(services))
    image = (manifest.parent / "images" / "red-circle.png").read_bytes()
    r = client.post("/v1/tags", files={"image": ("red.png", image, "image/png")}, data={"top": "5"})
    assert r.status_code == 200, r.text
    labels = r.json()["labels"]
    assert r.json()["knn"] is False  # no image index yet: the tagger alone
    assert len(labels) == 5 and labels[0]["probability"] >= labels[-1]["probability"]
    assert "red" in [lab["label"] for lab in labels]
    assert client.post("/v1/tags", files={"image": ("x.txt", b"nope", "text/plain")}).status_code == 400
    assert client.post("/v1/tags", files={"image": ("red.png", image, "image/png")},
                       data={"threshold": "2"}).status_code == 422


def test_server_paths_are_made_relative_to_the_data_home(tmp_path):
    from api.routes.generate import without_server_paths

    home = tmp_path / "home"
    given = {"references": [{"path": f"{home}/images/ab/x.png", "entity": "country:BTN"}],
             "other": [f"{tmp_path}/elsewhere.png", "images/ab/y.png", f"{home}2/z.png", 3, None]}
    assert without_server_paths(given, home) == {
        "references": [{"path": "images/ab/x.png", "entity": "country:BTN"}],
        "other": [f"{tmp_path}/elsewhere.png", "images/ab/y.png", f"{home}2/z.png", 3, None]}


def test_an_embedder_the_server_cannot_load_is_a_503_that_says_so(home, tiny_kb, monkeypatch):
    from index.config import get_settings
    from index.ingest import ingest_folder
    from index.search import ReferenceIndex
    from index.store import EntityStore

    monkeypatch.setenv("MMKB_TEXT_EMBEDDER", "no-such-text-model")
    get_settings.cache_clear()
    settings = get_settings()
    store = EntityStore(settings.db_url, settings.home_dir)
    ingest_folder(store, tiny_kb, show_progress=False)
    services = Services()
    services._reference = ReferenceIndex(store, settings)
    r = TestClient(create_app(services)).post("/v1/search", data={"text": "Thimphu"})
    assert r.status_code == 503 and "cannot load the text embedder 'no-such-text-model'" in r.json()["detail"]
