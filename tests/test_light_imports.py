"""Start-up discipline: the light commands never import torch, transformers or sentence-transformers.

Each command runs through the real ``tether`` entry point (``app.cli.main``) in a fresh Python
process over a tiny ingested corpus, with the ONNX encoder exported once per session by
``tether models export-encoder``. A test-only launcher registers an ``atexit`` hook that writes the
top-level names of the loaded modules to a file, so the check sees every import the command made,
including those after its output (the hook runs after typer's ``SystemExit``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "transformers", "sentence_transformers"}

LAUNCHER = """
import atexit, json, os, sys

def _dump():
    with open(os.environ["TETHER_TEST_MODULES_OUT"], "w") as fh:
        json.dump(sorted({name.split(".")[0] for name in sys.modules}), fh)

atexit.register(_dump)
sys.argv = ["tether", *sys.argv[1:]]
from app.cli import main
main()
"""

CORPUS = {
    "travel.md": "---\ndate: 2024-03-01\nauthority: official\n---\n# Travel\n\n"
    "Business trips are approved by the department head. Book trains for trips under 500 km.\n",
    "leave.md": "# Leave\n\nEmployees receive twenty working days of paid leave per calendar year.\n",
    "notes.txt": "The laptop is returned to IT within five days of leaving the company.\n",
}


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_HOME", "TETHER_CONFIG", "TETHER_CHROMA_URL")}
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ANONYMIZED_TELEMETRY="False", TOKENIZERS_PARALLELISM="false"
    )
    env["TETHER_TEST_MODULES_OUT"] = str(tmp / "modules.json")
    return env


def run_tether(
    data_dir: Path, *args: str, tmp: Path, config: Path | None = None
) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``tether --data-dir DATA [--config FILE] ARGS`` in a fresh process; its loaded top-level modules."""
    out = tmp / "modules.json"
    out.unlink(missing_ok=True)
    argv = ["--data-dir", str(data_dir)] + (["--config", str(config)] if config else []) + list(args)
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *argv], cwd=ROOT, env=_env(tmp), capture_output=True, text=True, timeout=600
    )
    assert out.exists(), f"tether {' '.join(args)} wrote no module list: {proc.stderr[-2000:]}"
    return proc, set(json.loads(out.read_text()))


@pytest.fixture(scope="session")
def light_home(tmp_path_factory):
    """A data dir with the ONNX encoder exported (by the CLI) and a tiny corpus ingested."""
    tmp = tmp_path_factory.mktemp("light")
    data, docs = tmp / "data", tmp / "docs"
    docs.mkdir()
    for name, text in CORPUS.items():
        (docs / name).write_text(text, encoding="utf-8")
    export, _ = run_tether(data, "models", "export-encoder", tmp=tmp)
    assert export.returncode == 0, export.stderr[-3000:]
    assert (data / "models" / "encoders" / "all-MiniLM-L6-v2" / "model-int8.onnx").is_file()
    ingest, loaded = run_tether(data, "ingest", str(docs), "--json", tmp=tmp)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    assert json.loads(ingest.stdout)["chunks_total"] >= 3
    assert not loaded & HEAVY, f"ingest with the ONNX encoder imported {sorted(loaded & HEAVY)}"
    return data, tmp


LIGHT = {
    "search": (["search", "Who approves business trips?", "--json"], 0),
    "docs": (["docs", "--json"], 0),
    "ask-extractive": (["ask", "Who approves business trips?", "-g", "extractive", "--json"], 0),
    "logs-export": (["logs", "export", "--format", "jsonl"], 0),
    "eval-list": (["eval", "list"], 0),
    "eval-show": (["eval", "show", "no-such-run"], None),  # a missing run: the error path must stay light too
    "models-list": (["models", "list"], 0),
}


@pytest.mark.parametrize("name", list(LIGHT))
def test_light_command_imports_no_torch(light_home, name):
    data, tmp = light_home
    args, code = LIGHT[name]
    proc, loaded = run_tether(data, *args, tmp=tmp)
    if code is not None:
        assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not loaded & HEAVY, f"tether {' '.join(args)} imported {sorted(loaded & HEAVY)}"


def test_search_finds_with_the_onnx_encoder(light_home):
    data, tmp = light_home
    proc, loaded = run_tether(data, "search", "Who approves business trips?", "--json", "-k", "1", tmp=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "onnxruntime" in loaded  # the dense half ran on the export, not skipped
    hits = json.loads(proc.stdout)
    assert hits[0]["source"] == "travel.md"


def test_torch_encoder_is_seen_by_the_check(light_home):
    """The check itself: with ``retrieval.encoder: torch`` the same search does import torch."""
    data, tmp = light_home
    config = tmp / "torch.yaml"
    config.write_text("retrieval:\n  encoder: torch\n", encoding="utf-8")
    proc, loaded = run_tether(data, "search", "Who approves business trips?", "--json", tmp=tmp, config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"torch", "sentence_transformers"} <= loaded
    assert json.loads(proc.stdout)[0]["source"] == "travel.md"


def test_ask_with_an_exported_llm_imports_no_torch(light_home):
    """``tether ask`` with the hf generator on a checkpoint that ``tether models export-generator``
    exported answers on ONNX Runtime: no torch, no transformers; with ``hf.runtime: torch`` it does."""
    from tests.tiny_llm import make_tiny_llm

    data, tmp = light_home
    model_dir = make_tiny_llm(tmp / "tiny-llm")
    config = tmp / "llm.yaml"
    config.write_text(
        f"assistant:\n  generator: hf\n  model: {model_dir}\n  fallback_to_extractive: false\n  answerability: false\n"
        "  min_relevance: 0.0\n",
        encoding="utf-8",
    )
    export, _ = run_tether(data, "models", "export-generator", tmp=tmp, config=config)
    assert export.returncode == 0, export.stderr[-3000:]
    assert (model_dir / "onnx" / "model.onnx").is_file()
    ask = ["ask", "Who approves business trips?", "--json"]
    proc, loaded = run_tether(data, *ask, tmp=tmp, config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    answer = json.loads(proc.stdout)
    assert answer["generator"]["runtime"] == "onnx" and answer["generator"]["backend"] == "hf"
    assert "onnxruntime" in loaded
    assert not loaded & HEAVY, f"tether ask on the exported model imported {sorted(loaded & HEAVY)}"
    config.write_text(config.read_text(encoding="utf-8") + "hf:\n  runtime: torch\n", encoding="utf-8")
    proc, loaded = run_tether(data, *ask, tmp=tmp, config=config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"torch", "transformers"} <= loaded
    assert json.loads(proc.stdout)["answer"] == answer["answer"]  # the same reply from either runtime
