"""The registry with the real evaluation gate: a tiny random model regresses against the extractive
answerer and is refused; forcing promotes it; the engine contract; rollback."""

from __future__ import annotations

import json

import pytest

from tests.tiny_llm import make_lora_adapter, make_tiny_llm

pytestmark = pytest.mark.slow

SUITE = [
    {
        "id": "q1",
        "question": "When does the Halden canteen open?",
        "answers": ["07:45"],
        "contexts": ["The Halden office canteen opens at 07:45 and closes at 14:30 on weekdays."],
    },
    {
        "id": "q2",
        "question": "How many days of annual leave do employees get?",
        "answers": ["twenty-five days"],
        "contexts": [
            "Employees get twenty-five days of annual leave each year. Unused leave can be carried over until March."
        ],
    },
    {
        "id": "q3",
        "question": "Who approves business travel?",
        "answers": ["your manager"],
        "contexts": [
            "Business travel must be approved by your manager before booking. Receipts are submitted within 30 days."
        ],
    },
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    from tether.config import load_config
    from tether.db import connect
    from training.registry import register

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("registry")
    # the served default answers extractively; the candidate is a tiny random LLM
    cfg = load_config(root / "data").with_assistant(generator="extractive", max_new_tokens=12)
    suite = root / "suite.jsonl"
    suite.write_text("".join(json.dumps(r) + "\n" for r in SUITE))
    model = make_tiny_llm(root / "tiny")
    adapter = make_lora_adapter(model, root / "lora")
    db = connect(cfg.db_path)
    ids = [
        register(db, kind="adapter", path=str(adapter), base=str(model), adapter=str(adapter), method="sft")
        for _ in range(2)
    ]
    onnx = register(db, kind="onnx", path=str(root / "onnx"), base=str(model), adapter=str(adapter))
    db.close()
    yield {"cfg": cfg, "suite": suite, "ids": ids, "onnx": onnx, "model": model, "adapter": adapter}
    torch.set_num_threads(threads)


def test_promote_refused_by_a_failing_gate_then_forced_then_rolled_back(world):
    from tether.db import connect
    from training.registry import PromotionRefused, list_models, promote, promoted_model, rollback

    cfg, first, second = world["cfg"], *world["ids"]
    assert promoted_model(cfg) is None
    with pytest.raises(PromotionRefused, match="refused by the evaluation gate") as err:
        promote(cfg, first, world["suite"])
    assert not err.value.gate.passed and any(r.regressed for r in err.value.gate.rows)
    assert promoted_model(cfg) is None  # nothing changed
    db = connect(cfg.db_path)
    assert (
        db.execute(
            "SELECT COUNT(*) FROM model_eval_runs WHERE model_id = ? AND role = 'candidate'", (first,)
        ).fetchone()[0]
        == 1
    )
    # the candidate run is a real stored eval run of the tiny model
    run_id = db.execute("SELECT run_id FROM model_eval_runs WHERE model_id = ?", (first,)).fetchone()[0]
    assert db.execute("SELECT model, adapter FROM eval_runs WHERE id = ?", (run_id,)).fetchone()[1] == str(
        world["adapter"]
    )

    forced = promote(cfg, first, world["suite"], force=True)
    assert forced["forced"] and forced["previous_id"] is None and not forced["gate"]["passed"]
    assert promoted_model(cfg) == (world["model"], world["adapter"])
    assert [m.id for m in list_models(db) if m.promoted] == [first]

    # the same weights registered again: no regression against the served model -> promoted by the gate
    passed = promote(cfg, second, world["suite"])
    assert passed["gate"]["passed"] and not passed["forced"] and passed["previous_id"] == first
    # each model carries the gate of its promotion, and `tether models list` prints it
    gates = {m.id: m.gate for m in list_models(db)}
    assert gates[first]["passed"] is False and gates[second]["passed"] is True and gates[world["onnx"]] is None
    from typer.testing import CliRunner

    from app.cli import app

    listed = CliRunner().invoke(app, ["--data-dir", str(cfg.data_dir), "models", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    row = next(i for i, line in enumerate(lines) if second in line)
    assert lines[row].startswith("*") and lines[row + 1].strip().startswith("gate passed: ")
    assert "contains " in lines[row + 1] and " vs " in lines[row + 1]
    first_row = next(i for i, line in enumerate(lines) if first in line)
    assert lines[first_row + 1].strip().startswith("gate FAILED (forced): ") and "REGRESSED" in lines[first_row + 1]

    assert rollback(cfg) == first and promoted_model(cfg) == (world["model"], world["adapter"])
    assert rollback(cfg) is None and promoted_model(cfg) is None
    from tether.errors import TetherError

    with pytest.raises(TetherError, match="nothing to roll back"):
        rollback(cfg)


def test_a_held_out_corpus_can_refuse_what_the_training_corpus_passes(world, tmp_path):
    """The gate on the model's own corpus passes (both models miss an unreachable answer), the gate on
    a held-out corpus finds the regression: refused, nothing promoted, both held-out runs stored in
    that corpus's data dir; forced, the promotion records the failed held-out gate."""
    from tether.config import load_config
    from tether.db import connect
    from training.registry import PromotionRefused, promote, promoted_model, rollback

    cfg, candidate = world["cfg"], world["ids"][0]
    own = tmp_path / "own.jsonl"  # neither the served extractive answerer nor the tiny model can say this
    own.write_text(json.dumps({**SUITE[0], "id": "own", "answers": ["zz-no-such-answer"]}) + "\n")
    held = load_config(tmp_path / "held")
    connect(held.db_path).close()  # a data dir of another corpus (the suite carries its contexts)
    assert promoted_model(cfg) is None
    metrics = ["answers.contains"]
    passed_alone = promote(cfg, candidate, own, metrics=metrics, force=False)  # the own-corpus gate alone passes
    assert passed_alone["gate"]["passed"] and "held_out" not in passed_alone["gate"]
    rollback(cfg)
    with pytest.raises(PromotionRefused, match="held-out corpus") as err:
        promote(cfg, candidate, own, metrics=metrics, held_out=[(held.data_dir, world["suite"])])
    assert any(r.regressed for r in err.value.gate.rows)
    assert promoted_model(cfg) is None
    db = connect(held.db_path)
    labels = sorted(r[0].split(":")[0] for r in db.execute("SELECT label FROM eval_runs"))
    assert labels == ["held-out baseline", "held-out candidate"]
    forced = promote(cfg, candidate, own, metrics=metrics, held_out=[(held.data_dir, world["suite"])], force=True)
    assert forced["forced"] and not forced["gate"]["passed"]
    [h] = forced["gate"]["held_out"]
    assert h["passed"] is False and h["data_dir"] == str(held.data_dir)
    assert rollback(cfg) is None


def test_held_out_arguments_are_checked_on_the_command_line(world, tmp_path):
    from typer.testing import CliRunner

    from app.cli import app
    from tether.errors import ConfigError

    args = [
        "--data-dir",
        str(world["cfg"].data_dir),
        "models",
        "promote",
        world["ids"][0],
        "--suite",
        str(world["suite"]),
    ]
    for bad, message in (("no-colon", "give DATA_DIR:FILE"), (f"{tmp_path}:x.jsonl", "holds no tether.db")):
        res = CliRunner().invoke(app, [*args, "--held-out", bad])
        assert isinstance(res.exception, ConfigError) and message in str(res.exception)


def test_exports_the_engine_cannot_serve_are_not_promoted(world):
    from tether.errors import TetherError
    from training.registry import promote

    with pytest.raises(TetherError, match="the engine serves adapters"):
        promote(world["cfg"], world["onnx"], world["suite"])


def test_promoted_model_ignores_missing_files(world, tmp_path):
    from tether.config import load_config
    from tether.db import connect, transaction
    from training.registry import promoted_model, register

    cfg = load_config(tmp_path / "d")
    db = connect(cfg.db_path)
    mid = register(db, kind="merged", path=str(tmp_path / "gone"), base="x")
    with transaction(db):
        db.execute("INSERT INTO promotions (model_id, forced, created_at) VALUES (?, 1, 'now')", (mid,))
    assert promoted_model(cfg) is None


def test_admin_password_check(monkeypatch, tmp_path):
    from tether.errors import TetherError
    from training.admin import hash_password, require_admin, set_admin_password, verify_password

    h = hash_password("s3cret")
    assert verify_password("s3cret", h) and not verify_password("wrong", h)
    data = tmp_path / "data"
    # nothing configured: the CLI (local user) may act, the web app may not
    require_admin(data, None, surface="cli")
    with pytest.raises(TetherError, match="no admin password"):
        require_admin(data, "anything", surface="web")
    set_admin_password(data, "s3cret")
    require_admin(data, "s3cret", surface="web")
    for bad in (None, "nope"):
        with pytest.raises(TetherError, match="admin"):
            require_admin(data, bad, surface="cli")
    monkeypatch.setenv("TETHER_ADMIN_PASSWORD_HASH", hash_password("other"))
    require_admin(data, "other", surface="web")  # the environment wins over the file


def test_m004_training_schema():
    from tether.db import connect

    db = connect(":memory:")
    assert db.execute("SELECT 1 FROM _migrations WHERE name = 'm004_training'").fetchone()
    cols = {
        t: {r[1]: r[2] for r in db.execute(f"PRAGMA table_info({t})")}
        for t in ("datasets", "training_jobs", "models", "model_eval_runs", "promotions")
    }
    assert {"id", "kind", "hash", "n_train", "n_eval", "manifest_json"} <= set(cols["datasets"])
    assert {"status", "step", "total_steps", "loss", "log_path", "pid", "output_dir", "updated_at"} <= set(
        cols["training_jobs"]
    )
    assert {"kind", "path", "base", "adapter", "parent_id", "dataset_id", "config_json", "manifest_json"} <= set(
        cols["models"]
    )
    assert {"model_id", "previous_id", "forced", "gate_json", "rolled_back_at"} <= set(cols["promotions"])
    fks = {(r["table"], r["from"]) for r in db.execute("PRAGMA foreign_key_list(models)")}
    assert {("models", "parent_id"), ("datasets", "dataset_id"), ("training_jobs", "job_id")} <= fks
    import sqlite3

    import pytest

    with pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO training_jobs (id, method, status, config_json, output_dir, log_path, created_at, updated_at)"
            " VALUES ('j', 'sft', 'exploded', '{}', 'o', 'l', 'now', 'now')"
        )


def _adapt_run_yaml(passed: bool) -> str:
    import yaml

    verdict = {
        "passed": passed,
        "reason": "no regression" if passed else "answers.contains regressed",
        "rows": [
            {"metric": "answers.contains", "candidate": 0.31, "baseline": 0.25, "delta": 0.06, "regressed": False},
            {
                "metric": "grounding.groundedness",
                "candidate": 0.84,
                "baseline": 0.52,
                "delta": 0.32,
                "regressed": False,
            },
        ],
    }
    gate = {"model_id": "adapter-elsewhere", "promoted": passed, "suite": {"heldout": 20}, "gate": verdict}
    return yaml.safe_dump({"adapt": {"base_model": "smollm2", "lora_r": 4}, "report": {"gate": gate}})


def test_an_adapter_trained_elsewhere_is_added_once_and_served_on_its_recorded_gate(tmp_path):
    """`tether models add FOLDER --serve-recorded`: registered once per weights, served on the gate its run.yaml records, but never over a registry
    where an admin already promoted or rolled back."""
    from typer.testing import CliRunner

    from app.cli import app
    from tether.config import load_config
    from tether.db import connect
    from tether.errors import TetherError
    from training.registry import add_adapter, list_models, promoted_model, rollback

    model = make_tiny_llm(tmp_path / "tiny")
    shipped = make_lora_adapter(model, tmp_path / "shipped")
    (shipped / "run.yaml").write_text(_adapt_run_yaml(passed=True))
    data = tmp_path / "data"
    cfg = load_config(data)

    def tether(*args: str):
        return CliRunner().invoke(app, ["--data-dir", str(data), "models", *args])

    # user errors are TetherErrors: app/cli.py's main prints them as one line (tests/test_cli_errors.py)
    res = tether("add", str(tmp_path / "tiny"), "--base", str(model))
    assert isinstance(res.exception, TetherError) and "is not a PEFT adapter folder" in str(res.exception)
    assert promoted_model(cfg) is None

    res = tether("add", str(shipped), "--base", str(model), "--serve-recorded")
    assert res.exit_code == 0, res.output
    assert "registered adapter-" in res.output and "serving adapter-" in res.output
    assert "contains 0.310 vs 0.250" in res.output
    assert promoted_model(cfg) == (model.resolve(), shipped.resolve())
    again, added = add_adapter(cfg, shipped, base=str(model))
    assert not added
    db_rows = list_models(connect(cfg.db_path))
    assert [r.id for r in db_rows] == [again] and db_rows[0].method == "adapt" and db_rows[0].gate["recorded"]
    listed = tether("list")
    assert listed.output.splitlines()[0].startswith("*") and "gate passed: contains 0.310 vs 0.250" in listed.output

    # new weights at the same path are a new model; after an admin's rollback nothing is served over it
    assert rollback(cfg) is None
    (shipped / "adapter_model.safetensors").write_bytes((shipped / "adapter_model.safetensors").read_bytes() + b" ")
    res = tether("add", str(shipped), "--base", str(model), "--serve-recorded")
    assert res.exit_code == 0 and "registered adapter-" in res.output and "not served" in res.output
    assert promoted_model(cfg) is None

    # a run that records a refused gate is never served on it
    refused = make_lora_adapter(model, tmp_path / "refused")
    (refused / "run.yaml").write_text(_adapt_run_yaml(passed=False))
    res = tether("add", str(refused), "--base", str(model), "--serve-recorded")
    assert isinstance(res.exception, TetherError) and "records no passed gate" in str(res.exception)
    assert "models promote" in str(res.exception)
