"""Curation of the reference index: tag suggestions to review, and near-duplicate images.

`suggest_tags` runs the tagger (`index.tagger`) over entities' images, averages the label
probabilities over each entity's images and stores the labels it is confident of as pending tags
(`source = "tagger:<name>"`); `review_tags` accepts or rejects them; accepted tags filter searches
(`mmkb index search --tag`). `find_duplicates` compares every indexed image with its nearest
neighbours and reports pairs that are (nearly) the same picture — two entities sharing one (a
flag flown by several territories), or one entity holding the same rendering twice. Each writes a
page a curator can look at.
"""
from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from index.files import atomic_write_text, html_page, thumbnail_url
from index.store import Document, Entity, EntityStore, Image, Tag
from index.tagger.labels import display, keywords

PENDING, ACCEPTED, REJECTED = "pending", "accepted", "rejected"


@dataclass
class Suggestion:
    key: str
    name: str
    kind: str
    images: list[Path]
    labels: list[tuple[str, float]]  # (label, probability), most probable first, new to the entity
    known: list[str] = field(default_factory=list)  # labels the entity already carries


def known_labels(entity: Entity) -> list[str]:
    """Labels an entity carries already: accepted tags, its keywords section, its category fields."""
    out = [t.label for t in entity.tags if t.review_state == ACCEPTED]
    for doc in entity.documents:
        for s in doc.sections:
            if s.heading == "keywords":
                out += keywords(s.text)
    attrs = entity.attributes or {}
    out += [f"{f}:{attrs[f]}" for f in ("category", "subcategory") if attrs.get(f)]
    return list(dict.fromkeys(out))


def _with_labels():
    """Load options for reading `known_labels` of many entities in a few queries."""
    return (selectinload(Entity.tags), selectinload(Entity.images),
            selectinload(Entity.documents).selectinload(Document.sections))


def knn_unavailable(reference, tagger) -> str | None:
    """Why kNN label transfer cannot run through this reference's image index (None: it can)."""
    version = reference.store.active_index("image")
    if version is None:
        return "there is no image index (`mmkb index build`)"
    if tagger.embedder.fingerprint != reference.image_embedder().fingerprint:
        return (f"the tagger reads {tagger.embedder.fingerprint}, the index embeds with "
                f"{reference.image_embedder().fingerprint}")
    if version.embedder != reference.image_fingerprint:
        return f"the image index was built with {version.embedder}, not {reference.image_fingerprint}"
    return None


def neighbour_labels(reference, tagger, vectors: np.ndarray, own: Sequence[str], k: int = 10) -> np.ndarray | None:
    """kNN label transfer through the image index: each image's `k` nearest indexed images of other
    entities vote with their entities' labels (weight: cosine³). `vectors` are the images' search
    vectors as queries, one view each (`ReferenceIndex.embed_image_queries(..., views=1)`, what the
    tagger's own pass gives). None when `knn_unavailable`."""
    from index.search import IndexNotBuiltError

    if not len(vectors) or knn_unavailable(reference, tagger):
        return None
    try:
        index = reference.vector_index("image")
    except IndexNotBuiltError:
        return None
    scores, ids = index.search(np.asarray(vectors, np.float32), k + 16)
    hits = reference.store.image_hits(sorted({int(i) for i in ids.ravel() if i >= 0}))
    column = {label.casefold(): j for j, label in enumerate(tagger.labels)}
    rows = {}
    with reference.store.session() as s:
        keys = sorted({h["key"] for h in hits.values()})
        for e in s.scalars(select(Entity).where(Entity.key.in_(keys)).options(*_with_labels())):
            row = np.zeros(len(tagger.labels), np.float32)
            row[[column[label.casefold()] for label in known_labels(e) if label.casefold() in column]] = 1.0
            rows[e.key] = row
    out = np.zeros((len(vectors), len(tagger.labels)), np.float32)
    for i, (score_row, id_row) in enumerate(zip(scores, ids)):
        votes = [(max(float(sc), 0.0) ** 3, hits[int(j)]["key"]) for sc, j in zip(score_row, id_row)
                 if j >= 0 and int(j) in hits and hits[int(j)]["key"] != own[i]][:k]
        total = sum(w for w, _ in votes)
        if total > 0:
            out[i] = sum(w * rows[key] for w, key in votes) / total
    return out


def tag_images(tagger, images: Sequence, reference=None, own: Sequence[str] | None = None,
               knn_weight: float = 0.5) -> tuple[np.ndarray, bool]:
    """(images × labels) probabilities: the tagger's, averaged with `neighbour_labels` (weight
    `knn_weight`) when a `reference` index built with the tagger's embedder is given; and whether
    they were. `own`: each image's entity key, whose images must not vote for it (None: no entity)."""
    with_knn = reference is not None and knn_weight and not knn_unavailable(reference, tagger)
    # With kNN, the tagger's pass over the images also gives their search vectors for the index.
    probs, vectors = tagger.predict_with_embeddings(images, layout=reference.settings.image_layout_weight if with_knn else 0.0)
    if not with_knn:
        return probs, False
    knn = neighbour_labels(reference, tagger, vectors, own if own is not None else [""] * len(images))
    return (probs, False) if knn is None else ((1 - knn_weight) * probs + knn_weight * knn, True)


def suggest_tags(store: EntityStore, tagger, kinds: Sequence[str] | None = None, keys: Sequence[str] | None = None,
                 threshold: float = 0.3, top: int = 5, write: bool = True, reference=None,
                 knn_weight: float = 0.5) -> list[Suggestion]:
    """Tag suggestions for entities with images; stored as pending tags unless `write` is False.

    Kinds default to those the tagger trained on. The tagger's probabilities are averaged with kNN
    label transfer through the image index when a `reference` index is given (`tag_images`; on the
    tagging benchmark this raised mAP on entities new to the tagger from 0.385 to 0.412). A label
    the entity already carries, or one a curator rejected for it, is not suggested (labels compared
    without case). The stored suggestions of this tagger are the new ranking: a pending one that is
    no longer ranked is removed, one still ranked gets the new probability; reviewed ones stay.
    The models run outside any transaction; the writes are one short transaction."""
    if top < 1:
        raise ValueError(f"--top must be at least 1, not {top}")
    source = f"tagger:{tagger.name}"
    kinds = list(kinds or ([] if keys else tagger.kinds)) or None  # named entities are tagged whatever their kind
    with store.session() as s:  # read what to tag
        q = select(Entity).options(*_with_labels()).order_by(Entity.id)
        if kinds:
            q = q.where(Entity.kind.in_(kinds))
        if keys:
            q = q.where(Entity.key.in_(list(keys)))
        entities = [(e.id, e.key, e.name, e.kind, [store.home / im.path for im in e.images], known_labels(e),
                     {t.label.casefold() for t in e.tags if t.review_state == REJECTED})
                    for e in s.scalars(q) if e.images]
    if keys:
        missing = sorted(set(keys) - {e[1] for e in entities})
        if missing:
            raise ValueError(f"no entity with images{' of kind ' + ', '.join(kinds) if kinds else ''}: "
                             f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''} (see `mmkb index stats`)")
    gone = [p for e in entities for p in e[4] if not p.is_file()]
    if gone:
        raise ValueError(f"{len(gone)} image file(s) of the store are missing, e.g. {gone[0]}: re-ingest the KB "
                         "(`mmkb index ingest FOLDER`) or set MMKB_HOME to the data home that holds them")
    flat = [p for e in entities for p in e[4]]
    try:
        probs, _ = tag_images(tagger, flat, reference, [e[1] for e in entities for _ in e[4]], knn_weight)
    except OSError as err:  # PIL names the file it could not read
        raise ValueError(f"an image of the store cannot be read ({err}): re-ingest the KB "
                         "(`mmkb index ingest FOLDER`)") from None
    out, start = [], 0
    for _, key, name, kind, paths, known, rejected in entities:
        p = probs[start:start + len(paths)].mean(axis=0)
        start += len(paths)
        skip = {label.casefold() for label in known} | rejected
        ranked = [(tagger.labels[j], float(p[j])) for j in np.argsort(-p)
                  if p[j] >= threshold and tagger.labels[j].casefold() not in skip][:top]
        out.append(Suggestion(key, name, kind, paths, ranked, known))
    if write:
        with store.session() as s:
            ranking = {sug.key: dict(sug.labels) for sug in out}
            for e in s.scalars(select(Entity).where(Entity.id.in_([e[0] for e in entities]))
                               .options(selectinload(Entity.tags))):
                new = dict(ranking.get(e.key, {}))
                for t in list(e.tags):
                    if t.source != source or t.image_id is not None:
                        continue
                    if t.review_state == PENDING and t.label not in new:
                        e.tags.remove(t)
                    elif t.label in new:
                        if t.review_state == PENDING:
                            t.confidence = new[t.label]
                        del new[t.label]
                e.tags.extend(Tag(label=label, source=source, confidence=conf, review_state=PENDING)
                              for label, conf in new.items())
    return out


def review_tags(store: EntityStore, accept_above: float | None = None, reject_below: float | None = None,
                accept: Sequence[tuple[str, str]] = (), reject: Sequence[tuple[str, str]] = ()) -> dict[str, int]:
    """Accept or reject pending tags: by confidence, or one (entity key, label) at a time (labels
    compared without case). Nothing changes unless every named pair is pending."""
    if accept_above is not None and reject_below is not None and accept_above < reject_below:
        raise ValueError(f"--accept-above {accept_above} is below --reject-below {reject_below}: a tag in between "
                         "would be both; give an accept level at or above the reject level")
    named = [(key, label.casefold()) for key, label in [*accept, *reject]]
    if len(set(named)) < len(named):
        twice = next(p for p in named if named.count(p) > 1)
        raise ValueError(f"{twice[0]}={twice[1]} is named twice: accept or reject each tag once")
    counts = {ACCEPTED: 0, REJECTED: 0}
    with store.session() as s:
        pending = s.execute(select(Tag, Entity.key).join(Entity, Tag.entity_id == Entity.id)
                            .where(Tag.review_state == PENDING)).all()
        by_pair: dict[tuple[str, str], list[Tag]] = {}
        for tag, key in pending:
            by_pair.setdefault((key, tag.label.casefold()), []).append(tag)
        for pairs, state in ((accept, ACCEPTED), (reject, REJECTED)):
            for key, label in pairs:
                pair = (key, label.casefold())
                if pair not in by_pair:
                    done = next((state_ for tag_label, state_ in s.execute(
                        select(Tag.label, Tag.review_state).join(Entity, Tag.entity_id == Entity.id)
                        .where(Entity.key == key)) if tag_label.casefold() == pair[1]), None)
                    if done is not None:
                        raise ValueError(f"the tag {label!r} on {key} is already {done}: a review decides pending "
                                         "tags only (see `mmkb curate tags --state pending`)")
                    raise ValueError(f"no pending tag {label!r} on {key}: see `mmkb curate tags --state pending`")
                for tag in by_pair.pop(pair):
                    tag.review_state = state
                    counts[state] += 1
        for tags in by_pair.values():
            for tag in tags:
                if accept_above is not None and tag.confidence >= accept_above:
                    tag.review_state = ACCEPTED
                    counts[ACCEPTED] += 1
                elif reject_below is not None and tag.confidence < reject_below:
                    tag.review_state = REJECTED
                    counts[REJECTED] += 1
    return counts


def list_tags(store: EntityStore, state: str | None = None, key: str | None = None) -> list[dict]:
    """Tags with their entity, source, confidence and review state."""
    with store.session() as s:
        q = select(Tag, Entity.key, Entity.name).join(Entity, Tag.entity_id == Entity.id).order_by(Entity.id, Tag.id)
        if state:
            q = q.where(Tag.review_state == state)
        if key:
            q = q.where(Entity.key == key)
        return [{"key": k, "name": n, "label": t.label, "source": t.source, "confidence": round(t.confidence, 4),
                 "state": t.review_state} for t, k, n in s.execute(q).all()]


# --- near-duplicates ---------------------------------------------------------------------------

@dataclass
class DuplicatePair:
    a: dict  # image_id, path, key, name, style
    b: dict
    similarity: float
    same_entity: bool
    identical: bool  # same file content


def find_duplicates(store: EntityStore, vectors: np.ndarray, ids: np.ndarray, threshold: float = 0.97,
                    neighbours: int = 5, block: int = 2048) -> list[DuplicatePair]:
    """Pairs of images whose embeddings' cosine is ≥ `threshold`, most similar first, each pair once.

    `vectors` are the unit-length image embeddings of image `ids` (the active image index's)."""
    vectors = np.asarray(vectors, np.float32)
    ids = np.asarray(ids, np.int64)
    k = min(neighbours + 1, len(ids))
    found: dict[tuple[int, int], float] = {}
    for start in range(0, len(ids), block):
        sims = vectors[start:start + block] @ vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(ids) else np.tile(np.arange(len(ids)), (len(sims), 1))
        for row, cols in enumerate(top):
            i = start + row
            for j in cols:
                if j != i and sims[row, j] >= threshold:
                    pair = (int(min(ids[i], ids[j])), int(max(ids[i], ids[j])))
                    found[pair] = max(found.get(pair, -1.0), float(sims[row, j]))
    if not found:
        return []
    info = store.image_hits(sorted({i for pair in found for i in pair}))
    with store.session() as s:
        hashes = dict(s.execute(select(Image.id, Image.content_hash).where(Image.id.in_(list(info)))).all())
    out = []
    for (a, b), sim in sorted(found.items(), key=lambda kv: -kv[1]):
        ia, ib = info[a], info[b]
        out.append(DuplicatePair(ia, ib, sim, ia["key"] == ib["key"], hashes.get(a) == hashes.get(b)))
    return out


def index_duplicates(reference, threshold: float = 0.97) -> list[DuplicatePair]:
    """`find_duplicates` over the image embeddings the active image index holds (IndexNotBuiltError
    without one; the layout part of its search vectors is left out, so the threshold is a cosine)."""
    index = reference.vector_index("image")
    ids = index.ids()
    return find_duplicates(reference.store, reference.image_embedder().pooled(index.reconstruct(ids)), ids, threshold)


# --- pages -------------------------------------------------------------------------------------

def _thumb(path: Path, size: int = 72) -> str:
    return f'<img src="{thumbnail_url(path, size)}" alt="">'


def tag_page(suggestions: Sequence[Suggestion], out: Path, tagger_name: str, limit: int = 300) -> Path:
    """A page of suggested tags: each entity's images, its new labels with probabilities, what it has."""
    shown = [s for s in suggestions if s.labels][:limit]
    rows = []
    for s in shown:
        thumbs = "".join(_thumb(p, 56) for p in s.images[:6])
        new = " ".join(f'<span class="tag">{html.escape(display(lab))} <span class="p">{p:.2f}</span></span>'
                       for lab, p in s.labels)
        known = " ".join(f'<span class="tag known">{html.escape(display(lab))}</span>' for lab in s.known[:12])
        rows.append(f"<tr><td>{thumbs}</td><td><b>{html.escape(s.name)}</b><br><code>{html.escape(s.key)}</code></td>"
                    f"<td>{new}</td><td>{known}</td></tr>")
    with_any = sum(1 for s in suggestions if s.labels)
    intro = (f"{with_any} of {len(suggestions)} entities got suggestions from <code>{html.escape(tagger_name)}</code>"
             f"{f' (first {limit} shown)' if with_any > limit else ''}. Suggestions are pending tags: accept or "
             "reject them with <code>mmkb curate review</code>.")
    body = ("<table><tr><th>images</th><th>entity</th><th>suggested (probability)</th><th>already has</th></tr>"
            + "".join(rows) + "</table>")
    atomic_write_text(out, html_page("Tag suggestions", intro, body))
    return out


def duplicate_page(pairs: Sequence[DuplicatePair], out: Path, home: Path, threshold: float, limit: int = 300) -> Path:
    rows = []
    for p in pairs[:limit]:
        kind = "same file" if p.identical else ("same entity" if p.same_entity else "two entities")
        cells = "".join(f"<td>{_thumb(home / d['path'])}<br><b>{html.escape(d['name'])}</b> "
                        f"<code>{html.escape(d['key'])}</code><br><span class='p'>{html.escape(str(d.get('style') or ''))}"
                        f"</span></td>" for d in (p.a, p.b))
        rows.append(f"<tr>{cells}<td>{p.similarity:.3f}</td><td>{kind}</td></tr>")
    cross = sum(1 for p in pairs if not p.same_entity)
    intro = (f"{len(pairs)} image pairs at cosine ≥ {threshold} ({cross} between two entities: a shared picture "
             f"or a mislabelled image){f'; first {limit} shown' if len(pairs) > limit else ''}.")
    body = ("<table><tr><th>image</th><th>image</th><th>cosine</th><th>what</th></tr>" + "".join(rows) + "</table>")
    atomic_write_text(out, html_page("Near-duplicate images", intro, body))
    return out


def parse_pairs(items: Sequence[str]) -> list[tuple[str, str]]:
    """`KEY=LABEL` arguments → (key, label) pairs, with a clear error for anything else."""
    out = []
    for item in items:
        m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(.+?)\s*", item)
        if not m:
            raise ValueError(f"{item!r}: give an entity key and a label as KEY=LABEL, e.g. emoji:1F600=happy")
        out.append((m.group(1), m.group(2)))
    return out
