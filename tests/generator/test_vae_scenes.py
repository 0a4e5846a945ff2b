import numpy as np
import torch

from generator.identify import PixelIdentifier, background_colour, crop, is_clean, nearest_colour, placed_slot
from generator.metrics import psnr, ssim
from generator.scenes import COLOURS, TASKS, SceneSampler, is_held_out, load_assets
from generator.vae import VAE, VAE_PRESETS


def test_vae_compresses_8x_to_16_channels():
    vae = VAE(VAE_PRESETS["f8c16"]).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (2, 16, 8, 8)
        assert vae.decode(z).shape == x.shape
        assert vae.encode(x[:, :, :32, :32]).shape == (2, 16, 4, 4)  # a 32x32 reference is 4x4 tokens


def test_psnr_ssim_are_max_for_identical_images():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert psnr(x, x) > 90 and abs(ssim(x, x) - 1) < 1e-4
    assert psnr(x, -x) < 10 and ssim(x, -x) < 0.5


def test_held_out_split_is_deterministic_disjoint_and_about_ten_percent():
    keys = sorted({a.key for a in load_assets()})
    held = [k for k in keys if is_held_out(k)]
    assert held == [k for k in keys if is_held_out(k)]
    assert 0.06 < len(held) / len(keys) < 0.14
    train, test = SceneSampler(seed=0), SceneSampler(held_out=True, seed=0)
    assert not {a.key for a in train.assets} & {a.key for a in test.assets}
    for _ in range(50):
        s = train.sample()
        assert not any(is_held_out(a.key) for a, _ in s.objects)
        assert not any(is_held_out(k) for k in s.ref_keys)


def test_every_task_renders_and_edits_change_only_what_was_asked():
    s = SceneSampler(seed=4)
    for task in TASKS:
        scene = s.sample(task)
        assert scene.target().size == (64, 64)
        if task.startswith("compose"):
            assert len(scene.refs) == len(scene.objects) == int(task[-1])
    e = s.sample("edit_colour")
    src, tgt = np.asarray(e.refs[0]).astype(int), np.asarray(e.target()).astype(int)
    slot = e.objects[0][1]
    old = background_colour(src, [slot])
    changed = np.abs(src - tgt).sum(-1) > 0
    was_background = np.abs(src - old).sum(-1) < 30
    assert changed.any() and (changed & ~was_background).mean() < 0.08  # only anti-aliased object edges change
    assert e.colour in e.caption and nearest_colour(background_colour(tgt, [slot])) == e.colour
    m = s.sample("edit_move")
    assert m.objects[0][1].split(" ", 1)[1] in m.caption
    assert nearest_colour(background_colour(np.asarray(m.refs[0]), [m.objects[0][1]])) == m.colour


def test_scene_checks_and_pixel_identifier_on_ground_truth():
    ident = PixelIdentifier()
    s = SceneSampler(held_out=True, seed=9)
    for _ in range(5):
        scene = s.sample("ref")
        (asset, slot), img = scene.objects[0], np.asarray(scene.target())
        bg = background_colour(img, [slot])
        assert ident(crop(img, slot), bg) == asset.key
        assert placed_slot(img, bg) == slot
        assert is_clean(img, [slot])
    noisy = np.clip(img.astype(int) + np.random.default_rng(0).integers(-60, 60, img.shape), 0, 255).astype(np.uint8)
    assert not is_clean(noisy, [slot])
    assert set(COLOURS) >= {"red", "blue", "green"}
