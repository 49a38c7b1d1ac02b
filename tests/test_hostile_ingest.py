"""Ingest against a hostile but fair folder (issue 13): links that loop, cycle or escape, blobs,
bombs, bad encodings, special files, and good files beside them; two ingests at once; a vector
store that lost its files. Real parts: the MiniLM embedder, an on-disk Chroma, a SQLite ledger."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from retrieval.chunking import TooManyChunks, chunk_text, make_splitter
from retrieval.ingest import IngestBusy, discover, doctor, ingest, ingest_lock
from retrieval.ledger import Ledger
from retrieval.search import Searcher
from retrieval.store import ChromaStore
from tests.corpus import TRAVEL_PAGES, write_docx, write_pdf

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024

GOOD_MD = """---
title: Zebra Audit Procedure
date: 2024-03-01
authority: official
---
# Zebra Audit Procedure

The quarterly zebra audit happens in the first week of every quarter. The facilities team counts
every striped mug in the kitchen and reports the total to the office manager.

Missing mugs are replaced from the petty cash budget within ten working days.
"""
GOOD_TXT = "Bicycle storage: the basement cage opens at 6:30 and closes at 21:00. Badge access is required.\n" * 3


def _counts(cfg) -> tuple[set[str], set[str], int]:
    name = cfg.retrieval.collection
    with Ledger.open(cfg.db_path) as led:
        ids, journal = led.chunk_ids(name), led.journal_count(name)
    return ids, set(ChromaStore(cfg).all_ids()), journal


def _zip_bomb_docx(path: Path, inflated_mb: int) -> None:
    """A DOCX-shaped package (content types, relationships, document part) whose document part
    inflates to ``inflated_mb`` MB of one repeated XML comment."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>',
        )
        zf.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"/>',
        )
        with zf.open("word/document.xml", "w") as member:
            member.write(b'<?xml version="1.0"?><w:document xmlns:w="x"><!--')
            block = b"A" * MIB
            for _ in range(inflated_mb):
                member.write(block)
            member.write(b"--></w:document>")


def _hostile_folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, str]]]:
    """The folder and, for each file or link in it, (expected status, a phrase of the reason)."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nThe vault code is 4711.\n")
    expect: dict[str, tuple[str, str]] = {}

    # good files
    (folder / "good").mkdir()
    (folder / "good" / "zebra.md").write_text(GOOD_MD, encoding="utf-8")
    (folder / "good" / "bikes.txt").write_text(GOOD_TXT, encoding="utf-8")
    write_pdf(folder / "good" / "travel.pdf", TRAVEL_PAGES)
    write_docx(folder / "good" / "lab.docx")
    for name in ("zebra.md", "bikes.txt", "travel.pdf", "lab.docx"):
        expect[f"good/{name}"] = ("ingested", "")

    # links: a loop, a self-loop, a directory cycle, a folder link inside, links out, a dangling one
    os.symlink("b.md", folder / "a.md")
    os.symlink("a.md", folder / "b.md")
    os.symlink("self.md", folder / "self.md")
    expect["a.md"] = expect["b.md"] = expect["self.md"] = ("skipped", "symlink loop")
    (folder / "sub").mkdir()
    (folder / "sub" / "inside.md").write_text("# Inside\n\nThe sub folder holds the spare keys for the bike cage.\n")
    expect["sub/inside.md"] = ("ingested", "")
    os.symlink("..", folder / "sub" / "parent", target_is_directory=True)
    expect["sub/parent"] = ("skipped", "directory cycle")
    os.symlink("../good", folder / "sub" / "good-again", target_is_directory=True)
    expect["sub/good-again"] = ("skipped", "not followed")
    os.symlink(outside / "secret.md", folder / "escape.md")
    expect["escape.md"] = ("skipped", "symlink points outside the folder")
    os.symlink(outside, folder / "outdir", target_is_directory=True)
    expect["outdir"] = ("skipped", "symlink points outside the folder")
    os.symlink(tmp_path / "missing.md", folder / "dangling.md")
    expect["dangling.md"] = ("skipped", "broken symlink")
    os.symlink("good/zebra.md", folder / "zebra-link.md")  # a file link inside the folder is followed
    expect["zebra-link.md"] = ("ingested", "")

    # blobs and huge files
    (folder / "blob.txt").write_bytes(base64.b64encode(os.urandom(5 * MIB * 3 // 4)))  # 5 MiB, one line, no space
    expect["blob.txt"] = ("skipped", "too many chunks")
    line = " ".join(f"word{i % 97} lorem ipsum" for i in range(30_000))
    (folder / "huge-lines.txt").write_text("\n".join([line] * 4))  # 4 lines of 500k characters
    expect["huge-lines.txt"] = ("skipped", "too many chunks")
    (folder / "long-line.txt").write_text(
        " ".join(f"Rule {i} says the door code changes on day {i % 28 + 1}." for i in range(600))
    )
    expect["long-line.txt"] = ("ingested", "")
    # markup bombs: nesting 50,000 deep (a recursive walk dies, a naive tree check is quadratic) and
    # entity expansion ("billion laughs", never expanded by an HTML parser)
    (folder / "deep.html").write_text("<div>" * 50_000 + "<p>The deep room opens at noon.</p>" + "</div>" * 50_000)
    expect["deep.html"] = ("ingested", "")
    (folder / "laughs.html").write_text(
        '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        "<html><body><p>Laughs: &b;&b;&b;&b;&b;&b;&b;&b;&b; and the lift is out of order today.</p></body></html>"
    )
    expect["laughs.html"] = ("ingested", "")
    _zip_bomb_docx(folder / "bomb.docx", inflated_mb=60)
    expect["bomb.docx"] = ("failed", "zip bomb suspected")

    # empty, binary, encodings
    (folder / "empty.md").write_bytes(b"")
    expect["empty.md"] = ("skipped", "empty file")
    (folder / "blank.txt").write_text(" \n\t\n")
    expect["blank.txt"] = ("skipped", "empty")
    (folder / "image.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(4000))
    expect["image.md"] = ("failed", "binary content")
    (folder / "nul.txt").write_bytes(
        b"Plain words for a while. " * 800 + b"\x00\x00\x00" + b"and more words after." * 10
    )
    expect["nul.txt"] = ("failed", "binary content")
    (folder / "latin1.txt").write_bytes(
        "Le café de l'hôtel ouvre à 7h; le thé est servi à côté du théâtre.\n".encode("latin-1") * 6
    )
    expect["latin1.txt"] = ("ingested", "")
    (folder / "utf16.txt").write_text(
        "Die Größe der Mülltonne beträgt 240 Liter, geleert wird montags.\n" * 4, encoding="utf-16"
    )
    expect["utf16.txt"] = ("ingested", "")
    (folder / "utf16-nobom.txt").write_bytes(
        "The printer on floor two jams on A3 paper; use tray one.\n".encode("utf-16-le") * 4
    )
    expect["utf16-nobom.txt"] = ("ingested", "")

    # corrupt documents, a special file, an unsupported type
    pdf = folder / "good" / "travel.pdf"
    (folder / "truncated.pdf").write_bytes(pdf.read_bytes()[: pdf.stat().st_size // 2])
    expect["truncated.pdf"] = ("failed", "corrupt PDF")
    os.mkfifo(folder / "pipe.md")  # reading it would block for ever
    expect["pipe.md"] = ("skipped", "not a regular file (a FIFO)")
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(100))
    expect["photo.jpg"] = ("skipped", "unsupported file type")
    return folder, expect


def test_a_hostile_folder_ingests_with_one_outcome_per_file_and_no_crash(cfg, embedder, tmp_path, caplog):
    folder, expect = _hostile_folder(tmp_path)
    cfg = cfg.with_retrieval(max_chunks_per_file=300)
    started = time.monotonic()
    summary = ingest(cfg, [folder], embedder=embedder)
    elapsed = time.monotonic() - started
    # generous for a loaded 2-core machine: the 5 MiB blob must not take minutes (it did take > 15)
    assert elapsed < 150, f"hostile ingest took {elapsed:.0f}s"

    by_source = {f.source: f for f in summary.files}
    assert set(by_source) == set(expect), set(by_source) ^ set(expect)
    for source, (status, reason) in expect.items():
        got = by_source[source]
        assert got.status == status, (source, got)
        assert reason in (got.reason or ""), (source, got.reason)
    assert any("decoded as" in w for w in by_source["latin1.txt"].warnings)
    assert any("no byte-order mark" in w for w in by_source["utf16-nobom.txt"].warnings)
    assert "too many chunks: more than 300 (retrieval.max_chunks_per_file)" in by_source["blob.txt"].reason
    assert summary.exit_code == 1  # some files failed; the others are indexed

    # one line per rejected file, naming it once
    lines = summary.report_lines()
    for source, (status, _) in expect.items():
        if status != "ingested":
            assert sum(1 for line in lines if line.startswith(f"{status}: {source}: ")) == 1, source
    json.dumps(summary.to_json())

    # what was ingested is whole: spans index the text, no chunk over the token budget, nothing escaped
    with Ledger.open(cfg.db_path) as led:
        rows = led.collection_chunks(cfg.retrieval.collection)
        docs = {d.source: d for d in led.documents(cfg.retrieval.collection)}
    assert set(docs) == {s for s, (status, _) in expect.items() if status == "ingested"}
    raw = (folder / "long-line.txt").read_text()
    long_rows = [r for r in rows if r.source == "long-line.txt"]
    assert len(long_rows) > 5
    assert all(raw[r.start_char : r.end_char] == r.text for r in long_rows)
    assert max(len(embedder.count_tokens(r.text)) for r in rows) <= cfg.retrieval.chunk_size
    assert "4711" not in " ".join(r.text for r in rows)
    held, stored, journal = _counts(cfg)
    assert held == stored and journal == 0

    # the good files are searchable
    searcher = Searcher(cfg, embedder=embedder)
    try:
        assert searcher.health().ok
        assert searcher.search("how often is the zebra mug audit?", k=3)[0].source in ("good/zebra.md", "zebra-link.md")
        assert searcher.search("basement cage closes at 21:00, badge access", k=1)[0].source == "good/bikes.txt"
        assert searcher.search("finance director approval", k=1)[0].source == "good/travel.pdf"
        assert searcher.search("Safety goggles laboratory", k=1)[0].source == "good/lab.docx"
        assert searcher.search("Mülltonne geleert montags", k=1)[0].source == "utf16.txt"
        assert searcher.search("when does the deep room open?", k=1)[0].source == "deep.html"
    finally:
        searcher.close()

    # a second run adds nothing and says the same about every rejected file
    again = ingest(cfg, [folder], embedder=embedder)
    assert again.chunks_added == again.chunks_removed == again.vectors_restored == again.vectors_removed == 0
    assert not again.ingested
    assert again.chunks_total == summary.chunks_total
    for f in again.files:
        want = expect[f.source][0]
        assert f.status == ("unchanged" if want == "ingested" else want), f
    assert _counts(cfg) == (held, stored, 0)


def test_discovery_never_raises_on_a_loop_given_directly(tmp_path):
    os.symlink("loop.md", tmp_path / "loop.md")
    os.symlink("d2", tmp_path / "d1")
    os.symlink("d1", tmp_path / "d2")
    found = list(discover([tmp_path / "loop.md", tmp_path / "d1"]))
    assert [(c.source, c.rejected) for c in found] == [("loop.md", "symlink loop"), ("d1", "symlink loop")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_folder_fails_with_a_reason_and_the_rest_proceeds(cfg, embedder, tmp_path):
    folder = tmp_path / "kb"
    (folder / "locked").mkdir(parents=True)
    (folder / "locked" / "x.md").write_text("# X\n\nhidden\n")
    (folder / "ok.md").write_text(GOOD_MD)
    (folder / "locked").chmod(0)
    try:
        summary = ingest(cfg, [folder], embedder=embedder)
    finally:
        (folder / "locked").chmod(0o755)
    by_source = {f.source: f for f in summary.files}
    assert by_source["ok.md"].status == "ingested"
    assert by_source["locked"].status == "failed" and "cannot read folder" in by_source["locked"].reason


# --- chunking: linear for any text, capped ----------------------------------------------------


@pytest.fixture(scope="module")
def splitter(embedder):
    return make_splitter(200, 30, embedder.count_tokens)


@pytest.mark.parametrize(
    "kind",
    ["base64", "one-letter", "lines-without-spaces", "long-prose-line", "cjk", "mixed"],
)
def test_chunking_is_bounded_and_exact_for_pathological_text(splitter, embedder, kind):
    rnd = base64.b64encode(os.urandom(150_000)).decode()
    text = {
        "base64": rnd,
        "one-letter": "a" * 300_000,
        "lines-without-spaces": "\n".join(["abcdefghij" * 5] * 4000),
        "long-prose-line": " ".join(f"lorem{i % 13} ipsum dolor" for i in range(20_000)),
        "cjk": "这是一个测试句子，包含一些中文字符。" * 3000,
        "mixed": "Intro words here.\n\n" + rnd[:50_000] + " and then ordinary prose follows the blob. " * 50,
    }[kind]
    started = time.monotonic()
    chunks = chunk_text(text, 0, splitter)
    assert time.monotonic() - started < 60
    assert chunks and all(text[c.start : c.end] == c.text for c in chunks)
    assert all(len(c.text) <= splitter.max_chunk_chars for c in chunks)
    assert max(len(embedder.count_tokens(c.text)) for c in chunks) <= 200
    # nothing lost: every non-space character of the text is in some chunk
    covered = bytearray(len(text))
    for c in chunks:
        covered[c.start : c.end] = b"\x01" * (c.end - c.start)
    assert all(covered[i] or text[i].isspace() for i in range(0, len(text), 97))


def test_the_chunk_cap_stops_a_5_mib_blob_early(splitter):
    blob = base64.b64encode(os.urandom(5 * MIB * 3 // 4)).decode()
    started = time.monotonic()
    with pytest.raises(TooManyChunks) as info:
        chunk_text(blob, 0, splitter, max_chunks=5000)  # the default retrieval.max_chunks_per_file
    assert info.value.limit == 5000
    assert time.monotonic() - started < 90  # about 2.5 s on a quiet 2-core machine


def test_ordinary_text_chunks_as_before(splitter):
    # a document under one block goes to the sentence splitter whole: the chunks it always gave
    text = "\n\n".join(
        " ".join(f"Clause {p}.{i} sets the limit for item {i} to {i * 7} units per week." for i in range(12))
        for p in range(8)
    )
    assert [c.text for c in chunk_text(text, 0, splitter)] == [p for p in splitter.split_text(text) if p.strip()]


def test_the_chunk_cap_is_a_checked_setting(tmp_path):
    from tether.config import RetrievalConfig, load_config
    from tether.errors import ConfigError

    fields = {f.name: f for f in dataclasses.fields(RetrievalConfig)}
    assert fields["max_chunks_per_file"].metadata["help"] and fields["ingest_lock_timeout"].metadata["help"]
    (tmp_path / "tether.yaml").write_text("retrieval:\n  max_chunks_per_file: 0\n  ingest_lock_timeout: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "retrieval.max_chunks_per_file (0) must be between 1 and 1000000" in str(info.value)
    assert "retrieval.ingest_lock_timeout (-1" in str(info.value)


# --- one ingest at a time ------------------------------------------------------------------------


def _folder(path: Path, n: int, word: str) -> Path:
    path.mkdir(parents=True)
    for i in range(n):
        (path / f"{word}-{i}.md").write_text(
            f"# {word.title()} {i}\n\n" + f"The {word} rule number {i} applies on day {i}. " * 40
        )
    return path


def test_an_ingest_waits_for_one_in_flight_and_loses_no_vector(cfg, embedder, tmp_path):
    """The issue's race: B started while A sat between its Chroma upsert and its ledger commit;
    B's crash recovery deleted A's vectors for good. Now B waits for A's lock."""
    first, second = _folder(tmp_path / "one", 3, "apple"), _folder(tmp_path / "two", 3, "pear")
    in_flight, release = threading.Event(), threading.Event()

    class PausingStore:
        def __init__(self, inner):
            self.inner = inner

        def upsert(self, ids, embeddings, metadatas):
            self.inner.upsert(ids, embeddings, metadatas)
            in_flight.set()
            assert release.wait(60)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    results: dict[str, object] = {}

    def run(key, folder, store):
        try:
            results[key] = ingest(cfg, [folder], embedder=embedder, store=store)
        except Exception as exc:  # surfaced by the asserts below
            results[key] = exc

    a = threading.Thread(target=run, args=("a", first, PausingStore(ChromaStore(cfg))))
    a.start()
    assert in_flight.wait(60)
    b = threading.Thread(target=run, args=("b", second, None))
    b.start()
    b.join(2.0)
    assert b.is_alive() and "b" not in results  # B waits for the lock, its recovery has not run
    release.set()
    a.join(60)
    b.join(120)
    assert not a.is_alive() and not b.is_alive()
    assert results["a"].exit_code == 0 and results["b"].exit_code == 0, results
    held, stored, journal = _counts(cfg)
    assert held == stored and journal == 0 and len(held) == results["a"].chunks_added + results["b"].chunks_added


def test_a_busy_lock_refuses_after_the_timeout_with_a_clear_error(cfg, tmp_path, caplog):
    folder = _folder(tmp_path / "kb", 1, "plum")
    with ingest_lock(cfg, what="test"):
        started = time.monotonic()
        with pytest.raises(
            IngestBusy, match=r"another ingest is running on .*\(pid \d+ \(test\).*raise retrieval.ingest_lock_timeout"
        ):
            ingest(cfg.with_retrieval(ingest_lock_timeout=0.5), [folder])
        assert 0.4 < time.monotonic() - started < 30
    assert any("waiting up to 0.5 s" in r.getMessage() for r in caplog.records)


def test_two_cli_ingests_at_once_end_with_ledger_and_chroma_equal(tmp_path):
    """Two real `tether ingest` processes on one data dir, held at the lock until both wait."""
    folder = _folder(tmp_path / "kb", 4, "cherry")
    data = tmp_path / "data"
    from tether.config import load_config

    cfg = load_config(data)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "app.cli", "--data-dir", str(data), "ingest", str(folder), "--json", "--no-progress"]
    with ingest_lock(cfg, what="test"):
        procs = [
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        errs: list[list[str]] = [[], []]
        readers = [
            threading.Thread(target=lambda p=p, e=e: e.extend(p.stderr), daemon=True) for p, e in zip(procs, errs)
        ]
        for r in readers:
            r.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not all(any("waiting up to" in line for line in e) for e in errs):
            assert all(p.poll() is None for p in procs), errs
            time.sleep(0.2)
        assert all(any("waiting up to" in line for line in e) for e in errs), errs
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for r in readers:
        r.join(10)
    assert [p.returncode for p in procs] == [0, 0], errs
    summaries = sorted((json.loads(o) for o in outs), key=lambda s: s["files_ingested"])
    assert (summaries[0]["files_ingested"], summaries[0]["files_unchanged"]) == (0, 4)
    assert (summaries[1]["files_ingested"], summaries[1]["chunks_added"]) == (4, summaries[1]["chunks_total"])
    held, stored, journal = _counts(cfg)
    assert held == stored and journal == 0 and len(held) == summaries[1]["chunks_total"]


# --- the vector store heals -----------------------------------------------------------------------


def _delete_chroma(cfg) -> None:
    """rm -rf chroma/ as a user would between two commands (each command is a new process, so
    this process's cached Chroma system is dropped too)."""
    from chromadb.api.client import SharedSystemClient

    shutil.rmtree(cfg.chroma_dir)
    SharedSystemClient.clear_system_cache()


def test_a_deleted_chroma_dir_is_noticed_and_reconciled(cfg, embedder, tmp_path, caplog):
    from typer.testing import CliRunner

    from app.cli import app
    from tether.cli import CliOptions

    folder = _folder(tmp_path / "kb", 3, "fig")
    first = ingest(cfg, [folder], embedder=embedder)
    n = first.chunks_total
    assert n > 0 and first.vectors_restored == 0
    _delete_chroma(cfg)

    # search still answers (BM25), but says the dense half is empty, once
    searcher = Searcher(cfg, embedder=embedder)
    try:
        health = searcher.health()
        assert not health.ok and health.dense_vectors == 0 and health.ledger_chunks == n
        assert "is empty" in health.warning and "tether doctor --repair" in health.warning
        searcher._health = None  # as a fresh searcher that did not ask first
        caplog.clear()
        assert searcher.search("fig rule number 2", k=2)
        searcher.search("fig rule number 1", k=2)
        assert sum("vector store of collection" in r.getMessage() for r in caplog.records) == 1
    finally:
        searcher.close()

    runner = CliRunner()
    opts = CliOptions(data_dir=cfg.data_dir)
    res = runner.invoke(app, ["search", "fig rule number 2", "-k", "1"], obj=opts)
    assert res.exit_code == 0 and "warning: the vector store of collection 'tether' is empty" in res.stderr

    res = runner.invoke(app, ["doctor"], obj=opts)
    assert res.exit_code == 1, res.output
    assert (
        f"vector store: PROBLEM: {n} chunks of 3 documents in the ledger, 0 vectors: {n} chunks without a vector"
        in res.stdout
    )
    assert "run `tether doctor --repair`" in res.stdout

    # the next ingest reconciles, and counts it
    again = ingest(cfg, [folder], embedder=embedder)
    assert len(again.unchanged) == 3 and again.chunks_added == 0
    assert again.vectors_restored == n and again.to_json()["vectors_restored"] == n
    assert any(
        line.startswith(f"reconciled: the vector store was out of step with the ledger: {n} missing")
        for line in again.report_lines()
    )
    held, stored, journal = _counts(cfg)
    assert held == stored and len(held) == n
    searcher = Searcher(cfg, embedder=embedder)
    try:
        assert searcher.health().ok
        assert searcher.search("fig rule number 2", k=1)[0].dense_score is not None
    finally:
        searcher.close()

    # an orphan vector (the ledger does not know it) goes on the next ingest, counted
    store = ChromaStore(cfg)
    store.upsert(
        ["stray-id"],
        embedder.embed_batch(["a stray vector"]),
        [{"source": "nowhere.md", "date": 0, "doc_hash": "x", "seq": 0}],
    )
    third = ingest(cfg, [folder], embedder=embedder)
    assert (third.vectors_restored, third.vectors_removed) == (0, 1)
    assert "stray-id" not in set(ChromaStore(cfg).all_ids())


def test_doctor_checks_and_repairs_vectors_bm25_and_the_journal(cfg, embedder, tmp_path):
    folder = _folder(tmp_path / "kb", 2, "kiwi")
    ingest(cfg, [folder], embedder=embedder)
    report = doctor(cfg)
    assert report.exit_code == 0 and not report.problems
    assert [c.name for c in report.checks] == ["database", "journal", "vector store", "bm25"]

    name = cfg.retrieval.collection
    store = ChromaStore(cfg)
    victim = sorted(store.all_ids())[0]
    store.delete([victim])
    store.upsert(
        ["orphan-1"], embedder.embed_batch(["orphan"]), [{"source": "x", "date": 0, "doc_hash": "x", "seq": 0}]
    )
    with Ledger.open(cfg.db_path) as led:
        led.journal_add(name, ["journaled-but-never-written"])
    shutil.rmtree(cfg.bm25_dir / name)

    report = doctor(cfg)
    assert report.exit_code == 1
    assert {c.name for c in report.problems} == {"journal", "vector store", "bm25"}
    assert "1 chunks without a vector, 1 vectors without a chunk" in next(
        c.detail for c in report.checks if c.name == "vector store"
    )

    repaired = doctor(cfg, repair=True, embedder=embedder)
    assert repaired.exit_code == 0 and all(c.repaired for c in repaired.problems)
    after = doctor(cfg)
    assert after.exit_code == 0 and not after.problems
    held, stored, journal = _counts(cfg)
    assert held == stored and victim in stored and "orphan-1" not in stored and journal == 0


def test_doctor_reports_a_database_that_is_not_one(cfg, tmp_path):
    from typer.testing import CliRunner

    from app.cli import app
    from tether.cli import CliOptions

    cfg.data_dir.mkdir(parents=True)
    cfg.db_path.write_bytes(b"this is not a database at all" * 100)
    report = doctor(cfg)
    assert (
        report.exit_code == 1 and report.checks[0].name == "database" and "cannot be opened" in report.checks[0].detail
    )
    res = CliRunner().invoke(app, ["doctor"], obj=CliOptions(data_dir=cfg.data_dir))
    assert res.exit_code == 1 and "database: PROBLEM" in res.stdout and ".recover" in res.stdout
