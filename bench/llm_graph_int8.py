"""The hf generator's ONNX graph (``tether models export-generator``) in fp32 and int8, side by side:
greedy outputs equal to fp32's, teacher-forced top-1 agreement with fp32's replies, and ms per decoded
token, on the parity prompts of ``training.parity`` (grounded chats through the model's chat template).

    .venv/bin/python bench/llm_graph_int8.py --model-dir .tether/models/smollm2-135m-instruct

The int8 graph (``training.export.quantize_int8``) is written to ``--out`` (default a temp folder).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # bench/retrieval.py would shadow the package


def main() -> None:
    from assistant.generators.base import GenParams
    from assistant.generators.onnx_lm import GRAPH_DIR, OnnxLM
    from training.export import quantize_int8
    from training.parity import parity_messages, teacher_forced_agreement

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, required=True, help="a checkpoint with its exported onnx/ graph")
    ap.add_argument("--out", type=Path, default=None, help="where the int8 graph goes")
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tether-int8-")) / "onnx-int8"
    int8_dir = quantize_int8(args.model_dir / GRAPH_DIR, out)
    graphs = {
        "fp32": OnnxLM(args.model_dir, prefix_cache=False, no_repeat_ngram=0),
        "int8": OnnxLM(args.model_dir, graph_dir=int8_dir, prefix_cache=False, no_repeat_ngram=0),
    }
    params = GenParams(max_new_tokens=args.tokens, no_repeat_ngram=0)
    prompts = [graphs["fp32"].prompt_ids(m) for m in parity_messages()]
    ref = [list(graphs["fp32"].tokens(p, params)) for p in prompts]
    print("| graph | greedy outputs equal to fp32 | teacher-forced top-1 agreement | ms/token | MB |")
    print("|---|---:|---:|---:|---:|")
    for name, gen in graphs.items():
        outs, per_token = [], []
        for p in prompts:
            outs.append(list(gen.tokens(p, params)))
            st = gen.last_stats
            per_token.append((st["total_ms"] - st["ttft_ms"]) / max(1, st["new_tokens"] - 1))
        agreement = teacher_forced_agreement(gen.teacher_forced_logits, prompts, ref)
        folder = args.model_dir / GRAPH_DIR if name == "fp32" else int8_dir
        mb = sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith("model.onnx")) / 1e6
        exact = sum(o == r for o, r in zip(outs, ref))
        print(f"| {name} | {exact}/{len(ref)} | {agreement:.3f} | {statistics.median(per_token):.1f} | {mb:.0f} |")


if __name__ == "__main__":
    main()
