import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from api.generate_cli import app
from generator.checkpoint import load_weights, save_weights
from generator.pipeline import GenerationPipeline, load_dit

FLAG = "index/worldkb/data/images/flags/FRA.png"


@pytest.fixture(scope="module")
def pipe(tiny_checkpoints):
    return GenerationPipeline.from_pretrained(tiny_checkpoints[0])


def test_same_seed_same_images_other_seed_other_images(pipe):
    a = pipe("the flag on a blue background", refs=[FLAG], n=2, steps=2, seed=5)
    b = pipe("the flag on a blue background", refs=[FLAG], n=1, steps=2, seed=6)
    c = pipe("the flag on a blue background", refs=[FLAG], n=1, steps=2, seed=5)
    assert len(a.images) == 2 and a.images[0].size == (64, 64)
    d = pipe("the flag on a blue background", refs=[FLAG], n=1, steps=2, seed=5)
    px = lambda im: np.asarray(im).astype(int)  # noqa: E731
    assert np.array_equal(px(c.images[0]), px(d.images[0]))  # same call, same seed: identical
    # output i uses seed + i whatever n is (batched BLAS may round differently: allow 2/255)
    assert np.abs(px(a.images[0]) - px(c.images[0])).max() <= 2
    assert np.abs(px(a.images[1]) - px(b.images[0])).max() <= 2
    assert np.abs(px(a.images[0]) - px(b.images[0])).max() > 10
    assert a.provenance["seeds"] == [5, 6] and a.provenance["references"][0]["path"] == FLAG


def test_bad_input_gives_clear_errors(pipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="reference image not found"):
        pipe("x", refs=[tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="n must be at least 1"):
        pipe("x", n=0)
    with pytest.raises(ValueError, match="at most 3"):
        pipe("x", refs=[FLAG] * 4)
    with pytest.raises(ValueError, match="steps"):
        pipe("x", steps=0)


def test_checkpoint_round_trip(tiny_checkpoints, tmp_path):
    model, cfg = load_dit(tiny_checkpoints[0])
    save_weights(model, cfg, tmp_path / "again")
    again, cfg2 = load_dit(tmp_path / "again")
    assert cfg2 == cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    _, state = load_weights(tiny_checkpoints[0])
    assert all(v.dtype == torch.float32 for v in state.values())
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "nothing-here")


def test_cli_generate_writes_pngs_and_sidecars(tiny_checkpoints, tmp_path):
    out = tmp_path / "gen"
    r = CliRunner().invoke(app, ["generate", "--prompt", "the flag on a blue background", "--ref", FLAG, "--n", "2",
                                 "--steps", "2", "--seed", "3", "--out", str(out), "--model", str(tiny_checkpoints[0])])
    assert r.exit_code == 0, r.output
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["sample-3.png", "sample-4.png"]
    side = json.loads(pngs[0].with_suffix(".json").read_text())
    assert side["prompt"] == "the flag on a blue background" and side["seed"] == 3 and side["steps"] == 2
    assert side["references"][0]["path"] == FLAG and side["timings_ms"]["total"] > 0


def test_cli_edit_and_errors(tiny_checkpoints, tmp_path):
    out = tmp_path / "edit"
    r = CliRunner().invoke(app, ["edit", "--image", FLAG, "--instruction", "change the background to green",
                                 "--steps", "1", "--out", str(out), "--model", str(tiny_checkpoints[0])])
    assert r.exit_code == 0, r.output
    side = json.loads((out / "edit-0.json").read_text())
    assert side["references"][0]["role"] == "edit source"
    r = CliRunner().invoke(app, ["generate", "--prompt", "x", "--ref", str(tmp_path / "nope.png"), "--out", str(out)])
    assert r.exit_code == 2 and "not found" in r.output
    r = CliRunner().invoke(app, ["generate", "--prompt", "x", "--n", "0", "--out", str(out),
                                 "--model", str(tiny_checkpoints[0])])
    assert r.exit_code == 2 and "at least 1" in r.output


def test_embedder_judge_caches_reference_embeddings_per_weights(tmp_path, monkeypatch):
    """A retrained embedder must not reuse the reference embeddings another set of weights made."""
    import numpy as np

    import index.embedders
    from generator.identify import EmbedderIdentifier
    from generator.scenes import Asset

    class Fake:
        trained = True

        def __init__(self, fingerprint: str, value: float) -> None:
            self.fingerprint, self.value = fingerprint, value

        def encode_images(self, images):
            return np.full((len(images), 4), self.value, dtype=np.float32)

    assets = (Asset("country:BTN", "country", "Bhutan", "flag", "BTN.png"),)
    for fingerprint, value in [("clip@aaaa", 1.0), ("clip@bbbb", 2.0), ("clip@aaaa", 3.0)]:
        monkeypatch.setattr(index.embedders, "load_image_embedder", lambda fp=fingerprint, v=value: Fake(fp, v))
        judge = EmbedderIdentifier(assets, cache=tmp_path / "bank.npy")
        assert judge.fingerprint == fingerprint
    assert judge.bank[0, 0] == 1.0  # the first weights' file, reused for the same weights only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank-clip@aaaa.npy", "bank-clip@bbbb.npy"]
