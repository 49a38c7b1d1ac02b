"""``tether ingest``: read a folder of documents into the ledger, Chroma and BM25, incrementally.

For each file: reject it with one clear reason, or parse, chunk and embed it, then commit it whole
(see ``retrieval.ledger``). A file whose content hash (file bytes, its sidecar and the chunking
settings) is unchanged is not touched; a changed file's chunks are replaced; ``prune`` removes the
documents of files that are gone. A killed run leaves every file either fully indexed or absent,
and the next run cleans up and finishes the job.

One ingest at a time per data dir: ``ingest_lock`` (an ``fcntl.flock`` on ``<data dir>/ingest.lock``,
released by the kernel when its process dies, so it never goes stale) is held for the whole run, by
the CLI and the web app alike; a second ingest waits for it (saying so on the log) for up to
``retrieval.ingest_lock_timeout`` seconds, then refuses with ``IngestBusy``. Crash recovery runs
only under the lock, so it never deletes the vectors of an ingest still in flight. After the files,
every run reconciles the vector store with the ledger (chunks whose vectors are missing are
re-embedded from the ledger's texts, vectors the ledger does not know are removed), and ``doctor``
checks the database, the journal, the vector store and the BM25 index, and repairs them.

With ``conflicts.vectors_at_ingest`` (off by default: it nearly doubles ingest time) each chunk's
claims that a conflict rule can flag are embedded too, and their vectors committed with the chunk
(``claim_vectors``), so even the first conflict detection on a passage reads them instead of
embedding; chunks that lack them (ingested before, or by another embedder) are filled at the end of
every run (``backfill_claim_vectors``). Off, the detector keeps what it embeds in the same table.

Discovery never follows a symlink out of the folder, into a loop, or into a folder (a folder link
inside the ingested folder would give its files twice, a link to an enclosing folder a cycle):
each such link is one ``skipped`` line with its reason. No file gives more than
``retrieval.max_chunks_per_file`` chunks: a file over the cap is skipped whole, with the reason.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from retrieval import ledger
from retrieval.chunking import Chunk, TooManyChunks, chunk_text, index_text, make_splitter, with_headings
from retrieval.readers import ParsedDocument, is_sidecar, read_document, sidecar_for
from tether.clock import now_iso
from tether.config import TetherConfig
from tether.db import connect
from tether.errors import FileRejected, TetherError

log = logging.getLogger(__name__)

EMBED_GROUP_CHUNKS = 512  # chunks embedded together (length-sorted) before their files are committed
LOCK_NAME = "ingest.lock"


class IngestBusy(TetherError):
    """Another ingest (or ``tether doctor --repair``) holds this data dir's ingest lock."""


@dataclass
class FileOutcome:
    source: str
    status: str  # ingested | unchanged | skipped | failed
    reason: str | None = None
    chunks: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class IngestSummary:
    collection: str
    files: list[FileOutcome] = field(default_factory=list)
    chunks_added: int = 0
    chunks_removed: int = 0
    documents_pruned: list[str] = field(default_factory=list)
    chunks_total: int = 0
    vectors_restored: int = 0  # committed chunks whose vectors were missing, re-embedded
    vectors_removed: int = 0  # vectors the ledger does not hold (orphans, interrupted runs), deleted
    claim_chunks_backfilled: int = 0  # committed chunks whose claim vectors were missing, stored
    seconds: float = 0.0

    def _of(self, status: str) -> list[FileOutcome]:
        return [f for f in self.files if f.status == status]

    @property
    def ingested(self) -> list[FileOutcome]:
        return self._of("ingested")

    @property
    def unchanged(self) -> list[FileOutcome]:
        return self._of("unchanged")

    @property
    def skipped(self) -> list[FileOutcome]:
        return self._of("skipped")

    @property
    def failed(self) -> list[FileOutcome]:
        return self._of("failed")

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 when some file failed (the others are still indexed)."""
        return 1 if self.failed else 0

    def to_json(self) -> dict:
        return {
            "collection": self.collection,
            "files_ingested": len(self.ingested),
            "files_unchanged": len(self.unchanged),
            "files_skipped": len(self.skipped),
            "files_failed": len(self.failed),
            "chunks_added": self.chunks_added,
            "chunks_removed": self.chunks_removed,
            "chunks_total": self.chunks_total,
            "documents_pruned": self.documents_pruned,
            "vectors_restored": self.vectors_restored,
            "vectors_removed": self.vectors_removed,
            "claim_chunks_backfilled": self.claim_chunks_backfilled,
            "seconds": round(self.seconds, 3),
            "skipped": [{"source": f.source, "reason": f.reason} for f in self.skipped],
            "failed": [{"source": f.source, "reason": f.reason} for f in self.failed],
            "warnings": [{"source": f.source, "warning": w} for f in self.files for w in f.warnings],
            "files": [asdict(f) for f in self.files],
        }

    def report_lines(self) -> list[str]:
        lines = [f"{f.status}: {f.source}: {f.reason}" for f in self.files if f.status in ("skipped", "failed")]
        lines += [f"warning: {f.source}: {w}" for f in self.files for w in f.warnings]
        lines += [f"pruned: {s}" for s in self.documents_pruned]
        if self.vectors_restored or self.vectors_removed:
            lines.append(
                f"reconciled: the vector store was out of step with the ledger: {self.vectors_restored} missing "
                f"vectors re-embedded, {self.vectors_removed} orphan vectors removed"
            )
        if self.claim_chunks_backfilled:
            lines.append(f"claim vectors stored for {self.claim_chunks_backfilled} chunks that lacked them")
        lines.append(
            f"{self.collection}: {len(self.ingested)} ingested, {len(self.unchanged)} unchanged, "
            f"{len(self.skipped)} skipped, {len(self.failed)} failed; chunks +{self.chunks_added} "
            f"-{self.chunks_removed} = {self.chunks_total} in {self.seconds:.1f}s"
        )
        return lines


@dataclass(frozen=True)
class Candidate:
    path: Path  # as found (may be a symlink)
    source: str  # relative to the ingested folder, POSIX
    root: Path
    rejected: str | None = None  # reason it is skipped (or fails, with ``fails``) before reading
    fails: bool = False


def real_path(path: Path) -> tuple[Path | None, str | None]:
    """(the path with every symlink resolved, None) or (None, why it cannot be resolved): a loop,
    a broken link or an unreadable component. Never raises (``Path.resolve`` raises RuntimeError
    on a loop)."""
    try:
        return Path(os.path.realpath(path, strict=True)), None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "symlink loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and os.path.islink(path):
            try:
                return None, f"broken symlink (to {os.readlink(path)})"
            except OSError:
                return None, "broken symlink"
        return None, f"cannot resolve the path ({exc.strerror or exc})"


def discover(paths: Sequence[Path]) -> Iterator[Candidate]:
    """Files to consider under each path. Symlinks are followed to files inside the folder only;
    a loop, a broken link, a link out of the folder and a link to a folder each give one rejected
    candidate (folder links are never followed: inside the folder they would give its files twice,
    to an enclosing folder they are a cycle). Unreadable folders give a failing candidate."""
    for given in paths:
        given = Path(given)
        if not given.exists() and not given.is_symlink():
            raise TetherError(f"{given} does not exist")
        real, why = real_path(given)
        if real is None:
            yield Candidate(given, given.name, given.parent, why)
            continue
        if real.is_file() or not real.is_dir():
            yield Candidate(path=given, source=given.name, root=real.parent)
            continue
        root = real
        unreadable: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(given, followlinks=False, onerror=unreadable.append):
            while unreadable:
                exc = unreadable.pop()
                p = Path(exc.filename) if exc.filename else Path(dirpath)
                yield Candidate(p, _source(p, given), root, f"cannot read folder ({exc.strerror or exc})", fails=True)
            here = Path(dirpath)
            dirnames.sort()
            for name in list(dirnames):
                p = here / name
                if name.startswith("."):
                    dirnames.remove(name)
                elif p.is_symlink():
                    dirnames.remove(name)  # never descended (followlinks=False); say why
                    yield Candidate(p, _source(p, given), root, _folder_link_reason(p, root))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                p = here / name
                if is_sidecar(p):
                    continue
                source = _source(p, given)
                if p.is_symlink():
                    target, why = real_path(p)
                    if target is None:
                        yield Candidate(p, source, root, why)
                        continue
                    if not _inside(target, root):
                        yield Candidate(p, source, root, f"symlink points outside the folder ({target})")
                        continue
                    if target.is_dir():  # os.walk lists a link to a folder it cannot stat as a file
                        yield Candidate(p, source, root, _folder_link_reason(p, root))
                        continue
                yield Candidate(p, source, root)
        while unreadable:
            exc = unreadable.pop()
            p = Path(exc.filename) if exc.filename else given
            yield Candidate(p, _source(p, given), root, f"cannot read folder ({exc.strerror or exc})", fails=True)


def _source(path: Path, given: Path) -> str:
    try:
        return path.relative_to(given).as_posix() or path.name
    except ValueError:
        return path.name


def _folder_link_reason(link: Path, root: Path) -> str:
    target, why = real_path(link)
    if target is None:
        return why or "unresolvable symlink"
    if not _inside(target, root):
        return f"symlink points outside the folder ({target})"
    if _inside(Path(os.path.realpath(link.parent)), target):
        return f"directory cycle: the symlink leads back to an enclosing folder ({target}); not followed"
    return (
        f"symlink to a folder inside the ingested folder ({target}); not followed (its files would be ingested twice)"
    )


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def content_hash(path: Path, cfg: TetherConfig) -> str:
    h = hashlib.sha256()
    r = cfg.retrieval
    h.update(f"chunk={r.chunk_size}/{r.chunk_overlap};model={r.embed_identity}\0".encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    sidecar = sidecar_for(path)
    if sidecar:
        h.update(b"\0sidecar\0" + sidecar.read_bytes())
    return h.hexdigest()


def chunk_id(collection: str, source: str, digest: str, seq: int) -> str:
    return hashlib.sha1(f"{collection}\0{source}\0{digest}\0{seq}".encode()).hexdigest()[:24]


@dataclass
class _Prepared:
    cand: Candidate
    outcome: FileOutcome
    digest: str
    size: int
    mtime: float
    doc: ParsedDocument
    chunks: list[Chunk]


def _date_int(iso: str | None) -> int:
    return int(iso.replace("-", "")) if iso else 0


def store_metadata(source: str, doc_date: str | None, digest: str, seq: int) -> dict:
    """What the vector store keeps with a chunk's vector (search filters on source and date)."""
    return {"source": source, "date": _date_int(doc_date), "doc_hash": digest[:16], "seq": seq}


def ingest(
    cfg: TetherConfig,
    paths: Sequence[Path | str],
    *,
    collection: str | None = None,
    prune: bool = False,
    progress: bool = False,
    embedder=None,
    store=None,
) -> IngestSummary:
    """Ingest files and folders into a collection; see the module docstring."""
    started = time.perf_counter()
    name = collection or cfg.retrieval.collection
    if collection:
        cfg = cfg.with_retrieval(collection=collection)
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists() and not p.is_symlink():
            raise TetherError(f"{p} does not exist: give a file or a folder to ingest")
    with ingest_lock(cfg, what="ingest"):
        db = connect(cfg.db_path)
        try:
            return _ingest_locked(
                db, cfg, name, paths, prune=prune, progress=progress, embedder=embedder, store=store, started=started
            )
        finally:
            db.close()


def _ingest_locked(
    db,
    cfg: TetherConfig,
    name: str,
    paths: Sequence[Path],
    *,
    prune: bool,
    progress: bool,
    embedder,
    store,
    started: float,
) -> IngestSummary:
    from retrieval.bm25 import BM25Index
    from retrieval.embeddings import embedder_for
    from retrieval.store import ChromaStore

    ledger.ensure_collection(db, name, cfg.retrieval.embed_identity)
    store = store or ChromaStore(cfg, name)
    summary = IngestSummary(collection=name)
    summary.vectors_removed += _recover(db, store, name)
    embedder = embedder or embedder_for(cfg)
    splitter = make_splitter(cfg.retrieval.chunk_size, cfg.retrieval.chunk_overlap, embedder.count_tokens)
    gen_before = ledger.generation(db, name)
    claims_model = cfg.retrieval.embed_identity if cfg.conflicts.vectors_at_ingest else None
    candidates = list(discover(paths))
    bar = _progress(len(candidates), progress)
    group: list[_Prepared] = []

    def flush() -> None:
        if not group:
            return
        texts = [index_text(c.heading, c.text) for p in group for c in p.chunks]
        vectors = embedder.embed_batch(texts)
        at = 0
        for prep in group:
            n = len(prep.chunks)
            claims = _claim_vectors(cfg, name, prep, embedder) if claims_model else None
            _commit(db, store, name, prep, vectors[at : at + n], summary, claims, claims_model)
            at += n
            bar.update(1)
        group.clear()
        _postfix(bar, summary, started)

    for cand in candidates:
        outcome = FileOutcome(source=cand.source, status="skipped")
        summary.files.append(outcome)
        try:
            prep = _prepare(db, cfg, name, cand, splitter, outcome)
        except FileRejected as exc:
            outcome.status = "skipped" if exc.skipped else "failed"
            outcome.reason = exc.reason
            log.warning("%s %s: %s", outcome.status, cand.source, exc.reason)
            bar.update(1)
            continue
        except OSError as exc:
            outcome.status, outcome.reason = "failed", f"cannot read ({exc.strerror or exc})"
            log.warning("failed %s: %s", cand.source, outcome.reason)
            bar.update(1)
            continue
        if prep is None:
            bar.update(1)
            continue
        group.append(prep)
        if sum(len(p.chunks) for p in group) >= EMBED_GROUP_CHUNKS:
            flush()
    flush()
    bar.close()
    if prune:
        _prune(db, store, name, paths, summary)
    restored, removed = reconcile(db, store, name, embedder)
    summary.vectors_restored += restored
    summary.vectors_removed += removed
    if claims_model:
        summary.claim_chunks_backfilled += backfill_claim_vectors(db, cfg, name, embedder)
    summary.chunks_total = ledger.chunk_count(db, name)
    gen_after = ledger.generation(db, name)
    bm25_dir = cfg.bm25_dir / name
    index = BM25Index.load(bm25_dir)
    if gen_after != gen_before or index is None or index.generation != gen_after:
        ids, texts = ledger.all_chunks(db, name)
        BM25Index.build(ids, texts, gen_after).save(bm25_dir)
    summary.seconds = time.perf_counter() - started
    log.info("ingest %s: %s", name, summary.report_lines()[-1])
    return summary


def _prepare(db, cfg: TetherConfig, name: str, cand: Candidate, splitter, outcome: FileOutcome) -> _Prepared | None:
    if cand.rejected:
        raise FileRejected(cand.rejected, skipped=not cand.fails)
    st = cand.path.stat()
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "a device or special file"
        )
        raise FileRejected(f"not a regular file ({kind})", skipped=True)
    if st.st_size > cfg.retrieval.max_file_mb * 1024 * 1024:
        raise FileRejected(
            f"oversize: {st.st_size / 1e6:.1f} MB is over the {cfg.retrieval.max_file_mb:g} MB limit (raise --max-file-mb)",
            skipped=True,
        )
    if st.st_size == 0:
        raise FileRejected("empty file", skipped=True)
    digest = content_hash(cand.path, cfg)
    if ledger.committed_hash(db, name, cand.source) == digest:
        outcome.status = "unchanged"
        return None
    doc = read_document(
        cand.path, max_unzipped_mb=cfg.retrieval.max_unzipped_mb, max_zip_ratio=cfg.retrieval.max_zip_ratio
    )
    cap = cfg.retrieval.max_chunks_per_file
    try:
        chunks = chunk_text(doc.text, doc.body_start, splitter, max_chunks=cap)
    except TooManyChunks as exc:
        raise FileRejected(
            f"too many chunks: more than {exc.limit} (retrieval.max_chunks_per_file); split the file, or raise the limit "
            "in tether.yaml if it is a genuine document",
            skipped=True,
        ) from exc
    except ValueError as exc:  # SentenceSplitter: a single token longer than a chunk
        raise FileRejected(f"cannot be chunked ({exc})") from exc
    if not chunks:
        raise FileRejected("empty: no text to index", skipped=True)
    if cfg.retrieval.heading_prefix:
        chunks = with_headings(chunks, doc.heading_path)
    outcome.warnings.extend(doc.warnings)
    return _Prepared(cand, outcome, digest, st.st_size, st.st_mtime, doc, chunks)


def _chunk_ids(name: str, prep: _Prepared) -> list[str]:
    return [chunk_id(name, prep.cand.source, prep.digest, c.seq) for c in prep.chunks]


def _claim_vectors(cfg: TetherConfig, name: str, prep: _Prepared, embedder) -> list[tuple[str, str, bytes]]:
    from retrieval.conflicts import claim_vector_rows

    chunks = list(zip(_chunk_ids(name, prep), (c.text for c in prep.chunks)))
    return claim_vector_rows(embedder, chunks, cfg.conflicts.min_claim_words)


def backfill_claim_vectors(db, cfg: TetherConfig, name: str, embedder, *, batch: int = 64) -> int:
    """Store the claim vectors of committed chunks that lack them (ingested before
    ``conflicts.vectors_at_ingest``, or by another embedder); return how many chunks were done.
    Each batch commits on its own, so a killed run keeps what it did and the next one goes on."""
    from retrieval.conflicts import claim_vector_rows

    model = cfg.retrieval.embed_identity
    done = 0
    while True:
        todo = ledger.chunks_without_claim_vectors(db, name, model, limit=batch)
        if not todo:
            break
        if not done:
            log.info("collection %s: storing the claim vectors of chunks that lack them", name)
        rows = claim_vector_rows(embedder, todo, cfg.conflicts.min_claim_words)
        ledger.put_claim_vectors(db, [cid for cid, _ in todo], rows, model)
        done += len(todo)
    if done:
        log.info("collection %s: claim vectors stored for %d chunks", name, done)
    return done


def _commit(
    db,
    store,
    name: str,
    prep: _Prepared,
    vectors,
    summary: IngestSummary,
    claims: list[tuple[str, str, bytes]] | None = None,
    claims_model: str | None = None,
) -> None:
    doc, cand = prep.doc, prep.cand
    ids = _chunk_ids(name, prep)
    pages = [doc.page_at(c.start) for c in prep.chunks]
    metadatas = [store_metadata(cand.source, doc.date, prep.digest, c.seq) for c in prep.chunks]
    ledger.journal_add(db, name, ids)
    store.upsert(ids, vectors, metadatas)
    old_ids = ledger.commit_document(
        db,
        collection=name,
        source=cand.source,
        path=str(cand.path.resolve()),
        content_hash=prep.digest,
        size=prep.size,
        mtime=prep.mtime,
        kind=doc.kind,
        title=doc.title,
        doc_date=doc.date,
        status=doc.status,
        authority=doc.authority,
        text=doc.text,
        chunks=prep.chunks,
        chunk_ids=ids,
        pages=pages,
        claim_vectors=claims or (),
        claims_embedded=claims_model if claims is not None else None,
    )
    if old_ids:
        store.delete(old_ids)
        ledger.journal_clear(db, name, old_ids)
    prep.outcome.status = "ingested"
    prep.outcome.chunks = len(ids)
    summary.chunks_added += len(ids)
    summary.chunks_removed += len(old_ids)


def _recover(db, store, name: str) -> int:
    """Undo what a killed run left: store entries never committed, or replaced but not yet deleted;
    return how many were deleted. Only ever called under the ingest lock: the journal of an ingest
    in flight looks exactly like that of a killed one."""
    orphans, committed = ledger.uncommitted_ids(db, name)
    if orphans:
        log.warning("recovering %d vector-store entries left by an interrupted run", len(orphans))
        store.delete(orphans)
    if orphans or committed:
        ledger.journal_clear(db, name, orphans + committed)
    return len(orphans)


def store_diff(db, store, name: str) -> tuple[list[str], list[str]]:
    """(committed chunk ids the vector store lacks, vector ids the ledger does not hold), sorted."""
    held = ledger.chunk_ids(db, name)
    stored = set(store.all_ids())
    return sorted(held - stored), sorted(stored - held)


def reconcile(db, store, name: str, embedder) -> tuple[int, int]:
    """Make the vector store hold exactly the ledger's chunks: re-embed the missing ones from the
    ledger's texts, delete the ones it does not know. Returns (re-embedded, removed). Call it under
    the ingest lock (an ingest in flight has vectors the ledger does not hold yet)."""
    missing, orphans = store_diff(db, store, name)
    if orphans:
        log.warning("collection %s: removing %d vectors the ledger does not hold", name, len(orphans))
        store.delete(orphans)
    if missing:
        log.warning(
            "collection %s: %d committed chunks have no vector; re-embedding them from the ledger", name, len(missing)
        )
        entries = ledger.store_entries(db, name, missing)
        for lo in range(0, len(entries), EMBED_GROUP_CHUNKS):
            part = entries[lo : lo + EMBED_GROUP_CHUNKS]
            vectors = embedder.embed_batch([e.text for e in part])
            store.upsert(
                [e.id for e in part],
                vectors,
                [store_metadata(e.source, e.doc_date, e.content_hash, e.seq) for e in part],
            )
    return len(missing), len(orphans)


@contextmanager
def ingest_lock(cfg: TetherConfig, *, timeout: float | None = None, what: str = "ingest") -> Iterator[None]:
    """Hold the data dir's exclusive ingest lock for the block (see the module docstring).

    Waits up to ``timeout`` seconds (default ``retrieval.ingest_lock_timeout``; 0 = do not wait),
    logging once that it waits and for whom, then raises ``IngestBusy``. Threads of one process
    exclude each other too (each call opens the lock file anew)."""
    import fcntl

    timeout = cfg.retrieval.ingest_lock_timeout if timeout is None else timeout
    path = cfg.data_dir / LOCK_NAME
    try:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise TetherError(
            f"cannot open the ingest lock {path} ({exc.strerror or exc}): the data dir must be writable (--data-dir / $TETHER_HOME)"
        ) from exc
    try:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise TetherError(f"cannot lock {path} ({exc.strerror or exc})") from exc
            holder = _lock_holder(path)
            if time.monotonic() >= deadline:
                raise IngestBusy(
                    f"another ingest is running on {cfg.data_dir} ({holder}) and did not finish within {timeout:g} s: "
                    "let it finish and run this again, or raise retrieval.ingest_lock_timeout"
                )
            if not waited:
                log.warning(
                    "another ingest is running on %s (%s): waiting up to %g s for it to finish",
                    cfg.data_dir,
                    holder,
                    timeout,
                )
                waited = True
            time.sleep(max(0.0, min(0.2, deadline - time.monotonic())))
        if waited:
            log.warning("the other ingest finished; %s goes on", what)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} ({what}) since {now_iso('seconds')}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # closing the file releases the lock


def _lock_holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "holder unknown"
    except OSError:
        return "holder unknown"


def _prune(db, store, name: str, paths: Sequence[Path], summary: IngestSummary) -> None:
    roots = [p.resolve() for p in paths if p.is_dir()]
    for doc in ledger.documents(db, name):
        doc_path = Path(doc.path)
        under = any(_inside(doc_path, root) for root in roots) or any(doc_path == p.resolve() for p in paths)
        if under and not doc_path.exists():
            ids = ledger.remove_document(db, name, doc.source)
            store.delete(ids)
            ledger.journal_clear(db, name, ids)
            summary.documents_pruned.append(doc.source)
            summary.chunks_removed += len(ids)


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def set_postfix_str(self, s: str) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True, desc="ingest")


def _postfix(bar, summary: IngestSummary, started: float) -> None:
    elapsed = max(1e-6, time.perf_counter() - started)
    bar.set_postfix_str(f"{summary.chunks_added} chunks, {summary.chunks_added / elapsed:.0f} chunks/s")


# --- tether doctor -------------------------------------------------------------------------


@dataclass
class Check:
    """One thing ``doctor`` looked at: ``ok``, or what is wrong and whether ``repair`` fixed it."""

    name: str  # database | journal | vector store | bm25
    ok: bool
    detail: str
    repaired: bool = False
    fixable: bool = True


@dataclass
class DoctorReport:
    collection: str
    checks: list[Check] = field(default_factory=list)
    repair: bool = False

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def exit_code(self) -> int:
        """0 = healthy (or everything found was repaired), 1 = problems remain."""
        return 1 if any(not c.repaired for c in self.problems) else 0

    def lines(self) -> list[str]:
        out = []
        for c in self.checks:
            state = "ok" if c.ok else "repaired" if c.repaired else "PROBLEM"
            out.append(f"{c.name}: {state}: {c.detail}")
        remaining = [c for c in self.problems if not c.repaired]
        if not self.problems:
            out.append(f"{self.collection}: healthy")
        elif not remaining:
            out.append(f"{self.collection}: {len(self.problems)} problem(s) found and repaired")
        else:
            hint = " run `tether doctor --repair`" if not self.repair and any(c.fixable for c in remaining) else ""
            out.append(f"{self.collection}: {len(remaining)} problem(s)" + (f";{hint}" if hint else ""))
        return out

    def to_json(self) -> dict:
        return {
            "collection": self.collection,
            "healthy": self.exit_code == 0 and not self.problems,
            "repair": self.repair,
            "checks": [asdict(c) for c in self.checks],
        }


def doctor(
    cfg: TetherConfig, *, collection: str | None = None, repair: bool = False, embedder=None, store=None
) -> DoctorReport:
    """Check the database (``PRAGMA integrity_check``), the store journal, the vector store against
    the ledger and the BM25 index against the ledger; with ``repair``, fix what can be fixed
    (recover the journal, re-embed missing vectors, delete orphans, rebuild BM25). Runs under the
    ingest lock, so an ingest in flight is never mistaken for damage."""
    from retrieval.bm25 import BM25Index
    from retrieval.store import ChromaStore

    name = collection or cfg.retrieval.collection
    report = DoctorReport(collection=name, repair=repair)
    if not cfg.db_path.exists():
        report.checks.append(Check("database", True, f"no {cfg.db_path} yet: nothing has been ingested"))
        return report
    with ingest_lock(cfg, what="doctor"):
        try:
            db = connect(cfg.db_path)
        except sqlite3.DatabaseError as exc:
            report.checks.append(
                Check(
                    "database",
                    False,
                    f"{cfg.db_path} cannot be opened ({exc}): restore it from a backup, or salvage it with "
                    f"`sqlite3 {cfg.db_path} .recover | sqlite3 recovered.db`",
                    fixable=False,
                )
            )
            return report
        try:
            try:
                problems = ledger.integrity_problems(db)
            except sqlite3.DatabaseError as exc:
                problems = [str(exc)]
            if problems:
                report.checks.append(
                    Check(
                        "database",
                        False,
                        "; ".join(problems[:5])
                        + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
                        + f": not repairable here; restore {cfg.db_path.name} from a backup or salvage it with `sqlite3 .recover`",
                        fixable=False,
                    )
                )
            else:
                report.checks.append(
                    Check("database", True, "PRAGMA integrity_check and foreign_key_check find nothing")
                )
            ledger.ensure_collection(db, name, cfg.retrieval.embed_identity)
            n_docs, n_chunks = ledger.document_count(db, name), ledger.chunk_count(db, name)
            store = store or ChromaStore(cfg, name)

            pending = ledger.journal_count(db, name)
            check = Check(
                "journal",
                pending == 0,
                f"{pending} vector-store writes of an interrupted run pending"
                if pending
                else "no interrupted vector-store writes",
            )
            if pending and repair:
                removed = _recover(db, store, name)
                check.repaired, check.detail = (
                    True,
                    check.detail + f"; recovered ({removed} uncommitted vectors deleted)",
                )
            report.checks.append(check)

            missing, orphans = store_diff(db, store, name)
            detail = f"{n_chunks} chunks of {n_docs} documents in the ledger, {store.count()} vectors"
            if missing or orphans:
                detail += f": {len(missing)} chunks without a vector, {len(orphans)} vectors without a chunk"
            check = Check("vector store", not (missing or orphans), detail)
            if check.ok is False and repair:
                if missing and embedder is None:
                    from retrieval.embeddings import embedder_for

                    embedder = embedder_for(cfg)
                restored, removed = reconcile(db, store, name, embedder)
                check.repaired = True
                check.detail += f"; repaired ({restored} re-embedded, {removed} removed)"
            report.checks.append(check)

            gen = ledger.generation(db, name)
            bm25_dir = cfg.bm25_dir / name
            index = BM25Index.load(bm25_dir)
            held = ledger.chunk_ids(db, name)
            if index is None:
                bad = "missing or unreadable" if held else ""
            elif index.generation != gen:
                bad = f"stale (built at generation {index.generation}, the ledger is at {gen})"
            elif set(index.ids) != held:
                bad = f"holds {len(index.ids)} ids, the ledger {len(held)} chunks"
            else:
                bad = ""
            check = Check("bm25", not bad, bad or f"{len(held)} chunks, generation {gen}")
            if bad and repair:
                ids, texts = ledger.all_chunks(db, name)
                BM25Index.build(ids, texts, gen).save(bm25_dir)
                check.repaired, check.detail = True, bad + "; rebuilt from the ledger"
            report.checks.append(check)
        finally:
            db.close()
    return report
