"""Context-aware decoding in the hf backend, checked numerically on a tiny random Llama (float32).

The reference is the formula computed by hand from two separate, un-batched runs (each prompt alone
with its own DynamicCache), fed the same chosen tokens; the generator decodes both prompts in one
batched forward per step (the shorter row left-padded), so padding, masks and positions are exercised.
"""

from __future__ import annotations

import pytest

from assistant.generators.base import GenParams, Message, generate
from tests.tiny_llm import make_tiny_llm
from tether.errors import ConfigError

CONTEXT = [
    Message("system", "Answer from the context."),
    Message(
        "user",
        "Context: The Halden office canteen opens at 07:45 and closes at 14:30.\nQuestion: When does the canteen open?",
    ),
]
FREE = [Message("system", "Answer the question."), Message("user", "Question: When does the canteen open?")]
LONG_FREE = [
    Message(
        "system",
        "Answer the question. Remote work is allowed up to three days per week. Laptops are replaced every four years.",
    ),
    Message("user", "Question: When does the canteen open? Travel must be approved by your manager before booking."),
]
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_llm(tmp_path_factory.mktemp("tiny-llm-cad"))


@pytest.fixture(scope="module")
def gen(tiny_dir):
    from assistant.generators.hf import HFGenerator

    return HFGenerator(tiny_dir, device="cpu", cad_batched=True, no_repeat_ngram=0)  # one forward per step, as on CUDA


@pytest.fixture(scope="module")
def gen_rows(tiny_dir):
    from assistant.generators.hf import HFGenerator

    return HFGenerator(tiny_dir, device="cpu", no_repeat_ngram=0)  # the CPU default: one forward per row


@pytest.fixture(scope="module")
def gen_static(tiny_dir):
    from assistant.generators.hf import HFGenerator

    return HFGenerator(tiny_dir, device="cpu", cache="static", cad_batched=True, no_repeat_ngram=0)


def _alone(model, ids, fed):
    """Logits before each step of one prompt run on its own: [prefill, after fed[0], ...]."""
    import torch
    from transformers import DynamicCache

    from assistant.generators.hf import next_token_logits

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = [next_token_logits(model, torch.tensor([ids]), cache)]
        for t in fed:
            out.append(next_token_logits(model, torch.tensor([[t]]), cache))
    return out


def _by_hand(model, ctx_ids, free_ids, fed, alpha):
    ctx, free = _alone(model, ctx_ids, fed), _alone(model, free_ids, fed)
    return [(1 + alpha) * c - alpha * f for c, f in zip(ctx, free)]


@pytest.mark.parametrize("free_messages", [FREE, LONG_FREE], ids=["free-row-padded", "context-row-padded"])
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_batched_logits_equal_the_formula_from_two_separate_runs(gen, free_messages, alpha):
    import torch
    from transformers import DynamicCache

    from assistant.generators.hf import _cad_combine, _Rows

    ctx_ids, free_ids = gen.prompt_ids(CONTEXT), gen.prompt_ids(free_messages)
    assert len(ctx_ids) != len(free_ids)
    # the tokens fed at each step: chosen by the combined logits themselves, plus fixed ones
    rows = _Rows(
        gen.model, [ctx_ids, free_ids], device=gen.device, make_cache=lambda: DynamicCache(config=gen.model.config)
    )
    fed, got = [], []
    with torch.inference_mode():
        logits = rows.prefill()
        for step in range(8):
            combined = _cad_combine(logits, alpha)
            got.append(combined)
            token = combined.argmax(-1, keepdim=True) if step % 3 else torch.tensor([[ctx_ids[step + 5]]])
            fed.append(int(token.item()))
            logits = rows.step(token)
    expected = _by_hand(gen.model, ctx_ids, free_ids, fed[:-1], alpha)
    assert len(expected) == len(got) == 8
    for step, (g, e) in enumerate(zip(got, expected)):
        assert torch.allclose(g, e, **TOL), f"step {step}: max diff {(g - e).abs().max():.2e}"


@pytest.mark.parametrize("which", ["dynamic", "static", "per-row"])
def test_generator_follows_the_hand_computed_argmax(gen, gen_static, gen_rows, which):
    """The whole loop (tokens()) with CAD and a repetition penalty picks, at every step, the argmax
    of the penalized formula computed from separate runs."""
    import torch

    from assistant.generators.hf import _penalize

    g = {"dynamic": gen, "static": gen_static, "per-row": gen_rows}[which]
    ctx_ids, free_ids = g.prompt_ids(CONTEXT), g.prompt_ids(FREE)
    params = GenParams(max_new_tokens=12, cad_alpha=0.5, repetition_penalty=1.3)
    ours = list(g.tokens(ctx_ids, params, free_ids))
    assert len(ours) >= 4
    expected = _by_hand(g.model, ctx_ids, free_ids, ours[:-1], 0.5)
    for step, token in enumerate(ours):
        seen = torch.tensor([ctx_ids + ours[:step]])
        assert int(_penalize(expected[step], seen, 1.3).argmax()) == token, f"step {step}"
    assert g.identity.decoding == "cad(alpha=0.5),repetition-penalty-1.3"  # every decoding knob is logged
    assert g.last_stats["rows"] == 2


def test_alpha_zero_is_exactly_the_plain_path(gen):
    ctx_ids, free_ids = gen.prompt_ids(CONTEXT), gen.prompt_ids(FREE)
    plain = list(gen.tokens(ctx_ids, GenParams(max_new_tokens=16)))
    off = list(gen.tokens(ctx_ids, GenParams(max_new_tokens=16, cad_alpha=0.0), free_ids))
    assert off == plain
    assert gen.last_stats["rows"] == 1 and gen.identity.decoding == "greedy"


def test_context_free_equal_to_the_prompt_changes_nothing(gen):
    """(1+a)*x - a*x = x: with the prompt as its own context-free prompt CAD is plain decoding."""
    ctx_ids = gen.prompt_ids(CONTEXT)
    plain = list(gen.tokens(ctx_ids, GenParams(max_new_tokens=16)))
    assert list(gen.tokens(ctx_ids, GenParams(max_new_tokens=16, cad_alpha=1.0), ctx_ids)) == plain


def test_greedy_cad_differs_from_plain_where_the_formula_flips_the_argmax(gen):
    """Choose alpha just past the point where the context-free logits overturn the prompt's first
    choice: plain and CAD then differ at the first token, and CAD picks the formula's argmax."""
    ctx_ids, free_ids = gen.prompt_ids(CONTEXT), gen.prompt_ids(FREE)
    ctx, free = _alone(gen.model, ctx_ids, [])[0][0], _alone(gen.model, free_ids, [])[0][0]
    top = int(ctx.argmax())
    # the smallest alpha at which some other token y overtakes top: (1+a)(c_top-c_y) < a(f_top-f_y)
    margin, push = ctx[top] - ctx, (free[top] - ctx[top]) - (free - ctx)
    candidates = [(float(margin[y] / push[y]), y) for y in range(len(ctx)) if y != top and push[y] > 0]
    assert candidates, "no token can overtake the first choice: pick other prompts"
    alpha = min(candidates)[0] * 1.05 + 1e-3
    plain = list(gen.tokens(ctx_ids, GenParams(max_new_tokens=6)))
    cad = list(gen.tokens(ctx_ids, GenParams(max_new_tokens=6, cad_alpha=alpha), free_ids))
    assert plain[0] == top
    assert cad[0] != plain[0]
    assert cad[0] == int(((1 + alpha) * ctx - alpha * free).argmax())


def test_stream_uses_the_context_free_messages(gen):
    params = GenParams(max_new_tokens=16, cad_alpha=0.5, cad_context_free=tuple(FREE))
    text = generate(gen, CONTEXT, params)
    ids = list(gen.tokens(gen.prompt_ids(CONTEXT), params, gen.prompt_ids(FREE)))
    assert text == gen.tokenizer.decode(ids, skip_special_tokens=True)
    sampled = GenParams(max_new_tokens=16, temperature=1.0, seed=3, cad_alpha=0.5, cad_context_free=tuple(FREE))
    assert generate(gen, CONTEXT, sampled) == generate(gen, CONTEXT, sampled)
    assert gen.identity.decoding == "cad(alpha=0.5),sample"


def test_cad_without_context_free_messages_is_a_config_error(gen):
    with pytest.raises(ConfigError, match="cad_context_free .*build_context_free_messages"):
        generate(gen, CONTEXT, GenParams(cad_alpha=0.5))
    with pytest.raises(ConfigError, match="cad_alpha .* must be >= 0"):
        generate(gen, CONTEXT, GenParams(cad_alpha=-1.0, cad_context_free=tuple(FREE)))


def test_context_free_messages_keep_the_question_and_drop_the_sources():
    from assistant.prompts import PromptSource, build_context_free_messages, build_messages

    question = "  When does the canteen open?  "
    grounded = build_messages(question, [PromptSource("faq", "The canteen opens at 07:45.")])
    free = build_context_free_messages(question)
    assert [m.role for m in free] == ["system", "user"]
    assert free[-1].content.endswith("Question: When does the canteen open?")
    assert grounded[-1].content.endswith(free[-1].content)
    assert "07:45" not in " ".join(m.content for m in free) and "source" not in free[-1].content.lower()


def test_adaptive_cad_is_plain_where_the_rows_agree_and_weighted_by_jsd_where_not():
    """AdaCAD: alpha is the Jensen-Shannon divergence of the two rows' distributions at each step."""
    import torch

    from assistant.generators.hf import _cad_combine, jensen_shannon

    same = torch.tensor([[2.0, 0.5, -1.0], [2.0, 0.5, -1.0]])
    assert torch.equal(_cad_combine(same, 0.5, adaptive=True), same[0:1])  # no competing memory: plain
    apart = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    jsd = float(jensen_shannon(apart[0], apart[1]))
    p, q = apart[0].softmax(-1), apart[1].softmax(-1)
    mix = (p + q) / 2
    by_hand = float(((p * (p / mix).log2()).sum() + (q * (q / mix).log2()).sum()) / 2)
    assert abs(jsd - by_hand) < 1e-5 and 0 < jsd < 1
    assert torch.allclose(_cad_combine(apart, 0.5, adaptive=True), (1 + jsd) * apart[0:1] - jsd * apart[1:2])
    disjoint = torch.tensor([[30.0, -30.0], [-30.0, 30.0]])
    assert abs(float(jensen_shannon(disjoint[0], disjoint[1])) - 1.0) < 1e-4


def test_adaptive_cad_through_the_engine_config(gen):
    """assistant.cad adaptive decodes both rows for every answer and logs itself as adacad."""
    from assistant.generators.base import GenParams

    ctx_ids, free_ids = gen.prompt_ids(CONTEXT), gen.prompt_ids(FREE)
    out = list(gen.tokens(ctx_ids, GenParams(max_new_tokens=6, cad_alpha=0.5, cad_adaptive=True), free_ids))
    assert out and gen.identity.decoding == "adacad" and gen.last_stats["rows"] == 2
