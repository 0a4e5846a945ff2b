"""The main job on embedded defaults: ingest worldkb, build the index, run sample searches, answer questions,
generate from prompts that name entities, suggest tags and find near-duplicates for curators, write a page."""
from __future__ import annotations

import html
import time
from pathlib import Path

from api.console import console
from index.config import get_settings
from index.files import png_data_url, thumbnail_url
from index.ingest import ingest_folder
from index.search import EntityHit, ReferenceIndex
from index.store import MODALITIES
from index.worldkb import DATA_DIR
from rag.kbvqa.worldkb_bench import query_images

TEXT_QUERIES = ["Thimphu", "a red fruit", "the country whose capital is Canberra",
                "currency: the euro", "smiling face with heart-shaped eyes", "landlocked country in South America"]
IMAGE_QUERIES = ["country:BTN", "country:BRA", "emoji:1F34E", "emoji:1F60D", "country:JPN", "emoji:1F680"]


def _query_images() -> dict[str, list[Path]]:
    """Entity key → renderings that are not in the index (none when the query set is missing)."""
    try:
        return query_images()
    except FileNotFoundError:
        return {}


def sample_image_queries(limit: int = 4) -> list[tuple[str, Path]]:
    """(expected entity key, image) pairs from renderings that are not in the index."""
    queries = _query_images()
    return [(key, queries[key][0]) for key in IMAGE_QUERIES if key in queries][:limit]


def ensure_index(ref: ReferenceIndex, rebuild: bool = False) -> None:
    """Build each modality whose active index is missing, stale or made by another embedder."""
    stale = list(MODALITIES) if rebuild else list(ref.outdated(embedders=True))
    if stale:
        console.print(f"building the {' and '.join(stale)} index …")
        ref.build(stale, full=rebuild)


def hit_table(hits: list[EntityHit], home: Path, expected: str | None = None) -> str:
    """A table of search hits: rank, key, name, score and the best match (its picture, or its text);
    the `expected` entity's row is marked."""
    out = ["<table><tr><th>#</th><th>entity</th><th>name</th><th>score</th><th>best match</th></tr>"]
    for rank, h in enumerate(hits, 1):
        best = max(h.matches, key=lambda m: m.score)
        shown = (f'<img src="{thumbnail_url(home / best.path, 48)}">' if best.path
                 else html.escape(best.text or ""))
        mark = ' class="hit"' if h.key == expected else ""
        out.append(f"<tr{mark}><td>{rank}</td><td><code>{html.escape(h.key)}</code></td>"
                   f"<td>{html.escape(h.name)}</td><td>{h.score:.3f}</td><td>{shown}</td></tr>")
    return "\n".join(out) + "</table>"


QUESTIONS = [("country:BTN", "What is the capital of this country?"),
             ("country:BRA", "Which currency is used in the country with this flag?"),
             ("country:JPN", "What is the population of this country?"),
             ("country:JOR", "What is the capital of this country?"),  # new to the reader: RET's image side
             ("emoji:1F468-200D-1F468-200D-1F467-200D-1F466", "Which category does this emoji belong to?"),
             ("emoji:1F34E", "Which category does this emoji belong to?")]


def answer_questions() -> list[dict]:
    """KB-VQA with the shipped VLM on query renderings the index has never seen (skipped without one)."""
    from rag.pipeline import MMKBRAG
    from rag.vlm import SHIPPED

    if not (SHIPPED / "mmkb-reader" / "heads.safetensors").exists():
        console.print("no trained mmkb-reader: skipping questions (`mmkb train vlm`)")
        return []
    rag = MMKBRAG.load()
    queries = _query_images()
    out = []
    for key, question in QUESTIONS:
        image = next(iter(queries.get(key, [])), None)
        if image is None:
            continue
        t = time.perf_counter()
        answer = rag(image, question)
        out.append({"image": image, "question": question, "answer": answer, "expected": key,
                    "ms": 1000 * (time.perf_counter() - t), "gamma": rag.config.gamma})
        console.print(f"{image.name}: {question} → {answer.answer}")
    return out


GENERATION_PROMPTS = ["the flag of Tuvalu on a green background",
                      "the Japanese flag on the left and the red apple emoji on the right on a pink background"]


def grounded_generations(ref: ReferenceIndex, n: int = 2) -> list[dict]:
    """Knowledge-grounded generation with the shipped DiT: prompts that name entities (skipped without one)."""
    from generator.pipeline import GenerationPipeline
    from rag.grounding import Grounder, generate_grounded

    try:
        pipe = GenerationPipeline.from_pretrained()
    except FileNotFoundError as err:
        console.print(f"no generator: skipping generation ({err})")
        return []
    grounder = Grounder(ref)
    out = []
    for prompt in GENERATION_PROMPTS:
        t = time.perf_counter()
        result = generate_grounded(pipe, grounder, prompt, n=n)
        out.append({"prompt": prompt, "result": result, "ms": 1000 * (time.perf_counter() - t)})
        named = ", ".join(m["key"] for m in result.provenance["grounding"]["mentions"])
        console.print(f"“{prompt}” → {named}: {n} images")
    return out


def _generation_block(g: dict) -> str:
    prov = g["result"].provenance
    refs = "".join(f'<img src="{thumbnail_url(Path(u["path"]), 48)}" title="{html.escape(u.get("name", ""))}"> '
                   for u in prov["references"])
    named = "; ".join(f"“{html.escape(m['text'])}” → <code>{html.escape(m['key'])}</code> ({m['how']})"
                      for m in prov["grounding"]["mentions"])
    images = "".join(f'<img src="{png_data_url(im)}" width="128" height="128" style="image-rendering:pixelated;margin:4px">'
                     for im in g["result"].images)
    return (f"<h2>“{html.escape(g['prompt'])}”</h2><p>{named}<br>references {refs} · caption for the DiT: "
            f"“{html.escape(prov['caption'])}” · {prov['steps']} steps · {g['ms']:.0f} ms</p><p>{images}</p>")


def curation(ref: ReferenceIndex, picks: int = 6) -> dict | None:
    """The curator's view: the tagger's labels for emoji drawings of entities it never trained on (nothing
    stored), and the near-duplicate pictures of the index. Skipped without a tagger."""
    import numpy as np

    from index.clip.data import is_held_out
    from index.curate import index_duplicates, tag_images
    from index.tagger import Tagger
    from index.tagger.labels import record_labels
    from index.tagger.train import load_records
    from index.worldkb import MANIFEST

    try:
        tagger = Tagger(embedder=ref.image_embedder())
    except FileNotFoundError as err:
        console.print(f"no tagger: skipping curation ({err})")
        return None
    labels = {r["key"]: record_labels(r) for r in load_records(MANIFEST)}
    queries = _query_images()
    keys = [k for k in sorted(queries) if k.startswith("emoji:") and is_held_out(k) and labels.get(k)]
    chosen = keys[:: max(1, len(keys) // picks)][:picks]
    images = [next(p for p in queries[k] if "emoji" in p.parts) for k in chosen]
    probs, _ = tag_images(tagger, images, ref, own=chosen)  # as `mmkb curate tag` does; own images never vote
    tagged = [{"key": k, "image": im, "has": labels[k],
               "top": [(tagger.labels[j], float(p[j])) for j in np.argsort(-p)[:5]]}
              for k, im, p in zip(chosen, images, probs)]
    pairs = index_duplicates(ref, threshold=0.97)
    cross = [p for p in pairs if not p.same_entity]
    console.print(f"curation: tags for {len(tagged)} unseen emoji; {len(pairs)} near-duplicate image pairs, "
                  f"{len(cross)} between two entities")
    return {"tagger": tagger.name, "tagged": tagged, "pairs": len(pairs), "cross": cross}


def _curation_block(c: dict, home: Path) -> str:
    from index.tagger.labels import display

    rows = "".join(
        f'<tr><td><img src="{thumbnail_url(t["image"], 64)}"></td><td><code>{html.escape(t["key"])}</code></td><td>'
        + ", ".join(f'<span style="color:{"#137333" if lab in t["has"] else "#a50e0e"}">{html.escape(display(lab))}'
                    f" {p:.2f}</span>" for lab, p in t["top"]) + "</td></tr>" for t in c["tagged"])
    dups = "".join(f'<tr><td><img src="{thumbnail_url(home / p.a["path"], 40)}"> <code>{html.escape(p.a["key"])}</code></td>'
                   f'<td><img src="{thumbnail_url(home / p.b["path"], 40)}"> <code>{html.escape(p.b["key"])}</code></td>'
                   f"<td>{p.similarity:.3f}</td></tr>" for p in c["cross"][:6])
    return (f"<h1>Curation</h1><h2>Tags suggested by {html.escape(c['tagger'])} for emoji it never saw "
            "(OpenMoji drawings; tagger averaged with the labels of the index's nearest other entities, as "
            "<code>mmkb curate tag</code> does; green: the entity carries the label)</h2>"
            f"<table><tr><th></th><th>entity</th><th>top-5 labels</th></tr>{rows}</table>"
            f"<h2>Near-duplicate pictures in the index: {c['pairs']} pairs at cosine ≥ 0.97, "
            f"{len(c['cross'])} between two entities (<code>mmkb curate dedup</code>)</h2>"
            f"<table><tr><th>image</th><th>image</th><th>cosine</th></tr>{dups}</table>")


def _answer_block(a: dict) -> str:
    out = a["answer"]
    cites = "".join(f"<li><code>{html.escape(c.entity_key)}</code> · section {c.document_id}"
                    + (f" · P([Rel]) {c.relevance:.2f}" if c.relevance is not None else "")
                    + f" — {html.escape(c.text)}</li>" for c in out.citations)
    why = out.image_side_reason(a["gamma"])
    how = ("retrieved" if out.retrieved else "answered without retrieval") + (f": {why}" if why else "") + (
        f", P([Ret]) {out.p_ret:.2f}" if out.p_ret is not None else "") + (
        f", its own answer {html.escape(out.closed_book)} with probability {out.closed_book_probability:.2f}"
        if out.closed_book is not None and out.closed_book_probability is not None else "") + (
        f", familiarity {out.familiarity:.2f}" if out.familiarity is not None else "")
    return (f'<h2><img src="{thumbnail_url(a["image"], 96)}"> {html.escape(a["question"])}</h2>'
            f"<p><b>{html.escape(out.answer)}</b> ({how}; {a['ms']:.0f} ms; tags: "
            f"{html.escape(str(out.tags.entity))} / {html.escape(str(out.tags.category))})</p><ul>{cites}</ul>")


def render_page(results: list[dict], home: Path, meta: dict, answers: list[dict] | None = None,
                generations: list[dict] | None = None, curated: dict | None = None) -> str:
    blocks = []
    for r in results:
        query = (f'<img src="{thumbnail_url(r["image"], 96)}"> (expected <code>{r["expected"]}</code>)'
                 if r.get("image") else f"“{html.escape(r['text'])}”")
        blocks.append(f"<h2>{query}</h2><p>{r['ms']:.0f} ms</p>{hit_table(r['hits'], home, r.get('expected'))}")
    info = " · ".join(f"{k}: {html.escape(str(v))}" for k, v in meta.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>mmkb sample searches</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}}
tr.hit{{background:#e6f4ea}}img{{vertical-align:middle}}code{{font-size:90%}}</style></head><body>
<h1>mmkb sample searches</h1><p>{info}</p>{''.join(blocks)}
{"<h1>Questions answered (KB-VQA)</h1>" + "".join(_answer_block(a) for a in answers) if answers else ""}
{"<h1>Knowledge-grounded generation</h1>" + "".join(_generation_block(g) for g in generations) if generations else ""}
{_curation_block(curated, home) if curated else ""}
</body></html>"""


def prepare_starter_kb(ref: ReferenceIndex, rebuild: bool = False) -> None:
    """worldkb ingested (idempotent) and its index built with the current embedders."""
    report = ingest_folder(ref.store, DATA_DIR, show_progress=True)
    console.print(f"worldkb: {report.added} added, {report.updated} updated, {report.unchanged} unchanged")
    ensure_index(ref, rebuild)


def run_demo(out: Path | None = None, rebuild: bool = False, k: int = 5) -> Path:
    settings = get_settings()
    ref = ReferenceIndex.from_settings(settings)
    prepare_starter_kb(ref, rebuild)
    results = []
    for text in TEXT_QUERIES:
        t = time.perf_counter()
        hits = ref.search(text=text, k=k)
        results.append({"text": text, "hits": hits, "ms": 1000 * (time.perf_counter() - t)})
        console.print(f"“{text}” → {hits[0].key} ({hits[0].name}, {hits[0].score:.3f})")
    for expected, image in sample_image_queries():
        t = time.perf_counter()
        hits = ref.search(image=image, k=k)
        results.append({"image": image, "expected": expected, "hits": hits, "ms": 1000 * (time.perf_counter() - t)})
        console.print(f"{image.name} → {hits[0].key} ({hits[0].name}, {hits[0].score:.3f}); expected {expected}")
    answers = answer_questions()
    generations = grounded_generations(ref)
    curated = curation(ref)
    meta = {"database": ref.store.shown_url, "entities": ref.store.stats()["entities"],
            "text embedder": settings.text_embedder, "image embedder": settings.image_embedder,
            "image embedder trained": ref.image_embedder().trained}
    out = Path(out) if out else settings.home_dir / "demo"
    out.mkdir(parents=True, exist_ok=True)
    page = out / "index.html"
    page.write_text(render_page(results, ref.store.home, meta, answers, generations, curated), encoding="utf-8")
    return page
