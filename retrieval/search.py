"""``tether search``: hybrid retrieval, dense (Chroma) + lexical (BM25), fused by reciprocal rank.

Candidates from both sides are fused with RRF (score = sum of 1 / (rrf_k + rank)), joined against
the ingest ledger (so only committed chunks are ever returned), optionally re-scored by a
cross-encoder, and returned as typed ``SearchHit`` values.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from retrieval.ledger import ChunkRow, Ledger
from tether.config import TetherConfig
from tether.errors import IndexEmpty

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchFilters:
    source: str | None = None  # a glob over source paths, e.g. "policies/*.md"
    date_from: str | None = None  # ISO dates, inclusive, on the document date
    date_to: str | None = None

    def active(self) -> bool:
        return bool(self.source or self.date_from or self.date_to)


@dataclass(frozen=True)
class SearchHit:
    id: str
    text: str
    source: str
    title: str
    span: tuple[int, int]
    page: int | None
    score: float  # fused (RRF) score, or the reranker's score when one is configured
    rank: int
    dense_score: float | None
    bm25_score: float | None
    date: str | None
    status: str | None
    authority: str | None
    document_id: int
    rerank_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["span"] = list(self.span)
        return out


@dataclass(frozen=True)
class IndexHealth:
    """Whether the dense half can answer: the vector store's count against the ledger's (cheap,
    two counts). ``warning`` is None when they agree."""

    collection: str
    ledger_chunks: int
    dense_vectors: int

    @property
    def ok(self) -> bool:
        return self.ledger_chunks == self.dense_vectors

    @property
    def warning(self) -> str | None:
        if self.ok:
            return None
        if self.dense_vectors == 0:
            what = f"the vector store of collection '{self.collection}' is empty while the ledger holds {self.ledger_chunks} chunks: results come from BM25 alone"
        else:
            what = (
                f"the vector store of collection '{self.collection}' is out of step with the ledger ({self.dense_vectors} vectors for "
                f"{self.ledger_chunks} chunks): dense results may be missing"
            )
        return what + "; run `tether doctor --repair` (or `tether ingest` again) to re-embed"


@dataclass
class SearchTimings:
    embed_ms: float = 0.0
    dense_ms: float = 0.0
    bm25_ms: float = 0.0
    fuse_ms: float = 0.0
    rerank_ms: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def rrf_fuse(
    rankings: Sequence[Sequence[str]], k: int, weights: Sequence[float] | None = None
) -> list[tuple[str, float]]:
    """Reciprocal rank fusion of ranked id lists (rank 1 = best): score = sum of w / (k + rank),
    with one weight per list (default 1 each).

    Ties (the same ranks swapped between lists) go to the better rank in the first list, so the
    order never depends on ids; pass the dense ranking first.
    """
    scores: dict[str, float] = {}
    first_rank: dict[str, int] = {}
    for i, ranking in enumerate(rankings):
        w = 1.0 if weights is None else float(weights[i])
        for rank, cid in enumerate(ranking, start=1):
            scores[cid] = scores.get(cid, 0.0) + w / (k + rank)
            if i == 0:
                first_rank[cid] = rank
    return sorted(scores.items(), key=lambda kv: (-round(kv[1], 12), first_rank.get(kv[0], 1 << 30), kv[0]))


def rerank_order(
    fused: Sequence[tuple[str, float]], rerank: dict[str, float], weight: float, k: int
) -> list[tuple[str, float]]:
    """The fused candidates in the reranker's order (``weight`` 1), or ordered by reciprocal rank
    fusion of the reranker's ranking (weight ``weight``) and the fused one (``1 - weight``). Ties keep
    the fused order."""
    order = {cid: i for i, (cid, _) in enumerate(fused)}
    by_rerank = sorted(fused, key=lambda kv: (-rerank[kv[0]], order[kv[0]]))
    if weight >= 1:
        return by_rerank
    mixed = rrf_fuse([[cid for cid, _ in by_rerank], [cid for cid, _ in fused]], k, weights=(weight, 1 - weight))
    score = dict(fused)
    return [(cid, score[cid]) for cid, _ in mixed]


def page_fuse(
    fused: Sequence[tuple[str, float]], page_of: dict[str, int], k: int, weight: float, best: int = 2
) -> list[tuple[str, float]]:
    """Chunk-level plus page-level fusion: each page scores the sum of the fused scores of its
    ``best`` best chunks; pages are ranked by it, and every chunk gets ``weight / (k + its page's
    rank)`` added to its own fused score. Chunks without a page (``page_of`` lacks them) get nothing
    added. Ties keep the order of ``fused``."""
    per_page: dict[int, list[float]] = {}
    for cid, score in fused:
        page = page_of.get(cid)
        if page is not None and len(per_page.setdefault(page, [])) < best:
            per_page[page].append(score)
    ranked = sorted(per_page, key=lambda p: -sum(per_page[p]))  # stable: first-seen page wins a tie
    page_rank = {p: r for r, p in enumerate(ranked, start=1)}
    out = [(cid, score + (weight / (k + page_rank[page_of[cid]]) if cid in page_of else 0.0)) for cid, score in fused]
    order = {cid: i for i, (cid, _) in enumerate(fused)}
    return sorted(out, key=lambda kv: (-round(kv[1], 12), order[kv[0]]))


class Searcher:
    """Hybrid search over one collection. Build once and reuse: it holds the embedder and indexes."""

    def __init__(self, cfg: TetherConfig, collection: str | None = None, *, embedder=None, store=None):
        from retrieval.embeddings import embedder_for
        from retrieval.store import ChromaStore

        self.cfg = cfg
        self.collection = collection or cfg.retrieval.collection
        self.ledger = Ledger.open(cfg.db_path)
        self.embedder = embedder or embedder_for(cfg)
        self.store = store or ChromaStore(cfg, self.collection)
        self._bm25 = None
        self._reranker = None
        self._health: tuple[int, IndexHealth] | None = None  # (ledger generation, health then)
        self._lock = threading.Lock()
        self.last_timings = SearchTimings()

    @property
    def db(self):
        """The ledger's connection (bench scripts read it); search itself goes through ``self.ledger``."""
        return self.ledger.db

    def close(self) -> None:
        self.ledger.close()

    # -- indexes ----------------------------------------------------------------------------

    def bm25(self):
        """The BM25 index, rebuilt from the ledger when it lags behind the collection."""
        from retrieval.bm25 import BM25Index

        gen = self.ledger.generation(self.collection)
        with self._lock:
            if self._bm25 is not None and self._bm25.generation == gen:
                return self._bm25
            folder = self.cfg.bm25_dir / self.collection
            index = BM25Index.load(folder)
            if index is None or index.generation != gen:
                ids, texts = self.ledger.all_chunks(self.collection)
                index = BM25Index.build(ids, texts, gen)
                try:
                    index.save(folder)
                except OSError as exc:
                    log.warning("could not save the BM25 index to %s: %s", folder, exc)
            self._bm25 = index
            return index

    def health(self) -> IndexHealth:
        """The dense index against the ledger, checked once per ledger generation (two counts)."""
        gen = self.ledger.generation(self.collection)
        cached = self._health
        if cached is not None and cached[0] == gen:
            return cached[1]
        health = IndexHealth(self.collection, self.ledger.chunk_count(self.collection), int(self.store.count()))
        self._health = (gen, health)
        return health

    def _check_health(self) -> None:
        """Log the dense half's warning once per ledger generation (the first search after a change)."""
        fresh = self._health is None or self._health[0] != self.ledger.generation(self.collection)
        health = self.health()
        if fresh and health.warning:
            log.warning("%s", health.warning)

    def reranker(self):
        """The cross-encoder named by ``retrieval.reranker`` (loaded on first use), or None: without
        one, search never imports torch or sentence-transformers."""
        path = self.cfg.retrieval.reranker_path
        if path is None:
            return None
        if self._reranker is None:
            from tether.crossencoder import load_cross_encoder

            self._reranker = load_cross_encoder(path, setting="retrieval.reranker", what="reranker")
        return self._reranker

    # -- search -----------------------------------------------------------------------------

    def search(self, query: str, k: int = 5, filters: SearchFilters | None = None) -> list[SearchHit]:
        query = (query or "").strip()
        if not query:
            return []
        filters = filters or SearchFilters()
        timings = SearchTimings()
        n_cand = max(self.cfg.retrieval.candidates, k)
        bm25 = self.bm25()
        if not bm25.ids:
            raise IndexEmpty(f"collection '{self.collection}' holds no documents: run `tether ingest PATH` first")
        self._check_health()
        where, mask = None, None
        if filters.active():
            allowed_sources = self._sources_matching(filters)
            if not allowed_sources:
                return []
            where = {"source": {"$in": sorted(allowed_sources)}}
            allowed_ids = self._chunk_ids_of(allowed_sources)
            mask = np.fromiter((cid in allowed_ids for cid in bm25.ids), dtype=bool, count=len(bm25.ids))

        t = time.perf_counter()
        qvec = self.embedder.embed_query(query)
        timings.embed_ms = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        dense = self.store.query(qvec, n_cand, where)
        timings.dense_ms = (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        lexical = bm25.search(query, n_cand, mask)
        timings.bm25_ms = (time.perf_counter() - t) * 1e3

        t = time.perf_counter()
        r = self.cfg.retrieval
        fused = rrf_fuse(
            [[h.id for h in dense], [cid for cid, _ in lexical]], r.rrf_k, weights=(r.dense_weight, r.bm25_weight)
        )
        dense_by_id = {h.id: h.similarity for h in dense}
        bm25_by_id = dict(lexical)
        reranker = self.reranker()
        take = max(k, r.rerank_top) if reranker else k
        if r.page_weight > 0:
            rows = self._rows([cid for cid, _ in fused])
            page_of = {cid: row.document_id for cid, row in rows.items()}
            fused = page_fuse(fused, page_of, r.rrf_k, r.page_weight, r.page_chunks)
        else:
            rows = self._rows([cid for cid, _ in fused[: take * 2]])
        scored = [(cid, s) for cid, s in fused if cid in rows][:take]
        timings.fuse_ms = (time.perf_counter() - t) * 1e3

        rerank: dict[str, float] = {}
        if reranker and scored:
            t = time.perf_counter()
            # the reranker reads what it was trained on: the heading path before the text
            pairs = [(query, rows[cid].index_text) for cid, _ in scored]
            values = reranker.predict(pairs, show_progress_bar=False)
            rerank = {cid: float(v) for (cid, _), v in zip(scored, values)}
            scored = rerank_order(scored, rerank, r.rerank_weight, r.rrf_k)
            timings.rerank_ms = (time.perf_counter() - t) * 1e3
        self.last_timings = timings

        hits = []
        for rank, (cid, score) in enumerate(scored[:k], start=1):
            r = rows[cid]
            hits.append(
                SearchHit(
                    id=cid,
                    text=r.text,
                    source=r.source,
                    title=r.title,
                    span=(int(r.start_char), int(r.end_char)),
                    page=r.page,
                    score=rerank.get(cid, score),
                    rank=rank,
                    dense_score=dense_by_id.get(cid),
                    bm25_score=bm25_by_id.get(cid),
                    date=r.doc_date,
                    status=r.status,
                    authority=r.authority,
                    document_id=int(r.document_id),
                    rerank_score=rerank.get(cid),
                )
            )
        return hits

    def _rows(self, ids: Sequence[str]) -> dict[str, ChunkRow]:
        return self.ledger.chunks_by_id(ids)

    def _sources_matching(self, filters: SearchFilters) -> set[str]:
        out = set()
        for d in self.ledger.documents(self.collection):
            if filters.source and not (fnmatch.fnmatchcase(d.source, filters.source) or d.source == filters.source):
                continue
            if (filters.date_from or filters.date_to) and not d.doc_date:
                continue
            if filters.date_from and d.doc_date < filters.date_from:
                continue
            if filters.date_to and d.doc_date > filters.date_to:
                continue
            out.add(d.source)
        return out

    def _chunk_ids_of(self, sources: set[str]) -> set[str]:
        return self.ledger.chunk_ids_of(self.collection, sources)


def search(
    cfg: TetherConfig, query: str, k: int = 5, filters: SearchFilters | None = None, collection: str | None = None
) -> list[SearchHit]:
    """One-shot search (builds a Searcher; reuse a Searcher for many queries)."""
    searcher = Searcher(cfg, collection)
    try:
        return searcher.search(query, k=k, filters=filters)
    finally:
        searcher.close()
