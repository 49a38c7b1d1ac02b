"""Counterfactual QA cases: the context says something the model cannot know from pre-training.

A case's evidence is edited so that the value that answers the question (a number, amount,
duration, date, time, role or person name) becomes another plausible value, everywhere it appears
in the context, and the gold answer changes with it. A model that answers with the new value
follows its context; one that answers with the old value follows its memory of the corpus.

    python -m assistant.counterfactual --from-qa examples/eval/qa.jsonl --out examples/eval/counterfactual.jsonl

JSONL schema, one case per line:

    id               "<source case id>-cf<k>"
    question         the question, unchanged
    context          the evidence passage with the swap applied everywhere
    answer           the counterfactual gold answer
    original_answer  the gold answer before the swap
    answers          every accepted counterfactual answer form (the source case's forms, swapped)
    swap             {"from": text in the original context, "to": its replacement, "kind":
                      number | amount | duration | percent | count | time | date | role | name}
    source           the document the evidence comes from
    passage_id       the chunk id (cases made from a corpus only)
    generated_from   the source case id, or "corpus:<collection>"

Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tether.text.quantities import extract_quantities, find_numbers, find_times, number_word, parse_number

if TYPE_CHECKING:
    from tether.config import TetherConfig

log = logging.getLogger(__name__)

ROLES = (
    "Finance Director",
    "Head of Operations",
    "HR Manager",
    "Compliance Officer",
    "IT Security Lead",
    "Facilities Manager",
    "Managing Director",
    "Data Protection Officer",
    "Head of Procurement",
    "Chief Financial Officer",
    "Works Council Chair",
    "Quality Manager",
)
ROLE_WORDS = ("Director", "Officer", "Lead", "Head", "Manager", "Chair", "Controller", "Coordinator")
PERSONS = (
    "Anna de Wit",
    "Lukas Novak",
    "Sofia Lindqvist",
    "Tomas Horak",
    "Eva Jansen",
    "Jonas Berg",
    "Claire Dubois",
    "Milan Svoboda",
    "Ingrid Olsen",
    "Pieter Bakker",
    "Lena Fischer",
    "Karel Dvorak",
)
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_MAX_WORD = 20  # numbers written in words stay in words up to this value
_MONTH = re.compile(r"\b(" + "|".join(MONTHS) + r")\b")
_NAME = re.compile(r"^(?:the\s+)?((?:[A-Z][a-z]+(?:\s+(?:of|de|van|der)\s+|\s+)?){1,4})$")


# -- values -----------------------------------------------------------------------------------


def _fmt_like(old: str, value: float) -> str:
    """``value`` written the way ``old`` is: words stay words, commas and decimals are kept."""
    if old.isalpha():
        word = number_word(int(value)) if int(value) <= _MAX_WORD else str(int(value))
        return word.capitalize() if old[0].isupper() else word
    decimals = len(old.split(".")[1]) if "." in old else 0
    text = f"{value:,.{decimals}f}" if "," in old else f"{value:.{decimals}f}"
    return text


def _new_number(old: str, rng: random.Random, *, identifier: bool = False) -> str:
    """A plausible different number in ``old``'s format: small counts move by 1-4, larger values by
    20-60 % up or down, rounded to the original's precision; identifiers get new digits."""
    v = parse_number(old)
    assert v is not None, old
    if identifier:
        while True:
            new = "".join(rng.choice("123456789") for _ in old)
            if new != old:
                return new
    decimals = len(old.split(".")[1]) if "." in old else 0
    for _ in range(100):
        if v <= 12 and v == int(v) and decimals == 0:
            new = v + rng.choice([-2, -1, 1, 2, 3, 4])
            if new == 1:  # keeps the noun's number (plural) valid
                continue
        else:
            new = v * rng.choice([0.5, 0.6, 0.75, 1.25, 1.4, 1.5, 1.6])
            step = (
                10 ** (len(str(int(v))) - 2) if v >= 100 else (1 if v >= 10 and decimals == 0 else 10**-decimals or 1)
            )
            step = step / 2 if v >= 100 and step >= 10 else step
            new = round(new / step) * step
        if new > 0 and abs(new - v) > 1e-9 and (not old.isalpha() or new <= _MAX_WORD):
            return _fmt_like(old, new)
    raise ValueError(f"no replacement found for {old!r}")


def _replace_number(surface: str, old: str, new: str) -> str:
    return re.sub(rf"(?<![\w.,]){re.escape(old)}(?![\w]|[.,]\d)", new, surface, count=1, flags=re.I)


def _numbers_in(text: str) -> list[tuple[str, float]]:
    return [(n.text, n.value) for n in find_numbers(text)]


def _shift_times(text: str, hours: int) -> str:
    """Every clock time in text moved by ``hours`` (mod 24): '10:00 to 15:00' -> '09:00 to 14:00'."""
    for t in reversed(find_times(text)):
        text = text[: t.span[0]] + f"{(t.hour + hours) % 24:02d}:{t.minute:02d}" + text[t.span[1] :]
    return text


# -- picking the swap -------------------------------------------------------------------------


def _pick_swap(evidence: str, answers: list[str], rng: random.Random, pools: dict[str, list[str]]) -> dict | None:
    """The swap for one case: the value in ``evidence`` that the gold ``answers`` state; None if none."""
    answer_numbers = {v for a in answers for _, v in _numbers_in(a)}
    # 1. a time of day (or range of times) the answer gives
    times = [t.text for t in find_times(evidence) if any(t.text in a for a in answers)]
    if times:
        shift = rng.choice([-2, -1, 1, 2])
        spans = [
            q.text for q in extract_quantities(evidence) if q.kind == "date" and q.unit == "time" and times[0] in q.text
        ]
        frm = spans[0] if spans else times[0]
        to = _shift_times(frm, shift)
        return {"from": frm, "to": to, "kind": "time"}
    # 2. a quantity (amount, duration, count, percent) whose number the answer states
    for q in extract_quantities(evidence):
        if q.kind == "date":
            continue
        nums = _numbers_in(q.text)
        if nums and nums[0][1] in answer_numbers:
            old = nums[0][0]
            to = _replace_number(q.text, old, _new_number(old, rng))
            if nums[0][1] == 1 and not to.endswith("s"):
                to += "s"  # "one working week" -> "three working weeks"
            return {"from": q.text, "to": to, "kind": q.kind}
    # 3. a bare number the answer states (distances, phone numbers, frequencies)
    for old, v in _numbers_in(evidence):
        if v in answer_numbers:
            ident = (
                old.isdigit()
                and len(old) >= 3
                and not any(f"{old} " in a and re.search(rf"{old}\s+[a-z]", a) for a in answers)
            )
            return {"from": old, "to": _new_number(old, rng, identifier=ident), "kind": "number"}
    # 4. a month
    for a in answers:
        m = _MONTH.search(a)
        if m and m.group(1) in evidence:
            month = m.group(1)
            return {"from": month, "to": rng.choice([x for x in MONTHS if x != month]), "kind": "date"}
    # 5. a role or a person named in the evidence
    for a in answers:
        m = _NAME.match(a.strip())
        if not m or m.group(1).strip() not in evidence:
            continue
        name = m.group(1).strip()
        kind = (
            "role"
            if name.split()[-1] in ROLE_WORDS or name.split()[0] == "Head"
            else "name"
            if len(name.split()) >= 2
            else None
        )
        if kind:
            choices = sorted(set(pools[kind]) - {name})
            return {"from": name, "to": rng.choice(choices), "kind": kind}
    return None


def _apply(text: str, swap: dict) -> str:
    """``text`` with every occurrence of swap['from'] replaced (whole words/numbers only)."""
    return re.sub(rf"(?<![\w]){re.escape(swap['from'])}(?![\w]|[.,]\d)", swap["to"], text)


def _swap_answer(answer: str, swap: dict) -> str:
    """The gold answer with the swap applied: the same span, or its number in either spelling."""
    if re.search(rf"(?<![\w]){re.escape(swap['from'])}(?![\w])", answer, re.I):
        return re.sub(rf"(?<![\w]){re.escape(swap['from'])}(?![\w])", swap["to"], answer, flags=re.I)
    old_nums, new_nums = _numbers_in(swap["from"]), _numbers_in(swap["to"])
    if swap["kind"] in ("time", "role", "name", "date") or not old_nums or not new_nums:
        return swap["to"]
    (_, old_v), (_, new_v) = old_nums[0], new_nums[0]
    for surface, v in _numbers_in(answer):
        if v == old_v:
            out = _replace_number(
                answer,
                surface,
                _fmt_like(surface, new_v)
                if surface.isalpha() or new_v == int(new_v) or "." in surface
                else new_nums[0][0],
            )
            if old_v == 1:  # "1 week" -> "3 weeks"
                out = re.sub(r"^(\S+\s+(?:working\s+)?)(day|week|month|year|hour|minute)\b", r"\1\2s", out)
            return out
    return swap["to"]


# -- public API -------------------------------------------------------------------------------


def make_counterfactuals(cases: Iterable[dict], *, seed: int = 0, per_case: int = 1) -> list[dict]:
    """Counterfactual versions of QA cases that carry ``evidence`` and ``answers`` (unanswerable or
    evidence-less cases, and cases with no swappable value, are skipped). ``per_case`` variants each,
    with different replacement values. Roles and names are drawn from those the cases themselves
    answer plus a built-in list."""
    cases = [
        c for c in cases if c.get("evidence") and (c.get("answers") or c.get("answer")) and not c.get("unanswerable")
    ]
    pools = {"role": list(ROLES), "name": list(PERSONS)}
    for c in cases:  # names that the corpus uses for roles and people
        for a in c.get("answers") or [c.get("answer")]:
            m = _NAME.match(str(a).strip())
            if m:
                name = m.group(1).strip()
                (
                    pools["role"] if name.split()[-1] in ROLE_WORDS else pools["name"] if len(name.split()) >= 2 else []
                ).append(name)
    out = []
    for case in cases:
        answers = list(case.get("answers") or [case["answer"]])
        seen = set()
        for k in range(per_case):
            rng = random.Random(f"{seed}:{case['id']}:{k}")
            swap = None
            for _ in range(10):  # a variant whose value differs from the earlier ones
                swap = _pick_swap(case["evidence"], answers, rng, pools)
                if swap is None or swap["to"] not in seen:
                    break
            if swap is None:
                if k == 0:
                    log.info("case %s: no swappable value in its evidence; skipped", case["id"])
                break
            if swap["to"] in seen:
                continue
            seen.add(swap["to"])
            swapped = list(dict.fromkeys(_swap_answer(a, swap) for a in answers))
            out.append(
                {
                    "id": f"{case['id']}-cf{k}",
                    "question": case["question"],
                    "context": _apply(case["evidence"], swap),
                    "answer": swapped[0],
                    "original_answer": answers[0],
                    "answers": swapped,
                    "original_answers": answers,
                    "swap": swap,
                    "source": case.get("source"),
                    **({"passage_id": case["passage_id"]} if case.get("passage_id") else {}),
                    "generated_from": case.get("generated_from", case["id"]),
                }
            )
    return out


_COPULA = re.compile(
    r"^(?P<subject>.+?)\s+(?:is|are|costs?|takes?|lasts?)\s+(?:(?:at\s+least|up\s+to|about)\s+)?$", re.I
)


def _question_for(sentence: str, span: tuple[int, int]) -> str:
    """A template question whose answer is the value at ``span``: "What is <subject>?" for
    "<subject> is <value>", else a cloze question over the sentence."""
    before = sentence[: span[0]]
    m = _COPULA.match(before.strip() + " ")
    if m and 2 <= len(m.group("subject").split()) <= 12:
        subject = m.group("subject").strip()
        subject = subject[0].lower() + subject[1:] if not subject[:2].isupper() else subject
        return f"What is {subject}?"
    blanked = (before + "___" + sentence[span[1] :]).strip()
    return f'What value fills the blank in: "{blanked}"?'


def from_corpus(cfg: TetherConfig, *, n: int, seed: int = 0) -> list[dict]:
    """Up to ``n`` counterfactual cases from the chunks of the ingested collection (tether.db):
    chunks are sampled (seeded), a sentence stating a quantity is picked, a template question is
    built whose answer is that quantity, and the quantity is swapped throughout the chunk."""
    from retrieval.ledger import Ledger
    from tether.text.sentences import split_sentences

    with Ledger.open(cfg.db_path) as ledger:
        rows = ledger.chunk_rows(cfg.retrieval.collection)
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    cases = []
    for i in order:
        if len(cases) >= n:
            break
        row = rows[i]
        for start, end in split_sentences(row["text"]):
            sentence = row["text"][start:end]
            qs = [
                q
                for q in extract_quantities(sentence)
                if q.kind in ("amount", "duration", "count", "percent") and _numbers_in(q.text)
            ]
            if not qs:
                continue
            q = qs[0]
            case = {
                "id": f"corpus-{row['id']}",
                "question": _question_for(sentence, q.span),
                "answers": [q.text],
                "evidence": row["text"],
                "source": row["source"],
                "passage_id": row["id"],
                "generated_from": f"corpus:{cfg.retrieval.collection}",
            }
            made = make_counterfactuals([case], seed=seed)
            if made and made[0]["swap"]["from"] == q.text:
                cases.extend(made)
                break
    return cases[:n]


def load_cases(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_cases(path: str | Path, cases: Iterable[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases), encoding="utf-8")


def mentions(text: str, value: str, kind: str) -> bool:
    if not value:
        return False
    if re.search(rf"(?<![\w]){re.escape(value)}(?![\w]|[.,]\d)", text, re.I):
        return True
    if kind == "time":  # every time of day in the value, "09:00" also written "9:00"
        wanted = {(t.hour, t.minute) for t in find_times(value)}
        return bool(wanted) and wanted <= {(t.hour, t.minute) for t in find_times(text)}
    if kind in ("date", "role", "name"):
        return False
    # the same number in another spelling: "five" for "5", "5,000" for "5000"
    nums = _numbers_in(value)
    if not nums:
        return False
    return any(abs(v - nums[0][1]) < 1e-9 for _, v in _numbers_in(text))


def follows_context(answer_text: str, case: dict) -> bool | None:
    """True: the answer states the counterfactual value and not the original; False: it states the
    original (with or without the new one); None: neither (a refusal or another value).
    Values match normalised: case, "five"/"5", "5,000"/"5000"; for numbers, the number alone."""
    swap = case["swap"]
    new = mentions(answer_text, swap["to"], swap["kind"])
    old = mentions(answer_text, swap["from"], swap["kind"])
    if old:
        return False
    return True if new else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Make counterfactual QA cases (see the module docstring for the schema).")
    ap.add_argument("--from-qa", type=Path, required=True, help="QA JSONL with question, answers, evidence, source")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-case", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cases = make_counterfactuals(load_cases(args.from_qa), seed=args.seed, per_case=args.per_case)
    write_cases(args.out, cases)
    log.info("wrote %d counterfactual cases to %s", len(cases), args.out)


if __name__ == "__main__":
    main()
