"""The embedder's augmentations, trainer, export and the shipped checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from index.clip import CHECKPOINT_DIR, DEFAULT_CONFIG, register_configs, shipped_checkpoint
from index.clip.augment import DISTORTIONS, augment, distort
from index.clip.data import is_held_out, load_entities, split
from index.worldkb import DATA_DIR
from index.worldkb.build_queries import QUERY_DIR

FLAG = DATA_DIR / "images" / "flags" / "BTN.png"
EMOJI = DATA_DIR / "images" / "emoji" / "1F600-google.png"


def _history(run_dir) -> list[dict]:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)["history"]


@pytest.mark.parametrize("name", DISTORTIONS)
@pytest.mark.parametrize("path", [FLAG, EMOJI])
def test_distortions_keep_size_and_mode_and_are_deterministic(name, path):
    img = Image.open(path)
    a = distort(img, name, np.random.default_rng(7))
    b = distort(img, name, np.random.default_rng(7))
    assert (a.size, a.mode) == (img.size, img.mode)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    if name != "clean":
        assert not np.array_equal(np.asarray(a), np.asarray(img))


def test_augment_is_deterministic_per_seed_and_varies_across_seeds():
    img = Image.open(EMOJI)
    views = [np.asarray(augment(img, np.random.default_rng(s), [img])) for s in (1, 1, 2)]
    assert views[0].shape == np.asarray(img).shape
    assert np.array_equal(views[0], views[1]) and not np.array_equal(views[0], views[2])


def test_unknown_distortion_is_an_error():
    with pytest.raises(ValueError, match="unknown distortion"):
        distort(Image.open(FLAG), "sepia", np.random.default_rng(0))


def test_held_out_split_is_a_stable_fifth_of_the_emoji():
    train, held = split(load_entities())
    emoji = [e for e in train + held if e.kind == "emoji"]
    assert all(e.kind == "emoji" for e in held)
    assert 0.15 < len(held) / len(emoji) < 0.25
    assert is_held_out(held[0].key) and not is_held_out("country:BTN")


def test_training_lowers_the_loss_and_exports_a_loadable_fp16_checkpoint(tmp_path, tiny_config, tiny_clip_cfg):
    import open_clip
    from safetensors.torch import load_file

    from index.clip.train import train_clip

    path = train_clip(minutes=5, steps=25, config=tiny_config, out=tmp_path / "ckpt", run_dir=tmp_path / "run",
                      batch_size=16, lr=3e-3, max_entities=16, workers=0, progress=False)
    losses = [h["loss"] for h in _history(tmp_path / "run")]
    assert len(losses) == 25
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3

    assert path == tmp_path / "ckpt" / "open_clip_model.safetensors"
    assert {t.dtype for t in load_file(str(path)).values() if t.is_floating_point()} == {torch.float16}
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_config, pretrained=str(path))
    trained = {k: v.float() for k, v in load_file(str(path)).items()}
    assert torch.equal(model.state_dict()["visual.conv1.weight"], trained["visual.conv1.weight"])
    card = (tmp_path / "ckpt" / "MODEL_CARD.md").read_text()
    assert "Held out" in card and json.loads((tmp_path / "ckpt" / "config.json").read_text())["model_cfg"] == tiny_clip_cfg


def _resize(preprocess):
    return next(t for t in preprocess.transforms if type(t).__name__ == "Resize")


def test_export_says_its_resize_mode_and_every_loader_uses_it(tmp_path, tiny_config):
    """Flags are 4:3: trained on squashed whole images, the weights must be read the same way."""
    import open_clip

    from index.clip import resize_mode_of
    from index.clip.train import train_clip
    from index.embedders import ImageEmbedder

    kw = dict(steps=1, config=tiny_config, batch_size=8, max_entities=8, workers=0, progress=False)
    squash = train_clip(out=tmp_path / "sq", run_dir=tmp_path / "run-sq", **kw)
    crop = train_clip(out=tmp_path / "crop", run_dir=tmp_path / "run-crop", resize_mode="shortest", **kw)
    assert (resize_mode_of(squash), resize_mode_of(crop), resize_mode_of(tmp_path / "none.safetensors")) == \
        ("squash", "shortest", None)
    _, _, local = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'sq'}")
    assert _resize(local).size == (32, 32)  # both sides: the whole image, squashed
    assert _resize(ImageEmbedder(f"{tiny_config}:{squash}").preprocess).size == (32, 32)
    assert _resize(ImageEmbedder(f"{tiny_config}:{crop}").preprocess).size == 32  # short side, then a crop
    assert "image_resize_mode=\"squash\"" in (tmp_path / "sq" / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="resize mode"):
        train_clip(out=tmp_path / "x", run_dir=tmp_path / "run-x", resize_mode="pad", **kw)
    assert not (tmp_path / "run-x").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="--resize-mode squash"):  # a saved run keeps its preprocessing
        train_clip(out=tmp_path / "sq", run_dir=tmp_path / "run-sq", resize_mode="shortest", **kw)


def test_attention_pool_positions_resize_to_another_grid():
    from index.clip.train import resize_pool_positions

    positions = torch.cat([torch.full((1, 4), 7.0), torch.ones(1, 4)])  # pooled token + a 1x1 grid
    bigger = resize_pool_positions(positions, 5)
    assert bigger.shape == (5, 4) and torch.equal(bigger[0], positions[0])
    assert torch.allclose(bigger[1:], torch.ones(4, 4))  # a constant grid stays constant
    with pytest.raises(ValueError, match="square grid"):
        resize_pool_positions(positions, 4)


def test_weights_of_another_input_size_warm_start_a_model(tmp_path, tiny_config, tiny_clip_cfg):
    """The 32 px weights start the 64 px model: the convolutions carry over, the pool's positions are resized."""
    import open_clip

    from index.clip.train import train_clip

    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "mmkb-clip-test-64.json").write_text(json.dumps({**tiny_clip_cfg, "vision_cfg": {**tiny_clip_cfg["vision_cfg"],
                                                                                      "image_size": 64}}))
    open_clip.add_model_config(folder)
    kw = dict(steps=1, batch_size=8, max_entities=8, workers=0, progress=False)
    small = train_clip(config=tiny_config, out=tmp_path / "32", run_dir=tmp_path / "run-32", **kw)
    big = train_clip(config="mmkb-clip-test-64", init_from=small.parent, out=tmp_path / "64",
                     run_dir=tmp_path / "run-64", **kw)
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{big.parent}")
    assert _resize(preprocess).size == (64, 64)
    assert "trained at a 32 px input" in (tmp_path / "64" / "MODEL_CARD.md").read_text()


def test_training_resumes_from_its_saved_state(tmp_path, tiny_config):
    from index.clip.train import train_clip

    kw = dict(minutes=5, config=tiny_config, out=tmp_path / "ckpt", run_dir=tmp_path / "run", batch_size=8,
              max_entities=8, workers=0, progress=False)
    train_clip(steps=3, **kw)
    train_clip(steps=5, **kw)
    assert [h["step"] for h in _history(tmp_path / "run")] == [1, 2, 3, 4, 5]


def test_training_needs_a_stopping_rule():
    from index.clip.train import train_clip

    with pytest.raises(ValueError, match="steps` or `minutes"):
        train_clip(minutes=None, steps=None)


@pytest.mark.skipif(shipped_checkpoint(DEFAULT_CONFIG) is None, reason="no shipped checkpoint")
def test_shipped_embedder_recognises_a_flag_icons_flag():
    from index.embedders import load_image_embedder

    register_configs()
    emb = load_image_embedder(DEFAULT_CONFIG, "cpu")
    assert emb.trained
    flags = sorted((DATA_DIR / "images" / "flags").glob("*.png"))
    vecs = emb.encode_images(flags)
    query = emb.encode_images([QUERY_DIR / "flags" / "bt.png"])[0]
    best = flags[int(np.argmax(vecs @ query))]
    assert best.name.split("-")[0].removesuffix(".png") == "BTN"
    assert (CHECKPOINT_DIR / DEFAULT_CONFIG / "MODEL_CARD.md").exists()


def _yellow_disc() -> Image.Image:
    """A flat yellow disc on a transparent 64 px canvas: the simplest emoji-like drawing."""
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((8, 8, 56, 56), fill=(250, 200, 30, 255))
    return img


def test_drawn_style_keeps_size_hue_and_draws_dark_outlines():
    from index.clip.augment import drawn

    img = _yellow_disc()
    out = drawn(img, np.random.default_rng(0))
    assert out.size == img.size and out.mode == "RGBA"
    arr = np.asarray(out)
    assert np.abs(arr[32, 32, :3].astype(int) - [250, 200, 30]).max() < 12  # the fill keeps its colour
    assert arr[32, 8, :3].max() < 60 and arr[32, 8, 3] == 255  # the silhouette's edge is inked
    assert arr[2, 2, 3] == 0  # outside stays transparent


def test_drawn_one_pixel_lines_skip_the_size_one_max_filter(monkeypatch):
    # MaxFilter(1) raised SIGFPE in every data-loading process on a GPU machine's Pillow build:
    # a 1-px line is the edge map itself, so the filter is only run for wider lines.
    from PIL import ImageFilter

    from index.clip.augment import drawn

    real = ImageFilter.MaxFilter

    def max_filter(size=3):
        assert size > 1, "MaxFilter(1) is a no-op that crashes some Pillow builds"
        return real(size)

    monkeypatch.setattr(ImageFilter, "MaxFilter", max_filter)
    img = _yellow_disc()
    thin = np.asarray(drawn(img, np.random.default_rng(0), line=(1, 1)))
    thick = np.asarray(drawn(img, np.random.default_rng(0), line=(2, 2)))
    assert thin[32, 8, :3].max() < 60 and thin[32, 8, 3] == 255  # the silhouette's edge is inked
    assert (thin[..., :3].max(-1) < 60).sum() < (thick[..., :3].max(-1) < 60).sum()  # 1 px is thinner


def test_warm_start_continues_from_given_weights(tmp_path, tiny_config):
    from safetensors.torch import load_file

    from index.clip.train import train_clip

    kw = dict(minutes=5, config=tiny_config, batch_size=8, max_entities=8, workers=0, progress=False)
    first = train_clip(steps=2, out=tmp_path / "a", run_dir=tmp_path / "run-a", **kw)
    second = train_clip(steps=1, lr=1e-9, seed=1, out=tmp_path / "b", run_dir=tmp_path / "run-b",
                        init_from=tmp_path / "a", **kw)
    a, b = load_file(str(first)), load_file(str(second))
    assert torch.allclose(a["visual.conv1.weight"].float(), b["visual.conv1.weight"].float(), atol=1e-4)
    card = (tmp_path / "b" / "MODEL_CARD.md").read_text()
    assert "fine-tuned from" in card and "Earlier training" in card and f"--init-from {tmp_path / 'a'}" in card
    with pytest.raises(ValueError, match="init-from"):
        train_clip(steps=1, out=tmp_path / "c", run_dir=tmp_path / "run-c", init_from=tmp_path / "missing", **kw)
    with pytest.raises(ValueError, match="no-resume"):  # a saved run that began elsewhere is not silently resumed
        train_clip(steps=2, out=tmp_path / "b", run_dir=tmp_path / "run-a", init_from=tmp_path / "b", **kw)
