import numpy as np
import pytest
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


def test_scenes_use_the_renderings_the_shipped_dit_was_trained_on():
    assert {a.style for a in load_assets()} == {"flag", "emoji-google", "emoji-twitter"}
    wider = load_assets(styles=("emoji-fluent-flat",))
    assert wider and {a.style for a in wider} == {"emoji-fluent-flat"}


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


def test_deepened_decoder_starts_as_the_same_function():
    from tests.conftest import perturb
    from generator.vae import deepen_decoder

    torch.manual_seed(0)
    vae = perturb(VAE(VAE_PRESETS["tiny"])).eval()
    deep = deepen_decoder(vae, 3).eval()
    assert deep.cfg.dec_blocks == 3 and deep.cfg.blocks == vae.cfg.blocks
    assert sum(p.numel() for p in deep.decoder.parameters()) > sum(p.numel() for p in vae.decoder.parameters())
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(deep.decode(z), vae.decode(z), atol=1e-6)
        x = torch.rand(1, 3, 64, 64)
        assert torch.equal(deep.encode(x), vae.encode(x))


def test_decoder_finetune_keeps_the_encoder_and_latent_scale(tiny_checkpoints, tmp_path, monkeypatch):
    import json

    import generator.train_vae as tv
    from generator.train_dit import load_vae

    monkeypatch.setattr(tv, "evaluate_vae", lambda vae: {"psnr_db": 1.0, "ssim": 0.1, "images": 0})
    _, vae_dir = tiny_checkpoints
    out = tv.finetune_decoder(vae_dir, minutes=0.01, batch=4, decoder_blocks=2, name="dec-ft", out=tmp_path / "dec-ft",
                              run_dir=tmp_path / "runs" / "dec-ft")
    base, tuned = load_vae(vae_dir), load_vae(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["decoder_blocks"] == 2 and cfg["decoder_finetune"]["steps"] >= 1
    assert (tuned.cfg.scale, tuned.cfg.shift) == (base.cfg.scale, base.cfg.shift)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tuned.encode(x), base.encode(x))
        assert tuned.decode(tuned.encode(x)).shape == x.shape
    assert (tmp_path / "runs" / "dec-ft" / "last.pt").is_file()
    assert "decoder fine-tuned" in (out / "MODEL_CARD.md").read_text()


def test_decoder_learns_from_latents_the_dit_generated(tiny_checkpoints, tmp_path, monkeypatch):
    import json

    import generator.train_vae as tv

    monkeypatch.setattr(tv, "evaluate_vae", lambda vae: {"psnr_db": 1.0, "ssim": 0.1, "images": 0})
    dit_dir, vae_dir = tiny_checkpoints
    pool = tv.generated_pool(str(dit_dir), n=8, batch=4, steps=2, out=tmp_path / "pool")
    assert sorted(p.name for p in pool.glob("*.npz")) == ["pool-00000.npz", "pool-00001.npz"]
    reader = tv.PoolReader(pool)
    z, x = reader.batch(3)
    assert len(reader) == 8 and z.shape == (3, 4, 8, 8) and x.shape == (3, 3, 64, 64)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    out = tv.finetune_decoder(vae_dir, minutes=0.01, batch=4, name="dec-gen", out=tmp_path / "dec-gen",
                              generated=pool, generated_fraction=0.5, run_dir=tmp_path / "runs" / "dec-gen")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["decoder_finetune"]["generated_fraction"] == 0.5
    assert "latents generated for training scenes" in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(FileNotFoundError, match="run generated_pool first"):
        tv.PoolReader(tmp_path / "empty")
