"""Attach citations to an answer and verify each one against the passage it cites.

Every answer sentence that carries [n] is compared with the sentences of passage n (cosine
similarity of MiniLM embeddings, plus a check that the numbers it states appear in the passage);
it is supported when the best match clears the threshold. Groundedness is the share of cited
sentences that are supported.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from assistant.sentences import citation_numbers, split_sentences, strip_citations
from assistant.types import Citation
from retrieval.search import SearchHit

SUPPORT_THRESHOLD = 0.55
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def verify_citations(answer: str, passages: Sequence[SearchHit], embedder, threshold: float = SUPPORT_THRESHOLD) -> tuple[list[Citation], float | None]:
    """(citations, groundedness). Citations of a number outside 1..len(passages) are unsupported."""
    claims: list[tuple[str, int]] = []
    for start, end in split_sentences(answer):
        sentence = answer[start:end]
        for n in citation_numbers(sentence):
            claims.append((sentence, n))
    if not claims:
        return [], None
    passage_sents: dict[int, list[tuple[int, int]]] = {}
    texts: list[str] = []
    index: dict[tuple[int, int], int] = {}
    for n in {n for _, n in claims if 1 <= n <= len(passages)}:
        hit = passages[n - 1]
        spans = split_sentences(hit.text) or [(0, len(hit.text))]
        passage_sents[n] = spans
        for i, (s, e) in enumerate(spans):
            index[(n, i)] = len(texts)
            texts.append(hit.text[s:e])
    claim_texts = [strip_citations(sentence) or sentence for sentence, _ in claims]
    vectors = embedder.embed_batch(claim_texts + texts) if texts else embedder.embed_batch(claim_texts)
    claim_vecs, sent_vecs = vectors[: len(claims)], vectors[len(claims) :]
    citations: list[Citation] = []
    for (sentence, n), claim, cvec in zip(claims, claim_texts, claim_vecs):
        if n not in passage_sents:
            citations.append(Citation(n, "", "", sentence, "", None, False, 0.0))
            continue
        hit = passages[n - 1]
        rows = [index[(n, i)] for i in range(len(passage_sents[n]))]
        sims = sent_vecs[rows] @ cvec
        best = int(np.argmax(sims))
        score = float(sims[best])
        # a window of two neighbouring sentences can support a claim that merges them
        s, e = passage_sents[n][best]
        missing_numbers = _numbers(claim) - _numbers(hit.text)
        supported = score >= threshold and not missing_numbers
        if not supported and not missing_numbers:
            whole = float(embedder.embed_batch([hit.text])[0] @ cvec)
            if whole >= threshold + 0.1:
                supported, score = True, max(score, whole)
        support = hit.text[s:e]
        citations.append(
            Citation(
                n=n,
                passage_id=hit.id,
                source=hit.source,
                sentence=sentence,
                support=support,
                span=(hit.span[0] + s, hit.span[0] + e),
                supported=supported,
                score=score,
            )
        )
    groundedness = sum(c.supported for c in citations) / len(citations)
    return citations, groundedness
