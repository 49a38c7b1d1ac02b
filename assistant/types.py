"""Typed values that cross module boundaries: answers, citations, conversations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from assistant.generators.base import GeneratorIdentity
from retrieval.search import SearchHit


@dataclass(frozen=True)
class Citation:
    n: int  # the [n] in the answer: 1-based index into Answer.passages
    passage_id: str
    source: str
    sentence: str  # the answer sentence carrying the citation
    support: str  # the passage sentence that best supports it
    span: tuple[int, int] | None  # character span of `support` in the source document text
    supported: bool
    score: float  # similarity between the answer sentence and `support`

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "id": self.passage_id,
            "source": self.source,
            "sentence": self.sentence,
            "support": self.support,
            "span": list(self.span) if self.span else None,
            "supported": self.supported,
            "score": round(self.score, 4),
        }


@dataclass(frozen=True)
class Turn:
    question: str
    answer: str


@dataclass
class Conversation:
    """What the engine needs of a chat so far; `id` is set once the first turn is logged."""

    id: str | None = None
    user: str | None = None
    turns: list[Turn] = field(default_factory=list)


@dataclass(frozen=True)
class Rejected:
    """An LLM reply the engine's guard would not show (it loops, cites nothing that verifies, or
    states a value no source holds): the verified extractive answer was shown instead. Logged with
    the turn (``turns.rejected_json``) as a negative for training."""

    text: str  # the model's attempt, as it would have been shown
    reasons: tuple[str, ...]
    groundedness: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "reasons": list(self.reasons), "groundedness": self.groundedness}


@dataclass(frozen=True)
class Answer:
    text: str
    refused: bool
    question: str
    query: str  # the standalone query actually searched
    passages: tuple[SearchHit, ...]
    citations: tuple[Citation, ...]
    groundedness: float | None  # supported citations / (citations + uncited sentences); None if neither
    generator: GeneratorIdentity
    latency_ms: dict[str, float]
    uncited: tuple[str, ...] = ()  # answer sentences that cite no source (Tether's own conflict statements excepted)
    conflicts: tuple[Any, ...] = ()  # retrieval.conflicts.Conflict, all found among the passages
    decisions: tuple[Any, ...] = ()  # assistant.resolution.Decision, one per conflict
    policy: str | None = None
    relevant_conflicts: tuple[int, ...] = ()  # indexes of the conflicts the question is about
    # indexes of the conflicts the answer states (relevant ones, each pair of values once, at most
    # assistant.max_conflicts_stated); the others are only here and in to_json, with stated: false
    stated_conflicts: tuple[int, ...] = ()
    consistency: dict[str, Any] | None = None  # intra-memory check (assistant/consistency.py), when asked for
    fallback: str | None = None  # why the configured generator was replaced, if it was
    rejected: Rejected | None = None  # the LLM's reply the guard replaced by the extractive answer, and why
    turn_id: str | None = None
    conversation_id: str | None = None

    def conflict_decisions(self) -> list[tuple[Any, Any]]:
        """(conflict, its decision or None) pairs, in order."""
        decisions = self.decisions or (None,) * len(self.conflicts)
        return list(zip(self.conflicts, decisions))

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "refused": self.refused,
            "question": self.question,
            "query": self.query,
            "citations": [c.to_json() for c in self.citations],
            "groundedness": self.groundedness,
            "uncited": list(self.uncited),
            "conflicts": [
                {
                    **(c.to_json() if hasattr(c, "to_json") else dict(c)),
                    "decision": d.to_json() if d is not None else None,
                    "policy": self.policy,
                    "relevant": i in self.relevant_conflicts,
                    "stated": i in self.stated_conflicts,
                }
                for i, (c, d) in enumerate(self.conflict_decisions())
            ],
            "policy": self.policy,
            "conflicts_stated": len(self.stated_conflicts),
            "consistency": self.consistency,
            "sources": [
                {
                    "n": i,
                    "id": h.id,
                    "source": h.source,
                    "title": h.title,
                    "span": list(h.span),
                    "date": h.date,
                    "authority": h.authority,
                    "score": h.score,
                }
                for i, h in enumerate(self.passages, start=1)
            ],
            "generator": asdict(self.generator),
            "fallback": self.fallback,
            "rejected": self.rejected.to_json() if self.rejected else None,
            "latency_ms": {k: round(v, 1) for k, v in self.latency_ms.items()},
            "turn_id": self.turn_id,
            "conversation_id": self.conversation_id,
        }
