"""The root of the ``tether`` command: global options, and every package's commands mounted in
one place (each package keeps its own commands beside the stage functions they call):

    retrieval.cli.register            ingest, search, docs
    assistant.cli.register            ask, chat, serve, logs export, models install|pull
    assistant.evaluation.cli.eval_app eval run|compare|gate|make-qa|conflicts|list|show
    training.cli.register             train ..., export, models list|promote|rollback|set-admin-password

The options reach the commands in ``typer.Context.obj`` (``tether.cli.CliOptions``). Errors that
users should see (``TetherError``) print one line and exit with code 2.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path

import typer

from assistant import cli as assistant_cli
from assistant.evaluation.cli import eval_app
from retrieval import cli as retrieval_cli
from tether.cli import CliOptions, offline_env
from tether.errors import ConfigError, TetherError
from training import cli as training_cli
from training.registry import RegistryModelSource

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Tether: grounded chat over your documents.")
models_app = typer.Typer(help="Local models: install the shipped ones, list what is there.")
log = logging.getLogger("tether")

_QUIET = ("httpx", "chromadb", "sentence_transformers", "urllib3", "bm25s", "transformers", "bitsandbytes")


@app.callback()
def main_options(
    ctx: typer.Context,
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="state folder (default $TETHER_HOME, else ./.tether)"
    ),
    config: Path | None = typer.Option(None, "--config", help="YAML config (default <data dir>/tether.yaml)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log debug details"),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose else logging.ERROR)
    given = ctx.obj if isinstance(ctx.obj, CliOptions) else CliOptions()
    # the engine serves the registry's promoted model (training/registry.py) unless the caller gave a source
    source = given.model_source if given.model_source is not None else RegistryModelSource()
    ctx.obj = replace(given, data_dir=data_dir or given.data_dir, config=config or given.config, model_source=source)


retrieval_cli.register(app, models_app)
assistant_cli.register(app, models_app)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
training_cli.register(app, models_app)


def main() -> None:
    """The console script. Usage errors (typer/click) print their usage panel and exit 2 (standalone
    mode); a ``TetherError`` prints one line and exits 2; so do an unusable database and an
    environment error (a folder or file that cannot be read or written), with the traceback only
    under ``--verbose``; Ctrl-C exits 130."""
    offline_env()
    try:
        app(standalone_mode=True, prog_name="tether")
    except TetherError as exc:
        _fail(user_message(exc), exc)
    except sqlite3.DatabaseError as exc:  # past ``tether.db.connect``: a file damaged in use
        _fail(
            f"the database failed ({exc}): run `tether doctor` to check it (it names the fix), "
            "or pass --data-dir another folder",
            exc,
        )
    except BrokenPipeError:  # `tether ... | head`: the reader left; nothing to report
        sys.stderr.close()
        sys.exit(0)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        _fail(
            f"cannot use{where} ({exc.strerror or exc}): check that the data dir (--data-dir, $TETHER_HOME) and the "
            "paths given are folders and files you can read and write",
            exc,
        )
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


def user_message(exc: TetherError) -> str:
    """One line for an error users should see; a ``ConfigError`` with several problems keeps one
    line per problem."""
    if isinstance(exc, ConfigError) and len(exc.problems) == 1:
        return f"invalid configuration: {exc.problems[0]}"
    return str(exc)


def _fail(message: str, exc: BaseException) -> None:
    log.debug("details", exc_info=exc)  # the traceback, with --verbose
    typer.echo(f"error: {message}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
