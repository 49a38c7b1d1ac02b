"""The rules: which pairs of parsed claims contradict, before the subject gate (no model).

1. Scope: claims about a different place, year, population or purpose ("within X" vs "outside X",
   two site names, weekdays vs weekends, 2023 vs 2024) never conflict.
2. Numeric and date: comparable quantities (same dimension and unit family, same rate denominator;
   normalised by ``tether.text.quantities``) that disagree. A value inside a stated range agrees.
3. Entity: the same role or approval slot filled by different people or roles; near-identical
   sentences naming different things.
4. Polarity: allowed vs prohibited, required vs optional.

Adding a rule: a ``<kind>_hit(fa, fb) -> RuleHit | None`` here, tried in ``rule_hit``; its words go in
``retrieval/lexicon.yaml``, its thresholds in ``ConflictsConfig``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from retrieval.conflicts.claims import ClaimFeatures, Measured, terms
from retrieval.lexicon import lexicon
from tether.config import ConflictsConfig
from tether.text.quantities import Quantity

# durations of different unit families, in days: a month is 30.44 days on average, so "3 months" and
# "90 days" state one period while "6 months" and "90 days" do not
_DAYS_PER = {"day": 1.0, "month": 30.44}  # not hours: "2 days per week" and "32 hours per week" are two measures
_EQUIVALENT = 0.1  # cross-family durations within 10% of each other are one value in two units


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
    explicit: bool = False  # entity hits: one claim rejects the other's holder ("rather than by X")


def rejects(text: str, holder: str) -> bool:
    """Does ``text`` reject ``holder`` ("..., rather than by the X", "go to Y, not X")?"""
    lex = lexicon()
    name = re.escape(holder.strip()).replace(r"\ ", r"\s+")
    return bool(re.search(rf"\b(?:{lex.denials})\s+(?:(?:{lex.approval_determiners})\s+)?{name}\b", text, re.I))


def scope_differs(fa: ClaimFeatures, fb: ClaimFeatures) -> str | None:
    """Why two claims are about different scopes (so cannot contradict), or None."""
    if fa.places and fb.places and not (fa.places & fb.places):
        return f"places {sorted(fa.places)} vs {sorted(fb.places)}"
    for i, (ma, mb) in enumerate(zip(fa.contrasts, fb.contrasts)):
        if ma and mb and not (ma & mb):
            return f"contrast group {lexicon().contrast_groups[i].name}: {sorted(ma)} vs {sorted(mb)}"
    for x in (fa.inside & fb.outside) | (fa.outside & fb.inside):
        if not (x in fa.inside and x in fa.outside) and not (x in fb.inside and x in fb.outside):
            return f"inside vs outside {x}"
    return None


def in_days(q: Quantity) -> Quantity | None:
    """A calendar duration restated in days (months at 30.44 days), for comparing across unit families."""
    factor = _DAYS_PER.get(q.unit) if q.kind == "duration" and q.bound != "range" else None
    if factor is None or q.value is None:
        return None
    return replace(q, unit="day", value=float(q.value) * factor, high=None)


def counted(q: Quantity) -> Quantity:
    """A count restated in the class of its counted noun ("300 attendees" counts people)."""
    if q.kind != "count" or not q.unit:
        return q
    cls = lexicon().count_classes.get(q.unit.lower())
    return replace(q, unit=cls) if cls else q


def in_class(m: Measured) -> Measured:
    """A measured count in the class of its noun; the noun is then no longer an attribute word."""
    q = counted(m.q)
    if q is m.q:
        return m
    return replace(m, q=q, attribute=m.attribute - terms(m.q.unit))


def cross_unit(x: Quantity, y: Quantity) -> tuple[Quantity, Quantity, bool] | None:
    """Two durations in different unit families ("6 months", "90 days") as days, and whether they
    state one value (within 10%); None when they cannot be compared."""
    if x.kind != "duration" or y.kind != "duration" or x.unit == y.unit:
        return None
    dx, dy = in_days(x), in_days(y)
    if dx is None or dy is None or not dx.comparable(dy):
        return None
    lo, hi = sorted((abs(float(dx.value or 0)), abs(float(dy.value or 0))))
    return dx, dy, hi > 0 and (hi - lo) <= _EQUIVALENT * hi


def periods_differ(fa: ClaimFeatures, fb: ClaimFeatures) -> bool:
    """Values for different years ("EUR 1,200 for 2024" vs "EUR 900 in 2023"): the bare years of the two
    claims differ, and neither claim's bare year is the year of a full date on the other side (a claim
    dated 1 May 2025 about the 2025/26 schedule is not about another period than one naming 2025)."""
    years_a, years_b = fa.years, fb.years
    if not years_a or not years_b or years_a & years_b:
        return False
    dated_a = {(q.iso or "")[:4] for q in fa.quantities if q.kind == "date" and q.unit != "year"}
    dated_b = {(q.iso or "")[:4] for q in fb.quantities if q.kind == "date" and q.unit != "year"}
    return not (years_a & dated_b) and not (years_b & dated_a)


def same_attribute(
    x: Measured, y: Measured, max_value_ratio: float, *, shared_context: int = 3, lone: bool = False
) -> bool:
    """Do two measured quantities measure one attribute (rate, attribute words, a plausible ratio)?
    An attribute named on one side only ("180 minutes of parking") must appear in the other claim,
    unless each claim states this one value (``lone``), with the same bound, and the claims share
    ``shared_context`` key terms besides (the same thing, said shorter)."""
    if x.per != y.per:
        return False
    common = len(x.context & y.context) if lone and x.q.bound == y.q.bound else 0
    if x.attribute and y.attribute:
        jaccard = len(x.attribute & y.attribute) / len(x.attribute | y.attribute)
        if jaccard < 0.5:
            return False
    elif x.attribute and not x.attribute <= y.context and common < shared_context:
        return False  # "six months of service" against a claim that never mentions service
    elif y.attribute and not y.attribute <= x.context and common < shared_context:
        return False
    qx, qy = x.q, y.q
    if qx.kind == "duration" and qx.unit != qy.unit:
        qx, qy = in_days(qx) or qx, in_days(qy) or qy
    if qx.kind != "date" and qx.value and qy.value:
        lo, hi = sorted((abs(float(qx.value)), abs(float(qy.value))))
        if lo > 0 and hi / lo > max_value_ratio:  # larger gaps are different attributes
            return False
    return True


def numeric_hit(fa: ClaimFeatures, fb: ClaimFeatures, max_value_ratio: float) -> RuleHit | None:
    if not fa.measured or not fb.measured:
        return None
    if periods_differ(fa, fb):
        return None  # "€1,200 for 2024" vs "€900 in 2023": values for different years (a year alone is scope)
    ma = tuple(in_class(m) for m in fa.measured)
    mb = tuple(in_class(m) for m in fb.measured)
    qa, qb = [m.q for m in ma], [m.q for m in mb]

    def agree(p: Quantity, q: Quantity) -> bool:
        crossed = cross_unit(p, q)
        return p.agrees(q) or (crossed is not None and crossed[2])

    best: tuple[float, Measured, Measured] | None = None
    for x in ma:
        for y in mb:
            crossed = cross_unit(x.q, y.q)
            if not (x.q.comparable(y.q) or crossed is not None) or agree(x.q, y.q):
                continue
            if not same_attribute(x, y, max_value_ratio, lone=len(ma) == 1 and len(mb) == 1):
                continue
            # a value that agrees with some comparable value on the other side is accounted for
            if any(agree(x.q, z) for z in qb) or any(agree(y.q, z) for z in qa):
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


def same_entity(a: str, b: str) -> bool:
    na, nb = re.sub(r"\W+", " ", a.lower()).strip(), re.sub(r"\W+", " ", b.lower()).strip()
    return na == nb or na.endswith(" " + nb) or nb.endswith(" " + na)


def entity_hit(fa: ClaimFeatures, fb: ClaimFeatures) -> RuleHit | None:
    document_roles = lexicon().document_roles
    for slot_a, who_a in fa.roles:
        for slot_b, who_b in fb.roles:
            if slot_a.split()[-1] in document_roles or slot_b.split()[-1] in document_roles:
                continue  # "Policy owner: X" names the owner of its own document
            if slot_a != slot_b and not (slot_a.endswith(slot_b) or slot_b.endswith(slot_a)):
                continue
            if same_entity(who_a, who_b):
                return None
            held_a = {w for s, w in fa.roles if s == slot_a}
            held_b = {w for s, w in fb.roles if s == slot_b}
            if any(same_entity(p, q) for p in held_a for q in held_b):
                continue
            return RuleHit(
                "entity",
                "entity",
                who_a,
                who_b,
                0.85,
                slot=slot_a if len(slot_a) <= len(slot_b) else slot_b,
                explicit=rejects(fb.text, who_a) or rejects(fa.text, who_b),
            )
    return None


def name_swap_hit(fa: ClaimFeatures, fb: ClaimFeatures) -> RuleHit | None:
    """Near-identical sentences naming different things ("requested in ToolA" vs "in ToolB")."""
    only_a, only_b = fa.names - fb.names, fb.names - fa.names
    if not only_a or not only_b or len(only_a) > 1 or len(only_b) > 1:
        return None
    union = fa.terms | fb.terms
    if not union:
        return None
    name_terms = terms(" ".join(only_a | only_b))
    jacc = len((fa.terms & fb.terms) - name_terms) / max(
        1, len(union - name_terms)
    )  # the names' own words are not shared context
    if jacc < 0.6:
        return None
    return RuleHit("entity", "entity", next(iter(only_a)), next(iter(only_b)), 0.65)


def polarity_hit(fa: ClaimFeatures, fb: ClaimFeatures) -> RuleHit | None:
    lex = lexicon()
    for pa in sorted(fa.polarity):
        for pb in sorted(fb.polarity):
            if frozenset((pa, pb)) in lex.opposed:
                # a claim stating both sides of the axis ("may ... but must not ...") is ambiguous
                if pb in fa.polarity or pa in fb.polarity:
                    continue
                weak = (pa in lex.explicit and not lex.explicit[pa].search(fa.text)) or (
                    pb in lex.explicit and not lex.explicit[pb].search(fb.text)
                )
                if len(fa.polarity_terms & fb.polarity_terms) < (3 if weak else 2):
                    continue  # the polarity words govern different actions (a bare "may" or "must" needs more overlap)
                strong = {"prohibited", "optional"} & {pa, pb}
                return RuleHit("polarity", "polarity", pa, pb, 0.75 if strong else 0.55)
    return None


def values_decide(fa: ClaimFeatures, fb: ClaimFeatures) -> bool:
    """Do both claims state a value the rules normalise (comparable quantities, a holder of one role)?
    Then the rules' verdict stands, agreeing values included: no classifier second-guesses it."""
    for x in fa.measured:
        for y in fb.measured:
            qx, qy = counted(x.q), counted(y.q)
            if qx.comparable(qy) or cross_unit(qx, qy) is not None:
                return True
    slots_b = {slot for slot, _ in fb.roles}
    return any(slot in slots_b for slot, _ in fa.roles)


def rule_hit(
    fa: ClaimFeatures, fb: ClaimFeatures, *, max_value_ratio: float = ConflictsConfig.max_value_ratio
) -> RuleHit | None:
    """The contradiction the rules see between two parsed claims, ignoring whether they share a subject
    (``max_value_ratio``: ``conflicts.max_value_ratio``)."""
    if scope_differs(fa, fb):
        return None
    return numeric_hit(fa, fb, max_value_ratio) or entity_hit(fa, fb) or name_swap_hit(fa, fb) or polarity_hit(fa, fb)
