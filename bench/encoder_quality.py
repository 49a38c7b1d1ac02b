"""Are the ONNX encoder's vectors interchangeable with the torch ones? Recall on the Debian set.

Ingests the Debian Reference pages (``bench/retrieval_quality.py``'s corpus and QA set) twice, once
with each encoder (torch int8 via sentence-transformers, and the ONNX int8 export), then searches
each index with each encoder's query vectors: four cells of recall@5 / MRR@5, hybrid and dense
only. Also the per-chunk cosine between the two encoders' vectors of the same chunks.

Needs the export (``tether --data-dir DIR models export-encoder``)::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false \\
        .venv/bin/python bench/encoder_quality.py --encoder-dir .tether/models/encoders/all-MiniLM-L6-v2 \\
        --out bench/out/encoder_quality.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the repository root first: bench/retrieval.py would shadow the retrieval package
sys.path[0:0] = [str(Path(__file__).resolve().parent.parent)]
sys.path.append(str(Path(__file__).resolve().parent))

from retrieval_quality import K, Retrieved, copy_corpus, load_qa, run_queries  # noqa: E402

log = logging.getLogger("encoder_quality")


def summarise(results) -> dict[str, float]:
    ranks = [r.rank for r in results]
    return {
        "recall@5": round(sum(1 for r in ranks if r is not None) / len(ranks), 3),
        "recall@1": round(sum(1 for r in ranks if r == 1) / len(ranks), 3),
        "mrr@5": round(sum(1.0 / r for r in ranks if r is not None) / len(ranks), 3),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder-dir", type=Path, required=True, help="folder written by `tether models export-encoder`")
    ap.add_argument("--html-dir", type=Path, default=Path("/usr/share/debian-reference"))
    ap.add_argument("--qa", type=Path, default=Path(__file__).parent / "data" / "debian_reference_qa.jsonl")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from retrieval.embeddings import SentenceTransformerEmbedder
    from retrieval.ingest import ingest
    from retrieval.onnx_encoder import INT8_FILE, OnnxEmbedder
    from retrieval.search import Searcher
    from tether.config import load_config

    questions = load_qa(args.qa)
    encoders = {
        "torch-int8": SentenceTransformerEmbedder(int8=True),
        "onnx-int8": OnnxEmbedder(args.encoder_dir / INT8_FILE, name="all-MiniLM-L6-v2"),
    }
    report: dict = {"ingest_s": {}, "cells": {}}
    with tempfile.TemporaryDirectory(prefix="encoder-quality-") as tmp:
        html = Path(tmp) / "html"
        copy_corpus(args.html_dir, html)
        dirs = {}
        for name, enc in encoders.items():
            cfg = load_config(data_dir=Path(tmp) / name)
            t = time.perf_counter()
            summary = ingest(cfg, [html], embedder=enc)
            report["ingest_s"][name] = round(time.perf_counter() - t, 1)
            log.info("%s: %d chunks in %.1fs", name, summary.chunks_total, report["ingest_s"][name])
            dirs[name] = cfg
        for docs_name, cfg in dirs.items():
            for query_name, enc in encoders.items():
                searcher = Searcher(cfg, embedder=enc)
                try:
                    searcher.search("warm-up", k=K)
                    hybrid = run_queries(
                        questions, lambda q: [Retrieved(h.text, h.source) for h in searcher.search(q, k=K)]
                    )
                    text_of = {
                        r["id"]: (r["text"], r["source"])
                        for r in searcher.db.execute(
                            "SELECT c.id, c.text, d.source FROM chunks c JOIN documents d ON d.id = c.document_id"
                        )
                    }

                    def dense_only(q: str) -> list[Retrieved]:
                        hits = searcher.store.query(enc.embed_query(q), K, None)
                        return [Retrieved(*text_of[h.id]) for h in hits if h.id in text_of]

                    dense = run_queries(questions, dense_only)
                finally:
                    searcher.close()
                cell = {"hybrid": summarise(hybrid), "dense": summarise(dense)}
                report["cells"][f"docs {docs_name} / queries {query_name}"] = cell
                log.info("docs %s, queries %s: %s", docs_name, query_name, cell)
        # per-chunk agreement of the two encoders on the same texts (one index's chunk texts)
        import sqlite3

        with sqlite3.connect(dirs["torch-int8"].db_path) as db:
            rows = db.execute("SELECT text FROM chunks").fetchall()
        texts = [r[0] for r in rows]
        a = encoders["torch-int8"].embed_batch(texts)
        b = encoders["onnx-int8"].embed_batch(texts)
        cos = np.sum(a * b, axis=1)
        report["chunk_cosine_torch_int8_vs_onnx_int8"] = {
            "n": len(texts),
            "mean": round(float(cos.mean()), 4),
            "p5": round(float(np.percentile(cos, 5)), 4),
            "min": round(float(cos.min()), 4),
        }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
