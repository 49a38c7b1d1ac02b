"""The lexical half of hybrid search: a bm25s index per collection, persisted next to Chroma.

The index is built from the ingest ledger (the ``chunks`` table) and stamped with the collection's
generation; whenever the ledger moves on, the next use rebuilds it, so BM25 and the dense store
never disagree about which chunks exist. Saving goes through a temporary folder and a rename, so a
killed process never leaves a half-written index.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_STEMMER = None


def _stemmer():
    global _STEMMER
    if _STEMMER is None:
        import Stemmer

        _STEMMER = Stemmer.Stemmer("english")
    return _STEMMER


def _quiet_bm25s():
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    bm25s = _quiet_bm25s()

    return bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


@dataclass
class BM25Index:
    retriever: object
    ids: list[str]
    generation: int

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], generation: int) -> BM25Index:
        bm25s = _quiet_bm25s()

        retriever = bm25s.BM25()
        if texts:
            retriever.index(tokenize(texts), show_progress=False)
        return cls(retriever=retriever, ids=list(ids), generation=generation)

    def save(self, folder: Path) -> None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if self.ids:
            self.retriever.save(str(tmp), show_progress=False)
        (tmp / "tether.json").write_text(json.dumps({"generation": self.generation, "ids": self.ids}))
        old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> BM25Index | None:
        meta_path = folder / "tether.json"
        if not meta_path.is_file():
            return None
        bm25s = _quiet_bm25s()

        try:
            meta = json.loads(meta_path.read_text())
            retriever = bm25s.BM25.load(str(folder), show_progress=False) if meta["ids"] else bm25s.BM25()
        except (OSError, ValueError, KeyError) as exc:
            log.warning("BM25 index at %s is unreadable (%s); it will be rebuilt", folder, exc)
            return None
        return cls(retriever=retriever, ids=list(meta["ids"]), generation=int(meta["generation"]))

    def search(self, query: str, k: int, mask: np.ndarray | None = None) -> list[tuple[str, float]]:
        """Top-k (chunk id, BM25 score); mask (bool per row) restricts the candidates."""
        if not self.ids:
            return []
        tokens = tokenize([query])[0]
        vocab = self.retriever.vocab_dict
        tokens = [t for t in tokens if t in vocab]
        if not tokens:
            return []
        k = min(k, len(self.ids))
        weight = None if mask is None else mask.astype(np.float32)
        docs, scores = self.retriever.retrieve([tokens], k=k, show_progress=False, weight_mask=weight, n_threads=0)
        out = []
        for row, score in zip(docs[0], scores[0]):
            if score <= 0:
                continue
            out.append((self.ids[int(row)], float(score)))
        return out
