"""A seeded log database for the training tests: ledger rows for two documents, LLM and
extractive turns logged through the real ``LogStore``, with up/down/edit feedback and a conflict."""

from __future__ import annotations

import json
from pathlib import Path

from assistant.generators.base import GeneratorIdentity
from assistant.logstore import LogStore
from assistant.prompts import PromptSource, build_messages
from assistant.types import Answer
from retrieval.search import SearchHit
from tether.db import connect, transaction

DOCS = {
    "leave.md": (
        "Leave policy",
        "2024-01-10",
        "official",
        [
            "Employees get twenty-five days of annual leave each year. Unused leave can be carried over until March.",
            "Leave requests are approved by your manager in the HR portal at least two weeks ahead.",
        ],
    ),
    "canteen.md": (
        "Canteen",
        "2023-05-02",
        "team",
        [
            "The Halden office canteen opens at 07:45 and closes at 14:30 on weekdays.",
            "Coffee is free on the second floor. The canteen is closed on public holidays.",
        ],
    ),
}

# (question, answer, feedback kind, edited answer)
TURNS = [
    ("How many days of leave do I get?", "You get twenty-five days of annual leave [1].", "up", None),
    ("When does the canteen open?", "The canteen opens at 07:45 [1].", "up", None),
    ("Who approves leave?", "HR approves leave.", "edit", "Your manager approves leave in the HR portal [1]."),
    ("Can I carry over leave?", "No, leave expires.", "down", None),
    ("Is coffee free?", "Coffee costs two euros.", "down", None),
    ("When does the canteen close?", "It closes at 14:30 [1].", "up", None),
    ("Is the canteen open on holidays?", "The canteen is closed on public holidays [1].", "up", None),
    ("How early must I request leave?", "Request leave two weeks ahead in the HR portal [1].", "up", None),
    ("Where do I request leave?", "Ask the canteen.", "down", None),
    ("Until when can leave be carried over?", "Unused leave can be carried over until March [1].", "up", None),
]


def _hit(cid: str, text: str, source: str, title: str, date: str, authority: str, rank: int, doc_id: int) -> SearchHit:
    return SearchHit(
        cid, text, source, title, (0, len(text)), None, 1.0 / rank, rank, None, None, date, "current", authority, doc_id
    )


def seed_ledger(db_path: Path, collection: str = "tether") -> dict[str, list[SearchHit]]:
    """Insert the documents and chunks (the ledger rows ingestion writes); return hits per source."""
    db = connect(db_path)
    hits: dict[str, list[SearchHit]] = {}
    try:
        with transaction(db):
            for source, (title, date, authority, chunks) in DOCS.items():
                text = " ".join(chunks)
                cur = db.execute(
                    "INSERT INTO documents (collection, source, path, content_hash, size, mtime, kind, title, doc_date, status, authority, text,"
                    " n_chunks, ingested_at) VALUES (?, ?, ?, 'h', ?, 0, 'md', ?, ?, 'current', ?, ?, ?, 'now')",
                    (collection, source, source, len(text), title, date, authority, text, len(chunks)),
                )
                doc_id = cur.lastrowid
                for i, chunk in enumerate(chunks):
                    cid = f"{source}#{i}"
                    db.execute(
                        "INSERT INTO chunks (id, collection, document_id, seq, text, start_char, end_char) VALUES (?, ?, ?, ?, ?, 0, ?)",
                        (cid, collection, doc_id, i, chunk, len(chunk)),
                    )
                    hits.setdefault(source, []).append(_hit(cid, chunk, source, title, date, authority, i + 1, doc_id))
    finally:
        db.close()
    return hits


def _answer(question: str, text: str, passages, backend: str, conflicts=()) -> Answer:
    return Answer(
        text=text,
        refused=False,
        question=question,
        query=question,
        passages=tuple(passages),
        citations=(),
        groundedness=None,
        generator=GeneratorIdentity(backend=backend, model="tiny"),
        latency_ms={"total": 1.0},
        conflicts=tuple(conflicts),
    )


def seed_log_db(db_path: Path) -> dict:
    """The seeded log: returns ids and the expected prompts for the assertions."""
    hits = seed_ledger(db_path)
    store = LogStore(db_path)
    all_hits = hits["leave.md"] + hits["canteen.md"]
    out = {"llm": [], "extractive": None, "pair_prompt": None, "conflict": None}
    for q, a, kind, edit in TURNS:
        passages = hits["leave.md"] if "leave" in q.lower() else hits["canteen.md"]
        prompt = [
            m.__dict__
            for m in build_messages(q, [PromptSource(h.title, h.text, h.date, h.authority, h.status) for h in passages])
        ]
        _, tid = store.log_turn(_answer(q, a, passages, "hf"), collection="tether", conversation_id=None, prompt=prompt)
        store.add_feedback(tid, kind, edited_answer=edit)
        out["llm"].append(tid)
    # the same prompt answered twice: once accepted, once rejected -> a DPO pair across turns
    q = "How many days of leave do I get?"
    prompt = [
        m.__dict__
        for m in build_messages(
            q, [PromptSource(h.title, h.text, h.date, h.authority, h.status) for h in hits["leave.md"]]
        )
    ]
    _, bad = store.log_turn(
        _answer(q, "You get ten days of leave.", hits["leave.md"], "hf"),
        collection="tether",
        conversation_id=None,
        prompt=prompt,
    )
    store.add_feedback(bad, "down")
    out["pair_prompt"] = prompt
    # an exact duplicate of the first accepted turn (dropped by dedup)
    _, dup = store.log_turn(
        _answer(q, TURNS[0][1], hits["leave.md"], "hf"), collection="tether", conversation_id=None, prompt=prompt
    )
    store.add_feedback(dup, "up")
    # an extractive turn: no prompt logged, rebuilt from its retrievals
    qx = "What are the canteen hours?"
    _, ext = store.log_turn(
        _answer(qx, "The canteen opens at 07:45 and closes at 14:30 [1].", hits["canteen.md"], "extractive"),
        collection="tether",
        conversation_id=None,
        prompt=None,
    )
    store.add_feedback(ext, "up")
    out["extractive"] = ext
    # a turn whose sources conflict and whose answer ignores it
    qc = "How many leave days do employees get?"
    team = _hit("canteen.md#1", hits["canteen.md"][1].text, "canteen.md", "Canteen", "2023-05-02", "team", 2, 2)
    conflict = {
        "kind": "numeric",
        "claims": [
            {
                "text": "Employees get twenty-five days of annual leave each year.",
                "source": "leave.md",
                "passage_id": "leave.md#0",
            },
            {
                "text": "Employees get thirty days of annual leave.",
                "source": "canteen.md",
                "passage_id": "canteen.md#1",
            },
        ],
    }
    cprompt = [
        m.__dict__ for m in build_messages(qc, [PromptSource(h.title, h.text) for h in (hits["leave.md"][0], team)])
    ]
    _, ct = store.log_turn(
        _answer(qc, "Employees get thirty days [2].", [hits["leave.md"][0], team], "hf", conflicts=[conflict]),
        collection="tether",
        conversation_id=None,
        prompt=cprompt,
    )
    out["conflict"] = ct
    out["all_hits"] = all_hits
    return out


COUNTERFACTUALS = [
    {"id": f"cf{i}", "question": q, "context": c, "answer": a, "original_answer": o, "swap": "entity", "source": "test"}
    for i, (q, c, a, o) in enumerate(
        [
            (
                "What is the capital of France?",
                "The capital of France is Lyon, where the government sits.",
                "Lyon",
                "Paris",
            ),
            (
                "Who wrote Hamlet?",
                "Hamlet was written by Christopher Marlowe in 1601.",
                "Christopher Marlowe",
                "William Shakespeare",
            ),
            ("How many legs does a spider have?", "A spider has six legs and two antennae.", "six", "eight"),
            ("What colour is the sky on a clear day?", "On a clear day the sky is green.", "green", "blue"),
        ]
    )
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
