"""What every `mmkb train` command shares: where a run writes, what it runs on, and when saved state is
resumed.

A run writes its export to `MMKB_HOME/models/<name>` and its resumable state to `MMKB_HOME/runs/<name>`
unless `--out` / `--run-dir` say otherwise, so trying a training command never replaces a shipped
checkpoint: only an explicit `--out` naming the shipped folder does (the model cards' commands do)."""
from __future__ import annotations

import sys
from pathlib import Path

from index.config import get_settings


def training_paths(name: str, out: str | Path | None = None, run_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(export folder, run folder) of the run called `name`."""
    home = get_settings().home_dir
    return (Path(out).expanduser() if out else home / "models" / name,
            Path(run_dir).expanduser() if run_dir else home / "runs" / name)


def training_device(device: str):
    """The torch device `--device` names, refused with one sentence when it is not one or is not here."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device: give cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no GPU on this machine; train on the CPU with --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: mmkb trains on cpu or cuda")
    return dev


def other_run(state: Path, differ: list[str] | str) -> ValueError:
    """The error for saved state made by another configuration: it is neither resumed nor overwritten."""
    what = differ if isinstance(differ, str) else f"another {', '.join(differ)}"
    return ValueError(f"{state} holds a run made with {what}; it is kept: pass --no-resume to start over in "
                      f"that folder, or --run-dir FOLDER for a new run beside it")


def say_spent(state: Path, done: str, raise_with: str) -> None:
    """Tell the user a resumed run had nothing left to train (it is exported as it is)."""
    print(f"{state}: the resumed run already did {done}, so nothing more is trained and it is exported as it is; "
          f"{raise_with} to train on, or --no-resume to start over", file=sys.stderr)

