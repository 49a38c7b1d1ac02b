"""Tether's one SQLite file (``<data dir>/tether.db``) and its numbered migrations.

Every stage writes here: the ingestion ledger (documents, chunks), and, from later migrations,
conversations, turns, feedback, evaluation runs and the model registry. ``connect`` opens the
file in WAL mode with a busy timeout, so several processes can write, and applies any migration
not yet recorded in ``_migrations``. Migrations only ever get appended.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from tether.errors import TetherError

log = logging.getLogger(__name__)

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


def run_script(db: sqlite3.Connection, sql: str) -> None:
    """Execute several statements inside the caller's transaction (``executescript`` would commit)."""
    statement = ""
    for line in sql.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement[:80]!r}")


@migration
def m001_ingestion(db: sqlite3.Connection) -> None:
    run_script(
        db,
        """
        CREATE TABLE documents (
            id INTEGER PRIMARY KEY,
            collection TEXT NOT NULL,
            source TEXT NOT NULL,
            path TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime REAL NOT NULL,
            kind TEXT NOT NULL,
            title TEXT NOT NULL,
            doc_date TEXT,
            status TEXT,
            authority TEXT,
            text TEXT NOT NULL,
            n_chunks INTEGER NOT NULL,
            ingested_at TEXT NOT NULL,
            UNIQUE (collection, source)
        );
        CREATE INDEX documents_path ON documents (collection, path);
        CREATE TABLE chunks (
            id TEXT PRIMARY KEY,
            collection TEXT NOT NULL,
            document_id INTEGER NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            text TEXT NOT NULL,
            start_char INTEGER NOT NULL,
            end_char INTEGER NOT NULL,
            page INTEGER
        );
        CREATE INDEX chunks_document ON chunks (document_id, seq);
        CREATE INDEX chunks_collection ON chunks (collection);
        -- ids that may sit in the vector store without being committed here (written before a
        -- store add, cleared when the ledger commits them or after a store delete).
        CREATE TABLE store_journal (
            chunk_id TEXT NOT NULL,
            collection TEXT NOT NULL,
            PRIMARY KEY (collection, chunk_id)
        );
        -- bumped on every committed change to a collection; the BM25 index records the
        -- generation it was built from and is rebuilt when it lags.
        CREATE TABLE collections (
            name TEXT PRIMARY KEY,
            generation INTEGER NOT NULL DEFAULT 0,
            embed_model TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        """,
    )


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply pending migrations in order; return the names applied."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {row[0] for row in db.execute("SELECT name FROM _migrations")}
    applied = []
    for name, fn in sorted(MIGRATIONS):  # by number, whatever order they were defined in
        if name in done:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            # another process may have applied it while we waited for the lock
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                db.execute("COMMIT")
                continue
            fn(db)
            db.execute("INSERT INTO _migrations VALUES (?, datetime('now'))", (name,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info("applied migration %s", name)
        applied.append(name)
    return applied


class DatabaseUnavailable(TetherError, sqlite3.DatabaseError):
    """``tether.db`` cannot be created, opened or migrated: the message names the file and the fix.
    Also an ``sqlite3.DatabaseError``, so callers that inspect a damaged file (``tether doctor``)
    still catch it as one."""


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the database. Autocommit mode: use ``transaction``.

    A data dir that cannot be created, or a file that is not a usable SQLite database (corrupt,
    another format, read-only, locked), raises one ``DatabaseUnavailable`` naming the file and the fix.
    """
    memory = str(path) == ":memory:"
    if not memory:
        folder = Path(path).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailable(_folder_problem(folder, exc)) from exc
    db = None
    try:
        db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout = 30000")
        if not memory:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")
        migrate(db)
    except sqlite3.DatabaseError as exc:
        if db is not None:
            db.close()
        raise DatabaseUnavailable(database_problem(path, exc)) from exc
    return db


class PerThreadStore:
    """The base of a package's store over ``tether.db`` that threads share (the web app's sessions):
    one connection per thread, opened on first use; the database is migrated once, when the store
    is made. ``close`` closes every connection it opened (a thread that uses it again reopens one)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        connect(self.path).close()  # migrate once up front

    @classmethod
    def open(cls, path: str | Path, **options):
        return cls(path, **options)

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn


def _folder_problem(folder: Path, exc: OSError) -> str:
    if folder.exists() and not folder.is_dir():
        return f"the data dir {folder} is a file, not a folder: pass --data-dir FOLDER (or set $TETHER_HOME)"
    return (
        f"cannot create the data dir {folder} ({exc.strerror or exc}): pass --data-dir a folder you can write "
        "(or set $TETHER_HOME)"
    )


def database_problem(path: str | Path, exc: sqlite3.DatabaseError) -> str:
    """One line saying what is wrong with the database file ``path`` and what to do about it."""
    why = str(exc)
    low = why.lower()
    folder = Path(path).parent
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return (
            f"{path} is not a usable Tether database ({why}): restore it from a backup, salvage it with "
            f"`sqlite3 {path} .recover | sqlite3 recovered.db`, or move it aside to start a new one"
        )
    if "locked" in low or "busy" in low:
        return f"{path} is locked by another process ({why}): wait for it to finish, then try again"
    if "readonly" in low or "read-only" in low or "unable to open" in low or "i/o error" in low:
        return (
            f"cannot open {path} ({why}): the data dir {folder} and the files in it must be readable and "
            "writable by you; fix their permissions, or pass --data-dir another folder"
        )
    return f"cannot use {path} ({why}): run `tether doctor` to check it, or pass --data-dir another folder"


class transaction:
    """``with transaction(db): ...`` runs the block in BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


@migration
def m002_conversation_log(db: sqlite3.Connection) -> None:
    run_script(
        db,
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            user TEXT,
            title TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE turns (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            collection TEXT NOT NULL,
            question TEXT NOT NULL,
            query TEXT NOT NULL,
            answer TEXT NOT NULL,
            refused INTEGER NOT NULL,
            generator TEXT NOT NULL,
            model TEXT NOT NULL,
            adapter TEXT,
            adapter_hash TEXT,
            decoding TEXT NOT NULL,
            fallback TEXT,
            groundedness REAL,
            policy TEXT,
            latency_json TEXT NOT NULL,
            prompt_json TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX turns_conversation ON turns (conversation_id, seq);
        CREATE TABLE retrievals (
            turn_id TEXT NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
            rank INTEGER NOT NULL,
            passage_id TEXT NOT NULL,
            source TEXT NOT NULL,
            score REAL NOT NULL,
            cited INTEGER NOT NULL,
            PRIMARY KEY (turn_id, rank)
        );
        CREATE TABLE citations (
            turn_id TEXT NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            n INTEGER NOT NULL,
            passage_id TEXT NOT NULL,
            source TEXT NOT NULL,
            sentence TEXT NOT NULL,
            start_char INTEGER,
            end_char INTEGER,
            supported INTEGER NOT NULL,
            score REAL NOT NULL,
            PRIMARY KEY (turn_id, idx)
        );
        CREATE TABLE conflicts (
            turn_id TEXT NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            kind TEXT NOT NULL,
            claims_json TEXT NOT NULL,
            decision TEXT,
            policy TEXT,
            PRIMARY KEY (turn_id, idx)
        );
        CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            turn_id TEXT NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('up', 'down', 'edit', 'source', 'comment')),
            edited_answer TEXT,
            passage_id TEXT,
            comment TEXT,
            user TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX feedback_turn ON feedback (turn_id);
        """,
    )


@migration
def m003_evaluation(db: sqlite3.Connection) -> None:
    """Evaluation runs (``tether eval``): one row per run with its provenance, its flat metrics
    (also one row each in eval_metrics, for charts across runs) and one eval_items row per case."""
    run_script(
        db,
        """
        CREATE TABLE eval_runs (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            suite TEXT NOT NULL,
            suite_hash TEXT NOT NULL,
            label TEXT,
            suites TEXT NOT NULL,
            collection TEXT,
            generator TEXT NOT NULL,
            model TEXT NOT NULL,
            adapter TEXT,
            adapter_hash TEXT,
            decoding TEXT NOT NULL,
            generator_json TEXT NOT NULL,
            config_json TEXT NOT NULL,
            corpus_hash TEXT NOT NULL,
            git_commit TEXT,
            n_items INTEGER NOT NULL,
            metrics_json TEXT NOT NULL,
            details_json TEXT NOT NULL
        );
        CREATE INDEX eval_runs_created ON eval_runs (created_at);
        CREATE INDEX eval_runs_label ON eval_runs (label, created_at);
        CREATE TABLE eval_metrics (
            run_id TEXT NOT NULL REFERENCES eval_runs (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (run_id, name)
        );
        CREATE INDEX eval_metrics_name ON eval_metrics (name);
        CREATE TABLE eval_items (
            run_id TEXT NOT NULL REFERENCES eval_runs (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            case_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('qa', 'conflict', 'counterfactual')),
            question TEXT,
            prediction TEXT,
            refused INTEGER,
            correct INTEGER,
            gold_json TEXT NOT NULL,
            retrieved_json TEXT,
            citations_json TEXT,
            groundedness REAL,
            latency_json TEXT,
            metrics_json TEXT NOT NULL,
            error TEXT,
            PRIMARY KEY (run_id, idx)
        );
        CREATE INDEX eval_items_case ON eval_items (case_id);
        """,
    )


@migration
def m004_training(db: sqlite3.Connection) -> None:
    """The training loop (``training/``): dataset manifests, background training jobs (status,
    progress and log path, so the app can show a job across page reloads), the model registry with
    its eval-run links, and the promotion history that ``tether models rollback`` walks back."""
    run_script(
        db,
        """
        CREATE TABLE datasets (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('sft', 'dpo', 'kto')),
            path TEXT NOT NULL,
            hash TEXT NOT NULL,
            n_train INTEGER NOT NULL,
            n_eval INTEGER NOT NULL,
            manifest_json TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE training_jobs (
            id TEXT PRIMARY KEY,
            method TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'interrupted')),
            config_json TEXT NOT NULL,
            output_dir TEXT NOT NULL,
            log_path TEXT NOT NULL,
            step INTEGER NOT NULL DEFAULT 0,
            total_steps INTEGER NOT NULL DEFAULT 0,
            loss REAL,
            pid INTEGER,
            model_id TEXT,
            error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            finished_at TEXT
        );
        CREATE INDEX training_jobs_status ON training_jobs (status, created_at);
        CREATE TABLE models (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('base', 'adapter', 'merged', 'bnb4', 'onnx', 'onnx-int8')),
            path TEXT NOT NULL,
            base TEXT NOT NULL,
            adapter TEXT,
            parent_id TEXT REFERENCES models (id),
            method TEXT,
            dataset_id TEXT REFERENCES datasets (id),
            job_id TEXT REFERENCES training_jobs (id),
            config_json TEXT NOT NULL,
            manifest_json TEXT,
            notes TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX models_parent ON models (parent_id);
        CREATE TABLE model_eval_runs (
            model_id TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
            run_id TEXT NOT NULL,
            role TEXT NOT NULL,
            PRIMARY KEY (model_id, run_id)
        );
        -- one row per promotion; the newest row not rolled back is the served model
        CREATE TABLE promotions (
            id INTEGER PRIMARY KEY,
            model_id TEXT NOT NULL REFERENCES models (id),
            previous_id TEXT REFERENCES models (id),
            forced INTEGER NOT NULL,
            gate_json TEXT,
            user TEXT,
            created_at TEXT NOT NULL,
            rolled_back_at TEXT
        );
        """,
    )


@migration
def m005_turn_consistency(db: sqlite3.Connection) -> None:
    """The intra-memory consistency check of a turn (assistant/consistency.py), as JSON."""
    run_script(db, "ALTER TABLE turns ADD COLUMN consistency_json TEXT;")


@migration
def m006_admin_lockout(db: sqlite3.Connection) -> None:
    """Failed admin sign-ins per admin account and the lockout they earned (training/admin.py).
    Times are Unix seconds."""
    run_script(
        db,
        """
        CREATE TABLE admin_lockouts (
            user TEXT PRIMARY KEY,
            failures INTEGER NOT NULL,
            last_failure_at REAL NOT NULL,
            locked_until REAL NOT NULL
        );
        """,
    )


@migration
def m008_turn_guard(db: sqlite3.Connection) -> None:
    """What a turn needs to be restored whole, and the guard's record (assistant/engine.py ``guard``):
    ``rejected_json`` the LLM reply that was not shown and why (a negative for training),
    ``uncited_json`` the answer's sentences that cite nothing."""
    run_script(
        db,
        """
        ALTER TABLE turns ADD COLUMN rejected_json TEXT;
        ALTER TABLE turns ADD COLUMN uncited_json TEXT;
        """,
    )


@migration
def m007_chunk_headings(db: sqlite3.Connection) -> None:
    """The heading path of a chunk (retrieval.heading_prefix), put before its text for the embedder
    and BM25; NULL = none."""
    run_script(db, "ALTER TABLE chunks ADD COLUMN heading TEXT;")


@migration
def m009_accounts(db: sqlite3.Connection) -> None:
    """The web app's local accounts (``assistant.accounts.AccountStore``): a user name (stored
    lower-cased), its scrypt hash (``tether.passwords``), its role, and a session epoch that every
    sign-in token carries (bumped on sign-out and password change, which revokes older tokens).
    Every turn now records its user too (``turns.user``; NULL: the local user of an install
    without accounts)."""
    run_script(
        db,
        """
        CREATE TABLE accounts (
            username TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
            session_epoch INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            last_sign_in_at TEXT
        );
        ALTER TABLE turns ADD COLUMN user TEXT;
        CREATE INDEX conversations_user ON conversations (user, created_at);
        """,
    )


@migration
def m010_job_results(db: sqlite3.Connection) -> None:
    """What a background job produced (``training_jobs.result_json``): the web app's evaluation
    and promotion jobs (methods ``eval`` and ``promote``) store their run ids or the gate's rows."""
    run_script(db, "ALTER TABLE training_jobs ADD COLUMN result_json TEXT;")


@migration
def m011_cross_encoders(db: sqlite3.Connection) -> None:
    """CrossEncoders Tether trains itself (rows through ``training.registry.TrainingStore``):
    contradiction classifiers (kind ``detector``, ``tether train detector``, for any collection:
    ``collection`` NULL) and rerankers (kind ``reranker``, ``tether train reranker``, trained on and
    served for one collection). ``models.kind`` is for generators, hence a table of their own: the
    folder, the base, the run config, the data manifest, the gate's figures and when it was
    promoted or retired. Served: the newest promoted row of a kind (and collection) not retired."""
    run_script(
        db,
        """
        CREATE TABLE cross_encoders (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('detector', 'reranker')),
            collection TEXT,
            path TEXT NOT NULL,
            base TEXT NOT NULL,
            job_id TEXT REFERENCES training_jobs (id),
            config_json TEXT NOT NULL,
            manifest_json TEXT,
            gate_json TEXT,
            created_at TEXT NOT NULL,
            promoted_at TEXT,
            retired_at TEXT
        );
        CREATE INDEX cross_encoders_served ON cross_encoders (kind, collection, promoted_at);
        """,
    )


@migration
def m012_claim_vectors(db: sqlite3.Connection) -> None:
    """MiniLM vectors of the claims a conflict rule can flag, computed when a chunk is ingested
    (``conflicts.vectors_at_ingest``), so detection in a fresh process needs no embedding pass.
    Keyed by chunk (removed with it) and the claim text's hash; ``chunks.claims_embedded`` names the
    embedder that filled a chunk's rows (NULL: not done, e.g. ingested before this migration)."""
    run_script(
        db,
        """
        CREATE TABLE claim_vectors (
            chunk_id TEXT NOT NULL REFERENCES chunks (id) ON DELETE CASCADE,
            text_hash TEXT NOT NULL,
            embed_model TEXT NOT NULL,
            vector BLOB NOT NULL,
            PRIMARY KEY (chunk_id, text_hash)
        );
        CREATE INDEX claim_vectors_hash ON claim_vectors (text_hash, embed_model);
        ALTER TABLE chunks ADD COLUMN claims_embedded TEXT;
        """,
    )
