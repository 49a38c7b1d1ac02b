"""Answerability: can the sentences selected for a question answer it at all?

A near-miss question is on topic (its passages are retrieved and score well) but asks for a fact no
passage states: "What is the maximum length of a restore point name?" over a page that describes
restore points but gives no length. Relevance cannot see that; the kind of answer the question asks
for can. ``expected_answer(question)`` reads it from the question's wording (English question forms,
nothing of any corpus):

* ``quantity``: "how many / how much / how long / how often…", "what is the maximum / minimum…",
  "which port / what size / what limit…"; a ``bound`` ("max" for "maximum", "at most", "longest",
  "min" for "minimum", "at least") and the unit words it names ("in bytes", "how many seconds");
* ``version``: "in which release / since what version…";
* ``open``: anything else (a name, a reason, a yes/no): not checked here.

``judge(question, windows)`` looks at the best-ranked sentence windows (a sentence and the one or two
after it in its passage: reference documentation states "The default is 12." right after the
sentence that says what the setting does) and says whether one of them states a value of the
expected kind that the question does not already state: a number (or a number with one of the named
units; under a "max" bound, in a sentence that bounds it), or a version. ``Verdict.evidence`` is the
first sentence that does, so a generator can be shown it; ``Verdict.reason`` says why not, in the
user's terms. Pure functions over text; the engine and the extractive answerer call it with the
sentences they ranked (``assistant.answerability``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tether.text.quantities import extract_quantities, find_numbers

_QUANTITY_Q = re.compile(
    r"\bhow\s+(?:many|much|long|often|large|big|old|far|frequently|soon|high|low|deep|wide)\b"
    r"|\b(?:what|which)(?:'s|\s+is|\s+are|\s+was|\s+were)?\s+(?:the\s+)?(?:\w+\s+){0,3}?"
    r"(?:maximum|minimum|max|min|number|size|length|limit|timeout|interval|percentage|port|amount|count|"
    r"duration|threshold|capacity|ratio|rate)\b",
    re.I,
)
_VERSION_Q = re.compile(
    r"\b(?:in|since|from|as\s+of|until|before|after)?\s*(?:which|what)\s+(?:\w+\s+)?(?:release|version)\b", re.I
)
_MAX_Q = re.compile(r"\b(?:maximum|max|at\s+most|longest|largest|biggest|highest|upper\s+limit|cap)\b", re.I)
_MIN_Q = re.compile(r"\b(?:minimum|min|at\s+least|shortest|smallest|lowest|lower\s+limit)\b", re.I)
_MAX_S = re.compile(
    r"\b(?:maximum|max|at\s+most|up\s+to|no\s+more\s+than|not\s+more\s+than|limit(?:ed|s)?|cannot\s+exceed|"
    r"must\s+not\s+exceed|may\s+not\s+exceed|exceed(?:s|ing)?|longest|largest|highest|capped|truncated|less\s+than|"
    r"fewer\s+than|under|below)\b",
    re.I,
)
_MIN_S = re.compile(
    r"\b(?:minimum|min|at\s+least|no\s+less\s+than|not\s+less\s+than|no\s+fewer\s+than|more\s+than|over|above|"
    r"shortest|smallest|lowest)\b",
    re.I,
)
# units a question may name; a value "in bytes" must come with a size unit, "how many seconds" with a time unit
_UNIT_GROUPS: dict[str, tuple[str, ...]] = {
    "time": tuple(
        f"{w}{s}"
        for w in ("second", "minute", "min", "hour", "hr", "day", "week", "month", "year", "millisecond", "microsecond")
        for s in ("", "s")
    )
    + ("ms", "us"),
    "size": (
        "byte",
        "bytes",
        "kb",
        "kib",
        "mb",
        "mib",
        "gb",
        "gib",
        "tb",
        "tib",
        "kilobytes",
        "megabytes",
        "gigabytes",
        "terabytes",
        "bits",
        "pages",
        "blocks",
    ),
    "text": ("characters", "chars", "character", "letters", "digits", "columns", "lines", "words"),
}
_UNIT_OF = {w: group for group, words in _UNIT_GROUPS.items() for w in words}
_VERSION_S = re.compile(r"\b(?:v|version\s+|release\s+)?\d+\.\d+(?:\.\d+)*\b|\b(?:version|release|v)\s?\d+\b", re.I)
_REFERENCE = re.compile(
    r"(?:\b(?:section|chapter|figure|table|example|appendix|step|page|rfc)\s+[\d.]+\w*)|(?:\w\(\d\w?\))",
    re.I,
)
# number words that are pronouns or determiners at least as often as counts ("the one before it")
_WEAK_WORDS = {"one", "once"}


@dataclass(frozen=True)
class Expected:
    """What kind of answer a question asks for."""

    kind: str = "open"  # quantity | version | open
    bound: str | None = None  # max | min: the question asks for a limit
    units: tuple[str, ...] = ()  # unit groups it names: time | size | text
    stated: frozenset[float] = field(default_factory=frozenset)  # values the question itself states

    @property
    def checked(self) -> bool:
        return self.kind != "open"

    def describe(self) -> str:
        if self.kind == "version":
            return "a version or release"
        what = {"max": "a maximum", "min": "a minimum"}.get(self.bound or "", "a number")
        if self.units:
            what += " in " + " or ".join(
                {"time": "time units", "size": "size units", "text": "characters"}[u] for u in self.units
            )
        return what


@dataclass(frozen=True)
class Verdict:
    answerable: bool
    expected: Expected
    evidence: str | None = None  # the first ranked sentence that states a value of the expected kind
    reason: str = ""  # why not answerable, for the user and the log


def expected_answer(question: str) -> Expected:
    """The kind of answer ``question`` asks for (see the module docstring)."""
    q = " ".join(question.split())
    stated = frozenset(n.value for n in find_numbers(q))
    if _VERSION_Q.search(q):
        return Expected("version", stated=stated)
    if not _QUANTITY_Q.search(q):
        return Expected(stated=stated)
    bound = "max" if _MAX_Q.search(q) else "min" if _MIN_Q.search(q) else None
    words = re.findall(r"[a-z]+", q.lower())
    named = [
        _UNIT_OF[w]
        for i, w in enumerate(words)
        if w in _UNIT_OF and len(w) > 2 and (i > 0 and words[i - 1] in ("in", "many", "much", "of") or w.endswith("s"))
    ]
    if re.search(r"\bhow\s+(?:often|soon|frequently)\b", q, re.I):  # not "how long": a name can be long
        named.append("time")
    return Expected("quantity", bound=bound, units=tuple(dict.fromkeys(named)), stated=stated)


def _values(sentence: str, expected: Expected) -> list[tuple[int, int]]:
    """Spans of the numbers in ``sentence`` that could answer: not references ("Section 20.4",
    "git-config(1)"), not a value the question states, not a weak number word."""
    masked = _REFERENCE.sub(lambda m: " " * len(m.group(0)), sentence)
    out = []
    for n in find_numbers(masked):
        if n.value in expected.stated or n.text.lower() in _WEAK_WORDS:
            continue
        out.append(n.span)
    return out


def _has_unit(sentence: str, spans: Sequence[tuple[int, int]], groups: Sequence[str]) -> bool:
    """Whether a value of ``spans`` comes with a unit of ``groups`` ("64 characters", "16MB"), or the
    sentence states the unit for its value ("it is taken as seconds")."""
    lower = sentence.lower()
    for _, end in spans:
        glued = re.match(r"[a-z]+", lower[end:])
        after = [glued.group(0)] if glued else re.findall(r"[a-z]+", lower[end : end + 24])[:2]
        if any(_UNIT_OF.get(w) in groups for w in after):
            return True
    return any(re.search(rf"\b(?:in|as|of)\s+{w}\b", lower) for g in groups for w in _UNIT_GROUPS[g] if len(w) > 2)


def holds(sentence: str, expected: Expected) -> bool:
    """Whether ``sentence`` states a value of the kind ``expected`` asks for."""
    if expected.kind == "version":
        return bool(_VERSION_S.search(_REFERENCE.sub(lambda m: " " * len(m.group(0)), sentence)))
    if expected.kind != "quantity":
        return True
    spans = _values(sentence, expected)
    if not spans:
        return False
    if expected.units and not _has_unit(sentence, spans, expected.units):
        return False
    if expected.bound == "max" and not (
        _MAX_S.search(sentence) or any(q.bound == "max" for q in extract_quantities(sentence))
    ):
        return False
    if expected.bound == "min" and not (
        _MIN_S.search(sentence) or any(q.bound == "min" for q in extract_quantities(sentence))
    ):
        return False
    return True


def windows(
    ranked: Sequence[tuple[float, int, int]],
    sentences: Sequence[Sequence[str]] | Mapping[int, Sequence[str]],
    *,
    depth: int,
    follow: int,
) -> list[list[str]]:
    """The ``depth`` best sentences (``ranked``: (score, passage index, sentence index), any order),
    each with the ``follow`` sentences after it in its passage (``sentences[p]``, reading order)."""
    out = []
    for _, p, i in sorted(ranked, key=lambda r: -r[0])[:depth]:
        out.append(list(sentences[p][i : i + 1 + follow]))
    return out


def judge(question: str, ranked_windows: Sequence[Sequence[str]], expected: Expected | None = None) -> Verdict:
    """Whether one of ``ranked_windows`` (best first; see ``windows``) can answer ``question``."""
    expected = expected or expected_answer(question)
    if not expected.checked:
        return Verdict(True, expected)
    for window in ranked_windows:
        for sentence in window:
            if holds(sentence, expected):
                return Verdict(True, expected, evidence=sentence)
    return Verdict(
        False,
        expected,
        reason=f"the question asks for {expected.describe()} and none of the passages closest to it states one",
    )
