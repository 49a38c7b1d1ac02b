import sqlite3
import threading

from tether.db import MIGRATIONS, connect, migrate


def _columns(db, table):
    return {r[1]: r[2] for r in db.execute(f"PRAGMA table_info({table})")}


def test_migrate_blank_database_creates_the_schema():
    db = sqlite3.connect(":memory:", isolation_level=None)
    applied = migrate(db)
    assert applied == sorted(name for name, _ in MIGRATIONS)  # by number, not by definition order
    assert applied[:2] == ["m001_ingestion", "m002_conversation_log"]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"documents", "chunks", "store_journal", "collections", "_migrations"} <= tables
    assert _columns(db, "chunks") == {
        "id": "TEXT",
        "collection": "TEXT",
        "document_id": "INTEGER",
        "seq": "INTEGER",
        "text": "TEXT",
        "start_char": "INTEGER",
        "end_char": "INTEGER",
        "page": "INTEGER",
        "heading": "TEXT",  # m007
        "claims_embedded": "TEXT",  # m012
    }
    doc_cols = _columns(db, "documents")
    for col in ("source", "path", "content_hash", "title", "doc_date", "status", "authority", "text", "n_chunks"):
        assert col in doc_cols
    assert _columns(db, "turns")["consistency_json"] == "TEXT"  # m005, added after m002 created the table
    fks = db.execute("PRAGMA foreign_key_list(chunks)").fetchall()
    assert [(fk[2], fk[3], fk[4], fk[6]) for fk in fks] == [("documents", "document_id", "id", "CASCADE")]
    fks = db.execute("PRAGMA foreign_key_list(claim_vectors)").fetchall()  # m012: removed with their chunk
    assert [(fk[2], fk[3], fk[4], fk[6]) for fk in fks] == [("chunks", "chunk_id", "id", "CASCADE")]


def test_migrate_is_idempotent(tmp_path):
    path = tmp_path / "t.db"
    connect(path).close()
    db = connect(path)
    assert migrate(db) == []
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_concurrent_first_opens_apply_each_migration_once(tmp_path):
    path = tmp_path / "t.db"
    errors = []

    def open_it():
        try:
            connect(path).close()
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    db = connect(path)
    assert db.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == len(MIGRATIONS)
