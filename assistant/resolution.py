"""Resolution policies for knowledge conflicts: which of two contradicting claims the answer follows.

- ``prefer-recent``: the claim from the later document date wins; with equal or missing dates, the
  claim whose document is not superseded wins; otherwise nobody wins and both are presented.
- ``prefer-official``: a superseded document loses; otherwise the higher authority wins
  (official > team > informal > unknown); with equal authority, the later date wins; otherwise
  both are presented.
- ``present-both``: never picks; the answer shows both claims with their citations.

``resolve`` is pure: the same conflict and policy always give the same ``Decision``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tether.config import CONFLICT_POLICIES as POLICIES  # validated in AssistantConfig

AUTHORITY_RANK = {"official": 3, "team": 2, "informal": 1}


@dataclass(frozen=True)
class Decision:
    policy: str
    winner: int | None  # index into conflict.claims; None = present both
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "winner": self.winner, "reason": self.reason}

    @classmethod
    def from_json(cls, data: Any) -> Decision:
        """The decision ``to_json`` wrote: ``from_json(d.to_json()) == d``. Other keys (the log's
        ``relevant``) are ignored; ``ValueError`` names what is missing or out of range."""
        if not isinstance(data, dict):
            raise ValueError(f"a decision must be an object, not {type(data).__name__}")
        problems = [f"{k} (a string)" for k in ("policy", "reason") if not isinstance(data.get(k), str)]
        winner = data.get("winner", "missing")
        if winner is not None and (isinstance(winner, bool) or winner not in (0, 1)):
            problems.append(f"winner (0, 1 or null, not {winner!r})")
        if problems:
            raise ValueError(f"a decision needs {', '.join(problems)}; it has {sorted(data)}")
        return cls(data["policy"], winner, data["reason"])


def _describe(claim) -> str:
    bits = [claim.source]
    if claim.date:
        bits.append(f"dated {claim.date}")
    return ", ".join(bits)


def _by_date(a, b) -> int | None:
    """0 or 1 for the claim with the later date; None when equal or unknown."""
    if a.date and b.date and a.date != b.date:
        return 0 if a.date > b.date else 1
    return None


def _by_status(a, b) -> int | None:
    """The index of the claim that is not superseded, when exactly one is."""
    sa, sb = (a.status or "") == "superseded", (b.status or "") == "superseded"
    if sa != sb:
        return 1 if sa else 0
    return None


def _by_authority(a, b) -> int | None:
    ra, rb = AUTHORITY_RANK.get(a.authority or "", 0), AUTHORITY_RANK.get(b.authority or "", 0)
    if ra != rb:
        return 0 if ra > rb else 1
    return None


def resolve(conflict, policy: str) -> Decision:
    """Apply ``policy`` to a conflict between ``conflict.claims[0]`` and ``conflict.claims[1]``."""
    if policy not in POLICIES:
        raise ValueError(f"conflict policy {policy!r} must be one of {', '.join(POLICIES)}")
    a, b = conflict.claims
    if policy == "present-both":
        return Decision(policy, None, "the policy is to present both claims")
    if policy == "prefer-recent":
        w = _by_date(a, b)
        if w is not None:
            win, lose = (a, b)[w], (b, a)[w]
            return Decision(policy, w, f"{win.source} ({win.date}) is more recent than {lose.source} ({lose.date})")
        w = _by_status(a, b)
        if w is not None:
            lose = (b, a)[w]
            return Decision(policy, w, f"the dates do not decide, and {lose.source} is marked superseded")
        if a.date and a.date == b.date:
            return Decision(policy, None, f"both documents are dated {a.date}, so neither is more recent")
        return Decision(policy, None, "the documents carry no dates that tell which is more recent")
    # prefer-official
    w = _by_status(a, b)
    if w is not None:
        lose = (b, a)[w]
        return Decision(policy, w, f"{lose.source} is marked superseded")
    w = _by_authority(a, b)
    if w is not None:
        win, lose = (a, b)[w], (b, a)[w]
        return Decision(
            policy,
            w,
            f"{win.source} has {win.authority or 'unknown'} authority, {lose.source} only {lose.authority or 'unknown'}",
        )
    w = _by_date(a, b)
    if w is not None:
        win, lose = (a, b)[w], (b, a)[w]
        return Decision(
            policy, w, f"both are equally authoritative and {_describe(win)} is more recent than {_describe(lose)}"
        )
    authority = a.authority or "unknown"
    dated = f"dated {a.date}" if a.date and a.date == b.date else "without dates that tell which is more recent"
    return Decision(policy, None, f"both documents have {authority} authority and are {dated}")
