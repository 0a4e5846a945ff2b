"""What every `mmkb train` command shares: where a run writes, what it runs on, and when saved state is
resumed.

A run exports to `MMKB_HOME/models/<name>` and keeps its resumable state in `MMKB_HOME/runs/<name>`
unless `--out` / `--run-dir` say otherwise, so trying a training command never replaces a shipped
checkpoint: only an explicit `--out` naming the shipped folder does. A run given only `--out` keeps its
state in a run folder of its own (`MMKB_HOME/runs/<name>@<digest of the export path>`), so two exports
never share one run's state."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from index.config import get_settings

# What an export folder holds (one of them): a folder with other files is not replaced by an export.
EXPORT_FILES = ("config.json", "MODEL_CARD.md", "model.safetensors", "open_clip_model.safetensors")


def training_paths(name: str, out: str | Path | None = None, run_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(export folder, run folder) of the run called `name`; an `out` that holds files other than an
    earlier export is refused (an export replaces its whole folder)."""
    runs = get_settings().home_dir / "runs"
    if out is None:
        export = get_settings().home_dir / "models" / name
        return export, Path(run_dir).expanduser() if run_dir else runs / name
    export = Path(out).expanduser().resolve()
    if export.exists() and not export.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder for the checkpoint (it is made if missing)")
    if export.is_dir() and any(export.iterdir()) and not any((export / f).is_file() for f in EXPORT_FILES):
        raise ValueError(f"--out {out} holds other files, and an export replaces its whole folder: give a new "
                         f"folder, or one an earlier export wrote")
    if run_dir:
        return export, Path(run_dir).expanduser()
    return export, runs / f"{name}@{hashlib.sha256(str(export).encode()).hexdigest()[:8]}"


def same_path(a: str | Path | None, b: str | Path | None) -> bool:
    """Whether two spellings of a path (relative, absolute, with `~`) name one file; None only matches None."""
    if a is None or b is None:
        return a is None and b is None
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


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


def check_budget(minutes: float, batch: int) -> None:
    """A training time and batch size that can train something, or a ValueError saying what they must be."""
    if minutes <= 0 or batch < 1:
        raise ValueError(f"--minutes must be above 0 and --batch at least 1 (got {minutes}, {batch})")


def say_if_spent(state: Path, elapsed_s: float, minutes: float) -> None:
    """`say_spent` for a run timed by `--minutes`, when its saved time has used them up."""
    if elapsed_s >= minutes * 60:
        say_spent(state, f"{elapsed_s / 60:.2f} minutes of training, its --minutes being {minutes:g}")


def say_spent(state: Path, done: str, more: str = "give a larger --minutes to train on") -> None:
    """Tell the user a resumed run had nothing left to train (it is exported as it is)."""
    print(f"{state}: the resumed run already did {done}, so nothing more is trained and it is exported as it is; "
          f"{more}, or --no-resume to start over", file=sys.stderr)


def say_run(out: Path, run: Path) -> None:
    """Where a run exports and keeps its state, said as it starts."""
    print(f"training state in {run}; the export goes to {out}", file=sys.stderr)
