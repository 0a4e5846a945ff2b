"""Icon concepts as extra training classes for the embedder (`index.clip.icons`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from index.clip import icons
from index.clip.icons import Drawing, choose_concepts, concept_of, load_icons


@pytest.mark.parametrize("name, expected", [
    ("bug", ("bug", "base")),
    ("bug-beetle-fill", ("bug-beetle", "fill")),
    ("forward-10", ("forward-10", "base")),  # a number is part of the name outside Fluent
    ("bug-report-outline-rounded", ("bug-report", "outline-rounded")),
    ("bug-2-line", ("bug-2", "line")),
    ("fill", ("fill", "base")),  # a style word alone is the concept
])
def test_concept_of_strips_style_words_and_fluent_sizes(name, expected):
    assert concept_of(name) == expected


def test_fluent_sizes_are_one_drawing():
    assert concept_of("bug-24-regular", sized=True) == ("bug", "regular")
    assert concept_of("add-circle-16", sized=True) == ("add-circle", "base")


def test_a_style_word_without_other_styles_of_the_thing_is_part_of_its_name():
    sets = {s: ["traffic-light", "bug", "bug-light"] for s in ("a", "b", "c")}
    chosen = choose_concepts(sets, exclude=set(), min_sets=3)
    assert set(chosen) == {"traffic-light", "bug"} and len(chosen["bug"]) == 6


def test_themes_of_one_designer_count_as_one_source_and_numbered_variants_of_excluded_names_are_excluded():
    parks = {s: ["kite", "cake-one"] for s in ("icon-park", "icon-park-outline", "icon-park-solid")}
    assert choose_concepts(parks, exclude=set(), min_sets=3) == {}
    sets = {s: ["kite", "cake-one", "cake-2", "mirror-two"] for s in ("a", "b", "c")}
    assert set(choose_concepts(sets, exclude={"cake", "mirror"}, min_sets=3)) == {"kite"}


def test_choose_concepts_needs_several_sets_skips_excluded_and_prefers_one_drawing_per_set():
    sets = {"a": ["cat", "cat-fill", "cat-bold", "dog", "snail", "7"],
            "b": ["cat-outline", "dog", "snail", "7"],
            "fluent": ["cat-16-regular", "cat-24-regular", "cat-24-filled", "snail-24-regular", "7-24-regular"]}
    chosen = choose_concepts(sets, exclude={"snail"}, min_sets=3, max_images=4)
    assert set(chosen) == {"cat"}  # dog: two sets; snail: excluded; 7: a bare number
    cat = chosen["cat"]
    assert cat[:3] == [Drawing("a", "cat", "base"), Drawing("b", "cat-outline", "outline"),
                       Drawing("fluent", "cat-24-filled", "filled")]
    assert len(cat) == 4 and cat[3].set == "a"  # then the sets' other styles, up to max_images
    assert all("-16-" not in d.name for d in cat)  # one Fluent size: 24 px


def test_held_out_names_cover_every_held_out_emoji_and_few_trained_ones():
    from index.clip.data import is_held_out, load_entities

    names = icons.held_out_names()
    held = [e for e in load_entities() if is_held_out(e.key)]
    assert held and all(icons.slug_of(e.name) in names for e in held)
    trained = [e for e in load_entities() if e.kind == "emoji" and not is_held_out(e.key)]
    assert sum(icons.slug_of(e.name) in names for e in trained) < len(trained) // 20


def _fake_set(folder, names):
    pkg = folder / "package"
    pkg.mkdir(parents=True)
    body = '<path fill="currentColor" d="M2 2h{w}v12H2z"/>'
    (pkg / "icons.json").write_text(json.dumps(
        {"prefix": folder.name, "width": 16, "height": 16,
         "icons": {n: {"body": body.format(w=4 + i), **({"hidden": True} if n.startswith("old-") else {})}
                   for i, n in enumerate(names)}}))
    return pkg


def test_build_icons_renders_coloured_concepts_and_loads_them_as_entities(tmp_path, monkeypatch):
    pytest.importorskip("cairosvg", reason="rendering needs the data extra: pip install -e '.[data]'")
    from PIL import Image

    import index.worldkb.build as build

    monkeypatch.setattr(icons, "ICON_SETS", {"s1": ("1", "MIT"), "s2": ("1", "MIT"), "s3": ("1", "ISC")})
    fakes = {f"@iconify-json/{s}": _fake_set(tmp_path / "npm" / s, ["kite", "kite-fill", "lamp", "old-kite"])
             for s in ("s1", "s2", "s3")}
    monkeypatch.setattr(build, "fetch_npm", lambda name, version, cache: fakes[name])
    monkeypatch.setattr(icons, "held_out_names", lambda: {"lamp"})
    out = tmp_path / "icons"
    (out / "stale").mkdir(parents=True)  # replaced only once complete
    path = icons.build_icons(out, cache=tmp_path / "cache", max_images=4)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["key"] for r in rows] == ["icon:kite"] and not (out / "stale").exists()
    assert [im["style"] for im in rows[0]["images"]] == ["s1:base", "s2:base", "s3:base", "s1:fill"]
    img = Image.open(out / rows[0]["images"][0]["path"]).convert("RGBA")
    assert img.size == (icons.RENDER_SIZE, icons.RENDER_SIZE)
    px = np.asarray(img).reshape(-1, 4)
    colours = {tuple(p[:3]) for p in px[px[:, 3] == 255]}
    assert colours and (0, 0, 0) not in colours  # currentColor became the concept's colour

    with pytest.raises(ValueError, match="--min-sets"):
        icons.build_icons(tmp_path / "none", cache=tmp_path / "cache", min_sets=4)


def test_load_icons_reads_concepts_as_entities_and_says_how_to_build_a_missing_folder(tmp_path):
    [entity, *_] = load_icons(_icon_folder(tmp_path, 2))
    assert entity.kind == "icon" and entity.name == "c0" and len(entity.images) == 2
    assert entity.texts[0] == "c0" and entity.group == "icon:c0"
    with pytest.raises(FileNotFoundError, match="python -m index.clip.icons"):
        load_icons(tmp_path / "nothing")


def _icon_folder(tmp_path, n: int):
    """n concepts, each two drawings of the same image: enough for batches without npm."""
    from PIL import Image

    folder = tmp_path / "icons"
    rows = []
    for i in range(n):
        rel = f"images/c{i}"
        (folder / rel).mkdir(parents=True)
        img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        img.paste((40 * i % 255, 90, 200, 255), (8 + i, 8, 40, 56))
        for s in ("a", "b"):
            img.save(folder / rel / f"{s}.png")
        rows.append({"key": f"icon:c{i}", "name": f"c{i}",
                     "images": [{"path": f"{rel}/{s}.png", "style": s} for s in ("a", "b")]})
    (folder / "manifest.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    return folder


@pytest.mark.parametrize("n_main, n_icons, share, icons_in_batch", [
    (100, 60, 0.4, 8),  # 40% of the 20 that are not hard negatives
    (100, 5, 0.4, 5),  # fewer icons than the share asks for: all of them
    (24, 60, 0.4, 16),  # few entities (hard negatives capped by their groups): icons fill the batch
    (100, 60, 0.0, 0),
])
def test_batches_draw_the_icon_share_from_the_extra_classes(tmp_path, n_main, n_icons, share, icons_in_batch):
    from index.clip.data import load_entities, split
    from index.clip.train import Batches, TrainConfig

    main = split(load_entities())[0][:n_main]
    extra = load_icons(_icon_folder(tmp_path, n_icons))
    cfg = TrainConfig(batch_size=40, hard_negative_fraction=0.5, icon_share=share)
    tokens = [torch.zeros(1, 4, dtype=torch.long)] * (n_main + n_icons)
    members = Batches(main + extra, tokens, None, cfg, 0, extra=n_icons)._members(np.random.default_rng(0))
    assert len(members) == 40 and len(set(members.tolist())) == 40
    assert (members >= n_main).sum() == icons_in_batch


def test_icon_share_must_be_a_share_and_a_run_resumes_only_with_its_own_icons(tmp_path, tiny_config):
    from index.clip.train import train_clip

    folder = _icon_folder(tmp_path, 4)
    kw = dict(minutes=5, config=tiny_config, out=tmp_path / "ckpt", run_dir=tmp_path / "run", batch_size=8,
              max_entities=8, workers=0, progress=False)
    with pytest.raises(ValueError, match="from 0 to 1"):
        train_clip(steps=1, icons=folder, icon_share=1.5, **kw)
    train_clip(steps=1, icons=folder, **kw)
    with pytest.raises(ValueError, match="--icons .* --icon-share"):
        train_clip(steps=2, **kw)
    with pytest.raises(ValueError, match="--no-resume"):
        train_clip(steps=2, icons=folder, icon_share=0.9, **kw)


def test_training_with_icons_says_so_in_its_card_and_command(tmp_path, tiny_config):
    from index.clip.train import train_clip

    folder = _icon_folder(tmp_path, 12)
    train_clip(minutes=5, steps=3, config=tiny_config, out=tmp_path / "ckpt", run_dir=tmp_path / "run",
               batch_size=16, max_entities=16, workers=0, progress=False, icons=folder, icon_share=0.5)
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert len(state["history"]) == 3 and state["objective"]["proxies"].shape[0] == 16 + 12
    summary = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    card = (tmp_path / "ckpt" / "MODEL_CARD.md").read_text()
    assert f"--icons {folder} --icon-share 0.5" in card
    assert "Also trained on 12 icon concepts" in card
    assert summary["summary"]["icon_concepts"] == 12 and summary["train_cfg"]["icons"] == str(folder)
