"""Icon concepts: extra training classes for the embedder, each drawn by several icon sets.

worldkb's 1,523 trainable entities teach the embedder to match renderings of those entities, not
what a snail or a beer mug looks like: an emoji it never trained on is matched to another vendor's
drawing of it at recall@1 0.61 (0.94 for trained ones; benchmarks/results/entity_recognition.md), and most
misses are semantic (Snail → Woman raising hand). General-purpose icon sets (Iconify's JSON
packages on npm, all MIT / Apache-2.0 / ISC / CC-BY-4.0) draw thousands of everyday concepts, each
in many styles: Phosphor's bug in six weights, Material's outlined / rounded / sharp, Tabler's
outline and filled, Icon Park's colour and two-tone. A concept drawn by several independent
sources (Icon Park's four themes are one source, as are Fluent and Fluent colour, Streamline and
Streamline colour) is a class with several renderings, which is what the embedder's image↔image and
proxy losses learn from.

No emoji set is used (the benchmark's query vendors, Twitter and Google, and OpenMoji are emoji
sets), and a concept whose name, without a trailing number ("cake-one", "mirror-2": icon sets number
their alternative drawings), is the name or alias of a held-out emoji (`data.is_held_out`) is left
out, so held-out emoji stay unseen as concepts, not only as renderings. Monochrome icons are
drawn in a colour chosen by the concept's name, the same in every set: colour stays a property of
the class, as it is for flags and emoji.

    python -m index.clip.icons runs/icons     # fetch (npm pack), render, write runs/icons/manifest.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from index.clip.data import Entity, is_held_out
from index.files import replace_dir
from index.worldkb.build import EMOJI_SIZE, slug_of

# Pinned packages (@iconify-json/<set>) and their licenses (each package's package.json).
ICON_SETS = {
    "ph": ("1.2.2", "MIT"),
    "tabler": ("1.2.41", "MIT"),
    "mdi": ("1.2.3", "Apache-2.0"),
    "lucide": ("1.2.137", "ISC"),
    "material-symbols": ("1.2.98", "Apache-2.0"),
    "ri": ("1.2.10", "Apache-2.0"),
    "bi": ("1.2.7", "MIT"),
    "fluent": ("1.2.60", "MIT"),
    "fluent-color": ("1.2.21", "MIT"),
    "carbon": ("1.2.30", "Apache-2.0"),
    "iconoir": ("1.2.11", "MIT"),
    "healthicons": ("1.2.13", "MIT"),
    "icon-park": ("1.2.4", "Apache-2.0"),
    "icon-park-outline": ("1.2.4", "Apache-2.0"),
    "icon-park-solid": ("1.2.4", "Apache-2.0"),
    "icon-park-twotone": ("1.2.4", "Apache-2.0"),
    "streamline": ("1.2.5", "CC-BY-4.0"),
    "streamline-color": ("1.2.2", "CC-BY-4.0"),
}
# Style words that name a drawing of a concept, not another concept ("bug-fill" is a bug).
STYLE_WORDS = {"outline", "outlined", "rounded", "sharp", "filled", "fill", "regular", "light", "thin", "bold",
               "duotone", "line", "solid", "remix", "flat", "twotone", "negative"}
SIZES = {"10", "12", "16", "20", "24", "28", "32", "48"}  # Fluent's pixel sizes: one drawing per size
SIZED_SETS = {"fluent", "fluent-color"}  # elsewhere a trailing number is part of the name ("forward-10")
NOUN_STYLES = {"light", "line", "bold"}  # style words that are also words of a thing's name
NUMBERS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
# Sets drawn by one designer in several themes count as one source towards MIN_SETS.
SOURCE = {"icon-park-outline": "icon-park", "icon-park-solid": "icon-park", "icon-park-twotone": "icon-park",
          "fluent-color": "fluent", "streamline-color": "streamline"}
PALETTE = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#393b79", "#637939", "#843c39", "#222222", "#e6550d", "#3182bd", "#31a354"]
MIN_SETS = 3  # a concept becomes a class when at least this many independent sources draw it
MAX_IMAGES = 8  # drawings kept per concept (one per set first, then other styles)
RENDER_SIZE = EMOJI_SIZE  # as worldkb's emoji


def concept_of(name: str, sized: bool = False) -> tuple[str, str]:
    """(concept, style) of an icon name: "bug-beetle-fill" → ("bug-beetle", "fill"),
    "bug-report-outline-rounded" → ("bug-report", "outline-rounded"); with `sized` (Fluent's sets,
    which draw each concept at several pixel sizes) "bug-24-regular" → ("bug", "regular")."""
    parts = name.split("-")
    style: list[str] = []
    while len(parts) > 1 and parts[-1] in STYLE_WORDS:
        style.insert(0, parts.pop())
    if sized and len(parts) > 1 and parts[-1] in SIZES:
        parts.pop()
    return "-".join(parts), "-".join(style) or "base"


def unnumbered(concept: str) -> str:
    """A concept without the number an icon set gives its alternative drawings: "cake-two" → "cake"."""
    parts = concept.split("-")
    while len(parts) > 1 and (parts[-1] in NUMBERS or parts[-1].isdigit()):
        parts.pop()
    return "-".join(parts)


def _colour(concept: str) -> str:
    return PALETTE[int(hashlib.sha1(concept.encode()).hexdigest()[:6], 16) % len(PALETTE)]


def held_out_names(manifest: Path | None = None) -> set[str]:
    """Slugs ("beer-mug") of the names and aliases of the held-out emoji: concepts never trained."""
    from index.worldkb import MANIFEST

    out = set()
    with open(manifest or MANIFEST) as f:
        for line in f:
            rec = json.loads(line)
            if is_held_out(rec["key"]):
                for n in [rec["name"], *rec.get("aliases", [])]:
                    out.add(slug_of(n))
    return out


@dataclass(frozen=True)
class Drawing:
    """One icon set's drawing of a concept: the set, the icon's name there and its style."""

    set: str  # noqa: A003  (an icon set's name, as Iconify calls it)
    name: str
    style: str


def choose_concepts(sets: dict[str, list[str]], exclude: set[str], min_sets: int = MIN_SETS,
                    max_images: int = MAX_IMAGES) -> dict[str, list[Drawing]]:
    """Concept → its drawings, for concepts drawn by at least `min_sets` independent sources
    (`SOURCE`) whose name, without a trailing number, is not in `exclude`: one drawing per set first
    (its base style when it has one), then the sets' other styles, up to `max_images`. Fluent's sizes
    are one drawing (the 24 px one when there is one)."""
    found: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for set_name, names in sets.items():
        sized = set_name in SIZED_SETS
        parsed = {name: concept_of(name, sized) for name in names}
        drawn = Counter(concept for concept, _ in parsed.values())
        for name in sorted(names):
            concept, style = parsed[name]
            if style in NOUN_STYLES and drawn[concept] == 1:
                concept, style = name, "base"  # no other drawing of "traffic" here: a traffic light is a thing
            if not concept or concept.isdigit() or unnumbered(concept) in exclude:
                continue
            styles = found[concept][set_name]
            at_24 = sized and "24" in name.split("-")
            if style not in styles or at_24:
                styles[style] = name
    out = {}
    for concept, by_set in sorted(found.items()):
        if len({SOURCE.get(s, s) for s in by_set}) < min_sets:
            continue
        firsts = []
        for s, st in sorted(by_set.items()):
            first = "base" if "base" in st else min(st)
            firsts.append(Drawing(s, st[first], first))
        rest = [Drawing(s, n, style) for s, st in sorted(by_set.items()) for style, n in sorted(st.items())
                if Drawing(s, n, style) not in firsts]
        out[concept] = (firsts + rest)[:max_images]
    return out


def build_icons(out: Path, cache: Path | None = None, min_sets: int = MIN_SETS, max_images: int = MAX_IMAGES,
                max_concepts: int | None = None) -> Path:
    """Fetch the icon sets (`npm pack`, into `cache`), render the chosen concepts' drawings to
    `out/images/<concept>/<set>-<style>.png` and write `out/manifest.jsonl` (one concept per line:
    key, name, images with path, set, icon name and license). `out` is replaced only once complete."""
    from index.worldkb import build

    cache = cache or out.parent / f"{out.name}-cache"
    packages = {s: build.IconifySet(build.fetch_npm(f"@iconify-json/{s}", v, cache)) for s, (v, _) in ICON_SETS.items()}
    shown = {s: sorted(n for n, icon in p.icons.items() if not icon.get("hidden")) for s, p in packages.items()}
    concepts = choose_concepts(shown, held_out_names(), min_sets, max_images)
    if not concepts:
        raise ValueError(f"no concept is drawn by {min_sets} or more icon sources: lower --min-sets")
    if max_concepts:
        concepts = dict(sorted(concepts.items(), key=lambda kv: (-len({SOURCE.get(d.set, d.set) for d in kv[1]}), kv[0]))[:max_concepts])
    tmp = out.parent / f".{out.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lines = []
    for concept, drawings in tqdm(sorted(concepts.items()), desc="rendering icon concepts"):
        colour = _colour(concept)
        images = []
        for d in drawings:
            svg = packages[d.set].svg(d.name).replace("currentColor", colour)
            rel = f"images/{concept}/{d.set}-{d.style}.png"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            build.save_png(build.render_svg(svg, RENDER_SIZE, RENDER_SIZE), tmp / rel)
            images.append({"path": rel, "set": d.set, "icon": d.name, "style": f"{d.set}:{d.style}",
                           "license": ICON_SETS[d.set][1]})
        lines.append(json.dumps({"key": f"icon:{concept}", "name": concept.replace("-", " "),
                                 "images": images}))
    (tmp / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (tmp / "SOURCES.md").write_text(
        "# Icon concepts\n\nRendered by `python -m index.clip.icons` from these npm packages:\n\n"
        + "".join(f"- @iconify-json/{s} {v} ({lic})\n" for s, (v, lic) in ICON_SETS.items()))
    replace_dir(tmp, out)
    return out / "manifest.jsonl"


def load_icons(folder: Path) -> list[Entity]:
    """The concepts of a `build_icons` folder as training entities (kind "icon"; each its own group,
    so they are never the hard-negative half of a batch)."""
    manifest = Path(folder) / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"no icon concepts in {folder}: build them with `python -m index.clip.icons {folder}`")
    out = []
    for line in manifest.read_text().splitlines():
        rec = json.loads(line)
        name = rec["name"]
        out.append(Entity(rec["key"], "icon", name, tuple(Path(folder) / im["path"] for im in rec["images"]),
                          tuple(im["style"] for im in rec["images"]), (name, f"{name} icon", f"a {name} symbol"),
                          rec["key"]))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m index.clip.icons", description=build_icons.__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--min-sets", type=int, default=MIN_SETS)
    p.add_argument("--max-images", type=int, default=MAX_IMAGES)
    p.add_argument("--max-concepts", type=int, default=None)
    args = p.parse_args(argv)
    path = build_icons(args.out, args.cache, args.min_sets, args.max_images, args.max_concepts)
    n = sum(1 for _ in path.open())
    print(f"wrote {n} icon concepts to {path}")


if __name__ == "__main__":
    main()
