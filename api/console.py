"""What every `mmkb` command shares: the consoles for results (stdout) and messages (stderr), the one
way to fail, and the check of an image file a command is given. Neither console turns `:name:` into
emoji: user data (an entity key such as `thing:B`, followed by a colon) would otherwise print as 🅱."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, soft_wrap=True, emoji=False)


def stdout() -> Console:
    """A console for results on stdout, made when printing so it takes the terminal's width then. Piped
    or redirected, lines are not wrapped and tables get 200 columns (`COLUMNS` sets another width), so
    a file or `grep` sees whole sentences and paths."""
    if sys.stdout.isatty():
        return Console(emoji=False)
    return Console(emoji=False, soft_wrap=True, width=None if os.environ.get("COLUMNS") else 200)


def fail(message: str) -> None:
    """Say what was wrong and what to do, and exit with status 2."""
    console.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


def readable_image(path: Path) -> Path:
    """`path` when it is an image Pillow decodes whole; otherwise fail saying what is wrong with it."""
    from index.ingest import image_problem

    if why := image_problem(path):
        fail(why)
    return path


# `--out` and `--run-dir` of every `mmkb train` command (index.training: defaults under MMKB_HOME).
OutOption = Annotated[Optional[Path], typer.Option(
    show_default=False, help="export folder (default: MMKB_HOME/models/NAME; a shipped model is replaced only when "
                             "this names its folder)")]
RunDirOption = Annotated[Optional[Path], typer.Option(
    show_default=False, help="where the resumable training state is kept (default: MMKB_HOME/runs/NAME)")]


def training(train, *args, **kwargs) -> Path:
    """Run a trainer; a setting it refuses is one error line."""
    try:
        return train(*args, **kwargs)
    except ValueError as err:
        fail(str(err))


def written(out: Path, use: str) -> None:
    """Where a training command wrote its checkpoint and how mmkb uses it."""
    console.print(f"checkpoint written to [bold]{escape(str(out))}[/]; use it: {escape(use)}")
