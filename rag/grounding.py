"""Knowledge-grounded generation: the entities a prompt names → reference images from the index →
a caption the DiT was trained on.

"the flag of Tuvalu on a green background" names Tuvalu; the shipped DiT draws an entity it is only
told the name of 2% of the time (benchmarks/results/generation.md, `seen_t2i_by_name`) and copies a
reference image 90% of the time, so every entity a prompt names is retrieved ([Ret] for each
mention, ARCHITECTURE.md "Knowledge-grounded generation"), one reference image is kept per entity
in a rendering the DiT trained on, and the prompt is rewritten in the DiT's caption grammar:
one mention becomes "the flag" / "the emoji", two or three become "the first", "the second", … in
the order they are named (`generator.scenes`, the composition captions).

Mentions are found in these ways, longest names first:
- a country's name, or an alias of four letters or more ("United States of America"), anywhere; its
  three-letter code in capitals beside "flag" ("the flag of the USA");
- an emoji's name or short name followed by "emoji" ("the red apple emoji"): emoji names are common
  words ("Man", "Star"), so the word "emoji" has to say one is meant, and the name has to be the whole
  phrase ("the smiling cat emoji" is searched, not read as "Cat");
- a demonym before "flag" ("the Japanese flag") names its country;
- "the flag of X" / "X flag" / "X emoji" whose X names nothing exactly: X goes to the index's text
  search (FAISS over the sections) restricted to that kind, and its best entity is kept when its
  score reaches `search_threshold` (0.5; on the starter KB "pizza slice" → Slice of pizza 0.68,
  "smiling cat" → Grinning cat face with smiling eyes 0.70 and "unicorn head" → Unicorn face 0.56
  pass, "Atlantis" → Saint Helena 0.44 and "laptop" → Notebook 0.41 do not).
A name spans punctuation only where the name has it ("Man: red hair", not "South, Sudan"), and a
phrase never grows into another mention's words.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from generator.scenes import COLOURS
from index.search import IndexNotBuiltError, ReferenceIndex

# Renderings the shipped DiTs trained on, best first (generator.scenes.ASSET_STYLES): a reference in
# another style still conditions the DiT, so any image is used when none of these exists.
PREFERRED_STYLES = ("flag", "emoji-google", "emoji-twitter")
MAX_MENTIONS = 3  # the DiT takes at most three references (generator.pipeline.MAX_REFS), an edited image one
ORDINALS = ("first", "second", "third")
_WORD = re.compile(r"\w(?:[\w'’-]*\w)?")  # quotes around a word are not part of it
_ARTICLES = {"the", "a", "an"}
_QUOTES = " \t\n\"'‘’“”"
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
    how: str  # "name", "alias", "demonym", "code" or "search"
    score: float  # 1.0 for an exact match; the text index's score for a searched one
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
    """Lower-case words, with the punctuation between them kept: "Man: red hair" → "man : red hair";
    quotes drop out. Names and the prompt's word runs compare in this form."""
    spans = [m.span() for m in _WORD.finditer(text)]
    return _form(text, spans, 0, len(spans))


def _form(text: str, spans: list[tuple[int, int]], i: int, j: int) -> str:
    """The normalised form (`_norm`) of the words i..j-1 of `text`, `spans` being its words."""
    out = []
    for t in range(i, j):
        if t > i:
            gap = "".join(text[spans[t - 1][1]:spans[t][0]].split()).strip(_QUOTES)
            out.append(f" {gap} " if gap else " ")
        out.append(_lower(text[spans[t][0]:spans[t][1]]))
    return "".join(out)


def _lower(word: str) -> str:
    return word.lower().replace("’", "'")


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
            value = attrs.get("prominence")  # as EntityStore.prominence reads it
            value = facts.get("population") if value is None else value
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            self.prominence[key] = float(value) if numeric else 0.0
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


# Words of the DiT's caption grammar (positions, joins; with the colours, `_GRAMMAR`): they end a name that
# is searched (colours only a country's: emoji names hold colours). A word before an emoji's name that is
# none of `_CAPTION_WORDS` may be part of its name.
_CAPTION_WORDS = {"on", "at", "in", "and", "with", "next", "to", "of", "the", "a", "an", "background", "left",
                  "right", "top", "bottom", "center", "centre", "beside", "above", "below", "flag", "emoji"}
_GRAMMAR = _CAPTION_WORDS | {w for colour in COLOURS for w in colour.split()}


class _Words:
    """A prompt's words, their normalised forms, and which ones a mention has claimed."""

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.spans = [m.span() for m in _WORD.finditer(prompt)]
        self.low = [_lower(prompt[a:b]) for a, b in self.spans]
        self.taken = [False] * len(self.spans)

    def __len__(self) -> int:
        return len(self.spans)

    def joined(self, i: int) -> bool:
        """Words i-1 and i are only spaces or quotes apart (no comma or full stop between them)."""
        return 0 < i < len(self) and not self.prompt[self.spans[i - 1][1]:self.spans[i][0]].strip(_QUOTES)

    def free(self, i: int) -> bool:
        return 0 <= i < len(self) and not self.taken[i]

    def flag_of_before(self, i: int) -> int | None:
        """Where "flag of" or "flag of the" ends right before word i starts, else None."""
        k = i - 1 if self.free(i - 1) and self.low[i - 1] in _ARTICLES and self.joined(i) else i
        if k >= 2 and self.low[k - 1] == "of" and self.low[k - 2] == "flag" and all(
                self.free(t) and self.joined(t + 1) for t in (k - 2, k - 1)):
            return k - 2
        return None

    def phrase(self, i: int, j: int) -> tuple[int, int]:
        """Grow the words i..j-1 naming an entity to the phrase that names its picture: a leading article,
        "flag of" before it, "flag"/"emoji" after it; never into a word another mention holds."""
        if self.free(j) and self.joined(j) and self.low[j] in ("flag", "emoji"):
            j += 1
        flag = self.flag_of_before(i)
        if flag is not None:
            i = flag
        if self.free(i - 1) and self.joined(i) and self.low[i - 1] in _ARTICLES:
            i -= 1
        return i, j

    def run_of_free(self, start: int, step: int, stop: set[str], most: int = 4) -> tuple[int, int] | None:
        """Up to `most` joined, unclaimed words not in `stop` from `start` going `step` (±1)."""
        idx, t = [], start
        while self.free(t) and len(idx) < most and self.low[t] not in stop and (
                not idx or self.joined(max(t, idx[-1]))):
            idx.append(t)
            t += step
        return (min(idx), max(idx) + 1) if idx else None


def find_mentions(prompt: str, table: NameTable, reference: ReferenceIndex | None = None,
                  search_threshold: float = 0.5) -> tuple[list[Mention], list[str]]:
    """The entities `prompt` names, in prompt order, and the "X flag"/"X emoji" phrases nothing matched."""
    w = _Words(prompt)
    found: list[Mention] = []

    def claim(i: int, j: int, entry: tuple[str, str, str, str], score: float = 1.0) -> None:
        a, b = w.phrase(i, j)
        for t in range(a, b):
            w.taken[t] = True
        key, name, kind, how = entry
        start, end = w.spans[a][0], w.spans[b - 1][1]
        while start > 0 and prompt[start - 1] in _QUOTES.strip():  # quotes around the phrase go with it
            start -= 1
        while end < len(prompt) and prompt[end] in _QUOTES.strip():
            end += 1
        found.append(Mention(prompt[start:end], start, end, key, name, kind, how, score))

    deferred = []  # emoji names with a word before them: a modifier ("smiling cat") or another mention
    for n in range(min(_LONGEST, len(w)), 0, -1):  # longest names first: "South Sudan" before "Sudan"
        for i in range(len(w) - n + 1):
            j = i + n
            if any(w.taken[i:j]):
                continue
            form = _form(prompt, w.spans, i, j)  # punctuation inside it must be the name's own
            before = w.low[j] if w.free(j) and w.joined(j) else None
            possessive = form.endswith("'s") and form[:-2] in table.countries
            code = prompt[w.spans[i][0]:w.spans[i][1]] if n == 1 else None
            if before == "emoji" and form in table.emoji:
                if w.free(i - 1) and w.joined(i) and w.low[i - 1] not in _CAPTION_WORDS:
                    deferred.append((i, j, table.emoji[form]))
                else:
                    claim(i, j, table.emoji[form])
            elif code in table.codes and (before == "flag" or w.flag_of_before(i) is not None):
                claim(i, j, table.codes[code])  # "the flag of the USA", "the GBR flag"
            elif form in table.countries or possessive:
                claim(i, j, table.countries[form[:-2] if possessive else form])
            elif before == "flag" and form in table.demonyms:
                claim(i, j, table.demonyms[form])
    for i, j, entry in deferred:  # "Japan red apple emoji": Japan is a mention now, "red apple" stands whole
        if not any(w.taken[i:j]) and not (w.free(i - 1) and w.joined(i)):
            claim(i, j, entry)  # else "the smiling cat emoji" is not the cat emoji: the phrase is searched
    unresolved = []
    if reference is not None:
        for i, word in enumerate(w.low):  # "X flag" / "X emoji" / "flag of X" that named nothing exactly
            if w.taken[i] or word not in ("flag", "emoji"):
                continue
            kind = "country" if word == "flag" else "emoji"
            stop = _GRAMMAR if kind == "country" else _CAPTION_WORDS  # "a green flag"; "the big red apple emoji"
            if word == "flag" and w.free(i + 1) and w.low[i + 1] == "of":
                start = i + 3 if w.free(i + 2) and w.low[i + 2] in _ARTICLES else i + 2
                span = w.run_of_free(start, +1, stop)
            else:
                span = w.run_of_free(i - 1, -1, stop)
            if span is None:
                continue
            a, b = span
            try:
                hits = reference.search(text=" ".join(w.low[a:b]), kinds=[kind], k=1)
            except IndexNotBuiltError:  # names still resolve; searching waits for `mmkb index build`
                hits = []
            if hits and hits[0].score >= search_threshold:
                h = hits[0]
                claim(a, b, (h.key, h.name, h.kind, "search"), round(float(h.score), 3))
            else:
                unresolved.append(prompt[w.spans[min(a, i)][0]:w.spans[max(b, i + 1) - 1][1]])
    found.sort(key=lambda m: m.start)
    return found, unresolved


def caption_for(prompt: str, mentions: list[Mention], editing: bool = False) -> str:
    """The prompt with each mention replaced in the DiT's grammar: "the flag"/"the emoji" when one
    entity is named, "the first"/"the second"/"the third" (by first mention) when several are; in an
    edit, where the image edited is the first, "the second image", "the third image"."""
    order = list(dict.fromkeys(m.key for m in mentions))
    out, last = [], 0
    for m in mentions:
        if editing:
            stand_in = f"the {ORDINALS[order.index(m.key) + 1]} image"
        elif len(order) == 1:
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

    def __call__(self, prompt: str, editing: bool = False) -> GroundedPrompt:
        """`editing`: the prompt is an edit instruction ("replace the flag with the flag of Japan"), whose
        image to edit takes the first of the generator's reference slots."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        mentions, unresolved = find_mentions(prompt, self.table, self.reference, self.search_threshold)
        keys = list(dict.fromkeys(m.key for m in mentions))  # one reference per entity, however often named
        most = MAX_MENTIONS - editing
        if len(keys) > most:
            names = ", ".join(dict.fromkeys(m.name for m in mentions))
            raise ValueError(f"the prompt names {len(keys)} entities ({names}); the generator takes at most "
                             f"{most} {'beside the image edited' if editing else 'at once'}: name fewer")
        images = self.reference.store.entity_images(keys)
        for m in mentions:
            ranked = sorted(images.get(m.key, []), key=lambda c: PREFERRED_STYLES.index(c[2])
                            if c[2] in PREFERRED_STYLES else len(PREFERRED_STYLES))
            if ranked:
                m.reference, m.style = str(ranked[0][1]), ranked[0][2]
        kept = [m for m in mentions if m.reference]
        unresolved += [f"{m.text} ({m.key} has no image)" for m in mentions if not m.reference]
        return GroundedPrompt(prompt, caption_for(prompt, kept, editing) if kept else prompt, kept, unresolved)


def generate_grounded(pipe, grounder: Grounder, prompt: str, image=None, **kwargs):
    """Ground `prompt` in the index and generate from the caption and its references (editing `image`
    when one is given): a `generator.pipeline.GenerationResult` whose provenance also holds the grounding."""
    grounded = grounder(prompt, editing=image is not None)
    result = pipe(grounded.caption, refs=grounded.references, image=image, **kwargs)
    named = list({m.key: m for m in grounded.mentions}.values())
    references = [u for u in result.provenance["references"] if u["role"] == "reference"]
    for used, m in zip(references, named):  # the same order
        used.update(entity=m.key, name=m.name)
    result.provenance.update(prompt=prompt, caption=grounded.caption, grounding=grounded.to_dict())
    return result
