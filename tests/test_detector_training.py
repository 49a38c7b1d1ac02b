"""``tether train detector``: the pairs it builds, a tiny training run that resumes, the registry row,
the dev gate, promotion, and the detector that uses the classifier only once promoted.

The base model is a tiny random BERT built here (hidden 32, one layer) with MiniLM's tokenizer, so a
run takes seconds on the CPU; the real run (MiniLM, thousands of pairs) is measured in
docs/CONFLICTS.md.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from retrieval.conflicts import Claim, ClassifierConflictDetector, RuleConflictDetector, get_detector
from training.detector import (
    LABELS,
    DetectorConfig,
    Pair,
    build_pairs,
    gate,
    pairs_manifest,
    read_pairs,
    run,
    train,
    write_pairs,
)

CLAIMS = [
    Claim("Requests for leave must be submitted at least 3 weeks in advance.", "leave.md"),
    Claim("The daily meal allowance is EUR 40 per day for trips abroad.", "travel.md"),
    Claim("Visitors are not allowed in the workshop without an escort.", "safety.md"),
    Claim("Purchases above EUR 5,000 are approved by the Finance Director.", "purchasing.md"),
    Claim("The audit takes place on 12 May 2025 in the main office.", "audit.md"),
    Claim("Night mode is enabled for all dashboards by default.", "dashboards.md"),
    Claim("Backups are kept for 30 days, which covers the monthly review.", "it.md"),
    Claim("Support tickets are handled by the Service Desk team.", "support.md"),
]


def test_pairs_cover_every_label_and_the_rewrites_say_what_they_did():
    pairs = build_pairs(CLAIMS, max_pairs=60, seed=1)
    labels = {p.label for p in pairs}
    assert labels == set(LABELS)
    hows = {p.how for p in pairs}
    assert {"value-swap", "negation", "unrelated"} <= hows and hows & {"paraphrase", "unit-equivalent", "clause-drop"}
    for p in pairs:
        assert p.a != p.b
        if p.how == "unrelated":
            assert p.label == 2
        elif p.how in ("value-swap", "negation", "owner-swap", "date-shift", "antonym"):
            assert p.label == 0
        else:
            assert p.label == 1
    weeks = [p for p in pairs if p.how == "unit-equivalent" and "3 weeks" in p.a + p.b]
    assert all("21 days" in p.a + p.b for p in weeks)
    m = pairs_manifest(pairs)
    assert m["pairs"] == len(pairs) and sum(m["by_label"].values()) == len(pairs)
    assert build_pairs(CLAIMS, max_pairs=60, seed=1) == pairs  # seeded


def test_detector_config_names_every_bad_flag():
    from tether.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        DetectorConfig(out_dir="x", max_pairs=0, epochs=0, max_minutes=0, max_steps=0).validated()
    text = str(err.value)
    assert all(flag in text for flag in ("--max-pairs", "--epochs", "--max-minutes", "--max-steps"))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from retrieval.embeddings import resolve_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(resolve_model_path("all-MiniLM-L6-v2")), local_files_only=True)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def data_cfg(tmp_path):
    from tether.config import load_config

    return load_config(tmp_path / "data")


def _pairs() -> list[Pair]:
    return build_pairs(CLAIMS, max_pairs=24, seed=0)


def test_a_tiny_run_trains_checkpoints_and_resumes(tiny_base, data_cfg, tmp_path):
    out = tmp_path / "det"
    dcfg = DetectorConfig(out_dir=str(out), max_steps=2, batch_size=4, save_steps=1, base=str(tiny_base))
    first = train(data_cfg, dcfg, pairs=_pairs())
    assert first.finished and first.steps == 2 and first.resumed_from is None
    assert read_pairs(out / "pairs.jsonl") == _pairs()
    config = json.loads((out / "model" / "config.json").read_text())
    assert {int(k): v for k, v in config["id2label"].items()} == LABELS
    card = json.loads((out / "model" / "tether-detector.json").read_text())
    assert card["steps"] == 2 and card["pairs"]["pairs"] == len(_pairs())
    # the same folder, more steps: it resumes from the last checkpoint, on the pairs it saved
    seen = []
    again = train(data_cfg, replace(dcfg, max_steps=4), on_step=lambda s, t, loss: seen.append((s, t)))
    assert again.finished and again.steps == 4 and again.resumed_from and again.resumed_from.endswith("checkpoint-2")
    assert seen and seen[-1][1] == 4


def test_a_run_stopped_by_the_clock_is_resumable_and_not_registered(tiny_base, data_cfg, tmp_path):
    from training.registry import TrainingStore

    dcfg = DetectorConfig(
        out_dir=str(tmp_path / "det"), max_steps=50, batch_size=4, save_steps=1, base=str(tiny_base), max_minutes=1e-4
    )
    res, report = run(data_cfg, dcfg, pairs=_pairs())
    assert not res.finished and report is None and res.steps < 50 and res.registered_id is None
    assert any(p.name.startswith("checkpoint-") for p in (tmp_path / "det" / "checkpoints").iterdir())
    with TrainingStore.open(data_cfg.db_path) as store:
        assert store.list_detectors() == []
        job = store.list_jobs()[0]
    assert job["method"] == "detector" and job["status"] == "interrupted"


def _cases(path: Path) -> Path:
    rows = [
        {
            "id": "x1",
            "conflict": True,
            "kind": "polarity",
            "split": "dev",
            "a": {"source": "a.md", "text": "Visitors are allowed in the workshop without an escort."},
            "b": {"source": "b.md", "text": "Visitors are not allowed in the workshop without an escort."},
            "resolution": {},
        },
        {
            "id": "x2",
            "conflict": False,
            "lookalike": "paraphrase",
            "split": "dev",
            "a": {"source": "a.md", "text": "Night mode is enabled for all dashboards by default."},
            "b": {"source": "c.md", "text": "The canteen opens at noon on weekdays for all staff."},
        },
        {
            "id": "x3",
            "conflict": True,
            "kind": "numeric",
            "split": "test",
            "a": {"source": "a.md", "text": "The meal allowance is EUR 40 per day."},
            "b": {"source": "b.md", "text": "The meal allowance is EUR 55 per day."},
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_registered_gated_and_used_only_once_promoted(tiny_base, data_cfg, tmp_path, embedder):
    from assistant.engine import promoted_classifier
    from training.registry import RegistryModelSource, TrainingStore

    cases = _cases(tmp_path / "cases.jsonl")
    dcfg = DetectorConfig(out_dir=str(tmp_path / "det"), max_steps=2, batch_size=4, base=str(tiny_base))
    res, report = run(data_cfg, dcfg, pairs=_pairs(), gate_sets=[cases], promote=True)
    assert res.finished and res.registered_id
    assert report["split"] == "dev" and report["sets"][str(cases)]["cases"] == 2  # the dev half only
    assert report["threshold"] in [float(t) for t in report["by_threshold"]]
    with TrainingStore.open(data_cfg.db_path) as store:
        (rec,) = store.list_detectors()
        assert rec.id == res.registered_id and rec.gate["threshold"] == report["threshold"]
        assert (store.promoted_detector() is not None) == report["passed"]
    card = json.loads((res.model_dir / "tether-detector.json").read_text())
    assert card["threshold"] == report["threshold"] and card["steps"] == 2
    # promoted (by hand here, as a passing gate does): the engine's source names it, get_detector uses it
    with TrainingStore.open(data_cfg.db_path) as store:
        store.promote_detector(res.registered_id)
        assert store.promoted_detector().id == res.registered_id
    path = promoted_classifier(data_cfg, RegistryModelSource())
    assert path == Path(rec.path)
    det = get_detector(embedder, config=data_cfg.conflicts, classifier=path)
    assert isinstance(det, ClassifierConflictDetector) and det.threshold == report["threshold"]
    assert isinstance(get_detector(embedder, config=data_cfg.conflicts), RuleConflictDetector)  # not promoted: rules
    # rules decide where values are normalised: an equivalent unit is never sent to the classifier
    a = Claim("Requests must be submitted 3 weeks in advance.", "a.md")
    b = Claim("Requests must be submitted 21 days in advance.", "b.md")
    assert det.score(a, b) == (None, None)
    # a wording pair on one subject reaches it
    found, p = det.score(
        Claim("Visitors are allowed in the workshop without an escort.", "a.md"),
        Claim("Visitors must always be escorted in the workshop.", "b.md"),
    )
    assert found is None and p is not None and 0.0 <= p <= 1.0
    # the gate itself: figures for rules and classifier on every set
    again = gate(data_cfg, res.model_dir, [cases], embedder=embedder)
    assert set(again["sets"][str(cases)]) == {"cases", "rules_f1", "classifier_f1"}


def test_the_command_is_mounted(tmp_path):
    from typer.testing import CliRunner

    from app.cli import app

    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path / "d"), "train", "detector", "--help"])
    assert result.exit_code == 0, result.output
    for flag in ("--max-pairs", "--max-minutes", "--gate-cases", "--no-promote"):
        assert flag in result.output


def test_pairs_round_trip_through_jsonl(tmp_path):
    pairs = _pairs()
    write_pairs(pairs, tmp_path / "p.jsonl")
    assert read_pairs(tmp_path / "p.jsonl") == pairs
