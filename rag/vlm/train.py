"""`mmkb train vlm`: fine-tune mmkb-reader on worldkb, self-label the MMKB-RAG tags, train them.

Stage "read": closed-book answers, entity/category/attribute tags from the image and question, and
extractive reading (SQuAD-2-style: a document that does not answer points at [CLS]).
Stage "label": the model's own answers make the tag labels (MMKB-RAG, arXiv 2504.10074, Sec. 3),
  on query views of the images that reading never trained on (a view it was trained on is answered
  from memory, so its labels would say [NoRet] where a new photo of the entity is answered wrong):
  RET  [NoRet] when its closed-book answer is right, else [Ret];
  SRT  [Rel] when its answer read from the document is right (this covers "wrong without it and
       right with it"), [NoRel] when it is wrong with the document (this covers "right without and
       wrong with");
  MCT  sets of two documents of the right entity (the answering section and another one) with
       documents of look-alike entities mixed in; a document is consistent when it agrees with the
       set's relevant ones, i.e. is about the same entity.
Stage "tags": the RET/SRT/MCT heads train on those labels while reading is rehearsed.
Saves a full training state every few minutes and resumes from it.
"""
from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from index.files import replace_dir
from index.training import other_run, say_spent, training_paths
from rag.kbvqa.datasets import answer_parts
from rag.kbvqa.questions import QUESTION_TYPES, TYPES, Question, answer_sentence, iter_questions, load_records
from rag.vlm.inputs import best_span, make_batch, span_targets
from rag.vlm.reader import DIMG, DOC, IMG, ReaderConfig, build_reader, save_reader
from rag.vlm.trim import FIRST_WORD

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT = Path(__file__).parent / "checkpoints" / "mmkb-reader"


@dataclass
class TrainConfig:
    out: str = str(CHECKPOINT)
    run_dir: str = str(ROOT / "runs" / "vlm")  # `train_vlm` puts both under MMKB_HOME unless told
    views_per_image: int = 3
    # Held-out query views per image, for self-labelling only: the closed-book answer on them is what
    # a new photo gets, not a memorised training view's.
    label_views_per_image: int = 2
    # Share of the query views first redrawn as a flat outlined icon (index.clip.augment.drawn), as the
    # embedder's training does: another icon set's emoji (OpenMoji) look like that, and the RET labels
    # must see the views on which the closed-book answer fails.
    drawn_fraction: float = 0.25
    read_steps: int = 900
    tag_steps: int = 300
    batch_closed: int = 48
    batch_read: int = 16
    batch_tags: int = 24
    lr_encoder: float = 5e-5
    lr_heads: float = 1e-3
    # Self-labelled questions, half about entities whose facts the closed-book heads learn and half
    # about calibration entities whose facts they never learn (RET must see both sides of its boundary).
    label_questions: int = 3600
    entity_limit: int | None = None  # tiny runs for tests
    seed: int = 0
    threads: int | None = None
    save_every_s: float = 240.0
    init_from: str | None = None  # warm start: an mmkb-reader export whose weights fit this data
    trim_common: int = FIRST_WORD  # export: the KB's pieces + those below this id (rag.vlm.trim); 0 keeps all
    notes: dict = field(default_factory=dict)


def parts(q: Question) -> list[str]:
    return answer_parts(q.answers[0]) if q.multi_answer else q.answers


def display_answer(q: Question) -> str:
    return ", ".join(parts(q)) if q.multi_answer else q.answers[0]


def answer_span(sentence: str, q: Question) -> tuple[int, int] | None:
    """Character span of the answer in its sentence (first to last part for multi-answers)."""
    found = [(sentence.find(a), len(a)) for a in parts(q) if a and sentence.find(a) >= 0]
    if not found:
        return None
    if q.multi_answer:
        return min(s for s, _ in found), max(s + n for s, n in found)
    s, n = found[0]
    return s, s + n


def is_correct(pred: str, q: Question) -> bool:
    from rag.kbvqa.datasets import KBVQAExample
    from rag.kbvqa.metrics import score_example

    ex = KBVQAExample(q.data_id, "", q.question, q.answers, q.answer_eval, "train", q.question_type,
                      q.entity_key, q.multi_answer)
    return score_example(pred, ex)


class Features:
    """Frozen image embeddings: augmented query views per entity and one reference vector per entity."""

    def __init__(self, records: list[dict], keys: set[str], cfg: TrainConfig, embedder_name: str) -> None:
        from index.clip.augment import query_view
        from index.clip.data import load_image
        from index.embedders import load_image_embedder, open_rgb
        from index.worldkb import DATA_DIR

        embedder = load_image_embedder(embedder_name)
        # Keyed by the weights too: retrained weights under the same name must not reuse old features.
        tag = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in embedder.fingerprint)
        cache = Path(cfg.run_dir) / (f"features-{tag}-{len(keys)}-{cfg.views_per_image}-d{cfg.drawn_fraction:g}"
                                     f"-h{cfg.label_views_per_image}-s{cfg.seed}.npz")
        if cache.exists():
            data = np.load(cache, allow_pickle=True)
            self.entity_vec, self.views = data["entity_vec"].item(), data["views"].item()
            self.label_views = data["label_views"].item()
            return
        # Two generators: the training views are the same whatever the number of held-out views.
        rng, held_rng = np.random.default_rng(cfg.seed), np.random.default_rng([cfg.seed, 1])
        self.entity_vec, self.views, self.label_views = {}, {}, {}
        for rec in tqdm(records, desc="embedding reference images and views"):
            imgs = [load_image(DATA_DIR / im["path"]) for im in rec["images"]]  # with alpha, for the views
            if not imgs:
                continue
            clean = embedder.encode_images([open_rgb(im) for im in imgs])
            v = clean.mean(0)
            self.entity_vec[rec["key"]] = v / max(np.linalg.norm(v), 1e-8)
            if rec["key"] in keys:
                views = [open_rgb(query_view(im, rng, cfg.drawn_fraction)) for im in imgs
                         for _ in range(cfg.views_per_image)]
                held = [open_rgb(query_view(im, held_rng, cfg.drawn_fraction)) for im in imgs
                        for _ in range(cfg.label_views_per_image)]
                vecs = embedder.encode_images(views + held)
                self.views[rec["key"]], self.label_views[rec["key"]] = vecs[:len(views)], vecs[len(views):]
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, entity_vec=np.array(self.entity_vec, dtype=object), views=np.array(self.views, dtype=object),
                 label_views=np.array(self.label_views, dtype=object))

    def view(self, key: str, rng: random.Random) -> np.ndarray:
        """A training view of the entity's images."""
        v = self.views[key]
        return v[rng.randrange(len(v))]

    def label_view(self, key: str, rng: random.Random) -> np.ndarray:
        """A held-out view (never trained on; the training views when there are none)."""
        v = self.label_views.get(key)
        return self.view(key, rng) if v is None or not len(v) else v[rng.randrange(len(v))]

    def neighbours(self, keys: list[str], k: int = 8) -> dict[str, list[str]]:
        """Look-alike entities of the same kind: the hard negatives for reading and tags."""
        out = {}
        for kind in {key.split(":")[0] for key in keys}:
            ks = [key for key in self.entity_vec if key.startswith(kind + ":")]
            m = np.stack([self.entity_vec[key] for key in ks])
            sims = m @ m.T
            np.fill_diagonal(sims, -1)
            top = np.argsort(-sims, axis=1)[:, :k]
            out.update({ks[i]: [ks[j] for j in top[i]] for i in range(len(ks))})
        return out


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        from index.config import get_settings

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)
        records, qs = self.questions(cfg)
        self.records = {r["key"]: r for r in records}
        self.closed = [q for q in qs if q.entity_split == "train"]
        self.calibration = [q for q in qs if q.entity_split == "calibration"]
        self.reading = qs
        keys = {q.entity_key for q in qs}
        from index.clip import canonical_spec

        self.image_embedder = canonical_spec(get_settings().image_embedder)  # absolute, as the export records it
        self.features = Features(records, keys, cfg, self.image_embedder)
        self.neigh = self.features.neighbours(sorted(self.features.entity_vec))
        self.by_type: dict[str, list[Question]] = {}
        for q in self.closed:
            self.by_type.setdefault(q.question_type, []).append(q)
        answers = sorted({display_answer(q) for q in self.closed})
        entities = sorted({q.entity_name for q in self.closed})
        categories = sorted({self._category(r) for r in records})
        attributes = [t.name for t in QUESTION_TYPES]
        self.rcfg = ReaderConfig(image_dim=len(next(iter(self.features.entity_vec.values()))),
                                 answers=answers, entities=entities, categories=categories, attributes=attributes,
                                 image_embedder=self.image_embedder)
        self.model, self.tok = build_reader(self.rcfg)
        self.label_ids = {name: {x: i for i, x in enumerate(getattr(self.rcfg, name))}
                          for name in ("answers", "entities", "categories", "attributes")}
        enc = [p for n, p in self.model.named_parameters() if n.startswith("encoder.")]
        heads = [p for n, p in self.model.named_parameters() if not n.startswith("encoder.")]
        self.opt = torch.optim.AdamW([{"params": enc, "lr": cfg.lr_encoder}, {"params": heads, "lr": cfg.lr_heads}],
                                     weight_decay=0.01)
        self.state = {"stage": "read", "step": 0, "labels": None, "log": []}
        self.started = time.time()

    @staticmethod
    def questions(cfg: TrainConfig) -> tuple[list[dict], list[Question]]:
        """The run's worldkb records and its training questions: about the entities whose facts the
        closed-book heads learn and about the calibration entities (read, never learnt closed-book)."""
        records = load_records()
        if cfg.entity_limit:
            rs = random.Random(cfg.seed)
            countries = [r for r in records if r["kind"] == "country"]
            emoji = [r for r in records if r["kind"] == "emoji"]
            records = rs.sample(countries, cfg.entity_limit // 2) + rs.sample(emoji, cfg.entity_limit // 2)
        return records, [q for q in iter_questions(records, phrasings="training") if q.entity_split != "unseen_entity"]

    @staticmethod
    def knowledge_sets(questions: list[Question]) -> tuple[set[str], set[str]]:
        """(entities whose facts the closed-book heads learn, calibration entities whose facts they never
        learn), from a run's training questions."""
        return ({q.entity_key for q in questions if q.entity_split == "train"},
                {q.entity_key for q in questions if q.entity_split == "calibration"})

    @staticmethod
    def _category(rec: dict) -> str:
        return "country" if rec["kind"] == "country" else f"emoji: {rec.get('category', '')}"

    # --- persistence ---------------------------------------------------------------------------

    def _state_path(self) -> Path:
        return Path(self.cfg.run_dir) / "last.pt"

    def save_state(self) -> None:
        path = self._state_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(), "state": self.state,
                    "rcfg": asdict(self.rcfg), "setup": self.setup(), "rng": self.rng.getstate()}, tmp)
        tmp.replace(path)

    def setup(self) -> dict:
        """What a run's state must match to be resumed, besides its labels (`rcfg`): the warm start,
        the seed, the views and the training questions (a run with other phrasings or another warm
        start is another run). The step counts may grow on a resume."""
        questions = hashlib.sha256("\n".join(sorted(f"{q.data_id}\t{q.question}" for q in self.reading)).encode())
        return {"init_from": str(Path(self.cfg.init_from).resolve()) if self.cfg.init_from else None,
                "seed": self.cfg.seed, "drawn_fraction": self.cfg.drawn_fraction,
                "label_questions": self.cfg.label_questions, "questions": questions.hexdigest()[:16]}

    def load_state(self) -> bool:
        path = self._state_path()
        if not path.exists():
            return False
        ckpt = torch.load(path, weights_only=False)
        if ckpt["rcfg"] != asdict(self.rcfg):
            raise other_run(path, "other data (another KB, --entity-limit, --seed or image embedder)")
        if ckpt.get("setup") != self.setup():
            differ = sorted(k for k, v in self.setup().items() if (ckpt.get("setup") or {}).get(k) != v)
            raise other_run(path, [{"init_from": "--init-from", "seed": "--seed", "drawn_fraction": "--drawn-fraction",
                                    "label_questions": "number of labelled questions",
                                    "questions": "training questions"}.get(k, k) for k in differ])
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["opt"])
        self.state, self._elapsed_before = ckpt["state"], ckpt["state"].get("elapsed", 0.0)
        self.rng.setstate(ckpt["rng"])
        return True

    # --- batches -------------------------------------------------------------------------------

    def _closed_batch(self):
        types = list(self.by_type)
        qs = [self.rng.choice(self.by_type[self.rng.choice(types)]) for _ in range(self.cfg.batch_closed)]
        images = np.stack([self.features.view(q.entity_key, self.rng) for q in qs])
        batch = make_batch(self.tok, self.rcfg, [q.question for q in qs], images)
        a, e, c, t = (self.label_ids[n] for n in ("answers", "entities", "categories", "attributes"))
        targets = {"answer": torch.tensor([a[display_answer(q)] for q in qs]),
                   "entity": torch.tensor([e[q.entity_name] for q in qs]),
                   "category": torch.tensor([c[self._category(self.records[q.entity_key])] for q in qs]),
                   "attribute": torch.tensor([t[q.question_type] for q in qs])}
        return batch, targets

    def _doc_for(self, q: Question, choice: str) -> tuple[str, str]:
        """(entity key, sentence) of a gold, look-alike or same-entity-other-section document."""
        qt = TYPES[q.question_type]
        if choice == "gold":
            return q.entity_key, answer_sentence(self.records[q.entity_key], qt)
        if choice == "lookalike":
            for key in self.neigh.get(q.entity_key, []):
                if key in self.records and (s := answer_sentence(self.records[key], qt)):
                    if self.rng.random() < 0.6:
                        return key, s
            key = self.rng.choice(list(self.records))
            return key, answer_sentence(self.records[key], qt) or self.records[key]["sections"][0]["text"]
        others = [s["text"] for s in self.records[q.entity_key]["sections"] if s["heading"] != qt.heading]
        return q.entity_key, self.rng.choice(others) if others else answer_sentence(self.records[q.entity_key], qt)

    def _read_batch(self):
        qs = [self.rng.choice(self.reading) for _ in range(self.cfg.batch_read)]
        docs, spans, dvecs = [], [], []
        for q in qs:
            r = self.rng.random()
            choice = "gold" if r < 0.5 else "lookalike" if r < 0.8 else "other"
            key, text = self._doc_for(q, choice)
            docs.append([text])
            dvecs.append([self.features.entity_vec.get(key)])
            span = answer_span(text, q) if key == q.entity_key and choice == "gold" else None
            spans.append(None if span is None else (span[0] + len(f"{DIMG} "), span[1] + len(f"{DIMG} ")))
        images = np.stack([self.features.view(q.entity_key, self.rng) for q in qs])
        batch = make_batch(self.tok, self.rcfg, [q.question for q in qs], images, docs, dvecs)
        return batch, span_targets(batch, spans)

    def _read_loss(self) -> tuple[torch.Tensor, dict]:
        batch, targets = self._closed_batch()
        h = self.model.encode(**batch.model_inputs())
        out = self.model.closed_book(h)
        lc = (F.cross_entropy(out["answer"], targets["answer"]) + 0.5 * F.cross_entropy(out["entity"], targets["entity"])
              + 0.25 * F.cross_entropy(out["category"], targets["category"])
              + 0.25 * F.cross_entropy(out["attribute"], targets["attribute"]))
        acc = (out["answer"].argmax(-1) == targets["answer"]).float().mean().item()
        batch, (s, e) = self._read_batch()
        h = self.model.encode(**batch.model_inputs())
        start, end = self.model.span_logits(h)
        mask = batch.attention_mask == 0
        start, end = start.masked_fill(mask, -1e4), end.masked_fill(mask, -1e4)
        ls = (F.cross_entropy(start, s) + F.cross_entropy(end, e)) / 2
        return lc + ls, {"closed": lc.item(), "span": ls.item(), "cb_acc": acc}

    # --- stages --------------------------------------------------------------------------------

    def _loop(self, stage: str, total: int, loss_fn) -> None:
        if self.state["stage"] != stage:
            return
        self.model.train()
        bar = tqdm(range(self.state["step"], total), desc=f"train vlm: {stage}", initial=self.state["step"], total=total)
        last_save = time.time()
        for step in bar:
            loss, info = loss_fn()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.state["step"] = step + 1
            bar.set_postfix({k: f"{v:.3f}" for k, v in info.items()})
            if step % 50 == 0:
                self.state["log"].append({"stage": stage, "step": step, **info})
            if time.time() - last_save > self.cfg.save_every_s:
                self._tick()
                self.save_state()
                last_save = time.time()
        self.state.update(stage={"read": "label", "tags": "done"}[stage], step=0)
        self._tick()
        self.save_state()

    def _tick(self) -> None:
        now = time.time()
        self.state["elapsed"] = self.state.get("elapsed", 0.0) + now - self.started
        self.started = now

    @torch.inference_mode()
    def self_label(self) -> None:
        """Stage "label": RET/SRT/MCT labels from the model's own answers."""
        if self.state["stage"] != "label":
            return
        self.model.eval()
        half = self.cfg.label_questions // 2
        pool = (self.rng.sample(self.calibration, min(len(self.calibration), half))
                + self.rng.sample(self.closed, min(len(self.closed), self.cfg.label_questions - half)))
        self.rng.shuffle(pool)
        ret, srt, mct = [], [], []
        skip = {self.tok.convert_tokens_to_ids(t) for t in (IMG, DIMG, DOC)} | {
            self.tok.sep_token_id, self.tok.cls_token_id, self.tok.pad_token_id}
        for i in tqdm(range(0, len(pool), 32), desc="self-labelling"):
            qs = pool[i:i + 32]
            views = [self.features.label_view(q.entity_key, self.rng) for q in qs]
            batch = make_batch(self.tok, self.rcfg, [q.question for q in qs], np.stack(views))
            pred = self.model.closed_book(self.model.encode(**batch.model_inputs()))["answer"].argmax(-1).tolist()
            for q, v, p in zip(qs, views, pred):
                right_without = is_correct(self.rcfg.answers[p], q)
                ret.append((q.data_id, q.question, v, 0 if right_without else 1))
                cands = [self._doc_for(q, c) for c in ("gold", "lookalike", "lookalike", "other")]
                cb = make_batch(self.tok, self.rcfg, [q.question] * len(cands), np.stack([v] * len(cands)),
                                [[t] for _, t in cands], [[self.features.entity_vec.get(k)] for k, _ in cands])
                start, end = self.model.span_logits(self.model.encode(**cb.model_inputs()))
                for j, (key, text) in enumerate(cands):
                    ans, score = best_span(cb, j, start[j].numpy(), end[j].numpy(), self.rcfg.max_answer_tokens, skip)
                    right_with = score > 0 and is_correct(ans, q)
                    srt.append((q.question, v, key, text, 1 if right_with else 0))
                docs = cands[:1] + [(q.entity_key, t) for t in self._other_sections(q, 1)] + cands[1:3]
                self.rng.shuffle(docs)
                mct.append((q.question, v, docs, [1 if k == q.entity_key else 0 for k, _ in docs]))
        self.state["labels"] = {"ret": ret, "srt": srt, "mct": mct}
        stats = {"ret_share": float(np.mean([r[-1] for r in ret])), "rel_share": float(np.mean([s[-1] for s in srt])),
                 "n_ret": len(ret), "n_srt": len(srt), "n_mct": len(mct),
                 "known_share": float(np.mean([q.entity_split == "train" for q in pool]))}
        self.state["label_stats"] = stats
        print("self-labelled:", stats)
        self.state.update(stage="tags", step=0)
        self.save_state()

    def _other_sections(self, q: Question, n: int) -> list[str]:
        heading = TYPES[q.question_type].heading
        others = [s["text"] for s in self.records[q.entity_key]["sections"] if s["heading"] != heading]
        return self.rng.sample(others, min(n, len(others)))

    def _tag_loss(self) -> tuple[torch.Tensor, dict]:
        labels, n = self.state["labels"], self.cfg.batch_tags
        ret = [self.rng.choice(labels["ret"]) for _ in range(n)]
        b = make_batch(self.tok, self.rcfg, [r[1] for r in ret], np.stack([r[2] for r in ret]))
        lr = F.cross_entropy(self.model.ret_logits(self.model.encode(**b.model_inputs())),
                             torch.tensor([1 - r[3] for r in ret]))  # index 0 = [Ret]
        srt = [self.rng.choice(labels["srt"]) for _ in range(n)]
        b = make_batch(self.tok, self.rcfg, [s[0] for s in srt], np.stack([s[1] for s in srt]), [[s[3]] for s in srt],
                       [[self.features.entity_vec.get(s[2])] for s in srt])
        ls = F.cross_entropy(self.model.rel_logits(self.model.encode(**b.model_inputs())),
                             torch.tensor([1 - s[4] for s in srt]))
        mct = [self.rng.choice(labels["mct"]) for _ in range(n // 3)]
        b = make_batch(self.tok, self.rcfg, [m[0] for m in mct], np.stack([m[1] for m in mct]),
                       [[t for _, t in m[2]] for m in mct],
                       [[self.features.entity_vec.get(k) for k, _ in m[2]] for m in mct], mode="set")
        logits = self.model.mct_logits(self.model.encode(**b.model_inputs()), b.input_ids)
        target = torch.tensor([1 - y for m in mct for y in m[3]][:len(logits)])
        lm = F.cross_entropy(logits, target)
        rehearse, info = self._read_loss()
        return lr + ls + lm + 0.5 * rehearse, {"ret": lr.item(), "srt": ls.item(), "mct": lm.item(), **info}

    def warm_start(self, path: Path) -> None:
        """Start from an earlier export (e.g. after the image embedder was retrained). Its encoder may
        have a trimmed vocabulary: each kept row goes back to its token's place, the others keep the
        pretrained rows. Heads are taken where their shapes fit this data."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(str(Path(path) / "encoder"), dtype=torch.float32)
        if getattr(encoder.config, "mmkb_trimmed", None):  # its rows go back to their tokens' places
            from transformers import AutoTokenizer

            from rag.vlm.trim import expand

            encoder, _ = expand(encoder, AutoTokenizer.from_pretrained(str(Path(path) / "encoder")),
                                self.rcfg.text_model)
        self.model.encoder.load_state_dict(encoder.state_dict())
        heads = {k: v.float() for k, v in load_file(str(Path(path) / "heads.safetensors")).items()}
        mine = self.model.state_dict()
        fit = {k: v for k, v in heads.items() if k in mine and mine[k].shape == v.shape}
        self.model.load_state_dict(fit, strict=False)
        print(f"warm start from {path}: {len(fit)}/{len(heads)} head tensors fit")

    def run(self, resume: bool = True) -> Path:
        if resume and self.load_state():
            print(f"resumed at stage {self.state['stage']} step {self.state['step']}")
            if self.state["stage"] == "done":
                say_spent(self._state_path(), "every stage (reading, self-labelling, tags)",
                          "--run-dir FOLDER starts another run beside it")
        elif self.cfg.init_from:
            self.warm_start(Path(self.cfg.init_from))
        self._loop("read", self.cfg.read_steps, self._read_loss)
        self.self_label()
        for g in self.opt.param_groups:
            g["lr"] = g["lr"] * 0.5
        self._loop("tags", self.cfg.tag_steps, self._tag_loss)
        return self.export()

    def export(self) -> Path:
        out = Path(self.cfg.out)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a crashed export's files must not ship with this one
        save_reader(self.model, self.tok, tmp)
        if self.cfg.trim_common:
            from rag.vlm.trim import trim_checkpoint

            trim_checkpoint(tmp, self.cfg.trim_common)
        from rag.vlm import familiarity

        built = familiarity.build(self.features, *self.knowledge_sets(self.reading), seed=self.cfg.seed)
        fam_stats = built[2] if built else None
        if built:
            familiarity.save(tmp, *built)
        ret_stats = self._calibrate_ret(tmp)
        card = {"model": "mmkb-reader", "text_encoder": self.rcfg.text_model, "image_embedder": self.image_embedder,
                "train_config": asdict(self.cfg), "label_stats": self.state.get("label_stats"),
                "train_minutes": round(self.state.get("elapsed", 0.0) / 60, 1),
                "answers": len(self.rcfg.answers), "entities": len(self.rcfg.entities), "familiarity": fam_stats,
                "ret_calibration": ret_stats, "last_log": self.state["log"][-3:]}
        (tmp / "training.json").write_text(json.dumps(card, indent=1, default=str))
        earlier = Path(self.cfg.init_from) / "MODEL_CARD.md" if self.cfg.init_from else out / "MODEL_CARD.md"
        (tmp / "MODEL_CARD.md").write_text(self._model_card(card, tmp, earlier))
        return replace_dir(tmp, out)

    def _calibrate_ret(self, export: Path) -> dict:
        """Fit RET's reading of the closed-book probability (rag.vlm.ret_calibration) for the export
        being written; {"skipped": why} when the fit is not one to ship (a tiny run's few self-labels)
        or the self-labelling failed: the export then reads the RET head alone."""
        from rag.vlm import ret_calibration
        from rag.vlm.reader_vlm import ReaderVLM

        try:
            cal, stats = ret_calibration.build(ReaderVLM.load(export), self.reading, self.records,
                                               self.cfg.label_questions, self.cfg.seed, self.cfg.drawn_fraction)
        except (ValueError, OSError) as err:
            print(f"RET calibration skipped: {err}")
            return {"skipped": str(err)}
        ret_calibration.save(export, cal, stats)
        return {**asdict(cal), **stats}

    def _model_card(self, card: dict, export: Path, earlier: Path) -> str:
        """What this export is, and the card of the model it replaces (a warm start's history) below."""
        c = self.cfg
        trimmed = json.loads((export / "encoder" / "config.json").read_text()).get("mmkb_trimmed")
        lines = [
            "# mmkb-reader", "",
            f"Exported by `mmkb train vlm` ({time.strftime('%Y-%m-%d')}): {c.read_steps} reading steps, "
            f"self-labelling of {c.label_questions} questions, {c.tag_steps} tag steps, "
            f"{card['train_minutes']} min of training; image embedder `{self.image_embedder}`"
            + (f"; warm start from `{c.init_from}`" if c.init_from else "") + ".",
            f"- Command: `mmkb train vlm --read-steps {c.read_steps} --tag-steps {c.tag_steps} "
            f"--trim-common {c.trim_common} --drawn-fraction {c.drawn_fraction} --seed {c.seed}"
            + (f" --init-from {c.init_from}" if c.init_from else "")
            + (f" --threads {c.threads}" if c.threads else "") + f" --out {self.cfg.out}`",
            f"- Self-labels: {card['label_stats']}",
            f"- Familiarity (`rag.vlm.familiarity`, the image side of RET): {card.get('familiarity')}",
            f"- RET calibration (`rag.vlm.ret_calibration`, the closed-book probability as RET's second witness): "
            f"{card.get('ret_calibration')}",
            f"- Vocabulary: {trimmed['to']} of {trimmed['from']} pieces (`rag.vlm.trim`, common {trimmed['common']})"
            if trimmed else "- Vocabulary: the text encoder's full vocabulary",
            "- Metrics: `python benchmarks/kbvqa.py` (README, benchmarks/results/kbvqa.md)", ""]
        if earlier.is_file():
            body = earlier.read_text().split("\n", 1)
            lines += ["## Earlier card (the model this export replaced)", "",
                      (body[1] if len(body) > 1 else "").replace("\n## ", "\n### ").replace("\n# ", "\n### ")]
        return "\n".join(lines) + "\n"


def export_setup(export: Path) -> tuple[dict, TrainConfig]:
    """An mmkb-reader export's `training.json` and the training config it records, after checking that
    the configured image embedder is the one the export reads (for the steps that add to an export
    after training: rag.vlm.familiarity, rag.vlm.ret_calibration)."""
    from index.config import get_settings

    card = json.loads((Path(export) / "training.json").read_text())
    from index.clip import canonical_spec

    embedder = card["image_embedder"]
    if canonical_spec(embedder) != canonical_spec(get_settings().image_embedder):
        raise ValueError(f"{export} reads {embedder} embeddings but the configured image embedder is "
                         f"{get_settings().image_embedder}: set MMKB_IMAGE_EMBEDDER={embedder}")
    return card, TrainConfig(**{k: v for k, v in card["train_config"].items() if k in TrainConfig.__dataclass_fields__})


def train_vlm(read_steps: int = 900, tag_steps: int = 300, out: str | Path | None = None,
              run_dir: str | Path | None = None, entity_limit: int | None = None, threads: int | None = None,
              resume: bool = True, seed: int = 0, init_from: str | None = None, trim_common: int = FIRST_WORD,
              drawn_fraction: float = 0.25) -> Path:
    """Train mmkb-reader and export it to `out` (default MMKB_HOME/models/mmkb-reader; the shipped one is
    rag/vlm/checkpoints/mmkb-reader), its resumable state in `run_dir` (default MMKB_HOME/runs/mmkb-reader).
    `init_from` is an export's folder, or `mmkb-reader` for the shipped one."""
    if read_steps < 1 or tag_steps < 1 or (entity_limit is not None and entity_limit < 2):
        raise ValueError(f"--read-steps and --tag-steps must be at least 1 and --entity-limit at least 2 "
                         f"(got {read_steps}, {tag_steps}, {entity_limit})")
    if init_from == CHECKPOINT.name and not Path(init_from).exists():
        init_from = str(CHECKPOINT)
    if init_from and not (Path(init_from) / "encoder").is_dir():
        raise ValueError(f"--init-from {init_from}: not an mmkb-reader export (no encoder/ folder); give the folder "
                         "`mmkb train vlm` wrote, or mmkb-reader for the shipped one")
    out, run_dir = training_paths(CHECKPOINT.name, out, run_dir)
    cfg = TrainConfig(out=str(out), run_dir=str(run_dir), read_steps=read_steps, tag_steps=tag_steps,
                      entity_limit=entity_limit, threads=threads, seed=seed, init_from=init_from,
                      trim_common=trim_common, drawn_fraction=drawn_fraction)
    return Trainer(cfg).run(resume)


if __name__ == "__main__":
    import typer

    typer.run(train_vlm)
