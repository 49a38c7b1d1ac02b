"""Parity of exported models with the adapter model they came from, on fixed prompts.

The prompts are grounded chats built by ``assistant.prompts.build_messages`` and rendered by each
model folder's own chat template (the exported tokenizer carries the same one). The reference is
the base + adapter (unmerged) through ``HFGenerator``, greedy, ``max_new_tokens`` tokens.

Criteria (``CRITERIA``):
    merged     exact: the same token ids on every prompt
    onnx       exact: the same token ids on every prompt (same fp32 math, another runtime)
    bnb4, onnx-int8  within tolerance: teacher-forced top-1 agreement >= 0.90, i.e. fed the
               reference's own output, the quantized model's argmax equals the reference token at
               >= 90 % of the generated positions. Free-running exact match and the mean common-prefix
               share are reported too, but not gated: one early flip changes the whole rest of a
               free-running answer, so they say little about the size of the quantization error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from assistant.generators.base import GenParams
from assistant.generators.decoding import common_prefix  # the length of the shared start of two id lists
from assistant.prompts import PromptSource, build_messages

log = logging.getLogger(__name__)

TEACHER_FORCED_TOLERANCE = 0.90
CRITERIA = {"merged": "exact", "onnx": "exact", "bnb4": "teacher_forced", "onnx-int8": "teacher_forced"}

PARITY_PROMPTS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "How many days of annual leave do employees get?",
        (
            (
                "Leave policy",
                "Employees get twenty-five days of annual leave each year. Unused leave can be carried over until March.",
            ),
        ),
    ),
    ("When does the canteen open?", (("Canteen", "The office canteen opens at 07:45 and closes at 14:30."),)),
    (
        "Who approves travel?",
        (
            (
                "Travel",
                "Travel must be approved by your manager before booking. Receipts are submitted within 30 days.",
            ),
            ("Remote work", "Remote work is allowed up to three days per week."),
        ),
    ),
    ("What is the capital of France?", (("Geography", "The capital of France is Lyon, where the government sits."),)),
)


def parity_messages():
    return [build_messages(q, [PromptSource(title=t, text=x) for t, x in srcs]) for q, srcs in PARITY_PROMPTS]


def hf_logits(gen, ids: Sequence[int]):
    import torch

    with gen.no_grad():
        return gen.model(input_ids=torch.tensor([list(ids)], device=gen.device)).logits[0].float().cpu().numpy()


def teacher_forced_agreement(next_logits, prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]) -> float:
    """Fed each reference output after its prompt, how often the model's argmax is the reference's
    next token, over all generated positions (1.0 when none). ``next_logits(prompt, reply)``: the
    logits predicting each token of ``reply`` from the prompt and the reply before it, [len(reply), vocab]."""
    agree = total = 0
    for p, r in zip(prompts, outputs):
        if not r:
            continue
        preds = next_logits(list(p), list(r)).argmax(-1)
        agree += int(sum(int(a) == b for a, b in zip(preds, r)))
        total += len(r)
    return agree / total if total else 1.0


def hf_next_logits(gen, prompt: Sequence[int], reply: Sequence[int]):
    """``teacher_forced_agreement``'s logits from one forward of the torch model over prompt + reply."""
    logits = hf_logits(gen, list(prompt) + list(reply[:-1]))
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(reply)]


def check_parity(
    base: Path,
    adapter: Path,
    variants: dict[str, Path],
    *,
    max_new_tokens: int = 16,
    tolerance: float = TEACHER_FORCED_TOLERANCE,
) -> dict[str, Any]:
    """Compare every variant (format -> folder) with base + adapter; returns a JSON-able report
    {"passed", "prompts", "max_new_tokens", "variants": {fmt: {...}}}."""
    from assistant.generators.hf import HFGenerator
    from assistant.generators.onnx_lm import OnnxLM

    params = GenParams(
        max_new_tokens=max_new_tokens, temperature=0.0, no_repeat_ngram=0
    )  # plain greedy: weights, not decoding, are compared
    ref = HFGenerator(base, adapter=adapter, device="cpu")
    prompts = [ref.prompt_ids(m) for m in parity_messages()]
    ref_out = [list(ref.tokens(p, params)) for p in prompts]
    report: dict[str, Any] = {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "variants": {},
        "tolerance": tolerance,
    }
    for fmt, folder in variants.items():
        if fmt not in CRITERIA:
            continue
        if fmt.startswith("onnx"):
            # the graph of a checkpoint: merged/onnx, or the int8 graph of the merged checkpoint
            checkpoint = Path(variants.get("merged", Path(folder).parent))
            gen = OnnxLM(checkpoint, graph_dir=folder, no_repeat_ngram=0, prefix_cache=False)
            next_logits = gen.teacher_forced_logits
        else:
            gen = HFGenerator(folder, device="cpu")
            next_logits = lambda p, r, g=gen: hf_next_logits(g, p, r)  # noqa: E731
        mine = [gen.prompt_ids(m) for m in parity_messages()]
        same_prompt = mine == prompts  # the same chat template and tokenizer
        outs = [list(gen.tokens(p, params)) for p in prompts]
        exact = sum(o == r for o, r in zip(outs, ref_out))
        prefix = [(common_prefix(o, r) / max(1, len(r))) for o, r in zip(outs, ref_out)]
        tf = teacher_forced_agreement(next_logits, prompts, ref_out)
        criterion = CRITERIA[fmt]
        passed = same_prompt and (exact == len(prompts) if criterion == "exact" else tf >= tolerance)
        report["variants"][fmt] = {
            "criterion": criterion if criterion == "exact" else f"teacher-forced top-1 agreement >= {tolerance}",
            "passed": passed,
            "same_prompt_tokens": same_prompt,
            "exact_prompts": exact,
            "mean_prefix_share": round(sum(prefix) / len(prefix), 4),
            "teacher_forced_agreement": round(tf, 4),
        }
        log.info(
            "parity %s: %s (exact %d/%d, teacher-forced %.3f)",
            fmt,
            "ok" if passed else "FAILED",
            exact,
            len(prompts),
            tf,
        )
    report["passed"] = all(v["passed"] for v in report["variants"].values())
    report["reference_outputs"] = ref_out
    return report
