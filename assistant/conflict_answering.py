"""Conflict-aware answering: what the prompt tells the LLM about conflicting sources, and the
statement Tether adds to an answer so that every conflict is named, both claims are cited and the
policy's decision is explained.

All functions are pure. ``numbers`` maps a passage id to its [n] in the answer's sources.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from assistant.prompts import sanitize_source_text
from assistant.resolution import Decision
from tether.text.sentences import citation_numbers, split_sentences, strip_citations


def _numbers_of(conflict, numbers: Mapping[str, int]) -> tuple[int | None, int | None]:
    a, b = conflict.claims
    return numbers.get(a.passage_id or ""), numbers.get(b.passage_id or "")


def _value(claim) -> str:
    """A claim's value for the prompt notes, quoted and neutralised: it comes from a document."""
    return _quote(sanitize_source_text(claim.value or claim.text))


def _quote(text: str) -> str:
    """A claim as a quotation without its final stop (the citation goes before the stop)."""
    text = " ".join(text.split()).rstrip(" .;:")
    return '"' + text.replace('"', "'") + '"'


def _source_line(claim, n: int) -> str:
    meta = [
        x
        for x in (
            f"dated {claim.date}" if claim.date else None,
            claim.authority,
            claim.status if claim.status and claim.status != "current" else None,
        )
        if x
    ]
    return f"source {n} is {claim.source}" + (f" ({', '.join(meta)})" if meta else "")


def prompt_notes(conflicts: Sequence, decisions: Sequence[Decision], numbers: Mapping[str, int]) -> list[str]:
    """One line per conflict whose two claims are both among the prompt's sources."""
    notes = []
    for conflict, decision in zip(conflicts, decisions):
        na, nb = _numbers_of(conflict, numbers)
        if na is None or nb is None or na == nb:
            continue
        a, b = conflict.claims
        head = f"Sources [{na}] and [{nb}] disagree on {conflict.subject}: [{na}] says {_value(a)}, [{nb}] says {_value(b)}."
        if decision.winner is None and decision.policy != "present-both":
            notes.append(
                f"{head} The {decision.policy} policy cannot decide ({decision.reason}): give both values, each with"
                " its citation, say that the sources disagree and pick neither."
            )
        elif decision.winner is None:
            notes.append(f"{head} Give both values, each with its citation, and say that the sources disagree.")
        else:
            won, lost = (na, nb) if decision.winner == 0 else (nb, na)
            notes.append(f"{head} Answer with [{won}] ({decision.reason}) and say that it overrides [{lost}].")
    return notes


def conflict_statement(conflict, decision: Decision, numbers: Mapping[str, int], *, answer: str = "") -> str:
    """Tether's words naming a conflict: both claims quoted and cited, then the decision and why.

    Only the quotations carry citations (so citation verification checks them against their
    passages); the sentences about sources and policy carry none. A winning claim that ``answer``
    already states with its citation is not quoted again. The one template for the conflict
    answer: the engine appends it to answers, ``training.data`` writes it into DPO "chosen" rows.
    """
    na, nb = _numbers_of(conflict, numbers)
    if na is None or nb is None:
        return ""
    winner = None if decision.winner is None else ((conflict.claims[0], na), (conflict.claims[1], nb))[decision.winner]
    stated = winner is not None and _states(answer, winner[0].text, winner[1])
    return _statement(conflict, decision, na, nb, quote_winner=not stated)


def _statement(conflict, decision: Decision, na: int, nb: int, *, quote_winner: bool) -> str:
    a, b = conflict.claims
    if decision.winner is None:
        first, second = (a, na), (b, nb)
    else:
        first, second = ((a, na), (b, nb)) if decision.winner == 0 else ((b, nb), (a, na))
    parts = [f"The sources disagree on {conflict.subject}."]
    if quote_winner or decision.winner is None:
        parts.append(f"{_quote(first[0].text)} [{first[1]}].")
    parts.append(f"{_quote(second[0].text)} [{second[1]}].")
    lines = f"{_source_line(*first)}; {_source_line(*second)}."
    parts.append(lines[0].upper() + lines[1:])
    if decision.winner is None and decision.policy != "present-both":
        parts.append(
            f"The {decision.policy} policy cannot decide between them ({decision.reason}), so neither is picked:"
            " both are shown."
        )
    elif decision.winner is None:
        parts.append(f"Following the {decision.policy} policy, both are shown: {decision.reason}.")
    else:
        parts.append(
            f"Following the {decision.policy} policy, source {first[1]} applies and overrides source {second[1]}: {decision.reason}."
        )
    return " ".join(parts)


def split_statements(
    answer: str, resolved: Sequence[tuple[Any, Decision]], numbers: Mapping[str, int]
) -> tuple[str, list[int]]:
    """Take Tether's conflict statements off the end of an answer the engine wrote: (the answer
    without them, the indexes into ``resolved`` of the conflicts whose statement was there).

    The engine appends one ``conflict_statement`` per conflict it names, in order, after the
    generator's reply; this finds exactly those strings (with or without the winner's quotation),
    so the reply that ignored the conflict is recovered without guessing.
    """
    text, found = answer.strip(), []
    for i in reversed(range(len(resolved))):
        conflict, decision = resolved[i]
        na, nb = _numbers_of(conflict, numbers)
        if na is None or nb is None:
            continue
        for quote_winner in (True, False):
            statement = _statement(conflict, decision, na, nb, quote_winner=quote_winner)
            if text == statement or text.endswith(" " + statement):
                text = text[: len(text) - len(statement)].rstrip()
                found.append(i)
                break
    return text, found[::-1]


_DISAGREE = re.compile(
    r"\b(disagree|conflict|contradict|differ|whereas|however|supersed|overrid|replac|outdated|older)", re.I
)


def names_conflict(answer: str, conflict, numbers: Mapping[str, int]) -> bool:
    """Whether an answer already names the conflict: cites both passages and says they disagree."""
    na, nb = _numbers_of(conflict, numbers)
    cited = set(citation_numbers(answer))
    return na in cited and nb in cited and bool(_DISAGREE.search(answer))


def drop_overridden(answer: str, conflict, decision: Decision, numbers: Mapping[str, int]) -> str:
    """Remove the answer sentences that state the losing claim as fact (the statement quotes it)."""
    if decision.winner is None:
        return answer
    loser = conflict.claims[1 - decision.winner]
    key = _norm(loser.text)
    kept = [answer[s:e] for s, e in split_sentences(answer) if _norm(strip_citations(answer[s:e])) != key]
    return " ".join(kept)


def _states(answer: str, claim_text: str, n: int) -> bool:
    """Whether ``answer`` has a sentence citing [n] that is the claim itself."""
    key = _norm(claim_text)
    for s, e in split_sentences(answer):
        sentence = answer[s:e]
        if n in citation_numbers(sentence):
            body = _norm(strip_citations(sentence))
            if body and (body in key or key in body):
                return True
    return False


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s€$£%]", " ", text.lower()).split())
