"""Ingestion with real parts: the MiniLM embedder, an on-disk Chroma, a SQLite ledger."""

import json
import os

import pytest

from retrieval import ledger
from retrieval.ingest import ingest
from retrieval.store import ChromaStore
from tests.corpus import make_corpus, write_zip_bomb
from tether.db import connect


def _state(cfg):
    db = connect(cfg.db_path)
    try:
        docs = {d.source: d for d in ledger.documents(db, cfg.retrieval.collection)}
        rows = db.execute(
            "SELECT c.id, c.text, c.start_char, c.end_char, c.page, d.source, d.text AS doc_text FROM chunks c "
            "JOIN documents d ON d.id = c.document_id"
        ).fetchall()
        journal = db.execute("SELECT COUNT(*) FROM store_journal").fetchone()[0]
    finally:
        db.close()
    store_ids = set(ChromaStore(cfg).all_ids())
    return docs, rows, store_ids, journal


def test_ingest_folder_of_every_format(cfg, embedder, tmp_path):
    folder = make_corpus(tmp_path / "kb")
    summary = ingest(cfg, [folder], embedder=embedder)
    assert summary.exit_code == 0
    assert sorted(f.source for f in summary.ingested) == [
        "faq.txt",
        "lab/lab-safety.docx",
        "leave.md",
        "security.html",
        "travel.pdf",
    ]
    docs, rows, store_ids, journal = _state(cfg)
    assert journal == 0
    assert store_ids == {r["id"] for r in rows}
    assert summary.chunks_total == len(rows) == summary.chunks_added
    # every span maps back to the stored source text, and for md/txt to the file itself
    for r in rows:
        assert r["doc_text"][r["start_char"] : r["end_char"]] == r["text"]
        if r["source"] in ("leave.md", "faq.txt"):
            raw = (folder / r["source"]).read_text(encoding="utf-8")
            assert raw[r["start_char"] : r["end_char"]] == r["text"]
    # front matter is metadata, never chunk text
    assert all("status: current" not in r["text"] for r in rows)
    assert docs["leave.md"].doc_date == "2024-01-15" and docs["leave.md"].authority == "official"
    assert docs["security.html"].title == "IT Security Standard"
    assert docs["faq.txt"].authority == "informal"
    assert {r["page"] for r in rows if r["source"] == "travel.pdf"} <= {1, 2, 3}
    assert all(r["page"] is None for r in rows if r["source"] != "travel.pdf")
    html_text = " ".join(r["text"] for r in rows if r["source"] == "security.html")
    assert "Passwords must be at least 14 characters" in html_text and "ignore all previous" not in html_text


def test_token_counts_are_never_truncated(embedder):
    text = "word " * 1000
    assert len(embedder.count_tokens(text)) == 1000
    # counting must not change how the model itself truncates
    assert embedder.embed_batch([text]).shape == (1, embedder.dim)


def test_default_chunks_stay_within_the_embedder_window(cfg, embedder, tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    paragraphs = [
        " ".join(f"Clause {p}.{i} sets the limit for item {i} to {i * 7} units per week." for i in range(12))
        for p in range(30)
    ]
    (folder / "long.md").write_text("\n\n".join(paragraphs), encoding="utf-8")
    ingest(cfg, [folder], embedder=embedder)
    _, rows, _, _ = _state(cfg)
    sizes = [len(embedder.count_tokens(r["text"])) for r in rows]
    assert len(rows) >= 20
    assert max(sizes) <= cfg.retrieval.chunk_size <= embedder.max_tokens


def test_chunks_are_token_bounded_with_overlap(cfg, embedder, tmp_path):
    folder = tmp_path / "long"
    folder.mkdir()
    sentences = [
        f"Rule {i}: the committee reviews item number {i} every {i % 7 + 1} weeks in room {100 + i}."
        for i in range(120)
    ]
    (folder / "rules.md").write_text("# Rules\n\n" + " ".join(sentences), encoding="utf-8")
    cfg = cfg.with_retrieval(chunk_size=64, chunk_overlap=16)
    ingest(cfg, [folder], embedder=embedder)
    _, rows, _, _ = _state(cfg)
    rows = sorted(rows, key=lambda r: r["start_char"])
    assert len(rows) > 10
    for r in rows:
        assert len(embedder.count_tokens(r["text"])) <= 64
    overlaps = sum(1 for a, b in zip(rows, rows[1:]) if b["start_char"] < a["end_char"])
    assert overlaps >= len(rows) // 2


def test_reingest_is_incremental_and_prune_removes_deleted_files(cfg, embedder, tmp_path):
    folder = make_corpus(tmp_path / "kb")
    first = ingest(cfg, [folder], embedder=embedder)
    _, rows1, store1, _ = _state(cfg)

    again = ingest(cfg, [folder], embedder=embedder)
    assert len(again.unchanged) == 5 and not again.ingested
    assert again.chunks_added == 0 and again.chunks_total == first.chunks_total
    _, rows2, store2, _ = _state(cfg)
    assert {r["id"] for r in rows2} == {r["id"] for r in rows1} and store2 == store1

    # a changed file replaces its old chunks, nothing else moves
    leave = folder / "leave.md"
    leave.write_text(leave.read_text().replace("25 working days", "27 working days"))
    changed = ingest(cfg, [folder], embedder=embedder)
    assert [f.source for f in changed.ingested] == ["leave.md"]
    docs, rows3, store3, journal = _state(cfg)
    assert journal == 0 and store3 == {r["id"] for r in rows3}
    leave_text = " ".join(r["text"] for r in rows3 if r["source"] == "leave.md")
    assert "27 working days" in leave_text and "25 working days" not in leave_text
    assert changed.chunks_removed == changed.chunks_added == docs["leave.md"].n_chunks

    # a sidecar edit is a change of the document too
    (folder / "faq.txt.meta.yaml").write_text("title: Company FAQ\ndate: 2023-06-01\nauthority: informal\n")
    assert [f.source for f in ingest(cfg, [folder], embedder=embedder).ingested] == ["faq.txt"]

    # without --prune a deleted file stays; with it, it goes from ledger, Chroma and BM25
    (folder / "travel.pdf").unlink()
    kept = ingest(cfg, [folder], embedder=embedder)
    assert "travel.pdf" in _state(cfg)[0] and kept.documents_pruned == []
    pruned = ingest(cfg, [folder], embedder=embedder, prune=True)
    assert pruned.documents_pruned == ["travel.pdf"]
    docs, rows4, store4, _ = _state(cfg)
    assert "travel.pdf" not in docs and store4 == {r["id"] for r in rows4}

    from retrieval.bm25 import BM25Index

    bm25 = BM25Index.load(cfg.bm25_dir / cfg.retrieval.collection)
    assert set(bm25.ids) == {r["id"] for r in rows4}


class Boom(Exception):
    pass


def test_killed_ingest_leaves_no_duplicate_or_missing_chunk(cfg, embedder, tmp_path, monkeypatch):
    folder = make_corpus(tmp_path / "kb")
    # reference: a clean ingest into another data dir
    from tether.config import load_config

    clean_cfg = load_config(tmp_path / "clean")
    ingest(clean_cfg, [folder], embedder=embedder)
    _, clean_rows, _, _ = _state(clean_cfg)

    # crash 1: after the third file's vectors reached Chroma, before its ledger commit
    calls = {"n": 0}
    real_commit = ledger.commit_document

    def crashing_commit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom("killed")
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(ledger, "commit_document", crashing_commit)
    with pytest.raises(Boom):
        ingest(cfg, [folder], embedder=embedder)
    monkeypatch.setattr(ledger, "commit_document", real_commit)
    docs, rows, store_ids, journal = _state(cfg)
    assert len(docs) == 2  # the files before the crash are whole, the third is absent
    assert journal > 0 and store_ids > {r["id"] for r in rows}  # orphans of the third file are journaled

    # crash 2: a changed file is committed but its old vectors not yet deleted
    summary = ingest(cfg, [folder], embedder=embedder)
    assert summary.exit_code == 0 and len(summary.ingested) == 3
    leave = folder / "leave.md"
    leave.write_text(leave.read_text() + "\nNew rule: leave requests use the HR portal.\n")
    real_delete = ChromaStore.delete

    def crashing_delete(self, ids):
        raise Boom("killed during delete")

    monkeypatch.setattr(ChromaStore, "delete", crashing_delete)
    with pytest.raises(Boom):
        ingest(cfg, [folder], embedder=embedder)
    monkeypatch.setattr(ChromaStore, "delete", real_delete)
    _, rows, store_ids, journal = _state(cfg)
    assert journal > 0 and store_ids > {r["id"] for r in rows}

    # the re-run repairs everything: the store holds exactly the ledger, the ledger the clean result
    ingest(cfg, [folder], embedder=embedder)
    leave.write_text(leave.read_text().replace("\nNew rule: leave requests use the HR portal.\n", ""))
    ingest(cfg, [folder], embedder=embedder)
    docs, rows, store_ids, journal = _state(cfg)
    assert journal == 0
    assert store_ids == {r["id"] for r in rows}
    assert sorted((r["source"], r["text"]) for r in rows) == sorted((r["source"], r["text"]) for r in clean_rows)
    assert len(rows) == len({r["id"] for r in rows})


def test_bad_inputs_get_one_line_each_and_the_rest_proceeds(cfg, embedder, tmp_path):
    folder = make_corpus(tmp_path / "kb")
    (folder / "empty.md").write_bytes(b"")
    (folder / "blank.txt").write_text("   \n \n")
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(2000))
    (folder / "corrupt.docx").write_bytes(b"PK\x03\x04garbage")
    (folder / "binary.txt").write_bytes(os.urandom(4096) + b"\x00" * 16)
    (folder / "latin1.txt").write_bytes(
        "Le café de l'hôtel ouvre à 7h; le thé est servi à côté du théâtre.\n".encode("cp1252") * 4
    )
    (folder / "huge.md").write_text("x " * 700_000)
    write_zip_bomb(folder / "bomb.docx", inflated_mb=30)
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(100))
    (folder / "notes.md").write_text("---\ntitle: [broken\n---\nbody text here\n")
    outside = tmp_path / "secret.md"
    outside.write_text("# Secret\n\nThe vault code is 4711.\n")
    (folder / "escape.md").symlink_to(outside)
    (folder / "dangling.md").symlink_to(tmp_path / "missing.md")
    (folder / "outdir").symlink_to(tmp_path, target_is_directory=True)

    cfg = cfg.with_retrieval(max_file_mb=1.0)
    summary = ingest(cfg, [folder], embedder=embedder)
    by_source = {f.source: f for f in summary.files}
    expect = {
        "empty.md": ("skipped", "empty file"),
        "blank.txt": ("skipped", "empty: no text"),
        "corrupt.pdf": ("failed", "corrupt PDF"),
        "corrupt.docx": ("failed", "corrupt DOCX"),
        "binary.txt": ("failed", "binary content"),
        "huge.md": ("skipped", "over the 1 MB limit"),
        "bomb.docx": ("failed", "zip bomb suspected"),
        "photo.jpg": ("skipped", "unsupported file type"),
        "notes.md": ("failed", "front matter is not valid YAML"),
        "escape.md": ("skipped", "symlink points outside the folder"),
        "dangling.md": ("skipped", "broken symlink"),
        "outdir": ("skipped", "symlink points outside the folder"),
    }
    for source, (status, reason) in expect.items():
        assert by_source[source].status == status, (source, by_source[source])
        assert reason in by_source[source].reason, (source, by_source[source].reason)
    assert by_source["latin1.txt"].status == "ingested"
    assert any("decoded as" in w for w in by_source["latin1.txt"].warnings)
    assert len(summary.ingested) == 6
    assert summary.exit_code == 1
    lines = summary.report_lines()
    for source in expect:
        assert sum(1 for line in lines if line.split(": ")[1] == source) == 1
    data = summary.to_json()
    assert data["files_failed"] == 5 and data["files_skipped"] == 7 and data["files_ingested"] == 6
    json.dumps(data)
    docs, rows, _, _ = _state(cfg)
    assert "4711" not in " ".join(r["text"] for r in rows)
    assert set(docs) == {"faq.txt", "lab/lab-safety.docx", "leave.md", "security.html", "travel.pdf", "latin1.txt"}


def test_missing_path_is_a_clear_error(cfg, tmp_path):
    from tether.errors import TetherError

    with pytest.raises(TetherError, match="does not exist"):
        ingest(cfg, [tmp_path / "nope"])


def test_a_collection_refuses_vectors_from_another_embedder(cfg, embedder, tmp_path):
    from tether.errors import ConfigError

    folder = make_corpus(tmp_path / "kb")
    ingest(cfg, [folder], embedder=embedder)
    other = cfg.with_retrieval(embed_int8=not cfg.retrieval.embed_int8)
    with pytest.raises(ConfigError, match="was embedded with"):
        ingest(other, [folder])
    ingest(other.with_retrieval(collection="other-one"), [folder])  # a new collection is fine
