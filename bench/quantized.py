"""Quantized SmolLM2 against the fp32 model, in one run: does it keep its answers, and is it faster?

    .venv/bin/python bench/quantized.py --model .tether/models/smollm2-135m-instruct \\
        --data-dir D --questions bench/data/postgresql/qa.jsonl --split dev --limit 12 \\
        --out bench/out/quantized.json

Prompts: the four fixed grounded chats of ``training/parity.py``, plus, with ``--data-dir`` and
``--questions``, the engine's own prompts for those questions (``ChatEngine.retrieve`` →
``detect_conflicts`` → ``select_context`` → ``prompt_messages`` over the ingested collection, the
prompt the default ``hf`` generator is given). Each variant answers every prompt greedily (plain greedy:
the weights are compared, not the decoding), up to ``--max-new-tokens``:

* ``fp32``: the reference (``HFGenerator``, float32);
* ``torch-int8``: ``hf.quantize: int8`` (torch dynamic int8 Linear layers, the LM head too);
* ``quanto-int8`` / ``quanto-int4``: ``hf.quantize: quanto-int8 | quanto-int4`` (optimum-quanto weights,
  float32 activations, the LM head kept);
* ``quanto-int8-bf16``: quanto int8 weights with bfloat16 activations (the CPU int8 matmul kernel quanto
  has is for bfloat16 activations).

Per variant: greedy outputs equal to the reference's, the teacher-forced top-1 agreement (fed the
reference's output, how often its argmax is the reference's token: the parity criterion of ``tether
export``), load seconds, prefill ms (first token) and decode ms per token (medians over prompts, the
variants interleaved prompt by prompt), and the size of the weights held. Answer correctness on a QA set
is measured by ``tether eval run`` with ``hf.quantize`` set (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # bench/retrieval.py would shadow the retrieval package

log = logging.getLogger("bench.quantized")

VARIANTS = ("fp32", "torch-int8", "quanto-int8", "quanto-int4", "quanto-int8-bf16")


def load(model: Path, variant: str):
    from assistant.generators.hf import HFGenerator

    kwargs: dict = {"device": "cpu", "prefix_cache": False, "no_repeat_ngram": 0}
    if variant == "torch-int8":
        kwargs["quantize"] = "int8"
    elif variant.startswith("quanto-int8"):
        kwargs["quantize"] = "quanto-int8"
    elif variant == "quanto-int4":
        kwargs["quantize"] = "quanto-int4"
    if variant.endswith("-bf16"):
        kwargs["dtype"] = "bfloat16"
    t = time.perf_counter()
    gen = HFGenerator(model, **kwargs)
    return gen, time.perf_counter() - t


def weight_bytes(model) -> int:
    """Bytes of the model's state dict as ``torch.save`` writes it (packed and quantized weights included)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def engine_prompts(data_dir: Path, questions: Path, split: str | None, limit: int) -> list:
    from assistant.engine import ChatEngine
    from assistant.types import Conversation
    from tether.config import load_config
    from training.adapt import PromptBuilder

    rows = [json.loads(x) for x in questions.read_text(encoding="utf-8").splitlines() if x.strip()]
    if split:
        rows = [r for r in rows if r.get("split") == split]
    cfg = load_config(data_dir)
    engine = ChatEngine(cfg, generator=PromptBuilder(), log_turns=False)
    out = []
    for r in rows:
        q = r["question"]
        retrieved = engine.retrieve(q, Conversation())
        found = engine.detect_conflicts(q, retrieved.passages)
        context = engine.select_context(q, retrieved.passages, found)
        if context.messages:  # not refused before generation
            out.append(list(context.messages))
        if len(out) == limit:
            break
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="the SmolLM2 folder (tether models install smollm2)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--data-dir", type=Path, help="an ingested data dir, for the engine's own prompts")
    ap.add_argument("--questions", type=Path, help="a QA file (JSONL with 'question') for those prompts")
    ap.add_argument("--split", default=None, help="only rows with this 'split' (dev: never report on test)")
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/quantized.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("ANONYMIZED_TELEMETRY", "False")):
        os.environ.setdefault(k, v)

    import torch

    from assistant.generators.base import GenParams
    from assistant.generators.decoding import common_prefix
    from training.parity import hf_next_logits, parity_messages, teacher_forced_agreement

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or variants[:1] != ["fp32"]:
        raise SystemExit(f"--variants: start with fp32, then any of {', '.join(VARIANTS[1:])} (unknown: {unknown})")
    messages = list(parity_messages())
    if args.data_dir and args.questions:
        messages += engine_prompts(args.data_dir, args.questions, args.split, args.limit)
    params = GenParams(max_new_tokens=args.max_new_tokens, temperature=0.0, no_repeat_ngram=0)

    gens, report = {}, {}
    for v in variants:
        gen, secs = load(args.model, v)
        gens[v] = gen
        report[v] = {"load_s": round(secs, 2), "weight_mb": round(weight_bytes(gen.model) / 2**20, 1)}
        log.info("%s: loaded in %.1f s, %.0f MB of weights", v, secs, report[v]["weight_mb"])
    prompts = [gens["fp32"].prompt_ids(m) for m in messages]
    outs: dict[str, list[list[int]]] = {v: [] for v in variants}
    ttft: dict[str, list[float]] = {v: [] for v in variants}
    per_tok: dict[str, list[float]] = {v: [] for v in variants}
    for i, p in enumerate(prompts):
        for v in variants:  # interleaved, prompt by prompt
            gen = gens[v]
            toks = list(gen.tokens(p, params))
            st = gen.last_stats
            outs[v].append(toks)
            ttft[v].append(st["ttft_ms"])
            if st["new_tokens"] > 1:
                per_tok[v].append((st["total_ms"] - st["ttft_ms"]) / (st["new_tokens"] - 1))
        log.info("prompt %d/%d (%d tokens) done", i + 1, len(prompts), len(p))
    ref = outs["fp32"]
    for v in variants:
        agreement = teacher_forced_agreement(lambda p, r, g=gens[v]: hf_next_logits(g, p, r), prompts, ref)
        report[v].update(
            {
                "exact_outputs": sum(o == r for o, r in zip(outs[v], ref)),
                "prompts": len(prompts),
                "mean_prefix_share": round(
                    statistics.fmean(common_prefix(o, r) / max(1, len(r)) for o, r in zip(outs[v], ref)), 3
                ),
                "teacher_forced_agreement": round(agreement, 4),
                "first_token_ms_median": round(statistics.median(ttft[v]), 1),
                "decode_ms_per_token_median": round(statistics.median(per_tok[v]), 1) if per_tok[v] else None,
                "sample_output": gens[v].tokenizer.decode(outs[v][-1]),
            }
        )
    base_tok = report["fp32"]["decode_ms_per_token_median"]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "threads": torch.get_num_threads(),
        "max_new_tokens": args.max_new_tokens,
        "variants": report,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(
        "| variant | weights MB | load s | greedy outputs equal | teacher-forced agreement | first token ms "
        "| decode ms/token | vs fp32 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for v in variants:
        r = report[v]
        ratio = r["decode_ms_per_token_median"] / base_tok if base_tok and r["decode_ms_per_token_median"] else None
        print(
            f"| {v} | {r['weight_mb']} | {r['load_s']} | {r['exact_outputs']}/{r['prompts']} | "
            f"{r['teacher_forced_agreement']} | {r['first_token_ms_median']} | {r['decode_ms_per_token_median']} | "
            f"{f'{ratio:.2f}x' if ratio else '-'} |"
        )
    print(f"\n{result['date']}, {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
