"""``tether train reranker`` (training/reranker.py) and the Searcher's use of a promoted reranker.

Tier (b)/(c): a small generated corpus ingested with the real MiniLM embedder, a real CrossEncoder
trained for a few steps from the shipped MiniLM weights on the CPU, the real registry in SQLite.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from retrieval.search import rerank_order
from tests import test_light_imports
from tether.cli import CliOptions, with_promoted_reranker
from tether.config import load_config
from tether.errors import ConfigError
from training import reranker as R
from training.registry import RegistryModelSource, TrainingStore

light_home = test_light_imports.light_home  # the session fixture, shared with that module

# Six small manuals in the style of reference documentation: a heading per option, one fact each.
TOPICS = {
    "cache.md": [
        ("cache_size", "The cache_size option sets how many megabytes the block cache may hold; the default is 64."),
        ("cache_ttl", "Entries older than cache_ttl seconds are evicted on the next sweep of the cache."),
        ("cache_policy", "The eviction order is least recently used unless cache_policy names another one."),
        ("cache_warmup", "At start-up the cache is filled from the snapshot when cache_warmup is enabled."),
    ],
    "network.md": [
        ("listen_port", "The server accepts connections on listen_port, which defaults to 7400."),
        ("max_clients", "No more than max_clients sessions are served at once; further clients are refused."),
        ("idle_timeout", "A session without traffic for idle_timeout minutes is closed by the server."),
        ("tls_mode", "Encrypted transport is required when tls_mode is strict, and optional when it is lax."),
    ],
    "storage.md": [
        ("data_dir", "All tables live below data_dir, which must be writable by the service account."),
        ("fsync", "With fsync off, a power failure can lose the last second of committed writes."),
        ("compression", "Pages are compressed with zstd when compression is set to on."),
        ("checkpoint_every", "A checkpoint is written every checkpoint_every seconds, by default 300."),
    ],
    "logging.md": [
        ("log_level", "Messages below log_level are dropped; the levels are debug, info, warning and error."),
        ("log_rotate", "The log file is rotated when it grows past log_rotate megabytes."),
        ("log_format", "Each line is written as JSON when log_format is json, and as plain text otherwise."),
        ("slow_query_ms", "Queries that take longer than slow_query_ms milliseconds are logged with their plan."),
    ],
    "backup.md": [
        ("backup_window", "Nightly backups start at the hour given by backup_window, in local time."),
        ("backup_keep", "Only the newest backup_keep archives are kept; older ones are deleted."),
        ("backup_verify", "Every archive is read back and checksummed when backup_verify is enabled."),
        ("restore_target", "A restore replays the journal up to restore_target, a timestamp or a label."),
    ],
    "auth.md": [
        ("password_hash", "Passwords are stored as scrypt hashes unless password_hash selects argon2."),
        ("lockout_after", "An account is locked for ten minutes after lockout_after failed sign-ins."),
        ("token_lifetime", "Access tokens expire after token_lifetime hours and must then be renewed."),
        ("admin_group", "Members of admin_group may change settings of the running server."),
    ],
}


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sections in TOPICS.items():
        title = name.removesuffix(".md").title()
        body = [f"# {title} settings\n"]
        for option, fact in sections:
            body.append(f"## {option}\n\n{fact} Change {option} in the main configuration file and restart.\n")
        (folder / name).write_text("\n".join(body), encoding="utf-8")


@pytest.fixture(scope="module")
def corpus_cfg(tmp_path_factory, embedder):
    from retrieval.ingest import ingest

    tmp = tmp_path_factory.mktemp("rerank")
    write_corpus(tmp / "docs")
    cfg = load_config(tmp / "data").with_retrieval(chunk_size=48, chunk_overlap=4)
    summary = ingest(cfg, [tmp / "docs"], embedder=embedder)
    assert summary.chunks_total >= 20
    return cfg


@pytest.fixture(scope="module")
def trained(corpus_cfg, tmp_path_factory):
    """One tiny training run (seconds): register, gate, promote when it wins."""
    out = tmp_path_factory.mktemp("rerank-out") / "work"
    rcfg = R.RerankerConfig(
        out_dir=str(out),
        max_questions=60,
        max_steps=24,
        batch_size=8,
        max_length=96,
        learning_rate=1e-4,
        save_steps=8,
        heldout=0.2,
        top_n=10,
    )
    gate_qa = out.parent / "gate.jsonl"
    gate_qa.write_text(
        "\n".join(
            json.dumps({"question": q, "evidence": [fact], "split": "dev"})
            for q, fact in (
                ("How many sessions are served at once at most?", TOPICS["network.md"][1][1]),
                ("What happens to old backup archives?", TOPICS["backup.md"][1][1]),
            )
        )
    )
    res, report = R.run(corpus_cfg, rcfg, gate_qa=[gate_qa], command="tether train reranker --max-steps 24")
    return rcfg, res, report


def test_questions_name_the_chunk_topic():
    from retrieval.ledger import ChunkRow

    row = ChunkRow(
        "c1",
        "idle_timeout\n\nA session without traffic for idle_timeout minutes is closed by the server.",
        0,
        80,
        None,
        1,
        "network.md",
        "Network",
        None,
        None,
        None,
        "Network settings > idle_timeout",
    )
    assert R.chunk_topic(row) == "idle_timeout"
    questions = R.synthetic_questions(row, random.Random(0), per_chunk=1)
    assert len(questions) == 1 and questions[0].chunk_id == "c1"
    assert "idle_timeout" in questions[0].text
    generic = ChunkRow("c2", "Back up first.", 0, 14, None, 1, "a.md", "A", None, None, None, "Upgrading > Note")
    assert R.chunk_topic(generic) == "Upgrading"


def test_pairs_never_use_a_negative_holding_the_question_sentence(corpus_cfg):
    chunks = R.collection_chunks(corpus_cfg, "the reranker")
    questions = R.make_questions(chunks, 30, seed=0)
    rcfg = R.RerankerConfig(out_dir="unused", same_doc_negatives=3, retrieved_negatives=0, random_negatives=1)
    pairs = R.build_pairs(chunks, questions, rcfg)
    by_query = {q.text: q for q in questions}
    assert {p.how for p in pairs} >= {"positive", "same-doc", "random"}
    for p in pairs:
        if p.label == 0.0:
            assert R._norm(by_query[p.query].sentence) not in R._norm(p.passage)


def test_config_problems_name_the_flag():
    with pytest.raises(ConfigError, match="--max-questions"):
        R.RerankerConfig(out_dir="x", max_questions=0).validated()
    with pytest.raises(ConfigError, match="--heldout"):
        R.RerankerConfig(out_dir="x", heldout=0.7).validated()


def test_training_writes_registers_and_loads(corpus_cfg, trained):
    rcfg, res, report = trained
    assert res.finished and res.steps == 24
    assert res.model_dir == Path(rcfg.out_dir) / "v1" and (res.model_dir / "config.json").is_file()
    assert not any(Path(rcfg.out_dir).glob(".v*.tmp-*"))  # the temporary folder was renamed into place
    run = yaml.safe_load((res.model_dir / "run.yaml").read_text())
    assert run["kind"] == "reranker" and run["collection"] == "tether"
    assert run["config"]["max_steps"] == 24 and run["data_hash"] == res.manifest["data_hash"]
    assert run["command"] == "tether train reranker --max-steps 24"
    with TrainingStore.open(corpus_cfg.db_path) as store:
        rows = store.list_rerankers("tether")
        promoted = store.promoted_reranker("tether")
        job = next(j for j in store.list_jobs() if j["id"] == res.job_id)
    assert [r.id for r in rows] == [res.registered_id]
    assert rows[0].path == str(res.model_dir.resolve()) and rows[0].gate == report
    assert set(report["sets"]) == {"heldout-synthetic", str(Path(rcfg.out_dir).parent / "gate.jsonl")}
    assert (promoted is not None) == report["passed"]  # decided by the labelled set, not the synthetic one
    labelled = report["sets"][str(Path(rcfg.out_dir).parent / "gate.jsonl")]
    gain = labelled["with"]["mrr"] - labelled["without"]["mrr"]
    lower = labelled["with"]["recall5"] < labelled["without"]["recall5"]
    assert report["passed"] == (gain > rcfg.min_mrr_gain and not lower)  # a gain within the noise margin is refused
    assert job["status"] == "done"
    from tether.crossencoder import load_cross_encoder

    model = load_cross_encoder(res.model_dir, setting="retrieval.reranker")
    scores = model.predict([("q", "a passage"), ("q", "another passage")], show_progress_bar=False)
    assert len(scores) == 2


def test_reranking_moves_the_gold_chunk_up(corpus_cfg, trained, embedder):
    """On the easy case (a question naming the option and its fact), the trained reranker puts the
    gold chunk at least as high as the fused order does, and higher where the fused order missed it."""
    from retrieval.search import Searcher

    _, res, _ = trained
    plain = Searcher(corpus_cfg.with_retrieval(reranker="off"), embedder=embedder)
    ranked = Searcher(corpus_cfg.with_retrieval(reranker=str(res.model_dir), rerank_top=10), embedder=embedder)
    questions = {
        "How many megabytes may the block cache hold by default?": "cache_size",
        "When are sessions without traffic closed?": "idle_timeout",
        "Which hash is used for stored passwords?": "password_hash",
        "How often is a checkpoint written?": "checkpoint_every",
    }
    before, after = [], []
    try:
        for q, option in questions.items():
            for searcher, ranks in ((plain, before), (ranked, after)):
                hits = searcher.search(q, k=10)
                ranks.append(next((i for i, h in enumerate(hits, 1) if option in h.text), 11))
        assert ranked.last_timings.rerank_ms > 0
        assert all(h.rerank_score is not None for h in ranked.search("cache size", k=3))
    finally:
        plain.close()
        ranked.close()
    assert sum(1 / r for r in after) >= sum(1 / r for r in before), (before, after)
    assert after.count(1) >= 3, (before, after)


def test_resume_after_a_stop(corpus_cfg, tmp_path):
    """Stopped by --max-minutes, the run leaves a checkpoint and no model; the same call resumes."""
    rcfg = R.RerankerConfig(
        out_dir=str(tmp_path / "work"),
        max_questions=16,
        max_steps=4,
        batch_size=4,
        max_length=64,
        save_steps=1,
        heldout=0.0,
        max_minutes=1e-6,
    )
    pairs, _, manifest = R.prepare(corpus_cfg, rcfg)
    first = R.train(corpus_cfg, rcfg, pairs, manifest)
    assert not first.finished and first.steps < 4
    assert any((tmp_path / "work" / "checkpoints").glob("checkpoint-*"))
    assert not (tmp_path / "work" / "v1").exists()
    again = R.prepare(corpus_cfg, rcfg)[0]
    assert again == pairs  # read back, not rebuilt
    second = R.train(corpus_cfg, R.RerankerConfig(**{**rcfg.__dict__, "max_minutes": 10.0}), pairs, manifest)
    assert second.finished and second.steps == 4 and second.resumed_from
    assert (tmp_path / "work" / "v1" / "run.yaml").is_file()


def test_rerank_order_mixes_rankings():
    fused = [("a", 0.3), ("b", 0.2), ("c", 0.1)]
    scores = {"a": 0.1, "b": 0.9, "c": 0.5}
    assert [c for c, _ in rerank_order(fused, scores, 1.0, 20)] == ["b", "c", "a"]
    # weight 0.5: b (ranks 1 and 2) beats a (3 and 1) beats c (2 and 3)
    assert [c for c, _ in rerank_order(fused, scores, 0.5, 20)] == ["b", "a", "c"]
    assert dict(rerank_order(fused, scores, 0.5, 20)) == dict(fused)  # the fused scores travel with the ids


def test_promoted_reranker_reaches_the_config(tmp_path):
    cfg = load_config(tmp_path / "data")
    folder = tmp_path / "rr"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    source = RegistryModelSource()
    assert with_promoted_reranker(cfg, source).retrieval.reranker is None  # no database yet
    with TrainingStore.open(cfg.db_path) as store:
        rid = store.register_reranker(collection="tether", path=str(folder), base="all-MiniLM-L6-v2")
        other = store.register_reranker(collection="elsewhere", path=str(folder), base="all-MiniLM-L6-v2")
        store.promote_reranker(other)
    assert with_promoted_reranker(cfg, source).retrieval.reranker is None  # another collection's
    with TrainingStore.open(cfg.db_path) as store:
        store.promote_reranker(rid)
    assert with_promoted_reranker(cfg, source).retrieval.reranker == str(folder)
    assert with_promoted_reranker(cfg.with_retrieval(reranker="off"), source).retrieval.reranker_path is None
    assert with_promoted_reranker(cfg, object()).retrieval.reranker is None  # a source without rerankers
    opts = CliOptions(data_dir=tmp_path / "data", model_source=source)
    assert opts.load().retrieval.reranker == str(folder)
    with TrainingStore.open(cfg.db_path) as store:
        store.retire_reranker(rid)
        assert store.promoted_reranker("tether") is None
    assert opts.load().retrieval.reranker is None


def test_gate_items_from_a_labelled_set(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [
        {"question": "a?", "evidence": ["x"], "split": "dev"},
        {"question": "b?", "evidence": "y", "split": "test"},
        {"question": "c?", "evidence": [], "unanswerable": True, "split": "dev"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert [i.question for i in R.load_gate_items(path, "dev")] == ["a?"]
    with pytest.raises(ConfigError, match="no answerable item"):
        R.load_gate_items(path, "nope")


def test_search_with_an_unpromoted_reranker_imports_no_torch(light_home):
    """A registered reranker that is not promoted (or one promoted but switched off) leaves
    ``tether search`` free of torch."""
    from tests.test_light_imports import HEAVY, run_tether

    data, tmp = light_home
    folder = tmp / "fake-reranker"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    with TrainingStore.open(data / "tether.db") as store:
        rid = store.register_reranker(collection="tether", path=str(folder), base="all-MiniLM-L6-v2")
    proc, loaded = run_tether(data, "search", "Who approves business trips?", "--json", tmp=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
    with TrainingStore.open(data / "tether.db") as store:
        store.promote_reranker(rid)
    off = tmp / "rerank-off.yaml"
    off.write_text("retrieval:\n  reranker: 'off'\n", encoding="utf-8")
    try:
        proc, loaded = run_tether(data, "search", "Who approves business trips?", "--json", tmp=tmp, config=off)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert not loaded & HEAVY, sorted(loaded & HEAVY)
        proc, _ = run_tether(data, "search", "Who approves business trips?", "--json", tmp=tmp)
        assert proc.returncode == 2 and "cannot load the reranker" in proc.stderr  # promoted: it is used
    finally:
        with TrainingStore.open(data / "tether.db") as store:
            store.retire_reranker(rid)
