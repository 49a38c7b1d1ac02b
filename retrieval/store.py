"""The dense vector store behind one ``VectorStore`` protocol: Chroma, embedded or over HTTP.

Embedded (``PersistentClient`` under ``<data dir>/chroma``) by default; ``HttpClient`` when
``retrieval.chroma_url`` or ``TETHER_CHROMA_URL`` names a server. Telemetry is off, and the
collection always carries Tether's own embedding function, so Chroma never reaches for its
downloading default.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np

from tether.config import TetherConfig
from tether.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

MAX_BATCH = 5000  # Chroma refuses batches above 5,461


@dataclass(frozen=True)
class DenseHit:
    id: str
    similarity: float  # cosine similarity, 1 = identical


class VectorStore(Protocol):
    def upsert(self, ids: Sequence[str], embeddings: np.ndarray, metadatas: Sequence[dict[str, Any]]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def query(self, embedding: np.ndarray, k: int, where: dict[str, Any] | None = None) -> list[DenseHit]: ...

    def count(self) -> int: ...

    def all_ids(self) -> list[str]: ...  # every id held (reconciliation with the ledger)


def _tether_embedding_function(model: str, int8: bool = False):
    """Chroma's EmbeddingFunction over our embedder, loaded only when Chroma calls it."""
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
    from chromadb.utils.embedding_functions import register_embedding_function

    if "tether" in _EF_CLASSES:
        return _EF_CLASSES["tether"](model, int8)

    @register_embedding_function
    class TetherEmbeddingFunction(EmbeddingFunction[Documents]):
        def __init__(self, model: str, int8: bool = False):
            self.model = model
            self.int8 = int8

        def __call__(self, input: Documents) -> Embeddings:
            from retrieval.embeddings import get_embedder

            return list(get_embedder(self.model, int8=self.int8).embed_batch(list(input)))

        @staticmethod
        def name() -> str:
            return "tether"

        def default_space(self) -> str:
            return "cosine"

        def get_config(self) -> dict[str, Any]:
            return {"model": self.model, "int8": self.int8}

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> TetherEmbeddingFunction:
            return TetherEmbeddingFunction(config.get("model", ""), bool(config.get("int8", False)))

    _EF_CLASSES["tether"] = TetherEmbeddingFunction
    return TetherEmbeddingFunction(model)


_EF_CLASSES: dict[str, Any] = {}


def chroma_client(cfg: TetherConfig):
    os.environ["ANONYMIZED_TELEMETRY"] = "False"
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    url = cfg.retrieval.chroma_url
    if url:
        parsed = urlparse(url)
        try:
            client = chromadb.HttpClient(
                host=parsed.hostname or "127.0.0.1",
                port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                ssl=parsed.scheme == "https",
                settings=settings,
            )
            client.heartbeat()
        except Exception as exc:
            raise BackendUnavailable(
                f"Chroma server at {url} is not answering ({type(exc).__name__}); start it with "
                f"`chroma run --path DIR --host {parsed.hostname} --port {parsed.port}` or unset TETHER_CHROMA_URL"
            ) from exc
        return client
    cfg.chroma_dir.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(cfg.chroma_dir), settings=settings)


class ChromaStore:
    """One Chroma collection. Ids are Tether chunk ids; vectors are unit length (cosine space)."""

    def __init__(self, cfg: TetherConfig, collection: str | None = None, client: Any = None):
        name = collection or cfg.retrieval.collection
        self.client = client or chroma_client(cfg)
        self.model = cfg.retrieval.embed_identity
        self.collection = self.client.get_or_create_collection(
            name=name,
            configuration={"hnsw": {"space": "cosine"}},
            metadata={"embed_model": self.model},
            embedding_function=_tether_embedding_function(cfg.retrieval.embed_model, cfg.retrieval.embed_int8),
        )
        stored = (self.collection.metadata or {}).get("embed_model")
        if stored and stored != self.model:
            raise ConfigError(
                f"collection '{name}' was embedded with {stored!r} but the configuration asks for {self.model!r} "
                "(retrieval.embed_model / retrieval.embed_int8): use another --collection, or set them back"
            )

    def upsert(self, ids: Sequence[str], embeddings: np.ndarray, metadatas: Sequence[dict[str, Any]]) -> None:
        for lo in range(0, len(ids), MAX_BATCH):
            hi = lo + MAX_BATCH
            self.collection.upsert(
                ids=list(ids[lo:hi]),
                embeddings=np.asarray(embeddings[lo:hi], dtype=np.float32),
                metadatas=list(metadatas[lo:hi]),
            )

    def delete(self, ids: Sequence[str]) -> None:
        ids = list(ids)
        for lo in range(0, len(ids), MAX_BATCH):
            self.collection.delete(ids=ids[lo : lo + MAX_BATCH])

    def query(self, embedding: np.ndarray, k: int, where: dict[str, Any] | None = None) -> list[DenseHit]:
        # no count() first: at 100k vectors that round trip costs as much as the query
        result = self.collection.query(
            query_embeddings=[np.asarray(embedding, dtype=np.float32)],
            n_results=k,
            where=where or None,
            include=["distances"],
        )
        ids = result["ids"][0]
        distances = result["distances"][0]
        return [DenseHit(id=i, similarity=1.0 - float(d)) for i, d in zip(ids, distances)]

    def count(self) -> int:
        return int(self.collection.count())

    def all_ids(self) -> list[str]:
        out: list[str] = []
        offset = 0
        while True:
            page = self.collection.get(include=[], limit=MAX_BATCH, offset=offset)
            out.extend(page["ids"])
            if len(page["ids"]) < MAX_BATCH:
                return out
            offset += MAX_BATCH
