"""Filesystem helpers shared by everything that writes a folder users rely on."""
from __future__ import annotations

import shutil
from pathlib import Path


def replace_dir(tmp: Path, out: Path) -> Path:
    """Put the finished folder `tmp` in place of `out`: the old `out` steps aside first and is
    removed only after the new one is in place, so an interruption never leaves `out` half written."""
    tmp, out = Path(tmp), Path(out)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.replace(old)
    tmp.replace(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
