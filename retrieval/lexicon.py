"""The vocabulary of conflict detection, as data: ``retrieval/lexicon.yaml`` read into a typed ``Lexicon``.

Rules in ``retrieval.conflicts`` hold structure (what a role, a rate or a scope looks like); the words
they need (stop words, unit words, role heads, scope contrasts, modal phrases) come from here, so the
rules carry no vocabulary of any one corpus. ``lexicon()`` reads the shipped file once per process;
``load_lexicon(path)`` reads and checks another file, raising one ``ConfigError`` that lists every
problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from tether.errors import ConfigError

DEFAULT_PATH = Path(__file__).with_name("lexicon.yaml")


@dataclass(frozen=True)
class ContrastGroup:
    """Mutually exclusive scopes: a claim about one member says nothing about another."""

    name: str
    members: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class Perturbations:
    """The rewrites ``tether train detector`` makes training pairs with (``perturbations:``)."""

    negations: tuple[tuple[str, str], ...] = ()
    antonyms: tuple[tuple[str, str], ...] = ()
    paraphrases: tuple[tuple[str, str], ...] = ()
    unit_equivalents: tuple[tuple[str, str, float], ...] = ()
    scopes: tuple[str, ...] = ()
    periods: tuple[str, ...] = ()  # with {year} and {next} placeholders


@dataclass(frozen=True)
class Lexicon:
    """Everything ``retrieval/lexicon.yaml`` holds, compiled (see the comments in that file)."""

    path: str
    stop_words: frozenset[str]
    value_words: frozenset[str]
    unit_qualifiers: frozenset[str]
    count_classes: dict[str, str]  # counted noun -> the class it counts ("attendees" -> "people")
    of_phrase_stop: frozenset[str]
    implied_per: tuple[tuple[re.Pattern[str], str], ...]
    about_document: re.Pattern[str]
    contrast_groups: tuple[ContrastGroup, ...]
    inside: re.Pattern[str]
    outside: re.Pattern[str]
    not_place: frozenset[str]
    place_suffixes: tuple[str, ...]
    site_words: tuple[str, ...]
    role_heads: tuple[str, ...]
    name_particles: tuple[str, ...]
    role_stop: frozenset[str]
    document_roles: frozenset[str]
    approval_verbs: str
    responsibility_verbs: str
    referral_phrases: str
    denials: str
    approval_fillers: str
    approval_determiners: str
    approver_cut: str
    polarity: tuple[tuple[str, re.Pattern[str]], ...]  # (label, pattern), in reading order
    opposed: frozenset[frozenset[str]]
    explicit: dict[str, re.Pattern[str]]
    restricted: re.Pattern[str]
    clause_split: tuple[str, ...]
    subject_verbs: str
    subject_determiners: tuple[str, ...]
    perturbations: Perturbations

    def words(self) -> set[str]:
        """Every plain word the lexicon names (lower case), for tests/test_lexicon.py."""
        out: set[str] = set()
        for name in (
            "stop_words",
            "value_words",
            "unit_qualifiers",
            "of_phrase_stop",
            "not_place",
            "role_stop",
            "document_roles",
        ):
            out |= {w.lower() for w in getattr(self, name)}
        for name in (
            "place_suffixes",
            "site_words",
            "role_heads",
            "name_particles",
            "clause_split",
            "subject_determiners",
        ):
            out |= {w.lower() for w in getattr(self, name)}
        return out


_REQUIRED = (
    "stop_words",
    "value_words",
    "unit_qualifiers",
    "count_classes",
    "of_phrase_stop",
    "implied_per",
    "about_document",
    "contrast_groups",
    "inside",
    "outside",
    "not_place",
    "place_suffixes",
    "site_words",
    "role_heads",
    "name_particles",
    "role_stop",
    "document_roles",
    "approval_verbs",
    "responsibility_verbs",
    "referral_phrases",
    "denials",
    "approval_fillers",
    "approval_determiners",
    "approver_cut",
    "polarity",
    "opposed",
    "explicit",
    "restricted",
    "clause_split",
    "subject_verbs",
    "subject_determiners",
)
# modal labels, then the lifecycle of a feature or setting (release notes and manuals state changes so)
POLARITY_LABELS = ("not-default", "default", "removed", "deprecated", "prohibited", "optional", "required", "allowed")


def _words(value: Any, key: str, problems: list[str]) -> tuple[str, ...]:
    """A list of words, or one string of whitespace-separated words."""
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    problems.append(f"{key} must be a list of words or one string of words, not {type(value).__name__}")
    return ()


def _regex(value: Any, key: str, problems: list[str], *, flags: int = re.I) -> re.Pattern[str]:
    source = "|".join(f"(?:{v})" for v in value) if isinstance(value, list) else value
    if not isinstance(source, str) or not source:
        problems.append(f"{key} must be a regular expression (a string) or a list of them")
        return re.compile(r"(?!)")
    try:
        return re.compile(source, flags)
    except re.error as exc:
        problems.append(f"{key}: bad regular expression {source!r} ({exc})")
        return re.compile(r"(?!)")


def _alternatives(value: Any, key: str, problems: list[str]) -> str:
    """A regex alternation kept as source (rules embed it in larger patterns)."""
    source = "|".join(value) if isinstance(value, list) else value
    if not isinstance(source, str) or not source.strip():
        problems.append(f"{key} must be a string of regex alternatives")
        return r"(?!)"
    source = " ".join(source.split())
    try:
        re.compile(source)
    except re.error as exc:
        problems.append(f"{key}: bad regular expression {source!r} ({exc})")
        return r"(?!)"
    return source


def _pairs(value: Any, key: str, problems: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for i, row in enumerate(value or []):
        if isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) and x for x in row):
            out.append((row[0], row[1]))
        else:
            problems.append(f"{key}[{i}] must be a pair of phrases, not {row!r}")
    return tuple(out)


def _perturbations(data: Any, problems: list[str]) -> Perturbations:
    if not isinstance(data, dict):
        problems.append("perturbations must be a mapping (negations, antonyms, paraphrases, ...)")
        return Perturbations()
    units = []
    for i, row in enumerate(data.get("unit_equivalents") or []):
        ok = isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[1], str)
        if ok and isinstance(row[2], (int, float)) and not isinstance(row[2], bool) and row[2] > 1:
            units.append((row[0], row[1], float(row[2])))
        else:
            problems.append(f"perturbations.unit_equivalents[{i}] must be [unit, smaller unit, factor > 1]")
    return Perturbations(
        negations=_pairs(data.get("negations"), "perturbations.negations", problems),
        antonyms=_pairs(data.get("antonyms"), "perturbations.antonyms", problems),
        paraphrases=_pairs(data.get("paraphrases"), "perturbations.paraphrases", problems),
        unit_equivalents=tuple(units),
        scopes=_words_list(data.get("scopes"), "perturbations.scopes", problems),
        periods=_words_list(data.get("periods"), "perturbations.periods", problems),
    )


def _words_list(value: Any, key: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    problems.append(f"{key} must be a list of phrases")
    return ()


def parse_lexicon(data: Any, path: str = "<lexicon>") -> Lexicon:
    """A ``Lexicon`` from the parsed YAML mapping; one ``ConfigError`` lists every problem."""
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: a lexicon is a mapping of the keys {', '.join(_REQUIRED)}"])
    problems = [f"{path}: missing key {k}" for k in _REQUIRED if k not in data]
    if problems:
        raise ConfigError(problems + [f"{path}: start from the shipped {DEFAULT_PATH}"])
    p: list[str] = []
    implied = []
    for i, row in enumerate(data["implied_per"] or []):
        if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) for x in row)):
            p.append(f"implied_per[{i}] must be [regex, denominator]")
            continue
        implied.append((_regex(row[0], f"implied_per[{i}]", p), row[1]))
    groups = []
    for i, g in enumerate(data["contrast_groups"] or []):
        if not (isinstance(g, dict) and isinstance(g.get("members"), list) and len(g["members"]) >= 2):
            p.append(f"contrast_groups[{i}] must have a name and at least two members (regexes)")
            continue
        members = tuple(_regex(m, f"contrast_groups[{i}].members", p) for m in g["members"])
        groups.append(ContrastGroup(str(g.get("name", i)), members))
    polarity_data = data["polarity"]
    if not isinstance(polarity_data, dict) or set(polarity_data) != set(POLARITY_LABELS):
        p.append(f"polarity must map exactly the labels {', '.join(POLARITY_LABELS)} to regexes")
        polarity_data = {}
    polarity = tuple(
        (label, _regex([rf"\b(?:{x})\b" for x in polarity_data[label]], f"polarity.{label}", p))
        for label in POLARITY_LABELS
        if label in polarity_data
    )
    opposed = set()
    for pair in data["opposed"] or []:
        if not (isinstance(pair, list) and len(pair) == 2 and set(pair) <= set(POLARITY_LABELS)):
            p.append(f"opposed: {pair!r} must be two of {', '.join(POLARITY_LABELS)}")
            continue
        opposed.add(frozenset(pair))
    explicit_data = data["explicit"] if isinstance(data["explicit"], dict) else {}
    if set(explicit_data) != {"allowed", "required"}:
        p.append("explicit must map allowed and required to regexes")
    explicit = {k: _regex(rf"\b(?:{v})\b", f"explicit.{k}", p) for k, v in explicit_data.items()}
    classes: dict[str, str] = {}
    if not isinstance(data["count_classes"], dict):
        p.append("count_classes must map a class name to its counted nouns")
    else:
        for cls, nouns in data["count_classes"].items():
            for noun in _words(nouns, f"count_classes.{cls}", p):
                classes[noun.lower()] = str(cls)
    lex = Lexicon(
        path=path,
        stop_words=frozenset(_words(data["stop_words"], "stop_words", p)),
        value_words=frozenset(_words(data["value_words"], "value_words", p)),
        unit_qualifiers=frozenset(_words(data["unit_qualifiers"], "unit_qualifiers", p)),
        count_classes=classes,
        of_phrase_stop=frozenset(_words(data["of_phrase_stop"], "of_phrase_stop", p)),
        implied_per=tuple(implied),
        about_document=_regex(data["about_document"], "about_document", p),
        contrast_groups=tuple(groups),
        inside=_regex(data["inside"], "inside", p, flags=0),
        outside=_regex(data["outside"], "outside", p, flags=0),
        not_place=frozenset(_words(data["not_place"], "not_place", p)),
        place_suffixes=_words(data["place_suffixes"], "place_suffixes", p),
        site_words=_words(data["site_words"], "site_words", p),
        role_heads=_words(data["role_heads"], "role_heads", p),
        name_particles=_words(data["name_particles"], "name_particles", p),
        role_stop=frozenset(_words(data["role_stop"], "role_stop", p)),
        document_roles=frozenset(_words(data["document_roles"], "document_roles", p)),
        approval_verbs=_alternatives(data["approval_verbs"], "approval_verbs", p),
        responsibility_verbs=_alternatives(data["responsibility_verbs"], "responsibility_verbs", p),
        referral_phrases=_alternatives(data["referral_phrases"], "referral_phrases", p),
        denials=_alternatives(data["denials"], "denials", p),
        approval_fillers=_alternatives(data["approval_fillers"], "approval_fillers", p),
        approval_determiners=_alternatives(data["approval_determiners"], "approval_determiners", p),
        approver_cut=_alternatives(data["approver_cut"], "approver_cut", p),
        polarity=polarity,
        opposed=frozenset(opposed),
        explicit=explicit,
        restricted=_regex(data["restricted"], "restricted", p),
        clause_split=_words(data["clause_split"], "clause_split", p),
        subject_verbs=_alternatives(data["subject_verbs"], "subject_verbs", p),
        subject_determiners=_words(data["subject_determiners"], "subject_determiners", p),
        perturbations=_perturbations(data.get("perturbations") or {}, p),
    )
    if p:
        raise ConfigError([f"{path}: {x}" for x in p])
    return lex


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """The lexicon in ``path`` (None: the shipped ``retrieval/lexicon.yaml``)."""
    import yaml

    file = Path(path) if path else DEFAULT_PATH
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [f"lexicon: cannot read {file} ({exc.strerror}); give a YAML file shaped like {DEFAULT_PATH}"]
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"lexicon: {file} is not valid YAML ({exc})"]) from exc
    return parse_lexicon(data, str(file))


@lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    """The shipped lexicon, read once per process."""
    return load_lexicon(None)
