"""Knowledge-grounded generation: prompts that name entities, grounded in the index, rendered by the DiT.

    python benchmarks/grounded_generation.py [--n 48] [--threads 2]

1. Grounding: every worldkb entity named in the prompt forms users write ("the flag of Japan",
   "Japan's flag", "the Japanese flag", "the red apple emoji") → does the grounder find that entity?
   Accepted: the entity itself or one with the same name (worldkb names a few emoji twice).
2. Generation: `--n` seen and `--n` held-out entities (generator.scenes' split: held-out ones never
   were DiT targets), named in a one-object prompt with a colour and a position, and `--n` two-object
   prompts naming held-out entities; each rendered (a) grounded (the caption + the references the
   index gives) with the default 50-step model and the 4-step model, and (b) the prompt straight to
   the DiT without references (what it knows by name alone). Scored as benchmarks/generation.py does:
   the entity in its slot identified by the pixel-space nearest neighbour over every rendering,
   background colour, position.
Writes benchmarks/results/grounded_generation.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def name_prompts(rows) -> list[tuple[str, str, str]]:
    """(form, prompt, key) for every entity and every way the grounder is meant to read it."""
    demonyms = [(attrs.get("facts") or {}).get("demonym") for _, kind, _, _, attrs in rows if kind == "country"]
    out = []
    for key, kind, name, _aliases, attrs in rows:
        if kind == "country":
            out += [("the flag of NAME", f"the flag of {name} on a blue background", key),
                    ("NAME's flag", f"{name}'s flag at the top on a red background", key)]
            demonym = (attrs.get("facts") or {}).get("demonym")
            # "French" is France's and French Guiana's: such a demonym names the most prominent, and no
            # single right answer, so only demonyms of one country are asked
            if isinstance(demonym, str) and demonym and demonyms.count(demonym) == 1:
                out.append(("the DEMONYM flag (demonyms of one country)", f"the {demonym} flag on a green background",
                            key))
        elif kind == "emoji":
            out.append(("the NAME emoji", f"the {name.lower()} emoji on the left on a pink background", key))
    return out


# Phrasings a user might write that are not the entity's worldkb name: an alias, a code, or words the
# index's text search has to place. Written here with the names a person would accept for each.
PARAPHRASES = [
    ("the pizza slice emoji", {"Slice of pizza"}),
    ("the smiling cat emoji", {"Smiling cat face with open mouth", "Grinning cat face with smiling eyes",
                               "Smiling cat face with heart-shaped eyes"}),
    ("the rocket ship emoji", {"Rocket"}),
    ("the unicorn head emoji", {"Unicorn face"}),
    ("the sad face emoji", {"Frowning face", "Slightly frowning face", "Disappointed face"}),
    ("the globe emoji", {"Earth globe europe-africa", "Earth globe americas", "Earth globe asia-australia",
                         "Globe with meridians"}),
    ("the tree emoji", {"Evergreen tree", "Deciduous tree", "Palm tree"}),
    ("the big red apple emoji", {"Red apple"}),
    ("the laptop emoji", {"Personal computer"}),
    ("the car emoji", {"Automobile", "Oncoming automobile", "Racing car"}),
    ("the crying cat emoji", {"Crying cat face"}),
    ("the police car emoji", {"Police car"}),
    ("the flag of Persia", {"Iran"}),
    ("the flag of Burma", {"Myanmar"}),
    ("the flag of Swaziland", {"Eswatini"}),
    ("the flag of East Timor", {"Timor-Leste"}),
    ("the flag of the Czech Republic", {"Czechia"}),
    ("the flag of the USA", {"United States"}),
    ("the flag of Great Britain", {"United Kingdom"}),
    ("the flag of Holland", {"Netherlands"}),
]


def paraphrase_accuracy(grounder, rows) -> dict:
    names = {name for _, _, name, _, _ in rows}
    out = []
    for phrase, accept in PARAPHRASES:
        missing = accept - names
        if missing:
            raise ValueError(f"PARAPHRASES names {sorted(missing)}, which the index does not hold")
        g = grounder(f"{phrase} on a blue background")
        got = [m.name for m in g.mentions]
        out.append({"phrase": phrase, "found": got, "how": [m.how for m in g.mentions],
                    "score": [m.score for m in g.mentions], "right": len(got) == 1 and got[0] in accept})
    return {"n": len(out), "accuracy": round(sum(r["right"] for r in out) / len(out), 4), "phrases": out}


def grounding_accuracy(grounder, rows) -> dict:
    names = {key: name.lower() for key, _, name, _, _ in rows}
    by_form: dict[str, list[bool]] = {}
    misses: dict[str, list[str]] = {}
    times = []
    for form, prompt, key in tqdm(name_prompts(rows), desc="grounding"):
        t = time.perf_counter()
        g = grounder(prompt)
        times.append(1000 * (time.perf_counter() - t))
        ok = len(g.mentions) == 1 and (g.mentions[0].key == key or names.get(g.mentions[0].key) == names[key])
        by_form.setdefault(form, []).append(ok)
        if not ok and len(misses.setdefault(form, [])) < 8:
            misses[form].append(f"{prompt} → {[m.key for m in g.mentions] or g.unresolved}")
    return {"forms": {f: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for f, v in by_form.items()},
            "examples_missed": misses, "p50_ms": round(statistics.median(times), 2)}


def scene_prompts(n: int, seed: int = 5):
    """One-object prompts for `n` seen and `n` held-out entities, `n` two-object held-out prompts and `n`
    edits of a held-out scene that name the held-out entity to swap in; items are (prompt, colour,
    objects, image to edit or None)."""
    from generator.scenes import COLOURS, PAIRS, SLOTS, article, is_held_out, load_assets, named, render, thing

    rng = random.Random(seed)
    assets = [a for a in load_assets() if a.style in ("flag", "emoji-google")]
    seen = [a for a in assets if not is_held_out(a.key)]
    held = [a for a in assets if is_held_out(a.key)]
    sets = {}
    for label, pool in (("seen, one object", seen), ("held-out, one object", held)):
        items = []
        for a in rng.sample(pool, n):
            colour, slot = rng.choice(list(COLOURS)), rng.choice(list(SLOTS))
            items.append((f"{named(a)} {slot} on {article(colour)} background", colour, [(a, slot)], None))
        sets[label] = items
    items = []
    one_each = list({a.key: a for a in held}.values())
    for _ in range(n):
        a, b = rng.sample(one_each, 2)
        colour, (s1, s2) = rng.choice(list(COLOURS)), rng.choice(PAIRS)
        items.append((f"{named(a)} {s1} and {named(b)} {s2} on {article(colour)} background", colour,
                      [(a, s1), (b, s2)], None))
    sets["held-out, two objects"] = items
    items = []
    for _ in range(n):  # the scene to edit is rendered from the assets, as the generator's edit tasks are
        a, b = rng.sample(one_each, 2)
        colour, slot = rng.choice(list(COLOURS)), rng.choice(list(SLOTS))
        items.append((f"replace the {thing(a)} with {named(b)}", colour, [(b, slot)], render([(a.path, slot)], colour)))
    sets["held-out, swap by name (edit)"] = items
    return sets


def score(images, items, pixel) -> dict:
    """benchmarks/generation.py's scoring (entity in its slot by pixel NN, colour, position, clean)."""
    from types import SimpleNamespace

    from benchmarks.generation import score as score_scenes

    scenes = [SimpleNamespace(objects=objects, colour=colour) for _, colour, objects, _ in items]
    return score_scenes(np.stack([np.asarray(img.convert("RGB")) for img in images]), scenes, pixel, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="prompts per generation set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from api.demo import prepare_starter_kb
    from generator.identify import PixelIdentifier
    from generator.pipeline import GenerationPipeline
    from index.search import ReferenceIndex
    from rag.grounding import Grounder, generate_grounded

    reference = ReferenceIndex.from_settings()
    prepare_starter_kb(reference)
    grounder = Grounder(reference)
    report = {"machine": {"cpu_threads": args.threads, "platform": platform.platform(), "torch": torch.__version__},
              "command": "python benchmarks/grounded_generation.py " + " ".join(sys.argv[1:]),
              "grounding": grounding_accuracy(grounder, reference.store.names()),
              "paraphrases": paraphrase_accuracy(grounder, reference.store.names())}
    print(json.dumps(report["grounding"]["forms"], indent=1), report["paraphrases"]["accuracy"])

    pixel = PixelIdentifier()
    teacher, fast = GenerationPipeline.from_pretrained(), GenerationPipeline.from_pretrained(fast=True)
    methods = {"grounded, 50 steps": (teacher, True), "grounded, few-step 4 steps": (fast, True),
               "by name alone, 50 steps": (teacher, False)}
    rows, shown = [], {}
    sets = scene_prompts(args.n)
    for label, items in sets.items():
        for method, (pipe, ground) in methods.items():
            images, ms = [], []
            for i, (prompt, _, _, source) in enumerate(tqdm(items, desc=f"{label[:22]} · {method[:22]}")):
                t = time.perf_counter()
                res = (generate_grounded(pipe, grounder, prompt, image=source, seed=i) if ground
                       else pipe(prompt, image=source, seed=i))
                ms.append(1000 * (time.perf_counter() - t))
                images.append(res.images[0])
            rows.append({"set": label, "method": method, **score(images, items, pixel),
                         "p50_ms": round(statistics.median(ms), 1)})
            shown[label, method] = images[:4]
            print(rows[-1])
    report["generation"] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    grid(shown, sets, args.out / "grounded_generation.png")
    (args.out / "grounded_generation.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "grounded_generation.md").write_text(markdown(report))
    print(markdown(report))


def grid(shown: dict, sets: dict, out: Path) -> None:
    """Per set: the first four prompts (rows) × methods (columns), after the scene edited for edits."""
    methods = list(dict.fromkeys(m for _, m in shown))
    cell, pad, text_w = 96, 6, 330
    columns = ["scene edited"] + methods
    rows = [(label, i) for label in sets for i in range(min(4, len(sets[label])))]
    canvas = Image.new("RGB", (text_w + len(columns) * (cell + pad), 24 + len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, m in enumerate(columns):
        draw.text((text_w + j * (cell + pad), 6), m[:18], fill="black")
    for r, (label, i) in enumerate(rows):
        y = 24 + r * (cell + pad)
        prompt, _, _, source = sets[label][i]
        words, line, lines = prompt.split(), "", []
        for w in words:
            if len(line) + len(w) > 48:
                lines.append(line)
                line = ""
            line += w + " "
        draw.multiline_text((6, y + 6), "\n".join(lines + [line]), fill="black")
        if source is not None:
            canvas.paste(source.convert("RGB").resize((cell, cell), Image.NEAREST), (text_w, y))
        for j, m in enumerate(methods, 1):
            canvas.paste(shown[label, m][i].resize((cell, cell), Image.NEAREST), (text_w + j * (cell + pad), y))
    canvas.save(out)


def markdown(r: dict) -> str:
    g = r["grounding"]
    m = r["machine"]
    lines = ["# Knowledge-grounded generation", "",
             f"`{r['command']}` · {m['cpu_threads']} CPU threads, torch {m['torch']}, {m['platform']}", "",
             "## Grounding: the entity a prompt names", "", "| prompt form | prompts | right entity |", "|---|---|---|"]
    lines += [f"| {f} | {v['n']} | {v['accuracy']:.1%} |" for f, v in g["forms"].items()]
    lines += ["", f"Grounding p50 {g['p50_ms']} ms per prompt.", "",
              f"Phrasings that are not the entity's name ({r['paraphrases']['n']}, written in the benchmark): "
              f"{r['paraphrases']['accuracy']:.0%} right.", "",
              "| phrase | found (how) | right |", "|---|---|---|"]
    for row in r["paraphrases"]["phrases"]:
        found = ", ".join(f"{n} ({h}{'' if h != 'search' else f' {s:.2f}'})"
                          for n, h, s in zip(row["found"], row["how"], row["score"])) or "–"
        lines.append(f"| {row['phrase']} | {found} | {'yes' if row['right'] else 'no'} |")
    lines += ["",
              "## Generation from named entities", "",
              "| prompts | method | n | entity right (pixel NN) | background colour | position | clean background "
              "| p50 ms / prompt |",
              "|---|---|---|---|---|---|---|---|"]
    for row in r["generation"]:
        pos = f"{row['position']:.0%}" if "position" in row else "–"
        lines.append(f"| {row['set']} | {row['method']} | {row['n']} | {row['fidelity_pixel_nn']:.0%} | "
                     f"{row['background_colour']:.0%} | {pos} | {row.get('clean_background', 0):.0%} | {row['p50_ms']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
