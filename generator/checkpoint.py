"""Checkpoints: fp16 safetensors + config.json + MODEL_CARD.md; full training state in runs/<name>/last.pt."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
RUNS = Path(__file__).resolve().parents[1] / "runs"


def save_weights(model: torch.nn.Module, config: dict, out: Path, card: str | None = None) -> Path:
    """Write model.safetensors (fp16), config.json and optionally MODEL_CARD.md into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if card is not None:
        (out / "MODEL_CARD.md").write_text(card)
    return out


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
