"""MMKB-RAG end to end on a tiny KB: a tiny trained reader, the tags, the modes, the eval command."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from index.search import IndexNotBuiltError
from rag.pipeline import MMKBRAG, RAGConfig


def test_tags_are_two_way_probabilities(rag, tiny_kb):
    vlm = rag.vlm
    vec = vlm.embed_images([str(tiny_kb / "images" / "btn.png")])
    p = vlm.retrieval_needed([vec[0], vec[0]], ["What is the capital of this country?", "What is this emoji called?"])
    assert p.shape == (2,) and np.all((p > 0) & (p < 1))
    assert vlm.tokenizer.convert_tokens_to_ids("[Ret]") != vlm.tokenizer.unk_token_id
    tags = vlm.semantic_tags([vec[0]], ["What is the capital of this country?"])[0]
    assert set(tags.kinds) == {c.split(":")[0].strip() for c in vlm.cfg.categories}
    assert abs(sum(tags.kinds.values()) - 1) < 1e-4
    assert len(vlm.tokenizer.tokenize("[Ret] [NoRet] [Rel] [NoRel]")) == 4


def test_modes_and_citations(rag, tiny_kb):
    image = tiny_kb / "images" / "btn.png"
    q = "What is the capital of this country?"
    closed = rag(image, q, mode="no-rag")
    assert closed.retrieved is False and closed.citations == [] and isinstance(closed.answer, str)
    naive = rag(image, q, mode="naive-rag")
    assert naive.retrieved and naive.candidates and naive.citations == naive.candidates
    full = rag(image, q, mode="mmkb-rag", gamma=0.0)
    assert full.retrieved and 0 < full.p_ret < 1
    assert full.citations and all(c.relevance is not None for c in full.candidates)
    assert {c.document_id for c in full.citations} <= {c.document_id for c in full.candidates}
    assert {c.entity_key for c in full.candidates} <= {"country:BTN", "country:NPL", "emoji:1F34E"}


def test_retrieval_without_semantic_tags_uses_the_image_and_the_question(rag, tiny_kb, monkeypatch):
    image, q = tiny_kb / "images" / "btn.png", "What is the capital of this country?"
    text_queries = []
    search = rag.reference.search
    monkeypatch.setattr(rag.reference, "search", lambda *a, **k: text_queries.append(k.get("text")) or search(*a, **k))
    # (the tiny reader may not know the image's best match, which would silence its entity tag: a test below)
    tagged = rag(image, q, mode="naive-rag", tag_needs_known_top=False)
    assert tagged.tags.entity and text_queries == [tagged.tags.queries()[0]]
    untagged = rag(image, q, mode="naive-rag", use_tags=False, tag_needs_known_top=False)
    assert untagged.candidates and untagged.tags.entity == tagged.tags.entity  # reported, not used
    assert text_queries == [tagged.tags.queries()[0]]
    rag(image, q, mode="naive-rag", tag_weight=0.0)  # any per-call setting reaches retrieval
    assert text_queries == [tagged.tags.queries()[0]]


def test_ret_threshold_skips_retrieval(rag, tiny_kb):
    # The tag alone (its image side, the familiarity gate, has its own test below).
    out = rag(tiny_kb / "images" / "btn.png", "What is the capital of this country?", gamma=1.01,
              familiarity_gate=False)
    assert out.retrieved is False and out.p_ret is not None and out.candidates == []
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="gamma, RET's threshold"):
            RAGConfig(gamma=bad)
    from api.cli import _rag

    with pytest.raises(typer.Exit):  # the CLI's --gamma goes through the same check (click passes nan)
        _rag("mmkb-rag", True, True, True, None, gamma=float("nan"))


def test_ask_command_takes_rets_threshold(tiny_kb, tiny_reader):
    from api.cli import app

    ask = ["ask", str(tiny_kb / "images" / "btn.png"), "What is the capital of this country?", "--vlm",
           str(tiny_reader), "--no-familiarity-gate", "--json"]
    assert json.loads(CliRunner().invoke(app, [*ask, "--gamma", "0"]).stdout)["retrieved"] is True
    never = json.loads(CliRunner().invoke(app, [*ask, "--gamma", "1"]).stdout)
    assert never["retrieved"] is False and never["p_ret"] < 1
    bad = CliRunner().invoke(app, [*ask, "--gamma", "1.5"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "--gamma" in bad.output


def test_a_question_too_long_for_the_reader_is_refused_saying_so(rag, tiny_kb):
    from rag.vlm.inputs import longest_question

    limit = longest_question(rag.vlm.cfg)
    fits = "What is the capital of this country" + " please" * (limit - 12)
    assert rag(tiny_kb / "images" / "btn.png", fits).answer is not None
    with pytest.raises(ValueError, match=f"at most {limit}.*fewer words"):
        rag(tiny_kb / "images" / "btn.png", "What is the capital of this country" + " please" * 200)


def test_mct_variants_and_bad_config(rag, tiny_kb):
    for variant in ("filter", "rerank", "merge"):
        out = rag(tiny_kb / "images" / "npl.png", "What is the capital of this country?", gamma=0.0,
                  srt_threshold=0.0, mct_variant=variant)
        assert out.citations
    with pytest.raises(ValueError, match="unknown mode"):
        RAGConfig(mode="magic")
    with pytest.raises(ValueError, match="empty"):
        rag(tiny_kb / "images" / "npl.png", "  ")


def test_eval_command_on_a_hand_written_infoseek_file(rag, tiny_kb, tiny_reader, tmp_path):
    from api.cli import app

    rows = [{"data_id": "q1", "image_id": "btn", "question": "What is the capital of this country?",
             "answer": ["Thimphu"], "answer_eval": ["Thimphu"], "data_split": "val_unseen_entity"},
            {"data_id": "q2", "image_id": "npl", "question": "What is the capital of this country?",
             "answer": ["Kathmandu"], "answer_eval": ["Kathmandu"], "data_split": "val_unseen_question"}]
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "pred.jsonl"
    result = CliRunner().invoke(app, ["eval", "kbvqa", str(questions), str(tiny_kb / "images"), str(out),
                                      "--vlm", str(tiny_reader)])
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["data_id"] for p in preds] == ["q1", "q2"]
    assert {"prediction", "semantic_tags", "retrieved_entities", "p_ret", "confirmed", "shared_picture"} <= set(preds[0])
    assert "unseen_entity" in result.output and "All" in result.output
    # Hand-written rows carry no entity key: any wrong answer that retrieved counts under "other".
    wrong = not all(p["correct"] for p in preds)
    assert ("where the wrong answers come from" in result.output) == wrong
    assert ("entity not a KB key" in result.output) == any(not p["correct"] and p["retrieved"] for p in preds)
    assert out.stat().st_mode & 0o044 == (~os.umask(os.umask(0)) & 0o044)  # the usual permissions, not 0600
    page = (tmp_path / "pred.html").read_text()  # beside the predictions unless --page says where
    assert "KB-VQA evaluation" in page and "What is the capital of this country?" in page and "data:image/png" in page
    assert str(tmp_path / "pred.html") in result.output.replace("\n", "")
    # the spelling: the same three paths as options
    named = CliRunner().invoke(app, ["eval", "kbvqa", "--questions", str(questions), "--images", str(tiny_kb / "images"),
                                     "--predictions", str(tmp_path / "named.jsonl"), "--vlm", str(tiny_reader)])
    assert named.exit_code == 0, named.output
    assert [json.loads(line)["prediction"] for line in (tmp_path / "named.jsonl").read_text().splitlines()] == \
        [p["prediction"] for p in preds]
    mixed = CliRunner().invoke(app, ["eval", "kbvqa", "--questions", str(questions), str(tiny_kb / "images"),
                                     str(tmp_path / "mixed.jsonl"), "--vlm", str(tiny_reader)])
    assert mixed.exit_code == 0, mixed.output  # the arguments fill the paths no option names, in order
    missing = CliRunner().invoke(app, ["eval", "kbvqa", "--questions", str(questions), "--vlm", str(tiny_reader)],
                                 env={"COLUMNS": "300"})
    assert missing.exit_code != 0 and "missing: the images, predictions path" in missing.output
    extra = CliRunner().invoke(app, ["eval", "kbvqa", str(questions), str(tiny_kb / "images"), str(out),
                                     "--questions", str(questions)], env={"COLUMNS": "300"})
    assert extra.exit_code != 0 and "4 paths for 3" in extra.output


def test_eval_command_checks_every_input_before_the_first_question(tiny_kb, tiny_reader, tmp_path):
    from api.cli import app

    def run(rows: list[dict] | None, predictions: Path, *extra: str, text: str | None = None):
        questions = tmp_path / "q.jsonl"
        questions.write_text(text if text is not None else "".join(json.dumps(r) + "\n" for r in rows))
        return CliRunner().invoke(app, ["eval", "kbvqa", str(questions), str(images), str(predictions),
                                        "--vlm", str(tiny_reader), *extra], env={"COLUMNS": "300"})

    images = tmp_path / "images"
    images.mkdir()
    (images / "btn.png").write_bytes((tiny_kb / "images" / "btn.png").read_bytes())
    (images / "notes.png").write_text("not a picture")
    good = {"data_id": "q1", "image_id": "btn", "question": "What is the capital of this country?",
            "answer": ["Thimphu"], "answer_eval": ["Thimphu"], "data_split": "val_seen"}
    empty = run(None, tmp_path / "p.jsonl", text="")
    assert empty.exit_code == 2 and "no questions in" in empty.output
    broken = run([good, {**good, "data_id": "q2", "image_id": "notes"}], tmp_path / "p.jsonl")
    assert broken.exit_code == 2 and "question q2" in broken.output and "notes.png" in broken.output
    assert "Traceback" not in broken.output and not (tmp_path / "p.jsonl").exists()
    rambling = run([good, {**good, "data_id": "q3", "question": "Which " + "very " * 200 + "capital?"}],
                   tmp_path / "p.jsonl")
    assert rambling.exit_code == 2 and "question q3" in rambling.output and "fewer words" in rambling.output
    assert not (tmp_path / "p.jsonl").exists()
    folder = run([good], images)
    assert folder.exit_code == 2 and "is a folder" in folder.output
    same = run([good], tmp_path / "p.jsonl", "--page", str(tmp_path / "p.jsonl"))
    assert same.exit_code == 2 and "both" in same.output and not (tmp_path / "p.jsonl").exists()
    page_folder = run([good], tmp_path / "p.jsonl", "--page", str(images))
    assert page_folder.exit_code == 2 and "page path" in page_folder.output
    under_a_file = run([good], tmp_path / "p.jsonl", "--page", str(images / "btn.png" / "page.html"))
    assert under_a_file.exit_code == 2 and "is a file, not a folder" in under_a_file.output
    assert not (tmp_path / "p.jsonl").exists()  # refused before any question ran
    csv_file = tmp_path / "q.csv"
    csv_file.write_text("question,answer,dataset_image_ids\n")
    swapped = CliRunner().invoke(app, ["eval", "kbvqa", str(csv_file), str(images), str(tmp_path / "p.jsonl"),
                                       "--vlm", str(tiny_reader)], env={"COLUMNS": "300"})
    assert swapped.exit_code == 2 and "--evqa" in swapped.output
    ok = run([good], tmp_path / "p.jsonl")
    assert ok.exit_code == 0, ok.output
    assert "seen" in ok.output and "val_seen" not in ok.output and "None" not in ok.output
    csv_file.write_text('question,answer,dataset_image_ids,question_type\n'
                        '"What is the capital of this country?",Thimphu,btn,templated\n')
    evqa = CliRunner().invoke(app, ["eval", "kbvqa", str(csv_file), str(images), str(tmp_path / "e.jsonl"),
                                    "--evqa", "--vlm", str(tiny_reader)], env={"COLUMNS": "300"})
    assert evqa.exit_code == 0, evqa.output
    assert "exact match, not BEM" in evqa.output and "templated" in evqa.output and "All (HM" not in evqa.output


def test_inputs_are_checked_before_any_question_runs(tiny_kb, tmp_path):
    from rag.evaluate import check_inputs, evaluate
    from rag.kbvqa.datasets import KBVQAExample

    asked = []
    data = (tiny_kb / "images" / "btn.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    examples = [KBVQAExample("q1", "btn", "Capital?", ["Thimphu"], ["Thimphu"], "val_seen"),
                KBVQAExample("q2", "cut", "Capital?", ["Thimphu"], ["Thimphu"], "val_seen")]
    (tmp_path / "btn.png").write_bytes((tiny_kb / "images" / "btn.png").read_bytes())
    with pytest.raises(ValueError, match="question q2: .*cut.png is not an image that can be read"):
        evaluate(lambda *a, **k: asked.append(a), examples, tmp_path)
    assert asked == []  # no question ran
    assert check_inputs(examples[:1], tmp_path) == [tmp_path / "btn.png"]
    with pytest.raises(ValueError, match="no questions"):
        check_inputs([], tmp_path)
    with pytest.raises(FileNotFoundError, match="question q3: no image for 'gone'"):
        check_inputs([KBVQAExample("q3", "gone", "Capital?", ["x"], ["x"], "val_seen")], tmp_path)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(lambda *a, **k: None, examples[:1], tmp_path, metric="bem")


def test_error_sources_name_the_cause_of_each_wrong_answer():
    from rag.evaluate import error_sources, errors_markdown
    from rag.kbvqa.datasets import KBVQAExample

    keys = ["country:BTN", "country:BTN", "emoji:1F600", "emoji:1F600", "country:NPL", None,
            "https://en.wikipedia.org/wiki/Bhutan", "Q917", "country:BTN"]
    examples = [KBVQAExample(f"q{i}", "img", "?", ["a"], [], "val_seen", entity_key=k) for i, k in enumerate(keys)]

    def rec(i, correct, retrieved, entities=()):
        return {"data_id": f"q{i}", "correct": correct, "retrieved": retrieved, "retrieved_entities": list(entities)}

    records = [rec(0, True, True, ["country:NPL"]),  # right answers never count, whatever was retrieved
               rec(1, False, False),
               rec(2, False, True, ["emoji:1F601", "emoji:1F600"]),
               rec(3, False, True, ["emoji:1F600"]),
               rec(4, False, True),  # found nothing at all
               rec(5, False, True, ["country:BTN"]),
               rec(6, False, True, ["country:BTN"]),  # a URL is not a KB key, even when its entity is retrieved
               rec(7, False, False),
               rec(8, True, False)]
    zero = {"answered without retrieval": 0, "right entity not retrieved first": 0,
            "right entity first, read wrong": 0, "entity not a KB key": 0}
    assert error_sources(records, examples) == {
        "country": {**zero, "answered without retrieval": 1, "right entity not retrieved first": 1},
        "emoji": {**zero, "right entity not retrieved first": 1, "right entity first, read wrong": 1},
        "other": {**zero, "entity not a KB key": 2, "answered without retrieval": 1},
    }
    table = errors_markdown([("naive", error_sources(records, examples))])
    assert "| naive | emoji | 2 | 0 | 1 | 1 | 0 |" in table and table.count("\n") == 2 + 3
    with pytest.raises(ValueError, match="in order"):
        error_sources(records[::-1], examples)
    with pytest.raises(ValueError, match="in order"):
        error_sources(records[:-1], examples)


def test_evaluation_page_puts_wrong_answers_first_with_their_cause(tiny_kb, tmp_path):
    from rag.evaluate import error_sources, evaluation_page
    from rag.kbvqa.datasets import KBVQAExample

    image = tiny_kb / "images" / "btn.png"
    examples = [KBVQAExample("q-right", "btn", "Capital of <this>?", ["Thimphu"], ["Thimphu"], "val_seen",
                             entity_key="country:BTN"),
                KBVQAExample("q-wrong", "btn", "Region?", ["Asia", "Southern Asia"], [], "val_unseen_entity",
                             entity_key="country:BTN")]
    records = [{"data_id": "q-right", "prediction": "Thimphu", "correct": True, "retrieved": False, "p_ret": 0.2,
                "retrieved_entities": [], "semantic_tags": {"entity": "Bhutan", "category": "country"}, "citations": []},
               {"data_id": "q-wrong", "prediction": "Europe", "correct": False, "retrieved": True, "p_ret": 0.3,
                "ret_reason": "the image is nearest to country:NPL, which the reader has no facts about",
                "retrieved_entities": ["country:NPL", "country:BTN"], "semantic_tags": {"entity": "Nepal"},
                "citations": [{"entity": "country:NPL", "document_id": 7, "relevance": 0.81}]}]
    summary = {"scores": {"splits": {"seen": {"accuracy": 1.0, "count": 1}, "unseen_entity": {"accuracy": 0.0, "count": 1}}},
               "overall": 0.5, "all": 0.0, "count": 2, "retrieval_recall": 1.0, "skipped_retrieval": 0.5,
               "latency_p50_ms": 120.0, "errors": error_sources(records, examples)}
    pictures = {"country:NPL": tiny_kb / "images" / "npl.png", "country:BTN": image}
    out = evaluation_page(summary, records, examples, [image, image], tmp_path / "page.html",
                          lambda keys: {k: pictures[k] for k in keys})
    page = out.read_text()
    assert page.index("q-wrong") < page.index("q-right")  # wrong answers first
    assert "right entity not retrieved first" in page and "Capital of &lt;this&gt;?" in page  # escaped
    assert '<code class="right">country:BTN</code>' in page and "§ 7 P([Rel]) 0.81" in page
    assert "answered without retrieval (P([Ret]) 0.20)" in page and page.count("data:image/png") == 4
    assert "retrieved (P([Ret]) 0.30) because the image is nearest to country:NPL" in page
    short = evaluation_page(summary, records, examples, [image, image], tmp_path / "short.html", limit=1).read_text()
    assert "q-wrong" in short and "q-right" not in short and "the first 1 of 2 questions shown" in short
    numeric = [replace(examples[0], answers=["38394"], answer_eval=[{"wikidata": 38394, "range": [34555, 42233]}])]
    ranged = evaluation_page(summary, records[:1], numeric, [image], tmp_path / "n.html").read_text()
    assert "accepted: 38394 (range 34555–42233)" in ranged
    evqa = {**summary, "all": None, "scores": {"question_types": {"templated": {"accuracy": 0.5, "count": 2}},
                                                "single_hop": {"accuracy": 0.5, "count": 2}}}
    e_page = evaluation_page(evqa, records, examples, [image, image], tmp_path / "e.html", metric="evqa").read_text()
    assert "question type" in e_page and "single-hop (all but 2_hop)" in e_page and "not BEM" in e_page
    assert "All (HM" not in e_page


def test_ask_command_json(rag, tiny_kb, tiny_reader, tmp_path):
    from api.cli import app

    result = CliRunner().invoke(app, ["ask", str(tiny_kb / "images" / "btn.png"), "What is the capital of this country?",
                                      "--vlm", str(tiny_reader), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"answer", "citations", "tags", "p_ret", "retrieved"} <= set(out)
    missing = CliRunner().invoke(app, ["ask", "nope.png", "Q?", "--vlm", str(tiny_reader)])
    assert missing.exit_code == 2 and "image not found" in missing.output
    named = CliRunner().invoke(app, ["ask", "--image", str(tiny_kb / "images" / "btn.png"), "--question",
                                     "What is the capital of this country?", "--vlm", str(tiny_reader), "--json"])
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout)["question"] == "What is the capital of this country?"
    unconfirmed = CliRunner().invoke(app, ["ask", str(tiny_kb / "images" / "btn.png"), "What is the capital of this country?",
                                           "--mode", "naive-rag", "--no-confirm", "--vlm", str(tiny_reader), "--json"])
    assert unconfirmed.exit_code == 0, unconfirmed.output
    assert json.loads(unconfirmed.stdout)["confirmed"] is False
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    unreadable = CliRunner().invoke(app, ["ask", str(notes), "Q?", "--vlm", str(tiny_reader)], env={"COLUMNS": "300"})
    assert unreadable.exit_code == 2 and "is not an image that can be read" in unreadable.output
    no_question = CliRunner().invoke(app, ["ask", "--image", str(tiny_kb / "images" / "btn.png")])
    assert no_question.exit_code == 2 and "give an image and a question" in no_question.output
    # for people: why it retrieved or not, with the VLM's own answer and how sure it is
    said = CliRunner().invoke(app, ["ask", str(tiny_kb / "images" / "btn.png"), "What is the capital of this country?",
                                    "--no-familiarity-gate", "--vlm", str(tiny_reader)], env={"COLUMNS": "300"})
    assert said.exit_code == 0, said.output
    assert ("retrieved: P([Ret])=" in said.output and "≥ γ; its own answer" in said.output) or (
        "answered without retrieval (P([Ret])=" in said.output and "its own answer's probability" in said.output)


def test_srt_orders_and_attribute_tags_pick_sections(rag, tiny_kb):
    from rag.pipeline import wanted_headings

    assert wanted_headings(["calling code", "currency"]) == {"calling code", "currencies"}
    assert wanted_headings(["elevation"]) == {"elevation"}  # not a worldkb question type: the tag itself
    for order in ("retrieval", "relevance"):
        out = rag(tiny_kb / "images" / "npl.png", "What is the capital of this country?", gamma=0.0,
                  srt_threshold=0.0, srt_order=order)
        assert out.citations
    with pytest.raises(ValueError, match="SRT order"):
        RAGConfig(srt_order="random")


def test_reader_prefers_earlier_documents_by_its_rank_penalty(rag):
    assert rag.vlm.rank_penalty > 0


def test_entities_sharing_a_picture_are_not_reordered_by_the_entity_tag():
    """Norway and Svalbard fly one flag: the image ties them (Norway first, by prominence), and
    an entity tag guessed from that same flag ("Svalbard") cannot break the tie; against a
    visually different entity the tag still counts."""
    from index.search import EntityHit, Match
    from rag.vlm.base import SemanticTags

    class Ref:
        def search_embedding(self, modality, query, k=10, kinds=None, keys=None, per_modality=None):
            if modality == "image":
                return [EntityHit("country:NOR", "Norway", "country", 0.9),
                        EntityHit("country:SJM", "Svalbard", "country", 0.9),
                        EntityHit("country:DNK", "Denmark", "country", 0.88)]
            return [EntityHit(k_, k_, "country", 0.5, matches=[Match("text", i, 0.5, "capital", f"{k_} capital")])
                    for i, k_ in enumerate(keys)]

        def search(self, text, k=10, kinds=None):
            named = "country:DNK" if text.startswith("Denmark") else "country:SJM"
            return [EntityHit(named, named, "country", 0.9, scores={"text": 0.9})]

        def text_embedder(self):
            return type("T", (), {"encode": staticmethod(lambda texts: np.zeros((1, 4), np.float32))})()

    pipe = MMKBRAG(vlm=None, reference=Ref(), config=RAGConfig(tag_weight=0.1))
    tags = SemanticTags(entity="Svalbard", entity_confidence=1.0, category="country", attributes=["capital"])
    docs = pipe.retrieve(np.zeros(4, np.float32), "What is the capital of this country?", tags, k_docs=3)
    assert [d.entity_key for d in docs] == ["country:NOR", "country:SJM", "country:DNK"]
    tags = SemanticTags(entity="Denmark", entity_confidence=1.0, category="country", attributes=["capital"])
    with_dnk = pipe.retrieve(np.zeros(4, np.float32), "What is the capital of this country?", tags, k_docs=3)
    assert with_dnk[0].entity_key == "country:DNK"  # 0.88 + 0.1 × 0.9 beats the tied pair's 0.9


def test_the_entity_tag_counts_only_when_the_image_best_matches_an_entity_the_vlm_knows():
    """Jordan's flag is best matched by Jordan, which the reader never trained on; its entity tag can
    only name an entity it knows ("Malawi") and must not pull Malawi above the image's match."""
    from index.search import EntityHit, Match
    from rag.vlm.base import SemanticTags

    class Ref:
        def search_embedding(self, modality, query, k=10, kinds=None, keys=None, per_modality=None):
            if modality == "image":
                return [EntityHit("country:JOR", "Jordan", "country", 0.82),
                        EntityHit("country:MWI", "Malawi", "country", 0.76)]
            return [EntityHit(k_, k_, "country", 0.5, matches=[Match("text", i, 0.5, "capital", f"{k_} capital")])
                    for i, k_ in enumerate(keys)]

        def search(self, text, k=10, kinds=None):
            return [EntityHit("country:MWI", "Malawi", "country", 0.9, scores={"text": 0.9})]

        def text_embedder(self):
            return type("T", (), {"encode": staticmethod(lambda texts: np.zeros((1, 4), np.float32))})()

    vlm = type("V", (), {"known_entities": frozenset({"country:MWI", "country:BRA"})})()
    pipe = MMKBRAG(vlm=vlm, reference=Ref(), config=RAGConfig(tag_weight=1.0))
    tags = SemanticTags(entity="Malawi", entity_confidence=1.0, category="country", attributes=["capital"])
    q, vec = "What is the capital of this country?", np.zeros(4, np.float32)
    assert pipe.retrieve(vec, q, tags, k_docs=2)[0].entity_key == "country:JOR"
    old = pipe.retrieve(vec, q, tags, k_docs=2, config=RAGConfig(tag_weight=1.0, tag_needs_known_top=False))
    assert old[0].entity_key == "country:MWI"
    vlm.known_entities = frozenset({"country:JOR", "country:MWI"})  # known top match: the tag counts
    assert pipe.retrieve(vec, q, tags, k_docs=2)[0].entity_key == "country:MWI"


def test_the_category_tag_rules_out_kinds_the_vlm_is_sure_are_not_shown():
    """A flag question whose image also resembles an emoji: with the reader sure it is a country,
    emoji are no candidates; a kind the reader never learnt (a user's "landmark") stays one."""
    from index.search import EntityHit, Match
    from rag.vlm.base import SemanticTags

    entities = [("emoji:2650", "emoji", 0.95), ("country:FSM", "country", 0.9), ("landmark:X", "landmark", 0.5)]

    class Store:
        def kinds(self):
            return {"country": 2, "emoji": 5, "landmark": 1}

    class Ref:
        store = Store()
        asked: list = []

        def search_embedding(self, modality, query, k=10, kinds=None, keys=None, per_modality=None):
            if modality == "image":
                self.asked.append(kinds)
                return [EntityHit(key, key, kind, s) for key, kind, s in entities if kinds is None or kind in kinds]
            return [EntityHit(k_, k_, "x", 0.5, matches=[Match("text", i, 0.5, "tld", f"{k_} tld")])
                    for i, k_ in enumerate(keys)]

        def search(self, text, k=10, kinds=None):
            return []

        def text_embedder(self):
            return type("T", (), {"encode": staticmethod(lambda texts: np.zeros((1, 4), np.float32))})()

    pipe = MMKBRAG(vlm=None, reference=Ref(), config=RAGConfig())
    q, vec = "What is the top-level domain of this country?", np.zeros(4, np.float32)
    sure = SemanticTags(category="country", attributes=["tld"], kinds={"country": 0.99, "emoji": 0.01})
    assert sure.ruled_out_kinds(0.05) == {"emoji"}
    docs = pipe.retrieve(vec, q, sure, k_docs=3)
    assert [d.entity_key for d in docs] == ["country:FSM", "landmark:X"]
    assert sorted(Ref.asked[-1]) == ["country", "landmark"]
    unsure = SemanticTags(category="country", kinds={"country": 0.7, "emoji": 0.3})
    assert pipe.retrieve(vec, q, unsure, k_docs=3)[0].entity_key == "emoji:2650" and Ref.asked[-1] is None
    off = pipe.retrieve(vec, q, sure, k_docs=3, config=RAGConfig(kind_floor=0.0))
    assert off[0].entity_key == "emoji:2650"
    untagged = pipe.retrieve(vec, q, sure, k_docs=3, config=RAGConfig(use_tags=False))
    assert untagged[0].entity_key == "emoji:2650"


def entity_tag(rag, monkeypatch, name: str | None) -> None:
    """Make the reader's entity tag name `name`, whatever the tiny reader guesses."""
    inspect = rag.vlm.inspect

    def named(*args, **kwargs):
        closed, confs, p_rets, tags = inspect(*args, **kwargs)
        return closed, confs, p_rets, [replace(t, entity=name) for t in tags]

    monkeypatch.setattr(rag.vlm, "inspect", named)


def nearest_to(rag, image):
    return rag.reference.search_embedding("image", rag.reference.embed_image_queries([image])[0], k=1)[0]


def test_familiarity_gate_retrieves_for_an_entity_new_to_the_reader(rag, tiny_kb, monkeypatch):
    """RET's image side: an image unlike every entity the reader trained on is retrieved for even
    when the tag says the reader knows the answer, and so is one whose nearest indexed entity the
    reader never trained on; a familiar one of a known entity follows the tag."""
    monkeypatch.setattr(rag.vlm, "known_entities", None)  # first the familiarity alone
    image, q = tiny_kb / "images" / "btn.png", "What is the capital of this country?"
    entity_tag(rag, monkeypatch, nearest_to(rag, image).name)  # the reader and the index agree
    vec = rag.vlm.embed_images([str(image)])[0]
    other = np.roll(vec, 7) - vec * float(np.roll(vec, 7) @ vec)  # orthogonal to the image
    other /= np.linalg.norm(other)  # memory rows are unit vectors
    rag.vlm.memory, rag.vlm.familiarity_threshold = other[None], 0.5
    new = rag(image, q, gamma=1.01)  # the tag alone would skip retrieval
    assert new.retrieved and new.familiarity is not None and new.familiarity < 0.5
    assert new.image_side_reason(1.01) == "an entity new to the reader"
    assert rag(image, q, gamma=1.01, familiarity_gate=False).retrieved is False
    rag.vlm.memory = np.stack([other, vec])
    known = rag(image, q, gamma=1.01)
    assert known.retrieved is False and known.familiarity == pytest.approx(1.0, abs=1e-4)
    assert known.image_side_reason(1.01) is None
    # A familiar-looking image whose nearest indexed entity the reader never trained on: retrieve.
    nearest = nearest_to(rag, image).key
    rag.vlm.known_entities = frozenset({"country:XXX"})
    lookalike = rag(image, q, gamma=1.01)
    assert lookalike.retrieved and lookalike.unknown_entity == nearest and lookalike.familiarity > 0.99
    assert nearest in lookalike.image_side_reason(1.01)
    assert rag(image, q, gamma=1.01, familiarity_gate=False).retrieved is False
    rag.vlm.known_entities = frozenset({nearest})
    assert rag(image, q, gamma=1.01).retrieved is False
    rag.vlm.known_entities = None  # a memory saved without its keys: the familiarity alone
    assert rag(image, q, gamma=1.01).retrieved is False
    rag.vlm.memory = None  # an export made before the memory existed: RET is the tag alone
    old = rag(image, q, gamma=1.01)
    assert old.retrieved is False and old.familiarity is None


def test_nearest_entity_check_needs_no_image_index():
    """Without an image index the check finds nothing, so a question RET would skip is still answered
    closed-book instead of failing."""
    class NoIndex:
        def search_embedding(self, *args, **kwargs):
            raise IndexNotBuiltError("no image index yet")

    class Reader:
        known_entities = frozenset({"country:BTN"})

    assert MMKBRAG(Reader(), NoIndex()).nearest_unknown(np.ones(4, np.float32)) is None


def test_shared_picture_makes_ret_retrieve(rag, tiny_kb, monkeypatch):
    """When the image's nearest indexed entities share one picture (a flag two territories fly), the
    picture cannot say which one it shows: RET retrieves whatever the tag says, and names them."""
    from index.search import EntityHit

    image, q = tiny_kb / "images" / "btn.png", "What is the capital of this country?"
    entity_tag(rag, monkeypatch, nearest_to(rag, image).name)
    vec = rag.vlm.embed_images([str(image)])[0]
    rag.vlm.memory, rag.vlm.familiarity_threshold = vec[None] / np.linalg.norm(vec), 0.5  # familiar
    nearest = nearest_to(rag, image).key
    rag.vlm.known_entities = frozenset({nearest, "country:ZZZ"})
    assert rag(image, q, gamma=1.01).retrieved is False  # a picture of one entity: the tag decides
    search = rag.reference.search_embedding

    def with_twin(modality, query, k=10, **kw):
        hits = search(modality, query, k=k, **kw)
        if modality == "image" and k > 1 and hits:  # another entity with the very same picture
            hits.insert(1, EntityHit("country:ZZZ", "Twin", "country", hits[0].score))
        return hits[:k]

    monkeypatch.setattr(rag.reference, "search_embedding", with_twin)
    shared = rag(image, q, gamma=1.01)
    assert shared.retrieved and shared.shared_picture == [nearest, "country:ZZZ"] and shared.unknown_entity is None
    assert rag(image, q, gamma=1.01, shared_picture_gate=False).retrieved is False
    assert rag(image, q, gamma=1.01, familiarity_gate=False).retrieved is False


def test_entity_tag_that_disagrees_with_the_index_makes_ret_retrieve(rag, tiny_kb, monkeypatch):
    """When the reader's entity tag names another entity than the image's nearest indexed one, its
    recognition and the index disagree about the picture: RET retrieves whatever the tag says and names
    the index's entity. A tag naming the nearest entity (in any case) lets RET skip."""
    image, q = tiny_kb / "images" / "btn.png", "What is the capital of this country?"
    vec = rag.vlm.embed_images([str(image)])[0]
    rag.vlm.memory, rag.vlm.familiarity_threshold = vec[None] / np.linalg.norm(vec), 0.5  # familiar
    nearest = nearest_to(rag, image)
    rag.vlm.known_entities = frozenset({nearest.key, "country:NPL"})
    entity_tag(rag, monkeypatch, nearest.name.upper())
    assert rag(image, q, gamma=1.01).retrieved is False
    monkeypatch.undo()
    entity_tag(rag, monkeypatch, "Nepal" if nearest.name != "Nepal" else "Bhutan")
    other = rag(image, q, gamma=1.01)
    assert other.retrieved and other.disagreeing_entity == nearest.key and other.unknown_entity is None
    assert other.image_side_reason(1.01) == f"the reader tags {other.tags.entity}, the image is nearest to {nearest.key}"
    assert other.image_side_reason(other.p_ret) is None  # the tag itself asked for retrieval
    assert rag(image, q, gamma=1.01, agreement_gate=False).retrieved is False
    assert rag(image, q, gamma=1.01, familiarity_gate=False).retrieved is False
    for nothing in (None, ""):  # a backend without an entity tag, an empty guess: nothing to disagree with
        entity_tag(rag, monkeypatch, nothing)
        assert rag(image, q, gamma=1.01).retrieved is False


def test_closed_book_answer_confirmed_by_the_first_document():
    """The VLM's own answer wins over the span read only when it is probable enough and the first
    document states it as whole words."""
    from rag.vlm.base import Document

    docs = [Document(1, "country:ROU", "Romania", "The capital of Romania is Bucharest."),
            Document(2, "country:ITA", "Italy", "The capital of Italy is Rome.")]
    confirmed = MMKBRAG.confirmed
    assert confirmed("Bucharest", 0.6, docs, 0.5) and confirmed("bucharest.", 0.6, docs, 0.5)
    assert not confirmed("Bucharest", 0.4, docs, 0.5)  # not sure enough
    assert not confirmed("Bucharest", 0.9, docs, None)  # turned off
    assert not confirmed("Bucharest", None, docs, 0.5)  # a backend without closed-book probabilities
    assert not confirmed("Rome", 0.9, docs, 0.5)  # only the second document says it
    assert not confirmed("Roman", 0.9, [docs[0]], 0.5) and not confirmed("", 0.9, docs, 0.5)
    assert not confirmed("Bucharest", 0.9, [], 0.5)
    # The entity's own name in the document is not a statement of the answer, unless it is the answer.
    heart = [Document(3, "emoji:2665-FE0F", "Black heart suit",
                      "The Black heart suit emoji is in the category Activities, subcategory game.")]
    assert not confirmed("heart", 0.9, heart, 0.5) and confirmed("game", 0.9, heart, 0.5)
    assert confirmed("Black heart suit", 0.9, heart, 0.5)
    mexico = [Document(4, "country:MEX", "Mexico", "The capital of Mexico is Mexico City.")]
    assert confirmed("Mexico City", 0.9, mexico, 0.5) and not confirmed("City of Mexico", 0.9, mexico, 0.5)
    with pytest.raises(ValueError, match="confirm_threshold"):
        RAGConfig(confirm_threshold=1.5)


def test_pipeline_answers_with_the_confirmed_closed_book_answer(rag, tiny_kb, monkeypatch):
    image, q = tiny_kb / "images" / "btn.png", "What is the capital of this country?"
    first = rag(image, q, mode="naive-rag", confirm_threshold=None)
    text = first.candidates[0].text
    word = text.split()[-1].strip(".")
    inspect = rag.vlm.inspect
    monkeypatch.setattr(rag.vlm, "inspect",
                        lambda images, questions: ([word], np.array([0.9]), *inspect(images, questions)[2:]))
    out = rag(image, q, mode="naive-rag")
    assert out.confirmed and out.answer == word
    assert rag(image, q, mode="naive-rag", confirm_threshold=0.95).confirmed is False


def test_self_labelling_reads_held_out_views_only(tmp_path, monkeypatch):
    """The RET/SRT labels come from views reading never trained on, about known and calibration
    entities in equal parts."""
    from rag.vlm.train import Features, TrainConfig, Trainer

    labelled = []
    real_label_view = Features.label_view
    monkeypatch.setattr(Features, "label_view",
                        lambda self, key, rng: labelled.append(key) or real_label_view(self, key, rng))
    trainer = Trainer(TrainConfig(out=str(tmp_path / "model"), run_dir=str(tmp_path / "run"), read_steps=0, tag_steps=0,
                                  entity_limit=12, views_per_image=1, label_questions=10, save_every_s=0))
    monkeypatch.setattr(Features, "view", lambda *a: pytest.fail("self-labelling used a training view"))
    trainer.state["stage"] = "label"
    trainer.self_label()
    known, calibration = trainer.knowledge_sets(trainer.reading)
    assert len(labelled) == 10 and sum(k in calibration for k in labelled) == 5
    assert trainer.state["label_stats"]["known_share"] == 0.5


def test_familiarity_scores_calibration_and_export_file(tmp_path):
    from rag.vlm import familiarity

    memory = np.eye(4, dtype=np.float32)[:2]
    assert familiarity.familiarity(np.array([[2.0, 0, 0, 0], [0, 0, 1.0, 1.0]]), memory) == pytest.approx([1.0, 0.0])
    assert familiarity.calibrate(np.array([0.86, 0.9, 0.95]), np.array([0.3, 0.5, 0.85])) == pytest.approx(0.86)
    with pytest.raises(ValueError, match="both known and novel"):
        familiarity.calibrate(np.array([0.9]), np.array([]))

    class Features:  # two known entities, one calibration entity, held-out views near their own entity
        entity_vec = {"a": np.eye(4)[0], "b": np.eye(4)[1], "c": np.eye(4)[2]}
        views = {k: None for k in entity_vec}

        def label_view(self, key, rng):
            return self.entity_vec[key] + np.array([rng.uniform(0, 0.2) for _ in range(4)])

    mem, threshold, stats, keys = familiarity.build(Features(), {"a", "b"}, {"c"}, seed=0)
    assert mem.shape == (2, 4) and stats["known_views_above"] == 1.0 and stats["novel_views_below"] == 1.0
    assert keys == ["a", "b"]  # the memory rows, in order
    familiarity.save(tmp_path, mem, threshold, stats, keys)
    loaded_memory, loaded_threshold, loaded_keys = familiarity.load(tmp_path)
    assert loaded_memory.shape == (2, 4) and loaded_threshold == pytest.approx(threshold)
    assert loaded_keys == {"a", "b"}
    import torch
    from safetensors.torch import save_file

    save_file({"memory": torch.from_numpy(mem).half(), "threshold": torch.tensor([threshold])},
              str(tmp_path / familiarity.FILE), metadata={"stats": "{}"})  # a file made before keys were kept
    assert familiarity.load(tmp_path)[2] is None
    assert familiarity.load(tmp_path / "none") is None


def test_retrieval_searches_with_the_query_views_and_the_reader_reads_the_image(rag, tiny_kb, monkeypatch):
    image = tiny_kb / "images" / "btn.png"
    q = "What is the capital of this country?"
    embedder = rag.reference.image_embedder()
    calls = []
    original = embedder.encode_queries
    monkeypatch.setattr(embedder, "encode_queries", lambda images, views=3, **kw: calls.append(views) or
                        original(images, views=views, **kw))
    three = rag(image, q, mode="naive-rag")
    assert calls == [3] and three.candidates[0].entity_key == "country:BTN"
    one = rag(image, q, mode="naive-rag", query_views=1)
    assert calls == [3, 1] and one.candidates[0].entity_key == "country:BTN"  # one view, with its layout
    rag.reference.settings = rag.reference.settings.model_copy(update={"image_layout_weight": 0.0})
    rag.reference.build(["image"], show_progress=False)
    none = rag(image, q, mode="naive-rag", query_views=1)
    assert calls == [3, 1] and none.candidates[0].entity_key == "country:BTN"  # no layout: the reader's own vector
    rag(image, q, mode="no-rag")
    assert calls == [3, 1]  # no retrieval, no query views
    with pytest.raises(ValueError, match="query_views is 1"):
        RAGConfig(query_views=2)


def test_a_finished_run_resumes_only_with_the_same_setup(tiny_reader, capsys):
    """A run dir's state belongs to one run: another warm start or seed is refused, saying how to start
    over, rather than re-exporting the finished model or silently training over it."""
    import dataclasses

    from rag.vlm.train import TrainConfig, Trainer

    cfg = TrainConfig(out=str(tiny_reader.parent / "again"), run_dir=str(tiny_reader.parent / "run"), read_steps=3,
                      tag_steps=2, entity_limit=12, views_per_image=1, label_questions=24, batch_closed=8,
                      batch_read=4, batch_tags=6, save_every_s=0)
    assert Trainer(cfg).load_state()
    other = Trainer(dataclasses.replace(cfg, init_from=str(tiny_reader)))
    with pytest.raises(ValueError, match="another --init-from; it is kept: pass --no-resume"):
        other.load_state()
    assert (tiny_reader.parent / "run" / "last.pt").is_file()
    Trainer(cfg).run(resume=True)  # the finished run: exported again, saying nothing more was trained
    assert "nothing more is trained" in capsys.readouterr().err
