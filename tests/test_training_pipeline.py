"""One command, end to end on the CPU with a tiny random Llama: datasets from a seeded log ->
SFT -> KTO -> export + parity -> gate (refused against the extractive answerer), through the CLI."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from tests.tiny_llm import make_tiny_llm
from tests.training_fixtures import seed_log_db

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
]


@pytest.fixture
def cli(tmp_path, monkeypatch):
    import torch

    from tether.cli import CliOptions
    from training import cli as training_cli

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    options = CliOptions(data_dir=tmp_path / "data", assistant={"generator": "extractive", "max_new_tokens": 8})
    cfg = options.load()
    app, models_app = typer.Typer(), typer.Typer()

    @app.callback()
    def root(ctx: typer.Context) -> None:  # what app/cli.py's root does with --data-dir
        ctx.obj = options

    app.add_typer(models_app, name="models")
    training_cli.register(app, models_app)
    yield app, cfg
    torch.set_num_threads(threads)


def test_one_command_trains_exports_and_the_gate_refuses(cli, tmp_path):
    app, cfg = cli
    seed_log_db(cfg.db_path)
    model = make_tiny_llm(tmp_path / "tiny")
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps(r) + "\n" for r in SUITE))
    common = f"base_model: {model}, max_steps: 3, lora_r: 4, lora_alpha: 8, learning_rate: 0.005, max_length: 512, batch_size: 2, grad_accum: 1, device: cpu, save_steps: 10"
    (tmp_path / "pipeline.yaml").write_text(
        f"data: {{out_dir: {tmp_path / 'ds'}, kinds: 'sft,kto', eval_fraction: 0.1}}\n"
        f"sft: {{{common}, output_dir: {tmp_path / 'sft'}}}\n"
        f"preference: {{method: kto, {common}, output_dir: {tmp_path / 'kto'}}}\n"
        f"export: {{out_dir: {tmp_path / 'export'}, formats: 'merged,onnx-int8'}}\n"
        f"promote: {{suite: {suite}}}\n"
    )
    runner = CliRunner()
    res = runner.invoke(app, ["train", "pipeline", "--config", str(tmp_path / "pipeline.yaml")])
    assert res.exit_code == 1, res.output  # the tiny random model regresses: refused
    out = res.stdout
    summary = json.loads(out[out.index("{\n") :])
    assert summary["sft"]["steps"] == 3 and summary["kto"]["steps"] == 3
    assert summary["export"]["parity"] == {
        "merged": True,
        "onnx": True,
        "onnx-int8": True,
    }  # onnx: the int8 step's input
    assert (
        summary["promotion"]["promoted"] is False and "refused by the evaluation gate" in summary["promotion"]["reason"]
    )
    listed = runner.invoke(app, ["models", "list", "--json"])
    rows = json.loads(listed.output)
    kto_id = summary["kto"]["model_id"]
    assert {r["kind"] for r in rows} == {"adapter", "merged", "onnx-int8"} and not any(r["promoted"] for r in rows)
    kto = next(r for r in rows if r["id"] == kto_id)
    assert kto["parent_id"] == summary["sft"]["model_id"] and kto["eval_runs"]
    assert {r["parent_id"] for r in rows if r["kind"] != "adapter"} == {kto_id}
    # nothing promoted: rollback has nothing to undo (exit code 2 path is the main CLI's; here the error propagates)
    assert runner.invoke(app, ["models", "rollback"]).exception is not None
    jobs = runner.invoke(app, ["train", "jobs", "--json"])
    assert [j["status"] for j in json.loads(jobs.output)] == ["done", "done"]


def test_pipeline_config_reports_every_problem(tmp_path):
    from tether.errors import ConfigError
    from training.pipeline import load_pipeline_config

    (tmp_path / "p.yaml").write_text(
        "data: {kinds: 'sft,xyz'}\nsft: {lora_r: 0}\npreference: {method: ppo}\npromote: {force: true}\nextra: {}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(tmp_path / "p.yaml")
    text = str(err.value)
    for needle in ("unknown section 'extra'",):
        assert needle in text
    (tmp_path / "p.yaml").write_text(
        "data: {kinds: 'sft,xyz'}\nsft: {lora_r: 0}\npreference: {method: ppo}\npromote: {force: true}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(tmp_path / "p.yaml")
    text = str(err.value)
    for needle in ("--out / out_dir", "--kinds", "lora_r", "preference.method", "promote.suite", "sft.output_dir"):
        assert needle in text, needle


def test_admin_password_guards_the_cli(cli, monkeypatch):
    from training.admin import hash_password

    app, cfg = cli
    monkeypatch.setenv("TETHER_ADMIN_PASSWORD_HASH", hash_password("s3cret"))
    monkeypatch.delenv("TETHER_ADMIN_PASSWORD", raising=False)
    res = CliRunner().invoke(app, ["models", "rollback"])
    assert "admin password missing or wrong" in str(res.exception)
    res = CliRunner().invoke(app, ["models", "rollback", "--admin-password", "s3cret"])
    assert "nothing to roll back" in str(res.exception)


def test_export_command_on_an_adapter_folder(cli, tmp_path):
    from tests.tiny_llm import make_lora_adapter

    app, cfg = cli
    model = make_tiny_llm(tmp_path / "tiny")
    adapter = make_lora_adapter(model, tmp_path / "lora")
    res = CliRunner().invoke(
        app, ["export", str(adapter), "--out", str(tmp_path / "exp"), "--formats", "merged", "--base", str(model)]
    )
    assert res.exit_code == 0, res.output
    assert "parity ok (exact; exact 4/4" in res.stdout and (tmp_path / "exp" / "merged" / "model.safetensors").is_file()
    listed = json.loads(CliRunner().invoke(app, ["models", "list", "--json"]).stdout)
    assert [r["kind"] for r in listed] == ["merged"] and listed[0]["path"] == str(
        (tmp_path / "exp" / "merged").resolve()
    )
