"""Latency of conflict detection on top of search: what ``detect`` adds to a question.

    .venv/bin/python bench/conflict_latency.py --out bench/out/conflict-latency.json

Ingests ``examples/handbook`` into temporary data dirs, with and without the claim vectors stored at
ingest (``conflicts.vectors_at_ingest``), in turn ``--ingest-runs`` times each (the ingest cost of the
claim vectors), then runs every question of ``examples/eval/qa.jsonl`` and the ``question`` of every
row of ``examples/eval/handbook_conflicts.jsonl`` with k=8. For each question it times search alone,
then ``RuleConflictDetector.detect`` on the hits: cold (a fresh detector, so every flagged claim is
embedded), cold with the stored claim vectors (a fresh detector reading them, as a new ``tether ask``
process does) and warm (the same detector again, vectors from its LRU). The baseline is search alone,
measured in the same run; the ratio is (search + detect) / search. Prints a Markdown table and writes
JSON to ``--out``.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench.conflict_latency")


def _p(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def questions() -> list[str]:
    out = []
    for name in ("qa.jsonl", "handbook_conflicts.jsonl"):
        for line in (ROOT / "examples" / "eval" / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("question") and not row.get("generated"):
                    out.append(row["question"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    ap.add_argument("-k", type=int, default=8)
    ap.add_argument("--passes", type=int, default=3, help="warm passes over all questions")
    ap.add_argument("--ingest-runs", type=int, default=3, help="ingests of the handbook with and without claim vectors")
    ap.add_argument(
        "--encoder-from",
        type=Path,
        default=ROOT / ".tether",
        help="a data dir whose models/encoders holds the ONNX export (the shipped default encoder; `make install` "
        "makes it under .tether); without one the sentence-transformers embedder is measured",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

    import dataclasses
    import shutil

    from retrieval.conflicts import RuleConflictDetector
    from retrieval.embeddings import embedder_for
    from retrieval.ingest import ingest
    from retrieval.ledger import ClaimVectorStore
    from retrieval.search import Searcher
    from tether.config import load_config

    qs = questions()
    with tempfile.TemporaryDirectory(prefix="tether-conflicts-") as tmp:
        encoders = args.encoder_from / "models" / "encoders"
        if encoders.is_dir():  # every ingest below is given this one embedder
            shutil.copytree(encoders, Path(tmp) / "data" / "models" / "encoders")
        cfg = load_config(Path(tmp) / "data")
        embedder = embedder_for(cfg)
        ingest_s: dict[str, list[float]] = {"without claim vectors": [], "with claim vectors": []}
        for run in range(args.ingest_runs):  # in turn, so load from other work hits both alike
            for label, on in (("without claim vectors", False), ("with claim vectors", True)):
                c = load_config(Path(tmp) / f"ingest-{run}-{on}")
                c = dataclasses.replace(c, conflicts=dataclasses.replace(c.conflicts, vectors_at_ingest=on))
                t = time.perf_counter()
                ingest(c, [ROOT / "examples" / "handbook"], embedder=embedder)
                ingest_s[label].append(time.perf_counter() - t)
        ingest(cfg, [ROOT / "examples" / "handbook"], embedder=embedder)
        searcher = Searcher(cfg, embedder=embedder)
        stored = ClaimVectorStore(cfg.db_path, cfg.retrieval.embed_identity)
        for q in qs[:5]:  # warm-up: BM25 index, torch kernels
            searcher.search(q, k=args.k)

        cold_detector = RuleConflictDetector(embedder)
        search_ms, cold_ms, stored_ms, warm_ms, n_conflicts, n_claims = [], [], [], [], [], []
        stored_embedded = 0
        hits_by_q = {}
        for q in qs:
            t = time.perf_counter()
            hits = searcher.search(q, k=args.k)
            search_ms.append((time.perf_counter() - t) * 1e3)
            hits_by_q[q] = hits
            fresh = RuleConflictDetector(embedder)  # cold: nothing cached
            t = time.perf_counter()
            found = fresh.detect(hits)
            cold_ms.append((time.perf_counter() - t) * 1e3)
            reading = RuleConflictDetector(embedder, stored=stored)  # cold, vectors stored at ingest
            t = time.perf_counter()
            same = reading.detect(hits)
            stored_ms.append((time.perf_counter() - t) * 1e3)
            stored_embedded += reading.embedded
            if same != found:
                raise SystemExit(f"the stored claim vectors changed what detect finds for {q!r}")
            n_conflicts.append(len(found))
            n_claims.append(len(fresh.claims(hits)))
            cold_detector.detect(hits)  # fill the shared detector for the warm passes
        for _ in range(args.passes):
            for q in qs:
                t = time.perf_counter()
                hits = searcher.search(q, k=args.k)
                s_ms = (time.perf_counter() - t) * 1e3
                t = time.perf_counter()
                cold_detector.detect(hits)
                warm_ms.append((time.perf_counter() - t) * 1e3)
                search_ms.append(s_ms)
        searcher.close()
        stored.close()

    def stats(xs):
        return {
            "p50": round(_p(xs, 0.5), 2),
            "p95": round(_p(xs, 0.95), 2),
            "mean": round(statistics.fmean(xs), 2),
            "n": len(xs),
        }

    s50 = _p(search_ms, 0.5)
    result = {
        "questions": len(qs),
        "k": args.k,
        "search_ms": stats(search_ms),
        "detect_cold_ms": stats(cold_ms),
        "detect_cold_stored_ms": stats(stored_ms),
        "detect_cold_stored_embedded": stored_embedded,
        "detect_warm_ms": stats(warm_ms),
        "ingest_s": {k: [round(x, 2) for x in v] for k, v in ingest_s.items()},
        "ingest_ratio_median": round(
            statistics.median(ingest_s["with claim vectors"]) / statistics.median(ingest_s["without claim vectors"]), 3
        ),
        "ratio_p50_cold": round((s50 + _p(cold_ms, 0.5)) / s50, 3),
        "ratio_p50_warm": round((s50 + _p(warm_ms, 0.5)) / s50, 3),
        "conflicts_per_question": round(statistics.fmean(n_conflicts), 2),
        "questions_with_conflicts": sum(1 for n in n_conflicts if n),
        "claims_per_question": round(statistics.fmean(n_claims), 1),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "embedder": cfg.retrieval.embed_identity,
            "encoder": type(embedder).__name__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    rows = [
        ("search alone", result["search_ms"]),
        ("detect, cold (fresh detector)", result["detect_cold_ms"]),
        ("detect, cold, claim vectors stored at ingest", result["detect_cold_stored_ms"]),
        ("detect, warm (LRU filled)", result["detect_warm_ms"]),
    ]
    lines = [
        f"Conflict detection latency ({type(embedder).__name__}): {len(qs)} questions, k={args.k}, "
        f"{result['claims_per_question']} claims per question",
        "",
        "| step | p50 ms | p95 ms | mean ms | n |",
        "|---|---|---|---|---|",
        *[f"| {name} | {s['p50']} | {s['p95']} | {s['mean']} | {s['n']} |" for name, s in rows],
        "",
        f"(search + detect) / search at p50: cold {result['ratio_p50_cold']}x, warm {result['ratio_p50_warm']}x; "
        f"{result['questions_with_conflicts']} of {len(qs)} questions report a conflict "
        f"({result['conflicts_per_question']} per question). Claims embedded by the detectors reading the stored "
        f"vectors: {stored_embedded}.",
        "",
        "Ingest of the handbook, seconds per run: "
        + "; ".join(f"{k}: {', '.join(f'{x:.2f}' for x in v)}" for k, v in ingest_s.items())
        + f" (median ratio {result['ingest_ratio_median']}x).",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
