"""Knowledge-grounded generation: the entities a prompt names, their references, the DiT's caption."""
from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from rag.grounding import Grounder, NameTable, caption_for, find_mentions

ROWS = [  # (key, kind, name, aliases, attributes), as EntityStore.names() gives them
    ("country:BTN", "country", "Bhutan", ["BT", "BTN", "Kingdom of Bhutan", "flag-bt"], {"facts": {"demonym": "Bhutanese"}}),
    ("country:SDN", "country", "Sudan", ["SD"], {"facts": {"population": 40_000_000}}),
    ("country:SSD", "country", "South Sudan", ["SS"], {}),
    ("country:USA", "country", "United States", ["US", "USA", "United States of America"], {}),
    ("country:XGE", "country", "Georgia", [], {"facts": {"population": 10}}),
    ("country:GEO", "country", "Georgia", [], {"facts": {"population": 3_700_000}}),
    ("country:JPN", "country", "Japan", [], {}),
    ("emoji:1F34E", "emoji", "Red apple", ["apple"], {}),
    ("emoji:1F468", "emoji", "Man", ["man"], {}),
    ("emoji:2B50", "emoji", "Star", ["star"], {}),
]


def mentions(prompt: str) -> list[tuple[str, str, str]]:
    found, _ = find_mentions(prompt, NameTable(ROWS))
    return [(m.text, m.key, m.how) for m in found]


def test_names_and_their_phrases_are_found_in_prompt_order():
    prompt = "the flag of Bhutan on the left and the red apple emoji on the right on a pink background"
    found, _ = find_mentions(prompt, NameTable(ROWS))
    assert [(m.text, m.key) for m in found] == [("the flag of Bhutan", "country:BTN"),
                                                ("the red apple emoji", "emoji:1F34E")]
    assert caption_for(prompt, found) == "the first on the left and the second on the right on a pink background"
    one = "Bhutan's flag at the top on a blue background"
    assert caption_for(one, find_mentions(one, NameTable(ROWS))[0]) == "the flag at the top on a blue background"
    assert mentions("an apple emoji in the center") == [("an apple emoji", "emoji:1F34E", "alias")]


def test_longest_name_aliases_demonyms_and_ties():
    assert mentions("the flag of South Sudan") == [("the flag of South Sudan", "country:SSD", "name")]
    assert mentions("the United States of America flag") == [
        ("the United States of America flag", "country:USA", "alias")]
    assert mentions("the Bhutanese flag on red") == [("the Bhutanese flag", "country:BTN", "demonym")]
    assert mentions("Georgia on a white background") == [("Georgia", "country:GEO", "name")]  # the more prominent


def test_quotes_punctuation_and_neighbouring_mentions():
    assert mentions("the 'Bhutan' flag on red") == [("the 'Bhutan' flag", "country:BTN", "name")]
    quoted = "the flag of ‘Japan’ at the top"
    assert caption_for(quoted, find_mentions(quoted, NameTable(ROWS))[0]) == "the flag at the top"
    # a country just before an emoji's name leaves the name whole; a comma ends a name
    assert mentions("Japan red apple emoji") == [("Japan", "country:JPN", "name"),
                                                 ("red apple emoji", "emoji:1F34E", "name")]
    assert mentions("South, Sudan") == [("Sudan", "country:SDN", "name")]
    # a phrase never grows into another mention's words
    overlap = "the Bhutan flag of Japan"
    found, _ = find_mentions(overlap, NameTable(ROWS))
    assert [m.text for m in found] == ["the Bhutan flag", "Japan"]
    assert caption_for(overlap, found) == "the first of the second"


def test_what_goes_to_the_text_search():
    """Only the words before "flag"/"emoji" (or after "flag of") that named nothing are searched; a colour
    is never a country's name, but may be part of an emoji's."""
    asked = []

    class Index:
        def search(self, text, kinds, k):
            asked.append((text, kinds[0]))
            return []

    found, unresolved = find_mentions("a green flag, the big red apple emoji and the flag of the Atlantis isles",
                                      NameTable(ROWS), Index())
    assert found == [] and asked == [("big red apple", "emoji"), ("atlantis isles", "country")]
    assert unresolved == ["big red apple emoji", "flag of the Atlantis isles"]


def test_common_words_and_codes_are_not_entities():
    """Emoji names are ordinary words: only "… emoji" names one; country codes read as words."""
    assert mentions("a man holding a red apple under a star") == []
    assert mentions("show us the flag on a blue background") == []  # "us" is not the United States
    assert mentions("the star emoji") == [("the star emoji", "emoji:2B50", "name")]
    assert mentions("the Bhutanese people") == []  # a demonym only names a flag


@pytest.fixture
def grounder(home, tiny_kb):
    from index.config import get_settings
    from index.ingest import ingest_folder
    from index.search import ReferenceIndex
    from index.store import EntityStore

    settings = get_settings()
    store = EntityStore(settings.db_url, settings.home_dir)
    ingest_folder(store, tiny_kb, show_progress=False)
    return Grounder(ReferenceIndex(store, settings))


def test_grounder_picks_one_reference_per_entity_and_searches_the_rest(grounder):
    g = grounder("the flag of Bhutan on the left and Bhutan's flag on the right")  # before any index is built
    assert [m.key for m in g.mentions] == ["country:BTN"] * 2 and len(g.references) == 1
    assert g.references[0].endswith(".png")
    assert g.mentions[0].style == "flag" and g.caption == "the flag on the left and the flag on the right"
    assert grounder("the fruit emoji").mentions == []  # searching needs the text index: nothing yet, no error
    grounder.reference.build(["text"], show_progress=False)
    searched = Grounder(grounder.reference, search_threshold=0.2)("a fruit emoji on a blue background")
    assert [(m.key, m.how) for m in searched.mentions] == [("emoji:1F34E", "search")]
    assert searched.caption == "the emoji on a blue background" and 0.2 <= searched.mentions[0].score < 1
    strict = Grounder(grounder.reference, search_threshold=0.99)("the flag of Atlantis on green")
    assert strict.mentions == [] and strict.unresolved == ["flag of Atlantis"] and strict.caption == strict.prompt


def test_too_many_entities_and_empty_prompts_are_refused(grounder):
    rows = ROWS + [("country:NPL", "country", "Nepal", [], {})]
    found, _ = find_mentions("Bhutan, Nepal, South Sudan and the red apple emoji", NameTable(rows))
    assert len(found) == 4
    grounder._table = NameTable(rows)
    with pytest.raises(ValueError, match="names 4 entities .* at most 3"):
        grounder("Bhutan, Nepal, South Sudan and the red apple emoji")
    with pytest.raises(ValueError, match="non-empty"):
        grounder("  ")


def test_mmkb_generate_grounds_a_prompt_in_the_index(grounder, tiny_checkpoints, tmp_path):
    from api.cli import app

    out = tmp_path / "gen"
    args = ["generate", "--prompt", "the flag of Bhutan on a blue background", "--steps", "1", "--out", str(out),
            "--model", str(tiny_checkpoints[0])]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "country:BTN" in r.output and "the flag on a blue background" in r.output
    side = json.loads((out / "sample-0.json").read_text())
    assert side["prompt"] == "the flag of Bhutan on a blue background"
    assert side["caption"] == "the flag on a blue background"
    assert side["references"][0]["entity"] == "country:BTN" and side["references"][0]["path"].endswith(".png")
    assert side["grounding"]["mentions"][0]["how"] == "name"
    r = CliRunner().invoke(app, args + ["--no-ground"])
    assert r.exit_code == 0, r.output
    side = json.loads((out / "sample-0-2.json").read_text())  # beside the first run's, which stays
    assert side["references"] == [] and side["prompt"] == "the flag of Bhutan on a blue background"
    assert json.loads((out / "sample-0.json").read_text())["references"]


def test_an_edit_names_what_to_swap_in(grounder, tiny_checkpoints, tmp_path):
    """ "replace the flag with the flag of Bhutan": the image edited is the DiT's first reference, Bhutan the
    second, as in the swap captions it trained on."""
    from api.cli import app

    found, _ = find_mentions("replace the flag with the flag of Bhutan", NameTable(ROWS))
    assert caption_for("replace the flag with the flag of Bhutan", found, editing=True) == \
        "replace the flag with the second image"
    g = grounder("replace the emoji with the flag of Bhutan", editing=True)
    assert g.caption == "replace the emoji with the second image" and len(g.references) == 1
    with pytest.raises(ValueError, match="at most 2 beside the image edited"):
        grounder._table = NameTable(ROWS + [("country:NPL", "country", "Nepal", [], {})])
        grounder("replace it with Bhutan, Nepal and the red apple emoji", editing=True)
    grounder._table = None
    scene = tmp_path / "scene.png"
    Image.new("RGB", (64, 64), (40, 160, 60)).save(scene)
    out = tmp_path / "edit"
    r = CliRunner().invoke(app, ["edit", "--image", str(scene), "--instruction", "replace the flag with the flag of "
                                 "Bhutan", "--steps", "1", "--out", str(out), "--model", str(tiny_checkpoints[0])])
    assert r.exit_code == 0, r.output
    side = json.loads((out / "edit-0.json").read_text())
    assert side["caption"] == "replace the flag with the second image"
    assert [u["role"] for u in side["references"]] == ["edit source", "reference"]
    assert side["references"][1]["entity"] == "country:BTN" and "entity" not in side["references"][0]
    plain = CliRunner().invoke(app, ["edit", "--image", str(scene), "--instruction", "change the background to red",
                                     "--steps", "1", "--out", str(out), "--model", str(tiny_checkpoints[0])])
    assert plain.exit_code == 0 and "names no indexed entity" not in plain.output
