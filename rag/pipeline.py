"""MMKB-RAG inference (arXiv 2504.10074): RET → semantic tags → retrieval → SRT → MCT → answer.

Modes: `no-rag` (the VLM alone), `naive-rag` (top-k documents straight to the reader) and
`mmkb-rag` (the knowledge-boundary tags; each can be switched off for the ablation).
Retrieval fuses, per entity, image→image similarity of the query image with the entity's images
and text similarity of the VLM's semantic tags, over the entity kinds the category tag leaves open;
documents are then the sections of the candidate entities closest to the question (metadata filters
in SQL that reach FAISS as ID selectors).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from index.embedders import open_rgb
from index.search import TIE_DECIMALS, IndexNotBuiltError, ReferenceIndex
from rag.kbvqa.metrics import normalize_answer
from rag.vlm.base import Document, SemanticTags

MODES = ("no-rag", "naive-rag", "mmkb-rag")


@dataclass
class RAGConfig:
    mode: str = "mmkb-rag"
    use_ret: bool = True
    use_srt: bool = True
    use_mct: bool = True
    # RET threshold: retrieve when P([Ret]) >= gamma. The paper's is 0.5; 0.4 was chosen on the worldkb dev
    # set and checked on a third draw (README, KB-VQA "Results").
    gamma: float = 0.4
    # RET's tag read together with the closed-book answer's probability, as the VLM's export calibrated
    # it on self-labels (rag.vlm.ret_calibration); False reads the RET head alone. Worldkb dev set
    # (289 questions, γ 0.5): RET skips retrieval for 57% of the seen-entity questions instead of 45%,
    # at the same accuracy.
    ret_closed_book: bool = True
    # RET's image side: also retrieve when the image is unlike every entity the VLM trained on (its
    # familiarity is below the threshold calibrated in training; rag.vlm.familiarity), or when the
    # index's nearest entity to it is one the VLM has no facts about, whatever the tag says.
    familiarity_gate: bool = True
    # RET also retrieves when the image's nearest indexed entities share its picture (the Netherlands and
    # Caribbean Netherlands fly one flag, Australia and Heard Island another): the picture alone cannot
    # say which entity it is, so a closed-book answer is a guess between them, and retrieval's
    # prominence order decides. Part of RET's image side: off with familiarity_gate too.
    shared_picture_gate: bool = True
    # RET also retrieves when the VLM's entity tag names another entity than the image's nearest indexed
    # one: its own recognition and the index disagree about what the picture shows, so its closed-book
    # answer may be about the wrong entity (an emoji drawn in an icon set it never saw, tagged as a
    # look-alike; worldkb bench, seen questions: the three emoji whose closed-book answers RET trusted
    # wrongly all disagreed; over the bench, dev and probe sets it turned 5 answers right, none wrong).
    # Part of RET's image side: off with familiarity_gate too.
    agreement_gate: bool = True
    k_entities: int = 5
    k_docs: int = 5
    # Entity candidates: image→image score + tag_weight × P(entity tag) × the entity tag's text score.
    # The image is the stronger witness: a confident but wrong entity guess (an entity the VLM never
    # saw) outranked the image's own match at 0.5 (worldkb bench: top-1 0.26 vs 0.80 on Unseen-E).
    tag_weight: float = 0.1
    tag_needs_known_top: bool = True  # no entity-tag bonus when the image's best match is new to the VLM
    # The semantic tags drive retrieval (the entity tag's text match above, the attribute tags' words in
    # the section query and `section_boost`); False retrieves from the image and the question alone,
    # as the paper's naive RAG does (the benchmark's "no semantic tags" row).
    use_tags: bool = True
    # The category tag as a metadata filter: entities of a kind the VLM knows ("country", "emoji") but
    # gives less than this probability are not candidates (an emoji whose picture resembles a flag no
    # longer answers a question about "this country"). 0 turns it off; so does use_tags=False.
    kind_floor: float = 0.05
    # Sections whose heading is the one the attribute tag asks for ("area" → "area") get this bonus.
    section_boost: float = 0.3
    # Each place down the entity ranking costs this much, so the best entity's sections come first.
    entity_rank_penalty: float = 0.6
    # SRT keeps documents with P([Rel]) >= srt_threshold (at most srt_top). srt_order "retrieval" keeps
    # them in retrieval order (the reader prefers earlier documents), "relevance" re-ranks by P([Rel]).
    # On a worldkb dev set (seed 1, the benchmark's questions removed), re-ranking by P([Rel]) lost
    # ~10 points (look-alike entities' sections). Threshold 0.3 helped the reader of 2026-11-26 (0.647
    # vs 0.630 without SRT); a reader trained on more phrasings (2026-11-27, the first paraphrase set)
    # reads five documents as well as SRT picks them: +SRT 0.685 / 0.689 / 0.699 at 0.3 / 0.2 / 0.1
    # against naive RAG's 0.702, all three tags 0.692 / 0.696 / 0.702 (289 questions); the shipped
    # reader: all three 0.678 / 0.682 at 0.3 / 0.1 against naive RAG's 0.682.
    srt_threshold: float = 0.1
    srt_top: int = 3
    srt_order: str = "retrieval"
    mct_variant: str = "filter"  # filter | rerank | merge
    mct_threshold: float = 0.2  # filter keeps P(consistent) >= this (dev set: 0.5 lost 4.5 points, 0.2 none)
    # The image→image search embeds the query image as the mean of this many views (1 or 3,
    # index.embedders.query_views; None: the index's setting); the VLM reads the image's own embedding.
    query_views: int | None = None
    # Reading with the VLM's own knowledge: when its closed-book answer has at least this probability
    # and the first document read states it, that answer wins over the span read (an extractive reader
    # cannot otherwise answer from what it knows; on a question phrased in a way it never trained on it
    # often reads the wrong span of the right section). None turns it off. Worldkb dev set (289 questions,
    # the benchmark's removed): naive RAG 0.730 → 0.751 at 0.3 and 0.5, 0.747 at 0.7; 0.723 when any
    # document, not only the first, may state it (a look-alike's section names the guessed category).
    confirm_threshold: float | None = 0.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.srt_order not in ("retrieval", "relevance"):
            raise ValueError(f"unknown SRT order {self.srt_order!r}; choose retrieval or relevance")
        if self.mct_variant not in ("filter", "rerank", "merge"):
            raise ValueError(f"unknown MCT variant {self.mct_variant!r}; choose filter, rerank or merge")
        if not self.gamma >= 0.0:  # also NaN; above 1 the tag never asks for retrieval (the image side still may)
            raise ValueError(f"gamma, RET's threshold on P([Ret]), is a number ≥ 0 (0.4 by default), not {self.gamma}")
        if self.confirm_threshold is not None and not 0.0 <= self.confirm_threshold <= 1.0:
            raise ValueError(f"confirm_threshold is a probability in [0, 1] or None, not {self.confirm_threshold}")
        if self.query_views not in (None, 1, 3):
            raise ValueError(f"query_views is 1 (the image alone) or 3 (itself, zoomed out, central crop), "
                             f"not {self.query_views}")


def wanted_headings(attributes: list[str]) -> set[str]:
    """Section headings that answer the attribute tags: the worldkb question types' headings
    ("calling code" → "calling code", "currency" → "currencies"), else the attribute itself."""
    from rag.kbvqa.questions import TYPES

    out = set()
    for a in attributes:
        qt = TYPES.get(a.replace(" ", "_"))
        out.add((qt.heading if qt else a).lower())
    return out


@dataclass
class Citation:
    entity_key: str
    entity_name: str
    document_id: int
    heading: str
    text: str
    retrieval_score: float
    relevance: float | None = None
    consistency: float | None = None


@dataclass
class RAGAnswer:
    question: str
    answer: str
    mode: str
    retrieved: bool
    p_ret: float | None
    tags: SemanticTags
    citations: list[Citation] = field(default_factory=list)
    candidates: list[Citation] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    familiarity: float | None = None  # highest cosine to the entities the VLM trained on
    # The image's nearest indexed entity, unknown to the VLM, when that alone made RET retrieve (it is
    # looked up only when the tag and the familiarity would both skip).
    unknown_entity: str | None = None
    # The entities sharing the image's picture, when that alone made RET retrieve.
    shared_picture: list[str] | None = None
    # The image's nearest indexed entity, when the VLM's entity tag named another (RET then retrieves).
    disagreeing_entity: str | None = None
    # True when the answer is the VLM's closed-book one, stated by the first document read.
    confirmed: bool = False
    # What the VLM answers without documents, and its probability for that answer (RET's second witness;
    # None from a backend that gives none).
    closed_book: str | None = None
    closed_book_probability: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def image_side_reason(self, gamma: float) -> str | None:
        """Why RET's image side retrieved, for people (None when it did not decide: no retrieval, or RET's
        tag asked for it itself, P([Ret]) ≥ `gamma`)."""
        if not self.retrieved or self.p_ret is None or self.p_ret >= gamma:
            return None
        if self.unknown_entity:
            return f"the image is nearest to {self.unknown_entity}, which the reader has no facts about"
        if self.shared_picture:
            return f"{', '.join(self.shared_picture)} share this picture"
        if self.disagreeing_entity:
            return f"the reader tags {self.tags.entity}, the image is nearest to {self.disagreeing_entity}"
        return "an entity new to the reader" if self.familiarity is not None else None


class MMKBRAG:
    """One call answers one question about one image."""

    def __init__(self, vlm, reference: ReferenceIndex, config: RAGConfig | None = None) -> None:
        self.vlm, self.reference, self.config = vlm, reference, config or RAGConfig()
        self._entity_vecs: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, vlm: str | None = None, config: RAGConfig | None = None) -> MMKBRAG:
        from rag.vlm import load_vlm

        return cls(load_vlm(vlm), ReferenceIndex.from_settings(), config)

    def entity_vector(self, key: str) -> np.ndarray | None:
        """Mean image embedding of an entity's reference images (the document's [DIMG] token)."""
        if key not in self._entity_vecs:
            images = self.reference.store.entity_images([key]).get(key, [])
            if not images:
                return None
            try:  # the image embeddings inside the vectors the image index already holds
                vectors = self.reference.vector_index("image").reconstruct(np.array([i for i, _, _ in images]))
                vectors = self.reference.image_embedder().pooled(vectors)
            except (KeyError, RuntimeError):  # not indexed yet: embed them
                vectors = self.reference.image_embedder().encode_images([p for _, p, _ in images])
            v = vectors.mean(0)
            self._entity_vecs[key] = v / max(float(np.linalg.norm(v)), 1e-8)
        return self._entity_vecs[key]

    def image_gate(self, image_vec: np.ndarray, shared_picture: bool = True,
                   entity_tag: str | None = None) -> tuple[str | None, list[str] | None, str | None]:
        """RET's checks in the index, one image query and no documents: (the indexed entity nearest to
        the image when the VLM keeps its known entities and this is not one of them, the entities that
        share the nearest one's picture when there are several and `shared_picture`, the nearest entity
        when `entity_tag` names none of the entities tied nearest). A flag of an unseen country can look
        familiar (Colombia's stripes beside Venezuela's) while the index still tells them apart; a shared
        flag (the Netherlands, Caribbean Netherlands) no picture tells apart; an entity tag that names
        another entity than the index finds means the VLM's recognition and the index disagree.
        (None, None, None) without an image index too (the closed-book answer needs none)."""
        known = getattr(self.vlm, "known_entities", None)
        entity_tag = entity_tag or None  # an empty guess names nothing
        if not known and not shared_picture and entity_tag is None:
            return None, None, None
        try:
            hits = self.reference.search_embedding("image", image_vec, k=4 if shared_picture or entity_tag else 1)
        except IndexNotBuiltError:
            return None, None, None
        if not hits:
            return None, None, None
        unknown = hits[0].key if known and hits[0].key not in known else None
        top = round(hits[0].score, TIE_DECIMALS)
        tied = [h for h in hits if round(h.score, TIE_DECIMALS) == top]
        shared = [h.key for h in tied] if shared_picture and len(tied) > 1 else None
        named = {normalize_answer(h.name) for h in tied}
        disagrees = hits[0].key if entity_tag is not None and normalize_answer(entity_tag) not in named else None
        return unknown, shared, disagrees

    def nearest_unknown(self, image_vec: np.ndarray) -> str | None:
        """The indexed entity nearest to the image, when the VLM has no facts about it (`image_gate`)."""
        return self.image_gate(image_vec, shared_picture=False)[0]

    @staticmethod
    def confirmed(closed_answer: str, confidence: float | None, docs: list[Document],
                  threshold: float | None) -> bool:
        """Whether the closed-book answer, at least `threshold` probable, is stated by the first
        document (as a whole word sequence, case and punctuation aside). The document's mention of its
        own entity does not count unless the answer is that name: "heart" is not stated by "The Black
        heart suit emoji is in … subcategory game"."""
        if threshold is None or confidence is None or confidence < threshold or not closed_answer or not docs:
            return False
        answer, text = normalize_answer(closed_answer), f" {normalize_answer(docs[0].text)} "
        name = normalize_answer(docs[0].entity_name or "")
        if name and answer != name:
            text = text.replace(f" {name} ", " ", 1)
        return f" {answer} " in text

    def retrieve(self, image_vec: np.ndarray, question: str, tags: SemanticTags, k_docs: int,
                 config: RAGConfig | None = None) -> list[Citation]:
        """Candidate entities from the image and the tags, then their sections closest to the question
        (`config`: this call's settings, the pipeline's own by default)."""
        cfg = config or self.config
        if not cfg.use_tags:
            tags = SemanticTags()
        names: dict[str, str] = {}
        kinds = None  # every kind, unless the category tag rules some out
        if ruled_out := tags.ruled_out_kinds(cfg.kind_floor):
            kinds = [k for k in self.reference.store.kinds() if k not in ruled_out] or None
        image_hits = self.reference.search_embedding("image", image_vec, k=cfg.k_entities, kinds=kinds)
        # Best first; entities sharing a picture come tied, in order of prominence.
        fused = {h.key: round(h.score, TIE_DECIMALS) for h in image_hits}
        names.update((h.key, h.name) for h in image_hits)
        weight = cfg.tag_weight * (tags.entity_confidence or 1.0)  # backends without a confidence: 1
        # The entity tag names only entities the VLM trained on: when the image's best match is one it
        # never saw, the tag can only point elsewhere (Jordan's flag, best matched by Jordan, tagged
        # "Malawi", whose flag the reader knows).
        known = getattr(self.vlm, "known_entities", None)
        if cfg.tag_needs_known_top and known and image_hits and image_hits[0].key not in known:
            weight = 0.0
        tag_bonus: dict[str, float] = {}
        for query in tags.queries()[:1] if weight > 0 else []:
            for h in self.reference.search(text=query, k=cfg.k_entities, kinds=kinds):
                tag_bonus[h.key] = tag_bonus.get(h.key, 0.0) + weight * h.scores.get("text", 0.0)
                names[h.key] = h.name
        # Entities with the same picture (Norway, Svalbard, Bouvet Island) tie on the image, and the
        # entity tag, guessed from that same picture, cannot tell them apart either: the group shares
        # its best tag bonus, so the prominence order of the image ranking decides among them.
        groups: dict[float, list[str]] = {}
        for key, score in fused.items():
            groups.setdefault(score, []).append(key)
        for members in groups.values():
            best = max(tag_bonus.get(k, 0.0) for k in members)
            if best:
                tag_bonus.update((k, best) for k in members)
        for key, extra in tag_bonus.items():
            fused[key] = fused.get(key, 0.0) + extra
        keys = sorted(fused, key=lambda k: -fused[k])[:cfg.k_entities]  # stable: ties keep the image order
        q = " ".join([question, *tags.attributes])
        qvec = self.reference.text_embedder().encode([q])
        hits = self.reference.search_embedding("text", qvec, k=len(keys), keys=keys, per_modality=8 * len(keys))
        wanted = wanted_headings(tags.attributes)
        rank = {k: i for i, k in enumerate(keys)}
        docs = []
        for h in hits:
            for m in h.matches:
                bonus = cfg.section_boost if (m.heading or "").lower() in wanted else 0.0
                docs.append(Citation(h.key, h.name, m.id, m.heading or "", m.text or "",
                                     m.score + fused[h.key] + bonus - cfg.entity_rank_penalty * rank[h.key]))
        docs.sort(key=lambda c: -c.retrieval_score)
        return docs[:k_docs]

    def _documents(self, cites: list[Citation]) -> list[Document]:
        return [Document(c.document_id, c.entity_key, c.entity_name, c.text, c.heading, c.retrieval_score,
                         image_embedding=self.entity_vector(c.entity_key)) for c in cites]

    def __call__(self, image: Image.Image | str | Path, question: str, **overrides) -> RAGAnswer:
        cfg = replace(self.config, **overrides) if overrides else self.config
        if not question or not question.strip():
            raise ValueError("the question is empty")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t0
            now = time.perf_counter()
            timings[name] = round(1000 * (now - t0), 2)
            t0 = now

        img = open_rgb(image)
        vec = self.vlm.embed_images([img])[0]
        lap("embed_image")
        p_ret = None
        if hasattr(self.vlm, "inspect"):
            closed, confs, p_rets, tag_list = (self.vlm.inspect([vec], [question]) if cfg.ret_closed_book
                                               else self.vlm.inspect([vec], [question], calibrated=False))
            closed_answer, closed_conf, p_ret_value, tags = closed[0], float(confs[0]), float(p_rets[0]), tag_list[0]
        else:  # a backend that gives no closed-book probability: its answers are never confirmed
            closed_answer, closed_conf = self.vlm.answer([vec], [question])[0], None
            p_ret_value = float(self.vlm.retrieval_needed([vec], [question])[0])
            tags = self.vlm.semantic_tags([vec], [question])[0]
        lap("vlm_no_docs")
        if cfg.mode == "no-rag":
            return RAGAnswer(question, closed_answer, cfg.mode, False, None, tags, timings_ms=timings,
                             closed_book=closed_answer, closed_book_probability=closed_conf)
        fam = unknown = shared = disagrees = None
        views = cfg.query_views or getattr(getattr(self.reference, "settings", None), "query_views", 1)
        search_vec = None

        def search_vector() -> np.ndarray:  # embedded on first use: a skipped retrieval needs none
            nonlocal search_vec
            if search_vec is None:
                settings = getattr(self.reference, "settings", None)
                one_view_is_vec = views == 1 and not (settings and self.reference.image_embedder().layout_of(
                    settings.image_layout_weight))
                search_vec = vec if one_view_is_vec else self.reference.embed_image_queries([img], views)[0]
            return search_vec

        if cfg.mode == "mmkb-rag" and cfg.use_ret:
            p_ret = p_ret_value
            gate = self.vlm.new_entity([vec]) if cfg.familiarity_gate and hasattr(self.vlm, "new_entity") else None
            fam, new_entity = (float(gate[0][0]), bool(gate[1][0])) if gate else (None, False)
            skip = p_ret < cfg.gamma and not new_entity
            if skip and cfg.familiarity_gate:
                unknown, shared, disagrees = self.image_gate(
                    search_vector(), cfg.shared_picture_gate, tags.entity if cfg.agreement_gate else None)
                skip = unknown is None and shared is None and disagrees is None
            lap("ret_gate")
            if skip:
                return RAGAnswer(question, closed_answer, cfg.mode, False, p_ret, tags, timings_ms=timings,
                                 familiarity=fam, closed_book=closed_answer, closed_book_probability=closed_conf)
        cands = self.retrieve(search_vector(), question, tags, cfg.k_docs, cfg)
        lap("retrieve")
        docs = self._documents(cands)

        def answer_from(read: list[Document], cited: list[Citation]) -> RAGAnswer:
            """Read `read` (the closed-book answer when the first of them states it) and cite `cited`."""
            answer = self.vlm.read(vec, question, read)[0] if read else ""
            confirmed = self.confirmed(closed_answer, closed_conf, read, cfg.confirm_threshold)
            lap("read")
            return RAGAnswer(question, closed_answer if confirmed else answer or closed_answer, cfg.mode, True,
                             p_ret, tags, cited, cands, timings, familiarity=fam, unknown_entity=unknown,
                             shared_picture=shared, disagreeing_entity=disagrees, confirmed=confirmed,
                             closed_book=closed_answer, closed_book_probability=closed_conf)

        if cfg.mode == "naive-rag" or not (cfg.use_srt or cfg.use_mct):
            return answer_from(docs, cands)
        kept = list(range(len(docs)))
        if cfg.use_srt:
            rel = self.vlm.relevance([vec] * len(docs), [question] * len(docs), docs)
            for c, r in zip(cands, rel):
                c.relevance = float(r)
            if cfg.srt_order == "relevance":
                kept = sorted(kept, key=lambda i: -rel[i])
            passing = [i for i in kept if rel[i] >= cfg.srt_threshold][:cfg.srt_top]
            kept = passing or kept[:1]
            lap("srt")
        if cfg.use_mct and len(kept) > 1:
            cons = self.vlm.consistency(vec, question, [docs[i] for i in kept])
            for i, c in zip(kept, cons):
                cands[i].consistency = float(c)
            if cfg.mct_variant == "filter":
                kept = [i for i, c in zip(kept, cons) if c >= cfg.mct_threshold] or kept[:1]
            elif cfg.mct_variant == "rerank":
                kept = [i for _, i in sorted(zip(-np.asarray(cons), kept))]
            lap("mct")
        chosen = [docs[i] for i in kept]
        if cfg.mct_variant == "merge" and len(chosen) > 1:
            chosen = [replace(chosen[0], text=" ".join(d.text for d in chosen))]
        return answer_from(chosen, [cands[i] for i in kept])
