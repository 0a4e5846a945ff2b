"""Checkpoints: fp16 safetensors + config.json + MODEL_CARD.md; a run's full training state in its run
folder's last.pt (index.training: MMKB_HOME/runs/<name> unless --run-dir says otherwise)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from index.files import replace_dir

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
RUNS = Path(__file__).resolve().parents[1] / "runs"  # the benchmarks' caches


def checkpoint_ref(path: str | Path) -> str:
    """How a checkpoint config names another checkpoint: a shipped one by name, any other by its full path."""
    path = Path(path)
    return path.name if path.resolve() == (CHECKPOINTS / path.name).resolve() else str(path.resolve())


def save_weights(model: torch.nn.Module, config: dict, out: Path, card: str | None = None) -> Path:
    """Write model.safetensors (fp16), config.json and optionally MODEL_CARD.md into `out`: into a folder
    beside it that then takes its place, so an interrupted save leaves the old checkpoint whole."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if card is not None:
        (tmp / "MODEL_CARD.md").write_text(card)
    return replace_dir(tmp, out)


def load_weights(path: Path) -> tuple[dict, dict]:
    """(config, fp32 state dict) from a checkpoint folder."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no generator checkpoint at {path} (model.safetensors missing)")
    config = json.loads((path / "config.json").read_text())
    state = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
    return config, state


def save_state(state: dict, path: Path) -> None:
    """Atomic write of a full training state (model, optimiser, step, RNG, elapsed time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def optimizer_step(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor) -> None:
    """Backward, clip the gradient norm at 1 and step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


class Progress:
    """Running loss on a tqdm bar, and the full training state saved every few minutes and at the end."""

    def __init__(self, bar, path: Path, state, every_s: float = 180.0) -> None:
        import time

        self.bar, self.path, self.state, self.every_s = bar, path, state, every_s
        self.losses: list[float] = []
        self._clock = time.time
        self._last_save = self._clock()

    def update(self, loss: float, elapsed: float) -> None:
        self.losses.append(loss)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.mean_loss():.4f}", min=f"{elapsed / 60:.1f}", refresh=False)
        if self._clock() - self._last_save > self.every_s:
            save_state(self.state(), self.path)
            self._last_save = self._clock()

    def mean_loss(self, last: int = 50) -> float:
        return sum(self.losses[-last:]) / len(self.losses[-last:]) if self.losses else float("nan")

    def close(self) -> None:
        self.bar.close()
        save_state(self.state(), self.path)
