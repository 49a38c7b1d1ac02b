"""What every package's commands share: the root options (``--data-dir``, ``--config``) travel to
each command in ``typer.Context.obj`` as a ``CliOptions``; a command calls ``load(ctx)`` for its
validated ``TetherConfig``. No module-level state: tests and other front ends pass their own
``CliOptions`` (``CliRunner().invoke(app, args, obj=CliOptions(...))``). ``config_flags(cls)`` gives a
command one flag per field of a config dataclass, with the field's help, so flags never drift from it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.config import TetherConfig, load_config


@dataclass(frozen=True)
class CliOptions:
    data_dir: Path | None = None
    config: Path | None = None
    assistant: Mapping[str, Any] = field(default_factory=dict)  # assistant overrides applied after loading
    # where the model to serve comes from (an assistant.engine.ModelSource: the registry's promoted
    # model, injected by app/cli.py); None = serve the configured assistant.model
    model_source: Any = None

    def load(self, **retrieval: Any) -> TetherConfig:
        cfg = load_config(self.data_dir, self.config, **retrieval)
        cfg = with_promoted_reranker(cfg, self.model_source)
        return cfg.with_assistant(**self.assistant) if self.assistant else cfg


def with_promoted_reranker(cfg: TetherConfig, source: Any) -> TetherConfig:
    """``cfg`` searching with the reranker ``source`` says is promoted for its collection
    (``source.promoted_reranker(cfg)``: the registry's, injected by app/cli.py), when
    ``retrieval.reranker`` is unset; a configured folder or ``off`` is kept as it is."""
    ask = getattr(source, "promoted_reranker", None)
    if cfg.retrieval.reranker is not None or ask is None:
        return cfg
    path = ask(cfg)
    return cfg.with_retrieval(reranker=str(path)) if path else cfg


def options(ctx: Any) -> CliOptions:
    """The root options of the invocation ``ctx`` belongs to (defaults when none were set)."""
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, CliOptions) else CliOptions()


def load(ctx: Any, **retrieval: Any) -> TetherConfig:
    """The validated configuration for this command; ``retrieval`` overrides (None = keep)."""
    return options(ctx).load(**retrieval)


def with_assistant(cfg: TetherConfig, **changes: Any) -> TetherConfig:
    """``cfg`` with the assistant flags that were given (None = not given), validated again."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return cfg.with_assistant(**changes) if changes else cfg


def field_flags(cls: type, *, exclude: Iterable[str] = ()) -> list[inspect.Parameter]:
    """One keyword-only typer option per field of the config dataclass ``cls`` (``exclude`` aside).

    Field ``max_steps`` becomes ``--max-steps`` (a bool field: ``--resume/--no-resume``), typed as
    the field with None allowed, default None (= not given, the config decides), help text from the
    field's ``metadata["help"]``.
    """
    import typer

    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        tp = hints[f.name]
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        decl = f"{flag}/--no-{flag[2:]}" if tp is bool else flag
        option = typer.Option(None, decl, help=f.metadata.get("help", ""), show_default=False)
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=tp | None))
    return out


def config_flags(cls: type, *, exclude: Iterable[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator for a typer command ending in ``**overrides``: add ``field_flags(cls)`` (minus the
    command's own parameters and ``exclude``) to its signature. The command receives every generated
    flag in ``overrides``, None where it was not given::

        @config_flags(TrainConfig, exclude=("method",))
        def sft(ctx: typer.Context, config: Optional[Path] = typer.Option(None, "--config"), **overrides): ...
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        generated = field_flags(cls, exclude={*exclude, *(p.name for p in own)})

        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            return func(*args, **kwargs)

        params = own + generated
        command.__signature__ = inspect.Signature(
            params, return_annotation=hints.get("return", inspect.Signature.empty)
        )  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params} | (
            {"return": hints["return"]} if "return" in hints else {}
        )
        return command

    return decorate


def offline_env() -> None:
    """Offline by default: no hub look-ups, no telemetry (``tether models pull`` is the one exception)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
