"""``tether train adapt`` (training/adapt.py) end to end on the CPU: a small corpus ingested with the
real MiniLM, a tiny random Llama as the base model (tests/tiny_llm.py), real SFT and DPO through
trl, the real registry and gate in SQLite.

What is checked is what the command promises: every training prompt is the prompt the engine
builds at answer time for that question; answers cite the passage that holds them; near-misses
lack the fact and teach the exact refusal; conflict rows carry the engine's own statement; the
on-policy stage judges the SFT model's replies; the gated model is in the registry; a run stopped
between stages resumes without redoing the finished ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from assistant.prompts import REFUSAL
from tests.test_reranker_training import write_corpus
from tests.tiny_llm import make_tiny_llm
from training import adapt as A
from training.registry import TrainingStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory, embedder):
    import torch

    from retrieval.ingest import ingest
    from tether.config import load_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster on a shared 2-core machine
    tmp = tmp_path_factory.mktemp("adapt")
    write_corpus(tmp / "docs")
    model = make_tiny_llm(tmp / "tiny", max_positions=4096)
    cfg = (
        load_config(tmp / "data")
        .with_retrieval(chunk_size=48, chunk_overlap=4)
        .with_assistant(generator="hf", model=str(model), max_new_tokens=12, fallback_to_extractive=False)
    )
    summary = ingest(cfg, [tmp / "docs"], embedder=embedder)
    assert summary.chunks_total >= 20
    yield {"cfg": cfg, "model": model, "tmp": tmp}
    torch.set_num_threads(threads)


def _acfg(world, out: str, **kw) -> A.AdaptConfig:
    base = dict(
        out_dir=str(world["tmp"] / out),
        base_model=str(world["model"]),
        questions=16,
        backtranslate=2,
        conflicts=2,
        counterfactuals=2,
        near_miss=0.5,
        heldout=0.2,
        gate_questions=3,
        sft_minutes=3,
        preference_questions=4,
        preference_minutes=2,
        batch_size=2,
        max_length=4096,
        learning_rate=5e-3,
        save_steps=4,
        lora_r=4,
        device="cpu",
    )
    base.update(kw)
    return A.AdaptConfig(**base).validated()


HELD_OUT = [  # another corpus's labelled set, with its contexts (no retrieval needed over its data dir)
    {"id": f"h{i}", "question": q, "answers": [a], "contexts": [c], "split": split}
    for i, (q, a, c, split) in enumerate(
        [
            ("How long is the warranty?", "two years", "The warranty lasts two years from delivery.", "dev"),
            ("Who signs the contract?", "the director", "Contracts are signed by the director.", "dev"),
            ("What colour is the logo?", "green", "The logo is green on white.", "test"),
        ]
    )
]


@pytest.fixture(scope="module")
def adapted(world):
    from tether.config import load_config
    from tether.db import connect

    acfg = _acfg(world, "run")
    held = load_config(world["tmp"] / "held-out")
    connect(held.db_path).close()
    qa = world["tmp"] / "held-out.jsonl"
    qa.write_text("".join(json.dumps(r) + "\n" for r in HELD_OUT))
    seen: list[str] = []
    res = A.run(world["cfg"], acfg, held_out=[(held.data_dir, qa)], progress=lambda stage, i, n: seen.append(stage))
    return acfg, res, seen, held


def _examples(out: Path) -> list[A.Example]:
    return [A.Example(**json.loads(x)) for x in (out / "data" / "examples.jsonl").read_text().splitlines()]


def test_every_stage_ran_and_the_final_model_was_gated(world, adapted):
    acfg, res, seen, held = adapted
    assert seen == list(A.STAGES)
    report = res.report
    assert report["sft"]["steps"] >= 1 and report["sft"]["model_id"]
    pref = report["preference_data"]
    assert pref["answered"] >= 1 and pref["answered"] == pref["right"] + pref["wrong"]
    # a random tiny model answers nothing right: every judged reply becomes a DPO pair
    assert pref["rows"] == pref["wrong"] >= 1
    assert res.model_id == report["preference"]["model_id"] != report["sft"]["model_id"]
    gate = report["gate"]
    assert gate["model_id"] == res.model_id and gate["suite"]["heldout"] >= 1
    assert gate["promoted"] == res.promoted
    assert ("gate" in gate and gate["gate"]["rows"]) or gate.get("candidate_run")
    with TrainingStore.open(world["cfg"].db_path) as store:
        ids = {m.id for m in store.list_models()}
        jobs = [j for j in store.list_jobs() if j["method"] == "adapt"]
        assert store.served_id() == (res.model_id if res.promoted else None)
    assert {report["sft"]["model_id"], res.model_id} <= ids
    assert jobs and jobs[0]["status"] == "done"
    assert (Path(acfg.out_dir) / "run.yaml").is_file()
    # the held-out corpus gated it too: its dev rows only, both models answered over its data dir
    assert gate["suite"]["held_out_0"] == 2
    rows = (Path(acfg.out_dir) / "gate-held-out-0.jsonl").read_text().splitlines()
    assert sorted(json.loads(r)["id"] for r in rows) == ["h0", "h1"]
    from tether.db import connect

    db = connect(held.db_path)
    labels = sorted(r[0].split(":")[0] for r in db.execute("SELECT label FROM eval_runs"))
    assert labels == ["held-out baseline", "held-out candidate"]


def test_training_prompts_are_the_engines_answer_time_prompts(world, adapted):
    """The prompt of every answer row equals the messages the engine hands the served LLM for the
    same question (the tiny hf generator here), and [n] names the passage holding the answer."""
    from assistant.engine import ChatEngine
    from assistant.generators.hf import HFGenerator
    from assistant.types import Conversation

    acfg, *_ = adapted
    examples = _examples(Path(acfg.out_dir))
    kinds = {e.kind for e in examples}
    assert {"answer", "near_miss"} <= kinds, kinds
    engine = ChatEngine(world["cfg"], generator=HFGenerator.from_config(world["model"], None, world["cfg"].hf))
    answers = [e for e in examples if e.kind == "answer"]
    for ex in answers[:6]:
        retrieved = engine.retrieve(ex.question, Conversation())
        found = engine.detect_conflicts(ex.question, retrieved.passages)
        ctx = engine.select_context(ex.question, retrieved.passages, found)
        assert [{"role": m.role, "content": m.content} for m in ctx.messages] == list(ex.messages)
        assert ex.target.endswith(f"[{ex.gold_n}].") or f"[{ex.gold_n}]" in ex.target
        held = " ".join(ctx.passages[ex.gold_n - 1].text.split())
        assert " ".join(ex.sentence.split()) in held


def test_near_misses_lack_the_fact_and_teach_the_refusal(adapted):
    acfg, *_ = adapted
    near = [e for e in _examples(Path(acfg.out_dir)) if e.kind == "near_miss"]
    assert near
    for ex in near:
        assert ex.target == REFUSAL and ex.gold_n is None
        shown = " ".join(m["content"] for m in ex.messages)
        assert " ".join(ex.sentence.split()) not in " ".join(shown.split())
        assert ex.chunk_id not in {h["id"] for h in ex.hits}


def test_rows_on_disk_are_sft_chat_rows_with_the_targets(adapted):
    acfg, *_ = adapted
    out = Path(acfg.out_dir)
    rows = [json.loads(x) for x in (out / "data" / "sft" / "train.jsonl").read_text().splitlines()]
    assert rows
    targets = {e.target for e in _examples(out)}
    for r in rows:
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["system", "user", "assistant"]
    # the engine-built targets are there (counterfactual rows come from training.data)
    assert targets & {r["messages"][-1]["content"] for r in rows}
    manifest = json.loads((out / "data" / "sft" / "manifest.json").read_text())
    assert manifest["counts"]["length_unit"] == "tokens"


def test_conflict_rows_carry_the_engines_statement(world, adapted):
    """A value-swapped copy of a chunk added as another document: where the detector finds the
    conflict, the target ends with the engine's conflict statement citing both passages."""
    acfg, *_ = adapted
    conflicts = [e for e in _examples(Path(acfg.out_dir)) if e.kind == "conflict"]
    if not conflicts:
        pytest.skip("the detector found no conflict between the tiny corpus's swapped copies")
    from assistant.citations import citation_numbers

    for ex in conflicts:
        assert "disagree" in ex.target.lower()
        assert len(set(citation_numbers(ex.target))) >= 2
        assert any(h["id"].endswith("-variant") for h in ex.hits)


def test_a_run_stopped_between_stages_resumes_without_redoing_them(world, adapted):
    acfg = _acfg(world, "resume", preference="none")

    def stop_at_sft(stage, i, n):
        if stage == "sft":
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        A.run(world["cfg"], acfg, progress=stop_at_sft, promote=False)
    out = Path(acfg.out_dir)
    state = json.loads((out / "adapt.json").read_text())
    assert set(state["stages"]) == {"questions", "sft-data"}
    stamp = {p: os.stat(out / p).st_mtime_ns for p in ("questions.jsonl", "data/examples.jsonl")}
    with TrainingStore.open(world["cfg"].db_path) as store:
        assert [j for j in store.list_jobs() if j["method"] == "adapt"][0]["status"] == "interrupted"
    res = A.run(world["cfg"], acfg, promote=False)
    assert {p: os.stat(out / p).st_mtime_ns for p in stamp} == stamp  # reused, not rebuilt
    assert res.report["sft"]["steps"] >= 1 and res.model_id == res.report["sft"]["model_id"]
    again = A.run(world["cfg"], acfg, promote=False)  # finished: nothing is trained twice
    assert again.model_id == res.model_id
    with TrainingStore.open(world["cfg"].db_path) as store:
        assert sum(1 for m in store.list_models() if m.id == res.model_id) == 1


def test_a_run_killed_during_sft_resumes_from_its_checkpoint(world, request):
    """kill -9 of a real ``tether train adapt`` process in the middle of SFT: the same command then
    resumes from the last checkpoint, reuses the rows already built and registers one model."""
    import signal
    import subprocess
    import time

    import yaml

    from tests.test_cli_errors import TETHER

    cfg = world["cfg"]
    data = cfg.data_dir
    (data / "tether.yaml").write_text(
        yaml.safe_dump(
            {
                "retrieval": {"chunk_size": 48, "chunk_overlap": 4},
                "assistant": {"generator": "hf", "model": str(world["model"]), "max_new_tokens": 12},
            }
        ),
        encoding="utf-8",
    )
    request.addfinalizer(lambda: (data / "tether.yaml").unlink(missing_ok=True))  # the module's other tests
    out = world["tmp"] / "killed"
    argv = [
        str(TETHER), "--data-dir", str(data), "train", "adapt", "--out", str(out), "--base-model", str(world["model"]),
        "--questions", "16", "--backtranslate", "2", "--conflicts", "2", "--counterfactuals", "2",
        "--heldout", "0.2", "--gate-questions", "3", "--epochs", "6", "--sft-minutes", "3", "--preference", "none",
        "--batch-size", "2", "--max-length", "4096", "--learning-rate", "5e-3", "--save-steps", "2",
        "--lora-r", "4", "--device", "cpu", "--no-promote",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    ckpts = out / "runs" / "sft" / "checkpoints"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not (ckpts.is_dir() and any(p.name.startswith("checkpoint-") for p in ckpts.iterdir())):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no SFT checkpoint within 10 minutes"
        time.sleep(0.05)
    time.sleep(0.5)  # let the checkpoint's files land, then die mid-training
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((out / "adapt.json").read_text())
    assert "sft" not in state["stages"] and {"questions", "sft-data"} <= set(state["stages"])
    rows = (out / "data" / "examples.jsonl").read_text()
    stamp = os.stat(out / "data" / "examples.jsonl").st_mtime_ns

    done = subprocess.run(argv, env=env, capture_output=True, timeout=900)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    state = json.loads((out / "adapt.json").read_text())
    assert {"questions", "sft-data", "sft"} <= set(state["stages"]), state["stages"].keys()
    resumed = state["stages"]["sft"]["resumed_from"]
    assert resumed and Path(resumed).name.startswith("checkpoint-"), state["stages"]["sft"]
    assert os.stat(out / "data" / "examples.jsonl").st_mtime_ns == stamp  # the rows were reused
    assert (out / "data" / "examples.jsonl").read_text() == rows
    model_id = state["stages"]["sft"]["model_id"]
    with TrainingStore.open(cfg.db_path) as store:
        models = [m for m in store.list_models() if str(m.path).startswith(str(out.resolve()))]
        assert [m.id for m in models] == [model_id]  # one row: the killed run registered nothing


def test_settings_are_checked_up_front(world):
    from tether.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        A.AdaptConfig(out_dir="x", near_miss=2, preference="ppo", backtranslate=500).validated()
    text = str(err.value)
    assert "--near-miss" in text and "--preference" in text and "--backtranslate" in text


def test_the_cli_reports_bad_flags_without_a_traceback(tmp_path):
    from tests.test_cli_errors import error_line, tether

    line = error_line(tether("train", "adapt", "--near-miss", "3", data=tmp_path / "d"))
    assert "--near-miss" in line
