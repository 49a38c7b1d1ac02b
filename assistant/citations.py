"""Attach citations to an answer and verify each one against the passage it cites.

Every answer sentence that carries [n] is compared with the sentences of passage n (cosine
similarity of MiniLM embeddings, plus a check that the passage states every value it states);
it is supported when the best match clears the threshold. Groundedness is the share of cited
sentences that are supported. Values are read by ``tether.text.quantities``, as conflict detection
reads them: "3 weeks" is backed by "21 days", not by "14 days".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from assistant.types import Citation
from retrieval.search import SearchHit
from tether.crossencoder import load_cross_encoder
from tether.text.quantities import Number, Quantity, find_numbers, missing_values, singular
from tether.text.sentences import citation_numbers, split_sentences, strip_citations

SUPPORT_THRESHOLD = 0.55


def _value_label(v: Quantity | Number) -> tuple[str, str]:
    """('2', 'year') for "2 years", ('60', 'EUR') for "EUR 60", ('2222', '') for a bare number."""
    if isinstance(v, Number):
        return _fmt_number(v.value), ""
    numbers = find_numbers(v.text)
    value = _fmt_number(numbers[0].value) if numbers else v.norm
    if v.kind in ("duration", "count"):
        unit = singular(v.text.split()[-1]) if len(v.text.split()) > 1 else v.unit
    else:
        unit = v.unit
    return value, unit


def _fmt_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def unsupported_quantities(claim: str, passage: str) -> set[tuple[str, str]]:
    """The values the claim states that the passage does not, as (number, unit word) pairs:
    "2 years" against a passage saying "two months" gives ('2', 'year'); "3 weeks" against "21 days"
    nothing (``tether.text.quantities.missing_values`` decides)."""
    return {_value_label(v) for v in missing_values(claim, passage)}


def supports(similarity: float, claim: str, evidence: str, threshold: float = SUPPORT_THRESHOLD) -> bool:
    """Does evidence support claim? Similar enough, about the same scope, and stating every quantity the claim states,
    or, for a claim that is mostly a number ("The number is 2222."), stating that number in a
    moderately similar sentence."""
    if missing_values(claim, evidence) or _other_scope(claim, evidence):
        return False
    if similarity >= threshold:
        return True
    return bool(find_numbers(claim, in_codes=True)) and similarity >= threshold - 0.25


def _other_scope(claim: str, evidence: str) -> bool:
    """The evidence speaks of another scope ("outside the EU" for a claim about "inside the EU",
    Brno for Rotterdam): similar words, different fact. The conflict detector's scope rules decide."""
    from retrieval.conflicts import claim_features, scope_differs

    return scope_differs(claim_features(claim), claim_features(evidence)) is not None


def _same_scope_somewhere(claim: str, text: str, spans) -> bool:
    """Some sentence of the passage that states the claim's values speaks of the claim's scope."""
    if not find_numbers(claim, in_codes=True):
        return True
    stating = [text[s:e] for s, e in spans if not missing_values(claim, text[s:e])]
    return not stating or any(not _other_scope(claim, sentence) for sentence in stating)


class NLIJudge:
    """An NLI cross-encoder (premise = cited sentence, hypothesis = answer sentence), when one is
    configured by local path (``assistant.nli_model``); none ships offline. The entailment label is
    found from the model's ``id2label`` ("entailment"), else taken as ``entailment_index``."""

    def __init__(self, path: str, entailment_index: int | None = None):
        self.model = load_cross_encoder(path, setting="assistant.nli_model", what="NLI model")
        labels = {int(k): str(v).lower() for k, v in (self.model.config.id2label or {}).items()}
        found = next((i for i, name in labels.items() if name.startswith("entail")), None)
        self.entailment = found if found is not None else (entailment_index if entailment_index is not None else 0)

    def entails(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
        """Probability of entailment for each (premise, hypothesis) pair."""
        if not premises:
            return []
        scores = np.asarray(
            self.model.predict(list(zip(premises, hypotheses)), show_progress_bar=False), dtype=np.float64
        )
        if scores.ndim == 1:  # a single-logit model: sigmoid
            return list(1 / (1 + np.exp(-scores)))
        exp = np.exp(scores - scores.max(axis=1, keepdims=True))
        return list((exp / exp.sum(axis=1, keepdims=True))[:, self.entailment])


def verify_citations(
    answer: str,
    passages: Sequence[SearchHit],
    embedder,
    threshold: float = SUPPORT_THRESHOLD,
    nli: NLIJudge | None = None,
) -> tuple[list[Citation], float | None]:
    """(citations, groundedness). Citations of a number outside 1..len(passages) are unsupported.

    With an NLI judge, a citation is supported when the best-matching passage sentence entails the
    answer sentence (probability >= 0.5) and the quantity check passes; without one, by similarity.
    """
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
        order = [int(i) for i in np.argsort(-sims)]
        best = next(
            (i for i in order[:3] if supports(float(sims[i]), claim, hit.text[slice(*passage_sents[n][i])], threshold)),
            order[0],
        )
        score = float(sims[best])
        s, e = passage_sents[n][best]
        supported = supports(score, claim, hit.text[s:e], threshold)
        if (
            not supported
            and supports(1.0, claim, hit.text, threshold)
            and _same_scope_somewhere(claim, hit.text, passage_sents[n])
        ):
            # a claim that merges neighbouring sentences: judge it against the whole passage
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
    if nli is not None:
        judged = [i for i, c in enumerate(citations) if c.passage_id]
        probs = nli.entails(
            [citations[i].support for i in judged], [strip_citations(citations[i].sentence) for i in judged]
        )
        for i, p in zip(judged, probs):
            c = citations[i]
            numbers_ok = supports(1.0, strip_citations(c.sentence), c.support)
            citations[i] = Citation(
                c.n, c.passage_id, c.source, c.sentence, c.support, c.span, bool(p >= 0.5 and numbers_ok), float(p)
            )
    groundedness = sum(c.supported for c in citations) / len(citations)
    return citations, groundedness
