"""What every training command shares: where runs write, which device, and when saved state is resumed;
and how an image embedder setting names a model, its weights file or an exported folder."""
from __future__ import annotations

import json

import pytest
import torch


def test_runs_write_under_the_data_home_unless_told(home, tmp_path, monkeypatch):
    from index.training import training_paths

    assert training_paths("dit-medium") == (home / "models" / "dit-medium", home / "runs" / "dit-medium")
    assert training_paths("x", tmp_path / "o", tmp_path / "r") == (tmp_path / "o", tmp_path / "r")
    # --out alone: a run folder of that export's own, the same however the path is spelled
    monkeypatch.chdir(tmp_path)
    one, run_one = training_paths("x", "o")
    assert one == tmp_path / "o" and run_one.parent == home / "runs" and run_one.name.startswith("x@")
    assert training_paths("x", tmp_path / "o")[1] == run_one and training_paths("x", tmp_path / "p")[1] != run_one


def test_an_export_never_replaces_a_folder_of_other_files(home, tmp_path):
    from index.training import training_paths

    (tmp_path / "desktop").mkdir()
    (tmp_path / "desktop" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds other files"):
        training_paths("x", tmp_path / "desktop")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        training_paths("x", tmp_path / "file")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "config.json").write_text("{}")
    assert training_paths("x", tmp_path / "earlier")[0] == tmp_path / "earlier"  # an earlier export is replaced


def test_a_device_that_is_not_here_is_one_sentence():
    from index.training import training_device

    assert training_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="not a device"):
        training_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no GPU.*--device cpu"):
            training_device("cuda")


def test_clip_refuses_another_runs_state_and_says_when_nothing_is_left(tmp_path, tiny_config, capsys, monkeypatch):
    from index.clip.train import train_clip

    kw = dict(minutes=5, config=tiny_config, out=tmp_path / "ckpt", run_dir=tmp_path / "run", batch_size=8,
              workers=0, progress=False)
    train_clip(steps=2, max_entities=8, **kw)
    with pytest.raises(ValueError, match="other training entities.*kept: pass --no-resume"):
        train_clip(steps=3, max_entities=6, **kw)  # another set of classes: neither resumed nor overwritten
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == 2
    capsys.readouterr()
    train_clip(steps=2, max_entities=8, **kw)
    assert "nothing more is trained" in capsys.readouterr().err
    # a warm start is the same start however its path is spelled
    warm = dict(kw, run_dir=tmp_path / "run-warm", out=tmp_path / "warm")
    train_clip(steps=1, max_entities=8, init_from=tmp_path / "ckpt", **warm)
    monkeypatch.chdir(tmp_path)
    train_clip(steps=2, max_entities=8, init_from="ckpt", **warm)
    assert torch.load(tmp_path / "run-warm" / "last.pt", weights_only=False)["step"] == 2
    with pytest.raises(ValueError, match="unknown --config 'no-such-clip'"):
        train_clip(steps=1, config="no-such-clip", out=tmp_path / "x", run_dir=tmp_path / "y", progress=False)


def test_generator_trainers_check_their_settings_first(tmp_path):
    from generator.distill import distill
    from generator.train_dit import train_dit
    from generator.train_vae import train_vae

    with pytest.raises(ValueError, match="unknown --preset 'huge'"):
        train_dit(preset="huge", out=tmp_path / "o", run_dir=tmp_path / "r")
    with pytest.raises(ValueError, match="--minutes must be above 0"):
        train_vae(minutes=0, out=tmp_path / "o", run_dir=tmp_path / "r")
    with pytest.raises(ValueError, match="no DiT checkpoint there"):
        distill(teacher=str(tmp_path / "nothing"), out=tmp_path / "o", run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_an_embedder_setting_names_a_model_a_file_or_an_exported_folder(tmp_path):
    from index.clip import EmbedderSpecError, embedder_spec

    export = tmp_path / "export"
    export.mkdir()
    (export / "open_clip_model.safetensors").write_bytes(b"x")
    (export / "config.json").write_text(json.dumps({"train_cfg": {"config": "mmkb-clip-tiny-64"}}))
    weights = str(export / "open_clip_model.safetensors")
    assert embedder_spec("mmkb-clip-tiny-64") == ("mmkb-clip-tiny-64", None)
    assert embedder_spec("ViT-B-32:laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert embedder_spec(f"mmkb-clip-tiny-64:{weights}") == ("mmkb-clip-tiny-64", weights)
    assert embedder_spec(f"mmkb-clip-tiny-64:{export}") == ("mmkb-clip-tiny-64", weights)  # `train clip --out`
    assert embedder_spec(str(export)) == ("mmkb-clip-tiny-64", weights)  # the folder alone: its config names it
    with pytest.raises(EmbedderSpecError, match="no such weights file or folder"):
        embedder_spec(f"mmkb-clip-tiny-64:{tmp_path / 'gone.safetensors'}")
    with pytest.raises(EmbedderSpecError, match="no such folder"):
        embedder_spec(str(tmp_path / "gone"))
    with pytest.raises(EmbedderSpecError, match="is a weights file: give MODEL:"):
        embedder_spec(weights)
    assert embedder_spec("hf-hub:org/model") == ("hf-hub:org/model", None)  # open_clip's own schema
    (export / "config.json").unlink()
    with pytest.raises(EmbedderSpecError, match="without the config.json .* give MODEL:"):
        embedder_spec(str(export))


def test_a_model_name_is_a_name_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    from index.clip import canonical_spec, embedder_spec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mmkb-clip-tiny-64").mkdir()
    assert embedder_spec("mmkb-clip-tiny-64") == ("mmkb-clip-tiny-64", None)
    assert canonical_spec("mmkb-clip-tiny-64") == "mmkb-clip-tiny-64"


def test_one_export_spelled_three_ways_is_one_embedder(tmp_path, monkeypatch):
    from index.clip import canonical_spec

    export = tmp_path / "export"
    export.mkdir()
    (export / "open_clip_model.safetensors").write_bytes(b"x")
    (export / "config.json").write_text(json.dumps({"train_cfg": {"config": "mmkb-clip-tiny-64"}}))
    monkeypatch.chdir(tmp_path)
    spellings = {canonical_spec(s) for s in (str(export), "mmkb-clip-tiny-64:export",
                                             "mmkb-clip-tiny-64:./export/open_clip_model.safetensors")}
    assert spellings == {f"mmkb-clip-tiny-64:{export / 'open_clip_model.safetensors'}"}


def test_a_bad_embedder_setting_is_one_line_before_any_command(home, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from api.cli import app, main
    from index.config import get_settings

    monkeypatch.setenv("MMKB_IMAGE_EMBEDDER", f"mmkb-clip-tiny-64:{tmp_path / 'gone.safetensors'}")
    get_settings.cache_clear()
    monkeypatch.setattr("sys.argv", ["mmkb", "index", "stats"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    monkeypatch.setenv("MMKB_IMAGE_EMBEDDER", "no-such-model")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["train", "tagger", "--epochs", "1"])
    assert result.exit_code == 2 and "unknown open_clip model 'no-such-model'" in result.output


def test_exported_weights_are_readable_by_others_as_the_umask_allows(tmp_path):
    import os
    import stat

    from generator.checkpoint import save_weights

    mask = os.umask(0o022)
    try:
        out = save_weights(torch.nn.Linear(2, 2), {"kind": "test"}, tmp_path / "model", "# card")
    finally:
        os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644, "MODEL_CARD.md": 0o644}
    assert not (tmp_path / "model.tmp").exists()


def test_clip_numbers_are_checked_before_training(tmp_path, tiny_config):
    from index.clip.train import train_clip

    kw = dict(config=tiny_config, out=tmp_path / "o", run_dir=tmp_path / "r", progress=False)
    for bad in (dict(steps=0), dict(minutes=0, steps=2), dict(steps=2, drawn_fraction=2.0),
                dict(steps=2, workers=-1), dict(steps=2, lr=-1.0)):
        with pytest.raises(ValueError, match="must be"):
            train_clip(**{**kw, **bad})
    assert not (tmp_path / "r").exists()


def test_a_dit_warm_start_that_is_not_there_is_one_sentence(tmp_path):
    from generator.train_dit import train_dit

    with pytest.raises(ValueError, match="--init-from .*nope: no DiT checkpoint there"):
        train_dit(preset="tiny", minutes=0.01, init_from=str(tmp_path / "nope"), out=tmp_path / "o",
                  run_dir=tmp_path / "r")


def test_a_text_embedder_setting_written_as_a_path_is_checked_up_front(tmp_path):
    from index.config import text_embedder_problem

    assert text_embedder_problem("all-MiniLM-L6-v2") is None
    assert text_embedder_problem("sentence-transformers/all-MiniLM-L6-v2") is None  # a name, not a path
    assert "no such folder" in text_embedder_problem(str(tmp_path / "gone"))
    (tmp_path / "f.txt").write_text("x")
    assert "is a file" in text_embedder_problem(str(tmp_path / "f.txt"))
    assert "not a sentence-transformers model folder" in text_embedder_problem(str(tmp_path))
