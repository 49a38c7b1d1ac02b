"""The ingest ledger: which documents and chunks a collection holds, in ``tether.db``.

The ledger is the source of truth; the vector store and the BM25 index follow it. A document
becomes visible in one SQLite transaction (``commit_document``); vector-store writes that happen
outside a transaction are announced first in ``store_journal``, so ``recover`` can undo whatever a
killed process left behind.

Every SQL statement over the retrieval tables (documents, chunks, collections, store_journal,
claim_vectors) is in
this module. The functions take an open connection (ingestion holds one for a whole run); everyone
else opens the ``Ledger`` store per use: ``with Ledger.open(cfg.db_path) as led: led.documents(name)``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from retrieval.chunking import Chunk, index_text
from tether.clock import now_iso
from tether.db import PerThreadStore, connect, transaction
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


@dataclass(frozen=True)
class ChunkRow:
    """A committed chunk with its document's source and metadata (what search and prompts show)."""

    id: str
    text: str
    start_char: int
    end_char: int
    page: int | None
    document_id: int
    source: str
    title: str
    doc_date: str | None
    status: str | None
    authority: str | None
    heading: str | None = None  # the heading path (m007), shown to the embedder, BM25 and the reranker

    @property
    def index_text(self) -> str:
        """What the embedder, BM25 and the reranker see: the heading path, if any, before the text."""
        return index_text(self.heading, self.text)


_CHUNK_ROW = (
    "SELECT c.id, c.text, c.start_char, c.end_char, c.page, c.document_id, d.source, d.title, d.doc_date, d.status,"
    " d.authority, c.heading FROM chunks c JOIN documents d ON d.id = c.document_id"
)
# recorded in dataset manifests (the statements that selected their rows)
COLLECTION_CHUNKS_QUERY = _CHUNK_ROW + " WHERE c.collection = ? ORDER BY c.id"
CHUNKS_BY_ID_QUERY = _CHUNK_ROW + " WHERE c.id IN ({marks})"


def ensure_collection(db: sqlite3.Connection, name: str, embed_model: str) -> None:
    row = db.execute("SELECT embed_model FROM collections WHERE name = ?", (name,)).fetchone()
    if row is None:
        db.execute(
            "INSERT OR IGNORE INTO collections (name, generation, embed_model, created_at) VALUES (?, 0, ?, ?)",
            (name, embed_model, now_iso("seconds")),
        )
    elif row["embed_model"] != embed_model:
        raise ConfigError(
            f"collection '{name}' was embedded with {row['embed_model']!r} but the configuration asks for "
            f"{embed_model!r} (retrieval.embed_model / retrieval.embed_int8 / retrieval.heading_prefix): use another --collection, or set them back"
        )


def generation(db: sqlite3.Connection, collection: str) -> int:
    row = db.execute("SELECT generation FROM collections WHERE name = ?", (collection,)).fetchone()
    return int(row["generation"]) if row else 0


def committed_hash(db: sqlite3.Connection, collection: str, source: str) -> str | None:
    row = db.execute(
        "SELECT content_hash FROM documents WHERE collection = ? AND source = ?", (collection, source)
    ).fetchone()
    return row["content_hash"] if row else None


def journal_add(db: sqlite3.Connection, collection: str, chunk_ids: Iterable[str]) -> None:
    with transaction(db):
        db.executemany("INSERT OR IGNORE INTO store_journal VALUES (?, ?)", [(cid, collection) for cid in chunk_ids])


def journal_clear(db: sqlite3.Connection, collection: str, chunk_ids: Iterable[str]) -> None:
    with transaction(db):
        db.executemany(
            "DELETE FROM store_journal WHERE collection = ? AND chunk_id = ?", [(collection, cid) for cid in chunk_ids]
        )


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
    claim_vectors: Sequence[tuple[str, str, bytes]] = (),
    claims_embedded: str | None = None,
) -> list[str]:
    """Swap a document's ledger rows in one transaction; return the chunk ids it replaced.

    The replaced ids go into the journal (they are still in the vector store until the caller
    deletes them); the new ids leave it (they are now committed). ``claim_vectors`` are rows
    (chunk id, claim text hash, float32 bytes) of the claims' vectors, made by the embedder named
    ``claims_embedded`` (None: not computed; ``retrieval.conflicts.claim_vector_rows``).
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
            (
                collection,
                source,
                path,
                content_hash,
                size,
                mtime,
                kind,
                title,
                doc_date,
                status,
                authority,
                text,
                len(chunks),
                now_iso("seconds"),
            ),
        )
        doc_id = cur.lastrowid
        db.executemany(
            "INSERT INTO chunks (id, collection, document_id, seq, text, start_char, end_char, page, heading,"
            " claims_embedded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (cid, collection, doc_id, c.seq, c.text, c.start, c.end, page, c.heading or None, claims_embedded)
                for cid, c, page in zip(chunk_ids, chunks, pages)
            ],
        )
        if claims_embedded is not None:
            _insert_claim_vectors(db, claim_vectors, claims_embedded)
        db.executemany(
            "DELETE FROM store_journal WHERE collection = ? AND chunk_id = ?", [(collection, cid) for cid in chunk_ids]
        )
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


def set_metadata(
    db: sqlite3.Connection,
    collection: str,
    source: str,
    *,
    doc_date: str | None,
    status: str | None,
    authority: str | None,
) -> bool:
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
    """(ids, index texts) of every committed chunk in written order; the index text is what BM25
    indexes: the heading path, if any, before the text (``retrieval.chunking.index_text``)."""
    rows = db.execute(
        "SELECT id, text, heading FROM chunks WHERE collection = ? ORDER BY rowid", (collection,)
    ).fetchall()
    return [r["id"] for r in rows], [index_text(r["heading"], r["text"]) for r in rows]


def chunks_by_id(db: sqlite3.Connection, ids: Sequence[str]) -> dict[str, ChunkRow]:
    """The committed chunks among ``ids`` (any collection), by id; ids the ledger lacks are absent."""
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = db.execute(CHUNKS_BY_ID_QUERY.format(marks=marks), list(ids)).fetchall()
    return {r["id"]: ChunkRow(**dict(r)) for r in rows}


def collection_chunks(db: sqlite3.Connection, collection: str) -> list[ChunkRow]:
    """Every committed chunk of a collection with its document's metadata, by chunk id."""
    return [ChunkRow(**dict(r)) for r in db.execute(COLLECTION_CHUNKS_QUERY, (collection,))]


def chunk_ids_of(db: sqlite3.Connection, collection: str, sources: Iterable[str]) -> set[str]:
    """The ids of the committed chunks of a collection whose document is one of ``sources``."""
    wanted = set(sources)
    return {
        r["id"]
        for r in db.execute(
            "SELECT c.id, d.source FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.collection = ?",
            (collection,),
        )
        if r["source"] in wanted
    }


@dataclass(frozen=True)
class StoreEntry:
    """What the vector store holds for a committed chunk: its index text (to embed: the heading
    path, if any, before the text) and its metadata."""

    id: str
    text: str
    source: str
    doc_date: str | None
    content_hash: str
    seq: int


def chunk_ids(db: sqlite3.Connection, collection: str) -> set[str]:
    """The ids of every committed chunk of a collection."""
    return {r[0] for r in db.execute("SELECT id FROM chunks WHERE collection = ?", (collection,))}


def store_entries(db: sqlite3.Connection, collection: str, ids: Sequence[str]) -> list[StoreEntry]:
    """The committed chunks among ``ids`` with what the vector store needs, in ledger order."""
    ids = list(dict.fromkeys(ids))
    found: list[tuple[int, StoreEntry]] = []
    for lo in range(0, len(ids), 500):
        part = ids[lo : lo + 500]
        rows = db.execute(
            "SELECT c.rowid AS r, c.id, c.text, c.heading, d.source, d.doc_date, d.content_hash, c.seq FROM chunks c"
            f" JOIN documents d ON d.id = c.document_id WHERE c.collection = ? AND c.id IN ({','.join('?' * len(part))})",
            [collection, *part],
        )
        found += [
            (
                r["r"],
                StoreEntry(
                    r["id"],
                    index_text(r["heading"], r["text"]),
                    r["source"],
                    r["doc_date"],
                    r["content_hash"],
                    r["seq"],
                ),
            )
            for r in rows
        ]
    return [entry for _, entry in sorted(found, key=lambda x: x[0])]


def journal_count(db: sqlite3.Connection, collection: str) -> int:
    return int(db.execute("SELECT COUNT(*) FROM store_journal WHERE collection = ?", (collection,)).fetchone()[0])


def document_count(db: sqlite3.Connection, collection: str) -> int:
    return int(db.execute("SELECT COUNT(*) FROM documents WHERE collection = ?", (collection,)).fetchone()[0])


def integrity_problems(db: sqlite3.Connection) -> list[str]:
    """What SQLite finds wrong with the whole database file (``PRAGMA integrity_check`` and
    ``foreign_key_check``), plus documents whose chunk count disagrees with their chunks; [] = sound."""
    out = [r[0] for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
    out += [
        f"table {r[0]} row {r[1]} points to a missing row of {r[2]}" for r in db.execute("PRAGMA foreign_key_check")
    ]
    out += [
        f"document {r['source']!r} of collection '{r['collection']}' records {r['n_chunks']} chunks but holds {r['held']}"
        for r in db.execute(
            "SELECT d.collection, d.source, d.n_chunks, (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id) AS held"
            " FROM documents d WHERE d.n_chunks != (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id)"
        )
    ]
    return out


# -- claim vectors (m012) ------------------------------------------------------------------------


def _insert_claim_vectors(db: sqlite3.Connection, rows: Sequence[tuple[str, str, bytes]], embed_model: str) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO claim_vectors (chunk_id, text_hash, embed_model, vector) VALUES (?, ?, ?, ?)",
        [(cid, h, embed_model, blob) for cid, h, blob in rows],
    )


def chunks_without_claim_vectors(
    db: sqlite3.Connection, collection: str, embed_model: str, limit: int | None = None
) -> list[tuple[str, str]]:
    """(id, text) of the collection's chunks whose claim vectors were not made by ``embed_model``."""
    sql = (
        "SELECT id, text FROM chunks WHERE collection = ? AND (claims_embedded IS NULL OR claims_embedded != ?)"
        " ORDER BY id"
    )
    args: tuple = (collection, embed_model)
    if limit is not None:
        sql += " LIMIT ?"
        args += (limit,)
    return [(r["id"], r["text"]) for r in db.execute(sql, args)]


def put_claim_vectors(
    db: sqlite3.Connection, chunk_ids: Sequence[str], rows: Sequence[tuple[str, str, bytes]], embed_model: str
) -> None:
    """Replace the claim vectors of ``chunk_ids`` by ``rows`` and mark those chunks done, in one transaction."""
    with transaction(db):
        db.executemany("DELETE FROM claim_vectors WHERE chunk_id = ?", [(cid,) for cid in chunk_ids])
        _insert_claim_vectors(db, rows, embed_model)
        db.executemany("UPDATE chunks SET claims_embedded = ? WHERE id = ?", [(embed_model, cid) for cid in chunk_ids])


def claim_vectors(db: sqlite3.Connection, embed_model: str, text_hashes: Sequence[str]) -> dict[str, bytes]:
    """Stored vector bytes by claim text hash (any chunk's copy), for the hashes that have one."""
    out: dict[str, bytes] = {}
    hashes = list(dict.fromkeys(text_hashes))
    for lo in range(0, len(hashes), 500):  # under SQLite's bound-parameter limit
        part = hashes[lo : lo + 500]
        marks = ",".join("?" * len(part))
        for r in db.execute(
            f"SELECT text_hash, vector FROM claim_vectors WHERE embed_model = ? AND text_hash IN ({marks})",
            (embed_model, *part),
        ):
            out.setdefault(r["text_hash"], r["vector"])
    return out


def keep_claim_vectors(db: sqlite3.Connection, rows: Sequence[tuple[str, str, bytes]], embed_model: str) -> int:
    """Store claim vectors embedded at detection time, for the rows whose chunk id is a committed chunk
    (a passage from elsewhere has none); existing rows stay. Returns how many were new."""
    with transaction(db):
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO claim_vectors (chunk_id, text_hash, embed_model, vector)"
            " SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM chunks WHERE id = ?)",
            [(cid, h, embed_model, blob, cid) for cid, h, blob in rows],
        )
        return db.total_changes - before


class ClaimVectorStore(PerThreadStore):
    """The stored claim vectors of one embedder, shared by threads (the conflict detector of every
    web-app session reads it): ``lookup(hashes)`` gives unit float32 vectors by claim text hash;
    ``keep(rows)`` stores what the detector had to embed (a persistent cache where ingestion did not)."""

    def __init__(self, path: str | Path, embed_model: str):
        super().__init__(path)
        self.embed_model = embed_model

    def lookup(self, text_hashes: Sequence[str]) -> dict:
        import numpy as np

        return {
            h: np.frombuffer(blob, dtype=np.float32)
            for h, blob in claim_vectors(self.db, self.embed_model, text_hashes).items()
        }

    def keep(self, rows) -> int:
        """Store (chunk id, claim hash, unit vector) rows; those of passages that are no chunk are dropped."""
        import numpy as np

        return keep_claim_vectors(
            self.db, [(cid, h, np.asarray(v, dtype=np.float32).tobytes()) for cid, h, v in rows], self.embed_model
        )


class Ledger:
    """The retrieval package's store: one connection to ``tether.db`` and the ledger's functions as
    methods. Open it per use and close it (``with Ledger.open(path) as led: ...``)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    @classmethod
    def open(cls, path: str | Path) -> Ledger:
        return cls(connect(path))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ensure_collection(self, name: str, embed_model: str) -> None:
        ensure_collection(self.db, name, embed_model)

    def generation(self, collection: str) -> int:
        return generation(self.db, collection)

    def committed_hash(self, collection: str, source: str) -> str | None:
        return committed_hash(self.db, collection, source)

    def journal_add(self, collection: str, chunk_ids: Iterable[str]) -> None:
        journal_add(self.db, collection, chunk_ids)

    def journal_clear(self, collection: str, chunk_ids: Iterable[str]) -> None:
        journal_clear(self.db, collection, chunk_ids)

    def commit_document(self, **fields) -> list[str]:
        return commit_document(self.db, **fields)

    def remove_document(self, collection: str, source: str) -> list[str]:
        return remove_document(self.db, collection, source)

    def uncommitted_ids(self, collection: str) -> tuple[list[str], list[str]]:
        return uncommitted_ids(self.db, collection)

    def set_metadata(
        self, collection: str, source: str, *, doc_date: str | None, status: str | None, authority: str | None
    ) -> bool:
        """``set_metadata`` in its own transaction."""
        with transaction(self.db):
            return set_metadata(self.db, collection, source, doc_date=doc_date, status=status, authority=authority)

    def documents(self, collection: str) -> list[DocumentRow]:
        return documents(self.db, collection)

    def document(self, collection: str, source: str) -> DocumentRow | None:
        """One document of a collection by source, or None."""
        return next((d for d in documents(self.db, collection) if d.source == source), None)

    def chunk_rows(self, collection: str) -> list[dict]:
        return chunk_rows(self.db, collection)

    def chunk_count(self, collection: str) -> int:
        return chunk_count(self.db, collection)

    def all_chunks(self, collection: str) -> tuple[list[str], list[str]]:
        return all_chunks(self.db, collection)

    def chunks_by_id(self, ids: Sequence[str]) -> dict[str, ChunkRow]:
        return chunks_by_id(self.db, ids)

    def collection_chunks(self, collection: str) -> list[ChunkRow]:
        return collection_chunks(self.db, collection)

    def chunk_ids_of(self, collection: str, sources: Iterable[str]) -> set[str]:
        return chunk_ids_of(self.db, collection, sources)

    def chunk_ids(self, collection: str) -> set[str]:
        return chunk_ids(self.db, collection)

    def store_entries(self, collection: str, ids: Sequence[str]) -> list[StoreEntry]:
        return store_entries(self.db, collection, ids)

    def journal_count(self, collection: str) -> int:
        return journal_count(self.db, collection)

    def document_count(self, collection: str) -> int:
        return document_count(self.db, collection)

    def integrity_problems(self) -> list[str]:
        return integrity_problems(self.db)
