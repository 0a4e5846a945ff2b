"""Knowledge-grounded generation: the entities a prompt names → reference images from the index →
a caption the DiT was trained on.

"the flag of Tuvalu on a green background" names Tuvalu; the shipped DiT draws an entity it is only
told the name of 2% of the time (benchmarks/results/generation.md, `seen_t2i_by_name`) and copies a
reference image 90% of the time, so every entity a prompt names is retrieved ([Ret] for each
mention, ARCHITECTURE.md "Knowledge-grounded generation"), one reference image is kept per entity
in a rendering the DiT trained on, and the prompt is rewritten in the DiT's caption grammar:
one mention becomes "the flag" / "the emoji", two or three become "the first", "the second", … in
the order they are named (`generator.scenes`, the composition captions).

Mentions are found in three ways, longest first:
- a country's name, or an alias of four letters or more ("United States of America"), anywhere; its
  three-letter code in capitals beside "flag" ("the flag of the USA");
- an emoji's name or short name followed by "emoji" ("the red apple emoji"): emoji names are common
  words ("Man", "Star"), so the word "emoji" has to say one is meant, and the name has to be the whole
  phrase ("the smiling cat emoji" is searched, not read as "Cat");
- "the flag of X" / "X flag" / "X emoji" whose X names nothing exactly: X goes to the index's text
  search (FAISS over the sections) restricted to that kind, and its best entity is kept when its
  score reaches `search_threshold` (0.5; on the starter KB "pizza slice" → Slice of pizza 0.68,
  "smiling cat" → Grinning cat face with smiling eyes 0.70 and "unicorn head" → Unicorn face 0.56
  pass, "Atlantis" → Saint Helena 0.44 and "laptop" → Notebook 0.41 do not); a demonym ("the
  Japanese flag") names its country.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from index.search import IndexNotBuiltError, ReferenceIndex

# Renderings the shipped DiTs trained on, best first (generator.scenes.ASSET_STYLES): a reference in
# another style still conditions the DiT, so any image is used when none of these exists.
PREFERRED_STYLES = ("flag", "emoji-google", "emoji-twitter")
MAX_MENTIONS = 3  # the DiT takes at most three references (generator.pipeline.MAX_REFS)
ORDINALS = ("first", "second", "third")
_WORD = re.compile(r"[\w'’-]+")
_ARTICLES = {"the", "a", "an"}
_LONGEST = 14  # words in the longest name matched (emoji names run to 11)


@dataclass
class Mention:
    """One entity a prompt names: its words in the prompt, the entity, and its reference image."""

    text: str  # the prompt's words for it, e.g. "the flag of Tuvalu"
    start: int  # character offsets of `text` in the prompt
    end: int
    key: str
    name: str
    kind: str
    how: str  # "name", "alias", "demonym" or "search"
    score: float  # 1.0 for a name or alias; the text index's score for a searched one
    reference: str | None = None  # the reference image's path
    style: str | None = None


@dataclass
class GroundedPrompt:
    """A prompt, the caption the DiT gets, and the references that stand for what it names."""

    prompt: str
    caption: str
    mentions: list[Mention] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # "X flag"/"X emoji" phrases nothing matched

    @property
    def references(self) -> list[str]:
        """One image per entity, in the order the entities are first named."""
        return list({m.key: m.reference for m in self.mentions if m.reference}.values())

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "caption": self.caption, "mentions": [asdict(m) for m in self.mentions],
                "unresolved": self.unresolved}


def _norm(text: str) -> str:
    return " ".join(w.lower().replace("’", "'") for w in _WORD.findall(text))


class NameTable:
    """Normalised names → entities, from the store (built once per store; cheap: one query)."""

    def __init__(self, rows: list[tuple[str, str, str, list[str], dict]]) -> None:
        self.countries: dict[str, tuple[str, str, str, str]] = {}  # form → (key, name, kind, how)
        self.emoji: dict[str, tuple[str, str, str, str]] = {}
        self.demonyms: dict[str, tuple[str, str, str, str]] = {}
        self.codes: dict[str, tuple[str, str, str, str]] = {}  # "USA", "GBR": as written, beside "flag" only
        self.prominence: dict[str, float] = {}
        for key, kind, name, aliases, attrs in rows:
            facts = attrs.get("facts") or {}
            self.prominence[key] = float(attrs.get("prominence") or facts.get("population") or 0)
            table = self.emoji if kind == "emoji" else self.countries
            forms = [(name, "name")] + [(a, "alias") for a in aliases if self._usable_alias(a, kind)]
            for form, how in forms:
                self._add(table, _norm(form), (key, name, kind, how))
            if kind == "country":
                for code in aliases:
                    if len(code) >= 3 and code.isalpha() and code.isupper():
                        self._add(self.codes, code, (key, name, kind, "code"))
            if kind == "country" and isinstance(facts.get("demonym"), str):
                self._add(self.demonyms, _norm(facts["demonym"]), (key, name, kind, "demonym"))

    def _add(self, table: dict, form: str, entry: tuple[str, str, str, str]) -> None:
        """Keep the first entity for a form, unless a later one is more prominent (Georgia the country
        before any region of that name)."""
        if not form:
            return
        old = table.get(form)
        if old is None or (old[3] != "name" and entry[3] == "name") or (
                old[3] == entry[3] and self.prominence.get(entry[0], 0) > self.prominence.get(old[0], 0)):
            table[form] = entry

    @staticmethod
    def _usable_alias(alias: str, kind: str) -> bool:
        """Country codes ("US", "TV", "flag-tv") read as ordinary words in a prompt; emoji short names
        are only matched before "emoji", so short ones may stay."""
        if kind == "emoji":
            return len(alias) >= 2
        return len(alias) >= 4 and not alias.isupper() and not alias.startswith("flag-")


def _entity_phrase(words: list[re.Match], i: int, j: int) -> tuple[int, int]:
    """Grow the words i..j-1 naming an entity to the phrase that names its picture: a leading article,
    "flag of" before it, "flag"/"emoji" or "'s flag" after it."""
    low = [w.group().lower() for w in words]
    if j < len(low) and low[j] in ("flag", "emoji"):
        j += 1
    k = i - 1 if i >= 1 and low[i - 1] in _ARTICLES else i  # "the flag of the United Kingdom"
    if k >= 2 and low[k - 1] == "of" and low[k - 2] == "flag":
        i = k - 2
    if i >= 1 and low[i - 1] in _ARTICLES:
        i -= 1
    return i, j


def find_mentions(prompt: str, table: NameTable, reference: ReferenceIndex | None = None,
                  search_threshold: float = 0.5) -> tuple[list[Mention], list[str]]:
    """The entities `prompt` names, in prompt order, and the "X flag"/"X emoji" phrases nothing matched."""
    words = list(_WORD.finditer(prompt))
    low = [_norm(w.group()) for w in words]
    taken = [False] * len(words)
    found: list[Mention] = []

    def claim(i: int, j: int, entry: tuple[str, str, str, str], score: float = 1.0) -> None:
        a, b = _entity_phrase(words, i, j)
        for t in range(a, b):
            taken[t] = True
        key, name, kind, how = entry
        found.append(Mention(prompt[words[a].start():words[b - 1].end()], words[a].start(), words[b - 1].end(),
                             key, name, kind, how, score))

    for n in range(min(_LONGEST, len(words)), 0, -1):  # longest names first: "South Sudan" before "Sudan"
        for i in range(len(words) - n + 1):
            j = i + n
            if any(taken[i:j]):
                continue
            form = " ".join(low[i:j])
            possessive = form.endswith("'s") and form[:-2] in table.countries
            before_emoji = j < len(low) and low[j] == "emoji"
            before_flag = j < len(low) and low[j] == "flag"
            if before_emoji and form in table.emoji:
                if i > 0 and not taken[i - 1] and low[i - 1] not in _GRAMMAR:
                    continue  # "the smiling cat emoji" is not the cat emoji: the whole phrase is searched
                claim(i, j, table.emoji[form])
            elif n == 1 and words[i].group() in table.codes and (before_flag or _after_flag_of(low, i)):
                claim(i, j, table.codes[words[i].group()])  # "the flag of the USA", "the GBR flag"
            elif form in table.countries or possessive:
                claim(i, j, table.countries[form[:-2] if possessive else form])
            elif before_flag and form in table.demonyms:
                claim(i, j, table.demonyms[form])
    unresolved = []
    if reference is not None:
        for i, w in enumerate(low):  # "X flag" / "X emoji" / "flag of X" that named nothing exactly
            if taken[i] or w not in ("flag", "emoji"):
                continue
            kind = "country" if w == "flag" else "emoji"
            if w == "flag" and i + 1 < len(low) and low[i + 1] == "of":
                start = i + 3 if i + 2 < len(low) and low[i + 2] in _ARTICLES else i + 2
                span = _free_words(low, taken, start, +1)
            else:
                span = _free_words(low, taken, i - 1, -1)
            if span is None:
                continue
            a, b = span
            query = " ".join(low[a:b])
            try:
                hits = reference.search(text=query, kinds=[kind], k=1)
            except IndexNotBuiltError:  # names still resolve; searching waits for `mmkb index build`
                hits = []
            if hits and hits[0].score >= search_threshold:
                h = hits[0]
                claim(a, b, (h.key, h.name, h.kind, "search"), round(float(h.score), 3))
            else:
                unresolved.append(prompt[words[min(a, i)].start():words[max(b, i + 1) - 1].end()])
    found.sort(key=lambda m: m.start)
    return found, unresolved


def _after_flag_of(low: list[str], i: int) -> bool:
    k = i - 1 if i >= 1 and low[i - 1] in _ARTICLES else i
    return k >= 2 and low[k - 1] == "of" and low[k - 2] == "flag"


# Words of the DiT's caption grammar (positions, colours, joins) end a searched name.
_GRAMMAR = {"on", "at", "in", "and", "with", "next", "to", "of", "the", "a", "an", "background", "left", "right",
            "top", "bottom", "center", "centre", "beside", "above", "below", "flag", "emoji"}


def _free_words(low: list[str], taken: list[bool], start: int, step: int, most: int = 4) -> tuple[int, int] | None:
    """The run of up to `most` unclaimed, non-grammar words from `start` going `step` (±1)."""
    idx = []
    t = start
    while 0 <= t < len(low) and len(idx) < most and not taken[t] and low[t] not in _GRAMMAR:
        idx.append(t)
        t += step
    if not idx:
        return None
    return min(idx), max(idx) + 1


def caption_for(prompt: str, mentions: list[Mention]) -> str:
    """The prompt with each mention replaced in the DiT's grammar: "the flag"/"the emoji" when one
    entity is named, "the first"/"the second"/"the third" (by first mention) when several are."""
    order = list(dict.fromkeys(m.key for m in mentions))
    out, last = [], 0
    for m in mentions:
        if len(order) == 1:
            stand_in = "the flag" if m.kind == "country" else "the emoji"
        else:
            stand_in = f"the {ORDINALS[order.index(m.key)]}"
        out += [prompt[last:m.start], stand_in]
        last = m.end
    out.append(prompt[last:])
    return re.sub(r"\s+", " ", "".join(out)).strip()


class Grounder:
    """Prompt → GroundedPrompt against one reference index."""

    def __init__(self, reference: ReferenceIndex, search_threshold: float = 0.5) -> None:
        self.reference, self.search_threshold = reference, search_threshold
        self._table: NameTable | None = None

    @property
    def table(self) -> NameTable:
        if self._table is None:
            self._table = NameTable(self.reference.store.names())
        return self._table

    def __call__(self, prompt: str) -> GroundedPrompt:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        mentions, unresolved = find_mentions(prompt, self.table, self.reference, self.search_threshold)
        keys = list(dict.fromkeys(m.key for m in mentions))  # one reference per entity, however often named
        if len(keys) > MAX_MENTIONS:
            names = ", ".join(dict.fromkeys(m.name for m in mentions))
            raise ValueError(f"the prompt names {len(keys)} entities ({names}); the generator composes at most "
                             f"{MAX_MENTIONS}: name fewer")
        images = self.reference.store.entity_images(keys)
        for m in mentions:
            ranked = sorted(images.get(m.key, []), key=lambda c: PREFERRED_STYLES.index(c[2])
                            if c[2] in PREFERRED_STYLES else len(PREFERRED_STYLES))
            if ranked:
                m.reference, m.style = str(ranked[0][1]), ranked[0][2]
        kept = [m for m in mentions if m.reference]
        unresolved += [f"{m.text} ({m.key} has no image)" for m in mentions if not m.reference]
        return GroundedPrompt(prompt, caption_for(prompt, kept) if kept else prompt, kept, unresolved)


def generate_grounded(pipe, grounder: Grounder, prompt: str, **kwargs):
    """Ground `prompt` in the index and generate from the caption and its references: a
    `generator.pipeline.GenerationResult` whose provenance also holds the grounding."""
    grounded = grounder(prompt)
    result = pipe(grounded.caption, refs=grounded.references, **kwargs)
    named = list({m.key: m for m in grounded.mentions}.values())
    for used, m in zip(result.provenance["references"], named):  # the same order
        used.update(entity=m.key, name=m.name)
    result.provenance.update(prompt=prompt, caption=grounded.caption, grounding=grounded.to_dict())
    return result
