"""Find and normalise the quantities a sentence states: amounts, durations, counts, percentages, dates, times.

``extract_quantities(text)`` returns typed ``Quantity`` values with a normalised form, so that
"€45", "EUR 45" and "45 euros" compare equal, "twenty working days" equals "20 working days",
"3 weeks" equals "21 days" (but not "14 days"), and "4 years" equals "48 months". Working days and
calendar days are different units and never compare. Two-sided ranges ("between 2 and 4 weeks",
"07:30 to 19:00") keep both ends; one-sided bounds ("at least", "up to", "more than") keep the
threshold and say which side it bounds.

``find_numbers(text)`` finds every number written in digits or words, ``find_times(text)`` every
clock time, and ``missing_values(claim, evidence)`` the values a claim states that the evidence does
not ("3 weeks" is stated by "21 days", not by "14 days").

Pure functions, no dependencies beyond the standard library. This is the one parser of numbers and
quantities: conflict detection, citation checks, the consistency check and the counterfactual
generator all read values through it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

# -- number words ------------------------------------------------------------------------------

_UNITS_WORDS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS_WORDS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_SCALE_WORDS = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}
_ORDINAL_WORDS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
    "fifteenth": 15,
    "twentieth": 20,
    "last": -1,
}
_SIMPLE_WORD = "|".join(sorted(list(_UNITS_WORDS) + list(_TENS_WORDS), key=len, reverse=True))
# "twenty-five", "one hundred", "two thousand"; never "one-off", "one-twelfth", "one-way"
_WORD_NUMBER = (
    rf"(?:(?:{_SIMPLE_WORD})(?:-(?:one|two|three|four|five|six|seven|eight|nine))?"
    rf"(?:\s+(?:hundred|thousand|million)(?:\s+(?:and\s+)?(?:{_SIMPLE_WORD}))?)?|a\s+dozen|a\s+hundred)"
    r"(?![\w-])"
)
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
NUMBER = rf"(?:{_DIGITS}|{_WORD_NUMBER})"


def parse_number(text: str) -> float | None:
    """'1,000' -> 1000, '2.5' -> 2.5, 'twenty-five' -> 25, 'one hundred' -> 100, 'a dozen' -> 12; else None."""
    t = text.strip().lower().replace("\u2009", "")
    if not t:
        return None
    if re.fullmatch(_DIGITS, t):
        return float(t.replace(",", ""))
    if t == "a dozen":
        return 12.0
    if t == "a hundred":
        return 100.0
    total, current = 0.0, 0.0
    seen = False
    for word in re.split(r"[\s-]+", t):
        if word == "and":
            continue
        if word in _UNITS_WORDS:
            current += _UNITS_WORDS[word]
        elif word in _TENS_WORDS:
            current += _TENS_WORDS[word]
        elif word in _SCALE_WORDS:
            scale = _SCALE_WORDS[word]
            if scale == 100:
                current = (current or 1) * 100
            else:
                total += (current or 1) * scale
                current = 0
        else:
            return None
        seen = True
    return total + current if seen else None


# -- units -------------------------------------------------------------------------------------

CURRENCIES = {
    "€": "EUR",
    "eur": "EUR",
    "euro": "EUR",
    "euros": "EUR",
    "$": "USD",
    "usd": "USD",
    "dollar": "USD",
    "dollars": "USD",
    "£": "GBP",
    "gbp": "GBP",
    "pound": "GBP",
    "pounds": "GBP",
    "czk": "CZK",
    "kč": "CZK",
    "koruna": "CZK",
    "crowns": "CZK",
    "chf": "CHF",
}
_SCALE_SUFFIX = {"k": 1e3, "thousand": 1e3, "m": 1e6, "mn": 1e6, "million": 1e6, "bn": 1e9, "billion": 1e9}

# unit word -> (base unit, factor). Calendar days, working days, months and minutes are separate
# bases: "1 month" is not a fixed number of days, and working days are not calendar days.
_DURATION_UNITS = {
    "second": ("second", 1),
    "minute": ("minute", 1),
    "min": ("minute", 1),
    "hour": ("minute", 60),
    "hr": ("minute", 60),
    "day": ("day", 1),
    "calendar day": ("day", 1),
    "week": ("day", 7),
    "calendar week": ("day", 7),
    "fortnight": ("day", 14),
    "working day": ("working day", 1),
    "business day": ("working day", 1),
    "workday": ("working day", 1),
    "working week": ("working day", 5),
    "business week": ("working day", 5),
    "month": ("month", 1),
    "calendar month": ("month", 1),
    "year": ("month", 12),
    "calendar year": ("month", 12),
}
_DURATION_WORD = r"(?:calendar\s+|working\s+|business\s+)?(?:seconds?|minutes?|mins?|hours?|hrs?|days?|weeks?|fortnights?|months?|years?|workdays?)"
# words allowed between a number and its unit: "ten consecutive working days"
_FILLER = r"(?:(?!(?:and|or|to|of|per|a|an|the|in|on|at|for|is|are|working|calendar|business)\s)[a-z][a-z-]*\s+){0,2}"
_MONTHS = {
    m: i
    for i, m in enumerate(
        [
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ],
        1,
    )
}
_MONTHS.update({m[:3]: i for m, i in list(_MONTHS.items())})
_MONTHS["sept"] = 9
_MONTH_RE = r"(?:January|February|March|April|May|June|July|August|September|October|November|December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\.?"

_MIN_WORDS = r"(?:at\s+least|a\s+minimum\s+of|minimum(?:\s+of)?|min\.|no\s+less\s+than|not\s+less\s+than|no\s+fewer\s+than|more\s+than|over|above|longer\s+than|exceeding|in\s+excess\s+of|from)"
_MAX_WORDS = (
    r"(?:up\s+to|at\s+most|a\s+maximum\s+of|maximum(?:\s+of)?|max\.|no\s+more\s+than|not\s+more\s+than|no\s+later\s+than|"
    r"under|below|less\s+than|fewer\s+than|within|limited\s+to|capped\s+at|shorter\s+than|not\s+exceeding)"
)
_APPROX_WORDS = r"(?:about|around|approximately|approx\.|roughly|some|circa|nearly|almost)"
APPROX_TOLERANCE = 0.15  # "about 3 weeks" matches 18-24 days


@dataclass(frozen=True)
class Quantity:
    """One quantity stated in a text.

    ``value`` is the magnitude in ``unit`` (the base unit for durations: days, working days, months or
    minutes); ``high`` is the upper end of a two-sided range. ``bound`` says how the text bounds it:
    exact | min ("at least", "more than") | max ("up to", "under") | range | approx.
    Dates have ``unit`` 'date' (full date), 'month' (month and year), 'year', 'day-of-year' (day and
    month), 'day-of-month' (recurring: "the 25th of each month") or 'time' (time of day), and carry
    their normalised form in ``iso``.
    """

    kind: str  # amount | duration | count | percent | date
    value: float | None
    unit: str
    text: str
    span: tuple[int, int]
    bound: str = "exact"
    high: float | None = None
    per: str | None = None  # rate denominator: "night", "day", "km", "week", "weekday"
    iso: str | None = None  # dates and times: "2025-10-14", "2024-03", "2024", "--03-31", "day 25", "09:45"

    @property
    def norm(self) -> str:
        """The normalised value as text: 'EUR 60', '21 days', '20 working days', '25%', '2025-10-14', '2-4 weeks'."""
        if self.kind == "date":
            if self.high is not None and self.bound == "range":
                return f"{self.iso}-{_fmt_time(self.high)}" if self.unit == "time" else str(self.iso)
            return str(self.iso)
        lo = _fmt(self.value)
        rng = f"{lo}-{_fmt(self.high)}" if self.high is not None else lo
        if self.kind == "amount":
            out = f"{self.unit} {_fmt(self.value, money=True)}" + (
                f"-{_fmt(self.high, money=True)}" if self.high is not None else ""
            )
        elif self.kind == "percent":
            out = f"{rng}%"
        elif self.kind == "duration":
            unit, lo_v, hi_v = self.unit, self.value, self.high
            if unit == "minute" and all(v is None or float(v) % 60 == 0 for v in (lo_v, hi_v)):
                unit, lo_v, hi_v = "hour", lo_v / 60, (hi_v / 60 if hi_v is not None else None)
            if unit == "month" and all(v is None or float(v) % 12 == 0 for v in (lo_v, hi_v)):
                unit, lo_v, hi_v = "year", lo_v / 12, (hi_v / 12 if hi_v is not None else None)
            rng = f"{_fmt(lo_v)}-{_fmt(hi_v)}" if hi_v is not None else _fmt(lo_v)
            out = f"{rng} {_plural(unit, hi_v if hi_v is not None else lo_v)}"
        else:
            out = (
                f"{rng} {_plural(self.unit, self.high if self.high is not None else self.value)}" if self.unit else rng
            )
        return out + (f" per {self.per}" if self.per else "")

    def comparable(self, other: Quantity) -> bool:
        """Same dimension and unit family, and rates over the same denominator (or one unstated)."""
        if self.kind != other.kind or self.unit != other.unit:
            return False
        if self.per and other.per and self.per != other.per:
            return False
        return True

    def agrees(self, other: Quantity) -> bool:
        """Could both statements be true of one attribute? Equal values, or a value inside the other's range
        or within the tolerance of an approximate value. Thresholds ("at least 2" vs "3") do not agree:
        two rules that set different thresholds for one attribute contradict each other."""
        if not self.comparable(other):
            return False
        if self.kind == "date":
            return self.iso == other.iso and self.high == other.high
        a_lo, a_hi = self._interval()
        b_lo, b_hi = other._interval()
        if self.bound == "range" and other.bound != "range":
            return a_lo - 1e-9 <= b_lo and b_hi <= a_hi + 1e-9
        if other.bound == "range" and self.bound != "range":
            return b_lo - 1e-9 <= a_lo and a_hi <= b_hi + 1e-9
        if "approx" in (self.bound, other.bound):
            ref = max(abs(a_lo), abs(b_lo), 1e-9)
            return abs(a_lo - b_lo) <= APPROX_TOLERANCE * ref and abs(a_hi - b_hi) <= APPROX_TOLERANCE * max(
                abs(a_hi), abs(b_hi), 1e-9
            )
        return abs(a_lo - b_lo) <= 1e-9 * max(1.0, abs(a_lo)) and abs(a_hi - b_hi) <= 1e-9 * max(1.0, abs(a_hi))

    def _interval(self) -> tuple[float, float]:
        lo = float(self.value or 0.0)
        return lo, float(self.high) if self.high is not None else lo


def _fmt(v: float | None, money: bool = False) -> str:
    if v is None:
        return "?"
    if float(v).is_integer():
        return f"{int(v):,}" if money else str(int(v))
    return f"{v:,.2f}" if money else f"{v:g}"


def _fmt_time(minutes: float) -> str:
    m = int(minutes)
    return f"{m // 60:02d}:{m % 60:02d}"


def _plural(unit: str, v: float | None) -> str:
    if v is not None and abs(v) == 1:
        return unit
    if unit.endswith("y") and not unit.endswith(("day", "key")):
        return unit[:-1] + "ies"
    if unit.endswith(("s", "x", "ch", "sh")):
        return unit + "es"
    return unit + "s"


def singular(word: str) -> str:
    """A crude English singular: 'days' -> 'day', 'approvals' -> 'approval', 'quotes' -> 'quote', 'boxes' -> 'box'."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def duration_base(unit_text: str) -> tuple[str, float] | None:
    """'3 weeks' style unit words -> (base unit, factor): 'weeks' -> ('day', 7), 'working days' -> ('working day', 1)."""
    words = [singular(w) for w in unit_text.lower().split()]
    key = " ".join(words)
    if key in _DURATION_UNITS:
        return _DURATION_UNITS[key]
    if words and words[-1] in _DURATION_UNITS:
        return _DURATION_UNITS[words[-1]]
    return None


# -- extraction --------------------------------------------------------------------------------

_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_DMY = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_RE})(?:,?\s+(\d{{4}}))?(?![\w])")
_MDY = re.compile(rf"\b({_MONTH_RE})\s+(\d{{1,2}})(?:st|nd|rd|th)?(?:,\s*|\s+)(\d{{4}})\b")
_MY = re.compile(rf"\b({_MONTH_RE})\s+(\d{{4}})\b")
_DAY_OF_MONTH = re.compile(
    rf"\b(?:the\s+)?(?:(\d{{1,2}})(?:st|nd|rd|th)|({'|'.join(_ORDINAL_WORDS)}))\s+(working\s+day|business\s+day|day)?\s*"
    r"(?:of\s+)?(?:each|every|the|the\s+following|the\s+next)\s+(month)\b",
    re.I,
)
_YEAR = re.compile(r"(?<![\w.,+-])((?:19|20)\d{2})(?![\w-]|,\d|\.\d)")
_TIME = re.compile(r"(?<![\d:])([01]?\d|2[0-3])[:.h]([0-5]\d)(?![\d:])(?:\s*(am|pm))?")
_TIME_RANGE = re.compile(
    r"(?:\b(?:between|from)\s+)?(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)\s*(?:-|–|to|and|until)\s*([01]?\d|2[0-3]):([0-5]\d)(?![\d:])",
    re.I,
)
_CUR_SYM = r"(?:€|\$|£|EUR|USD|GBP|CZK|CHF|Kč)"
_CUR_WORD = r"(?:euros?|EUR|USD|GBP|CZK|CHF|Kč|dollars?|pounds?|koruna|crowns)"
_SCALE = r"(?:\s*(?:million|thousand|billion|bn|mn)\b|(?<=\d)[km]\b)"
_AMOUNT_PRE = re.compile(rf"({_CUR_SYM})\s?({_DIGITS})({_SCALE})?", re.I)
_AMOUNT_POST = re.compile(rf"(?<![\w.,])({NUMBER})({_SCALE})?\s?({_CUR_WORD})(?!\w)", re.I)
_PERCENT = re.compile(rf"(?<![\w.,])({NUMBER})\s?(%|percent\b|per\s+cent\b)", re.I)
_DURATION = re.compile(rf"(?<![\w.,:])({NUMBER})(?:\s+|-){_FILLER}({_DURATION_WORD})(?![\w-])(?:'s?)?", re.I)
_RANGE_DURATION = re.compile(
    rf"(?:\b(between|from)\s+)?(?<![\w.,:])({NUMBER})\s*(?:and|to|-|–|or)\s*({NUMBER})(?:\s+|-){_FILLER}({_DURATION_WORD})(?![\w-])",
    re.I,
)
_RANGE_AMOUNT = re.compile(
    rf"\b(between|from)\s+({_CUR_SYM})\s?({_DIGITS})({_SCALE})?\s+(?:and|to)\s+(?:{_CUR_SYM})?\s?({_DIGITS})({_SCALE})?",
    re.I,
)
_COUNT = re.compile(
    rf"(?<![\w.,:/+#-])({NUMBER})(?:\s+|-)((?:(?:written|additional|extra|unused|new|separate|different|full|paid|more|"
    r"further|consecutive|independent|unrelated|other|annual|national|public|working)\s+)?([a-z][a-z-]{2,}))\b",
    re.I,
)
_NOT_COUNT_NOUN = {
    "and",
    "or",
    "to",
    "of",
    "in",
    "on",
    "at",
    "for",
    "per",
    "the",
    "a",
    "an",
    "is",
    "are",
    "was",
    "be",
    "by",
    "with",
    "from",
    "as",
    "if",
    "than",
    "that",
    "this",
    "times",
    "time",
    "percent",
    "cent",
    "after",
    "before",
    "until",
    "am",
    "pm",
    "hundred",
    "thousand",
    "million",
    "billion",
    "euro",
    "euros",
    "eur",
    "usd",
    "gbp",
    "czk",
    "dollars",
    "pounds",
}
_PER = re.compile(
    r"^\s*(?:per|a|an|/|each|every|for\s+each|for\s+every|for\s+a)\s+((?:weekend\s+day|public\s+holiday|calendar\s+day|working\s+day|one-way\s+trip|"
    r"[a-z-]+))\b",
    re.I,
)
_PER_WORDS = {
    "night",
    "day",
    "week",
    "month",
    "year",
    "km",
    "kilometre",
    "kilometer",
    "mile",
    "hour",
    "person",
    "employee",
    "transaction",
    "trip",
    "weekday",
    "weekend",
    "weekend day",
    "public holiday",
    "calendar day",
    "working day",
    "call-out",
    "visit",
    "page",
    "seat",
    "user",
    "licence",
    "license",
    "item",
    "order",
    "meal",
    "one-way trip",
}


def _span_free(span: tuple[int, int], taken: list[tuple[int, int]]) -> bool:
    return all(span[1] <= s or span[0] >= e for s, e in taken)


def _bound_before(text: str, start: int) -> str:
    before = text[max(0, start - 32) : start].lower()
    if re.search(rf"\b{_MIN_WORDS}\s*$", before):
        return "min"
    if re.search(rf"\b{_MAX_WORDS}\s*$", before):
        return "max"
    if re.search(rf"\b{_APPROX_WORDS}\s*$", before):
        return "approx"
    return "exact"


def _per_after(text: str, end: int) -> str | None:
    m = _PER.match(text[end : end + 40])
    if not m:
        return None
    word = singular(m.group(1).lower())
    if word in ("kilometre", "kilometer"):
        word = "km"
    return word if word in _PER_WORDS else None


def _scale(s: str | None) -> float:
    if not s:
        return 1.0
    return _SCALE_SUFFIX.get(s.strip().lower(), 1.0)


def _valid_date(y: int, m: int, d: int) -> bool:
    try:
        dt.date(y, m, d)
        return True
    except ValueError:
        return False


def extract_quantities(text: str) -> list[Quantity]:
    """Every quantity in text, in order of appearance; overlapping readings resolved most-specific first
    (dates and times, then ranges, amounts, percentages, durations, counts, bare years)."""
    out: list[Quantity] = []
    taken: list[tuple[int, int]] = []

    def add(q: Quantity) -> None:
        if _span_free(q.span, taken):
            out.append(q)
            taken.append(q.span)

    # dates
    for m in _ISO_DATE.finditer(text):
        y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if _valid_date(y, mo, d):
            add(
                Quantity(
                    "date", dt.date(y, mo, d).toordinal(), "date", m.group(0), m.span(), iso=f"{y:04d}-{mo:02d}-{d:02d}"
                )
            )
    for m in _DMY.finditer(text):
        d, mo = int(m.group(1)), _MONTHS[m.group(2).lower().rstrip(".")]
        if m.group(3):
            y = int(m.group(3))
            if _valid_date(y, mo, d):
                add(
                    Quantity(
                        "date",
                        dt.date(y, mo, d).toordinal(),
                        "date",
                        m.group(0),
                        m.span(),
                        bound=_bound_before(text, m.start()),
                        iso=f"{y:04d}-{mo:02d}-{d:02d}",
                    )
                )
        elif _valid_date(2000, mo, d):
            add(
                Quantity(
                    "date",
                    mo * 100 + d,
                    "day-of-year",
                    m.group(0),
                    m.span(),
                    bound=_bound_before(text, m.start()),
                    iso=f"--{mo:02d}-{d:02d}",
                )
            )
    for m in _MDY.finditer(text):
        mo, d, y = _MONTHS[m.group(1).lower().rstrip(".")], int(m.group(2)), int(m.group(3))
        if _valid_date(y, mo, d):
            add(
                Quantity(
                    "date", dt.date(y, mo, d).toordinal(), "date", m.group(0), m.span(), iso=f"{y:04d}-{mo:02d}-{d:02d}"
                )
            )
    for m in _MY.finditer(text):
        mo, y = _MONTHS[m.group(1).lower().rstrip(".")], int(m.group(2))
        add(
            Quantity(
                "date",
                y * 12 + mo,
                "month",
                m.group(0),
                m.span(),
                bound=_bound_before(text, m.start()),
                iso=f"{y:04d}-{mo:02d}",
            )
        )
    for m in _DAY_OF_MONTH.finditer(text):
        day = int(m.group(1)) if m.group(1) else _ORDINAL_WORDS[m.group(2).lower()]
        kind_of_day = (m.group(3) or "day").lower().replace("business", "working")
        kind_of_day = re.sub(r"\s+", " ", kind_of_day)
        working = "working " if "working" in kind_of_day else ""
        label = f"last {working}day" if day == -1 else f"{working}day {day}"
        add(Quantity("date", day, "day-of-month", m.group(0), m.span(), iso=f"{label} of the month"))
    for m in _TIME_RANGE.finditer(text):
        lo = int(m.group(1)) * 60 + int(m.group(2))
        hi = int(m.group(3)) * 60 + int(m.group(4))
        add(Quantity("date", lo, "time", m.group(0), m.span(), bound="range", high=hi, iso=_fmt_time(lo)))
    for m in _TIME.finditer(text):
        h, mi = int(m.group(1)), int(m.group(2))
        if m.group(3) and m.group(3).lower() == "pm" and h < 12:
            h += 12
        if ":" not in m.group(0) and not m.group(3):
            continue  # "2.30" is a number, not a time
        add(
            Quantity(
                "date",
                h * 60 + mi,
                "time",
                m.group(0),
                m.span(),
                bound=_bound_before(text, m.start()),
                iso=_fmt_time(h * 60 + mi),
            )
        )

    # ranges
    for m in _RANGE_AMOUNT.finditer(text):
        cur = CURRENCIES.get(m.group(2).lower(), m.group(2).upper())
        lo = float(m.group(3).replace(",", "")) * _scale(m.group(4))
        hi = float(m.group(5).replace(",", "")) * _scale(m.group(6))
        add(Quantity("amount", lo, cur, m.group(0), m.span(), bound="range", high=hi, per=_per_after(text, m.end())))
    for m in _RANGE_DURATION.finditer(text):
        joiner = text[m.start(2) : m.start(3)]
        if "and" in joiner.lower() and not m.group(1):
            continue  # "2 and 3 weeks" without "between" is two values, not a range
        if "or" in joiner.lower().split():
            continue
        base = duration_base(m.group(4))
        lo, hi = parse_number(m.group(2)), parse_number(m.group(3))
        if base is None or lo is None or hi is None or hi < lo:
            continue
        unit, factor = base
        add(
            Quantity(
                "duration",
                lo * factor,
                unit,
                m.group(0),
                m.span(),
                bound="range",
                high=hi * factor,
                per=_per_after(text, m.end()),
            )
        )

    # amounts, percentages
    for m in _AMOUNT_PRE.finditer(text):
        cur = CURRENCIES.get(m.group(1).lower(), m.group(1).upper())
        v = float(m.group(2).replace(",", "")) * _scale(m.group(3))
        add(
            Quantity(
                "amount",
                v,
                cur,
                m.group(0),
                m.span(),
                bound=_bound_before(text, m.start()),
                per=_per_after(text, m.end()),
            )
        )
    for m in _AMOUNT_POST.finditer(text):
        v = parse_number(m.group(1))
        if v is None:
            continue
        cur = CURRENCIES.get(m.group(3).lower(), m.group(3).upper())
        add(
            Quantity(
                "amount",
                v * _scale(m.group(2)),
                cur,
                m.group(0),
                m.span(),
                bound=_bound_before(text, m.start()),
                per=_per_after(text, m.end()),
            )
        )
    for m in _PERCENT.finditer(text):
        v = parse_number(m.group(1))
        if v is not None:
            add(Quantity("percent", v, "%", m.group(0), m.span(), bound=_bound_before(text, m.start())))

    # durations
    for m in _DURATION.finditer(text):
        v = parse_number(m.group(1))
        base = duration_base(m.group(2))
        if v is None or base is None:
            continue
        unit, factor = base
        add(
            Quantity(
                "duration",
                v * factor,
                unit,
                m.group(0),
                m.span(),
                bound=_bound_before(text, m.start()),
                per=_per_after(text, m.end()),
            )
        )

    # bare years ("the 2024 budget", "in 2023"): scope more often than a value
    for m in _YEAR.finditer(text):
        y = int(m.group(1))
        add(Quantity("date", y, "year", m.group(0), m.span(), bound=_bound_before(text, m.start()), iso=str(y)))

    # counts: a number followed by a noun ("14 characters", "two approvals", "three written quotes")
    for m in _COUNT.finditer(text):
        noun = m.group(3).lower()
        if noun in _NOT_COUNT_NOUN or duration_base(noun) or noun.rstrip("s") in _MONTHS:
            continue
        v = parse_number(m.group(1))
        if v is None:
            continue
        prefix = text[max(0, m.start() - 6) : m.start()]
        if re.search(r"[A-Za-z]\s?$|[+\d]\s$", prefix) and not re.search(
            r"\b(?:at least|up to|than|of|to|every|all|the|and|only|just|with|have|has|get|gets|receive|receives|take|takes|needs?|requires?|are|is|be|by|for|in|on|least|most|over|under|about|around|some|maximum|minimum)\s?$",
            prefix.lower(),
        ):
            continue  # "Lab 3 before", "HS-400 sensor": part of a name
        add(
            Quantity(
                "count",
                v,
                singular(noun),
                m.group(0),
                m.span(),
                bound=_bound_before(text, m.start()),
                per=_per_after(text, m.end()),
            )
        )

    out.sort(key=lambda q: q.span)
    return out


def normalise(text: str) -> list[str]:
    """The normalised forms of every quantity in text: 'at least 3 weeks before' -> ['21 days']."""
    return [q.norm for q in extract_quantities(text)]


# -- numbers, clock times and stated values ----------------------------------------------------


@dataclass(frozen=True)
class Number:
    """One number written in a text, in digits ("1,000", "2.5") or words ("twenty-five", "a dozen")."""

    text: str
    span: tuple[int, int]
    value: float


@dataclass(frozen=True)
class ClockTime:
    """One time of day as written ("09:45", "9:45 pm"): ``text`` and ``span`` cover the digits only
    (an am/pm suffix stays outside), ``hour`` and ``minute`` as written."""

    text: str
    span: tuple[int, int]
    hour: int
    minute: int


_NUMBER_TOKEN = re.compile(rf"(?<![\w.,])(?:{_DIGITS})|(?<![\w-]){_WORD_NUMBER}", re.I)
_CODE_DIGITS = re.compile(rf"(?<=[^\W\d_])(?:{_DIGITS})")  # "A4", "B12": digits glued to letters


def find_numbers(text: str, *, in_codes: bool = False) -> list[Number]:
    """Every number in text, in order: '3 weeks and twenty-five days' -> 3, 25.

    Digits glued to letters ("A4", "v2") are part of a name, not numbers, unless ``in_codes``
    (a citation check wants every digit a claim writes)."""
    out = [
        Number(m.group(0), m.span(), v)
        for m in _NUMBER_TOKEN.finditer(text)
        if (v := parse_number(m.group(0))) is not None
    ]
    if in_codes:
        out += [Number(m.group(0), m.span(), float(m.group(0).replace(",", ""))) for m in _CODE_DIGITS.finditer(text)]
        out.sort(key=lambda n: n.span)
    return out


def find_times(text: str) -> list[ClockTime]:
    """Every clock time in text ("09:00", "17:30", "9.30 pm"), in order; "2.30" alone is a number."""
    out = []
    for m in _TIME.finditer(text):
        if ":" not in m.group(0) and not m.group(3):
            continue
        out.append(ClockTime(text[m.start(1) : m.end(2)], (m.start(1), m.end(2)), int(m.group(1)), int(m.group(2))))
    return out


def number_word(n: int) -> str | None:
    """The English word for 0-19 and for the tens up to ninety ('seven', 'twenty'); else None."""
    for word, v in (*_UNITS_WORDS.items(), *_TENS_WORDS.items()):
        if v == n:
            return word
    return None


def _is_year(q: Quantity) -> bool:
    return q.kind == "date" and q.unit == "year"


def _stated_by(q: Quantity, e: Quantity) -> bool:
    """Does evidence quantity ``e`` state the value of claim quantity ``q``? The same value in the
    same unit family ("3 weeks" and "21 days"), or one end of a range the evidence states, or a
    date the evidence gives more precisely ("31 March" by "2025-03-31")."""
    if q.kind == "date" and e.kind == "date" and q.unit != e.unit and e.unit == "date" and e.iso and q.iso:
        if q.unit == "day-of-year":
            return e.iso[4:] == q.iso[1:]
        if q.unit == "month":
            return e.iso.startswith(q.iso + "-")
        return False
    if not q.comparable(e):
        return False
    if q.kind == "date" and q.unit != "time":
        return q.iso == e.iso and q.high == e.high
    lo, hi = q._interval()
    e_lo, e_hi = e._interval()

    def same(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-9 * max(1.0, abs(a))

    if same(lo, e_lo) and same(hi, e_hi):
        return True
    return q.high is None and e.high is not None and (same(lo, e_lo) or same(lo, e_hi))


def missing_values(claim: str, evidence: str) -> list[Quantity | Number]:
    """The values ``claim`` states that ``evidence`` does not, in the claim's order: each quantity with
    no evidence quantity of the same value ("3 weeks" is stated by "21 days" and "three weeks", not by
    "14 days" or "3 months"), and each number outside those quantities (a bare year, an extension,
    a code) that the evidence never writes, in digits or words."""
    claim_qs = [q for q in extract_quantities(claim) if not _is_year(q)]
    evidence_qs = [q for q in extract_quantities(evidence) if not _is_year(q)]
    written = {n.value for n in find_numbers(evidence, in_codes=True)}
    out: list[Quantity | Number] = [q for q in claim_qs if not any(_stated_by(q, e) for e in evidence_qs)]
    for n in find_numbers(claim, in_codes=True):
        inside = any(q.span[0] <= n.span[0] and n.span[1] <= q.span[1] for q in claim_qs)
        if not inside and n.value not in written:
            out.append(n)
    out.sort(key=lambda v: v.span)
    return out
