"""The ingest ledger: which documents and chunks a collection holds, in ``tether.db``.

The ledger is the source of truth; the vector store and the BM25 index follow it. A document
becomes visible in one SQLite transaction (``commit_document``); vector-store writes that happen
outside a transaction are announced first in ``store_journal``, so ``recover`` can undo whatever a
killed process left behind.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from typing import Iterable, Sequence

from retrieval.chunking import Chunk
from tether.db import transaction
from tether.errors import ConfigError


@dataclass(frozen=True)
class DocumentRow:
    id: int
    collection: str
    source: str
    path: str
    content_hash: str
    title: str
    kind: str
    doc_date: str | None
    status: str | None
    authority: str | None
    n_chunks: int
    size: int
    mtime: float
    ingested_at: str


def ensure_collection(db: sqlite3.Connection, name: str, embed_model: str) -> None:
    row = db.execute("SELECT embed_model FROM collections WHERE name = ?", (name,)).fetchone()
    if row is None:
        db.execute(
            "INSERT OR IGNORE INTO collections (name, generation, embed_model, created_at) VALUES (?, 0, ?, ?)",
            (name, embed_model, _now()),
        )
    elif row["embed_model"] != embed_model:
        raise ConfigError(
            f"collection '{name}' was embedded with {row['embed_model']!r} but the configuration asks for "
            f"{embed_model!r} (retrieval.embed_model / retrieval.embed_int8): use another --collection, or set them back"
        )


def generation(db: sqlite3.Connection, collection: str) -> int:
    row = db.execute("SELECT generation FROM collections WHERE name = ?", (collection,)).fetchone()
    return int(row["generation"]) if row else 0


def committed_hash(db: sqlite3.Connection, collection: str, source: str) -> str | None:
    row = db.execute("SELECT content_hash FROM documents WHERE collection = ? AND source = ?", (collection, source)).fetchone()
    return row["content_hash"] if row else None


def journal_add(db: sqlite3.Connection, collection: str, chunk_ids: Iterable[str]) -> None:
    with transaction(db):
        db.executemany("INSERT OR IGNORE INTO store_journal VALUES (?, ?)", [(cid, collection) for cid in chunk_ids])


def journal_clear(db: sqlite3.Connection, collection: str, chunk_ids: Iterable[str]) -> None:
    with transaction(db):
        db.executemany("DELETE FROM store_journal WHERE collection = ? AND chunk_id = ?", [(collection, cid) for cid in chunk_ids])


def commit_document(
    db: sqlite3.Connection,
    *,
    collection: str,
    source: str,
    path: str,
    content_hash: str,
    size: int,
    mtime: float,
    kind: str,
    title: str,
    doc_date: str | None,
    status: str | None,
    authority: str | None,
    text: str,
    chunks: Sequence[Chunk],
    chunk_ids: Sequence[str],
    pages: Sequence[int | None],
) -> list[str]:
    """Swap a document's ledger rows in one transaction; return the chunk ids it replaced.

    The replaced ids go into the journal (they are still in the vector store until the caller
    deletes them); the new ids leave it (they are now committed).
    """
    with transaction(db):
        old = db.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.collection = ? AND d.source = ?",
            (collection, source),
        ).fetchall()
        old_ids = [r["id"] for r in old if r["id"] not in set(chunk_ids)]
        db.execute("DELETE FROM documents WHERE collection = ? AND source = ?", (collection, source))
        cur = db.execute(
            "INSERT INTO documents (collection, source, path, content_hash, size, mtime, kind, title, doc_date, status,"
            " authority, text, n_chunks, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (collection, source, path, content_hash, size, mtime, kind, title, doc_date, status, authority, text, len(chunks), _now()),
        )
        doc_id = cur.lastrowid
        db.executemany(
            "INSERT INTO chunks (id, collection, document_id, seq, text, start_char, end_char, page) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(cid, collection, doc_id, c.seq, c.text, c.start, c.end, page) for cid, c, page in zip(chunk_ids, chunks, pages)],
        )
        db.executemany("DELETE FROM store_journal WHERE collection = ? AND chunk_id = ?", [(collection, cid) for cid in chunk_ids])
        db.executemany("INSERT OR IGNORE INTO store_journal VALUES (?, ?)", [(cid, collection) for cid in old_ids])
        db.execute("UPDATE collections SET generation = generation + 1 WHERE name = ?", (collection,))
    return old_ids


def remove_document(db: sqlite3.Connection, collection: str, source: str) -> list[str]:
    """Drop a document from the ledger; return its chunk ids (journaled until the caller deletes them)."""
    with transaction(db):
        ids = [
            r["id"]
            for r in db.execute(
                "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.collection = ? AND d.source = ?",
                (collection, source),
            )
        ]
        db.execute("DELETE FROM documents WHERE collection = ? AND source = ?", (collection, source))
        db.executemany("INSERT OR IGNORE INTO store_journal VALUES (?, ?)", [(cid, collection) for cid in ids])
        db.execute("UPDATE collections SET generation = generation + 1 WHERE name = ?", (collection,))
    return ids


def uncommitted_ids(db: sqlite3.Connection, collection: str) -> tuple[list[str], list[str]]:
    """(ids in the journal that the ledger does not hold: delete them from the store,
    ids in the journal that the ledger holds: just clear them)."""
    rows = db.execute(
        "SELECT j.chunk_id, c.id IS NOT NULL AS committed FROM store_journal j "
        "LEFT JOIN chunks c ON c.id = j.chunk_id WHERE j.collection = ?",
        (collection,),
    ).fetchall()
    return [r["chunk_id"] for r in rows if not r["committed"]], [r["chunk_id"] for r in rows if r["committed"]]


def set_metadata(db: sqlite3.Connection, collection: str, source: str, *, doc_date: str | None, status: str | None,
                 authority: str | None) -> bool:
    """Change a committed document's date, status and authority (search reads them from here);
    False when there is no such document. The caller owns the transaction."""
    cur = db.execute(
        "UPDATE documents SET doc_date = ?, status = ?, authority = ? WHERE collection = ? AND source = ?",
        (doc_date or None, status or None, authority or None, collection, source),
    )
    return cur.rowcount > 0


def documents(db: sqlite3.Connection, collection: str) -> list[DocumentRow]:
    rows = db.execute(
        "SELECT id, collection, source, path, content_hash, title, kind, doc_date, status, authority, n_chunks, size,"
        " mtime, ingested_at FROM documents WHERE collection = ? ORDER BY source",
        (collection,),
    ).fetchall()
    return [DocumentRow(**dict(r)) for r in rows]


def chunk_rows(db: sqlite3.Connection, collection: str) -> list[dict]:
    """Every committed chunk of a collection with its document's source and title
    (``id``, ``text``, ``source``, ``title``), in the order they were written."""
    rows = db.execute(
        "SELECT c.id, c.text, d.source, d.title FROM chunks c JOIN documents d ON d.id = c.document_id"
        " WHERE c.collection = ? ORDER BY c.rowid",
        (collection,),
    ).fetchall()
    return [dict(r) for r in rows]


def chunk_count(db: sqlite3.Connection, collection: str) -> int:
    return int(db.execute("SELECT COUNT(*) FROM chunks WHERE collection = ?", (collection,)).fetchone()[0])


def all_chunks(db: sqlite3.Connection, collection: str) -> tuple[list[str], list[str]]:
    rows = db.execute("SELECT id, text FROM chunks WHERE collection = ? ORDER BY rowid", (collection,)).fetchall()
    return [r["id"] for r in rows], [r["text"] for r in rows]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
