"""The demo page's answer blocks: what a person reads about each KB-VQA answer."""
from __future__ import annotations

from api.demo import _answer_block
from rag.pipeline import Citation, RAGAnswer
from rag.vlm.base import SemanticTags


def block(out: RAGAnswer, tmp_path) -> str:
    return _answer_block({"answer": out, "gamma": 0.5, "image": tmp_path / "missing.png", "ms": 12.3,
                          "question": out.question})


def test_an_answer_from_memory_says_why_it_skipped_retrieval(tmp_path):
    out = RAGAnswer("What is the capital of this country?", "Brasília", "mmkb-rag", False, 0.07,
                    SemanticTags(entity="Brazil", category="country"), familiarity=0.94,
                    closed_book="Brasília", closed_book_probability=0.99)
    html = block(out, tmp_path)
    assert "<b>Brasília</b>" in html and "answered without retrieval" in html and "P([Ret]) 0.07" in html
    assert "its own answer Brasília with probability 0.99" in html and "familiarity 0.94" in html
    assert "12 ms" in html and "Brazil / country" in html and "<li>" not in html


def test_a_retrieved_answer_gives_the_image_side_reason_and_escaped_citations(tmp_path):
    cite = Citation("country:NLD", "Netherlands", 2168, "currencies", "The currency of <Netherlands> is the Euro.",
                    1.2, relevance=0.45)
    out = RAGAnswer("Which currency is used in the country with this flag?", "Euro", "mmkb-rag", True, 0.14,
                    SemanticTags(entity="Caribbean Netherlands", category="country"), [cite], [cite],
                    familiarity=0.97, shared_picture=["country:NLD", "country:BES"],
                    closed_book="United States dollar", closed_book_probability=0.6)
    html = block(out, tmp_path)
    assert "retrieved: country:NLD, country:BES share this picture" in html
    assert "<code>country:NLD</code> · section 2168 · P([Rel]) 0.45" in html
    assert "&lt;Netherlands&gt;" in html and "<Netherlands>" not in html
    assert "its own answer United States dollar with probability 0.60" in html
