"""Hybrid search over a real ingested folder (MiniLM + Chroma on disk + BM25)."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from retrieval.ingest import ingest
from retrieval.search import Searcher, SearchFilters, page_fuse, rrf_fuse
from tests.corpus import make_corpus
from tether.errors import IndexEmpty

ROOT = Path(__file__).resolve().parent.parent


def test_rrf_fuse_by_hand():
    fused = dict(rrf_fuse([["a", "b", "c"], ["c", "a"]], k=60))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["b"] == pytest.approx(1 / 62)
    assert [cid for cid, _ in rrf_fuse([["a", "b", "c"], ["c", "a"]], k=60)] == ["a", "c", "b"]
    # a tie (ranks swapped between the lists) goes to the first list's better rank, whatever the ids
    assert [cid for cid, _ in rrf_fuse([["z", "y"], ["y", "z"]], k=60)] == ["z", "y"]
    assert [cid for cid, _ in rrf_fuse([["a", "b"], ["b", "a"]], k=60)] == ["a", "b"]


def test_rrf_fuse_weights_each_list():
    fused = dict(rrf_fuse([["a", "b"], ["b", "a"]], k=10, weights=(1.0, 0.5)))
    assert fused["a"] == pytest.approx(1 / 11 + 0.5 / 12)
    assert fused["b"] == pytest.approx(1 / 12 + 0.5 / 11)
    assert [cid for cid, _ in rrf_fuse([["a", "b"], ["b", "a"]], k=10, weights=(0.5, 1.0))] == ["b", "a"]
    assert rrf_fuse([["a"], ["b"]], k=10, weights=(1.0, 1.0)) == rrf_fuse([["a"], ["b"]], k=10)


def test_page_fuse_lifts_chunks_of_the_strongest_page():
    # page 1 has two good chunks, page 2 one slightly better chunk: page 1 ranks first
    fused = [("p2a", 0.050), ("p1a", 0.049), ("p1b", 0.048), ("p3a", 0.047)]
    page_of = {"p2a": 2, "p1a": 1, "p1b": 1, "p3a": 3}
    out = page_fuse(fused, page_of, k=10, weight=1.0, best=2)
    scores = dict(out)
    assert scores["p1a"] == pytest.approx(0.049 + 1 / 11)
    assert scores["p2a"] == pytest.approx(0.050 + 1 / 12)
    assert scores["p3a"] == pytest.approx(0.047 + 1 / 13)
    assert [cid for cid, _ in out] == ["p1a", "p1b", "p2a", "p3a"]
    # with one chunk per page score, page 2's single best chunk wins
    assert [cid for cid, _ in page_fuse(fused, page_of, k=10, weight=1.0, best=1)][0] == "p2a"
    # a chunk without a page keeps its own score
    assert dict(page_fuse(fused, {"p1a": 1}, k=10, weight=1.0))["p2a"] == pytest.approx(0.050)


def test_page_fusion_puts_the_best_page_first(cfg, embedder, tmp_path):
    folder = make_corpus(tmp_path / "kb")
    ingest(cfg, [folder], embedder=embedder)
    # rrf_k=1: chunk scores lie in [0, 1]; page_weight=10 gives page ranks 1 and 2 a gap of 10/2 - 10/3 > 1
    base = cfg.with_retrieval(rrf_k=1)
    plain = Searcher(base, embedder=embedder)
    paged = Searcher(base.with_retrieval(page_weight=10.0, page_chunks=2), embedder=embedder)
    try:
        for query in ("how many days of annual leave", "who approves business trips", "password length"):
            fused = plain.search(query, k=100)  # every fused candidate, with its fused score
            per_page: dict[str, list[float]] = {}
            for h in fused:
                if len(per_page.setdefault(h.source, [])) < 2:
                    per_page[h.source].append(h.score)
            best = max(per_page, key=lambda src: sum(per_page[src]))
            top = paged.search(query, k=3)
            assert top[0].source == best
            own_best = max((h for h in fused if h.source == best), key=lambda h: h.score)
            assert top[0].id == own_best.id  # inside the page, the chunk order is the fused one
    finally:
        plain.close()
        paged.close()


@pytest.fixture
def searcher(cfg, embedder, tmp_path):
    folder = make_corpus(tmp_path / "kb")
    ingest(cfg, [folder], embedder=embedder)
    s = Searcher(cfg, embedder=embedder)
    yield s
    s.close()


def test_lexical_query_ranks_the_known_passage_first(searcher):
    hits = searcher.search("finance director approval", k=3)
    assert hits[0].source == "travel.pdf" and "finance director" in hits[0].text
    assert hits[0].bm25_score is not None and hits[0].page in (1, 2, 3)


def test_paraphrase_query_ranks_the_known_passage_first(searcher):
    # no content word shared with "Safety goggles are mandatory in every laboratory"
    hits = searcher.search("must I put on eye protection when working with chemicals?", k=3)
    assert hits[0].source == "lab/lab-safety.docx"
    hits = searcher.search("how much holiday do staff get each year", k=3)
    assert hits[0].source == "leave.md" and "25 working days" in hits[0].text


def test_hits_carry_metadata_and_spans(searcher, cfg):
    hit = searcher.search("canteen opening hours", k=1)[0]
    assert (
        hit.source == "faq.txt"
        and hit.title == "Company FAQ"
        and hit.authority == "informal"
        and hit.date == "2023-06-01"
        or hit.date == "2023-05-01"
    )
    raw = (Path(cfg.data_dir).parent / "kb" / "faq.txt").read_text()
    assert raw[hit.span[0] : hit.span[1]] == hit.text
    assert hit.rank == 1 and hit.score > 0 and hit.dense_score is not None


def test_filters_by_source_glob_and_date(searcher):
    hits = searcher.search("policy", k=10, filters=SearchFilters(source="*.pdf"))
    assert hits and {h.source for h in hits} == {"travel.pdf"}
    hits = searcher.search("rules", k=10, filters=SearchFilters(date_from="2024-02-01"))
    assert hits and all(h.date >= "2024-02-01" for h in hits)
    assert {h.source for h in hits} <= {"security.html", "travel.pdf"}
    hits = searcher.search("leave", k=10, filters=SearchFilters(date_from="2024-01-01", date_to="2024-01-31"))
    assert {h.source for h in hits} == {"leave.md"}
    assert searcher.search("leave", filters=SearchFilters(source="nothing/*")) == []


def test_search_never_returns_uncommitted_chunks(searcher):
    # a vector in Chroma that the ledger does not know (a crashed ingest) never surfaces
    import numpy as np

    vec = searcher.embedder.embed_batch(["how much holiday do staff get each year"])
    searcher.store.upsert(["orphan-1"], vec, [{"source": "ghost.md", "date": 0, "doc_hash": "x", "seq": 0}])
    hits = searcher.search("how much holiday do staff get each year", k=5)
    assert "orphan-1" not in {h.id for h in hits}
    assert np.isclose(np.linalg.norm(vec[0]), 1.0, atol=1e-4)


def test_empty_collection_is_a_clear_error(cfg, embedder):
    s = Searcher(cfg, embedder=embedder)
    with pytest.raises(IndexEmpty, match="run `tether ingest PATH` first"):
        s.search("anything")
    s.close()


def _tether(*args, env=None):
    import os

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=300
    )


@pytest.mark.slow
def test_cli_ingest_and_search_json(tmp_path):
    folder = make_corpus(tmp_path / "kb")
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.4 broken")
    data = tmp_path / "data"
    out = _tether("--data-dir", str(data), "ingest", str(folder), "--json")
    assert out.returncode == 1, out.stderr  # one file failed, the rest ingested
    summary = json.loads(out.stdout)
    assert summary["files_ingested"] == 5 and summary["files_failed"] == 1
    assert summary["failed"][0]["source"] == "corrupt.pdf" and "corrupt PDF" in summary["failed"][0]["reason"]
    out = _tether("--data-dir", str(data), "search", "finance director approval", "-k", "2", "--json")
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert len(hits) == 2
    assert {"id", "text", "source", "score", "span"} <= set(hits[0])
    assert hits[0]["source"] == "travel.pdf" and len(hits[0]["span"]) == 2
    out = _tether("--data-dir", str(data), "search", "x", "--from", "yesterday")
    assert out.returncode == 2 and "not a date" in out.stderr
    out = _tether("--data-dir", str(tmp_path / "empty"), "search", "anything")
    assert out.returncode == 2 and "tether ingest" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chroma_server(tmp_path):
    port = _free_port()
    chroma = Path(sys.executable).with_name("chroma")
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url + "/api/v2/heartbeat", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("chroma run exited") from None
                time.sleep(0.3)
        else:
            raise RuntimeError("chroma server did not start in 60 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
def test_server_path_against_a_real_chroma_server(chroma_server, tmp_path, embedder, monkeypatch):
    from retrieval.store import ChromaStore
    from tether.config import load_config

    monkeypatch.setenv("TETHER_CHROMA_URL", chroma_server)
    cfg = load_config(tmp_path / "data")
    assert cfg.retrieval.chroma_url == chroma_server
    folder = make_corpus(tmp_path / "kb")
    summary = ingest(cfg, [folder], embedder=embedder)
    assert summary.exit_code == 0
    assert not (cfg.chroma_dir).exists()  # nothing went to the embedded store
    store = ChromaStore(cfg)
    assert store.count() == summary.chunks_total
    s = Searcher(cfg, embedder=embedder)
    assert s.search("finance director approval", k=1)[0].source == "travel.pdf"
    s.close()


def test_server_down_is_a_clear_error(tmp_path, monkeypatch):
    from retrieval.store import ChromaStore
    from tether.config import load_config
    from tether.errors import BackendUnavailable

    monkeypatch.setenv("TETHER_CHROMA_URL", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(BackendUnavailable, match="not answering"):
        ChromaStore(load_config(tmp_path / "d"))


def test_cross_encoder_rerank_reorders_the_fused_candidates(cfg, embedder, tmp_path):
    """The rerank path with a real CrossEncoder (tiny, random, built here: none ships offline)."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from retrieval.embeddings import resolve_model_path

    tok = AutoTokenizer.from_pretrained(str(resolve_model_path("all-MiniLM-L6-v2")), local_files_only=True)
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=1,
        )
    )
    rdir = tmp_path / "reranker"
    model.save_pretrained(rdir)
    tok.save_pretrained(rdir)

    folder = make_corpus(tmp_path / "kb")
    cfg = cfg.with_retrieval(reranker=str(rdir), rerank_top=6, rerank_weight=1.0)  # the reranker's order alone
    ingest(cfg, [folder], embedder=embedder)
    s = Searcher(cfg, embedder=embedder)
    hits = s.search("finance director approval", k=4)
    seen = s.ledger.chunks_by_id([hits[0].id])[hits[0].id].index_text  # what the reranker read: heading + text
    s.close()
    assert all(h.rerank_score is not None for h in hits)
    assert [h.rerank_score for h in hits] == sorted((h.rerank_score for h in hits), reverse=True)
    expected = CrossEncoder(str(rdir), local_files_only=True).predict([("finance director approval", seen)])[0]
    assert hits[0].score == pytest.approx(float(expected), abs=1e-5)
    assert s.last_timings.rerank_ms > 0
