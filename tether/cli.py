"""What every package's commands share: the root options (``--data-dir``, ``--config``) travel to
each command in ``typer.Context.obj`` as a ``CliOptions``; a command calls ``load(ctx)`` for its
validated ``TetherConfig``. No module-level state: tests and other front ends pass their own
``CliOptions`` (``CliRunner().invoke(app, args, obj=CliOptions(...))``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tether.config import TetherConfig, load_config


@dataclass(frozen=True)
class CliOptions:
    data_dir: Path | None = None
    config: Path | None = None
    assistant: Mapping[str, Any] = field(default_factory=dict)  # assistant overrides applied after loading

    def load(self, **retrieval: Any) -> TetherConfig:
        cfg = load_config(self.data_dir, self.config, **retrieval)
        return cfg.with_assistant(**self.assistant) if self.assistant else cfg


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


def offline_env() -> None:
    """Offline by default: no hub look-ups, no telemetry (``tether models pull`` is the one exception)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
