"""The chat engine: a short loop over stages, each a method with typed input and output.

    retrieve          question, conversation          -> Retrieved (standalone query, passages)
    detect_conflicts  question, passages              -> Findings (conflicts, decisions, relevant ones)
    select_context    question, passages, Findings    -> Context (passages to cite, the grounded prompt)
    generate          Context, Findings               -> Draft (reply cleaned, citations attached)
    retry_with_cad    Context, Draft                  -> Draft (cad=auto: a poorly grounded reply again, with CAD)
    resolve           Draft, Context, Findings        -> Resolved (relevant conflicts named, the policy applied,
                                                          the answer bounded: conflicts, characters, citations)
    verify            Resolved, passages              -> Verification (citations checked, uncited sentences)
    guard             Answer, Context, Resolved       -> Answer (a looping, unverified or inventing LLM reply
                                                          replaced by the extractive answer, labelled; emits Replace)
    log               Answer, Conversation, Context   -> Answer (with its turn and conversation ids)

``ChatEngine.stream`` yields events (assistant/events.py): ``Token`` pieces as the generator
produces them, ``Replace`` when the text shown so far is replaced, then ``Final(answer)``;
``ChatEngine.answer`` returns the ``Answer``. The stages that stream are generator functions that
yield their events and return their result (``draft = yield from self.generate(...)``).

What a backend can do (CAD, token streaming, whether it reads a prompt at all) is read from its
declared ``Capabilities``. The model to serve comes from the caller's ``ModelSource`` (the
registry's promoted model, training/registry.py), never from importing the registry here.
The engine logs; callers only render.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Generator as Streaming
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from assistant.answerability import Verdict, judge, windows
from assistant.citations import NLIJudge, supports, verify_citations
from assistant.conflict_answering import conflict_statement, drop_overridden, names_conflict, prompt_notes
from assistant.consistency import check_consistency
from assistant.events import Event, Final, Replace, Token, consume
from assistant.generators.base import Capabilities, GenParams, Grounding, Message, capabilities_of
from assistant.generators.extractive import ExtractiveAnswerer, ExtractiveConfig
from assistant.logstore import LogStore
from assistant.prompts import (
    REFUSAL,
    PromptSource,
    build_context_free_messages,
    build_messages,
    clean_reply,
    condense_query,
)
from assistant.resolution import Decision, resolve
from assistant.types import Answer, Citation, Conversation, Rejected, Turn
from retrieval.search import Searcher, SearchHit
from tether.config import HFConfig, TetherConfig
from tether.errors import BackendUnavailable, ConfigError
from tether.text.quantities import missing_values
from tether.text.sentences import citation_numbers, split_sentences, split_sentences_text, strip_citations
from tether.text.terms import LEXICAL_WEIGHT, lexical_overlap

log = logging.getLogger(__name__)

_SURROGATE = re.compile("[\ud800-\udfff]")
_CITATION = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")
CAD_RETRY = "groundedness {g:.2f} < {min}: regenerating with context-aware decoding"
CONFLICT_REWRITE = "conflicting sources: the answer now names the conflict and applies the policy"
ANSWER_CUT = "the answer was longer than assistant.max_answer_chars or max_citations allow: cut"
GUARD_LABEL = "The model's answer could not be verified; showing sentences from the sources."
GUARD_NGRAM = 4  # a reply loops when one word n-gram of this length ...
GUARD_MAX_REPEATS = 3  # ... occurs this many times (SmolLM2's loops repeat a phrase until max_new_tokens)


# -- the model to serve -----------------------------------------------------------------------


class ModelSource(Protocol):
    """Where the model to serve comes from when the config names the default one. training/registry.py
    provides ``RegistryModelSource`` (the promoted model); the CLI root and the app pass it in."""

    def promoted(self, cfg: TetherConfig) -> tuple[Path, Path | None] | None:
        """(model dir, adapter dir or None) to serve instead of the configured model, or None."""
        ...


def promoted_model_paths(cfg: TetherConfig, source: ModelSource | None) -> tuple[Path, Path | None] | None:
    """What ``source`` says to serve, when the config names the default model: an explicitly
    configured model or adapter always wins. None when that does not apply, there is no source,
    or nothing is promoted."""
    a = cfg.assistant
    if source is None or a.model != "smollm2" or a.adapter:
        return None
    return source.promoted(cfg)


def promoted_classifier(cfg: TetherConfig, source: ModelSource | None) -> Path | None:
    """The contradiction classifier ``source`` says to use (``tether train detector``, promoted), when
    ``conflicts.classifier`` names none; a source without ``promoted_detector`` has none."""
    if cfg.conflicts.classifier or source is None:
        return None
    ask = getattr(source, "promoted_detector", None)
    return ask(cfg) if ask is not None else None


def hf_generator(path: Path, adapter: Path | None, hf: HFConfig):
    """The ``hf`` generator for checkpoint ``path`` (+ ``adapter``) on the runtime ``hf.runtime``
    chooses (``onnx_lm.choose_runtime``): ONNX Runtime when the checkpoint's exported graph can
    serve, else transformers on torch."""
    from assistant.generators.onnx_lm import OnnxLM, choose_runtime

    runtime, why = choose_runtime(hf, path, adapter)
    log.info("hf generator on %s: %s", runtime, why)
    if runtime == "onnx":
        try:
            return OnnxLM(path, no_repeat_ngram=hf.no_repeat_ngram, prefix_cache=hf.prefix_cache)
        except BackendUnavailable as exc:
            if hf.runtime == "onnx":
                raise
            log.warning("the ONNX graph of %s cannot load (%s); running it on torch", path, exc)
    from assistant.generators.hf import HFGenerator

    return HFGenerator.from_config(path, adapter, hf)


def build_generator(cfg: TetherConfig, embedder, *, model_source: ModelSource | None = None):
    """(generator, fallback reason or None). The extractive answerer stands in, announced, when an LLM cannot load."""
    a = cfg.assistant
    if a.generator == "extractive":
        return ExtractiveAnswerer(embedder, ExtractiveConfig.from_config(cfg)), None
    try:
        if a.generator == "openai":
            from assistant.generators.openai_compat import OpenAIGenerator

            gen = OpenAIGenerator.from_config(cfg.openai)
            gen.models()  # fail now, while the extractive fallback can still stand in
            return gen, None
        from assistant.models import resolve_model

        promoted = promoted_model_paths(cfg, model_source)
        if promoted is not None:
            path, adapter = promoted
        else:
            path, adapter = resolve_model(a.model, cfg.models_dir), Path(a.adapter) if a.adapter else None
        return hf_generator(path, adapter, cfg.hf), None
    except (BackendUnavailable, ImportError, OSError) as exc:
        if not a.fallback_to_extractive:
            raise
        reason = f"the {a.generator} generator is unavailable ({exc}); answering extractively instead"
        log.warning(reason)
        return ExtractiveAnswerer(embedder, ExtractiveConfig.from_config(cfg)), reason


# -- what the stages hand each other ------------------------------------------------------------


@dataclass(frozen=True)
class Retrieved:
    question: str
    query: str  # the standalone query actually searched
    passages: tuple[SearchHit, ...]


@dataclass(frozen=True)
class Findings:
    """The conflicts among the retrieved passages, the policy's decision on each, the indexes of
    those the question is about, and of those chosen to be stated (``to_state``: the relevant ones,
    one per pair of values, most relevant first, at most ``assistant.max_conflicts_stated``, in
    index order; None = every relevant one). Only the chosen ones enter the prompt and the answer."""

    conflicts: tuple[Any, ...] = ()  # retrieval.conflicts.Conflict
    decisions: tuple[Decision, ...] = ()
    relevant: tuple[int, ...] = ()
    to_state: tuple[int, ...] | None = None

    def chosen(self) -> tuple[int, ...]:
        """The conflicts the prompt and the answer speak about."""
        return self.relevant if self.to_state is None else self.to_state

    def claims_by_passage(self) -> dict[str, list[str]]:
        """Passage id -> the chosen conflicting claims it holds (the prompt must show them)."""
        out: dict[str, list[str]] = {}
        for i in self.chosen():
            for c in self.conflicts[i].claims:
                if c.passage_id:
                    out.setdefault(c.passage_id, []).append(c.text)
        return out


@dataclass(frozen=True)
class Context:
    question: str
    passages: tuple[SearchHit, ...]  # what the answer cites: [n] is passages[n - 1]
    messages: tuple[Message, ...] = ()  # the grounded prompt; () when none is built (refusal, no LLM)
    refuse: bool = False  # nothing retrieved is close enough to the question: refuse without generating


@dataclass(frozen=True)
class Verification:
    citations: tuple[Citation, ...] = ()
    groundedness: float | None = None  # supported citations / (citations + uncited sentences)
    uncited: tuple[str, ...] = ()


@dataclass(frozen=True)
class Draft:
    text: str  # the reply cleaned, with citations attached
    refused: bool
    cad: bool = False  # decoded with context-aware decoding
    checked: Verification | None = None  # the citations of exactly this text, when a stage already checked them


@dataclass(frozen=True)
class Resolved:
    text: str
    refused: bool
    statements: tuple[str, ...] = ()  # Tether's own words about conflicts, appended to the answer
    checked: Verification | None = None
    stated: tuple[int, ...] = ()  # the conflicts the answer states (by Tether's statement or the reply's own words)


class Clock:
    """Milliseconds per stage, for ``Answer.latency_ms``."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.ms: dict[str, float] = {}
        self.started: dict[str, float] = {}

    @contextmanager
    def lap(self, name: str) -> Iterator[None]:
        self.started[name] = t = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = _ms(t)

    def mark(self, name: str, since: str) -> None:
        """Record ``name`` once: the time since lap ``since`` started (first_token)."""
        if name not in self.ms:
            self.ms[name] = _ms(self.started.get(since, self.t0))

    def total(self) -> dict[str, float]:
        self.ms["total"] = _ms(self.t0)
        return dict(self.ms)


# -- the engine ---------------------------------------------------------------------------------


class ChatEngine:
    def __init__(
        self,
        cfg: TetherConfig,
        *,
        searcher: Searcher | None = None,
        generator=None,
        logstore: LogStore | None = None,
        fallback: str | None = None,
        log_turns: bool = True,
        model_source: ModelSource | None = None,
    ):
        self.cfg = cfg
        self.model_source = model_source
        self.searcher = searcher or Searcher(cfg)
        self.embedder = self.searcher.embedder
        if generator is None:
            generator, fallback = build_generator(cfg, self.embedder, model_source=model_source)
        self.generator = generator
        self.fallback = fallback
        self.logstore = logstore or LogStore(cfg.db_path)
        self.log_turns = log_turns  # evaluation runs keep their own records (eval_items) instead
        self._sentence_cache: dict[tuple[str, str], list[tuple[float, str]]] = {}
        self.nli = NLIJudge(cfg.assistant.nli_model) if cfg.assistant.nli_model else None
        self._detector = None
        self._extractive: ExtractiveAnswerer | None = None  # the guard's stand-in, built on first use

    @property
    def capabilities(self) -> Capabilities:
        return capabilities_of(self.generator)

    @property
    def detector(self):
        """The conflict detector (built on first use): rules, plus the promoted (or configured) contradiction
        classifier, or else the NLI model when one is configured."""
        if self._detector is None:
            from retrieval.conflicts import get_detector
            from retrieval.ledger import ClaimVectorStore

            self._detector = get_detector(
                self.embedder,
                nli_model=self.cfg.assistant.nli_model,
                config=self.cfg.conflicts,
                classifier=promoted_classifier(self.cfg, self.model_source),
                stored=ClaimVectorStore(self.cfg.db_path, self.cfg.retrieval.embed_identity),
            )
        return self._detector

    # -- public -----------------------------------------------------------------------------

    def answer(self, question: str, conversation: Conversation | None = None) -> Answer:
        return consume(self.stream(question, conversation))

    def stream(self, question: str, conversation: Conversation | None = None) -> Iterator[Event]:
        """``Token``s as the answer is generated, a ``Replace`` when the text shown so far is replaced, then ``Final``."""
        question = readable_text(question or "").strip()
        if not question:
            raise ConfigError("the question is empty")
        conversation = conversation if conversation is not None else Conversation()
        clock = Clock()
        retrieved = self.retrieve(question, conversation, clock)
        with clock.lap("conflicts"):
            found = self.detect_conflicts(question, retrieved.passages)
        with clock.lap("generate"):
            context = self.select_context(question, retrieved.passages, found)
            draft = yield from self.generate(context, found, clock)
            draft = yield from self.retry_with_cad(context, draft)
            resolved = yield from self.resolve(draft, context, found)
        with clock.lap("verify"):
            verification = self.verify(resolved, context.passages)
        consistency = self.check_consistency(question, resolved, clock)
        answer = self.compose(retrieved, found, context, resolved, verification, consistency, clock.total())
        answer = yield from self.guard(answer, context, found, resolved)
        yield Final(self.log(answer, conversation, context))

    # -- stages -----------------------------------------------------------------------------

    def retrieve(self, question: str, conversation: Conversation, clock: Clock | None = None) -> Retrieved:
        """A follow-up condensed into a standalone query (``condense``), then searched (``retrieve``)."""
        clock = clock or Clock()
        with clock.lap("condense"):
            query = condense_query(question, [(turn.question, turn.answer) for turn in conversation.turns])
        with clock.lap("retrieve"):
            passages = self.searcher.search(query, k=self.cfg.assistant.top_k)
        return Retrieved(question, query, tuple(passages))

    def detect_conflicts(self, question: str, passages: Sequence[SearchHit]) -> Findings:
        """The conflicts, the policy's decision on each, the relevant ones and those to state."""
        conflicts, decisions = self.find_conflicts(passages)
        if not conflicts:
            return Findings()
        scores = self.conflict_scores(question, conflicts)
        relevant = [i for i, sc in enumerate(scores) if sc >= self.cfg.assistant.relevant_conflict]
        ranked = sorted(relevant, key=lambda i: -scores[i])
        to_state = sorted(distinct_conflicts(conflicts, ranked)[: self.cfg.assistant.max_conflicts_stated])
        return Findings(tuple(conflicts), tuple(decisions), tuple(relevant), tuple(to_state))

    def select_context(self, question: str, passages: Sequence[SearchHit], found: Findings) -> Context:
        """What the generator answers from. A generator that reads no prompt gets every passage.
        For an LLM: a refusal when nothing retrieved is close to the question (rather than let it
        guess), else the passages worth showing it (``focus``) and the grounded prompt, with a note
        on each relevant conflict and its claims always shown."""
        if not self.capabilities.needs_llm_prompt:
            return Context(question, tuple(passages))
        if not passages or self.best_relevance(question, passages) < self.cfg.assistant.min_relevance:
            return Context(question, tuple(passages), refuse=True)
        claims = found.claims_by_passage()
        if self.cfg.assistant.answerability:
            verdict, holder = self.answerability(question, passages)
            if not verdict.answerable:
                log.info("refused as unanswerable: %s", verdict.reason)
                return Context(question, tuple(passages), refuse=True)
            if holder is not None:  # the sentence stating the asked value is shown to the model
                claims.setdefault(holder, []).append(verdict.evidence)
        shown = self.focus(question, passages, keep=set(claims))
        numbers = {h.id: n for n, h in enumerate(shown, start=1)}
        chosen = found.chosen()
        notes = prompt_notes([found.conflicts[i] for i in chosen], [found.decisions[i] for i in chosen], numbers)
        messages = self.build_messages(question, shown, notes=notes, keep=claims)
        return Context(question, tuple(shown), tuple(messages))

    def generate(self, context: Context, found: Findings, clock: Clock | None = None) -> Streaming[Event, None, Draft]:
        """Stream the reply (with CAD when ``cad`` is on, or auto and a relevant conflict is in play), then ``finish`` it."""
        if context.refuse:
            yield Token(REFUSAL)
            return Draft(REFUSAL, refused=True)
        a = self.cfg.assistant
        cad = self.capabilities.cad and (a.cad in ("on", "adaptive") or (a.cad == "auto" and bool(found.relevant)))
        raw = yield from self._decode(context, cad, clock)
        return self.finish(raw, context, cad=cad)

    def retry_with_cad(self, context: Context, draft: Draft) -> Streaming[Event, None, Draft]:
        """cad=auto: a reply decoded without CAD whose groundedness is below ``cad_min_groundedness``
        is replaced by a new attempt with CAD (``Replace("")``, then its tokens). The check is kept
        on the draft so ``verify`` need not repeat it."""
        a = self.cfg.assistant
        if draft.refused or draft.cad or a.cad != "auto" or not self.capabilities.cad:
            return draft
        checked = self.check_citations(draft.text, context.passages)
        g = checked.groundedness
        if g is None or g >= a.cad_min_groundedness:
            return replace(draft, checked=checked)
        yield Replace("", CAD_RETRY.format(g=g, min=a.cad_min_groundedness))
        raw = yield from self._decode(context, True)
        return self.finish(raw, context, cad=True)

    def resolve(self, draft: Draft, context: Context, found: Findings) -> Streaming[Event, None, Resolved]:
        """Name each chosen conflict the answer does not already name and apply the policy
        (``add_conflict_statements``: one per pair of values, at most ``assistant.max_conflicts_stated``),
        then keep the answer within ``assistant.max_answer_chars`` and ``assistant.max_citations``
        (``bound``; every conflict stays in the ``Answer``). A ``Token`` when that only appends, a
        ``Replace`` when it also drops or cuts something."""
        if draft.refused:
            return Resolved(draft.text, draft.refused, (), draft.checked)
        chosen = distinct_conflicts(found.conflicts, found.chosen())[: self.cfg.assistant.max_conflicts_stated]
        reply, named, added = self.add_conflict_statements(
            draft.text, context.passages, found.conflicts, found.decisions, chosen
        )
        reply, added = self.bound(reply, added)
        numbers = {h.id: n for n, h in enumerate(context.passages, start=1)}
        named = [i for i in named if names_conflict(reply, found.conflicts[i], numbers)]  # still, once bounded
        statements = [statement for _, statement in added]
        text = " ".join(x for x in [reply.strip(), *statements] if x)
        if text.startswith(draft.text) and len(text) > len(draft.text):
            yield Token(text[len(draft.text) :])
        elif text != draft.text:
            yield Replace(text, CONFLICT_REWRITE if statements else ANSWER_CUT)
        checked = draft.checked if text == draft.text else None
        stated = tuple(sorted([*named, *(i for i, _ in added)]))
        return Resolved(text, False, tuple(statements), checked, stated)

    def bound(self, reply: str, added: Sequence[tuple[int, str]]) -> tuple[str, list[tuple[int, str]]]:
        """The reply and the conflict statements (``(conflict index, statement)``) cut to
        ``assistant.max_answer_chars`` characters and ``assistant.max_citations`` citations, by whole
        sentences and statements: the reply's later sentences go first, then the last statements
        (their conflicts are then not stated). A first sentence still over the limits is cut at a
        word and ends in " …"; a statement is never cut inside."""
        a = self.cfg.assistant
        added = list(added)

        def fits(parts: Sequence[str]) -> bool:
            text = " ".join(x for x in parts if x)
            return len(text) <= a.max_answer_chars and len(citation_numbers(text)) <= a.max_citations

        if fits([reply, *(x for _, x in added)]):
            return reply, added
        sentences = [reply[s:e] for s, e in split_sentences(reply)] or ([reply] if reply.strip() else [])
        keep = len(sentences)
        while not fits([*sentences[:keep], *(x for _, x in added)]) and (keep > 1 or added):
            if keep > 1:
                keep -= 1
            else:
                added.pop()
        reply = " ".join(sentences[:keep])
        if not fits([reply]):
            reply = _cut(reply, a.max_answer_chars, a.max_citations)
        return reply, added

    def verify(self, resolved: Resolved, passages: Sequence[SearchHit]) -> Verification:
        """Every citation checked against its passage; sentences that cite nothing (Tether's own
        conflict statements excepted) count against the groundedness."""
        if resolved.refused:
            return Verification()
        checked = resolved.checked if resolved.checked is not None else self.check_citations(resolved.text, passages)
        uncited = tuple(uncited_sentences(resolved.text, resolved.statements))
        groundedness = checked.groundedness
        if uncited:  # a claim no source backs counts against the answer, not as nothing
            groundedness = sum(c.supported for c in checked.citations) / (len(checked.citations) + len(uncited))
        return Verification(checked.citations, groundedness, uncited)

    def guard(
        self, answer: Answer, context: Context, found: Findings, resolved: Resolved
    ) -> Streaming[Event, None, Answer]:
        """Never show a failed LLM reply as the answer. When the model's own words (Tether's conflict
        statements left out) loop, cite nothing that verifies, or state a value that neither the
        sources nor the question hold, the extractive answer over the same passages (resolved and
        verified like any other) replaces it: ``Replace(text, GUARD_LABEL + reasons)``, and the
        answer keeps the attempt and the reasons in ``rejected`` (logged, a negative for training)."""
        if (
            not self.cfg.assistant.guard
            or answer.refused
            or not self.capabilities.needs_llm_prompt
            or not context.passages
        ):
            return answer
        reasons = self.failures(answer, context, resolved.statements)
        if not reasons:
            return answer
        if self._extractive is None:
            self._extractive = ExtractiveAnswerer(self.embedder, ExtractiveConfig.from_config(self.cfg))
        params = GenParams(grounding=Grounding(context.question, context.passages))
        text = "".join(self._extractive.stream((), params)) or REFUSAL
        draft = Draft(text, refused=text == REFUSAL)
        shown = stage_result(self.resolve(draft, context, found))  # its events are not shown: one Replace is
        verification = self.verify(shown, context.passages)
        log.info("guard: the %s reply was replaced by the extractive answer: %s", answer.generator.backend, reasons)
        yield Replace(shown.text, GUARD_LABEL + " (" + "; ".join(reasons) + ")")
        return replace(
            answer,
            text=shown.text,
            refused=shown.refused,
            citations=verification.citations,
            groundedness=verification.groundedness,
            uncited=verification.uncited,
            rejected=Rejected(answer.text, tuple(reasons), answer.groundedness),
        )

    def failures(self, answer: Answer, context: Context, statements: Sequence[str] = ()) -> list[str]:
        """Why the model's reply must not be shown (empty: it may be). Only the model's own sentences
        count; Tether's conflict statements are its words, not the model's."""
        own = answer.text
        for statement in statements:
            own = own.replace(statement, " ")
        own = " ".join(own.split())
        out = []
        loop = repeated_ngram(own, GUARD_NGRAM)
        if loop is not None and loop[1] >= GUARD_MAX_REPEATS:
            out.append(f"it repeats itself ('{loop[0]}' {loop[1]} times)")
        own_citations = [c for c in answer.citations if " ".join(c.sentence.split()) in own]
        if not any(c.supported for c in own_citations):
            out.append("none of its citations is supported by its source" if own_citations else "it cites no source")
        evidence = " ".join([context.question, *(h.text for h in context.passages)])
        invented = missing_values(strip_citations(own), evidence)
        if invented:
            out.append("it states values no source holds: " + ", ".join(dict.fromkeys(v.text for v in invented)))
        return out

    def check_consistency(self, question: str, resolved: Resolved, clock: Clock | None = None) -> dict[str, Any] | None:
        """The intra-memory check (``assistant.consistency``), for generators that can answer from memory."""
        if not self.cfg.assistant.consistency or not self.capabilities.needs_llm_prompt:
            return None
        with (clock or Clock()).lap("consistency"):
            return check_consistency(self.generator, question, resolved.text, self.embedder)

    def compose(
        self,
        retrieved: Retrieved,
        found: Findings,
        context: Context,
        resolved: Resolved,
        verification: Verification,
        consistency: dict[str, Any] | None,
        latency_ms: dict[str, float],
    ) -> Answer:
        return Answer(
            text=resolved.text,
            refused=resolved.refused,
            question=retrieved.question,
            query=retrieved.query,
            passages=context.passages,
            citations=verification.citations,
            groundedness=verification.groundedness,
            generator=self.generator.identity,
            latency_ms=latency_ms,
            uncited=verification.uncited,
            conflicts=found.conflicts,
            decisions=found.decisions,
            policy=self.cfg.assistant.conflict_policy if found.conflicts else None,
            relevant_conflicts=found.relevant,
            stated_conflicts=resolved.stated,
            consistency=consistency,
            fallback=self.fallback,
        )

    def log(self, answer: Answer, conversation: Conversation, context: Context) -> Answer:
        """The turn written to the log (with the prompt the LLM saw) and added to the conversation."""
        conversation_id, turn_id = conversation.id, None
        if self.log_turns:
            conversation_id, turn_id = self.logstore.log_turn(
                answer,
                collection=self.searcher.collection,
                conversation_id=conversation.id,
                user=conversation.user,
                prompt=[asdict(m) for m in context.messages] or None,
            )
        conversation.id = conversation_id
        conversation.turns.append(Turn(answer.question, answer.text))
        return replace(answer, turn_id=turn_id, conversation_id=conversation_id)

    # -- generation steps -------------------------------------------------------------------

    def params(self, context: Context, cad: bool) -> GenParams:
        """Decoding parameters; ``grounding`` carries the question and passages for generators that answer from them."""
        a = self.cfg.assistant
        params = GenParams(
            max_new_tokens=a.max_new_tokens,
            temperature=a.temperature,
            grounding=Grounding(context.question, context.passages),
        )
        if cad:
            params = replace(
                params,
                cad_alpha=a.cad_alpha,
                cad_adaptive=a.cad == "adaptive",
                cad_context_free=tuple(build_context_free_messages(context.question)),
            )
        return params

    def _decode(self, context: Context, cad: bool, clock: Clock | None = None) -> Streaming[Event, None, str]:
        """One pass of the generator: a ``Token`` per piece; returns the whole reply. With ``clock``,
        records ``first_token`` (for generators that stream tokens)."""
        timed = clock is not None and self.capabilities.token_streaming
        pieces: list[str] = []
        for piece in self.generator.stream(context.messages, self.params(context, cad)):
            if timed:
                clock.mark("first_token", since="generate")
            pieces.append(piece)
            yield Token(piece)
        if timed:
            clock.mark("first_token", since="generate")
        return "".join(pieces)

    def finish(self, raw: str, context: Context, *, cad: bool = False) -> Draft:
        """The generator's raw reply as a draft. An LLM's reply is cleaned of prompt echoes, read
        for refusal phrases (``assistant.refusal_markers``) and given citations; a generator that
        reads no prompt cites the passages itself, so its reply is kept as it is."""
        if not self.capabilities.needs_llm_prompt:
            return Draft(raw or REFUSAL, refused=not raw or raw == REFUSAL, cad=cad)
        text = clean_reply(raw)
        lower = text.lower()
        refused = (
            not context.passages
            or not text
            or text == REFUSAL
            or any(m.lower() in lower for m in self.cfg.assistant.refusal_markers)
        )
        if refused:
            return Draft(text or REFUSAL, refused=True, cad=cad)
        return Draft(self.attach_citations(text, context.passages), refused=False, cad=cad)

    def check_citations(self, text: str, passages: Sequence[SearchHit]) -> Verification:
        citations, groundedness = verify_citations(text, passages, self.embedder, nli=self.nli)
        return Verification(tuple(citations), groundedness)

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
        threshold = self.cfg.assistant.relevant_conflict
        return [i for i, sc in enumerate(self.conflict_scores(question, conflicts)) if sc >= threshold]

    def conflict_scores(self, question: str, conflicts: Sequence) -> list[float]:
        """How close each conflict is to the question: its closer claim's score (cosine + 0.25 x shared words)."""
        texts = [c.claims[k].text for c in conflicts for k in (0, 1)]
        vecs = self.embedder.embed_batch([question] + texts)
        scores = vecs[1:] @ vecs[0] + LEXICAL_WEIGHT * lexical_overlap(question, texts)  # claims a0, b0, a1, b1, ...
        return [float(max(scores[2 * i], scores[2 * i + 1])) for i in range(len(conflicts))]

    def add_conflict_statements(
        self, text: str, passages: Sequence[SearchHit], conflicts, decisions, chosen: Sequence[int]
    ) -> tuple[str, list[int], list[tuple[int, str]]]:
        """Name every chosen conflict the answer does not already name: quote and cite both claims,
        drop any sentence stating the overridden claim as fact, and give the decision. Returns (the
        reply with those sentences dropped, the conflicts the reply already names, the
        ``(conflict index, statement)`` pairs to append, in conflict order)."""
        numbers = {h.id: n for n, h in enumerate(passages, start=1)}
        named, added = [], []
        for i in sorted(chosen):  # in conflict order: training.data.split_statements reads them so
            conflict, decision = conflicts[i], decisions[i]
            if names_conflict(text, conflict, numbers):
                named.append(i)
                continue
            statement = conflict_statement(conflict, decision, numbers, answer=text)
            if statement:
                text = drop_overridden(text, conflict, decision, numbers)
                added.append((i, statement))
        return text, named, added

    # -- context steps ----------------------------------------------------------------------

    def build_messages(
        self,
        question: str,
        passages: Sequence[SearchHit],
        *,
        notes: Sequence[str] = (),
        keep: dict[str, list[str]] | None = None,
    ):
        """The grounded prompt: each passage's context (see ``contexts``), the notes (conflicts), the question."""
        contexts = self.contexts(question, passages, keep=keep)
        sources = [
            PromptSource(title=h.title, text=contexts[i], date=h.date, authority=h.authority, status=h.status)
            for i, h in enumerate(passages)
        ]
        return build_messages(question, sources, notes=notes, faithful=self.cfg.assistant.faithful_prompt)

    def focus(self, question: str, passages: Sequence[SearchHit], keep: set[str] = frozenset()) -> list[SearchHit]:
        """The passages worth showing a small LLM: those whose best sentence is close to the best
        overall (``assistant.focus_margin``), plus those in ``keep`` (passages holding a
        conflicting claim), in rank order.

        Distractors hurt a 135M model more than a missing runner-up helps it.
        """
        if self.cfg.assistant.llm_context == "passages" or len(passages) <= 1:
            return list(passages)
        if self.cfg.assistant.llm_context == "focused":
            top = self._top_sentences(question, passages)
            return [h for h in passages if h.id in top or h.id in keep]
        scores = [max(s for s, _ in self._scored_sentences(question, h)) for h in passages]
        best = max(scores)
        return [h for h, s in zip(passages, scores) if s >= best - self.cfg.assistant.focus_margin or h.id in keep]

    def contexts(
        self, question: str, passages: Sequence[SearchHit], keep: dict[str, list[str]] | None = None
    ) -> list[str]:
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

    def answerability(self, question: str, passages: Sequence[SearchHit]) -> tuple[Verdict, str | None]:
        """The answerability check (``assistant/answerability.py``) over the engine's ranked sentences:
        the verdict and the id of the passage holding its evidence sentence (None without one)."""
        per = [self._scored_sentences(question, h) for h in passages]
        ranked = [(sc, p, i) for p, scored in enumerate(per) for i, (sc, _) in enumerate(scored)]
        texts = [[t for _, t in scored] for scored in per]
        verdict = judge(question, windows(ranked, texts, depth=self.cfg.assistant.answerability_depth, follow=2))
        holder = next((h.id for h, t in zip(passages, texts) if verdict.evidence in t), None)
        return verdict, holder

    def best_relevance(self, question: str, passages: Sequence[SearchHit]) -> float:
        """The best sentence score over the passages (the extractive answerer's relevance measure)."""
        return max(sc for h in passages for sc, _ in self._scored_sentences(question, h))

    def _top_sentences(self, question: str, passages: Sequence[SearchHit], n: int = 3) -> dict[str, list[str]]:
        """The n best sentences over all passages, grouped by passage id, in reading order."""
        scored = [(sc, h.id, i, t) for h in passages for i, (sc, t) in enumerate(self._scored_sentences(question, h))]
        best = sorted(scored, key=lambda x: -x[0])[:n]
        out: dict[str, list[str]] = {}
        for _, pid, _, t in sorted(best, key=lambda x: (x[1], x[2])):
            if t not in out.setdefault(pid, []):
                out[pid].append(t)
        return out

    def _scored_sentences(self, question: str, hit: SearchHit) -> list[tuple[float, str]]:
        key = (question, hit.id)
        if key not in self._sentence_cache:
            spans = [(s, e) for s, e in split_sentences(hit.text) if len(hit.text[s:e].split()) >= 3] or [
                (0, len(hit.text))
            ]
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


def distinct_conflicts(conflicts: Sequence, order: Sequence[int]) -> list[int]:
    """``order`` without the conflicts that repeat an earlier one: the same subject with the same
    pair of values, or the same subject between the same pair of sources (stated once)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    out = []
    for i in order:
        c = conflicts[i]
        subject = " ".join(str(c.subject).lower().split())
        values = frozenset(" ".join((x.value or x.text).lower().split()) for x in c.claims)
        sources = frozenset(x.source for x in c.claims)
        keys = {(subject + "|values", values), (subject + "|sources", sources)}
        if keys & seen:
            continue
        seen |= keys
        out.append(i)
    return out


def readable_text(text: str) -> str:
    """``text`` as valid Unicode: bytes that were not UTF-8 (carried as lone surrogates by argv and
    stdin, or sent as ``\\udcff`` in JSON) become U+FFFD, so no tokenizer sees a string it cannot encode."""
    return _SURROGATE.sub("\ufffd", text)


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


def repeated_ngram(text: str, n: int = GUARD_NGRAM) -> tuple[str, int] | None:
    """The word n-gram of ``text`` (lower-cased, punctuation ignored) that occurs most often, with
    its count, when one occurs more than once; None otherwise."""
    words = [w for w in (t.strip(".,;:!?\"'()[]") for t in text.lower().split()) if w]
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        counts[gram] = counts.get(gram, 0) + 1
    if not counts:
        return None
    gram, count = max(counts.items(), key=lambda kv: kv[1])
    return (" ".join(gram), count) if count > 1 else None


def stage_result(stage: Streaming[Event, None, Any]) -> Any:
    """Run a streaming stage to its result, dropping its events (also for ``training.adapt``, which
    builds training targets with the engine's own stages)."""
    while True:
        try:
            next(stage)
        except StopIteration as stop:
            return stop.value


def _cut(text: str, max_chars: int, max_citations: int) -> str:
    """``text`` cut at a word to at most ``max_chars`` characters (ending in " …") and with the
    citations past the first ``max_citations`` removed."""
    count = 0

    def keep(match: re.Match) -> str:
        nonlocal count
        count += len(citation_numbers(match.group(0)))
        return match.group(0) if count <= max_citations else ""

    text = _CITATION.sub(keep, text)
    if len(text) <= max_chars:
        return text
    head = text[: max_chars - 2]
    head = head[: head.rfind(" ")] if " " in head else head
    return head.rstrip() + " …"


def _clip(sentence: str, words: int) -> str:
    parts = sentence.split()
    return sentence if len(parts) <= words else " ".join(parts[:words]) + " …"


def _ms(t: float) -> float:
    return (time.perf_counter() - t) * 1e3
