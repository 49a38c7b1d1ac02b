"""Answer latency of Tether's default generator against plain transformers, on the CPU.

    .venv/bin/python bench/generation.py --questions 8 --out bench/out/generation.json

For each question from ``examples/eval/qa.jsonl`` (answerable ones) over the sample handbook:

* **tether**: ``ChatEngine.stream`` with the ``hf`` generator and SmolLM2-135M-Instruct: retrieval,
  the focused grounded prompt (closest passages, their most relevant sentences), greedy decoding,
  citations attached and verified. Time to first token and time to the full answer, both from the
  moment the question is asked (retrieval included).
  Once per ``hf.runtime`` in ``--runtimes`` (default both): ``torch`` (transformers) and ``onnx``
  (the graph of ``tether models export-generator``, exported here when missing), in turn per question.
* **plain**: what a user would write with transformers alone: the same five retrieved passages
  pasted whole into a chat prompt, ``pipeline("text-generation")`` on the same checkpoint, greedy,
  with a streamer recording the first token.

Both generate at most ``--max-new-tokens`` (80) tokens. Figures are medians/p95 over the questions,
measured interleaved in one run; on these shared 2-core machines only the ratios are meaningful.

GPU part (``--gpu``; skipped with a message when torch sees no CUDA device):

    python bench/generation.py --gpu --out bench/out/generation_gpu.json

Decode tokens/s at batch 1 of a Llama-3.1-8B-shaped random-init model (bf16, and NF4 via
bitsandbytes) with the ``hf`` generator's loop (static cache + compiled decode step, the CUDA
default) against plain ``model.generate`` on the same model in the same run, plus a CAD row
(alpha 0.5, two rows batched per step). Decode speed = (new tokens - 1) / (total - TTFT).
Targets: hf loop >= 7x plain generate in bf16; CAD <= 1.3x plain hf per token.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# bench/retrieval.py would shadow the retrieval package: import from the repository root
sys.path[0] = str(Path(__file__).resolve().parent.parent)

log = logging.getLogger("bench.generation")
ROOT = Path(__file__).resolve().parent.parent


def _pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# -- GPU: 8B-shaped random model, hf loop vs model.generate ---------------------------------------

LLAMA_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)


def _save_random_8b(out_dir: Path, layers: int) -> Path:
    """A random-init Llama-3.1-8B-shaped checkpoint (bf16) with a tiny offline tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_llm import make_tokenizer

    tok = make_tokenizer()
    config = LlamaConfig(
        **{**LLAMA_8B, "num_hidden_layers": layers},
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    # the vocabulary stays 128k (the real LM head cost); EOS is never the argmax of random logits in practice
    model.generation_config.eos_token_id = None
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    del model
    torch.cuda.empty_cache()
    return out_dir


def gpu_main(args) -> None:
    import torch

    if not torch.cuda.is_available():
        log.warning("--gpu: torch sees no CUDA device; the GPU benchmark is skipped")
        return
    from assistant.generators.base import GenParams, Message
    from assistant.generators.hf import HFGenerator

    work = Path(tempfile.mkdtemp(prefix="tether-gpubench-"))
    model_dir = _save_random_8b(work / "llama8b", args.gpu_layers)
    messages = [
        Message("system", "Answer from the sources."),
        Message("user", "Sources: " + "The canteen opens at 07:45. " * 40 + "Question: when?"),
    ]
    free = (Message("system", "Answer the question."), Message("user", "Question: when?"))
    n = args.gpu_new_tokens
    rows = []

    def timed(fn):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    for quant in args.gpu_quant:
        gen = HFGenerator(model_dir, device="cuda", load_in_4bit=quant == "nf4", dtype="bfloat16")
        ids = gen.prompt_ids(messages)
        plain_in = torch.tensor([ids], device="cuda")

        def plain():
            with torch.inference_mode():
                return gen.model.generate(
                    plain_in,
                    attention_mask=torch.ones_like(plain_in),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                )

        def hf(cad: float = 0.0):
            params = GenParams(max_new_tokens=n, cad_alpha=cad, cad_context_free=free if cad else ())
            return list(gen.stream(messages, params)), dict(gen.last_stats)

        for _ in range(2):  # warm-up: compilation (static cache + CUDA graphs) and allocator
            hf()
            hf(0.5)
        plain()
        measured = {}
        for _ in range(args.gpu_repeats):
            _, t_plain = timed(plain)
            measured.setdefault("plain generate", []).append((n - 1) / t_plain)  # includes prefill: a lower bound
            for name, cad in (("hf loop", 0.0), ("hf loop + CAD 0.5", 0.5)):
                (_, st), _ = timed(lambda: hf(cad))
                tok_s = (st["new_tokens"] - 1) / max(1e-9, (st["total_ms"] - st["ttft_ms"]) / 1000)
                measured.setdefault(name, []).append(tok_s)
        for name, vals in measured.items():
            rows.append(
                {
                    "quant": quant,
                    "loop": name,
                    "tokens_per_s": statistics.median(vals),
                    "compiled": gen.compile,
                    "cache": gen.cache_kind,
                }
            )
            log.info("%s %s: %.1f tokens/s", quant, name, statistics.median(vals))
        gen = None  # frees the model before the next quantization
        torch.cuda.empty_cache()

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "layers": args.gpu_layers,
        "new_tokens": n,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    lines = [
        "| weights | loop | decode tokens/s (batch 1) | vs plain generate | per-token cost vs hf loop |",
        "|---|---|---:|---:|---:|",
    ]
    for quant in args.gpu_quant:
        mine = {r["loop"]: r["tokens_per_s"] for r in rows if r["quant"] == quant}
        for loop, tps in mine.items():
            lines.append(
                f"| {quant} | {loop} | {tps:.1f} | {tps / mine['plain generate']:.2f}x | {mine['hf loop'] / tps:.2f}x |"
            )
    lines.append(
        f"\nLlama-3.1-8B shape ({args.gpu_layers} layers), random init, {n} new tokens, {result['device']}, {result['date']}."
    )
    sys.stdout.write("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpu", action="store_true", help="run the GPU part instead of the CPU one")
    ap.add_argument("--gpu-layers", type=int, default=32)
    ap.add_argument("--gpu-new-tokens", type=int, default=128)
    ap.add_argument("--gpu-repeats", type=int, default=3)
    ap.add_argument("--gpu-quant", nargs="+", default=["bf16", "nf4"], choices=["bf16", "nf4"])
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument(
        "--runtimes", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"], help="hf.runtime rows"
    )
    ap.add_argument("--data-dir", type=Path, default=None, help="reuse a data dir (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "generation.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.gpu:
        if args.out == ROOT / "bench" / "out" / "generation.json":
            args.out = ROOT / "bench" / "out" / "generation_gpu.json"
        return gpu_main(args)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    from transformers.generation.streamers import BaseStreamer

    from assistant.engine import ChatEngine
    from assistant.events import Final, Token
    from assistant.generators.onnx_lm import export_graph, graph_problem
    from assistant.models import install_smollm2
    from assistant.prompts import PromptSource, build_messages
    from retrieval.ingest import ingest
    from tether.config import load_config

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="tether-genbench-"))
    cfg = load_config(data_dir)
    model_dir = install_smollm2(cfg.models_dir)
    ingest(cfg, [ROOT / "examples" / "handbook"])
    cfg = cfg.with_assistant(generator="hf", model=str(model_dir), max_new_tokens=args.max_new_tokens)
    if "onnx" in args.runtimes and graph_problem(model_dir):
        export_graph(model_dir)
    engines = {
        rt: ChatEngine(dataclasses.replace(cfg, hf=dataclasses.replace(cfg.hf, runtime=rt))) for rt in args.runtimes
    }
    engine = engines[args.runtimes[0]]

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    pipe = pipeline("text-generation", model=model, tokenizer=tok, device="cpu")

    class FirstToken(BaseStreamer):
        def __init__(self):
            self.calls = 0
            self.first = None

        def put(self, value):
            self.calls += 1
            if self.calls == 2 and self.first is None:  # the first put() is the prompt
                self.first = time.perf_counter()

        def end(self):
            pass

    questions = [
        json.loads(line) for line in (ROOT / "examples" / "eval" / "qa.jsonl").read_text().splitlines() if line.strip()
    ]
    questions = [q for q in questions if not q.get("unanswerable")][: args.questions]
    rows = []
    for eng in engines.values():
        eng.answer("warm-up: how long is the probation period?")

    def run_engine(eng, question):
        t0 = time.perf_counter()
        first = None
        answer = None
        for item in eng.stream(question):
            if isinstance(item, Token) and first is None:
                first = time.perf_counter()
            elif isinstance(item, Final):
                answer = item.answer
        return (first or time.perf_counter()) - t0, time.perf_counter() - t0, answer

    for q in questions:
        gold = q.get("answers") or []
        per_runtime = {}
        for rt, eng in engines.items():
            t_first, t_total, answer = run_engine(eng, q["question"])
            per_runtime[rt] = {
                "first_s": t_first,
                "total_s": t_total,
                "correct": any(g.lower() in answer.text.lower() for g in gold),
                "text": answer.text,
            }
        t_first, t_total = per_runtime[args.runtimes[0]]["first_s"], per_runtime[args.runtimes[0]]["total_s"]
        prompt_tokens = engine.generator.last_stats.get("prompt_tokens")

        t0 = time.perf_counter()
        hits = engine.searcher.search(q["question"], k=cfg.assistant.top_k)
        messages = build_messages(
            q["question"], [PromptSource(h.title, h.text, h.date, h.authority, h.status) for h in hits]
        )
        chat = [{"role": m.role, "content": m.content} for m in messages]
        streamer = FirstToken()
        out = pipe(chat, max_new_tokens=args.max_new_tokens, do_sample=False, streamer=streamer, return_full_text=False)
        p_total = time.perf_counter() - t0
        p_first = (streamer.first or time.perf_counter()) - t0
        plain_prompt_tokens = len(
            tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        )
        row = {
            "id": q["id"],
            "tether_first_s": t_first,
            "tether_total_s": t_total,
            "tether_prompt_tokens": prompt_tokens,
            "tether_correct": per_runtime[args.runtimes[0]]["correct"],
            "runtimes": per_runtime,
            "plain_first_s": p_first,
            "plain_total_s": p_total,
            "plain_prompt_tokens": plain_prompt_tokens,
            "plain_correct": any(g.lower() in out[0]["generated_text"].lower() for g in gold),
        }
        log.info("%s", row)
        rows.append(row)

    def summary(key):
        vals = [r[key] for r in rows]
        return statistics.median(vals), _pct(vals, 0.95)

    table = {k: summary(k) for k in ("tether_first_s", "tether_total_s", "plain_first_s", "plain_total_s")}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "questions": len(rows),
        "max_new_tokens": args.max_new_tokens,
        "rows": rows,
        "summary": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    tf, tt, pf, pt = (table[k][0] for k in ("tether_first_s", "tether_total_s", "plain_first_s", "plain_total_s"))
    lines = [
        "| pipeline | first token p50 s | p95 s | full answer p50 s | p95 s | prompt tokens p50 | correct |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rt in args.runtimes:
        firsts = [r["runtimes"][rt]["first_s"] for r in rows]
        totals = [r["runtimes"][rt]["total_s"] for r in rows]
        lines.append(
            f"| tether (hf on {rt}, SmolLM2) | {statistics.median(firsts):.2f} | {_pct(firsts, 0.95):.2f} | "
            f"{statistics.median(totals):.2f} | {_pct(totals, 0.95):.2f} | "
            f"{statistics.median(r['tether_prompt_tokens'] or 0 for r in rows):.0f} | "
            f"{sum(r['runtimes'][rt]['correct'] for r in rows)}/{len(rows)} |"
        )
    lines += [
        f"| plain pipeline | {pf:.2f} | {table['plain_first_s'][1]:.2f} | {pt:.2f} | {table['plain_total_s'][1]:.2f} | "
        f"{statistics.median(r['plain_prompt_tokens'] for r in rows):.0f} | {sum(r['plain_correct'] for r in rows)}/{len(rows)} |",
        "",
        f"Speed-up of hf on {args.runtimes[0]} against plain (p50): first token {pf / tf:.1f}x, full answer {pt / tt:.1f}x. "
        f"{result['date']}, {result['platform']}, {result['cpus']} CPUs.",
    ]
    if len(args.runtimes) == 2:
        same = sum(r["runtimes"]["torch"]["text"] == r["runtimes"]["onnx"]["text"] for r in rows)
        lines.append(f"Answers identical on both runtimes: {same}/{len(rows)}.")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
