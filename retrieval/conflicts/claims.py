"""Claims: the sentences of retrieved passages, and what the rules read from each (``ClaimFeatures``).

``split_claims`` cuts a passage into sentence claims with character spans; ``claim_features`` parses
one sentence into its quantities (``tether.text.quantities``), key terms, places, scope contrasts,
polarity, roles and names. Every word list comes from ``retrieval.lexicon``; the patterns here are
structure only (what a role, a person's name or an "approved by" phrase looks like).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

from retrieval.lexicon import lexicon
from tether.text.quantities import CURRENCIES, Quantity, extract_quantities, singular
from tether.text.terms import STOP_WORDS

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


def normalise_ws(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def claim_from_json(d: dict[str, Any]) -> Claim:
    """A Claim from a labelled-set side ({source, text, date, authority, status})."""
    return Claim(
        text=normalise_ws(d["text"]),
        source=d["source"],
        title=d.get("title"),
        date=d.get("date"),
        authority=d.get("authority"),
        status=d.get("status"),
        passage_id=d.get("passage_id"),
    )


def doc_key(c: Claim) -> str:
    return c.source


# -- key terms --------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_][\w'’-]*")


def stem(word: str) -> str:
    """A light English stemmer for key terms ("approved" -> "approv", "days" -> "day")."""
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


@dataclass(frozen=True)
class _Vocabulary:
    stop: frozenset[str]  # left out of key terms
    value: frozenset[str]  # value words (units, months, currencies)
    stop_stems: frozenset[str]


@lru_cache(maxsize=1)
def vocabulary() -> _Vocabulary:
    """Key-term vocabulary: the shared stop words, the lexicon's and the currency names."""
    lex = lexicon()
    stop = frozenset(STOP_WORDS) | lex.stop_words
    value = lex.value_words | {k for k in CURRENCIES if k.isalpha()}
    return _Vocabulary(stop, value, frozenset(stem(w) for w in stop | value if len(w) >= 3))


def word_tokens(text: str) -> list[str]:
    return _WORD.findall(text)


@lru_cache(maxsize=16384)
def terms(text: str) -> frozenset[str]:
    """The stemmed key terms of a text: content words, not stop words or value words."""
    v = vocabulary()
    out = set()
    for tok in _WORD.findall(text):
        for part in tok.split("-"):
            low = part.lower()
            if len(low) < 3 or low in v.stop or low in v.value:
                continue
            s = stem(low)
            if s and s not in v.stop and s not in v.stop_stems:
                out.add(s)
    return frozenset(out)


# -- the patterns built from the lexicon ------------------------------------------------------

_NAME_WORD = r"[A-ZÀ-ÖØ-ÞĀ-Ž][a-zà-öø-ÿā-ž'’-]+"


@dataclass(frozen=True)
class _Patterns:
    place: tuple[re.Pattern[str], ...]
    role_head: str
    role_is_person: re.Pattern[str]
    person_is_role: re.Pattern[str]
    approver: re.Pattern[str]
    responsible: re.Pattern[str]
    who_cut: re.Pattern[str]
    name: re.Pattern[str]
    role_tail: re.Pattern[str]
    clause_split: re.Pattern[str]
    of_phrase: re.Pattern[str]


@lru_cache(maxsize=1)
def patterns() -> _Patterns:
    lex = lexicon()
    suffixes = "|".join(map(re.escape, lex.place_suffixes))
    sites = "|".join(map(re.escape, lex.site_words))
    sites_no_team = "|".join(re.escape(w) for w in lex.site_words if w not in ("team", "offices"))
    head = "(?:" + "|".join(map(re.escape, lex.role_heads)) + ")"
    particles = "|".join(map(re.escape, lex.name_particles))
    person = rf"(?:{_NAME_WORD}(?:\s+(?:{particles})){{0,2}}\s+{_NAME_WORD})"
    role = rf"(?:[A-Za-z-]+\s+){{0,4}}{head}s?\b(?:\s+of\s+[A-Z][a-z]+)?|Head\s+of\s+[A-Z][a-z]+"
    return _Patterns(
        place=(
            re.compile(
                rf"\b(?:[Ii]n|[Aa]t|[Ff]rom|[Ff]or)\s+(?:the\s+)?([A-Z][a-zà-ž]+(?:\s+(?:{suffixes}))?)(?![\w-])"
            ),
            re.compile(rf"\b[Tt]he\s+([A-Z][a-zà-ž]+)\s+(?:{sites})\b"),
            re.compile(rf"\b([A-Z][a-zà-ž]+)\s+(?:{sites_no_team})\b"),
        ),
        role_head=head,
        role_is_person=re.compile(
            rf"(?P<role>{role})(?:\s+(?:for|in|at|of)\s+(?:the\s+)?[A-Z][a-zà-ž]+(?:\s+(?:{sites_no_team}))?)?"
            rf"\s*(?:is|was|remains|will\s+be|:|,|\(|-|–)\s*(?P<name>{person})"
        ),
        person_is_role=re.compile(rf"(?P<name>{person}),\s+(?:the\s+|our\s+)?(?P<role>{role})"),
        approver=re.compile(
            rf"\b(?:{lex.approval_verbs})\s+(?:(?:{lex.approval_fillers})\s+)?"
            rf"(?:by|from)\s+(?:(?:{lex.approval_determiners})\s+)?(?P<who>[^,.;:()]+)",
            re.I,
        ),
        responsible=re.compile(
            rf"\b(?:(?:{lex.responsibility_verbs})\s+(?:(?:{lex.approval_fillers})\s+)?by|{lex.referral_phrases})"
            rf"\s+(?:(?:{lex.approval_determiners})\s+)?(?P<who>[^,.;:()]+)",
            re.I,
        ),
        who_cut=re.compile(rf"\s+(?:{lex.approver_cut})\b.*$", re.I),
        name=re.compile(rf"(?<![\w@.]){_NAME_WORD}(?:\s+(?:(?:{particles})\s+)?{_NAME_WORD})*"),
        role_tail=re.compile(head + r"s?$", re.I),
        clause_split=re.compile(r"[;:]|,?\s(?:" + "|".join(map(re.escape, lex.clause_split)) + r")\s", re.I),
        of_phrase=re.compile(
            r"^(?:\s*(?:per|a|an|each|every|for\s+each|for\s+every)\s+[\w-]+)?\s+of\s+([\w\s'’-]+)", re.I
        ),
    )


# -- features ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """A quantity with what it measures: the rate denominator and the attribute words around it."""

    q: Quantity
    per: str | None
    attribute: frozenset[str]
    context: frozenset[str]  # every key term of the sentence


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
    ]  # (slot, holder): ("data protection officer", "A. Person"), ("approver", "Finance Director")
    names: frozenset[str]  # proper names that are not roles
    measured: tuple[Measured, ...] = ()  # the quantities other than bare years, with what they measure
    inside: frozenset[str] = frozenset()  # X of "within X" (lower case)
    outside: frozenset[str] = frozenset()  # X of "outside X"

    @property
    def years(self) -> frozenset[str]:
        return frozenset(q.iso or "" for q in self.quantities if q.kind == "date" and q.unit == "year")

    @property
    def has_signal(self) -> bool:
        return bool(self.quantities or self.polarity or self.roles or self.names)


def _clean_role(raw: str) -> str:
    stop = vocabulary().stop | lexicon().role_stop
    words = raw.split()
    keep: list[str] = []
    for w in reversed(words):
        if w.lower() in stop and not (keep and w.lower() == "of"):
            break
        keep.append(w)
    role = " ".join(reversed(keep))
    return role if role.lower() not in ("", "of") else raw


_PRONOUN_SUBJECT = re.compile(r"\s*,?\s*(?:it|they|this|these|which|that)\b", re.I)


def polarity_of(text: str) -> frozenset[str]:
    """The modal and lifecycle labels of a text: allowed | prohibited | required | optional |
    default | not-default | removed | deprecated (``retrieval/lexicon.yaml``)."""
    lex = lexicon()
    out = set()
    rest = lex.restricted.sub(" ", text)  # "may only ... when" is a condition, not a permission
    for label, pattern in lex.polarity:
        if pattern.search(rest):
            out.add(label)
            rest = pattern.sub(" ", rest)  # "not permitted" must not also read as "permitted"
    if "removed" in out:
        out.discard("deprecated")  # "deprecated for a while, and now removed": the later state holds
    return frozenset(out)


def _measured(text: str, quantities: Sequence[Quantity]) -> list[Measured]:
    lex = lexicon()
    pat = patterns()
    context = terms(text)
    implied = [per for pattern, per in lex.implied_per if pattern.search(text)]
    out = []
    for q in quantities:
        per = q.per or (implied[0] if len(implied) == 1 and q.kind in ("amount", "count") else None)
        words = set()
        inner = re.sub(r"^\S+\s+", "", q.text) if q.kind in ("duration", "count") else ""
        words |= terms(inner) - lex.unit_qualifiers
        m = pat.of_phrase.match(text[q.span[1] :])
        if m:
            phrase = []
            stop = vocabulary().stop | lex.of_phrase_stop
            for word in m.group(1).split()[:4]:
                if word.lower() in stop:
                    break
                phrase.append(word)
            words |= terms(" ".join(phrase))
        out.append(Measured(q, per, frozenset(words), context))
    return out


@lru_cache(maxsize=8192)
def claim_features(text: str) -> ClaimFeatures:
    """Parse one sentence (cached by text)."""
    lex = lexicon()
    pat = patterns()
    quantities = tuple(extract_quantities(text))
    places = set()
    for pattern in pat.place:
        for m in pattern.finditer(text):
            word = m.group(1)
            if word.split()[0] in lex.not_place or re.search(r"[a-z][A-Z]", word):
                continue
            places.add(word.lower())
    contrasts = tuple(
        frozenset(i for i, p in enumerate(group.members) if p.search(text)) for group in lex.contrast_groups
    )
    inside = frozenset(m.group("x").lower() for m in lex.inside.finditer(text))
    outside = frozenset(m.group("x").lower() for m in lex.outside.finditer(text))
    roles: list[tuple[str, str]] = []
    role_words: set[str] = set()
    for pattern in (pat.role_is_person, pat.person_is_role):
        for m in pattern.finditer(text):
            role = _clean_role(m.group("role"))
            roles.append((role.lower(), m.group("name")))
            role_words.update(role.split())
    for slot, pattern in (("approver", pat.approver), ("responsible", pat.responsible)):
        for m in pattern.finditer(text):
            who = pat.who_cut.sub("", m.group("who").strip())
            who = re.sub(r"^(?:the|their|your|our|an?)\s+", "", who, flags=re.I)
            if who and len(who.split()) <= 4 and not extract_quantities(who):
                roles.append((slot, who))
                role_words.update(who.split())
    names = set()
    for m in pat.name.finditer(text):
        if m.start() == 0 or text[max(0, m.start() - 2) : m.start()].strip() in (".", ":", "-", "•"):
            continue  # sentence-initial capital
        name = m.group(0)
        first = name.split()[0]
        if first in lex.not_place or first in role_words or name in role_words:
            continue
        if pat.role_tail.search(name):
            continue
        names.add(name)
    polarity = polarity_of(text)
    polarity_terms = set()
    if polarity:
        previous: frozenset[str] = frozenset()
        for clause in pat.clause_split.split(text):
            if not clause:
                continue
            own = terms(clause)
            if polarity_of(clause):
                polarity_terms |= own
                if _PRONOUN_SUBJECT.match(clause):  # "..., so it has been demoted": the subject is before
                    polarity_terms |= previous
            previous = own
        if not polarity_terms:  # the polarity wording spans a clause boundary ("was supposed to …, but")
            polarity_terms = set(terms(text))
    values = [q for q in quantities if not (q.kind == "date" and q.unit == "year")]
    if lex.about_document.search(text):
        values = [q for q in values if q.kind != "date"]
    return ClaimFeatures(
        text,
        quantities,
        terms(text),
        frozenset(places),
        contrasts,
        polarity,
        frozenset(polarity_terms),
        tuple(roles),
        frozenset(names),
        tuple(_measured(text, values)),
        inside,
        outside,
    )


# -- claims of a passage ----------------------------------------------------------------------


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
        sentence = normalise_ws(piece)
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


# -- subject names ----------------------------------------------------------------------------


def subject_of(a: str, b: str) -> str:
    """A short name for the attribute two claims are about, from the first claim's wording."""
    lex = lexicon()
    shared = terms(a) & terms(b)
    head = re.split(rf"\s+(?:{lex.subject_verbs})\b", a, maxsplit=1)[0]
    determiners = "|".join(map(re.escape, lex.subject_determiners))
    head = re.sub(rf"^(?:{determiners})\s+", "", head.strip(" -•*"), flags=re.I)
    head = re.sub(r"[,;:]\s*$", "", head)
    if 1 <= len(head.split()) <= 10 and terms(head) & shared and not extract_quantities(head):
        subject = (
            head[0].lower() + head[1:] if head[:2].istitle() or (head[:1].isupper() and head[1:2].islower()) else head
        )
    else:
        words = []
        for tok in _WORD.findall(a):
            if stem(tok) in shared and tok.lower() not in (w.lower() for w in words):
                words.append(tok)
        subject = " ".join(words[:8]) or head
    sites = "|".join(re.escape(w) for w in lex.site_words if w not in ("team", "offices"))
    scope = re.search(
        r"\b(?:within|inside|outside)\s+(?:the\s+)?[A-Z][\w-]*(?:\s+[A-Z][\w-]*)?"
        rf"|\b(?:for|in|at)\s+the\s+[A-Z]\w+\s+(?:{sites})\b",
        a,
    )
    if scope and scope.group(0).lower() not in subject.lower() and scope.group(0).lower() in b.lower():
        subject = f"{subject} {scope.group(0)}"
    return subject
