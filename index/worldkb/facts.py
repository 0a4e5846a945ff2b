"""Plain sentences from source fields; every sentence names the field it came from."""
from __future__ import annotations

from typing import Any

Section = dict[str, str]  # {"heading", "text", "source"}


def _join(items: list[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _section(heading: str, text: str, source: str) -> Section:
    return {"heading": heading, "text": text, "source": source}


def country_facts(c: dict[str, Any], names_by_cca3: dict[str, str], population: int | None) -> dict[str, Any]:
    """The structured facts behind the sentences, for question answering benchmarks."""
    idd = c.get("idd") or {}
    facts = {
        "capital": c.get("capital") or [],
        "region": c.get("region"),
        "subregion": c.get("subregion"),
        "languages": list((c.get("languages") or {}).values()),
        "currencies": [v["name"] for v in (c.get("currencies") or {}).values()],
        "area": c.get("area") if (c.get("area") or 0) > 0 else None,
        "population": population,
        "borders": [names_by_cca3.get(b, b) for b in c.get("borders") or []],
        "demonym": ((c.get("demonyms") or {}).get("eng") or {}).get("m"),
        "calling_codes": [idd["root"] + s for s in (idd.get("suffixes") or [""])][:5] if idd.get("root") else [],
        "tld": c.get("tld") or [],
    }
    return {k: v for k, v in facts.items() if v not in (None, [], "")}


def country_sections(c: dict[str, Any], names_by_cca3: dict[str, str],
                     population: int | None) -> list[Section]:
    """Sections for one `world-countries` record (+ population from `countryinfo`)."""
    name = c["name"]["common"]
    wc = "world-countries"
    official = c["name"]["official"]
    others = [a for a in c.get("altSpellings", []) if a not in (official, name)]
    out = [_section("names", f"{name} is officially called {official}."
                    + (f" Other names: {_join(others)}." if others else ""),
                    f"{wc}:name.official,altSpellings")]
    if c.get("region"):
        where = f"{c['subregion']}, in {c['region']}" if c.get("subregion") else c["region"]
        out.append(_section("region", f"{name} is in {where}.", f"{wc}:region,subregion"))
    capitals = c.get("capital") or []
    if capitals:
        verb = "capital of {} is {}" if len(capitals) == 1 else "capitals of {} are {}"
        out.append(_section("capital", f"The {verb.format(name, _join(capitals))}.", f"{wc}:capital"))
    langs = list((c.get("languages") or {}).values())
    if langs:
        noun = "language" if len(langs) == 1 else "languages"
        verb = "is" if len(langs) == 1 else "are"
        out.append(_section("languages", f"The official {noun} of {name} {verb} {_join(langs)}.",
                            f"{wc}:languages"))
    currencies = [f"the {v['name']}" + (f" ({v['symbol']})" if v.get("symbol") else "")
                  for v in (c.get("currencies") or {}).values()]
    if currencies:
        noun = "currency" if len(currencies) == 1 else "currencies"
        verb = "is" if len(currencies) == 1 else "are"
        out.append(_section("currencies", f"The {noun} of {name} {verb} {_join(currencies)}.",
                            f"{wc}:currencies"))
    if c.get("area") and c["area"] > 0:
        out.append(_section("area", f"The area of {name} is {_number(c['area'])} square kilometres.",
                            f"{wc}:area"))
    if population:
        out.append(_section("population", f"The population of {name} is {population}.",
                            "countryinfo:population"))
    borders = [names_by_cca3.get(b, b) for b in c.get("borders") or []]
    if borders:
        out.append(_section("borders", f"{name} borders {_join(borders)}.", f"{wc}:borders"))
    elif "borders" in c:
        out.append(_section("borders", f"{name} has no land borders with other countries.",
                            f"{wc}:borders"))
    demonym = ((c.get("demonyms") or {}).get("eng") or {}).get("m")
    if demonym:
        out.append(_section("demonym", f"People from {name} are called {demonym}.",
                            f"{wc}:demonyms.eng"))
    idd = c.get("idd") or {}
    if idd.get("root"):
        suffixes = idd.get("suffixes") or [""]
        codes = [idd["root"] + s for s in suffixes][:5]
        noun, verb = ("code", "is") if len(codes) == 1 else ("codes", "are")
        out.append(_section("calling code",
                            f"The international calling {noun} of {name} {verb} {_join(codes)}.", f"{wc}:idd"))
    if c.get("tld"):
        noun, verb = ("domain", "is") if len(c["tld"]) == 1 else ("domains", "are")
        out.append(_section("top-level domain",
                            f"The internet top-level {noun} of {name} {verb} {_join(c['tld'])}.", f"{wc}:tld"))
    if "landlocked" in c:
        out.append(_section("landlocked", f"{name} is {'' if c['landlocked'] else 'not '}landlocked.",
                            f"{wc}:landlocked"))
    if "unMember" in c:
        out.append(_section("un membership",
                            f"{name} is {'' if c['unMember'] else 'not '}a member of the United Nations.",
                            f"{wc}:unMember"))
    return out


def emoji_sections(e: dict[str, Any], name: str, openmoji: dict[str, Any] | None) -> list[Section]:
    """Sections for one `emoji-datasource` record (+ keywords from `openmoji` where it matches)."""
    ed = "emoji-datasource"
    codepoints = " ".join(f"U+{cp}" for cp in e["unified"].split("-"))
    out = [
        _section("name", f"The {name} emoji has the code points {codepoints}.", f"{ed}:name,unified"),
        _section("short names", f"The short names of the {name} emoji are {_join(e['short_names'])}."
                 if len(e["short_names"]) > 1 else
                 f"The short name of the {name} emoji is {e['short_names'][0]}.", f"{ed}:short_names"),
        _section("category", f"The {name} emoji is in the category {e['category']}, "
                 f"subcategory {e['subcategory']}.", f"{ed}:category,subcategory"),
        _section("version", f"The {name} emoji was added in Emoji version {e['added_in']}.",
                 f"{ed}:added_in"),
    ]
    if openmoji:
        tags = [t.strip() for t in (openmoji.get("tags") or "").split(",") if t.strip()]
        extra = [t.strip() for t in (openmoji.get("openmoji_tags") or "").split(",") if t.strip()]
        keywords = list(dict.fromkeys(tags + extra))
        if keywords:
            out.append(_section("keywords", f"Keywords for the {name} emoji: {_join(keywords)}.",
                                "openmoji:tags,openmoji_tags"))
    return out
