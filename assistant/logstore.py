"""The conversation log: turns, retrievals, citations, conflicts and feedback in ``tether.db``.

The engine writes; the UI and the training data builders read. Each thread gets its own SQLite
connection and every write is one ``BEGIN IMMEDIATE`` transaction, so several app sessions,
threads or processes can log at once without losing a row.

Every SQL statement over these tables is in this module. The engine keeps one ``LogStore`` for its
life; a reader opens one per use: ``with LogStore.open(cfg.db_path) as store: ...``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from assistant.generators.base import GeneratorIdentity, Message
from assistant.types import Answer
from retrieval.ledger import chunks_by_id
from tether.clock import now_iso
from tether.db import PerThreadStore, transaction
from tether.errors import TetherError

FEEDBACK_KINDS = ("up", "down", "edit", "source", "comment")

# what the training data builders read (their manifests record these statements)
FEEDBACK_QUERY = (
    "SELECT t.id, t.question, t.answer, t.refused, t.collection, t.prompt_json, f.kind, f.edited_answer"
    " FROM turns t JOIN feedback f ON f.turn_id = t.id"
    " WHERE f.kind IN ('up', 'down', 'edit') ORDER BY t.created_at, t.rowid, f.id"
)
CONFLICT_QUERY = (
    "SELECT c.turn_id, c.idx, c.kind, c.claims_json, c.decision FROM conflicts c"
    " JOIN turns t ON t.id = c.turn_id WHERE t.refused = 0 ORDER BY t.created_at, c.idx"
)
RETRIEVAL_QUERY = "SELECT rank, passage_id, source, score, cited FROM retrievals WHERE turn_id = ? ORDER BY rank"


@dataclass(frozen=True)
class TurnRow:
    """A logged turn as the training data builders read it: ``prompt`` is the exact logged prompt
    (None for a turn that logged none, e.g. extractive); ``feedback`` its (kind, edited answer)
    pairs of up/down/edit feedback, oldest first (empty when read without feedback)."""

    id: str
    question: str
    answer: str
    refused: bool
    collection: str
    prompt: tuple[Message, ...] | None
    feedback: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True)
class RetrievalRow:
    rank: int
    passage_id: str
    source: str
    score: float
    cited: bool


@dataclass(frozen=True)
class RetrievedPassage:
    """A turn's retrieved passage joined to the ledger; the text and metadata are None when the
    passage is gone from the ledger."""

    rank: int
    passage_id: str
    text: str | None
    title: str | None
    doc_date: str | None
    authority: str | None
    status: str | None


@dataclass(frozen=True)
class ConversationRow:
    """A conversation as the sidebar lists it."""

    id: str
    user: str | None
    title: str
    created_at: str
    last_at: str  # when its latest turn was logged
    turns: int


@dataclass(frozen=True)
class StoredTurn:
    """A logged turn read back: the answer as it was, and the feedback rows it received (oldest first)."""

    answer: Answer
    feedback: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ConflictRow:
    """One logged conflict of an answered (not refused) turn, its JSON columns as stored."""

    turn_id: str
    idx: int
    kind: str
    claims_json: str
    decision: str | None


class LogStore(PerThreadStore):
    """The assistant package's store: conversations, turns and what each turn retrieved, cited, found
    in conflict and got as feedback (one connection per thread: the web app's sessions share it)."""

    def new_conversation(self, user: str | None = None, title: str | None = None) -> str:
        cid = uuid.uuid4().hex
        with transaction(self.db) as db:
            db.execute(
                "INSERT INTO conversations (id, user, title, created_at) VALUES (?, ?, ?, ?)",
                (cid, user, title, now_iso()),
            )
        return cid

    def log_turn(
        self,
        answer: Answer,
        *,
        collection: str,
        conversation_id: str | None,
        user: str | None = None,
        prompt: Any = None,
    ) -> tuple[str, str]:
        """Write a whole turn in one transaction; return (conversation_id, turn_id)."""
        turn_id = uuid.uuid4().hex
        cited = {c.passage_id for c in answer.citations}
        with transaction(self.db) as db:
            if (
                conversation_id is None
                or not db.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
            ):
                conversation_id = conversation_id or uuid.uuid4().hex
                db.execute(
                    "INSERT INTO conversations (id, user, title, created_at) VALUES (?, ?, ?, ?)",
                    (conversation_id, user, answer.question[:80], now_iso()),
                )
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM turns WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]
            g = answer.generator
            db.execute(
                "INSERT INTO turns (id, conversation_id, seq, collection, question, query, answer, refused, generator, model,"
                " adapter, adapter_hash, decoding, fallback, groundedness, policy, latency_json, prompt_json, created_at, user)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    turn_id,
                    conversation_id,
                    seq,
                    collection,
                    answer.question,
                    answer.query,
                    answer.text,
                    int(answer.refused),
                    g.backend,
                    g.model,
                    g.adapter,
                    g.adapter_hash,
                    g.decoding,
                    answer.fallback,
                    answer.groundedness,
                    answer.policy,
                    json.dumps(answer.latency_ms),
                    json.dumps(prompt) if prompt is not None else None,
                    now_iso(),
                    user,
                ),
            )
            db.executemany(
                "INSERT INTO retrievals (turn_id, rank, passage_id, source, score, cited) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (turn_id, i, h.id, h.source, h.score, int(h.id in cited))
                    for i, h in enumerate(answer.passages, start=1)
                ],
            )
            db.executemany(
                "INSERT INTO citations (turn_id, idx, n, passage_id, source, sentence, start_char, end_char, supported, score)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        turn_id,
                        i,
                        c.n,
                        c.passage_id,
                        c.source,
                        c.sentence,
                        c.span[0] if c.span else None,
                        c.span[1] if c.span else None,
                        int(c.supported),
                        c.score,
                    )
                    for i, c in enumerate(answer.citations)
                ],
            )
            db.executemany(
                "INSERT INTO conflicts (turn_id, idx, kind, claims_json, decision, policy) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        turn_id,
                        i,
                        getattr(c, "kind", "unknown"),
                        json.dumps(c.to_json() if hasattr(c, "to_json") else c),
                        json.dumps({**d.to_json(), "relevant": i in answer.relevant_conflicts})
                        if d is not None
                        else None,
                        answer.policy,
                    )
                    for i, (c, d) in enumerate(answer.conflict_decisions())
                ],
            )
            if answer.consistency is not None:
                db.execute(
                    "UPDATE turns SET consistency_json = ? WHERE id = ?", (json.dumps(answer.consistency), turn_id)
                )
            db.execute(
                "UPDATE turns SET rejected_json = ?, uncited_json = ? WHERE id = ?",
                (
                    json.dumps(answer.rejected.to_json()) if answer.rejected is not None else None,
                    json.dumps(list(answer.uncited)),
                    turn_id,
                ),
            )
        return conversation_id, turn_id

    def add_feedback(
        self,
        turn_id: str,
        kind: str,
        *,
        edited_answer: str | None = None,
        passage_id: str | None = None,
        comment: str | None = None,
        user: str | None = None,
    ) -> int:
        if kind not in FEEDBACK_KINDS:
            raise TetherError(f"feedback kind {kind!r} must be one of {', '.join(FEEDBACK_KINDS)}")
        if kind == "edit" and not (edited_answer or "").strip():
            raise TetherError("an 'edit' feedback needs the edited answer")
        if kind == "source" and not passage_id:
            raise TetherError("a 'source' feedback needs the passage id of the right source")
        with transaction(self.db) as db:
            if not db.execute("SELECT 1 FROM turns WHERE id = ?", (turn_id,)).fetchone():
                raise TetherError(f"no turn with id {turn_id}")
            cur = db.execute(
                "INSERT INTO feedback (turn_id, kind, edited_answer, passage_id, comment, user, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (turn_id, kind, edited_answer, passage_id, comment, user, now_iso()),
            )
            return int(cur.lastrowid)

    def feedback_rows(self) -> list[dict[str, Any]]:
        """Every feedback row with its turn's question, answer and model, newest first."""
        return [
            dict(r)
            for r in self.db.execute(
                "SELECT f.id, f.created_at, f.kind, f.user, f.comment, f.edited_answer, f.passage_id, f.turn_id,"
                " t.question, t.answer, t.generator, t.model, t.adapter, t.conversation_id, t.user AS asked_by"
                " FROM feedback f JOIN turns t ON t.id = f.turn_id ORDER BY f.created_at DESC, f.id DESC"
            )
        ]

    # -- conversations as their users see them ----------------------------------------------------

    def conversations(self, user: str | None, *, all_users: bool = False) -> list[ConversationRow]:
        """``user``'s conversations that have a turn, most recently active first (``all_users``: everyone's)."""
        where, args = ("", ()) if all_users else (" WHERE c.user IS ?", (user,))
        return [
            ConversationRow(r["id"], r["user"], r["title"] or "", r["created_at"], r["last_at"], r["turns"])
            for r in self.db.execute(
                "SELECT c.id, c.user, c.title, c.created_at, MAX(t.created_at) AS last_at, COUNT(t.id) AS turns"
                f" FROM conversations c JOIN turns t ON t.conversation_id = c.id{where}"
                " GROUP BY c.id ORDER BY last_at DESC, c.rowid DESC",
                args,
            )
        ]

    def conversation_owner(self, conversation_id: str) -> str | None:
        """The user a conversation belongs to; TetherError when there is no such conversation."""
        row = self.db.execute("SELECT user FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise TetherError(f"no conversation with id {conversation_id}")
        return row["user"]

    def rename_conversation(self, conversation_id: str, title: str, *, user: str | None) -> None:
        """Give ``user``'s conversation a new title (refused for anyone else's)."""
        title = " ".join((title or "").split())[:120]
        if not title:
            raise TetherError("a conversation title cannot be empty")
        with transaction(self.db) as db:
            cur = db.execute(
                "UPDATE conversations SET title = ? WHERE id = ? AND user IS ?", (title, conversation_id, user)
            )
            if not cur.rowcount:
                raise TetherError(f"no conversation {conversation_id} of {user or 'the local user'}")

    def delete_conversation(self, conversation_id: str, *, user: str | None) -> int:
        """Delete ``user``'s conversation with its turns and their feedback; returns the turns deleted."""
        with transaction(self.db) as db:
            if not db.execute(
                "SELECT 1 FROM conversations WHERE id = ? AND user IS ?", (conversation_id, user)
            ).fetchone():
                raise TetherError(f"no conversation {conversation_id} of {user or 'the local user'}")
            n = db.execute("SELECT COUNT(*) FROM turns WHERE conversation_id = ?", (conversation_id,)).fetchone()[0]
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        return int(n)

    def adopt_local(self, user: str) -> int:
        """Give the local user's conversations (``user`` NULL: an install without accounts), their
        turns and feedback to ``user`` (the first admin account); returns the conversations moved."""
        local = "SELECT id FROM conversations WHERE user IS NULL"
        with transaction(self.db) as db:
            db.execute(
                "UPDATE feedback SET user = ? WHERE user IS NULL AND turn_id IN"
                f" (SELECT id FROM turns WHERE conversation_id IN ({local}))",
                (user,),
            )
            db.execute(f"UPDATE turns SET user = ? WHERE user IS NULL AND conversation_id IN ({local})", (user,))
            return db.execute("UPDATE conversations SET user = ? WHERE user IS NULL", (user,)).rowcount

    def conversation_answers(self, conversation_id: str) -> list[StoredTurn]:
        """Every turn of a conversation, oldest first, as the ``Answer`` it was (passages read back
        from the ledger; one gone since is shown as such) with its stored feedback."""
        ids = [
            r["id"]
            for r in self.db.execute(
                "SELECT id FROM turns WHERE conversation_id = ? ORDER BY seq, rowid", (conversation_id,)
            )
        ]
        return [self.stored_turn(tid) for tid in ids]

    def stored_turn(self, turn_id: str) -> StoredTurn:
        """One logged turn rebuilt as its ``Answer`` (with its turn and conversation ids) and feedback."""
        from assistant.resolution import Decision
        from assistant.types import Citation, Rejected
        from retrieval.conflicts import Conflict
        from retrieval.search import SearchHit

        rec = self.turn(turn_id)
        chunks = chunks_by_id(self.db, sorted({r["passage_id"] for r in rec["retrievals"]}))
        passages = []
        for r in rec["retrievals"]:
            c = chunks.get(r["passage_id"])
            passages.append(
                SearchHit(
                    id=r["passage_id"],
                    text=c.text if c else "(this passage is no longer in the knowledge base)",
                    source=r["source"],
                    title=c.title if c else r["source"],
                    span=(c.start_char, c.end_char) if c else (0, 0),
                    page=c.page if c else None,
                    score=r["score"],
                    rank=r["rank"],
                    dense_score=None,
                    bm25_score=None,
                    date=c.doc_date if c else None,
                    status=c.status if c else None,
                    authority=c.authority if c else None,
                    document_id=c.document_id if c else -1,
                )
            )
        by_id = {h.id: h for h in passages}
        citations = []
        for c in rec["citations"]:
            hit = by_id.get(c["passage_id"])
            span = (c["start_char"], c["end_char"]) if c["start_char"] is not None else None
            support = ""
            if hit is not None and span is not None and hit.span[0] <= span[0] < span[1] <= hit.span[1]:
                support = hit.text[span[0] - hit.span[0] : span[1] - hit.span[0]]
            citations.append(
                Citation(
                    c["n"], c["passage_id"], c["source"], c["sentence"], support, span, bool(c["supported"]), c["score"]
                )
            )
        conflicts, decisions, relevant = [], [], []
        for c in rec["conflicts"]:
            try:
                conflict = Conflict.from_json(c["claims"])
                decision = Decision.from_json(c["decision"]) if c["decision"] else None
            except (ValueError, KeyError, TypeError):  # written by an older version: shown without it
                continue
            if decision is not None and c["decision"].get("relevant"):
                relevant.append(len(conflicts))
            conflicts.append(conflict)
            decisions.append(decision)
        rejected = rec["rejected"]
        answer = Answer(
            text=rec["answer"],
            refused=bool(rec["refused"]),
            question=rec["question"],
            query=rec["query"],
            passages=tuple(passages),
            citations=tuple(citations),
            groundedness=rec["groundedness"],
            generator=GeneratorIdentity(
                rec["generator"], rec["model"], rec["adapter"], rec["adapter_hash"], rec["decoding"]
            ),
            latency_ms=rec["latency_ms"],
            uncited=tuple(rec["uncited"]),
            conflicts=tuple(conflicts),
            decisions=tuple(decisions),
            policy=rec["policy"],
            relevant_conflicts=tuple(relevant),
            consistency=rec["consistency"],
            fallback=rec["fallback"],
            rejected=Rejected(rejected["text"], tuple(rejected["reasons"]), rejected.get("groundedness"))
            if rejected
            else None,
            turn_id=rec["id"],
            conversation_id=rec["conversation_id"],
        )
        return StoredTurn(answer, tuple(rec["feedback"]))

    def rejected_turns(self) -> list[dict[str, Any]]:
        """Turns whose LLM reply the engine's guard replaced, oldest first: the question, the prompt
        the model saw, its attempt (a negative for training), the reasons and the answer shown."""
        out = []
        for r in self.db.execute(
            "SELECT id, question, answer, prompt_json, rejected_json, generator, model, adapter FROM turns"
            " WHERE rejected_json IS NOT NULL ORDER BY created_at, rowid"
        ):
            rejected = json.loads(r["rejected_json"])
            out.append(
                {
                    "turn_id": r["id"],
                    "question": r["question"],
                    "prompt": json.loads(r["prompt_json"]) if r["prompt_json"] else None,
                    "attempt": rejected["text"],
                    "reasons": rejected["reasons"],
                    "shown": r["answer"],
                    "generator": r["generator"],
                    "model": r["model"],
                    "adapter": r["adapter"],
                }
            )
        return out

    def turn(self, turn_id: str) -> dict[str, Any]:
        """The full record of one turn, as stored."""
        db = self.db
        row = db.execute("SELECT * FROM turns WHERE id = ?", (turn_id,)).fetchone()
        if row is None:
            raise TetherError(f"no turn with id {turn_id}")
        out = dict(row)
        out["latency_ms"] = json.loads(out.pop("latency_json"))
        out["prompt"] = json.loads(out.pop("prompt_json")) if out.get("prompt_json") else None
        out["retrievals"] = [
            dict(r) for r in db.execute("SELECT * FROM retrievals WHERE turn_id = ? ORDER BY rank", (turn_id,))
        ]
        out["citations"] = [
            dict(r) for r in db.execute("SELECT * FROM citations WHERE turn_id = ? ORDER BY idx", (turn_id,))
        ]
        out["consistency"] = json.loads(out.pop("consistency_json")) if out.get("consistency_json") else None
        out["rejected"] = json.loads(out.pop("rejected_json")) if out.get("rejected_json") else None
        out["uncited"] = json.loads(out.pop("uncited_json")) if out.get("uncited_json") else []
        out["conflicts"] = [
            {
                **dict(r),
                "claims": json.loads(r["claims_json"]),
                "decision": json.loads(r["decision"]) if r["decision"] else None,
            }
            for r in db.execute("SELECT * FROM conflicts WHERE turn_id = ? ORDER BY idx", (turn_id,))
        ]
        out["feedback"] = [
            dict(r) for r in db.execute("SELECT * FROM feedback WHERE turn_id = ? ORDER BY id", (turn_id,))
        ]
        return out

    def export(self) -> Iterator[dict[str, Any]]:
        """Every turn with its retrievals, citations, conflicts and feedback, oldest first."""
        ids = [r["id"] for r in self.db.execute("SELECT id FROM turns ORDER BY created_at, rowid")]
        for tid in ids:
            yield self.turn(tid)

    # -- what the training data builders read -----------------------------------------------------

    def feedback_turns(self) -> list[TurnRow]:
        """Turns that received up/down/edit feedback, oldest first, each with that feedback."""
        rows: dict[str, Any] = {}
        feedback: dict[str, list[tuple[str, str | None]]] = {}
        for r in self.db.execute(FEEDBACK_QUERY):
            rows.setdefault(r["id"], r)
            feedback.setdefault(r["id"], []).append((r["kind"], r["edited_answer"]))
        return [_turn_row(r, tuple(feedback[tid])) for tid, r in rows.items()]

    def turn_row(self, turn_id: str) -> TurnRow:
        row = self.db.execute(
            "SELECT id, question, answer, refused, collection, prompt_json FROM turns WHERE id = ?", (turn_id,)
        ).fetchone()
        if row is None:
            raise TetherError(f"no turn with id {turn_id}")
        return _turn_row(row, ())

    def retrievals(self, turn_id: str) -> list[RetrievalRow]:
        """A turn's retrieved passages by rank."""
        return [
            RetrievalRow(r["rank"], r["passage_id"], r["source"], r["score"], bool(r["cited"]))
            for r in self.db.execute(RETRIEVAL_QUERY, (turn_id,))
        ]

    def retrieved_passages(self, turn_id: str) -> list[RetrievedPassage]:
        """A turn's retrievals by rank with the ledger's chunk text and document metadata."""
        hits = self.retrievals(turn_id)
        chunks = chunks_by_id(self.db, sorted({h.passage_id for h in hits}))
        out = []
        for h in hits:
            c = chunks.get(h.passage_id)
            out.append(
                RetrievedPassage(h.rank, h.passage_id, c.text, c.title, c.doc_date, c.authority, c.status)
                if c is not None
                else RetrievedPassage(h.rank, h.passage_id, None, None, None, None, None)
            )
        return out

    def answered_conflicts(self) -> list[ConflictRow]:
        """The conflicts logged for turns that were answered (not refused), oldest turn first."""
        return [
            ConflictRow(r["turn_id"], r["idx"], r["kind"], r["claims_json"], r["decision"])
            for r in self.db.execute(CONFLICT_QUERY)
        ]


def _turn_row(r, feedback: tuple[tuple[str, str | None], ...]) -> TurnRow:
    prompt = tuple(Message(m["role"], m["content"]) for m in json.loads(r["prompt_json"])) if r["prompt_json"] else None
    return TurnRow(r["id"], r["question"], r["answer"], bool(r["refused"]), r["collection"], prompt, feedback)
