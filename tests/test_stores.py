"""One store object per package, each owning its tables' SQL (docs/ARCHITECTURE.md):

    retrieval  ``retrieval.ledger.Ledger``             documents, chunks, collections, store_journal
    assistant  ``assistant.logstore.LogStore``         conversations, turns, retrievals, citations, conflicts, feedback
               ``assistant.accounts.AccountStore``     accounts
               ``assistant.evaluation.runs.RunStore``  eval_runs, eval_metrics, eval_items
    training   ``training.registry.TrainingStore``     datasets, training_jobs (``training.jobs``), models,
                                                        model_eval_runs, promotions

A blank database is migrated, each store writes and reads its own tables, and the shipped code is
read with ``ast``: SQL appears only in the store modules and ``tether/db.py``, and only they open
the database.
"""

from __future__ import annotations

import ast
import json
import re
import sqlite3
from pathlib import Path

import pytest

from assistant.evaluation.runs import EvalItem, RunStore
from assistant.generators.base import GeneratorIdentity, Message
from assistant.logstore import LogStore
from assistant.types import Answer
from retrieval.chunking import Chunk
from retrieval.conflicts import Claim, Conflict
from retrieval.ledger import Ledger
from retrieval.search import SearchHit
from tether.errors import ConfigError, TetherError
from training.registry import TrainingStore

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("tether", "retrieval", "assistant", "training", "app")

# the only files that may hold SQL: the migrations and one store module per package
SQL_FILES = {
    "tether/db.py",
    "retrieval/ledger.py",
    "assistant/logstore.py",
    "assistant/accounts.py",
    "assistant/evaluation/runs.py",
    "training/registry.py",
    "training/jobs.py",  # the training_jobs half of TrainingStore
}
# the only files that may open the database (``tether.db.connect``): the stores, and ingestion,
# which holds one connection for a whole run and hands it to the ledger's functions
CONNECT_FILES = SQL_FILES - {"tether/db.py", "training/jobs.py"} | {"retrieval/ingest.py"}
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE\s+FROM|CREATE\s+TABLE|ALTER\s+TABLE|DROP\s+TABLE)\b")


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "tether.db"


def _commit(ledger: Ledger, source: str, texts: list[str], **meta) -> list[str]:
    text = " ".join(texts)
    chunks, at = [], 0
    for i, t in enumerate(texts):
        chunks.append(Chunk(i, t, at, at + len(t)))
        at += len(t) + 1
    ids = [f"{source}#{i}" for i in range(len(texts))]
    ledger.commit_document(
        collection="c1",
        source=source,
        path=f"/docs/{source}",
        content_hash=f"h-{source}",
        size=len(text),
        mtime=0.0,
        kind="md",
        title=meta.get("title", source),
        doc_date=meta.get("doc_date"),
        status=meta.get("status"),
        authority=meta.get("authority"),
        text=text,
        chunks=chunks,
        chunk_ids=ids,
        pages=[None] * len(texts),
    )
    return ids


def test_the_ledger_writes_and_reads_its_tables(db_path):
    with Ledger.open(db_path) as ledger:
        ledger.ensure_collection("c1", "minilm")
        with pytest.raises(ConfigError, match="was embedded with 'minilm'"):
            ledger.ensure_collection("c1", "other")
        ledger.journal_add("c1", ["leave.md#0", "stray"])
        ids = _commit(
            ledger,
            "leave.md",
            ["Twenty-five days of leave.", "Ask your manager."],
            title="Leave",
            doc_date="2024-01-10",
            status="current",
            authority="official",
        )
        _commit(ledger, "canteen.md", ["The canteen opens at 07:45."], title="Canteen")
        assert ledger.generation("c1") == 2 and ledger.chunk_count("c1") == 3
        assert ledger.committed_hash("c1", "leave.md") == "h-leave.md"
        assert ledger.uncommitted_ids("c1") == (["stray"], [])  # committing cleared its own ids from the journal
        assert [d.source for d in ledger.documents("c1")] == ["canteen.md", "leave.md"]

        rows = ledger.chunks_by_id([*ids, "gone"])
        assert set(rows) == set(ids)
        first = rows["leave.md#0"]
        assert (
            first.text,
            first.start_char,
            first.end_char,
            first.source,
            first.title,
            first.doc_date,
            first.authority,
        ) == ("Twenty-five days of leave.", 0, 26, "leave.md", "Leave", "2024-01-10", "official")
        assert [c.id for c in ledger.collection_chunks("c1")] == ["canteen.md#0", "leave.md#0", "leave.md#1"]
        assert ledger.chunk_ids_of("c1", {"leave.md"}) == set(ids)
        assert ledger.all_chunks("c1")[0] == ["leave.md#0", "leave.md#1", "canteen.md#0"]  # written order

        assert ledger.set_metadata("c1", "canteen.md", doc_date="2023-05-02", status="draft", authority="team")
        assert not ledger.set_metadata("c1", "nope.md", doc_date=None, status=None, authority=None)
        doc = ledger.document("c1", "canteen.md")
        assert (doc.doc_date, doc.status, doc.authority) == ("2023-05-02", "draft", "team")
        assert ledger.document("c1", "nope.md") is None

        removed = ledger.remove_document("c1", "leave.md")
        orphans, committed = ledger.uncommitted_ids("c1")
        assert removed == ids and sorted(orphans) == sorted(["stray", *ids]) and committed == []
        ledger.journal_clear("c1", ["stray", *ids])
        assert ledger.uncommitted_ids("c1") == ([], []) and ledger.chunk_count("c1") == 1
    with pytest.raises(sqlite3.ProgrammingError):  # closed on leaving the block
        ledger.db.execute("SELECT 1")


CONFLICT = Conflict(
    "numeric",
    "amount",
    "annual leave days",
    (
        Claim(
            "Employees get twenty-five days of leave.",
            "leave.md",
            "leave.md#0",
            "Leave",
            "2024-01-10",
            "official",
            "current",
        ),
        Claim("Employees get thirty days of leave.", "gone.md", "gone.md#0", "Old", "2020-01-01", "team", "superseded"),
    ),
    0.9,
)


def _hit(cid: str, text: str, rank: int) -> SearchHit:
    return SearchHit(
        cid, text, cid.split("#")[0], "T", (0, len(text)), None, 1.0 / rank, rank, None, None, None, None, None, 1
    )


def _answer(question: str, text: str, hits, conflicts=()) -> Answer:
    return Answer(
        text=text,
        refused=False,
        question=question,
        query=question,
        passages=tuple(hits),
        citations=(),
        groundedness=None,
        generator=GeneratorIdentity(backend="hf", model="tiny"),
        latency_ms={"total": 1.0},
        conflicts=tuple(conflicts),
    )


def test_the_log_store_writes_and_reads_its_tables(db_path):
    with Ledger.open(db_path) as ledger:
        ledger.ensure_collection("c1", "minilm")
        _commit(
            ledger,
            "leave.md",
            ["Twenty-five days of leave."],
            title="Leave",
            doc_date="2024-01-10",
            status="current",
            authority="official",
        )
    hits = [_hit("leave.md#0", "Twenty-five days of leave.", 1), _hit("gone.md#0", "Removed since.", 2)]
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    with LogStore.open(db_path) as store:
        conv = store.new_conversation(user="ann")
        _, logged = store.log_turn(
            _answer("How much leave?", "25 days [1].", hits), collection="c1", conversation_id=conv, prompt=prompt
        )
        _, bare = store.log_turn(
            _answer("Who approves?", "Your manager.", hits[:1], conflicts=[CONFLICT]),
            collection="c1",
            conversation_id=conv,
            prompt=None,
        )
        store.add_feedback(logged, "down")
        store.add_feedback(logged, "edit", edited_answer="Twenty-five days [1].")
        store.add_feedback(bare, "up")
        store.add_feedback(bare, "comment", comment="not training data")
        with pytest.raises(TetherError, match="no turn"):
            store.add_feedback("nope", "up")

        turns = store.feedback_turns()
        assert [t.id for t in turns] == [logged, bare]
        assert turns[0].feedback == (("down", None), ("edit", "Twenty-five days [1]."))
        assert turns[0].prompt == (Message("system", "s"), Message("user", "q")) and turns[1].prompt is None
        assert (turns[1].question, turns[1].answer, turns[1].refused, turns[1].collection, turns[1].feedback) == (
            "Who approves?",
            "Your manager.",
            False,
            "c1",
            (("up", None),),
        )
        assert store.turn_row(bare).feedback == () and store.turn_row(bare).prompt is None
        with pytest.raises(TetherError, match="no turn"):
            store.turn_row("nope")

        assert [(r.rank, r.passage_id, r.cited) for r in store.retrievals(logged)] == [
            (1, "leave.md#0", False),
            (2, "gone.md#0", False),
        ]
        passages = store.retrieved_passages(logged)
        assert [(p.rank, p.text, p.title, p.doc_date, p.authority, p.status) for p in passages] == [
            (1, "Twenty-five days of leave.", "Leave", "2024-01-10", "official", "current"),
            (2, None, None, None, None, None),
        ]
        conflicts = store.answered_conflicts()
        assert [(c.turn_id, c.idx, c.kind, c.decision) for c in conflicts] == [(bare, 0, "numeric", None)]
        assert Conflict.from_json(json.loads(conflicts[0].claims_json)) == CONFLICT
        assert [f["kind"] for f in store.feedback_rows()] == ["comment", "up", "edit", "down"]
        assert [t["id"] for t in store.export()] == [logged, bare]
        conn = store.db
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")


def test_the_account_store_writes_and_reads_its_tables(db_path):
    from assistant.accounts import AccountStore
    from tether.passwords import ScryptParams, parse_hash

    fast, faster = ScryptParams(n=2**10), ScryptParams(n=2**8)
    with AccountStore.open(db_path, params=fast) as store:
        assert store.count() == 0 and store.get("ada") is None
        with pytest.raises(TetherError, match="at least 8 characters"):
            store.create_first_admin("ada", "short")
        with pytest.raises(TetherError, match="not allowed"):
            store.create("../ada", "long-enough")
        ada = store.create_first_admin("  Ada ", "ada-password")
        assert (ada.username, ada.role, ada.session_epoch) == ("ada", "admin", 0)
        with pytest.raises(TetherError, match="already exists"):
            store.create_first_admin("eve", "eve-password")
        with pytest.raises(TetherError, match="taken"):
            store.create("ADA", "other-password")
        store.create("ann", "ann-password")
        assert [(a.username, a.role) for a in store.accounts()] == [("ada", "admin"), ("ann", "user")]
        assert store.verify("ANN", "ann-password").username == "ann" and store.get("ann").last_sign_in_at
        assert store.verify("ann", "wrong-password") is None and store.verify("nobody", "ann-password") is None
        with pytest.raises(TetherError, match="last admin"):
            store.set_role("ada", "user")
        with pytest.raises(TetherError, match="last admin"):
            store.delete("ada")
        store.set_password("ann", "new-password")  # revokes ann's tokens
        assert store.get("ann").session_epoch == 1 and store.verify("ann", "new-password")
        store.revoke_sessions("ann")
        assert store.get("ann").session_epoch == 2
        store.set_role("ann", "admin")
        store.set_role("ada", "user")  # another admin exists now
        store.delete("ada")
        assert [a.username for a in store.accounts()] == ["ann"]
    with AccountStore.open(db_path, params=faster) as store:  # a hash at other parameters is re-hashed on success
        assert store.verify("ann", "new-password")
        stored = store.db.execute("SELECT password_hash FROM accounts WHERE username = 'ann'").fetchone()[0]
        assert parse_hash(stored)[0] == faster


def test_turns_carry_their_user_and_the_local_users_chats_can_be_adopted(db_path):
    answer = Answer(
        text="Twenty-five days [1].",
        refused=False,
        question="How much leave?",
        query="How much leave?",
        passages=(),
        citations=(),
        groundedness=None,
        generator=GeneratorIdentity("extractive", "x"),
        latency_ms={},
    )
    with LogStore.open(db_path) as store:
        local_conv, local_turn = store.log_turn(answer, collection="c1", conversation_id=None)
        store.add_feedback(local_turn, "up")
        _, ann_turn = store.log_turn(answer, collection="c1", conversation_id=None, user="ann")
        assert store.turn(ann_turn)["user"] == "ann" and store.turn(local_turn)["user"] is None
        assert store.adopt_local("ada") == 1
        assert store.conversation_owner(local_conv) == "ada" and store.turn(local_turn)["user"] == "ada"
        assert [f["user"] for f in store.turn(local_turn)["feedback"]] == ["ada"]
        assert [c.user for c in store.conversations("ann")] == ["ann"]
        assert store.adopt_local("ada") == 0


def test_the_run_store_writes_and_reads_its_tables(db_path):
    items = [
        EvalItem(
            "q1",
            "qa",
            {"answers": ["25"]},
            {"f1": 1.0},
            question="How much?",
            prediction="25",
            refused=False,
            correct=True,
            retrieved=["leave.md#0"],
            latency_ms={"total": 2.0},
        ),
        EvalItem("c1", "conflict", {"conflict": True}, {}, error="boom"),
    ]
    with RunStore.open(db_path) as runs:
        run = runs.store_run(
            suite="suite.jsonl",
            suite_hash="h",
            label="base",
            suites=["qa"],
            collection="c1",
            generator={"backend": "extractive", "model": "-"},
            config={"k": 5},
            corpus_hash="c",
            git_commit=None,
            metrics={"answers.f1": 1, "skipped": None},
            details={"n": 2},
            items=items,
        )
        assert run.metrics == {"answers.f1": 1.0}
        assert (
            runs.load_run(run.run_id) == run and runs.load_run(run.run_id[:6]) == run and runs.load_run("base") == run
        )
        with pytest.raises(TetherError, match="tether eval list"):
            runs.load_run("missing")
        assert [r.run_id for r in runs.list_runs(label="base")] == [run.run_id] and runs.list_runs(suite="other") == []
        assert runs.load_items(run.run_id) == items
        assert [tuple(r) for r in runs.db.execute("SELECT name, value FROM eval_metrics")] == [("answers.f1", 1.0)]


def test_the_training_store_writes_and_reads_its_tables(db_path, tmp_path):
    from training.data import DatasetManifest

    manifest = DatasetManifest(
        kind="sft", path=str(tmp_path / "sft"), n_train=3, n_eval=1, hash="ab" * 32, created_at="2026-01-01"
    )
    with TrainingStore.open(db_path) as store:
        assert store.record_dataset(manifest) == manifest.id == store.record_dataset(manifest)  # idempotent
        job = store.start_job("sft", {"lr": 1e-4}, str(tmp_path / "run"), str(tmp_path / "run" / "train.log"), 10)
        store.update_job(job, step=4, loss=1.5)
        store.update_job(job, step=5, loss=None)  # keeps the last loss
        parent = store.register(
            kind="adapter",
            path=str(tmp_path / "a1"),
            base="base",
            adapter=str(tmp_path / "a1"),
            method="sft",
            manifest=manifest.to_json(),
        )
        child = store.register_adapter(
            tmp_path / "a2",
            base="base",
            method="dpo",
            config={},
            manifest=None,
            parent_adapter=str(tmp_path / "a1"),
            job_id=job,
        )
        store.finish_job(job, "done", model_id=child)
        [row] = store.list_jobs()
        assert (row["status"], row["step"], row["loss"], row["model_id"]) == ("done", 5, 1.5, child)

        rec = store.get_model(child)
        assert (rec.kind, rec.parent_id, rec.method, rec.promoted) == ("adapter", parent, "dpo", False)
        assert store.get_model(parent).dataset_id == manifest.id
        with pytest.raises(TetherError, match="tether models list"):
            store.get_model("nope")
        store.link_eval_run(child, "run-1", "candidate")
        assert store.get_model(child).eval_runs == ("run-1",)

        assert store.served_id() is None
        store.record_promotion(parent, None, forced=True, gate=None, user="ann")
        store.record_promotion(child, parent, forced=False, gate={"passed": True}, user="ann")
        assert store.served_id() == child and [m.id for m in store.list_models() if m.promoted] == [child]
        assert store.rollback_latest() == child and store.served_id() == parent
        assert store.rollback_latest() == parent and store.served_id() is None
        with pytest.raises(TetherError, match="nothing to roll back"):
            store.rollback_latest()


def test_a_running_job_whose_process_is_gone_is_listed_interrupted(db_path, tmp_path):
    with TrainingStore.open(db_path) as store:
        job = store.start_job("kto", {}, str(tmp_path), str(tmp_path / "log"), 3)
        store.db.execute("UPDATE training_jobs SET pid = ? WHERE id = ?", (2**22 + 12345, job))  # no such process
        assert [r["status"] for r in store.list_jobs()] == ["interrupted"]
        assert store.list_jobs()[0]["error"].startswith("the training process ended")


# -- where SQL may live ---------------------------------------------------------------------------


def _shipped() -> list[Path]:
    return [ROOT / "streamlit_app.py"] + [p for pkg in SHIPPED for p in sorted((ROOT / pkg).rglob("*.py"))]


def sql_outside_stores(source: str, rel: str) -> list[str]:
    """String literals holding SQL, and ``tether.db.connect`` imports, in a file that may hold neither."""
    out = []
    tree = ast.parse(source, filename=rel)
    for node in ast.walk(tree):
        if (
            rel not in SQL_FILES
            and isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and SQL.search(node.value)
        ):
            out.append(f"{rel}:{node.lineno}: SQL outside the store modules: {node.value.strip()[:60]!r}")
        if (
            rel not in CONNECT_FILES
            and isinstance(node, ast.ImportFrom)
            and node.module == "tether.db"
            and any(a.name == "connect" for a in node.names)
        ):
            out.append(f"{rel}:{node.lineno}: opens the database itself (use the package's store)")
    return out


def test_sql_lives_only_in_the_store_modules():
    problems = []
    for path in _shipped():
        rel = path.relative_to(ROOT).as_posix()
        problems += sql_outside_stores(path.read_text(encoding="utf-8"), rel)
    assert not problems, "SQL belongs to the owning package's store (tests/test_stores.py lists them):\n" + "\n".join(
        problems
    )


@pytest.mark.parametrize(
    "source",
    [
        'rows = db.execute("SELECT id FROM turns")\n',
        'q = f"DELETE FROM chunks WHERE id IN ({marks})"\n',
        "def f():\n    from tether.db import connect\n",
    ],
)
def test_the_sql_check_catches_queries_and_connections(source):
    assert sql_outside_stores(source, "training/data.py")


def test_the_sql_check_accepts_prose_and_the_stores():
    assert sql_outside_stores('"""Select the rows; update the index."""\n', "training/data.py") == []
    assert sql_outside_stores('db.execute("SELECT 1")\nfrom tether.db import connect\n', "retrieval/ledger.py") == []
