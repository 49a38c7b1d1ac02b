"""Bad CLI input through the real console script (``.venv/bin/tether`` in a subprocess): every
usage, environment, configuration and database error ends in exit code 2 with one ``error: ...``
line that names the fix (or typer's usage panel), never a traceback. Each case gets its own data
dir; most fail before any heavy import (well under a second each); the few that must reach the
engine share one tiny ingested corpus and use the extractive generator."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

TETHER = Path(sys.executable).parent / "tether"
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def tether(*args: str, data: Path | None = None, stdin: bytes | None = None, timeout: float = 300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("TETHER_CHROMA_URL", None)
    argv = [str(TETHER), *(["--data-dir", str(data)] if data is not None else []), *args]
    return subprocess.run(argv, input=stdin or b"", capture_output=True, timeout=timeout, env=env)


def error_line(result) -> str:
    """The one ``error:`` line of a failed run, after checking exit code 2 and no traceback."""
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, (result.returncode, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [x for x in err.splitlines() if x.strip() and not x.startswith(("WARNING ", "note: "))]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def usage_panel(result) -> str:
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, (result.returncode, err)
    assert "Traceback" not in err and "Error" in err, err
    return err


# -- usage errors: typer's panel, exit 2 -----------------------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["ask"], "Missing argument 'question'"),
        (["ask", "q", "-k", "abc"], "Invalid value for '-k'"),
        (["search", "q", "--k", "abc"], "No such option: --k"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["--data-dir"], "Option '--data-dir' requires an argument"),
        (["ask", "q", "--policy"], "Option '--policy' requires an argument"),
    ],
)
def test_usage_errors_show_the_usage_panel(tmp_path, args, says):
    err = usage_panel(tether(*args, data=None if args == ["--data-dir"] else tmp_path / "d"))
    assert says in err


def test_a_k_out_of_range_is_one_line_before_anything_loads(tmp_path):
    line = error_line(tether("ask", "how many days?", "-k", "0", "-g", "extractive", data=tmp_path / "d"))
    assert line == "error: invalid configuration: -k / assistant.top_k (0) must be between 1 and 50"


# -- the data dir -----------------------------------------------------------------------------------


def test_a_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    for command in (["docs"], ["search", "leave"], ["ask", "leave", "-g", "extractive"]):
        line = error_line(tether(*command, data=tmp_path / "f"))
        assert "is a file, not a folder" in line and "--data-dir FOLDER" in line


@pytest.mark.parametrize("where", ["under-a-file", "missing-root"])
def test_a_data_dir_that_cannot_be_created(tmp_path, where):
    (tmp_path / "f").write_text("x")
    data = tmp_path / "f" / "sub" if where == "under-a-file" else Path("/proc/no-such-dir/tether")
    line = error_line(tether("docs", data=data))
    assert f"cannot create the data dir {data}" in line and "--data-dir a folder you can write" in line


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody can write: mode 555, or for root (who ignores modes) the immutable flag."""
    path = tmp_path / "ro"
    path.mkdir()
    if ROOT_USER:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
            pytest.skip("running as root without chattr +i: no folder here is read-only")
        yield path
        subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


def test_a_read_only_data_dir(readonly_dir):
    for command in (["docs"], ["logs", "export"]):
        line = error_line(tether(*command, data=readonly_dir))
        assert f"{readonly_dir}/tether.db" in line and "fix their permissions" in line, line


@pytest.mark.skipif(ROOT_USER, reason="root reads any folder whatever its mode")
def test_an_unreadable_data_dir(tmp_path):
    data = tmp_path / "locked"
    data.mkdir()
    data.chmod(0)
    try:
        line = error_line(tether("docs", data=data))
        assert str(data) in line and ("readable" in line or "permissions" in line), line
    finally:
        data.chmod(0o755)


# -- tether.db ---------------------------------------------------------------------------------------


def _not_sqlite(data: Path) -> None:
    data.mkdir()
    (data / "tether.db").write_text("these are notes, not a database; " * 20)


def _corrupt(data: Path) -> None:
    """A real Tether database whose schema page is overwritten."""
    from tether.db import connect

    data.mkdir()
    connect(data / "tether.db").close()
    with sqlite3.connect(data / "tether.db") as db:
        db.execute("PRAGMA journal_mode = DELETE")  # fold the WAL in, so the file alone is the database
    raw = bytearray((data / "tether.db").read_bytes())
    raw[100:4096] = b"\xab" * (4096 - 100)
    (data / "tether.db").write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [_not_sqlite, _corrupt], ids=["not-sqlite", "corrupt"])
@pytest.mark.parametrize(
    "command",
    [
        ["docs"],
        ["search", "leave"],
        ["ask", "leave", "-g", "extractive"],
        ["ingest", "CORPUS"],
        ["logs", "export"],
        ["models", "list"],
        ["eval", "list"],
    ],
    ids=lambda c: "-".join(c[:2]),
)
def test_a_database_that_is_not_usable_is_named_with_the_fix(tmp_path, damage, command):
    data = tmp_path / "d"
    damage(data)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("Staff get 25 days of annual leave.\n")
    line = error_line(tether(*[str(corpus) if a == "CORPUS" else a for a in command], data=data))
    db = data / "tether.db"
    assert f"{db} is not a usable Tether database" in line
    assert f"sqlite3 {db} .recover" in line and "restore it from a backup" in line


# -- tether.yaml and --config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "yaml_text, says",
    [
        ("retrieval:\n  chunk_size: [1, 2]\n", "retrieval.chunk_size must be an integer, got [1, 2]"),
        ("assistant:\n  min_relevance: null\n", "assistant.min_relevance must be a number, got null"),
        ("assistant:\n  top_k: 3.5\n", "assistant.top_k must be an integer, got 3.5"),
        ("retrieval:\n  max_file_mb: .nan\n", "retrieval.max_file_mb must be a finite number, got nan"),
        ("assistant:\n  generator: bogus\n", "assistant.generator ('bogus') must be one of hf, extractive, openai"),
        ("assistant:\n  max_conflicts_stated: -1\n", "assistant.max_conflicts_stated (-1) must be between 0 and 50"),
        ("assistant:\n  cad: off\n", "quote it"),
        ("retrieval: [1]\n", "section 'retrieval' must be a mapping"),
        ("a: [unclosed\n", "is not valid YAML at line 2, column 1"),
    ],
)
def test_a_bad_tether_yaml_is_one_line_before_anything_runs(tmp_path, yaml_text, says):
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_text(yaml_text)
    line = error_line(tether("ingest", str(tmp_path), data=data))  # nothing is ingested: it fails first
    assert line.startswith("error: invalid configuration: ") and says in line, line
    assert not (data / "tether.db").exists()


def test_a_tether_yaml_that_is_not_utf8(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_bytes(b"retrieval:\n  collection: caf\xe9\n")
    line = error_line(tether("docs", data=data))
    assert f"{data / 'tether.yaml'} is not UTF-8 text (byte 28 is 0xe9): save it as UTF-8" in line


@pytest.mark.parametrize("kind", ["folder", "missing"])
def test_config_must_name_a_yaml_file(tmp_path, kind):
    target = tmp_path if kind == "folder" else tmp_path / "nope.yaml"
    line = error_line(tether("--config", str(target), "docs", data=tmp_path / "d"))
    assert f"--config {target}" in line and "give the path of a YAML file" in line


def test_a_number_for_the_collection_is_read_as_its_name(tmp_path):
    """``collection: 123`` is the collection "123" (valid), so the command runs: an empty one here."""
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_text("retrieval:\n  collection: 123\n")
    result = tether("docs", data=data)
    assert result.returncode == 0 and b"Traceback" not in result.stderr, result.stderr


# -- reaching the engine: a one-document corpus ------------------------------------------------------

QUESTION = "How many days of annual leave do staff get?"


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-errors")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "leave.md").write_text("# Leave\n\nStaff get 25 days of annual leave per year.\n")
    result = tether("ingest", str(corpus), data=root / "data")
    assert result.returncode == 0, result.stderr.decode()
    return root / "data"


def test_an_empty_collection_names_tether_ingest(ingested, tmp_path):
    line = error_line(tether("ask", QUESTION, "-g", "extractive", data=tmp_path / "empty"))
    assert "holds no documents" in line and "tether ingest PATH" in line
    line = error_line(tether("search", "leave", "-c", "no-such-collection", data=ingested))
    assert "'no-such-collection' holds no documents" in line and "tether ingest PATH" in line


def test_invalid_utf8_in_a_question_is_replaced_not_a_tokenizer_error(ingested):
    bad = os.fsdecode(b"How many days of annual leave \xff\xfe do staff get?")  # argv carries it as surrogates
    result = tether("ask", bad, "-g", "extractive", "--json", data=ingested)
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "not UTF-8" in err and "25 days" in result.stdout.decode()


def test_invalid_utf8_on_chat_stdin_is_replaced(ingested):
    lines = b"How many days of annual leave \xff do staff get?\n/quit\n"
    result = tether("chat", "-g", "extractive", data=ingested, stdin=lines)
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "not UTF-8" in err and "25 days" in result.stdout.decode()
