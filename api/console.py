"""What every `mmkb` command shares: the console for messages (stderr) and the one way to fail."""
from __future__ import annotations

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> None:
    """Say what was wrong and what to do, and exit with status 2."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)
