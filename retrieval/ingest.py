"""``tether ingest``: read a folder of documents into the ledger, Chroma and BM25, incrementally.

For each file: reject it with one clear reason, or parse, chunk and embed it, then commit it whole
(see ``retrieval.ledger``). A file whose content hash (file bytes, its sidecar and the chunking
settings) is unchanged is not touched; a changed file's chunks are replaced; ``prune`` removes the
documents of files that are gone. A killed run leaves every file either fully indexed or absent,
and the next run cleans up and finishes the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from retrieval import ledger
from retrieval.chunking import Chunk, chunk_text, make_splitter
from retrieval.readers import ParsedDocument, is_sidecar, read_document, sidecar_for
from tether.config import TetherConfig
from tether.db import connect
from tether.errors import FileRejected, TetherError

log = logging.getLogger(__name__)

EMBED_GROUP_CHUNKS = 512  # chunks embedded together (length-sorted) before their files are committed


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
    rejected: str | None = None  # reason it is skipped before reading


def discover(paths: Sequence[Path]) -> Iterator[Candidate]:
    """Files to consider under each path; symlinks leaving their folder are reported, not followed."""
    for given in paths:
        given = Path(given)
        if not given.exists() and not given.is_symlink():
            raise TetherError(f"{given} does not exist")
        if given.is_file():
            yield Candidate(path=given, source=given.name, root=given.resolve().parent)
            continue
        root = given.resolve()
        for dirpath, dirnames, filenames in os.walk(given, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            here = Path(dirpath)
            for name in list(dirnames):
                p = here / name
                if p.is_symlink():
                    target = p.resolve()
                    if not _inside(target, root):
                        yield Candidate(
                            p, p.relative_to(given).as_posix(), root, f"symlink points outside the folder ({target})"
                        )
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                p = here / name
                source = p.relative_to(given).as_posix()
                if is_sidecar(p):
                    continue
                if p.is_symlink():
                    target = p.resolve()
                    if not target.exists():
                        yield Candidate(p, source, root, f"broken symlink (to {os.readlink(p)})")
                        continue
                    if not _inside(target, root):
                        yield Candidate(p, source, root, f"symlink points outside the folder ({target})")
                        continue
                yield Candidate(p, source, root)


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
    from retrieval.bm25 import BM25Index
    from retrieval.embeddings import embedder_for
    from retrieval.store import ChromaStore

    started = time.perf_counter()
    name = collection or cfg.retrieval.collection
    if collection:
        cfg = cfg.with_retrieval(collection=collection)
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists() and not p.is_symlink():
            raise TetherError(f"{p} does not exist: give a file or a folder to ingest")
    db = connect(cfg.db_path)
    try:
        ledger.ensure_collection(db, name, cfg.retrieval.embed_identity)
        store = store or ChromaStore(cfg, name)
        _recover(db, store, name)
        embedder = embedder or embedder_for(cfg)
        splitter = make_splitter(cfg.retrieval.chunk_size, cfg.retrieval.chunk_overlap, embedder.count_tokens)
        summary = IngestSummary(collection=name)
        gen_before = ledger.generation(db, name)
        candidates = list(discover(paths))
        bar = _progress(len(candidates), progress)
        group: list[_Prepared] = []
        seen_sources: set[str] = set()

        def flush() -> None:
            if not group:
                return
            texts = [c.text for p in group for c in p.chunks]
            vectors = embedder.embed_batch(texts)
            at = 0
            for prep in group:
                n = len(prep.chunks)
                _commit(db, store, name, prep, vectors[at : at + n], summary)
                at += n
                bar.update(1)
            group.clear()
            _postfix(bar, summary, started)

        for cand in candidates:
            seen_sources.add(cand.source)
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
        summary.chunks_total = ledger.chunk_count(db, name)
        gen_after = ledger.generation(db, name)
        bm25_dir = cfg.bm25_dir / name
        if gen_after != gen_before or BM25Index.load(bm25_dir) is None:
            ids, texts = ledger.all_chunks(db, name)
            BM25Index.build(ids, texts, gen_after).save(bm25_dir)
        summary.seconds = time.perf_counter() - started
        log.info("ingest %s: %s", name, summary.report_lines()[-1])
        return summary
    finally:
        db.close()


def _prepare(db, cfg: TetherConfig, name: str, cand: Candidate, splitter, outcome: FileOutcome) -> _Prepared | None:
    if cand.rejected:
        raise FileRejected(cand.rejected, skipped=True)
    st = cand.path.stat()
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
    try:
        chunks = chunk_text(doc.text, doc.body_start, splitter)
    except ValueError as exc:  # SentenceSplitter: a single token longer than a chunk
        raise FileRejected(f"cannot be chunked ({exc})") from exc
    if not chunks:
        raise FileRejected("empty: no text to index", skipped=True)
    outcome.warnings.extend(doc.warnings)
    return _Prepared(cand, outcome, digest, st.st_size, st.st_mtime, doc, chunks)


def _commit(db, store, name: str, prep: _Prepared, vectors, summary: IngestSummary) -> None:
    doc, cand = prep.doc, prep.cand
    ids = [chunk_id(name, cand.source, prep.digest, c.seq) for c in prep.chunks]
    pages = [doc.page_at(c.start) for c in prep.chunks]
    metadatas = [
        {"source": cand.source, "date": _date_int(doc.date), "doc_hash": prep.digest[:16], "seq": c.seq}
        for c in prep.chunks
    ]
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
    )
    if old_ids:
        store.delete(old_ids)
        ledger.journal_clear(db, name, old_ids)
    prep.outcome.status = "ingested"
    prep.outcome.chunks = len(ids)
    summary.chunks_added += len(ids)
    summary.chunks_removed += len(old_ids)


def _recover(db, store, name: str) -> None:
    """Undo what a killed run left: store entries never committed, or replaced but not yet deleted."""
    orphans, committed = ledger.uncommitted_ids(db, name)
    if orphans:
        log.warning("recovering %d vector-store entries left by an interrupted run", len(orphans))
        store.delete(orphans)
    if orphans or committed:
        ledger.journal_clear(db, name, orphans + committed)


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


def summary_json(summary: IngestSummary) -> str:
    return json.dumps(summary.to_json(), indent=2)
