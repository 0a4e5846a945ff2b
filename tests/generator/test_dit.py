import math
import shutil

import pytest
import torch

from generator.dit import DIT_PRESETS, FLOW_LEVEL, DiT, DiTConfig, euler_sample, guided_velocity, rope_angles
from tests.conftest import perturb


def tiny(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return perturb(DiT(DIT_PRESETS["tiny"]), seed=seed).eval()


def inputs(b=2, t_len=5, refs=((4, 4),), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, 8, 8, generator=g)
    text = torch.randn(b, t_len, 384, generator=g)
    mask = torch.ones(b, t_len, dtype=torch.bool)
    r = [torch.randn(b, 16, h, w, generator=g) for h, w in refs]
    return x, torch.rand(b, generator=g), text, mask, r


@pytest.mark.parametrize("refs", [(), ((4, 4),), ((8, 8), (4, 4)), ((4, 4), (4, 4), (4, 4))])
def test_output_shape_matches_target_for_any_references(refs):
    x, t, text, mask, r = inputs(refs=refs)
    assert tiny()(x, t, text, mask, r).shape == x.shape


def test_patch_two_shapes():
    cfg = DiTConfig(width=64, depth=1, heads=2, patch=2)
    x, t, text, mask, r = inputs(refs=((4, 4),))
    assert DiT(cfg)(x, t, text, mask, r).shape == x.shape


def test_rope_index_offsets_distinguish_references():
    # same grid positions, different image index → different rotations
    a = rope_angles(torch.tensor([[2, 1, 1]]), (8, 12, 12), 100.0)
    b = rope_angles(torch.tensor([[3, 1, 1]]), (8, 12, 12), 100.0)
    assert not torch.allclose(a, b)
    assert torch.allclose(a[:, 4:], b[:, 4:])  # row/col bands identical
    # so the model is not invariant to the order of two different references
    x, t, text, mask, r = inputs(refs=((4, 4), (4, 4)))
    m = tiny()
    with torch.no_grad():
        ab, ba = m(x, t, text, mask, r), m(x, t, text, mask, r[::-1])
    assert (ab - ba).abs().max() > 1e-4


def test_without_index_axis_order_of_references_would_not_matter():
    # control for the test above: zero index angles (theta→ index band frequency 0 via positions equal)
    m = tiny()
    x, t, text, mask, r = inputs(refs=((4, 4), (4, 4)))
    same = [r[0], r[0]]
    with torch.no_grad():
        a, b = m(x, t, text, mask, same), m(x, t, text, mask, same[::-1])
    assert torch.allclose(a, b)


def test_adaln_zero_blocks_start_as_identity():
    m = DiT(DIT_PRESETS["tiny"])
    seq, c = torch.randn(2, 10, 64), torch.randn(2, 64)
    angles = rope_angles(torch.zeros(10, 3, dtype=torch.long), m.cfg.rope_axes, m.cfg.rope_theta)
    for blk in m.blocks:
        assert torch.equal(blk(seq, c, angles, None), seq)
    x, t, text, mask, r = inputs()
    assert torch.equal(m(x, t, text, mask, r), torch.zeros_like(x))


def test_dropped_text_and_references_are_ignored():
    m = tiny()
    x, t, text, mask, r = inputs()
    off = torch.zeros_like(mask)
    with torch.no_grad():
        a = m(x, t, text, off, r, torch.zeros(2, 1, dtype=torch.bool))
        b = m(x, t, torch.randn_like(text), off, [torch.randn_like(r[0])], torch.zeros(2, 1, dtype=torch.bool))
        c = m(x, t, text, off, [], None)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


def test_cfg_uses_separate_text_and_reference_scales():
    m = tiny()
    x, t, text, mask, r = inputs()
    no_t, on, off = torch.zeros_like(mask), torch.ones(2, 1, dtype=torch.bool), torch.zeros(2, 1, dtype=torch.bool)
    with torch.no_grad():
        full, ref_only, uncond = m(x, t, text, mask, r, on), m(x, t, text, no_t, r, on), m(x, t, text, no_t, r, off)
        got = guided_velocity(m, x, t, text, mask, r, text_scale=2.5, ref_scale=1.7)
        only_ref = guided_velocity(m, x, t, text, mask, r, text_scale=1.0, ref_scale=3.0)
        plain = guided_velocity(m, x, t, text, mask, r, 1.0, 1.0)
    assert torch.allclose(got, uncond + 1.7 * (ref_only - uncond) + 2.5 * (full - ref_only), atol=1e-5)
    assert torch.allclose(only_ref, uncond + 3.0 * (ref_only - uncond) + (full - ref_only), atol=1e-5)
    assert torch.allclose(plain, full, atol=1e-6)
    assert not torch.allclose(got, only_ref, atol=1e-3)


def test_euler_sampler_is_deterministic_per_noise_and_checks_shortcut_steps():
    m = tiny()
    _, _, text, mask, r = inputs()
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    a = euler_sample(m, noise, text, mask, r, steps=3, text_scale=2.0, ref_scale=1.5)
    b = euler_sample(m, noise.clone(), text, mask, r, steps=3, text_scale=2.0, ref_scale=1.5)
    assert torch.equal(a, b)
    assert euler_sample(m, noise, text, mask, r, steps=4, shortcut=True).shape == noise.shape
    with pytest.raises(ValueError, match="1, 2, 4"):
        euler_sample(m, noise, text, mask, r, steps=3, shortcut=True)
    with pytest.raises(ValueError):
        euler_sample(m, noise, text, mask, r, steps=2 ** FLOW_LEVEL, shortcut=True)


def test_flow_matching_loss_drops_on_a_tiny_overfit():
    from generator.train_dit import Batch, flow_loss

    torch.manual_seed(0)
    m = DiT(DIT_PRESETS["tiny"])
    x, _, text, mask, r = inputs(b=8)
    batch = Batch(x * 0.5 + 0.3, text, mask, r, [])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def avg_loss() -> float:
        with torch.no_grad():
            gg = torch.Generator().manual_seed(123)
            return sum(flow_loss(m, batch, gg).item() for _ in range(8)) / 8

    before = avg_loss()
    for _ in range(80):
        loss = flow_loss(m, batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = avg_loss()
    assert after < 0.7 * before, (before, after)
    assert math.isfinite(after)


def test_scene_stream_workers_give_one_task_per_batch_and_train(tiny_checkpoints, tmp_path):
    """The GPU path's data loading (scenes rendered in worker processes) also runs on the CPU."""
    import random

    from generator.scenes import SceneSampler
    from generator.text import TextEncoder
    from generator.train_dit import batches, flow_loss, load_vae

    _, vae_dir = tiny_checkpoints
    stream = batches(SceneSampler(seed=0), random.Random(0), load_vae(vae_dir), TextEncoder(), 4, workers=1, seed=3)
    vae = load_vae(vae_dir)
    model = DiT(DiTConfig(**{**DIT_PRESETS["tiny"].to_dict(), "latent_channels": vae.cfg.latent_channels}))
    for _ in range(3):
        b = next(stream)
        assert b.x.shape[0] == 4 and all(r.shape[0] == 4 for r in b.refs)
        assert torch.isfinite(flow_loss(model, b))


def test_fine_tuning_starts_from_the_given_checkpoint(tmp_path, tiny_checkpoints, home):
    from generator.checkpoint import load_weights
    from generator.pipeline import resolve
    from generator.train_dit import train_dit

    dit_dir, _ = tiny_checkpoints
    with pytest.raises(ValueError, match="not of preset .medium."):
        train_dit(preset="medium", minutes=0.01, batch=2, init_from=dit_dir, name="ft", out=tmp_path / "x",
                  resume=False)
    if not (resolve("dit-medium") / "model.safetensors").is_file():
        pytest.skip("no shipped dit-medium")
    out = train_dit(preset="medium", minutes=0.02, batch=2, lr=1e-9, init_from="dit-medium", name="dit-ft-test",
                    out=tmp_path / "ft", resume=False)
    _, before = load_weights(resolve("dit-medium"))
    _, after = load_weights(out)
    assert all(torch.allclose(before[k], after[k], atol=1e-3) for k in before)
    card = (out / "MODEL_CARD.md").read_text()
    assert f"--init-from dit-medium --name dit-ft-test --out {tmp_path / 'ft'}`" in card
    start_cfg, _ = load_weights(resolve("dit-medium"))
    cfg, _ = load_weights(out)
    start_samples = start_cfg.get("samples_total", start_cfg["samples"])
    assert cfg["samples_total"] == start_samples + cfg["samples"]  # the lineage's samples add up
    title = (resolve("dit-medium") / "MODEL_CARD.md").read_text().splitlines()[0]
    assert "## Earlier training" in card and f"\n##{title}\n" in card  # the warm start's own card, nested below it

    # A warm start whose output is its own starting folder, resumed: the lineage is counted once.
    start = tmp_path / "start"
    shutil.copytree(resolve("dit-medium"), start)
    first = train_dit(preset="medium", minutes=0.01, batch=2, lr=1e-9, init_from=start, name="dit-self", out=start,
                      resume=False)
    again = train_dit(preset="medium", minutes=0.03, batch=2, lr=1e-9, init_from=start, name="dit-self", out=start)
    cfg, _ = load_weights(again)
    assert first == again and cfg["samples_total"] == start_samples + cfg["samples"]
    assert (start / "MODEL_CARD.md").read_text().count("## Earlier training") == card.count("## Earlier training")
