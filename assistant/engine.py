"""The chat engine: question -> standalone query -> retrieval -> grounded prompt -> generation ->
citations attached and verified -> the turn logged.

``ChatEngine.answer`` returns an ``Answer``; ``ChatEngine.stream`` yields text pieces as the
generator produces them and ends with the ``Answer``. The engine logs; callers only render.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, replace
from typing import Iterator, Sequence

import numpy as np

from assistant.citations import NLIJudge, supports, verify_citations
from assistant.generators.base import GenParams, GeneratorIdentity
from assistant.generators.extractive import LEXICAL_WEIGHT, ExtractiveAnswerer, ExtractiveConfig, lexical_overlap
from assistant.logstore import LogStore
from assistant.conflict_answering import conflict_statement, drop_overridden, names_conflict, prompt_notes
from assistant.consistency import check_consistency
from assistant.prompts import REFUSAL, PromptSource, build_context_free_messages, build_messages, clean_reply, condense_query
from assistant.resolution import Decision, resolve
from tether.text.sentences import citation_numbers, split_sentences
from assistant.types import Answer, Conversation, Rewrite, Turn
from tether.config import TetherConfig
from tether.errors import BackendUnavailable, ConfigError
from retrieval.search import SearchHit, Searcher

log = logging.getLogger(__name__)

_REFUSAL_MARKERS = ("i don't know", "i do not know", "do not say", "don't say", "not contain", "no information", "cannot find", "could not find")


def build_generator(cfg: TetherConfig, embedder):
    """(generator, fallback reason or None). The extractive answerer stands in, announced, when an LLM cannot load."""
    a = cfg.assistant
    if a.generator == "extractive":
        return ExtractiveAnswerer(embedder, ExtractiveConfig(min_relevance=a.min_relevance)), None
    try:
        if a.generator == "openai":
            from assistant.generators.openai_compat import OpenAIGenerator

            gen = OpenAIGenerator(a.openai_url, a.openai_model)
            gen.models()  # fail now, while the extractive fallback can still stand in
            return gen, None
        from pathlib import Path

        from assistant.generators.hf import HFGenerator
        from assistant.models import resolve_model

        promoted = promoted_model_paths(cfg)
        if promoted is not None:
            path, adapter = promoted
            return HFGenerator(path, adapter=adapter), None
        path = resolve_model(a.model, cfg.models_dir)
        return HFGenerator(path, adapter=Path(a.adapter) if a.adapter else None), None
    except (BackendUnavailable, ImportError, OSError) as exc:
        if not a.fallback_to_extractive:
            raise
        reason = f"the {a.generator} generator is unavailable ({exc}); answering extractively instead"
        log.warning(reason)
        return ExtractiveAnswerer(embedder, ExtractiveConfig(min_relevance=a.min_relevance)), reason


def promoted_model_paths(cfg: TetherConfig):
    """(model dir, adapter dir or None) of the registry's promoted model (training/registry.py),
    served when the config names the default model; an explicitly configured model or adapter
    always wins. None when that does not apply or nothing is promoted."""
    a = cfg.assistant
    if a.model != "smollm2" or a.adapter:
        return None
    from training.registry import promoted_model

    return promoted_model(cfg)


class ChatEngine:
    def __init__(self, cfg: TetherConfig, *, searcher: Searcher | None = None, generator=None, logstore: LogStore | None = None, fallback: str | None = None, log_turns: bool = True):
        self.cfg = cfg
        self.searcher = searcher or Searcher(cfg)
        self.embedder = self.searcher.embedder
        if generator is None:
            generator, fallback = build_generator(cfg, self.embedder)
        self.generator = generator
        self.fallback = fallback
        self.logstore = logstore or LogStore(cfg.db_path)
        self.log_turns = log_turns  # evaluation runs keep their own records (eval_items) instead
        self._sentence_cache: dict[tuple[str, str], list[tuple[float, str]]] = {}
        self.nli = NLIJudge(cfg.assistant.nli_model) if cfg.assistant.nli_model else None
        self._detector = None

    @property
    def detector(self):
        """The conflict detector (built on first use): rules, plus the NLI model when one is configured."""
        if self._detector is None:
            from retrieval.conflicts import get_detector

            self._detector = get_detector(self.embedder, nli_model=self.cfg.assistant.nli_model)
        return self._detector

    # -- public -----------------------------------------------------------------------------

    def answer(self, question: str, conversation: Conversation | None = None) -> Answer:
        result = None
        for item in self.stream(question, conversation):
            if isinstance(item, Answer):
                result = item
        assert result is not None
        return result

    def stream(self, question: str, conversation: Conversation | None = None) -> Iterator[str | Rewrite | Answer]:
        """Text pieces as they are generated (a ``Rewrite`` when the text so far is replaced), then the ``Answer``."""
        question = (question or "").strip()
        if not question:
            raise ConfigError("the question is empty")
        a = self.cfg.assistant
        conversation = conversation if conversation is not None else Conversation()
        latency: dict[str, float] = {}
        t0 = time.perf_counter()

        t = time.perf_counter()
        query = condense_query(question, [(turn.question, turn.answer) for turn in conversation.turns])
        latency["condense"] = _ms(t)
        t = time.perf_counter()
        passages = self.searcher.search(query, k=a.top_k)
        latency["retrieve"] = _ms(t)
        t = time.perf_counter()
        conflicts, decisions = self.find_conflicts(passages)
        relevant = self.relevant_conflicts(question, conflicts)
        latency["conflicts"] = _ms(t)

        prompt = None
        verified = None  # (text, verify_citations(text)) when cad=auto already checked a reply
        statements: list[str] = []  # Tether's own words about conflicts, appended to the answer
        identity = self.generator.identity
        t = time.perf_counter()
        if isinstance(self.generator, ExtractiveAnswerer):
            text, refused = self.generator.answer(question, passages)
            if not refused and relevant:
                text, statements = self.add_conflict_statements(text, passages, conflicts, decisions, relevant)
            latency["generate"] = _ms(t)
            yield text
        elif not passages or self.best_relevance(question, passages) < a.min_relevance:
            # nothing retrieved is close to the question: refuse rather than let the LLM guess
            text, refused = REFUSAL, True
            latency["generate"] = _ms(t)
            yield text
        else:
            claims = self._conflict_sentences(conflicts, relevant)  # passage id -> claims the prompt must show
            passages = self.focus(question, passages, keep=set(claims))
            numbers = {h.id: n for n, h in enumerate(passages, start=1)}
            notes = prompt_notes([conflicts[i] for i in relevant], [decisions[i] for i in relevant], numbers)
            messages = self.build_messages(question, passages, notes=notes, keep=claims)
            prompt = [asdict(m) for m in messages]
            use_cad = self._cad_supported() and (a.cad == "on" or (a.cad == "auto" and bool(relevant)))
            pieces: list[str] = []
            first = None
            for piece in self.generator.stream(messages, self._params(question, use_cad)):
                if first is None:
                    first = _ms(t)
                pieces.append(piece)
                yield piece
            latency["first_token"] = first if first is not None else _ms(t)
            text, refused = self._finish("".join(pieces), passages)
            if not refused and a.cad == "auto" and not use_cad and self._cad_supported():
                verified = (text, verify_citations(text, passages, self.embedder, nli=self.nli))
                g = verified[1][1]
                if g is not None and g < a.cad_min_groundedness:
                    yield Rewrite(f"groundedness {g:.2f} < {a.cad_min_groundedness}: regenerating with context-aware decoding")
                    pieces = []
                    for piece in self.generator.stream(messages, self._params(question, True)):
                        pieces.append(piece)
                        yield piece
                    text, refused = self._finish("".join(pieces), passages)
            identity = self.generator.identity
            if not refused and relevant:
                before = text
                text, statements = self.add_conflict_statements(text, passages, conflicts, decisions, relevant)
                if text.startswith(before) and len(text) > len(before):
                    yield text[len(before):]
                elif text != before:
                    yield Rewrite("conflicting sources: the answer now names the conflict and applies the policy")
                    yield text
            latency["generate"] = _ms(t)

        t = time.perf_counter()
        if refused:
            citations, groundedness = [], None
        elif verified is not None and verified[0] == text:
            citations, groundedness = verified[1]
        else:
            citations, groundedness = verify_citations(text, passages, self.embedder, nli=self.nli)
        uncited = () if refused else tuple(uncited_sentences(text, statements))
        if uncited:  # a claim no source backs counts against the answer, not as nothing
            groundedness = sum(c.supported for c in citations) / (len(citations) + len(uncited))
        latency["verify"] = _ms(t)
        consistency = None
        if a.consistency and not isinstance(self.generator, ExtractiveAnswerer):
            t = time.perf_counter()
            consistency = check_consistency(self.generator, question, text, self.embedder)
            latency["consistency"] = _ms(t)
        latency["total"] = _ms(t0)
        answer = Answer(
            text=text,
            refused=refused,
            question=question,
            query=query,
            passages=tuple(passages),
            citations=tuple(citations),
            groundedness=groundedness,
            generator=identity,
            latency_ms=latency,
            uncited=uncited,
            conflicts=tuple(conflicts),
            decisions=tuple(decisions),
            policy=a.conflict_policy if conflicts else None,
            relevant_conflicts=tuple(relevant),
            consistency=consistency,
            fallback=self.fallback,
        )
        conversation_id, turn_id = conversation.id, None
        if self.log_turns:
            conversation_id, turn_id = self.logstore.log_turn(
                answer, collection=self.searcher.collection, conversation_id=conversation.id, user=conversation.user, prompt=prompt
            )
        conversation.id = conversation_id
        conversation.turns.append(Turn(question, text))
        yield replace(answer, turn_id=turn_id, conversation_id=conversation_id)

    # -- conflicts --------------------------------------------------------------------------

    def find_conflicts(self, passages: Sequence[SearchHit]) -> tuple[list, list[Decision]]:
        """Conflicts among the retrieved passages and the configured policy's decision on each."""
        if not self.cfg.assistant.conflicts or len(passages) < 2:
            return [], []
        conflicts = self.detector.detect(passages)
        return conflicts, [resolve(c, self.cfg.assistant.conflict_policy) for c in conflicts]

    def relevant_conflicts(self, question: str, conflicts: Sequence) -> list[int]:
        """Indexes of the conflicts the question is about: a claim close to the question.

        The passages retrieved for one question often disagree about something else (the hotel
        cap while the question asks about meals); those conflicts are shown, not put in the answer.
        """
        if not conflicts:
            return []
        texts = [c.claims[k].text for c in conflicts for k in (0, 1)]
        vecs = self.embedder.embed_batch([question] + texts)
        scores = vecs[1:] @ vecs[0] + LEXICAL_WEIGHT * lexical_overlap(question, texts)  # claims a0, b0, a1, b1, ...
        return [i for i in range(len(conflicts)) if max(scores[2 * i], scores[2 * i + 1]) >= RELEVANT_CONFLICT]

    def add_conflict_statements(self, text, passages, conflicts, decisions, relevant) -> tuple[str, list[str]]:
        """Name every relevant conflict the answer does not already name: quote and cite both
        claims, drop any sentence stating the overridden claim as fact, and give the decision.
        Returns (the new text, the statements added)."""
        numbers = {h.id: n for n, h in enumerate(passages, start=1)}
        statements = []
        for i in relevant:
            conflict, decision = conflicts[i], decisions[i]
            if names_conflict(text, conflict, numbers):
                continue
            statement = conflict_statement(conflict, decision, numbers, answer=text)
            if statement:
                text = drop_overridden(text, conflict, decision, numbers)
                statements.append(statement)
        return " ".join(x for x in [text.strip(), *statements] if x), statements

    def _conflict_sentences(self, conflicts, relevant) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for i in relevant:
            for c in conflicts[i].claims:
                if c.passage_id:
                    out.setdefault(c.passage_id, []).append(c.text)
        return out

    # -- generation helpers -----------------------------------------------------------------

    def _cad_supported(self) -> bool:
        return getattr(self.generator.identity, "backend", "") == "hf"

    def _params(self, question: str, cad: bool) -> GenParams:
        a = self.cfg.assistant
        params = GenParams(max_new_tokens=a.max_new_tokens, temperature=a.temperature)
        if cad:
            params = replace(params, cad_alpha=a.cad_alpha, cad_context_free=tuple(build_context_free_messages(question)))
        return params

    def _finish(self, raw: str, passages: Sequence[SearchHit]) -> tuple[str, bool]:
        """(answer text with citations attached, refused) from the generator's raw reply."""
        text = clean_reply(raw)
        refused = not passages or not text or any(m in text.lower() for m in _REFUSAL_MARKERS)
        if refused:
            return text or REFUSAL, True
        return self.attach_citations(text, passages), False

    # -- steps ------------------------------------------------------------------------------

    def build_messages(self, question: str, passages: Sequence[SearchHit], *, notes: Sequence[str] = (), keep: dict[str, list[str]] | None = None):
        """The grounded prompt: each passage's context (see ``contexts``), the notes (conflicts), the question."""
        contexts = self.contexts(question, passages, keep=keep)
        sources = [
            PromptSource(title=h.title, text=contexts[i], date=h.date, authority=h.authority, status=h.status)
            for i, h in enumerate(passages)
        ]
        return build_messages(question, sources, notes=notes, faithful=self.cfg.assistant.faithful_prompt)

    def focus(self, question: str, passages: Sequence[SearchHit], keep: set[str] = frozenset()) -> list[SearchHit]:
        """The passages worth showing a small LLM: those whose best sentence is close to the best
        overall, plus those in ``keep`` (passages holding a conflicting claim), in rank order.

        Distractors hurt a 135M model more than a missing runner-up helps it.
        """
        if self.cfg.assistant.llm_context == "passages" or len(passages) <= 1:
            return list(passages)
        if self.cfg.assistant.llm_context == "focused":
            top = self._top_sentences(question, passages)
            return [h for h in passages if h.id in top or h.id in keep]
        scores = [max(s for s, _ in self._scored_sentences(question, h)) for h in passages]
        best = max(scores)
        return [h for h, s in zip(passages, scores) if s >= best - FOCUS_MARGIN or h.id in keep]

    def contexts(self, question: str, passages: Sequence[SearchHit], keep: dict[str, list[str]] | None = None) -> list[str]:
        """What the LLM sees of each passage: its three most relevant sentences in reading order
        (shorter prompt, sharper focus), or the whole passage. Sentences in ``keep`` (conflicting
        claims, by passage id) are always shown."""
        keep = keep or {}
        if self.cfg.assistant.llm_context == "passages":
            return [h.text for h in passages]
        out = []
        top = self._top_sentences(question, passages) if self.cfg.assistant.llm_context == "focused" else {}
        for h in passages:
            scored = self._scored_sentences(question, h)
            forced = {" ".join(t.split()) for t in keep.get(h.id, [])}
            if self.cfg.assistant.llm_context == "focused":
                chosen = set(top.get(h.id, []))
            else:
                chosen = {scored[i][1] for i in sorted(range(len(scored)), key=lambda i: -scored[i][0])[:3]}
            picked = [t for _, t in scored if t in chosen or t in forced]
            picked += sorted(forced - {t for _, t in scored})  # a claim the splitter cut differently
            out.append(" ".join(_clip(t, 60) for t in picked) or _clip(h.text, 60))
        return out

    def best_relevance(self, question: str, passages: Sequence[SearchHit]) -> float:
        """The best sentence score over the passages (the extractive answerer's relevance measure)."""
        return max(sc for h in passages for sc, _ in self._scored_sentences(question, h))

    def _top_sentences(self, question: str, passages: Sequence[SearchHit], n: int = 3) -> dict[str, list[str]]:
        """The n best sentences over all passages, grouped by passage id, in reading order."""
        scored = [(sc, h.id, i, t) for h in passages for i, (sc, t) in enumerate(self._scored_sentences(question, h))]
        best = sorted(scored, key=lambda x: -x[0])[:n]
        out: dict[str, list[str]] = {}
        for _, pid, i, t in sorted(best, key=lambda x: (x[1], x[2])):
            if t not in out.setdefault(pid, []):
                out[pid].append(t)
        return out

    def _scored_sentences(self, question: str, hit: SearchHit) -> list[tuple[float, str]]:
        key = (question, hit.id)
        if key not in self._sentence_cache:
            spans = [(s, e) for s, e in split_sentences(hit.text) if len(hit.text[s:e].split()) >= 3] or [(0, len(hit.text))]
            texts = [" ".join(hit.text[s:e].split()) for s, e in spans]
            vecs = self.embedder.embed_batch([question] + texts)
            scores = vecs[1:] @ vecs[0] + LEXICAL_WEIGHT * lexical_overlap(question, texts)
            if len(self._sentence_cache) > 256:
                self._sentence_cache.clear()
            self._sentence_cache[key] = [(float(sc), t) for sc, t in zip(scores, texts)]
        return self._sentence_cache[key]

    def attach_citations(self, text: str, passages: Sequence[SearchHit]) -> str:
        """Give each uncited answer sentence the passage whose sentence best supports it, when one does.

        Sentence against sentence (not against a whole passage), so a short answer such as
        "The number is 2222." still finds its source; a sentence whose numbers appear in no
        passage sentence is left uncited rather than given a wrong source.
        """
        if not passages:
            return text
        spans = split_sentences(text)
        bare = [(s, e) for s, e in spans if not citation_numbers(text[s:e]) and len(text[s:e].split()) >= 2]
        if not bare:
            return text
        cands = [(n, sent) for n, h in enumerate(passages, start=1) for sent in split_sentences_text(h.text)]
        if not cands:
            return text
        vecs = self.embedder.embed_batch([text[s:e] for s, e in bare] + [c[1] for c in cands])
        svecs, cvecs = vecs[: len(bare)], vecs[len(bare) :]
        out = text
        for (s, e), v in sorted(zip(bare, svecs), key=lambda x: -x[0][0]):
            sims = cvecs @ v
            pick = None
            for i in np.argsort(-sims)[:5]:
                n, sent = cands[i]
                if supports(float(sims[i]), out[s:e], sent):
                    pick = n
                    break
            if pick is None:
                continue
            sentence = out[s:e]
            cited = (sentence[:-1] + f" [{pick}]" + sentence[-1]) if sentence[-1] in ".!?" else sentence + f" [{pick}]"
            out = out[:s] + cited + out[e:]
        return out


def uncited_sentences(text: str, own: Sequence[str] = ()) -> list[str]:
    """The answer's sentences that state something (3+ words) without citing a source, leaving out
    Tether's own words about conflicts (``own``)."""
    out = []
    for s, e in split_sentences(text):
        sentence = text[s:e]
        if citation_numbers(sentence) or len(sentence.split()) < 3 or any(sentence in o for o in own):
            continue
        out.append(sentence)
    return out


def split_sentences_text(text: str) -> list[str]:
    return [" ".join(text[s:e].split()) for s, e in split_sentences(text) if len(text[s:e].split()) >= 3]


RELEVANT_CONFLICT = 0.55  # question-claim relevance (as for sentences: cosine + lexical overlap) for a conflict to enter the answer
FOCUS_MARGIN = 0.15  # show the LLM passages whose best sentence scores within this of the best


def _clip(sentence: str, words: int) -> str:
    parts = sentence.split()
    return sentence if len(parts) <= words else " ".join(parts[:words]) + " …"


def _ms(t: float) -> float:
    return (time.perf_counter() - t) * 1e3
