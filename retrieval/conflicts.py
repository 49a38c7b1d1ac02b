"""Inter-context knowledge conflicts: pairs of claims among retrieved passages that cannot both be true.

Passages are split into sentence claims. Two claims are compared by rules first (cheap, no model):

1. Scope: claims about a different location, year, population or purpose ("within the EU" vs
   "outside the EU", "Rotterdam" vs "Brno", "business use" vs "commuting", 2023 vs 2024) never conflict.
2. Numeric and date: comparable quantities (same dimension and unit family, same rate denominator;
   normalised by ``tether.text.quantities``) that disagree. A value inside a stated range agrees.
3. Entity: the same role or approval slot filled by different people or roles.
4. Polarity: allowed vs prohibited, required vs optional, required vs prohibited.

A rule hit only counts when the two claims are about the same subject: they share key terms and their
MiniLM embeddings are similar. Embeddings are computed only for claims that a rule flagged, and cached
per (passage id, text hash) in an LRU, so a warm ``detect`` costs a few milliseconds.

Claims from the same document are paired only when they are near-duplicates (similarity at least
``same_document_similarity``): a policy that lists a rate for weekdays and another for weekends is
not contradicting itself.

``kind`` is ``supersession`` when exactly one claim comes from a superseded document; ``value_type``
then still says what differs. See docs/CONFLICTS.md.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from tether.config import ConflictsConfig
from tether.errors import BackendUnavailable, ConfigError
from tether.text.quantities import Quantity, extract_quantities, singular
from tether.text.terms import STOP_WORDS

log = logging.getLogger(__name__)

KINDS = ("numeric", "date", "entity", "polarity", "supersession")


# -- types ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    text: str  # the sentence, whitespace-normalised
    source: str
    passage_id: str | None = None
    title: str | None = None
    date: str | None = None  # document date, ISO
    authority: str | None = None  # official | team | informal
    status: str | None = None  # current | superseded | draft
    span: tuple[int, int] | None = None  # char span of the sentence in the document text
    value: str | None = None  # the normalised value the conflict is about: "21 days", "EUR 60", "Finance Director"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["span"] = list(self.span) if self.span is not None else None
        return out

    @classmethod
    def from_json(cls, data: Any) -> Claim:
        """The claim ``to_json`` wrote; ``ValueError`` names what is missing or mistyped."""
        if not isinstance(data, dict):
            raise ValueError(f"a claim must be an object, not {type(data).__name__}")
        missing = [k for k in ("text", "source") if not isinstance(data.get(k), str)]
        if missing:
            raise ValueError(f"a claim needs {' and '.join(missing)} (strings); it has {sorted(data)}")
        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        span = kwargs.get("span")
        if span is not None:
            if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(x, int) for x in span)):
                raise ValueError(f"a claim's span must be two integers, not {span!r}")
            kwargs["span"] = (span[0], span[1])
        return cls(**kwargs)


@dataclass(frozen=True)
class Conflict:
    kind: str  # numeric | date | entity | polarity | supersession
    value_type: str  # amount | duration | count | percent | date | entity | polarity
    subject: str  # the attribute both claims are about
    claims: tuple[Claim, Claim]
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value_type": self.value_type,
            "subject": self.subject,
            "confidence": float(self.confidence),  # the detectors round it to 4 places
            "claims": [c.to_json() for c in self.claims],
        }

    @classmethod
    def from_json(cls, data: Any) -> Conflict:
        """The conflict ``to_json`` wrote (as logged in ``conflicts.claims_json``): ``from_json(c.to_json()) == c``.
        ``ValueError`` names what is missing, so a row of another shape is never guessed at."""
        if not isinstance(data, dict):
            raise ValueError(f"a conflict must be an object, not {type(data).__name__}")
        missing = [k for k in ("kind", "value_type", "subject") if not isinstance(data.get(k), str)]
        confidence = data.get("confidence")
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
            missing.append("confidence")
        claims = data.get("claims")
        if not (isinstance(claims, list) and len(claims) == 2):
            missing.append("claims (a list of two)")
        if missing:
            raise ValueError(f"a conflict needs {', '.join(missing)}; it has {sorted(data)}")
        return cls(
            data["kind"],
            data["value_type"],
            data["subject"],
            (Claim.from_json(claims[0]), Claim.from_json(claims[1])),
            float(confidence),
        )


class ConflictDetector(Protocol):
    def detect(self, passages: Sequence[Any]) -> list[Conflict]:
        """Conflicts among the passages (SearchHit-like), best first, no duplicates."""
        ...

    def judge(self, a: Claim, b: Claim) -> Conflict | None:
        """Do these two claims contradict?"""
        ...


def _thresholds(config: ConflictsConfig | None, changes: dict[str, Any]) -> ConflictsConfig:
    """``config`` (the ``conflicts:`` section; None = defaults) with ``changes`` applied, validated."""
    known = {f.name for f in fields(ConflictsConfig)}
    problems = [
        f"{k} is not a conflict threshold (known: {', '.join(sorted(known))})" for k in changes if k not in known
    ]
    if problems:
        raise ConfigError(problems)
    t = replace(config or ConflictsConfig(), **changes)
    if t.problems():
        raise ConfigError(t.problems())
    return t


# -- claim features ---------------------------------------------------------------------------

# key terms leave out the shared stop words (tether.text.terms), and, for claims, more function and
# number words plus the role and modality words every policy sentence uses
_STOP = set(STOP_WORDS) | set(
    """but them without within onto above below down off after before during between through every all some nor only own
    same such too very might shall been being am done having yours ours he she his her whose also just more most other
    another both either neither one two three four five six seven eight nine ten use used using make makes made take takes
    taken give gives given new least much many well
    employee staff everyone everybody company people person someone anyone anything something
    required require requires mandatory compulsory optional allowed permitted prohibited forbidden expected need needs needed
    never always please note e g etc""".split()
)
_VALUE_WORDS = set(
    """day days week weeks month months year years hour hours minute minutes working calendar business eur euro euros usd czk gbp
    percent cent january february march april may june july august september october november december monday tuesday
    wednesday thursday friday saturday sunday""".split()
)
_VALUE_WORDS.discard("business")
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_STOP_STEMS: set[str] = set()


def _stem(word: str) -> str:
    w = word.lower().strip("'’-")
    w = re.sub(r"['’]s$", "", w)
    if len(w) > 4 and w.endswith("ied"):
        w = w[:-3] + "y"
    elif len(w) > 5 and w.endswith("ing"):
        w = w[:-3]
    elif len(w) > 4 and w.endswith("ed"):
        w = w[:-2]
    else:
        w = singular(w)
    if len(w) > 4 and w.endswith("e"):
        w = w[:-1]
    return w


@lru_cache(maxsize=16384)
def _terms(text: str) -> frozenset[str]:
    out = set()
    for tok in _WORD.findall(text):
        for part in tok.split("-"):
            low = part.lower()
            if len(low) < 3 or low in _STOP or low in _VALUE_WORDS:
                continue
            s = _stem(low)
            if s and s not in _STOP and s not in _STOP_STEMS:
                out.add(s)
    return frozenset(out)


_STOP_STEMS.update(_stem(w) for w in _STOP | _VALUE_WORDS if len(w) >= 3)

# scope: contrast groups (members of one group are mutually exclusive scopes)
_CONTRASTS: tuple[tuple[str, ...], ...] = (
    (
        r"\b(?:within|inside|in)\s+(?:the\s+)?(?:EU|EEA|European\s+Union|Europe)\b",
        r"\b(?:outside|out\s+of|beyond)\s+(?:the\s+)?(?:EU|EEA|European\s+Union|Europe)\b",
    ),
    (r"\bweekdays?\b", r"\bweekends?(?:\s+days?)?\b|\bsaturdays?\b|\bsundays?\b|\bpublic\s+holidays?\b"),
    (
        r"\bbusiness\s+(?:use|travel|trips?|mileage|kilometres?)\b",
        r"\bcommut\w*",
        r"\bprivate\s+use\b|\bpersonal\s+use\b",
    ),
    (r"\bfull-time\b", r"\bpart-time\b"),
    (
        r"\bemployees?\b|\bstaff\b",
        r"\bcontractors?\b|\bfreelancers?\b",
        r"\binterns?\b|\btrainees?\b",
        r"\bvisitors?\b|\bguests?\b",
        r"\bcustomers?\b",
        r"\bsuppliers?\b",
    ),
    (r"\bstandard\s+users?\b", r"\badministrators?\b|\badmin\s+accounts?\b"),
    (r"\brejected\s+candidates?\b", r"\bcandidate\s+consent\b"),
    (r"\b(?:first|1st)\s+class\b", r"\bsecond\s+class\b|\b2nd\s+class\b", r"\beconomy\s+class\b"),
    (r"\brail\b|\btrains?\b", r"\bflights?\b|\bfly\b|\bair\b"),
)
_CONTRAST_RES = tuple(tuple(re.compile(p, re.I) for p in group) for group in _CONTRASTS)

_NOT_PLACE = set(
    """The A An This That Our Your Their Every All Each Any Lab Laboratory Page Section Chapter Teams Outlook Windows
    January February March April May June July August September October November December Monday Tuesday Wednesday
    Thursday Friday Saturday Sunday EU EEA Europe CET""".split()
)
_PLACE_RES = (
    re.compile(r"\b(?:[Ii]n|[Aa]t|[Ff]rom|[Ff]or)\s+(?:the\s+)?([A-Z][a-zà-ž]+(?:\s+Republic)?)(?![\w-])"),
    re.compile(r"\b[Tt]he\s+([A-Z][a-zà-ž]+)\s+(?:site|office|offices|plant|branch|headquarters|campus|team)\b"),
    re.compile(r"\b([A-Z][a-zà-ž]+)\s+(?:site|office|plant|branch|headquarters|campus)\b"),
)

_ROLE_HEAD = r"(?:officer|director|manager|lead|head|owner|partner|ceo|cfo|cto|coo|coordinator|administrator|controller|secretary|chair|representative|contact|supervisor|approver)"
_NAME_WORD = r"[A-ZÀ-ÖØ-ÞĀ-Ž][a-zà-öø-ÿā-ž'’-]+"
_PERSON = rf"(?:{_NAME_WORD}(?:\s+(?:de|van|der|den|von|el|al|da|di|le|la|ten|ter|du)){{0,2}}\s+{_NAME_WORD})"
_ROLE = rf"(?:[A-Za-z-]+\s+){{0,4}}{_ROLE_HEAD}s?\b(?:\s+of\s+[A-Z][a-z]+)?|Head\s+of\s+[A-Z][a-z]+"
_ROLE_IS_PERSON = re.compile(
    rf"(?P<role>{_ROLE})(?:\s+(?:for|in|at|of)\s+(?:the\s+)?[A-Z][a-zà-ž]+(?:\s+(?:site|office))?)?\s*(?:is|was|remains|will\s+be|:|,|\(|-|–)\s*(?P<name>{_PERSON})"
)
_PERSON_IS_ROLE = re.compile(rf"(?P<name>{_PERSON}),\s+(?:the\s+|our\s+)?(?P<role>{_ROLE})")
_APPROVER = re.compile(
    r"\b(?:approv\w*|authori[sz]\w*|signed\s+off|sign-off|decided|granted)\s+(?:in\s+advance\s+|in\s+writing\s+|beforehand\s+|first\s+)?"
    r"(?:by|from)\s+(?:the\s+employee['’]s\s+|the\s+|their\s+|your\s+|his\s+or\s+her\s+|an?\s+)?(?P<who>[^,.;:()]+)",
    re.I,
)
_WHO_CUT = re.compile(
    r"\s+(?:and|or|within|in|before|for|on|at|if|unless|after|when|via|through|by|with|using|of\s+the)\b.*$", re.I
)
_ROLE_STOP = _STOP | {
    "inform",
    "contact",
    "ask",
    "tell",
    "call",
    "email",
    "report",
    "notify",
    "our",
    "your",
    "the",
    "based",
    "site",
    "office",
}

_POLARITY_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "prohibited",
        re.compile(
            r"\b(?:(?:is|are|be|was|were)\s+not\s+(?:permitted|allowed)|not\s+(?:permitted|allowed)|prohibited|forbidden|banned|not\s+tolerated|"
            r"may\s+not|must\s+not|must\s+never|may\s+never|can\s*not|can['’]t|cannot|shall\s+not|never\s+(?:be\s+)?(?:allowed|permitted|accepted))\b",
            re.I,
        ),
    ),
    (
        "optional",
        re.compile(
            r"\b(?:optional|voluntary|not\s+(?:required|mandatory|compulsory|obligatory|necessary)|need\s+not|needn['’]t|"
            r"(?:do|does)\s+not\s+(?:have|need)\s+to|don['’]t\s+(?:have|need)\s+to|no\s+need\s+to|at\s+your\s+(?:own\s+)?discretion)\b",
            re.I,
        ),
    ),
    (
        "required",
        re.compile(r"\b(?:mandatory|compulsory|obligatory|required|must|have\s+to|has\s+to|needs?\s+to|shall)\b", re.I),
    ),
    ("allowed", re.compile(r"\b(?:allowed|permitted|may|can|is\s+possible|are\s+possible)\b", re.I)),
)
# "must do X" against "must not do Y" is mostly two different actions: required vs prohibited is not opposed
_OPPOSED = {frozenset(("allowed", "prohibited")), frozenset(("required", "optional"))}
_EXPLICIT = {
    "allowed": re.compile(r"\b(?:allowed|permitted|is\s+possible|are\s+possible)\b", re.I),
    "required": re.compile(r"\b(?:mandatory|compulsory|obligatory|required)\b", re.I),
}
_RESTRICTED = re.compile(r"\b(?:may|can)\s+only\b|\bonly\s+(?:\w+\s+){0,3}(?:may|can)\b", re.I)
# clauses for polarity: split at subordinators, not at commas or "and" (lists: "Eating, drinking and ...")
_CLAUSE_SPLIT = re.compile(r"[;:]|,?\s(?:so|but|because|after|when|if|unless|although|while|whereas)\s", re.I)


@dataclass(frozen=True)
class ClaimFeatures:
    """What the rules read from one sentence."""

    text: str
    quantities: tuple[Quantity, ...]
    terms: frozenset[str]  # stemmed key terms (content words, not values)
    places: frozenset[str]
    contrasts: tuple[frozenset[int], ...]  # per contrast group: the members mentioned
    polarity: frozenset[str]  # allowed | prohibited | required | optional
    polarity_terms: frozenset[str]  # key terms of the clauses that carry a polarity word
    roles: tuple[
        tuple[str, str], ...
    ]  # (slot, holder): ("data protection officer", "Marta Kowalski"), ("approver", "Finance Director")
    names: frozenset[str]  # proper names that are not roles
    measured: tuple[_Measured, ...] = ()  # the quantities other than bare years, with what they measure

    @property
    def years(self) -> frozenset[str]:
        return frozenset(q.iso or "" for q in self.quantities if q.kind == "date" and q.unit == "year")

    @property
    def has_signal(self) -> bool:
        return bool(self.quantities or self.polarity or self.roles or self.names)


def _clean_role(raw: str) -> str:
    words = raw.split()
    keep: list[str] = []
    for w in reversed(words):
        if w.lower() in _ROLE_STOP and not (keep and w.lower() == "of"):
            break
        keep.append(w)
    role = " ".join(reversed(keep))
    return role if role.lower() not in ("", "of") else raw


def _polarity(text: str) -> frozenset[str]:
    out = set()
    rest = _RESTRICTED.sub(" ", text)  # "may only ... when" is a condition, not a permission
    for label, pattern in _POLARITY_PATTERNS:
        if pattern.search(rest):
            out.add(label)
            rest = pattern.sub(" ", rest)  # "not permitted" must not also read as "permitted"
    return frozenset(out)


@lru_cache(maxsize=8192)
def claim_features(text: str) -> ClaimFeatures:
    """Parse one sentence (cached by text)."""
    quantities = tuple(extract_quantities(text))
    places = set()
    for pattern in _PLACE_RES:
        for m in pattern.finditer(text):
            word = m.group(1)
            if word.split()[0] in _NOT_PLACE or re.search(r"[a-z][A-Z]", word):
                continue
            places.add(word.lower())
    contrasts = tuple(frozenset(i for i, p in enumerate(group) if p.search(text)) for group in _CONTRAST_RES)
    roles: list[tuple[str, str]] = []
    role_words: set[str] = set()
    for pattern in (_ROLE_IS_PERSON, _PERSON_IS_ROLE):
        for m in pattern.finditer(text):
            role = _clean_role(m.group("role"))
            roles.append((role.lower(), m.group("name")))
            role_words.update(role.split())
    for m in _APPROVER.finditer(text):
        who = _WHO_CUT.sub("", m.group("who").strip())
        who = re.sub(r"^(?:the|their|your|an?)\s+", "", who, flags=re.I)
        if who and len(who.split()) <= 4 and not extract_quantities(who):
            roles.append(("approver", who))
            role_words.update(who.split())
    names = set()
    for m in re.finditer(rf"(?<![\w@.]){_NAME_WORD}(?:\s+(?:(?:de|van|der|den|von|el)\s+)?{_NAME_WORD})*", text):
        if m.start() == 0 or text[max(0, m.start() - 2) : m.start()].strip() in (".", ":", "-", "•"):
            continue  # sentence-initial capital
        name = m.group(0)
        first = name.split()[0]
        if first in _NOT_PLACE or first in role_words or name in role_words:
            continue
        if re.search(_ROLE_HEAD + r"s?$", name, re.I):
            continue
        names.add(name)
    polarity = _polarity(text)
    polarity_terms = set()
    if polarity:
        for clause in _CLAUSE_SPLIT.split(text):
            if clause and _polarity(clause):
                polarity_terms |= _terms(clause)
    values = [q for q in quantities if not (q.kind == "date" and q.unit == "year")]
    if _ABOUT_DOCUMENT.search(text):
        values = [q for q in values if q.kind != "date"]
    return ClaimFeatures(
        text,
        quantities,
        _terms(text),
        frozenset(places),
        contrasts,
        polarity,
        frozenset(polarity_terms),
        tuple(roles),
        frozenset(names),
        tuple(_measured(text, values)),
    )


# -- the rules --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleHit:
    """A contradiction the rules found, before the subject gate."""

    kind: str  # numeric | date | entity | polarity
    value_type: str
    value_a: str
    value_b: str
    confidence: float  # before scaling by similarity
    slot: str | None = None  # entity hits: the role both claims fill ("data protection officer", "approver")
    anchored: bool = True  # numeric hits: the values share a rate, a counted noun or attribute words


def scope_differs(fa: ClaimFeatures, fb: ClaimFeatures) -> str | None:
    """Why two claims are about different scopes (so cannot contradict), or None."""
    if fa.places and fb.places and not (fa.places & fb.places):
        return f"places {sorted(fa.places)} vs {sorted(fb.places)}"
    for i, (ma, mb) in enumerate(zip(fa.contrasts, fb.contrasts)):
        if ma and mb and not (ma & mb):
            return f"contrast group {i}: {sorted(ma)} vs {sorted(mb)}"
    return None


_IMPLIED_PER = (
    (re.compile(r"\b(?:daily|per\s+diem)\b", re.I), "day"),
    (re.compile(r"\bnightly\b", re.I), "night"),
    (re.compile(r"\bweekly\b", re.I), "week"),
    (re.compile(r"\bmonthly\b", re.I), "month"),
    (re.compile(r"\b(?:annual|annually|yearly)\b", re.I), "year"),
    (re.compile(r"\bhourly\b", re.I), "hour"),
)
_OF_PHRASE = re.compile(r"^(?:\s*(?:per|a|an|each|every|for\s+each|for\s+every)\s+[\w-]+)?\s+of\s+([\w\s'’-]+)", re.I)
_OF_STOP = _STOP | {"so", "which", "that"}
# dates in a document's own metadata ("Effective date: 1 June 2024") are about that document only
_ABOUT_DOCUMENT = re.compile(
    r"\b(?:effective\s+(?:date|from|as\s+of)|last\s+(?:updated|revised|reviewed)|version\s+\d|published\s+on|issued\s+on|approved\s+by\s+the\s+management\s+team\s+on)\b",
    re.I,
)


@dataclass(frozen=True)
class _Measured:
    """A quantity with what it measures: the rate denominator and the attribute words around it."""

    q: Quantity
    per: str | None
    attribute: frozenset[str]
    context: frozenset[str]  # every key term of the sentence


def _measured(text: str, quantities: Sequence[Quantity]) -> list[_Measured]:
    context = _terms(text)
    implied = [per for pattern, per in _IMPLIED_PER if pattern.search(text)]
    out = []
    for q in quantities:
        per = q.per or (implied[0] if len(implied) == 1 and q.kind in ("amount", "count") else None)
        words = set()
        inner = re.sub(r"^\S+\s+", "", q.text) if q.kind in ("duration", "count") else ""
        words |= _terms(inner) - {"consecutive", "full", "calendar", "working", "business"}
        m = _OF_PHRASE.match(text[q.span[1] :])
        if m:
            phrase = []
            for word in m.group(1).split()[:4]:
                if word.lower() in _OF_STOP:
                    break
                phrase.append(word)
            words |= _terms(" ".join(phrase))
        out.append(_Measured(q, per, frozenset(words), context))
    return out


def _same_attribute(x: _Measured, y: _Measured, max_value_ratio: float) -> bool:
    if x.per != y.per:
        return False
    if x.attribute and y.attribute:
        jaccard = len(x.attribute & y.attribute) / len(x.attribute | y.attribute)
        if jaccard < 0.5:
            return False
    elif x.attribute and not x.attribute <= y.context:
        return False  # "six months of service" against a claim that never mentions service
    elif y.attribute and not y.attribute <= x.context:
        return False
    if x.q.kind != "date" and x.q.value and y.q.value:
        lo, hi = sorted((abs(float(x.q.value)), abs(float(y.q.value))))
        if lo > 0 and hi / lo > max_value_ratio:  # larger gaps are different attributes
            return False
    return True


def _numeric_hit(fa: ClaimFeatures, fb: ClaimFeatures, max_value_ratio: float) -> RuleHit | None:
    if not fa.measured or not fb.measured:
        return None
    years_a, years_b = fa.years, fb.years
    if years_a and years_b and not (years_a & years_b):
        return None  # "€1,200 for 2024" vs "€900 in 2023": values for different years (a year alone is scope)
    ma, mb = fa.measured, fb.measured
    qa, qb = [m.q for m in ma], [m.q for m in mb]
    best: tuple[float, _Measured, _Measured] | None = None
    for x in ma:
        for y in mb:
            if not x.q.comparable(y.q) or x.q.agrees(y.q) or not _same_attribute(x, y, max_value_ratio):
                continue
            # a value that agrees with some comparable value on the other side is accounted for
            if any(x.q.agrees(z) for z in qb) or any(y.q.agrees(z) for z in qa):
                continue
            score = (
                1.0
                + (0.5 if x.per else 0.0)
                + (0.2 if x.q.bound == y.q.bound else 0.0)
                + (0.3 if x.attribute & y.attribute else 0.0)
            )
            if best is None or score > best[0]:
                best = (score, x, y)
    if best is None:
        return None
    _, mx, my = best
    x, y = mx.q, my.q
    kind = "date" if x.kind == "date" else "numeric"
    conf = 0.9 if x.bound == y.bound else 0.8
    anchored = x.kind in ("count", "date") or bool(mx.per) or bool(mx.attribute & my.attribute)
    return RuleHit(kind, x.kind, x.norm, y.norm, conf, anchored=anchored)


def _entity_hit(fa: ClaimFeatures, fb: ClaimFeatures) -> RuleHit | None:
    for slot_a, who_a in fa.roles:
        for slot_b, who_b in fb.roles:
            if slot_a.split()[-1] in _DOCUMENT_ROLES or slot_b.split()[-1] in _DOCUMENT_ROLES:
                continue  # "Policy owner: X" names the owner of its own document
            if slot_a != slot_b and not (slot_a.endswith(slot_b) or slot_b.endswith(slot_a)):
                continue
            if _same_entity(who_a, who_b):
                return None
            held_a = {w for s, w in fa.roles if s == slot_a}
            held_b = {w for s, w in fb.roles if s == slot_b}
            if any(_same_entity(p, q) for p in held_a for q in held_b):
                continue
            return RuleHit(
                "entity", "entity", who_a, who_b, 0.85, slot=slot_a if len(slot_a) <= len(slot_b) else slot_b
            )
    return None


_DOCUMENT_ROLES = {"owner", "owners", "author", "maintainer", "editor", "contact", "contacts"}


def _same_entity(a: str, b: str) -> bool:
    na, nb = re.sub(r"\W+", " ", a.lower()).strip(), re.sub(r"\W+", " ", b.lower()).strip()
    return na == nb or na.endswith(" " + nb) or nb.endswith(" " + na)


def _name_swap_hit(fa: ClaimFeatures, fb: ClaimFeatures) -> RuleHit | None:
    """Near-identical sentences naming different things ("requested in PeopleDesk" vs "in Workday")."""
    only_a, only_b = fa.names - fb.names, fb.names - fa.names
    if not only_a or not only_b or len(only_a) > 1 or len(only_b) > 1:
        return None
    union = fa.terms | fb.terms
    if not union:
        return None
    name_terms = _terms(" ".join(only_a | only_b))
    jacc = len((fa.terms & fb.terms) - name_terms) / max(
        1, len(union - name_terms)
    )  # the names' own words are not shared context
    if jacc < 0.6:
        return None
    return RuleHit("entity", "entity", next(iter(only_a)), next(iter(only_b)), 0.65)


def _polarity_hit(fa: ClaimFeatures, fb: ClaimFeatures) -> RuleHit | None:
    for pa in sorted(fa.polarity):
        for pb in sorted(fb.polarity):
            if frozenset((pa, pb)) in _OPPOSED:
                # a claim stating both sides of the axis ("may ... but must not ...") is ambiguous
                if pb in fa.polarity or pa in fb.polarity:
                    continue
                weak = (pa in ("allowed", "required") and not _EXPLICIT[pa].search(fa.text)) or (
                    pb in ("allowed", "required") and not _EXPLICIT[pb].search(fb.text)
                )
                if len(fa.polarity_terms & fb.polarity_terms) < (3 if weak else 2):
                    continue  # the polarity words govern different actions (a bare "may" or "must" needs more overlap)
                strong = {"prohibited", "optional"} & {pa, pb}
                return RuleHit("polarity", "polarity", pa, pb, 0.75 if strong else 0.55)
    return None


def rule_hit(
    fa: ClaimFeatures, fb: ClaimFeatures, *, max_value_ratio: float = ConflictsConfig.max_value_ratio
) -> RuleHit | None:
    """The contradiction the rules see between two parsed claims, ignoring whether they share a subject
    (``max_value_ratio``: ``conflicts.max_value_ratio``)."""
    if scope_differs(fa, fb):
        return None
    return (
        _numeric_hit(fa, fb, max_value_ratio) or _entity_hit(fa, fb) or _name_swap_hit(fa, fb) or _polarity_hit(fa, fb)
    )


def subject_of(a: str, b: str) -> str:
    """A short name for the attribute two claims are about, from the first claim's wording."""
    shared = _terms(a) & _terms(b)
    head = re.split(
        r"\s+(?:is|are|was|were|must|may|can|should|will|shall|receives?|gets?|requires?|has|have|lasts?|takes?|costs?|applies|"
        r"need|needs|is\s+not|are\s+not)\b",
        a,
        maxsplit=1,
    )[0]
    head = re.sub(r"^(?:the|a|an|all|every|each|any|our|your)\s+", "", head.strip(" -•*"), flags=re.I)
    head = re.sub(r"[,;:]\s*$", "", head)
    if 1 <= len(head.split()) <= 10 and _terms(head) & shared and not extract_quantities(head):
        subject = (
            head[0].lower() + head[1:] if head[:2].istitle() or (head[:1].isupper() and head[1:2].islower()) else head
        )
    else:
        words = []
        for tok in _WORD.findall(a):
            if _stem(tok) in shared and tok.lower() not in (w.lower() for w in words):
                words.append(tok)
        subject = " ".join(words[:8]) or head
    scope = re.search(
        r"\b(?:within|inside|outside)\s+(?:the\s+)?(?:EU|EEA|European Union)\b|\b(?:for|in|at)\s+the\s+[A-Z]\w+\s+(?:site|office)\b",
        a,
    )
    if scope and scope.group(0).lower() not in subject.lower() and scope.group(0).lower() in b.lower():
        subject = f"{subject} {scope.group(0)}"
    return subject


# -- the detectors ----------------------------------------------------------------------------


def _normalise_ws(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def split_claims(hit: Any, min_words: int = 4) -> list[Claim]:
    """The sentence claims of one passage (a SearchHit or anything with its fields)."""
    from tether.text.sentences import heading_prefix, split_sentences

    text = hit.text
    base = hit.span[0] if getattr(hit, "span", None) else None
    out = []
    for start, end in split_sentences(text):
        piece = text[start:end]
        lead = re.match(r"^(?:#+\s*|[-*•]\s+|\d+[.)]\s+|Q:\s*|A:\s*)", piece)
        if lead:
            start += lead.end()
            piece = text[start:end]
        heading = heading_prefix(piece)  # "Daily allowance\nThe daily allowance is …": the claim starts after it
        if heading:
            start += heading
            start += len(text[start:end]) - len(text[start:end].lstrip())
            piece = text[start:end]
        sentence = _normalise_ws(piece)
        if len(sentence.split()) < min_words or sentence.startswith("#"):
            continue
        out.append(
            Claim(
                text=sentence,
                source=hit.source,
                passage_id=getattr(hit, "id", None),
                title=getattr(hit, "title", None),
                date=getattr(hit, "date", None),
                authority=getattr(hit, "authority", None),
                status=getattr(hit, "status", None),
                span=(base + start, base + end) if base is not None else None,
            )
        )
    return out


def _doc_key(c: Claim) -> str:
    return c.source


class RuleConflictDetector:
    """Built-in, offline conflict detector: rules over parsed claims, gated by MiniLM similarity.

    ``embedder`` is any ``retrieval.embeddings.Embedder`` (``embed_batch`` returns unit vectors);
    ``config`` is the ``conflicts:`` section (``cfg.conflicts``; None = defaults) and keyword
    arguments change some of its fields.
    """

    def __init__(self, embedder, config: ConflictsConfig | None = None, **thresholds: Any):
        self.embedder = embedder
        self.thresholds = _thresholds(config, thresholds)
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0

    # vectors ---------------------------------------------------------------------------------

    @staticmethod
    def _key(c: Claim) -> tuple[str, str]:
        return (c.passage_id or c.source, hashlib.sha1(c.text.encode("utf-8")).hexdigest())

    def vectors(self, claims: Sequence[Claim]) -> dict[tuple[str, str], np.ndarray]:
        """Unit vectors of the claims, from the LRU where present; the rest embedded in one batch."""
        out: dict[tuple[str, str], np.ndarray] = {}
        missing: dict[tuple[str, str], str] = {}
        with self._lock:
            for c in claims:
                key = self._key(c)
                vec = self._vectors.get(key)
                if vec is not None:
                    self._vectors.move_to_end(key)
                    out[key] = vec
                    self.cache_hits += 1
                elif key not in missing:
                    missing[key] = c.text
        if missing:
            self.cache_misses += len(missing)
            # one text per forward pass: batching pads, and the int8 embedder quantizes activations per
            # batch, so a batched vector would depend on its neighbours and the cache on call order
            one = getattr(self.embedder, "embed_query", None)
            if one is not None:
                vecs = np.stack([np.asarray(one(text), dtype=np.float32) for text in missing.values()])
            else:
                vecs = np.concatenate(
                    [np.asarray(self.embedder.embed_batch([text]), dtype=np.float32) for text in missing.values()]
                )
            with self._lock:
                for key, vec in zip(missing, vecs):
                    out[key] = vec
                    self._vectors[key] = vec
                while len(self._vectors) > self.thresholds.cache_size:
                    self._vectors.popitem(last=False)
        return out

    def similarity(self, a: Claim, b: Claim) -> float:
        vecs = self.vectors([a, b])
        return float(np.dot(vecs[self._key(a)], vecs[self._key(b)]))

    # the gate --------------------------------------------------------------------------------

    def same_subject(self, a: Claim, b: Claim, fa: ClaimFeatures, fb: ClaimFeatures, hit: RuleHit, sim: float) -> bool:
        """Are the two claims about one attribute? Shared key terms plus embedding similarity."""
        t = self.thresholds
        if _doc_key(a) == _doc_key(b) and sim < t.same_document_similarity:
            return False
        shared = len(fa.terms & fb.terms)
        if shared < t.min_shared_terms:
            return False
        if sim >= t.strong_similarity:
            return True
        floor = t.polarity_similarity if hit.kind == "polarity" else t.pair_similarity
        if hit.kind == "date" and shared < 2:
            floor = max(floor, t.unanchored_similarity)  # one shared word rarely names the same event
        if hit.slot == "approver":
            floor = max(floor, t.approver_similarity)
        if hit.kind == "entity" and hit.slot not in (None, "approver") and shared >= 2:
            floor = min(floor, t.role_similarity)
        elif shared <= 1:
            floor = max(floor, t.lone_term_similarity if hit.anchored else t.unanchored_similarity)
        return sim >= floor

    def _conflict(self, a: Claim, b: Claim, hit: RuleHit, sim: float) -> Conflict:
        superseded = [c.status == "superseded" for c in (a, b)]
        kind = "supersession" if sum(superseded) == 1 else hit.kind
        confidence = hit.confidence * (0.6 + 0.4 * max(0.0, min(1.0, sim)))
        return Conflict(
            kind=kind,
            value_type=hit.value_type,
            subject=subject_of(a.text, b.text),
            claims=(_with_value(a, hit.value_a), _with_value(b, hit.value_b)),
            confidence=round(confidence, 4),
        )

    # the protocol ----------------------------------------------------------------------------

    def judge(self, a: Claim, b: Claim) -> Conflict | None:
        fa, fb = claim_features(_normalise_ws(a.text)), claim_features(_normalise_ws(b.text))
        hit = rule_hit(fa, fb, max_value_ratio=self.thresholds.max_value_ratio)
        if hit is None:
            return None
        sim = self.similarity(a, b)
        if not self.same_subject(a, b, fa, fb, hit, sim):
            log.debug(
                "rule hit %s dropped by the subject gate (similarity %.2f): %r / %r", hit.kind, sim, a.text, b.text
            )
            return None
        return self._conflict(a, b, hit, sim)

    def claims(self, passages: Sequence[Any]) -> list[Claim]:
        """Claims of the passages, without repeats (overlapping chunks share sentences)."""
        seen: set[tuple[str, str]] = set()
        out: list[Claim] = []
        for p in passages:
            for c in split_claims(p, self.thresholds.min_claim_words):
                key = (c.source, c.text)
                if key in seen:
                    continue
                seen.add(key)
                out.append(c)
                if len(out) >= self.thresholds.max_claims:
                    return out
        return out

    def candidate_hits(self, claims: Sequence[Claim]) -> list[tuple[int, int, RuleHit]]:
        """Pairs (i, j) whose rules fire, before the subject gate; cheap, no model."""
        feats = [claim_features(c.text) for c in claims]
        live = [i for i, f in enumerate(feats) if f.has_signal and f.terms]
        out = []
        for x, i in enumerate(live):
            fi = feats[i]
            for j in live[x + 1 :]:
                fj = feats[j]
                if claims[i].text == claims[j].text:
                    continue
                shared = fi.terms & fj.terms
                if len(shared) < self.thresholds.min_shared_terms:
                    continue  # the gate would drop it: do not embed for it
                if _doc_key(claims[i]) == _doc_key(claims[j]) and len(shared) < 0.5 * len(fi.terms | fj.terms):
                    continue  # one document: only near-duplicates are compared
                hit = rule_hit(fi, fj, max_value_ratio=self.thresholds.max_value_ratio)
                if hit is not None:
                    out.append((i, j, hit))
        return out

    def detect(self, passages: Sequence[Any]) -> list[Conflict]:
        claims = self.claims(passages)
        if len(claims) < 2:
            return []
        hits = self.candidate_hits(claims)
        if not hits:
            return []
        involved = sorted({i for i, _, _ in hits} | {j for _, j, _ in hits})
        vecs = self.vectors([claims[i] for i in involved])
        found: dict[tuple, Conflict] = {}
        for i, j, hit in hits:
            a, b = claims[i], claims[j]
            sim = float(np.dot(vecs[self._key(a)], vecs[self._key(b)]))
            if not self.same_subject(a, b, claim_features(a.text), claim_features(b.text), hit, sim):
                continue
            conflict = self._conflict(a, b, hit, sim)
            key = tuple(sorted(((a.source, a.text), (b.source, b.text))))
            if key not in found or found[key].confidence < conflict.confidence:
                found[key] = conflict
        return sorted(found.values(), key=lambda c: -c.confidence)


def _with_value(c: Claim, value: str) -> Claim:
    return replace(c, value=value)


class NLIConflictDetector:
    """The rules, plus a sentence-transformers CrossEncoder NLI model for pairs the rules say nothing about.

    The model is a local folder (``nli_model``); its contradiction label is read from the model config
    (``id2label``). A pair on one subject (the same gate as the rules) whose contradiction probability,
    in either order, reaches ``contradiction_threshold`` is reported with kind ``polarity`` (or
    ``supersession``) and confidence equal to that probability.
    """

    def __init__(
        self,
        embedder,
        nli_model: str,
        config: ConflictsConfig | None = None,
        *,
        contradiction_threshold: float | None = None,
        max_pairs: int | None = None,
        **thresholds: Any,
    ):
        if contradiction_threshold is not None:
            thresholds["contradiction_threshold"] = contradiction_threshold
        if max_pairs is not None:
            thresholds["nli_max_pairs"] = max_pairs
        self.rules = RuleConflictDetector(embedder, config, **thresholds)
        self.threshold = self.rules.thresholds.contradiction_threshold
        self.max_pairs = self.rules.thresholds.nli_max_pairs
        from tether.crossencoder import load_cross_encoder

        self.model = load_cross_encoder(nli_model, setting="assistant.nli_model", what="NLI model")
        config = getattr(self.model.model, "config", None) if getattr(self.model, "model", None) is not None else None
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        hits = [i for i, name in id2label.items() if "contradict" in name.lower()]
        if len(hits) != 1:
            raise BackendUnavailable(
                f"NLI model {nli_model}: config.id2label {id2label} has no single 'contradiction' label; "
                "use an NLI cross-encoder whose config names its labels (e.g. contradiction/entailment/neutral)"
            )
        self.contradiction_index = hits[0]
        self.num_labels = len(id2label)

    def contradiction_probs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """P(contradiction) of each (premise, hypothesis) pair."""
        if not pairs:
            return []
        import torch

        logits = self.model.predict(
            list(pairs), show_progress_bar=False, activation_fn=torch.nn.Identity(), apply_softmax=False
        )
        scores = np.asarray(logits, dtype=np.float64)
        scores = scores.reshape(len(pairs), -1)
        scores = scores - scores.max(axis=1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=1, keepdims=True)
        return [float(p[self.contradiction_index]) for p in probs]

    def _nli(self, a: Claim, b: Claim, sim: float) -> Conflict | None:
        p_ab, p_ba = self.contradiction_probs([(a.text, b.text), (b.text, a.text)])
        p = max(p_ab, p_ba)
        if p < self.threshold:
            return None
        superseded = [c.status == "superseded" for c in (a, b)]
        kind = "supersession" if sum(superseded) == 1 else "polarity"
        return Conflict(kind, "polarity", subject_of(a.text, b.text), (a, b), round(p, 4))

    def _gate(self, a: Claim, b: Claim, sim: float) -> bool:
        fa, fb = claim_features(a.text), claim_features(b.text)
        if scope_differs(fa, fb):
            return False
        probe = RuleHit("nli", "polarity", "", "", 0.0)
        return self.rules.same_subject(a, b, fa, fb, probe, sim)

    def judge(self, a: Claim, b: Claim) -> Conflict | None:
        found = self.rules.judge(a, b)
        if found is not None:
            return found
        sim = self.rules.similarity(a, b)
        if not self._gate(a, b, sim):
            return None
        return self._nli(a, b, sim)

    def detect(self, passages: Sequence[Any]) -> list[Conflict]:
        found = self.rules.detect(passages)
        done = {
            tuple(sorted(((c.claims[0].source, c.claims[0].text), (c.claims[1].source, c.claims[1].text))))
            for c in found
        }
        claims = [c for c in self.rules.claims(passages) if claim_features(c.text).terms]
        if len(claims) < 2 or self.max_pairs == 0:
            return found
        vecs = self.rules.vectors(claims)
        keyed = [self.rules._key(c) for c in claims]
        candidates = []
        for i in range(len(claims)):
            for j in range(i + 1, len(claims)):
                a, b = claims[i], claims[j]
                if tuple(sorted(((a.source, a.text), (b.source, b.text)))) in done:
                    continue
                sim = float(np.dot(vecs[keyed[i]], vecs[keyed[j]]))
                if self._gate(a, b, sim):
                    candidates.append((sim, a, b))
        candidates.sort(key=lambda t: -t[0])
        for sim, a, b in candidates[: self.max_pairs]:
            conflict = self._nli(a, b, sim)
            if conflict is not None:
                found.append(conflict)
        return sorted(found, key=lambda c: -c.confidence)


def get_detector(embedder, nli_model: str | None = None, config: ConflictsConfig | None = None) -> ConflictDetector:
    """The rule detector, or rules + NLI when a local NLI cross-encoder path is given; ``config``
    is the ``conflicts:`` section (``cfg.conflicts``; None = defaults)."""
    if nli_model:
        return NLIConflictDetector(embedder, nli_model, config)
    return RuleConflictDetector(embedder, config)


def claim_from_json(d: dict[str, Any]) -> Claim:
    """A Claim from a labelled-set side ({source, text, date, authority, status})."""
    return Claim(
        text=_normalise_ws(d["text"]),
        source=d["source"],
        title=d.get("title"),
        date=d.get("date"),
        authority=d.get("authority"),
        status=d.get("status"),
        passage_id=d.get("passage_id"),
    )


__all__ = [
    "Claim",
    "Conflict",
    "ConflictDetector",
    "RuleConflictDetector",
    "NLIConflictDetector",
    "ClaimFeatures",
    "claim_features",
    "rule_hit",
    "scope_differs",
    "split_claims",
    "subject_of",
    "get_detector",
    "claim_from_json",
]
