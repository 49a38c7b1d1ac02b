"""The retrieval commands, mounted on ``tether`` by app/cli.py (each maps onto one stage function):

tether ingest PATH...  -> retrieval.ingest.ingest
tether search QUERY    -> retrieval.search.Searcher.search
tether docs            -> retrieval.ledger.Ledger.documents
tether doctor          -> retrieval.ingest.doctor
tether models export-encoder -> retrieval.onnx_encoder.export_encoder
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from tether.cli import load
from tether.errors import TetherError


def register(app: typer.Typer, models_app: typer.Typer | None = None) -> None:
    """Add ``ingest``, ``search``, ``docs`` and ``doctor`` to the root app, ``export-encoder`` to ``models``."""
    app.command("ingest")(ingest)
    app.command("search")(search)
    app.command("docs")(docs)
    app.command("doctor")(doctor)
    if models_app is not None:
        models_app.command("export-encoder")(export_encoder)


def ingest(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(..., help="files or folders to ingest"),
    collection: str | None = typer.Option(None, "--collection", "-c", help="collection name"),
    prune: bool = typer.Option(False, "--prune", help="remove documents whose files are gone from these folders"),
    max_file_mb: float | None = typer.Option(None, "--max-file-mb", help="skip files larger than this"),
    chunk_size: int | None = typer.Option(None, "--chunk-size", help="chunk size in embedder tokens"),
    chunk_overlap: int | None = typer.Option(None, "--chunk-overlap", help="overlap in embedder tokens"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar on stderr"),
) -> None:
    """Ingest documents (md, txt, html, pdf, docx) into a collection, incrementally."""
    from retrieval.ingest import ingest as run_ingest

    cfg = load(ctx, collection=collection, max_file_mb=max_file_mb, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    summary = run_ingest(cfg, paths, prune=prune, progress=progress and not as_json and sys.stderr.isatty())
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        for line in summary.report_lines():
            typer.echo(line)
    raise typer.Exit(summary.exit_code)


def search(
    ctx: typer.Context,
    query: str = typer.Argument(..., help="what to look for"),
    k: int = typer.Option(5, "-k", help="number of passages"),
    collection: str | None = typer.Option(None, "--collection", "-c"),
    source: str | None = typer.Option(None, "--source", help="only sources matching this glob"),
    date_from: str | None = typer.Option(None, "--from", help="only documents dated on or after (YYYY-MM-DD)"),
    date_to: str | None = typer.Option(None, "--to", help="only documents dated on or before (YYYY-MM-DD)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of passages"),
) -> None:
    """Hybrid (dense + BM25) search over a collection."""
    from retrieval.search import Searcher, SearchFilters

    if k < 1:
        raise TetherError(f"-k ({k}) must be >= 1")
    for flag, value in (("--from", date_from), ("--to", date_to)):
        if value:
            import datetime as dt

            try:
                dt.date.fromisoformat(value)
            except ValueError as exc:
                raise TetherError(f"{flag} {value!r} is not a date (YYYY-MM-DD)") from exc
    cfg = load(ctx, collection=collection)
    searcher = Searcher(cfg)
    try:
        warning = searcher.health().warning
        if warning:
            typer.echo(f"warning: {warning}", err=True)
        hits = searcher.search(query, k=k, filters=SearchFilters(source=source, date_from=date_from, date_to=date_to))
    finally:
        searcher.close()
    if as_json:
        typer.echo(json.dumps([h.to_json() for h in hits], indent=2, ensure_ascii=False))
        return
    if not hits:
        typer.echo("no matching passages")
        return
    for h in hits:
        where = h.source + (f" p.{h.page}" if h.page else "") + f" [{h.span[0]}:{h.span[1]}]"
        meta = ", ".join(x for x in (h.date, h.status, h.authority) if x)
        typer.echo(f"[{h.rank}] {h.title} — {where}" + (f" ({meta})" if meta else "") + f"  score {h.score:.4f}")
        snippet = " ".join(h.text.split())
        typer.echo("    " + (snippet[:300] + ("…" if len(snippet) > 300 else "")))


def docs(
    ctx: typer.Context,
    collection: str | None = typer.Option(None, "--collection", "-c"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List the documents of a collection with chunk counts and metadata."""
    from retrieval.ledger import Ledger

    cfg = load(ctx, collection=collection)
    with Ledger.open(cfg.db_path) as ledger:
        rows = ledger.documents(cfg.retrieval.collection)
    if as_json:
        from dataclasses import asdict

        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    for r in rows:
        typer.echo(
            f"{r.source}\t{r.n_chunks} chunks\t{r.doc_date or '-'}\t{r.status or '-'}\t{r.authority or '-'}\t{r.title}"
        )


def doctor(
    ctx: typer.Context,
    collection: str | None = typer.Option(None, "--collection", "-c"),
    repair: bool = typer.Option(False, "--repair", help="fix what is wrong (re-embed, remove orphans, rebuild BM25)"),
    as_json: bool = typer.Option(False, "--json", help="print the checks as JSON"),
) -> None:
    """Check the database, the vector store and the BM25 index against the ledger; exit 1 on a problem."""
    from retrieval.ingest import doctor as run_doctor

    cfg = load(ctx, collection=collection)
    report = run_doctor(cfg, repair=repair)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.lines():
            typer.echo(line)
    raise typer.Exit(report.exit_code)


def export_encoder(
    ctx: typer.Context,
    model: str | None = typer.Option(
        None, "--model", help="sentence-transformers model (default retrieval.embed_model)"
    ),
    out: Path | None = typer.Option(None, "--out", help="output folder (default <data dir>/models/encoders/<model>)"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Export the embedder to ONNX (fp32 and int8), parity-checked; `retrieval.encoder: auto` then uses it."""
    from retrieval.onnx_encoder import encoder_dir
    from retrieval.onnx_encoder import export_encoder as run_export

    cfg = load(ctx)
    name = model or cfg.retrieval.embed_model
    report = run_export(name, out or encoder_dir(cfg.models_dir, name))
    if as_json:
        typer.echo(json.dumps(report.manifest, indent=2))
    else:
        for line in report.lines():
            typer.echo(line)
