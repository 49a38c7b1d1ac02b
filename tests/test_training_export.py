"""Merge, ONNX and int8 export of a trained-looking adapter, with the parity check, on the CPU."""

from __future__ import annotations

import json

import pytest

from tests.tiny_llm import make_lora_adapter, make_tiny_llm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torch

    from tether.config import load_config
    from training.export import export
    from training.registry import register

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    cfg = load_config(root / "data")
    model = make_tiny_llm(root / "tiny")
    adapter = make_lora_adapter(model, root / "lora")  # random non-zero B: the adapter changes the outputs
    from tether.db import connect

    db = connect(cfg.db_path)
    parent = register(db, kind="adapter", path=str(adapter), base=str(model), adapter=str(adapter), method="sft")
    db.close()
    res = export(
        model, adapter, root / "out", formats=("merged", "onnx", "onnx-int8"), db_path=cfg.db_path, parent_id=parent
    )
    yield {"res": res, "model": model, "adapter": adapter, "cfg": cfg, "parent": parent, "root": root}
    torch.set_num_threads(threads)


def test_merged_and_onnx_match_the_adapter_model_exactly(exported):
    report = exported["res"].parity
    assert report["passed"]
    for fmt in ("merged", "onnx"):
        v = report["variants"][fmt]
        assert v["exact_prompts"] == report["prompts"] == 4 and v["same_prompt_tokens"]
    # the adapter matters: the base alone answers differently, so exact parity is not trivial
    from assistant.generators.base import GenParams
    from assistant.generators.hf import HFGenerator
    from training.parity import parity_messages

    base = HFGenerator(exported["model"], device="cpu")
    params = GenParams(max_new_tokens=16, no_repeat_ngram=0)
    outs = [list(base.tokens(base.prompt_ids(m), params)) for m in parity_messages()]
    assert outs != report["reference_outputs"]


def test_int8_within_tolerance_and_smaller(exported):
    v = exported["res"].parity["variants"]["onnx-int8"]
    assert v["passed"] and v["teacher_forced_agreement"] >= 0.9
    paths = exported["res"].paths

    def size(folder):
        return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("model.onnx"))

    assert size(paths["onnx-int8"]) < size(paths["onnx"])


def test_the_onnx_export_is_the_graph_the_hf_generator_serves(exported):
    """`tether export` writes the merged checkpoint's own KV-cache graph: `hf.runtime: auto` serves
    the fine-tuned model on ONNX Runtime, replying as base + adapter do on torch."""
    from assistant.engine import hf_generator
    from assistant.generators.base import GenParams, generate
    from assistant.generators.hf import HFGenerator
    from assistant.generators.onnx_lm import OnnxLM, graph_problem
    from tether.config import HFConfig
    from training.parity import parity_messages

    paths = exported["res"].paths
    assert paths["onnx"] == paths["merged"] / "onnx" and graph_problem(paths["merged"]) is None
    served = hf_generator(paths["merged"], None, HFConfig())
    assert isinstance(served, OnnxLM)
    ref = HFGenerator(exported["model"], adapter=exported["adapter"], device="cpu")
    params = GenParams(max_new_tokens=16)
    for messages in parity_messages()[:2]:
        assert generate(served, messages, params) == generate(ref, messages, params)
    int8 = OnnxLM(paths["merged"], graph_dir=paths["onnx-int8"])
    assert generate(int8, parity_messages()[0], params)
    assert (served.identity.runtime, int8.identity.runtime) == ("onnx", "onnx-int8")


def test_merged_is_plain_safetensors_and_everything_is_registered(exported):
    from tether.db import connect

    merged = exported["res"].paths["merged"]
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert json.loads((merged / "tether-export.json").read_text())["adapter"] == str(exported["adapter"])
    db = connect(exported["cfg"].db_path)
    rows = {r["kind"]: dict(r) for r in db.execute("SELECT * FROM models WHERE parent_id = ?", (exported["parent"],))}
    assert set(rows) == {"merged", "onnx", "onnx-int8"}
    assert json.loads(rows["onnx-int8"]["config_json"])["parity"]["passed"] is True


def test_parity_fails_for_a_different_model(exported, tmp_path):
    """A folder that is not the adapter model's export fails the exact check."""
    from training.parity import check_parity

    other = make_tiny_llm(tmp_path / "other", seed=5)
    report = check_parity(exported["model"], exported["adapter"], {"merged": other}, max_new_tokens=8)
    assert not report["passed"] and report["variants"]["merged"]["exact_prompts"] < 4


def test_unknown_format_is_refused(exported):
    from tether.errors import ConfigError
    from training.export import export

    with pytest.raises(ConfigError, match="unknown gguf"):
        export(exported["model"], exported["adapter"], exported["root"] / "x", formats=("merged", "gguf"))


@pytest.mark.gpu
def test_bnb4_export_within_tolerance(exported):
    from training.export import save_bnb4
    from training.parity import check_parity

    out = save_bnb4(exported["res"].paths["merged"], exported["root"] / "bnb4")
    report = check_parity(exported["model"], exported["adapter"], {"bnb4": out})
    assert report["variants"]["bnb4"]["passed"]
