"""Filesystem helpers shared by everything that writes a folder users rely on."""
from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from PIL import Image


def json_line(line: str) -> Any:
    """One JSON Lines record, or a ValueError saying what is wrong and where in the line (columns count
    from 1; a line cut short is reported at its end, not at the start of the next)."""
    text = line.rstrip("\r\n")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at column {err.pos + 1})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_dir(tmp: Path, out: Path) -> Path:
    """Put the finished folder `tmp` in place of `out`: the old `out` steps aside first and is
    removed only after the new one is in place, so an interruption never leaves `out` half written.
    Its files get the permissions the umask gives new files (safetensors writes its own owner-only,
    which would keep a model from a service running as another user)."""
    tmp, out = Path(tmp), Path(out)
    shared = 0o666 & ~_umask()
    for file in tmp.rglob("*"):
        if file.is_file() and not file.is_symlink():
            file.chmod(shared)
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.replace(old)
    tmp.replace(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file beside it, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def png_data_url(img: Image.Image) -> str:
    """An image as a `data:image/png;base64,…` URL, for JSON replies and self-contained HTML pages."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def thumbnail_url(path: Path, size: int = 72) -> str:
    """A small PNG data URL of an image file for a self-contained page ("" when it cannot be read)."""
    from index.embedders import open_rgb

    try:
        img = open_rgb(path)
    except (OSError, ValueError):
        return ""
    img.thumbnail((size, size))
    return png_data_url(img)


PAGE_STYLE = ("<style>body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}"
              "td,th{border-bottom:1px solid #ddd;padding:.4em .6em;vertical-align:top;text-align:left}"
              ".tag{display:inline-block;margin:.1em;padding:.1em .4em;border-radius:.6em;background:#e8f0fe}"
              ".known{background:#eee;color:#666}.p{color:#666;font-size:.85em}img{margin-right:2px}"
              ".right{color:#137333}.wrong{color:#a50e0e}img.right{outline:3px solid #137333}"
              "tr.hit{background:#e6f4ea}img{vertical-align:middle}</style>")


def html_page(title: str, intro: str, body: str) -> str:
    """A self-contained page (mmkb's curation and evaluation pages): `intro` and `body` are HTML."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{PAGE_STYLE}"
            f"</head><body><h1>{html.escape(title)}</h1><p>{intro}</p>{body}</body></html>\n")
