"""The shipped starter KB: real, complete, traceable and compact."""
from __future__ import annotations

import json
import re

import pytest

from index.worldkb import DATA_DIR, MANIFEST
from index.worldkb.build import IconifySet, assign_icons, icon_stem, render_svg
from index.worldkb.facts import country_sections


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    return {r["key"]: r for r in map(json.loads, MANIFEST.read_text(encoding="utf-8").splitlines())}


def test_keys_are_stable_and_unique(records):
    assert all(re.fullmatch(r"country:[A-Z]{3}|emoji:[0-9A-F]{4,6}(-[0-9A-F]{4,6})*", k) for k in records)
    assert sum(k.startswith("country:") for k in records) == 250
    assert sum(k.startswith("emoji:") for k in records) > 1500


def test_every_sentence_names_its_source_and_every_image_exists(records):
    for rec in records.values():
        assert rec["sections"], rec["key"]
        assert all(s["source"] and s["text"].endswith(".") for s in rec["sections"])
        for im in rec["images"]:
            assert (DATA_DIR / im["path"]).is_file() and im["license"]


def test_known_facts(records):
    btn = {s["heading"]: s["text"] for s in records["country:BTN"]["sections"]}
    assert btn["capital"] == "The capital of Bhutan is Thimphu."
    assert "China and India" in btn["borders"] and btn["landlocked"] == "Bhutan is landlocked."
    apple = records["emoji:1F34E"]
    assert apple["name"] == "Red apple" and apple["category"] == "Food & Drink"
    assert {im["style"] for im in apple["images"]} == {"emoji-google", "emoji-twitter", "emoji-fluent-flat",
                                                       "emoji-fluent-modern", "emoji-emojione", "emoji-noto-v1",
                                                       "emoji-emojione-v1", "emoji-fxemoji", "emoji-streamline"}
    emojione = next(im for im in apple["images"] if im["style"] == "emoji-emojione")
    assert emojione["source"] == "@iconify-json/emojione:red-apple" and emojione["license"] == "CC-BY-4.0"
    fx = next(im for im in apple["images"] if im["style"] == "emoji-fxemoji")
    assert fx["source"] == "@iconify-json/fxemoji:redapple" and fx["license"] == "Apache-2.0"
    streamline = next(im for im in apple["images"] if im["style"] == "emoji-streamline")
    assert streamline["source"] == "@iconify-json/streamline-emojis:red-apple" and streamline["license"] == "CC-BY-4.0"
    fluent = next(im for im in apple["images"] if im["style"] == "emoji-fluent-flat")
    assert fluent["source"] == "fluentui-emoji:icons/flat/red-apple.svg" and fluent["license"] == "MIT"
    # the flag emoji folds into its country: one flag, one entity
    assert "emoji:1F1E7-1F1F9" not in records
    assert {im["style"] for im in records["country:BTN"]["images"]} == {"flag", "emoji-google", "emoji-twitter"}


def test_shipped_kb_is_compact():
    total = sum(p.stat().st_size for p in DATA_DIR.rglob("*") if p.is_file())
    assert total <= 40 * 1024 * 1024  # 35.2 MiB with up to nine drawings of each emoji (2026-11-27)
    assert (DATA_DIR / "LICENSES.md").is_file()


def test_country_sentences_come_only_from_fields_present():
    c = {"name": {"common": "Testland", "official": "Republic of Testland"}, "capital": ["Alpha", "Beta"],
         "borders": [], "landlocked": False}
    sections = {s["heading"]: s["text"] for s in country_sections(c, {}, None)}
    assert sections["capital"] == "The capitals of Testland are Alpha and Beta."
    assert sections["borders"] == "Testland has no land borders with other countries."
    assert "population" not in sections and "currencies" not in sections


def test_icons_are_matched_by_cldr_name_alias_or_default_skin_tone():
    stems = {"red-apple", "waving-hand-default", "waving-hand-dark", "face-with-tears-of-joy", "ok-hand-default"}
    assert icon_stem(["Red apple"], stems) == "red-apple"
    # a Unicode name fluentui-emoji does not use, then the CLDR alias it does
    assert icon_stem(["Waving hand sign", "wave", "waving hand"], stems) == "waving-hand-default"
    assert icon_stem(["Face with tears of joy"], stems) == "face-with-tears-of-joy"
    assert icon_stem(["Ok hand sign", "OK hand"], stems) == "ok-hand-default"
    assert icon_stem(["Nothing like it", ""], stems) is None
    # fxemoji spells its names without hyphens
    assert icon_stem(["Alarm clock"], {"alarmclock"}) == "alarmclock"
    # Streamline draws some emoji only in numbered variants; another set's "keycap-1" is the keycap 1
    assert icon_stem(["Baby"], {"baby-1", "baby-2"}, numbered=True) == "baby-1"
    assert icon_stem(["Baby"], {"baby-1"}) is None
    assert icon_stem(["Keycap"], {"keycap-1"}) is None


def test_an_icon_goes_only_to_the_emoji_that_names_it_best():
    # names as the builder lists them: CLDR name, Unicode name, short names
    names = {"1F604": ["grinning face with smiling eyes", "Smiling face with open mouth and smiling eyes", "smile"],
             "1F601": ["beaming face with smiling eyes", "Grinning face with smiling eyes", "grin"],
             "1F42A": ["camel", "Dromedary camel", "dromedary camel"],
             "1F42B": ["two-hump camel", "Bactrian camel", "camel"],
             "1F431": ["cat face", "Cat face", "cat"], "1F408": ["cat", "Cat", "cat2"]}
    cldr_set = {"grinning-face-with-smiling-eyes", "beaming-face-with-smiling-eyes", "camel", "two-hump-camel",
                "cat-face", "cat"}
    assert assign_icons(names, cldr_set) == {"1F604": "grinning-face-with-smiling-eyes",
                                             "1F601": "beaming-face-with-smiling-eyes", "1F42A": "camel",
                                             "1F42B": "two-hump-camel", "1F431": "cat-face", "1F408": "cat"}
    # a set without the two-hump camel or a cat face: the camel and the cat stay their CLDR owners' alone
    assert assign_icons(names, {"camel", "cat", "grinning-face-with-smiling-eyes"}) == {
        "1F42A": "camel", "1F408": "cat", "1F604": "grinning-face-with-smiling-eyes"}
    # equally good names: the drawing's own name wins over an alias of it; two emoji named alike get none
    aliases = {"cricket": "cricket-game"}
    assert assign_icons({"1F3CF": ["cricket game"], "1F997": ["cricket"]}, {"cricket-game", "cricket"},
                        drawing=lambda stem: aliases.get(stem, stem)) == {"1F3CF": "cricket-game"}
    assert assign_icons({"0023": ["keycap: #"], "002A": ["keycap: *"]}, {"keycap"}) == {}


def test_no_two_emoji_share_an_icon_drawing(records):
    """Each Fluent or Iconify drawing (its source names the set and the icon) belongs to one emoji; before
    2026-12-07 the camels, cats and grinning faces among others were drawn once for two."""
    by_source = {}
    for r in records.values():
        for im in r["images"]:
            if ":" in im["source"] and not im["source"].startswith("emoji-datasource"):
                by_source.setdefault(im["source"], []).append(r["key"])
    assert not {source: keys for source, keys in by_source.items() if len(keys) > 1}


def test_most_emoji_have_fluent_renderings(records):
    emoji = [r for r in records.values() if r["kind"] == "emoji"]
    with_fluent = [r for r in emoji if any(im["style"].startswith("emoji-fluent") for im in r["images"])]
    assert len(with_fluent) > 0.9 * len(emoji)


def test_iconify_icons_render_through_their_aliases(tmp_path):
    (tmp_path / "icons.json").write_text(json.dumps({
        "prefix": "t", "width": 16, "height": 16,
        "icons": {"red-square": {"body": '<path fill="#f00" d="M0 0h16v16H0z"/>'},
                  "wide": {"body": '<path fill="#00f" d="M0 0h32v16H0z"/>', "width": 32}},
        "aliases": {"square": {"parent": "red-square"}, "box": {"parent": "square"}}}))
    icons = IconifySet(tmp_path)
    assert icons.names == {"red-square", "wide", "square", "box"}
    assert 'viewBox="0 0 16 16"' in icons.svg("box") and "#f00" in icons.svg("box")
    assert 'viewBox="0 0 32 16"' in icons.svg("wide")
    pytest.importorskip("cairosvg", reason="rendering needs the data extra: pip install -e '.[data]'")
    img = render_svg(icons.svg("box"), 8, 8)
    assert img.size == (8, 8) and img.getpixel((4, 4)) == (255, 0, 0, 255)


def test_most_emoji_have_iconify_renderings(records):
    emoji = [r for r in records.values() if r["kind"] == "emoji"]
    share = {"emoji-emojione": 0.6, "emoji-noto-v1": 0.6, "emoji-emojione-v1": 0.5, "emoji-fxemoji": 0.35,
             "emoji-streamline": 0.3}
    for style, least in share.items():
        assert sum(any(im["style"] == style for im in r["images"]) for r in emoji) > least * len(emoji)
