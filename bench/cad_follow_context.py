"""Does SmolLM2 answer from a counterfactual context? Follow-context rate with and without
context-aware decoding, on the CPU.

    .venv/bin/python bench/cad_follow_context.py --limit 16 --out bench/out/cad_follow_context.json

Each case of ``examples/eval/counterfactual.jsonl`` is asked with the engine's grounded prompt
(``build_messages(question, [PromptSource(source, context)])``: the counterfactual context is the
only source), greedy, in five settings: plain, CAD alpha=0.5, CAD alpha=1 (context-free pass:
``build_context_free_messages(question)``), adaptive CAD (AdaCAD: the weight of each step is the
Jensen-Shannon divergence of the two rows), and plain with the faithful system prompt
(``faithful=True``). ``follows_context`` sorts each answer into follows (the new value, not the old),
original (the old value) or neither. Decode cost is the mean milliseconds per generated token after
the first (CAD decodes a second row per step), measured in the same run.
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

sys.path[0] = str(Path(__file__).resolve().parent.parent)

log = logging.getLogger("bench.cad_follow_context")
ROOT = Path(__file__).resolve().parent.parent

SETTINGS = (  # name, cad_alpha, faithful system prompt, adaptive (AdaCAD: alpha = JSD per step)
    ("plain", 0.0, False, False),
    ("cad alpha=0.5", 0.5, False, False),
    ("cad alpha=1", 1.0, False, False),
    ("adaptive cad", 0.5, False, True),
    ("faithful prompt", 0.0, True, False),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=Path, default=ROOT / "examples" / "eval" / "counterfactual.jsonl")
    ap.add_argument("--limit", type=int, default=0, help="first N cases (0 = all)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument(
        "--model-dir", type=Path, default=None, help="a converted SmolLM2 folder (default: install into --data-dir)"
    )
    ap.add_argument("--data-dir", type=Path, default=ROOT / ".tether")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "cad_follow_context.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch

    from assistant.counterfactual import follows_context, load_cases
    from assistant.generators.base import GenParams
    from assistant.generators.hf import HFGenerator
    from assistant.models import install_smollm2
    from assistant.prompts import PromptSource, build_context_free_messages, build_messages

    model_dir = args.model_dir or install_smollm2(args.data_dir / "models")
    gen = HFGenerator(model_dir, device="cpu", prefix_cache=False)
    cases = load_cases(args.cases)
    cases = cases[: args.limit] if args.limit else cases
    rows = []
    for case in cases:
        free = tuple(build_context_free_messages(case["question"]))
        src = [PromptSource(case.get("source") or "document", case["context"])]
        for name, alpha, faithful, adaptive in SETTINGS:
            messages = build_messages(case["question"], src, faithful=faithful)
            params = GenParams(
                max_new_tokens=args.max_new_tokens,
                cad_alpha=alpha,
                cad_adaptive=adaptive,
                cad_context_free=free if alpha else (),
            )
            t0 = time.perf_counter()
            text = "".join(gen.stream(messages, params))
            wall = time.perf_counter() - t0
            st = gen.last_stats
            per_token = (st["total_ms"] - st["ttft_ms"]) / max(1, st["new_tokens"] - 1)
            verdict = follows_context(text, case)
            rows.append(
                {
                    "id": case["id"],
                    "setting": name,
                    "answer": text,
                    "verdict": verdict,
                    "ms_per_token": per_token,
                    "ttft_ms": st["ttft_ms"],
                    "new_tokens": st["new_tokens"],
                    "wall_s": wall,
                }
            )
            log.info("%s %-16s %-5s %s", case["id"], name, verdict, text[:80].replace("\n", " "))

    summary = {}
    for name, *_ in SETTINGS:
        mine = [r for r in rows if r["setting"] == name]
        n = len(mine)
        summary[name] = {
            "cases": n,
            "follows": sum(r["verdict"] is True for r in mine),
            "original": sum(r["verdict"] is False for r in mine),
            "neither": sum(r["verdict"] is None for r in mine),
            "ms_per_token": statistics.mean(r["ms_per_token"] for r in mine if r["new_tokens"] > 1),
            "ttft_ms_p50": statistics.median(r["ttft_ms"] for r in mine),
        }
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": str(model_dir),
        "max_new_tokens": args.max_new_tokens,
        "summary": summary,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    base = summary["plain"]["ms_per_token"]
    lines = [
        "| setting | follows context | states original | neither | decode ms/token | vs plain | TTFT p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        n = s["cases"]
        lines.append(
            f"| {name} | {s['follows']}/{n} ({s['follows'] / n:.0%}) | {s['original']}/{n} ({s['original'] / n:.0%}) | "
            f"{s['neither']}/{n} ({s['neither'] / n:.0%}) | {s['ms_per_token']:.1f} | {s['ms_per_token'] / base:.2f}x | {s['ttft_ms_p50']:.0f} |"
        )
    lines.append(
        f"\nSmolLM2-135M-Instruct, greedy, {len(cases)} counterfactual cases, {result['date']}, {result['platform']}, {result['cpus']} CPUs."
    )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
