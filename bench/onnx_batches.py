"""Micro-benchmark of the ONNX encoder's ingest path: ``OnnxEmbedder.embed_batch`` with its batches side by
side on one single-threaded session per core (the default) against all of them in one session with
intra-op threads (``side_by_side_min`` raised past the batch count), and side by side with batches of 8.
Rounds interleave the variants; the chunks are those of an ingested data dir::

    .venv/bin/python bench/onnx_batches.py --data-dir D --encoder-from .tether --chunks 384 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # bench/retrieval.py would shadow the retrieval package


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="an ingested data dir (its chunks are embedded)")
    ap.add_argument("--encoder-from", type=Path, default=ROOT / ".tether", help="a data dir holding the ONNX export")
    ap.add_argument("--chunks", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import numpy as np

    from retrieval.ledger import Ledger
    from retrieval.onnx_encoder import INT8_FILE, OnnxEmbedder
    from tether.config import DEFAULT_EMBED_MODEL, load_config

    onnx = args.encoder_from / "models" / "encoders" / DEFAULT_EMBED_MODEL / INT8_FILE
    if not onnx.is_file():
        raise SystemExit(f"no ONNX export at {onnx}: tether --data-dir {args.encoder_from} models export-encoder")
    cfg = load_config(args.data_dir)
    with Ledger.open(cfg.db_path) as ledger:
        texts = [c.index_text for c in ledger.collection_chunks(cfg.retrieval.collection)][: args.chunks]
    one = OnnxEmbedder(onnx, DEFAULT_EMBED_MODEL, batch_size=4)
    one.side_by_side_min = 10**9
    variants = {
        "one session, batches of 4": one,
        "side by side, batches of 4 (default)": OnnxEmbedder(onnx, DEFAULT_EMBED_MODEL, batch_size=4),
        "side by side, batches of 8": OnnxEmbedder(onnx, DEFAULT_EMBED_MODEL, batch_size=8),
    }
    first = {name: enc.embed_batch(texts) for name, enc in variants.items()}  # warm-up, and the vectors
    ref = first["one session, batches of 4"]
    side = first["side by side, batches of 4 (default)"]
    print(f"{len(texts)} chunks; side by side vs one session: max abs difference {float(np.abs(side - ref).max()):.2e}")
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, enc in variants.items():
            t = time.perf_counter()
            enc.embed_batch(texts)
            rates[name].append(len(texts) / (time.perf_counter() - t))
    for name, got in rates.items():
        print(f"{name}: {statistics.median(got):.1f} chunks/s median ({', '.join(f'{x:.1f}' for x in got)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
