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
    ("bug-24-regular", ("bug", "regular")),
    ("add-circle-16", ("add-circle", "base")),
    ("bug-report-outline-rounded", ("bug-report", "outline-rounded")),
    ("bug-2-line", ("bug-2", "line")),
    ("fill", ("fill", "base")),  # a style word alone is the concept
])
def test_concept_of_strips_style_words_and_fluent_sizes(name, expected):
    assert concept_of(name) == expected


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


def test_held_out_emoji_names_are_excluded_concepts():
    from index.clip.data import is_held_out, load_entities

    names = icons.held_out_names()
    held = [e for e in load_entities() if is_held_out(e.key)]
    assert held and all(icons.slug(e.name) in names for e in held)
    trained = [e for e in load_entities() if e.kind == "emoji" and not is_held_out(e.key)]
    assert sum(icons.slug(e.name) in names for e in trained) < len(trained) // 20


def _fake_set(folder, names):
    pkg = folder / "package"
    pkg.mkdir(parents=True)
    body = '<path fill="currentColor" d="M2 2h{w}v12H2z"/>'
    (pkg / "icons.json").write_text(json.dumps(
        {"prefix": folder.name, "width": 16, "height": 16,
         "icons": {n: {"body": body.format(w=4 + i)} for i, n in enumerate(names)}}))
    return pkg


def test_build_icons_renders_coloured_concepts_and_loads_them_as_entities(tmp_path, monkeypatch):
    pytest.importorskip("cairosvg", reason="rendering needs the data extra: pip install -e '.[data]'")
    from PIL import Image

    import index.worldkb.build as build

    monkeypatch.setattr(icons, "ICON_SETS", {"s1": ("1", "MIT"), "s2": ("1", "MIT"), "s3": ("1", "ISC")})
    fakes = {f"@iconify-json/{s}": _fake_set(tmp_path / "npm" / s, ["kite", "kite-fill", "lamp"])
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

    [entity] = load_icons(out)
    assert entity.kind == "icon" and entity.name == "kite" and len(entity.images) == 4
    assert entity.texts[0] == "kite" and entity.group == "icon:kite"
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


def test_batches_draw_the_icon_share_from_the_extra_classes(tmp_path):
    from index.clip.data import load_entities, split
    from index.clip.train import Batches, TrainConfig

    main = split(load_entities())[0][:100]
    extra = load_icons(_icon_folder(tmp_path, 60))
    cfg = TrainConfig(batch_size=40, hard_negative_fraction=0.5, icon_share=0.4)
    batches = Batches(main + extra, [torch.zeros(1, 4, dtype=torch.long)] * 160, None, cfg, 0, extra=len(extra))
    members = batches._members(np.random.default_rng(0))
    assert len(members) == 40 and len(set(members.tolist())) == 40
    assert (members >= 100).sum() == 8  # 40% of the 20 that are not hard negatives


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
