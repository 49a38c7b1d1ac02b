"""The detectors: rules over parsed claims gated by MiniLM similarity, and optionally an NLI cross-encoder.

A rule hit only counts when the two claims are about the same subject: they share key terms and their
MiniLM embeddings are similar. Embeddings are needed only for claims that a rule flagged: they come
from the LRU (per passage id and text hash, so a warm ``detect`` costs a few milliseconds), else from
the vectors kept in ``tether.db`` (``stored``, a ``ClaimVectorSource``: ``retrieval.ledger.ClaimVectorStore``),
else from one embedding pass each, which ``stored`` then keeps: only the first detection on a passage
ever embeds. With ``conflicts.vectors_at_ingest`` ingestion makes them beforehand (``claim_vector_rows``).

Claims from the same document are paired only when they are near-duplicates (similarity at least
``same_document_similarity``): a policy that lists a rate for weekdays and another for weekends is
not contradicting itself.

``kind`` is ``supersession`` when exactly one claim comes from a superseded document; ``value_type``
then still says what differs. See docs/CONFLICTS.md.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retrieval.conflicts.claims import (
    Claim,
    ClaimFeatures,
    Conflict,
    claim_features,
    doc_key,
    normalise_ws,
    split_claims,
    subject_of,
)
from retrieval.conflicts.rules import RuleHit, rule_hit, scope_differs, values_decide
from tether.config import ConflictsConfig
from tether.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)


class ClaimVectorSource(Protocol):
    def lookup(self, text_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """Unit vectors of the claims stored under these text hashes (those it holds)."""
        ...

    def keep(self, rows: Sequence[tuple[str, str, np.ndarray]]) -> int:
        """Store (passage id, text hash, vector) of claims the detector embedded; returns how many were kept."""
        ...


def claim_hash(text: str) -> str:
    """The key of a claim's vector: the SHA-1 of its (whitespace-normalised) text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def can_flag(f: ClaimFeatures) -> bool:
    """Could any rule flag a claim with these features (a value or wording signal and key terms)?"""
    return bool(f.has_signal and f.terms)


def embed_one_by_one(embedder, texts: Sequence[str]) -> np.ndarray:
    """Unit vectors of ``texts``, one forward pass each: batching pads, and the int8 embedders quantize
    activations per batch, so a batched vector would depend on its neighbours (and the similarity gates
    were calibrated on single-text vectors). An embedder with ``embed_each`` (the ONNX encoder) runs the
    single-text passes side by side."""
    each = getattr(embedder, "embed_each", None)
    if each is not None:
        return np.asarray(each(list(texts)), dtype=np.float32)
    one = getattr(embedder, "embed_query", None)
    if one is not None:
        return np.stack([np.asarray(one(text), dtype=np.float32) for text in texts])
    return np.concatenate([np.asarray(embedder.embed_batch([text]), dtype=np.float32) for text in texts])


def claim_vector_rows(embedder, chunks: Sequence[tuple[str, str]], min_words: int) -> list[tuple[str, str, bytes]]:
    """(chunk id, claim hash, float32 bytes) for every claim a rule can flag in the chunks
    (id, text): what ingestion stores so that ``detect`` needs no embedding pass for them."""
    from types import SimpleNamespace

    wanted: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for cid, text in chunks:
        for c in split_claims(SimpleNamespace(text=text, source=cid, id=cid), min_words):
            if not can_flag(claim_features(c.text)):
                continue
            h = claim_hash(c.text)
            pairs.append((cid, h))
            wanted.setdefault(h, c.text)
    if not wanted:
        return []
    vecs = dict(zip(wanted, embed_one_by_one(embedder, list(wanted.values()))))
    seen: set[tuple[str, str]] = set()
    rows = []
    for cid, h in pairs:
        if (cid, h) not in seen:
            seen.add((cid, h))
            rows.append((cid, h, vecs[h].astype(np.float32).tobytes()))
    return rows


class ConflictDetector(Protocol):
    def detect(self, passages: Sequence[Any]) -> list[Conflict]:
        """Conflicts among the passages (SearchHit-like), best first, no duplicates."""
        ...

    def judge(self, a: Claim, b: Claim) -> Conflict | None:
        """Do these two claims contradict?"""
        ...


def _thresholds(config: ConflictsConfig | None, changes: dict[str, Any]) -> ConflictsConfig:
    """``config`` (the ``conflicts:`` section; None = defaults) with ``changes`` applied, validated."""
    known = {f.name for f in fields(ConflictsConfig)}
    problems = [
        f"{k} is not a conflict threshold (known: {', '.join(sorted(known))})" for k in changes if k not in known
    ]
    if problems:
        raise ConfigError(problems)
    t = replace(config or ConflictsConfig(), **changes)
    if t.problems():
        raise ConfigError(t.problems())
    return t


class RuleConflictDetector:
    """Built-in, offline conflict detector: rules over parsed claims, gated by MiniLM similarity.

    ``embedder`` is any ``retrieval.embeddings.Embedder`` (``embed_batch`` returns unit vectors);
    ``config`` is the ``conflicts:`` section (``cfg.conflicts``; None = defaults) and keyword
    arguments change some of its fields.
    """

    def __init__(
        self,
        embedder,
        config: ConflictsConfig | None = None,
        *,
        stored: ClaimVectorSource | None = None,
        **thresholds: Any,
    ):
        self.embedder = embedder
        self.thresholds = _thresholds(config, thresholds)
        self.stored = stored
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits = 0
        self.cache_misses = 0  # not in the LRU
        self.stored_hits = 0  # ... but kept in tether.db
        self.embedded = 0  # ... nor stored: embedded here

    # vectors ---------------------------------------------------------------------------------

    @staticmethod
    def _key(c: Claim) -> tuple[str, str]:
        return (c.passage_id or c.source, claim_hash(c.text))

    def vectors(self, claims: Sequence[Claim]) -> dict[tuple[str, str], np.ndarray]:
        """Unit vectors of the claims: from the LRU, else kept in ``stored``, else embedded one by one (and kept)."""
        out: dict[tuple[str, str], np.ndarray] = {}
        missing: dict[tuple[str, str], str] = {}
        with self._lock:
            for c in claims:
                key = self._key(c)
                vec = self._vectors.get(key)
                if vec is not None:
                    self._vectors.move_to_end(key)
                    out[key] = vec
                    self.cache_hits += 1
                elif key not in missing:
                    missing[key] = c.text
        if missing:
            self.cache_misses += len(missing)
            found: dict[tuple[str, str], np.ndarray] = {}
            if self.stored is not None:
                try:
                    by_hash = self.stored.lookup([h for _, h in missing])
                except sqlite3.Error as exc:  # a cache: detection goes on without it
                    log.warning("could not read the kept claim vectors: %s", exc)
                    by_hash = {}
                dim = getattr(self.embedder, "dim", None)
                found = {
                    key: by_hash[key[1]]
                    for key in missing
                    if key[1] in by_hash and (dim is None or by_hash[key[1]].shape == (dim,))
                }
                self.stored_hits += len(found)
            todo = [key for key in missing if key not in found]
            if todo:
                self.embedded += len(todo)
                fresh = dict(zip(todo, embed_one_by_one(self.embedder, [missing[k] for k in todo])))
                found.update(fresh)
                if self.stored is not None:
                    try:
                        self.stored.keep([(pid, h, vec) for (pid, h), vec in fresh.items()])
                    except sqlite3.Error as exc:  # a cache: detection goes on without it
                        log.warning("could not store %d claim vectors: %s", len(fresh), exc)
            with self._lock:
                for key, vec in found.items():
                    out[key] = vec
                    self._vectors[key] = vec
                while len(self._vectors) > self.thresholds.cache_size:
                    self._vectors.popitem(last=False)
        return out

    def similarity(self, a: Claim, b: Claim) -> float:
        vecs = self.vectors([a, b])
        return float(np.dot(vecs[self._key(a)], vecs[self._key(b)]))

    # the gate --------------------------------------------------------------------------------

    def same_subject(self, a: Claim, b: Claim, fa: ClaimFeatures, fb: ClaimFeatures, hit: RuleHit, sim: float) -> bool:
        """Are the two claims about one attribute? Shared key terms plus embedding similarity."""
        t = self.thresholds
        if doc_key(a) == doc_key(b) and sim < t.same_document_similarity:
            return False
        shared = len(fa.terms & fb.terms)
        if shared < t.min_shared_terms:
            return False
        if sim >= t.strong_similarity:
            return True
        floor = t.polarity_similarity if hit.kind == "polarity" else t.pair_similarity
        if hit.kind == "date" and shared < 2:
            floor = max(floor, t.unanchored_similarity)  # one shared word rarely names the same event
        if hit.slot in ("approver", "responsible"):
            floor = max(floor, t.approver_similarity)
        if hit.kind == "entity" and hit.slot not in (None, "approver", "responsible") and shared >= 2:
            floor = min(floor, t.role_similarity)
        elif shared <= 1:
            floor = max(floor, t.lone_term_similarity if hit.anchored else t.unanchored_similarity)
        if hit.explicit and shared >= 2:
            floor = min(floor, t.role_similarity)  # one claim names and rejects the other's holder
        return sim >= floor

    def _conflict(self, a: Claim, b: Claim, hit: RuleHit, sim: float) -> Conflict:
        superseded = [c.status == "superseded" for c in (a, b)]
        kind = "supersession" if sum(superseded) == 1 else hit.kind
        confidence = hit.confidence * (0.6 + 0.4 * max(0.0, min(1.0, sim)))
        return Conflict(
            kind=kind,
            value_type=hit.value_type,
            subject=subject_of(a.text, b.text),
            claims=(_with_value(a, hit.value_a), _with_value(b, hit.value_b)),
            confidence=round(confidence, 4),
        )

    # the protocol ----------------------------------------------------------------------------

    def judge(self, a: Claim, b: Claim) -> Conflict | None:
        fa, fb = claim_features(normalise_ws(a.text)), claim_features(normalise_ws(b.text))
        hit = rule_hit(fa, fb, max_value_ratio=self.thresholds.max_value_ratio)
        if hit is None:
            return None
        sim = self.similarity(a, b)
        if not self.same_subject(a, b, fa, fb, hit, sim):
            log.debug(
                "rule hit %s dropped by the subject gate (similarity %.2f): %r / %r", hit.kind, sim, a.text, b.text
            )
            return None
        return self._conflict(a, b, hit, sim)

    def claims(self, passages: Sequence[Any]) -> list[Claim]:
        """Claims of the passages, without repeats (overlapping chunks share sentences)."""
        seen: set[tuple[str, str]] = set()
        out: list[Claim] = []
        for p in passages:
            for c in split_claims(p, self.thresholds.min_claim_words):
                key = (c.source, c.text)
                if key in seen:
                    continue
                seen.add(key)
                out.append(c)
                if len(out) >= self.thresholds.max_claims:
                    return out
        return out

    def candidate_hits(self, claims: Sequence[Claim]) -> list[tuple[int, int, RuleHit]]:
        """Pairs (i, j) whose rules fire, before the subject gate; cheap, no model."""
        feats = [claim_features(c.text) for c in claims]
        live = [i for i, f in enumerate(feats) if can_flag(f)]
        out = []
        for x, i in enumerate(live):
            fi = feats[i]
            for j in live[x + 1 :]:
                fj = feats[j]
                if claims[i].text == claims[j].text:
                    continue
                shared = fi.terms & fj.terms
                if len(shared) < self.thresholds.min_shared_terms:
                    continue  # the gate would drop it: do not embed for it
                if doc_key(claims[i]) == doc_key(claims[j]) and len(shared) < 0.5 * len(fi.terms | fj.terms):
                    continue  # one document: only near-duplicates are compared
                hit = rule_hit(fi, fj, max_value_ratio=self.thresholds.max_value_ratio)
                if hit is not None:
                    out.append((i, j, hit))
        return out

    def detect(self, passages: Sequence[Any]) -> list[Conflict]:
        claims = self.claims(passages)
        if len(claims) < 2:
            return []
        hits = self.candidate_hits(claims)
        if not hits:
            return []
        involved = sorted({i for i, _, _ in hits} | {j for _, j, _ in hits})
        vecs = self.vectors([claims[i] for i in involved])
        found: dict[tuple, Conflict] = {}
        for i, j, hit in hits:
            a, b = claims[i], claims[j]
            sim = float(np.dot(vecs[self._key(a)], vecs[self._key(b)]))
            if not self.same_subject(a, b, claim_features(a.text), claim_features(b.text), hit, sim):
                continue
            conflict = self._conflict(a, b, hit, sim)
            key = tuple(sorted(((a.source, a.text), (b.source, b.text))))
            if key not in found or found[key].confidence < conflict.confidence:
                found[key] = conflict
        return sorted(found.values(), key=lambda c: -c.confidence)


def _with_value(c: Claim, value: str) -> Claim:
    return replace(c, value=value)


class NLIConflictDetector:
    """The rules, plus a sentence-transformers CrossEncoder NLI model for pairs the rules say nothing about.

    The model is a local folder (``nli_model``); its contradiction label is read from the model config
    (``id2label``). A pair on one subject (the same gate as the rules) whose contradiction probability,
    in either order, reaches ``contradiction_threshold`` is reported with kind ``polarity`` (or
    ``supersession``) and confidence equal to that probability.
    """

    def __init__(
        self,
        embedder,
        nli_model: str,
        config: ConflictsConfig | None = None,
        *,
        contradiction_threshold: float | None = None,
        max_pairs: int | None = None,
        wording_only: bool = False,
        setting: str = "assistant.nli_model",
        what: str = "NLI model",
        stored: ClaimVectorSource | None = None,
        **thresholds: Any,
    ):
        self.wording_only = wording_only  # leave pairs with comparable values or role holders to the rules
        if contradiction_threshold is not None:
            thresholds["contradiction_threshold"] = contradiction_threshold
        if max_pairs is not None:
            thresholds["nli_max_pairs"] = max_pairs
        self.rules = RuleConflictDetector(embedder, config, stored=stored, **thresholds)
        self.threshold = self.rules.thresholds.contradiction_threshold
        self.max_pairs = self.rules.thresholds.nli_max_pairs
        from tether.crossencoder import load_cross_encoder

        self.model = load_cross_encoder(nli_model, setting=setting, what=what)
        config = getattr(self.model.model, "config", None) if getattr(self.model, "model", None) is not None else None
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        hits = [i for i, name in id2label.items() if "contradict" in name.lower()]
        if len(hits) != 1:
            raise BackendUnavailable(
                f"{what} {nli_model}: config.id2label {id2label} has no single 'contradiction' label; "
                "use an NLI cross-encoder whose config names its labels (e.g. contradiction/entailment/neutral)"
            )
        self.contradiction_index = hits[0]
        self.num_labels = len(id2label)

    def contradiction_probs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """P(contradiction) of each (premise, hypothesis) pair."""
        if not pairs:
            return []
        import torch

        logits = self.model.predict(
            list(pairs), show_progress_bar=False, activation_fn=torch.nn.Identity(), apply_softmax=False
        )
        scores = np.asarray(logits, dtype=np.float64)
        scores = scores.reshape(len(pairs), -1)
        scores = scores - scores.max(axis=1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=1, keepdims=True)
        return [float(p[self.contradiction_index]) for p in probs]

    def _nli(self, a: Claim, b: Claim, sim: float) -> Conflict | None:
        p_ab, p_ba = self.contradiction_probs([(a.text, b.text), (b.text, a.text)])
        p = max(p_ab, p_ba)
        if p < self.threshold:
            return None
        superseded = [c.status == "superseded" for c in (a, b)]
        kind = "supersession" if sum(superseded) == 1 else "polarity"
        return Conflict(kind, "polarity", subject_of(a.text, b.text), (a, b), round(p, 4))

    def _gate(self, a: Claim, b: Claim, sim: float) -> bool:
        fa, fb = claim_features(a.text), claim_features(b.text)
        if scope_differs(fa, fb):
            return False
        if self.wording_only and values_decide(fa, fb):
            return False  # a normalised value or a role holder on both sides: the rules decide
        probe = RuleHit("nli", "polarity", "", "", 0.0)
        return self.rules.same_subject(a, b, fa, fb, probe, sim)

    def judge(self, a: Claim, b: Claim) -> Conflict | None:
        found = self.rules.judge(a, b)
        if found is not None:
            return found
        sim = self.rules.similarity(a, b)
        if not self._gate(a, b, sim):
            return None
        return self._nli(a, b, sim)

    def score(self, a: Claim, b: Claim) -> tuple[Conflict | None, float | None]:
        """(the rules' conflict or None, the model's P(contradiction) in the likelier order when the
        rules found nothing and the pair passes the gate, else None): what ``judge`` decides from,
        for choosing a threshold."""
        found = self.rules.judge(a, b)
        if found is not None:
            return found, None
        if not self._gate(a, b, self.rules.similarity(a, b)):
            return None, None
        return None, max(self.contradiction_probs([(a.text, b.text), (b.text, a.text)]))

    def detect(self, passages: Sequence[Any]) -> list[Conflict]:
        found = self.rules.detect(passages)
        done = {
            tuple(sorted(((c.claims[0].source, c.claims[0].text), (c.claims[1].source, c.claims[1].text))))
            for c in found
        }
        claims = [c for c in self.rules.claims(passages) if claim_features(c.text).terms]
        if len(claims) < 2 or self.max_pairs == 0:
            return found
        vecs = self.rules.vectors(claims)
        keyed = [self.rules._key(c) for c in claims]
        candidates = []
        for i in range(len(claims)):
            for j in range(i + 1, len(claims)):
                a, b = claims[i], claims[j]
                if tuple(sorted(((a.source, a.text), (b.source, b.text)))) in done:
                    continue
                sim = float(np.dot(vecs[keyed[i]], vecs[keyed[j]]))
                if self._gate(a, b, sim):
                    candidates.append((sim, a, b))
        candidates.sort(key=lambda t: -t[0])
        for sim, a, b in candidates[: self.max_pairs]:
            conflict = self._nli(a, b, sim)
            if conflict is not None:
                found.append(conflict)
        return sorted(found, key=lambda c: -c.confidence)


CLASSIFIER_CARD = "tether-detector.json"  # written by training/detector.py beside the weights


class ClassifierConflictDetector(NLIConflictDetector):
    """The rules where a value is normalised, a contradiction classifier where wording decides.

    The classifier is a CrossEncoder trained by ``tether train detector`` (labels contradiction /
    compatible / unrelated). It scores only pairs on one subject (the rules' gate) for which the
    rules found nothing and that do not both state comparable values or role holders: those the
    rules decide. Its threshold is ``conflicts.classifier_threshold`` or, unset, the one the
    training run chose on the dev halves (``tether-detector.json`` in the model folder).
    """

    def __init__(
        self,
        embedder,
        classifier: str | Path,
        config: ConflictsConfig | None = None,
        *,
        stored: ClaimVectorSource | None = None,
        **thresholds: Any,
    ):
        threshold = (config or ConflictsConfig()).classifier_threshold
        if threshold is None:
            threshold = classifier_card(classifier).get("threshold", 0.5)
        super().__init__(
            embedder,
            str(classifier),
            config,
            contradiction_threshold=float(threshold),
            wording_only=True,
            setting="conflicts.classifier",
            what="contradiction classifier",
            stored=stored,
            **thresholds,
        )
        self.path = str(classifier)


def classifier_card(folder: str | Path) -> dict[str, Any]:
    """What training wrote about a classifier (``tether-detector.json``); {} when absent or unreadable."""
    import json

    card = Path(folder) / CLASSIFIER_CARD
    try:
        return json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def get_detector(
    embedder,
    nli_model: str | None = None,
    config: ConflictsConfig | None = None,
    *,
    classifier: str | Path | None = None,
    stored: ClaimVectorSource | None = None,
) -> ConflictDetector:
    """The rule detector; rules + a trained contradiction classifier when one is given (``classifier``,
    else ``conflicts.classifier``: a local folder, e.g. the promoted one); else rules + NLI when a
    local NLI cross-encoder path is given. ``config`` is the ``conflicts:`` section (``cfg.conflicts``;
    None = defaults). ``stored``: the claim vectors ingestion stored (``retrieval.ledger.ClaimVectorStore``)."""
    classifier = classifier or (config.classifier if config is not None else None)
    if classifier:
        return ClassifierConflictDetector(embedder, classifier, config, stored=stored)
    if nli_model:
        return NLIConflictDetector(embedder, nli_model, config, stored=stored)
    return RuleConflictDetector(embedder, config, stored=stored)
