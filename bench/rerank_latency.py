"""Query latency of ``Searcher.search(question, k=5)`` without and with a reranker re-scoring the
fused top N, over the questions of one external QA set (issue 11; docs/BENCHMARKS.md).

Uses a data dir that ``bench/external_qa.py`` ingested (``--data-dir``) and a reranker folder that
``tether train reranker`` wrote there (``--reranker``). Each question is searched once to warm up,
then ``--repeat`` times per setting; the median and p90 of all timed searches are printed as
JSON, with the reranker's own share (``Searcher.last_timings.rerank_ms``).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false \\
        .venv/bin/python bench/rerank_latency.py --data-dir /tmp/tether-extqa/postgresql-XXXX \\
        --reranker /tmp/tether-extqa/postgresql-XXXX/models/reranker-tether/v1 --qa bench/data/postgresql/qa.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--reranker", type=Path, required=True)
    ap.add_argument("--qa", type=Path, required=True, help="JSONL with a question per row")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--top", type=int, action="append", help="fused candidates re-scored (repeatable; default 10, 20)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("-k", type=int, default=5)
    args = ap.parse_args(argv)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    sys.path.insert(0, str(REPO))
    from retrieval.embeddings import embedder_for
    from retrieval.search import Searcher
    from tether.config import load_config

    rows = [json.loads(line) for line in args.qa.read_text(encoding="utf-8").splitlines() if line.strip()]
    questions = [r["question"] for r in rows if r.get("split", args.split) == args.split]
    cfg = load_config(args.data_dir)
    embedder = embedder_for(cfg)
    settings = {"none": cfg.with_retrieval(reranker="off")}
    for top in args.top or [10, 20]:
        settings[f"top{top}"] = cfg.with_retrieval(reranker=str(args.reranker), rerank_top=top)
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "questions": len(questions),
        "k": args.k,
        "settings": {},
    }
    for name, c in settings.items():
        s = Searcher(c, embedder=embedder)
        try:
            for q in questions:
                s.search(q, k=args.k)  # warm-up: loads the reranker, fills caches
            total, rerank = [], []
            for _ in range(args.repeat):
                for q in questions:
                    t = time.perf_counter()
                    s.search(q, k=args.k)
                    total.append((time.perf_counter() - t) * 1e3)
                    rerank.append(s.last_timings.rerank_ms)
        finally:
            s.close()
        out["settings"][name] = {
            "median_ms": round(statistics.median(total), 1),
            "p90_ms": _pct(total, 0.9),
            "median_rerank_ms": round(statistics.median(rerank), 1),
        }
    out["load_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
