"""The extractive answerer: no LLM. Picks the sentences of the retrieved passages that answer the
question and joins them, each with its citation.

Sentences are scored by embedding similarity with the question plus a lexical bonus for shared
content words (numbers and names matter in policies), chosen with MMR so the answer does not
repeat itself, and ordered as they appear in the ranked passages. Below the relevance threshold
it refuses, and when the question asks for a number, a limit or a version that none of the best
sentences (or the two after each) states (``assistant.answerability``); the sentence that states it
then joins the answer. It is also the announced fallback when no LLM can be loaded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from assistant.answerability import judge, windows
from assistant.generators.base import Capabilities, GeneratorIdentity, GenParams, Message
from assistant.prompts import REFUSAL
from retrieval.search import SearchHit
from tether.config import AssistantConfig, ExtractiveSection, TetherConfig
from tether.errors import ConfigError
from tether.text.sentences import heading_prefix, split_sentences
from tether.text.terms import LEXICAL_WEIGHT, lexical_overlap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractiveConfig:
    """What the answerer uses: the ``extractive:`` section of tether.yaml (``tether.config.ExtractiveSection``,
    where the defaults and their help live) plus ``assistant.min_relevance``. Build it with ``from_config(cfg)``."""

    max_sentences: int = ExtractiveSection.max_sentences
    min_relevance: float = (
        AssistantConfig.min_relevance
    )  # below this best score, refuse (handbook QA: answerable >= 0.62, 4 of 6 unanswerable below)
    keep_ratio: float = ExtractiveSection.keep_ratio  # later sentences must score at least this share of the best
    mmr_lambda: float = ExtractiveSection.mmr_lambda
    lexical_weight: float = LEXICAL_WEIGHT
    answerability: bool = AssistantConfig.answerability  # refuse a typed question no close sentence answers
    answerability_depth: int = AssistantConfig.answerability_depth

    @classmethod
    def from_config(cls, cfg: TetherConfig) -> ExtractiveConfig:
        """The answerer's settings from a loaded config (``cfg.extractive`` and ``cfg.assistant.min_relevance``)."""
        e = cfg.extractive
        return cls(
            max_sentences=e.max_sentences,
            min_relevance=cfg.assistant.min_relevance,
            keep_ratio=e.keep_ratio,
            mmr_lambda=e.mmr_lambda,
            answerability=cfg.assistant.answerability,
            answerability_depth=cfg.assistant.answerability_depth,
        )


def _drop_heading(sentence: str) -> str:
    """'Approval\nEvery trip must…' -> 'Every trip must…'; 'A: For trips…' -> 'For trips…' (FAQ markers)."""
    sentence = sentence[heading_prefix(sentence) :].strip()
    return re.sub(r"^(?:Q|A):\s+", "", sentence)


class ExtractiveAnswerer:
    """A ``Generator`` without an LLM: it answers ``params.grounding`` (the question and the selected
    passages) with their best sentences, each cited, in one piece; the messages are not read."""

    capabilities = Capabilities(cad=False, token_streaming=False, needs_llm_prompt=False)

    def __init__(self, embedder, config: ExtractiveConfig = ExtractiveConfig()):
        self.embedder = embedder
        self.config = config
        self.identity = GeneratorIdentity(
            backend="extractive", model=getattr(embedder, "name", "embedder"), decoding="extractive"
        )

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[str]:
        """The whole answer (with ``[n]`` citations), or ``REFUSAL``, as one piece."""
        if params.grounding is None:
            raise ConfigError(
                "the extractive generator answers from passages, not from a prompt: "
                "pass GenParams(grounding=Grounding(question, passages))"
            )
        text, _ = self.answer(params.grounding.question, params.grounding.passages)
        yield text

    def answer(self, question: str, passages: Sequence[SearchHit]) -> tuple[str, bool]:
        """(answer text with [n] citations, refused)."""
        cfg = self.config
        cands: list[tuple[int, int, str]] = []  # (passage n, order, sentence)
        seen: set[str] = set()  # overlapping chunks repeat sentences: keep the first (best-ranked)
        for n, hit in enumerate(passages, start=1):
            for order, (s, e) in enumerate(split_sentences(hit.text)):
                sentence = _drop_heading(hit.text[s:e].strip())
                key = " ".join(sentence.lower().split())
                if key in seen:
                    continue
                seen.add(key)
                words = re.findall(r"\w+", sentence)
                if len(words) < 4 or sentence.startswith("#") and len(words) < 8 or sentence.endswith("?"):
                    continue  # headings, fragments and questions (FAQ lines) answer nothing
                cands.append((n, order, sentence))
        if not cands:
            return REFUSAL, True
        vecs = self.embedder.embed_batch([question] + [c[2] for c in cands])
        qvec, svecs = vecs[0], vecs[1:]
        lexical = lexical_overlap(question, [c[2] for c in cands]).astype(np.float32)
        relevance = svecs @ qvec + cfg.lexical_weight * lexical
        best = float(relevance.max())
        if best < cfg.min_relevance:
            return REFUSAL, True
        evidence = None
        if cfg.answerability:
            evidence = self.evidence(question, cands, relevance)
            if evidence is None:
                return REFUSAL, True
        chosen: list[int] = []
        while len(chosen) < cfg.max_sentences:
            scores = []
            for i in range(len(cands)):
                if i in chosen or relevance[i] < cfg.keep_ratio * best:
                    scores.append(-np.inf)
                    continue
                redundancy = max((float(svecs[i] @ svecs[j]) for j in chosen), default=0.0)
                scores.append(cfg.mmr_lambda * relevance[i] - (1 - cfg.mmr_lambda) * redundancy)
            pick = int(np.argmax(scores))
            if scores[pick] == -np.inf:
                break
            chosen.append(pick)
        if evidence is not None and evidence >= 0 and evidence not in chosen:
            chosen = chosen[:1] + [evidence] + chosen[1 : cfg.max_sentences - 1]  # the sentence stating the value
        # the best sentence leads; the others follow in passage rank and reading order
        chosen = chosen[:1] + sorted(chosen[1:], key=lambda i: (cands[i][0], cands[i][1]))
        parts = []
        for i in chosen:
            n, _, sentence = cands[i]
            sentence = " ".join(sentence.split())
            if sentence.startswith(("- ", "* ", "• ")):
                sentence = sentence[2:]
            end = sentence[-1] if sentence[-1] in ".!?" else "."
            sentence = sentence.rstrip(".!?:;, ")
            parts.append(f"{sentence} [{n}]{end}")
        return " ".join(parts), False

    def evidence(self, question: str, cands: Sequence[tuple[int, int, str]], relevance: np.ndarray) -> int | None:
        """The answerability check (``assistant.answerability``) over the candidates: the index of the
        candidate stating the value the question asks for, -1 when the question asks for no typed value,
        None when none of the best ``answerability_depth`` (with the two after each) states one."""
        by_passage: dict[int, list[int]] = {}
        for i, (n, _, _) in enumerate(cands):
            by_passage.setdefault(n, []).append(i)
        position = {i: (n, j) for n, idx in by_passage.items() for j, i in enumerate(idx)}
        texts = {n: [cands[i][2] for i in idx] for n, idx in by_passage.items()}
        ranked = [(float(relevance[i]), *position[i]) for i in range(len(cands))]
        verdict = judge(question, windows(ranked, texts, depth=self.config.answerability_depth, follow=2))
        if not verdict.answerable:
            log.info("extractive: refused as unanswerable: %s", verdict.reason)
            return None
        if verdict.evidence is None:
            return -1
        return next(i for i, c in enumerate(cands) if c[2] == verdict.evidence)
