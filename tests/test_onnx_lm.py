"""The hf backend on ONNX Runtime (``hf.runtime``): a tiny random Llama exported with its KV cache
decodes exactly as the torch runtime does (greedy, penalties, n-gram block, stop strings, CAD,
prefix reuse), the runtime is chosen by config and by what the checkpoint has, and a stale or
failed export never serves. One real SmolLM2 test (slow, about a minute)."""

from __future__ import annotations

import json
import os

import pytest

from assistant.generators.base import GenParams, Message, generate
from tests.tiny_llm import make_lora_adapter, make_tiny_llm
from tether.config import HFConfig
from tether.errors import BackendUnavailable, ConfigError

MESSAGES = [
    Message("system", "Answer from the context."),
    Message("user", "Context: The canteen opens at 07:45.\nQuestion: When does the canteen open?"),
]
OTHER = [
    Message("system", "Answer from the context."),
    Message("user", "Context: Remote work is allowed up to three days per week.\nQuestion: How many days?"),
]
FREE = (Message("system", "Answer from the context."), Message("user", "Question: When does the canteen open?"))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from assistant.generators.onnx_lm import export_graph

    model_dir = make_tiny_llm(tmp_path_factory.mktemp("tiny-onnx"))
    export_graph(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def torch_gen(tiny_dir):
    from assistant.generators.hf import HFGenerator

    return HFGenerator(tiny_dir, device="cpu", prefix_cache=False)


@pytest.fixture(scope="module")
def onnx_gen(tiny_dir):
    from assistant.generators.onnx_lm import OnnxLM

    return OnnxLM(tiny_dir, prefix_cache=False)


def test_export_is_parity_checked_and_current(tiny_dir):
    from assistant.generators.onnx_lm import GRAPH_DIR, MANIFEST, graph_problem

    info = json.loads((tiny_dir / GRAPH_DIR / MANIFEST).read_text())
    assert info["parity"]["equal"] is True and info["parity"]["prompts"] >= 2
    assert info["layers"] == 2 and info["eos_ids"]
    assert graph_problem(tiny_dir) is None
    assert not [p for p in tiny_dir.iterdir() if p.name.startswith(".onnx")]  # no staging folder left


def test_prompt_is_the_chat_template_as_transformers_renders_it(torch_gen, onnx_gen):
    for messages in (MESSAGES, OTHER, [Message("user", "Naïve café — 日本語 ✓ {{ not a tag }} {% raw %}")]):
        assert onnx_gen.prompt_ids(messages) == torch_gen.prompt_ids(messages)
    assert onnx_gen.prompt_tokens(MESSAGES) == torch_gen.prompt_tokens(MESSAGES)


@pytest.mark.parametrize(
    "params",
    [
        GenParams(max_new_tokens=24),  # the default no-repeat 6-gram
        GenParams(max_new_tokens=24, no_repeat_ngram=0),
        GenParams(max_new_tokens=24, no_repeat_ngram=2),
        GenParams(max_new_tokens=24, repetition_penalty=1.5),
        GenParams(max_new_tokens=7),
        GenParams(max_new_tokens=24, cad_alpha=0.5, cad_context_free=FREE),
        GenParams(max_new_tokens=24, cad_alpha=1.0, cad_adaptive=True, cad_context_free=FREE),
    ],
    ids=["default", "plain", "ngram2", "penalty", "short", "cad", "adacad"],
)
def test_onnx_decodes_token_for_token_as_torch(torch_gen, onnx_gen, params):
    ids = torch_gen.prompt_ids(MESSAGES)
    free = torch_gen.prompt_ids(params.cad_context_free) if params.cad_context_free else None
    ours = list(onnx_gen.tokens(ids, params, free))
    theirs = list(torch_gen.tokens(ids, params, free))
    assert len(ours) > 5
    assert ours == theirs
    assert onnx_gen.identity.decoding == torch_gen.identity.decoding
    assert onnx_gen.last_stats["new_tokens"] == len(ours)


def test_stream_joins_to_the_reply_and_stops_before_a_stop_string(torch_gen, onnx_gen):
    whole = generate(onnx_gen, MESSAGES, GenParams(max_new_tokens=24))
    assert whole == generate(torch_gen, MESSAGES, GenParams(max_new_tokens=24))
    pieces = list(onnx_gen.stream(MESSAGES, GenParams(max_new_tokens=24)))
    assert len(pieces) > 1 and "".join(pieces) == whole
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
    cut = generate(onnx_gen, MESSAGES, GenParams(max_new_tokens=24, stop=(stop,)))
    assert (
        cut == whole[: whole.index(stop)] == generate(torch_gen, MESSAGES, GenParams(max_new_tokens=24, stop=(stop,)))
    )


def test_prefix_reuse_gives_identical_output(tiny_dir, onnx_gen):
    from assistant.generators.onnx_lm import OnnxLM

    reuse = OnnxLM(tiny_dir)
    params = GenParams(max_new_tokens=24)
    first = list(reuse.tokens(reuse.prompt_ids(MESSAGES), params))
    assert reuse.last_stats["reused_prefix_tokens"] == 0
    for messages in (OTHER, MESSAGES):
        ids = reuse.prompt_ids(messages)
        ours = list(reuse.tokens(ids, params))
        assert reuse.last_stats["reused_prefix_tokens"] > 5
        assert ours == list(onnx_gen.tokens(ids, params))
    assert ours == first


def test_sampling_is_reproducible_with_a_seed(onnx_gen):
    params = GenParams(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=7)
    first = generate(onnx_gen, MESSAGES, params)
    assert generate(onnx_gen, MESSAGES, params) == first
    assert generate(onnx_gen, MESSAGES, GenParams(max_new_tokens=16, temperature=1.0, seed=8)) != first
    assert onnx_gen.identity.decoding.startswith("sample")


def test_what_only_torch_serves_is_refused_with_the_fix(onnx_gen):
    with pytest.raises(ConfigError, match="hf.runtime: torch"):
        list(onnx_gen.tokens([1, 2, 3], GenParams(allowed_numbers=frozenset({"4"}))))
    with pytest.raises(ConfigError, match="context-free prompt"):
        list(onnx_gen.tokens([1, 2, 3], GenParams(cad_alpha=0.5)))


def test_runtime_choice(tiny_dir, tmp_path):
    from assistant.generators.onnx_lm import choose_runtime

    assert choose_runtime(HFConfig(), tiny_dir, None)[0] == "onnx"
    assert choose_runtime(HFConfig(device="cpu"), tiny_dir, None)[0] == "onnx"
    assert choose_runtime(HFConfig(runtime="torch"), tiny_dir, None)[0] == "torch"
    for cfg in (HFConfig(restrict_numbers=True), HFConfig(quantize="int8"), HFConfig(dtype="bfloat16")):
        runtime, why = choose_runtime(cfg, tiny_dir, None)
        assert runtime == "torch" and why.startswith("torch serves")
        with pytest.raises(ConfigError, match="hf.runtime onnx cannot serve"):
            choose_runtime(HFConfig(**{**cfg.__dict__, "runtime": "onnx"}), tiny_dir, None)
    adapter = make_lora_adapter(tiny_dir, tmp_path / "lora")
    runtime, why = choose_runtime(HFConfig(), tiny_dir, adapter)
    assert runtime == "torch" and "adapter" in why
    with pytest.raises(ConfigError, match="adapter"):
        choose_runtime(HFConfig(runtime="onnx"), tiny_dir, adapter)
    bare = make_tiny_llm(tmp_path / "bare")  # never exported
    runtime, why = choose_runtime(HFConfig(), bare, None)
    assert runtime == "torch" and "tether models export-generator" in why
    with pytest.raises(BackendUnavailable, match="tether models export-generator"):
        choose_runtime(HFConfig(runtime="onnx"), bare, None)
    assert "hf.runtime onnx: hf.restrict_numbers" in " ".join(
        HFConfig(runtime="onnx", restrict_numbers=True).problems()
    )
    assert HFConfig(runtime="tpu").problems()


def test_a_changed_checkpoint_makes_the_graph_stale(tmp_path):
    from assistant.engine import hf_generator
    from assistant.generators.hf import HFGenerator
    from assistant.generators.onnx_lm import OnnxLM, export_graph, graph_problem

    model_dir = make_tiny_llm(tmp_path / "m")
    export_graph(model_dir)
    assert isinstance(hf_generator(model_dir, None, HFConfig(device="cpu")), OnnxLM)
    weights = model_dir / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # retrained in place
    assert "changed since its ONNX graph was exported" in graph_problem(model_dir)
    with pytest.raises(BackendUnavailable, match="export-generator"):
        OnnxLM(model_dir)
    assert isinstance(hf_generator(model_dir, None, HFConfig(device="cpu")), HFGenerator)  # auto: back to torch


def test_a_graph_optimized_by_another_onnxruntime_is_stale(tmp_path):
    from assistant.generators.onnx_lm import GRAPH_DIR, MANIFEST, choose_runtime, export_graph, graph_problem

    model_dir = make_tiny_llm(tmp_path / "m")
    export_graph(model_dir)
    manifest = model_dir / GRAPH_DIR / MANIFEST
    info = json.loads(manifest.read_text())
    assert info["optimized"] == "ORT_ENABLE_EXTENDED" and info["onnxruntime"]
    manifest.write_text(json.dumps({**info, "onnxruntime": "0.0.1"}))
    assert "optimized by onnxruntime 0.0.1" in graph_problem(model_dir)
    assert choose_runtime(HFConfig(device="cpu"), model_dir, None)[0] == "torch"


def test_a_failed_check_keeps_the_previous_graph(tmp_path, monkeypatch):
    from assistant.generators import onnx_lm

    model_dir = make_tiny_llm(tmp_path / "m")
    onnx_lm.export_graph(model_dir)
    before = {p.name: p.stat().st_mtime_ns for p in (model_dir / onnx_lm.GRAPH_DIR).iterdir()}

    def differs(*args, **kwargs):
        raise ConfigError(["the exported graph was not kept: greedy tokens differ"])

    (model_dir / ".onnx.tmp-99999999").mkdir()  # a killed export's staging folder
    monkeypatch.setattr(onnx_lm, "_parity", differs)
    with pytest.raises(ConfigError, match="not kept"):
        onnx_lm.export_graph(model_dir)
    after = {p.name: p.stat().st_mtime_ns for p in (model_dir / onnx_lm.GRAPH_DIR).iterdir()}
    assert after == before
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".onnx")]


def test_smollm2_on_onnx_answers_as_on_torch(smollm2_dir):
    """The real default model: exported, parity-checked, and a grounded answer identical to torch's."""
    from assistant.generators.hf import HFGenerator
    from assistant.generators.onnx_lm import OnnxLM, export_graph

    export_graph(smollm2_dir)
    messages = [
        Message("system", "Answer the question from the sources and cite them as [n]."),
        Message(
            "user",
            "Sources:\n[1] The archive server keeps nightly backups for 35 days.\n"
            "Question: How long are nightly backups kept?",
        ),
    ]
    params = GenParams(max_new_tokens=32)
    ours = generate(OnnxLM(smollm2_dir), messages, params)
    assert ours == generate(HFGenerator(smollm2_dir, device="cpu"), messages, params)
    assert "35" in ours
