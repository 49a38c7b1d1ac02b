"""The document library behind the Documents page: list, edit metadata, delete, re-ingest.

Uploads live in ``<data dir>/uploads/``; a metadata edit on an uploaded document is also written
to its sidecar (``NAME.meta.yaml``) so that re-ingesting keeps it. Documents ingested from
elsewhere get the edit in the ledger only (a later change of the file on disk replaces it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from app.ui.uploads import uploads_dir
from retrieval.ingest import FileOutcome, ingest
from retrieval.ledger import DocumentRow, Ledger
from retrieval.readers import AUTHORITIES, SIDECAR_SUFFIX, STATUSES
from tether.config import TetherConfig
from tether.errors import TetherError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetadataEdit:
    source: str
    doc_date: str | None
    status: str | None
    authority: str | None

    def problems(self) -> list[str]:
        import datetime as dt

        out = []
        if self.doc_date:
            try:
                dt.date.fromisoformat(self.doc_date)
            except ValueError:
                out.append(f"{self.source}: date {self.doc_date!r} is not YYYY-MM-DD")
        if self.status and self.status not in STATUSES:
            out.append(f"{self.source}: status {self.status!r} must be one of {', '.join(STATUSES)}")
        if self.authority and self.authority not in AUTHORITIES:
            out.append(f"{self.source}: authority {self.authority!r} must be one of {', '.join(AUTHORITIES)}")
        return out


def documents(cfg: TetherConfig) -> list[DocumentRow]:
    with Ledger.open(cfg.db_path) as ledger:
        return ledger.documents(cfg.retrieval.collection)


def is_upload(cfg: TetherConfig, doc: DocumentRow) -> bool:
    return Path(doc.path).resolve().parent == uploads_dir(cfg.data_dir).resolve()


def ingest_files(
    cfg: TetherConfig,
    paths: Sequence[Path],
    *,
    store=None,
    embedder=None,
    on_file: Callable[[int, int, FileOutcome], None] | None = None,
) -> list[FileOutcome]:
    """Ingest files one by one (so a caller can show progress); return every file's outcome."""
    outcomes: list[FileOutcome] = []
    for i, path in enumerate(paths):
        try:
            summary = ingest(cfg, [path], store=store, embedder=embedder)
            outcome = (
                summary.files[0]
                if summary.files
                else FileOutcome(source=path.name, status="skipped", reason="nothing to ingest")
            )
        except TetherError as exc:
            outcome = FileOutcome(source=path.name, status="failed", reason=str(exc))
        outcomes.append(outcome)
        if on_file:
            on_file(i + 1, len(paths), outcome)
    return outcomes


def set_metadata(cfg: TetherConfig, edit: MetadataEdit) -> None:
    """Change a document's date, status and authority (search reads them from the ledger)."""
    problems = edit.problems()
    if problems:
        raise TetherError("; ".join(problems))
    with Ledger.open(cfg.db_path) as ledger:
        doc = ledger.document(cfg.retrieval.collection, edit.source)
        if doc is None:
            raise TetherError(f"no document {edit.source!r} in collection '{cfg.retrieval.collection}'")
        ledger.set_metadata(
            cfg.retrieval.collection, edit.source, doc_date=edit.doc_date, status=edit.status, authority=edit.authority
        )
    if is_upload(cfg, doc):
        sidecar = Path(doc.path).with_name(Path(doc.path).name + SIDECAR_SUFFIX)
        meta = {
            "title": doc.title,
            "date": edit.doc_date or None,
            "status": edit.status or None,
            "authority": edit.authority or None,
        }
        sidecar.write_text(yaml.safe_dump({k: v for k, v in meta.items() if v}, sort_keys=False), encoding="utf-8")


def delete_document(cfg: TetherConfig, source: str, store) -> int:
    """Remove a document from the ledger and the vector store (and its upload, if it is one);
    return the number of chunks removed."""
    with Ledger.open(cfg.db_path) as ledger:
        doc = ledger.document(cfg.retrieval.collection, source)
        if doc is None:
            raise TetherError(f"no document {source!r} in collection '{cfg.retrieval.collection}'")
        ids = ledger.remove_document(cfg.retrieval.collection, source)
        if ids:
            store.delete(ids)
        ledger.journal_clear(cfg.retrieval.collection, ids)
    if is_upload(cfg, doc):
        path = Path(doc.path)
        path.unlink(missing_ok=True)
        path.with_name(path.name + SIDECAR_SUFFIX).unlink(missing_ok=True)
    return len(ids)


def reingest_document(cfg: TetherConfig, source: str, *, store=None, embedder=None) -> FileOutcome:
    """Read a document's file again (a changed file replaces its chunks; an unchanged one is left)."""
    rows = [r for r in documents(cfg) if r.source == source]
    if not rows:
        raise TetherError(f"no document {source!r} in collection '{cfg.retrieval.collection}'")
    path = Path(rows[0].path)
    if not path.exists():
        raise TetherError(f"{source}: its file {path} is gone; delete the document or restore the file")
    if Path(source).name != source:  # ingested from a folder: its source is relative to that folder
        root = Path(str(path)[: -len(source)])
        summary = ingest(cfg, [root], store=store, embedder=embedder)
        return next((f for f in summary.files if f.source == source), FileOutcome(source=source, status="unchanged"))
    return ingest_files(cfg, [path], store=store, embedder=embedder)[0]
