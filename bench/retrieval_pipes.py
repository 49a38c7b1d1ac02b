"""The pipelines that ``bench/retrieval.py`` measures, and their instruments: importable, nothing runs at import.

* ``TetherPipe``: ``retrieval.ingest.ingest`` and ``Searcher.search(q, k=K)`` with a ``BenchEmbedder``
  (Tether's embedder, timed; optionally counting tokens without truncation and reading or filling a
  ``VectorCache`` of precomputed vectors).
* ``PlainPipe``: a plain llama-index pipeline (``SimpleDirectoryReader`` + ``VectorStoreIndex`` over
  ``ChromaVectorStore``, the same MiniLM), ingesting files or indexing Tether's chunks with cached vectors.
* ``Timers`` / ``patched_timers``: per-stage wall time, by wrapping functions for the duration of a block.

Heavy imports (numpy, chromadb, llama-index, Tether's packages) happen inside the functions, so the
runner can fix ``sys.path`` first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

K = 5
CHUNK_SIZE, CHUNK_OVERLAP = 200, 30

# --- embedders ------------------------------------------------------------------------------


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class VectorCache:
    """SHA-1(text) -> float32 vector, persisted as shards ``<tag>-NNNN.npy`` + ``<tag>-NNNN.keys.json``."""

    def __init__(self, folder: Path, tag: str, dim: int):
        import numpy as np

        self.folder, self.tag, self.dim = folder, tag, dim
        self.vectors: dict[str, Any] = {}
        self.pending: dict[str, Any] = {}
        self.synthetic: dict[str, Any] = {}  # --recycle-vectors: never saved
        self._real_keys: list[str] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        for keys_file in sorted(folder.glob(f"{tag}-*.keys.json")):
            keys = json.loads(keys_file.read_text())
            arr = np.load(keys_file.with_name(keys_file.name.replace(".keys.json", ".npy")))
            if arr.shape != (len(keys), dim):
                log.warning(
                    "cache shard %s has shape %s, expected (%d, %d): ignored", keys_file, arr.shape, len(keys), dim
                )
                continue
            self.vectors.update(zip(keys, arr))
        log.info("vector cache %s: %d vectors loaded from %s", tag, len(self.vectors), folder)

    def __len__(self) -> int:
        return len(self.vectors)

    def get(self, key: str):
        return self.vectors.get(key)

    def get_any(self, key: str):
        vec = self.vectors.get(key)
        return self.synthetic.get(key) if vec is None else vec

    def recycled(self, key: str):
        """A stand-in vector for a text never embedded: a cached real vector (picked by the text's hash)
        plus Gaussian noise (sigma 0.025 per dimension: cosine about 0.93 to it), unit length."""
        import numpy as np

        vec = self.synthetic.get(key)
        if vec is None:
            if self._real_keys is None:
                self._real_keys = sorted(self.vectors)
            base = self.vectors[self._real_keys[int(key[:12], 16) % len(self._real_keys)]]
            noisy = base + np.random.default_rng(int(key[12:28], 16)).normal(0.0, 0.025, self.dim).astype(np.float32)
            vec = (noisy / np.linalg.norm(noisy)).astype(np.float32)
            self.synthetic[key] = vec
        return vec

    def put(self, key: str, vec) -> None:
        if key not in self.vectors:
            self.vectors[key] = vec
            self.pending[key] = vec

    def save(self) -> None:
        import numpy as np

        if not self.pending:
            return
        n = len(list(self.folder.glob(f"{self.tag}-*.keys.json")))
        base = self.folder / f"{self.tag}-{n:04d}"
        keys = list(self.pending)
        np.save(base.with_suffix(".npy"), np.stack([self.pending[k] for k in keys]).astype(np.float32))
        base.with_suffix(".keys.json").write_text(json.dumps(keys))
        log.info("vector cache %s: saved %d vectors to %s", self.tag, len(keys), base.name)
        self.pending.clear()


class BenchEmbedder:
    """Tether's embedder, timed; optionally counting tokens without truncation and recording/using a cache.

    mode: "embed" (always compute), "record" (compute, then store in the cache), "cached" (use the
    cache, compute and store the misses).
    """

    def __init__(
        self, inner, *, fix_tokens: bool, cache: VectorCache | None = None, mode: str = "embed", recycle: bool = False
    ):
        self.inner = inner
        self.name, self.dim = inner.name, inner.dim
        self.cache, self.mode, self.recycle = cache, mode, recycle
        self.fix_tokens = fix_tokens
        self._tok = None
        if fix_tokens:
            from tokenizers import Tokenizer

            from retrieval.embeddings import resolve_model_path

            self._tok = Tokenizer.from_file(str(resolve_model_path(inner.name) / "tokenizer.json"))
            self._tok.no_truncation()
            self._tok.no_padding()
        self.embed_s = 0.0
        self.tokens_s = 0.0
        self.embedded = 0
        self.cache_hits = 0
        self.recycled = 0
        self.progress_every = 0
        self._next_progress = 0
        self._started = time.perf_counter()

    def reset_timers(self) -> None:
        self.embed_s = self.tokens_s = 0.0
        self.embedded = self.cache_hits = 0
        self._started = time.perf_counter()
        self._next_progress = self.progress_every

    def count_tokens(self, text: str) -> list:
        t = time.perf_counter()
        ids = self._tok.encode(text, add_special_tokens=False).ids if self._tok else self.inner.count_tokens(text)
        self.tokens_s += time.perf_counter() - t
        return ids

    def embed_batch(self, texts: Sequence[str]):
        import numpy as np

        t = time.perf_counter()
        texts = list(texts)
        if self.mode == "cached" and self.cache is not None:
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            keys = [text_key(x) for x in texts]
            miss = []
            for i, key in enumerate(keys):
                vec = self.cache.get(key)
                if vec is None:
                    miss.append(i)
                else:
                    out[i] = vec
            self.cache_hits += len(texts) - len(miss)
            if miss and self.recycle:
                for i in miss:
                    out[i] = self.cache.recycled(keys[i])
                self.recycled += len(miss)
            elif miss:
                vecs = self.inner.embed_batch([texts[i] for i in miss])
                self.embedded += len(miss)
                for i, vec in zip(miss, vecs):
                    out[i] = vec
                    self.cache.put(keys[i], vec)
                if len(self.cache.pending) >= 4096:
                    self.cache.save()
        else:
            out = self.inner.embed_batch(texts)
            self.embedded += len(texts)
            if self.mode == "record" and self.cache is not None:
                for x, vec in zip(texts, out):
                    self.cache.put(text_key(x), vec)
        self.embed_s += time.perf_counter() - t
        done = self.embedded + self.cache_hits + self.recycled
        if self.progress_every and done >= self._next_progress:
            self._next_progress = done + self.progress_every
            el = time.perf_counter() - self._started
            log.info(
                "  ... %d chunks (%d embedded at %.1f/s, %d cached, %d recycled) in %.0fs",
                done,
                self.embedded,
                self.embedded / max(self.embed_s, 1e-9),
                self.cache_hits,
                self.recycled,
                el,
            )
        return out

    def embed_query(self, text: str):
        return self.inner.embed_query(text)

    def __getattr__(self, name):
        # what the timed wrapper does not define (the ONNX encoder's embed_each for the claim vectors)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def ingest_in_turn(pipes: dict[str, Any], shards: Sequence[Path], after=None) -> dict[str, list[dict]]:
    """Every pipeline ingests every shard, the order rotating from shard to shard so that load from other
    work hits them alike; per pipeline, one result per shard (chunks, seconds, chunks_per_s, loadavg).
    ``after(shard_index, name, result)`` is called after each ingest."""
    names = list(pipes)
    per_shard: dict[str, list[dict]] = {n: [] for n in names}
    for i, folder in enumerate(shards):
        r = i % len(names)
        for name in names[r:] + names[:r]:
            pipe = pipes[name]
            res = pipe.ingest([folder]) if name != "plain" else pipe.ingest(folder)
            res["chunks_per_s"] = res["chunks"] / res["seconds"]
            res["loadavg"] = loadavg()
            per_shard[name].append(res)
            if after is not None:
                after(i, name, res)
    return per_shard


def token_counter_truncates(embedder) -> dict[str, Any]:
    """Does the shipped count_tokens truncate? (before and after the model's first encode)."""
    probe = "alpha beta gamma delta epsilon " * 120  # 600 tokens
    before = len(embedder.count_tokens(probe))
    embedder.embed_batch(["warm-up"])
    after = len(embedder.count_tokens(probe))
    return {
        "probe_tokens": 600,
        "count_before_first_encode": before,
        "count_after_first_encode": after,
        "truncates": before < 600 or after < 600,
    }


# --- timing helpers ---------------------------------------------------------------------------


class Timers:
    def __init__(self):
        self.s: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def add(self, key: str, seconds: float) -> None:
        self.s[key] = self.s.get(key, 0.0) + seconds
        self.n[key] = self.n.get(key, 0) + 1


@contextlib.contextmanager
def patched_timers(timers: Timers, targets: Sequence[tuple[Any, str, str, bool]]):
    """Wrap obj.attr with a timer (restored on exit). targets: (obj, attr, key, is_classmethod)."""
    saved = []
    for obj, attr, key, is_cm in targets:
        own = not isinstance(obj, type) or attr in vars(obj)
        original = vars(obj)[attr] if isinstance(obj, type) and own else getattr(obj, attr)
        saved.append((obj, attr, original, own))
        func = original.__func__ if is_cm else original

        def make(func=func, key=key):
            def wrapper(*a, **kw):
                t = time.perf_counter()
                try:
                    return func(*a, **kw)
                finally:
                    timers.add(key, time.perf_counter() - t)

            return wrapper

        setattr(obj, attr, classmethod(make()) if is_cm else make())
    try:
        yield timers
    finally:
        for obj, attr, original, own in reversed(saved):
            if own:
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)


@contextlib.contextmanager
def stdout_to_stderr():
    with contextlib.redirect_stdout(sys.stderr):
        yield


# --- Tether ---------------------------------------------------------------------------------


class TimedStore:
    """ChromaStore wrapper timing upserts (everything else delegated)."""

    def __init__(self, inner, timers: Timers):
        self.inner, self.timers = inner, timers

    def upsert(self, ids, embeddings, metadatas):
        t = time.perf_counter()
        self.inner.upsert(ids, embeddings, metadatas)
        self.timers.add("chroma_upsert", time.perf_counter() - t)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class TetherPipe:
    def __init__(self, label: str, data_dir: Path, int8: bool, fix_tokens: bool, cache: VectorCache | None, mode: str):
        from retrieval.embeddings import embedder_for
        from tether.config import load_config

        self.label = label
        if mode == "cached":
            # Built from cached vectors keyed by the chunk text, shared with the plain pipeline: the
            # heading prefix (a quality lever, measured in bench/external_qa.py) would change the text
            # embedded, so the latency indexes are built without it (bench/query_latency.py reads this file,
            # and needs the embedder the vectors were made with). They are built without claim vectors too:
            # queries never read them, and recycled vectors would make them meaningless.
            Path(data_dir).mkdir(parents=True, exist_ok=True)
            (Path(data_dir) / "tether.yaml").write_text(
                f"retrieval:\n  heading_prefix: false\n  embed_int8: {str(int8).lower()}\n"
                "conflicts:\n  vectors_at_ingest: false\n",
                encoding="utf-8",
            )
        self.cfg = load_config(data_dir=data_dir).with_retrieval(embed_int8=int8)
        self.model = embedder_for(self.cfg)  # load outside the timed ingest (cached per process)
        self.embedder = BenchEmbedder(self.model, fix_tokens=fix_tokens, cache=cache, mode=mode)
        self.timers = Timers()
        self.ingest_s = 0.0
        self.chunks = 0
        self.searcher = None

    def ingest(self, folders: Sequence[Path]) -> dict[str, Any]:
        import retrieval.ingest as ri
        from retrieval import ledger
        from retrieval.bm25 import BM25Index
        from retrieval.ingest import ingest
        from retrieval.store import ChromaStore

        store = TimedStore(ChromaStore(self.cfg), self.timers)
        e0, k0 = self.embedder.embed_s, self.embedder.tokens_s
        targets = [
            (ri, "read_document", "read_parse", False),
            (ri, "chunk_text", "chunking (incl. token counting)", False),
            (ledger, "commit_document", "sqlite_commit", False),
            (BM25Index, "build", "bm25_build", True),
            (BM25Index, "save", "bm25_save", False),
        ]
        t = time.perf_counter()
        with patched_timers(self.timers, targets):
            summary = ingest(self.cfg, list(folders), embedder=self.embedder, store=store)
        wall = time.perf_counter() - t
        info = summary.to_json()
        if info["files_failed"] or info["files_skipped"]:
            log.warning("%s: skipped %s failed %s", self.label, info["skipped"], info["failed"])
        self.timers.add("embedding", self.embedder.embed_s - e0)
        self.timers.add("token_counting", self.embedder.tokens_s - k0)
        self.ingest_s += wall
        self.chunks += summary.chunks_added
        return {
            "chunks": summary.chunks_added,
            "seconds": wall,
            "summary_seconds": summary.seconds,
            "embed_s": self.embedder.embed_s - e0,
            "files": info["files_ingested"],
        }

    def open(self, query_embedder=None) -> None:
        from retrieval.search import Searcher

        self.searcher = Searcher(self.cfg, embedder=query_embedder or self.model)

    def retrieve(self, text: str) -> list[str]:
        return [Path(h.source).name for h in self.searcher.search(text, k=K)]

    def chunk_rows(self) -> list[tuple[str, str, int, int, str, str]]:
        """(chunk id, text, start, end, source, path) of every committed chunk, in document order."""
        rows = self.searcher.db.execute(
            "SELECT c.id, c.text, c.start_char, c.end_char, d.source, d.path FROM chunks c "
            "JOIN documents d ON d.id = c.document_id WHERE d.collection = ? ORDER BY d.path, c.seq",
            (self.searcher.collection,),
        ).fetchall()
        return [tuple(r) for r in rows]

    def close(self) -> None:
        if self.searcher is not None:
            self.searcher.close()
            self.searcher = None


# --- plain llama-index ------------------------------------------------------------------------


class PlainPipe:
    label = "plain"

    def __init__(self, work: Path, model_path: Path):
        import chromadb
        from chromadb.config import Settings as ChromaSettings
        from llama_index.core import Settings, StorageContext
        from llama_index.core.node_parser import SentenceSplitter
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
        from llama_index.vector_stores.chroma import ChromaVectorStore

        with stdout_to_stderr():
            Settings.llm = None  # never reach for OpenAI
        self.embed_model = HuggingFaceEmbedding(model_name=str(model_path))
        Settings.embed_model = self.embed_model
        self.client = chromadb.PersistentClient(
            path=str(work / "chroma"), settings=ChromaSettings(anonymized_telemetry=False)
        )
        self.coll = self.client.get_or_create_collection("plain", embedding_function=None)
        self.vector_store = ChromaVectorStore(chroma_collection=self.coll)
        self.storage_context = StorageContext.from_defaults(vector_store=self.vector_store)
        self.splitter = SentenceSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
        self.index = None
        self.retriever = None
        self.timers = Timers()
        self.ingest_s = 0.0
        self.chunks = 0
        self.embed_model.get_query_embedding("warm-up")

    def ingest(self, folder: Path) -> dict[str, Any]:
        from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
        from llama_index.core.node_parser import SentenceSplitter
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
        from llama_index.vector_stores.chroma import ChromaVectorStore

        before = self.coll.count()
        targets = [
            (SentenceSplitter, "_parse_nodes", "chunking (SentenceSplitter)", False),
            (HuggingFaceEmbedding, "_get_text_embeddings", "embedding", False),
            (ChromaVectorStore, "add", "chroma_add (incl. node->metadata)", False),
        ]
        t = time.perf_counter()
        with patched_timers(self.timers, targets):
            t0 = time.perf_counter()
            docs = SimpleDirectoryReader(str(folder), recursive=True).load_data()
            self.timers.add("read_parse (SimpleDirectoryReader)", time.perf_counter() - t0)
            self.index = VectorStoreIndex.from_documents(
                docs,
                storage_context=self.storage_context,
                embed_model=self.embed_model,
                transformations=[self.splitter],
            )
        wall = time.perf_counter() - t
        added = self.coll.count() - before
        self.ingest_s += wall
        self.chunks += added
        return {"chunks": added, "seconds": wall, "documents": len(docs)}

    def build_from_vectors(self, rows: Sequence[tuple], cache: VectorCache) -> dict[str, Any]:
        """Index Tether's chunk texts with precomputed vectors, as nodes a user's splitter would make."""
        from llama_index.core import VectorStoreIndex
        from llama_index.core.readers.file.base import default_file_metadata_func
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

        meta_of: dict[str, dict] = {}
        t_nodes = time.perf_counter()
        nodes = []
        missing = 0
        for cid, text, start, end, _source, path in rows:
            if path not in meta_of:
                meta_of[path] = default_file_metadata_func(path)
            vec = cache.get_any(text_key(text))
            if vec is None:
                missing += 1
                continue
            doc_id = str(uuid.uuid5(uuid.NAMESPACE_URL, path))
            nodes.append(
                TextNode(
                    text=text,
                    id_=str(uuid.uuid5(uuid.NAMESPACE_URL, cid)),
                    metadata=dict(meta_of[path]),
                    start_char_idx=start,
                    end_char_idx=end,
                    relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc_id, metadata=meta_of[path])},
                    embedding=vec.tolist(),
                )
            )
        nodes_s = time.perf_counter() - t_nodes
        if missing:
            raise RuntimeError(f"{missing} chunks have no cached vector")
        t = time.perf_counter()
        self.index = VectorStoreIndex(nodes, storage_context=self.storage_context, embed_model=self.embed_model)
        wall = time.perf_counter() - t
        self.chunks = self.coll.count()
        return {"chunks": len(nodes), "seconds": wall, "node_construction_s": nodes_s}

    def open(self) -> None:
        from llama_index.core import VectorStoreIndex

        if self.index is None:
            self.index = VectorStoreIndex.from_vector_store(self.vector_store, embed_model=self.embed_model)
        self.retriever = self.index.as_retriever(similarity_top_k=K)

    def retrieve(self, text: str) -> list[str]:
        return [str(n.node.metadata.get("file_name", "")) for n in self.retriever.retrieve(text)]

    def documents(self) -> list[str]:
        out, offset = [], 0
        while True:
            page = self.coll.get(include=["documents"], limit=5000, offset=offset)
            out += [d or "" for d in page["documents"]]
            if len(page["ids"]) < 5000:
                return out
            offset += 5000
