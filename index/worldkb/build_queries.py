"""Query images for entity-recognition benchmarks: other renderings than the index holds.

- flags: flag-icons (npm, MIT) 4:3 SVGs rendered with cairosvg, 96 px wide, for every
  worldkb country it has; the index holds svg-country-flags flags and flag emoji instead.
- emoji: OpenMoji (npm, CC-BY-SA-4.0) colour SVGs rendered at 64 px, for every held-out
  emoji entity (`index.clip.data.is_held_out`) that OpenMoji draws plus a fixed sample of
  trained ones; the index holds Google and Twitter renderings.

Neither source is used to train the embedder. The images are clean: benchmarks distort them.

    python -m index.worldkb.build_queries
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from PIL import Image

from index.worldkb import MANIFEST
from index.worldkb.build import NPM_PACKAGES, fetch_npm, render_svg

QUERY_DIR = Path(__file__).parent / "queries"
FLAG_ICONS = ("flag-icons", "7.5.0", "MIT")
OPENMOJI_LICENSE = "CC-BY-SA-4.0"
FLAG_WIDTH = 96
EMOJI_SIZE = 64
TRAINED_EMOJI_SAMPLE = 150



def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.mode == "RGBA" and img.getchannel("A").getextrema() == (255, 255):
        img = img.convert("RGB")
    img.save(path, optimize=True)


def _strip_fe0f(code: str) -> str:
    return "-".join(p for p in code.upper().split("-") if p != "FE0F")


def build_flag_queries(flag_icons: Path, countries: Path, keys: set[str], out: Path) -> list[dict]:
    """flag-icons 4:3 flags of the worldkb countries."""
    cca3 = {c["cca2"].lower(): c["cca3"] for c in json.loads((countries / "countries.json").read_text())}
    rows = []
    for svg in sorted((flag_icons / "flags" / "4x3").glob("*.svg")):
        key = f"country:{cca3.get(svg.stem, '')}"
        if key not in keys:
            continue  # regional flags (gb-sct, eu, un …) and codes worldkb lacks
        path = Path("flags") / f"{svg.stem}.png"
        _save(render_svg(svg, FLAG_WIDTH), out / path)
        rows.append({"path": str(path), "key": key, "source": f"{FLAG_ICONS[0]}@{FLAG_ICONS[1]}:flags/4x3/{svg.name}",
                     "license": FLAG_ICONS[2], "style": "flag-icons"})
    return rows


def build_emoji_queries(openmoji: Path, records: list[dict], out: Path) -> list[dict]:
    """OpenMoji renderings of held-out emoji and of a fixed sample of trained ones."""
    from index.clip.data import is_held_out

    svgs = {_strip_fe0f(p.stem): p for p in (openmoji / "color" / "svg").glob("*.svg")}
    emoji = [r for r in records if r["kind"] == "emoji" and _strip_fe0f(r["key"].split(":", 1)[1]) in svgs]
    held = [r for r in emoji if is_held_out(r["key"])]
    trained = sorted((r for r in emoji if not is_held_out(r["key"])),
                     key=lambda r: hashlib.sha1(r["key"].encode()).hexdigest())[:TRAINED_EMOJI_SAMPLE]
    rows = []
    for r in sorted(held + trained, key=lambda r: r["key"]):
        svg = svgs[_strip_fe0f(r["key"].split(":", 1)[1])]
        path = Path("emoji") / f"{svg.stem}.png"
        _save(render_svg(svg, EMOJI_SIZE, EMOJI_SIZE), out / path)
        rows.append({"path": str(path), "key": r["key"], "source": f"openmoji@{NPM_PACKAGES['openmoji']}:color/svg/{svg.name}",
                     "license": OPENMOJI_LICENSE, "style": "openmoji", "held_out": is_held_out(r["key"])})
    return rows


LICENSE_NOTE = """# Benchmark query images and their licenses

Built by `python -m index.worldkb.build_queries`; used only as queries in
`benchmarks/entity_recognition.py`, never in the index and never for training.

| folder | package | version | license | what |
|---|---|---|---|---|
| flags/ | flag-icons (npm) | {flag_version} | MIT, (c) 2013 Panayiotis Lipiridis | 4:3 country flags, rendered from SVG, 96 px wide |
| emoji/ | openmoji (npm) | {openmoji_version} | CC-BY-SA-4.0, OpenMoji (openmoji.org) | colour emoji, rendered from SVG, 64 px |

`manifest.jsonl` lists each image with the worldkb entity it shows (`key`), its source file
and license. Emoji marked `held_out` belong to entities the shipped embedder was not trained on.
The OpenMoji images are adaptations (rasterised, resized) and are shared under CC-BY-SA-4.0.
"""


def build_queries(out: Path = QUERY_DIR, cache: Path | None = None) -> Path:
    """Render the query images into `out` with manifest.jsonl and LICENSES.md."""
    cache = cache or Path(tempfile.gettempdir()) / "mmkb-worldkb-sources"
    flag_icons = fetch_npm(FLAG_ICONS[0], FLAG_ICONS[1], cache)
    countries = fetch_npm("world-countries", NPM_PACKAGES["world-countries"], cache)
    openmoji = fetch_npm("openmoji", NPM_PACKAGES["openmoji"], cache)
    records = [json.loads(line) for line in MANIFEST.read_text().splitlines()]
    keys = {r["key"] for r in records}
    rows = build_flag_queries(flag_icons, countries, keys, out) + build_emoji_queries(openmoji, records, out)
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    (out / "LICENSES.md").write_text(LICENSE_NOTE.format(flag_version=FLAG_ICONS[1],
                                                         openmoji_version=NPM_PACKAGES["openmoji"]))
    return out


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=build_queries.__doc__)
    p.add_argument("--out", type=Path, default=QUERY_DIR)
    p.add_argument("--cache", type=Path, default=None, help="where npm packages are unpacked")
    args = p.parse_args()
    n = sum(1 for _ in open(build_queries(args.out, args.cache) / "manifest.jsonl"))
    print(f"wrote {n} query images to {args.out}")
