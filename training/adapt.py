"""``tether train adapt``: a grounded answerer fine-tuned on the user's collection alone (no
feedback, no labels), gated, and promoted only when it beats the model served now.

Every training prompt is made the way the engine makes it at answer time: the question goes
through ``ChatEngine.retrieve`` (the same search, reranker included when one is promoted), then
``detect_conflicts`` and ``select_context`` (the same focus, sentence selection, conflict notes and
``assistant.prompts.build_messages``), so the distractor passages a row shows are the real ones
and ``[n]`` is ``Context.passages[n - 1]``. Rows, by kind:

- ``answer``: a question made from a chunk sentence (``training.reranker.synthetic_questions``:
  templates, keywords, paraphrase-ish drops; optionally back-translated by the base model,
  ``training.data.backtranslate_prompt``), kept only when the question retrieves its own chunk
  within ``round_trip_k`` and the engine shows it to the model (round-trip filtering) -> the
  sentence that states the value, cited ``[n]``;
- ``near_miss``: the same question with every passage holding the sentence removed, when the
  engine would still ask the model (the remaining passages are on topic) -> exactly
  ``assistant.prompts.REFUSAL``;
- ``conflict``: the question's chunk with its value swapped (``assistant.counterfactual``) added as
  another document -> the answer plus the engine's own conflict statement
  (``ChatEngine.resolve``: one template for training and inference);
- ``counterfactual``: a swapped context alone -> the answer follows the context
  (``training.data.sft_from_counterfactuals``).

Then preference data on-policy: the SFT model answers training questions; Tether's verifier and
the gold check judge each reply (right value, the gold passage cited, citations supported; a
near-miss must be refused) and the wrong ones become DPO pairs (the gold target chosen, the
model's reply rejected) or KTO rows. The result is gated (``training.registry.promote``) on
questions of chunks held out of training, plus the dev half of any labelled sets given.

The run folder is the resume point: every stage writes its outputs atomically and records them
in ``adapt.json``; the trainers checkpoint (``training.trainers.run``). Rerunning the same command
after a kill continues where it stopped; a changed collection or changed settings start over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from assistant.generators.base import Capabilities, GenParams, Message
from assistant.prompts import REFUSAL
from tether.config import TrainingConfig
from tether.errors import ConfigError, TetherError
from training.config import DataConfig, load_train_config

log = logging.getLogger(__name__)

PREFERENCES = ("dpo", "kto", "none")
STAGES = ("questions", "sft-data", "sft", "preference-data", "preference", "gate")
_DEFAULTS = {f: TrainingConfig.__dataclass_fields__[f] for f in ("base_model", "lora_r", "learning_rate")}


@dataclass(frozen=True)
class AdaptConfig:
    """One ``tether train adapt`` run."""

    out_dir: str = field(metadata={"help": "run folder: questions, datasets, runs/, adapt.json (reuse it to resume)"})
    base_model: str = field(
        default=_DEFAULTS["base_model"].default, metadata={"help": "'smollm2' or a local checkpoint folder"}
    )
    questions: int = field(
        default=220, metadata={"help": "questions made from the chunks (before round-trip filtering)"}
    )
    value_share: float = field(
        default=0.6,
        metadata={"help": "share of the questions that ask for a value (the rest: paraphrases of a sentence)"},
    )
    backtranslate: int = field(
        default=30,
        metadata={"help": "of those, questions the base model writes from a chunk sentence (back-translation)"},
    )
    round_trip_k: int = field(
        default=5, metadata={"help": "keep a question only when search ranks its own chunk within this many"}
    )
    near_miss: float = field(
        default=0.35,
        metadata={"help": "share of kept questions also trained as near-misses (own passage removed -> refusal)"},
    )
    conflicts: int = field(
        default=16, metadata={"help": "rows with a value-swapped copy of the passage (conflict statement)"}
    )
    counterfactuals: int = field(default=16, metadata={"help": "rows whose swapped context the answer must follow"})
    max_sentence_words: int = field(default=45, metadata={"help": "longest chunk sentence used as an answer"})
    heldout: float = field(default=0.1, metadata={"help": "share of chunks held out of training; their questions gate"})
    gate_questions: int = field(default=20, metadata={"help": "held-out questions in the gate suite"})
    epochs: float = field(default=1.0, metadata={"help": "SFT passes over the rows"})
    sft_minutes: float = field(default=12.0, metadata={"help": "SFT stops (adapter saved) after this long"})
    preference: str = field(default="dpo", metadata={"help": "dpo | kto | none: the on-policy stage after SFT"})
    preference_questions: int = field(
        default=40, metadata={"help": "training questions the SFT model answers for the on-policy stage"}
    )
    preference_minutes: float = field(
        default=4.0,
        metadata={"help": "the on-policy answers stop after this long; the preference training after as long"},
    )
    lora_r: int = field(default=_DEFAULTS["lora_r"].default, metadata={"help": "LoRA rank"})
    learning_rate: float = field(default=_DEFAULTS["learning_rate"].default, metadata={"help": "SFT learning rate"})
    batch_size: int = field(default=4, metadata={"help": "sequences per step"})
    max_length: int = field(
        default=768, metadata={"help": "longest row in tokens (prompt + answer); longer are dropped"}
    )
    save_steps: int = field(default=10, metadata={"help": "checkpoint every this many steps"})
    seed: int = field(default=0, metadata={"help": "question sampling, split and training seed"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})

    def problems(self) -> list[str]:
        out = []
        for name in (
            "questions",
            "round_trip_k",
            "max_sentence_words",
            "batch_size",
            "max_length",
            "save_steps",
            "lora_r",
        ):
            if getattr(self, name) < 1:
                out.append(f"--{name.replace('_', '-')} ({getattr(self, name)}) must be >= 1")
        for name in ("backtranslate", "conflicts", "counterfactuals", "gate_questions", "preference_questions"):
            if getattr(self, name) < 0:
                out.append(f"--{name.replace('_', '-')} ({getattr(self, name)}) must be >= 0")
        if self.backtranslate > self.questions:
            out.append(f"--backtranslate ({self.backtranslate}) must not exceed --questions ({self.questions})")
        if not 0 <= self.value_share <= 1:
            out.append(f"--value-share ({self.value_share}) must be in [0, 1]")
        if not 0 <= self.near_miss <= 1:
            out.append(f"--near-miss ({self.near_miss}) must be in [0, 1]")
        if not 0 <= self.heldout < 0.5:
            out.append(f"--heldout ({self.heldout}) must be in [0, 0.5)")
        if not 0 < self.epochs <= 20:
            out.append(f"--epochs ({self.epochs}) must be in (0, 20]")
        for name in ("sft_minutes", "preference_minutes"):
            if not 0 < getattr(self, name) < 10_000:
                out.append(f"--{name.replace('_', '-')} ({getattr(self, name)}) must be in (0, 10000)")
        if self.preference not in PREFERENCES:
            out.append(f"--preference ({self.preference!r}) must be one of {', '.join(PREFERENCES)}")
        if not 0 < self.learning_rate < 1:
            out.append(f"--learning-rate ({self.learning_rate}) must be in (0, 1)")
        if self.device not in ("auto", "cpu", "cuda"):
            out.append(f"--device ({self.device!r}) must be auto, cpu or cuda")
        return out

    def validated(self) -> AdaptConfig:
        if self.problems():
            raise ConfigError(self.problems())
        return self

    def data_fields(self) -> dict[str, Any]:
        """The settings that decide the training rows (a resumed run with other ones starts over)."""
        keys = (
            "base_model", "questions", "value_share", "backtranslate", "round_trip_k", "near_miss", "conflicts",
            "counterfactuals", "max_sentence_words", "heldout", "gate_questions", "seed",
        )  # fmt: skip
        return {k: getattr(self, k) for k in keys}


class PromptBuilder:
    """The generator seam's prompt-only member: it declares what an LLM declares (the engine builds
    it the grounded prompt) and answers nothing. ``ChatEngine`` with it runs retrieval, conflict
    detection and context selection exactly as for the served LLM, without loading one."""

    identity = "adapt-prompts"
    capabilities = Capabilities(cad=False, token_streaming=False, needs_llm_prompt=True)

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[str]:
        raise TetherError("the adapt prompt builder makes prompts only; it never answers")


@dataclass(frozen=True)
class Example:
    """One training prompt with its gold reply, as the engine built it."""

    kind: str  # answer | near_miss | conflict | counterfactual
    question: str
    chunk_id: str
    sentence: str
    value: str | None  # the answer span, when the question asks for one
    messages: tuple[dict[str, str], ...]
    hits: tuple[dict[str, Any], ...]  # Context.passages as SearchHit.to_json()
    target: str
    gold_n: int | None  # the passage number that holds the answer


# -- the run folder -----------------------------------------------------------------------------


class RunState:
    """``adapt.json``: the settings and data the run was made from, and each finished stage's outputs."""

    def __init__(self, out: Path, wanted: dict[str, Any]):
        self.path = out / "adapt.json"
        self.wanted = wanted
        old = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        if old and old.get("wanted") != wanted:
            log.warning("the collection or the adapt settings changed since %s was written: starting over", out)
            old = {}
        self.stages: dict[str, Any] = old.get("stages", {})
        self.save()

    def done(self, stage: str) -> Any:
        return self.stages.get(stage)

    def finish(self, stage: str, result: Any) -> Any:
        self.stages[stage] = result
        self.save()
        return result

    def save(self) -> None:
        tmp = self.path.with_name("adapt.json.tmp")
        tmp.write_text(json.dumps({"wanted": self.wanted, "stages": self.stages}, indent=1, default=str), "utf-8")
        os.replace(tmp, self.path)


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


# -- stage 1: questions -------------------------------------------------------------------------


_REFERENCE = re.compile(r"\b(?:Section|Chapter|Table|Figure|Example|Appendix)\s+\S*$")


def value_questions(chunks: Sequence[Any], n: int, seed: int, max_words: int) -> list[dict[str, Any]]:
    """Up to ``n`` questions whose answer is a value of one chunk sentence (a quantity, a name or an
    identifier replaced by a wh-phrase: ``assistant.evaluation.make_qa.template_question``, the
    chunk's topic as its "according to"), at most two per chunk, seeded. Each: text, chunk_id,
    sentence, value, how."""
    from assistant.evaluation.make_qa import template_question
    from tether.text.sentences import split_sentences_text

    rng = random.Random(seed)
    order = list(chunks)
    rng.shuffle(order)
    per = 1 if n <= len(order) else 2
    out: list[dict[str, Any]] = []
    for c in order:
        sentences = [x for x in split_sentences_text(c.text, min_words=6) if len(x.split()) <= max_words]
        rng.shuffle(sentences)
        topic = _topic(c)
        taken = 0
        for sentence in sentences:
            made = template_question(sentence, title=topic)
            if made is None or _REFERENCE.search(sentence[: sentence.find(made[1]) + 1]) or made[1].lower() == "one":
                continue  # "see Section 24.1" asks nothing; "one" is mostly a pronoun
            out.append({"text": made[0], "chunk_id": c.id, "sentence": sentence, "value": made[1], "how": "template"})
            taken += 1
            if taken >= per:
                break
        if len(out) >= n:
            break
    return out[:n]


def _topic(chunk: Any) -> str | None:
    """What a question says its chunk is about: the last heading of its path that names something
    (section numbers and page-navigation parts dropped), else the reranker's ``chunk_topic``."""
    from training.reranker import chunk_topic

    for part in reversed((chunk.heading or "").split(" > ")):
        part = re.sub(r"^[\d.]+\s+", "", part.split("|")[-1].strip()).strip()
        if 1 <= len(part.split()) <= 8 and part.lower() not in ("note", "tip", "warning", "caution", "example"):
            return part
    topic = re.sub(r"^[\d.]+\s+", "", chunk_topic(chunk).split("|")[-1].strip()).strip()
    return topic or None


def make_questions(acfg: AdaptConfig, chunks: Sequence[Any], generator: Any | None) -> list[dict[str, Any]]:
    """The training questions over ``chunks``: value questions (``value_questions``), topped up with
    the reranker's paraphrase-ish ones (``training.reranker.synthetic_questions``, no value) when the
    chunks hold too few values, and, with a generator, ``backtranslate`` of them written by the model
    from the sentence instead (back-translation; kept when a line of its reply is a question of 3-30
    words). Each: text, chunk_id, sentence, value (or None), how."""
    from training.data import backtranslate_prompt
    from training.reranker import make_questions as paraphrase_questions

    made = value_questions(chunks, int(acfg.questions * acfg.value_share), acfg.seed, acfg.max_sentence_words)
    if len(made) < acfg.questions:
        seen = {q["sentence"] for q in made}
        for q in paraphrase_questions(chunks, 2 * (acfg.questions - len(made)), acfg.seed):
            if q.how != "keywords" and q.sentence not in seen and len(q.sentence.split()) <= acfg.max_sentence_words:
                made.append(
                    {"text": q.text, "chunk_id": q.chunk_id, "sentence": q.sentence, "value": None, "how": q.how}
                )
                seen.add(q.sentence)
    made = made[: acfg.questions]
    if generator is None or not acfg.backtranslate:
        return made
    from assistant.generators.base import generate
    from tether.text.terms import lexical_overlap

    by_id = {c.id: c for c in chunks}
    params = GenParams(max_new_tokens=40, temperature=0.0)
    picked = random.Random(acfg.seed + 3).sample(range(len(made)), min(len(made), 2 * acfg.backtranslate))
    kept = dropped = 0
    for i in picked:
        if kept >= acfg.backtranslate:
            break
        q = made[i]
        raw = generate(generator, backtranslate_prompt(by_id[q["chunk_id"]].text, q["sentence"]), params).strip()
        asked = [x.strip() for x in raw.splitlines() if x.strip().endswith("?")]  # it may echo the request first
        line = re.sub(r"^(question\s*:\s*)", "", asked[0] if asked else "", flags=re.I)
        about = float(
            lexical_overlap(line, [q["sentence"]])[0]
        )  # a question about another sentence teaches a wrong reply
        if not 3 <= len(line.split()) <= 30 or _norm(line.rstrip("?")) in _norm(q["sentence"]) or about < 0.3:
            log.debug("back-translation dropped: %r", raw[:120])
            dropped += 1
            continue
        made[i] = {**q, "text": line, "how": "backtranslated"}
        kept += 1
    log.info("back-translation: %d questions written by the model, %d replies dropped", kept, dropped)
    return made


# -- stage 2: SFT rows through the engine -------------------------------------------------------


def _cite(sentence: str, n: int) -> str:
    s = " ".join(sentence.split()).rstrip()
    return f"{s[:-1]} [{n}]{s[-1]}" if s and s[-1] in ".!?" else f"{s} [{n}]."


def _holds(hit: Any, sentence: str) -> bool:
    return _norm(sentence) in _norm(hit.text)


def _msgs(messages: Sequence[Message]) -> tuple[dict[str, str], ...]:
    return tuple({"role": m.role, "content": m.content} for m in messages)


def engine_examples(engine: Any, q: dict[str, Any], acfg: AdaptConfig, want_near_miss: bool) -> list[Example]:
    """The answer row and, when asked, the near-miss row of one question, built as the engine builds
    its prompts; [] when the question fails the round trip (its chunk not retrieved, or not shown)."""
    from assistant.types import Conversation

    retrieved = engine.retrieve(q["text"], Conversation())
    top = [h.id for h in retrieved.passages[: acfg.round_trip_k]]
    if q["chunk_id"] not in top:
        return []
    found = engine.detect_conflicts(q["text"], retrieved.passages)
    ctx = engine.select_context(q["text"], retrieved.passages, found)
    if ctx.refuse or not ctx.messages:
        return []
    n = next((i for i, h in enumerate(ctx.passages, start=1) if _holds(h, q["sentence"])), None)
    if n is None:
        return []
    from assistant.engine import Draft, stage_result

    resolved = stage_result(engine.resolve(Draft(_cite(q["sentence"], n), refused=False), ctx, found))
    out = [
        Example(
            "conflict" if resolved.statements else "answer",
            q["text"],
            q["chunk_id"],
            q["sentence"],
            q["value"],
            _msgs(ctx.messages),
            tuple(h.to_json() for h in ctx.passages),
            resolved.text,
            n,
        )  # fmt: skip
    ]
    if want_near_miss:
        rest = [h for h in retrieved.passages if not _holds(h, q["sentence"]) and h.id != q["chunk_id"]]
        value = q["value"]
        if rest and not (value and any(_norm(value) in _norm(h.text) for h in rest)):
            found2 = engine.detect_conflicts(q["text"], rest)
            ctx2 = engine.select_context(q["text"], rest, found2)
            if not ctx2.refuse and ctx2.messages:
                out.append(
                    Example(
                        "near_miss",
                        q["text"],
                        q["chunk_id"],
                        q["sentence"],
                        value,
                        _msgs(ctx2.messages),
                        tuple(h.to_json() for h in ctx2.passages),
                        REFUSAL,
                        None,
                    )  # fmt: skip
                )
    return out


def conflict_examples(engine: Any, cases: Sequence[dict[str, Any]], acfg: AdaptConfig) -> list[Example]:
    """For each counterfactual case (a chunk with one value swapped), the question retrieved as at
    answer time with the swapped copy added as another document; kept when the detector finds the
    conflict. The reply is the engine's: the original sentence cited, then ``resolve`` (the policy's
    decision and the conflict statement)."""
    from assistant.engine import Draft, stage_result
    from assistant.types import Conversation
    from retrieval.search import SearchHit

    out = []
    for case in cases:
        retrieved = engine.retrieve(case["question"], Conversation())
        own = next((h for h in retrieved.passages if h.id == case.get("passage_id")), None)
        if own is None:
            continue
        copy = replace(
            own,
            id=f"{own.id}-variant",
            text=case["context"],
            source=f"{own.source} (variant)",
            title=f"{own.title} (variant)",
            document_id=-1 - own.document_id,
            rank=len(retrieved.passages) + 1,
        )
        passages: list[SearchHit] = [*retrieved.passages[: max(1, engine.cfg.assistant.top_k - 1)], copy]
        found = engine.detect_conflicts(case["question"], passages)
        if not found.chosen():
            continue
        ctx = engine.select_context(case["question"], passages, found)
        if ctx.refuse or not ctx.messages:
            continue
        sentence = next((s for s in _sentences(own.text) if case["swap"]["from"] in s), None)
        n = next((i for i, h in enumerate(ctx.passages, start=1) if h.id == own.id), None)
        if sentence is None or n is None:
            continue
        resolved = stage_result(engine.resolve(Draft(_cite(sentence, n), refused=False), ctx, found))
        if not resolved.statements:
            continue
        out.append(
            Example(
                "conflict",
                case["question"],
                own.id,
                sentence,
                case.get("original_answer"),
                _msgs(ctx.messages),
                tuple(h.to_json() for h in ctx.passages),
                resolved.text,
                n,
            )  # fmt: skip
        )
        if len(out) >= acfg.conflicts:
            break
    return out


def _sentences(text: str) -> list[str]:
    from tether.text.sentences import split_sentences_text

    return split_sentences_text(text, min_words=3)


def sft_rows(examples: Sequence[Example]) -> list[Any]:
    """``training.data.Row``s (SFT ``messages``) of the examples; rows of one question stay in one split."""
    from training.data import Row

    rows = []
    for ex in examples:
        msgs = [*ex.messages, {"role": "assistant", "content": ex.target}]
        rows.append(Row("sft", ex.kind, {"messages": msgs}, f"{ex.question}\n{ex.kind}\n{ex.target}", ex.chunk_id))
    return rows


# -- stage 4: on-policy judgements --------------------------------------------------------------


def judge(engine: Any, ex: Example, raw: str) -> tuple[bool, str]:
    """(right, the reply as the engine would show it): a near-miss must be refused; an answer must
    not be refused, must state the value (or, without one, most of the sentence's words), cite the
    gold passage and have supported citations (``ChatEngine.check_citations``)."""
    from assistant.engine import Context
    from retrieval.search import SearchHit
    from tether.text.terms import lexical_overlap

    hits = tuple(SearchHit(**{**h, "span": tuple(h["span"])}) for h in ex.hits)
    draft = engine.finish(raw, Context(ex.question, hits, ()))
    if ex.kind == "near_miss":
        return draft.refused, draft.text
    if draft.refused:
        return False, draft.text
    from assistant.citations import citation_numbers
    from assistant.evaluation.metrics import contains_answer

    if ex.value:
        value_ok = contains_answer(draft.text, [ex.value]) > 0
    else:
        value_ok = float(lexical_overlap(ex.sentence, [draft.text])[0]) >= 0.5
    cited = ex.gold_n in citation_numbers(draft.text)
    check = engine.check_citations(draft.text, hits)
    grounded = (check.groundedness or 0.0) >= 0.5
    return value_ok and cited and grounded, draft.text


def preference_rows(
    engine: Any, generator: Any, examples: Sequence[Example], acfg: AdaptConfig, deadline: float
) -> tuple[list[Any], dict[str, int]]:
    """The SFT model's own replies to ``examples``, judged: DPO pairs (gold chosen, wrong reply
    rejected) or KTO rows (each reply labelled; the gold target of a wrong one labelled true)."""
    from assistant.generators.base import generate
    from training.data import Row

    params = GenParams(max_new_tokens=engine.cfg.assistant.max_new_tokens, temperature=0.0)
    rows, counts = [], {"answered": 0, "right": 0, "wrong": 0}
    for ex in examples:
        if time.monotonic() > deadline:
            log.info("on-policy answers: --preference-minutes reached after %d replies", counts["answered"])
            break
        raw = generate(generator, [Message(m["role"], m["content"]) for m in ex.messages], params)
        right, shown = judge(engine, ex, raw)
        counts["answered"] += 1
        counts["right" if right else "wrong"] += 1
        prompt = list(ex.messages)
        chosen = [{"role": "assistant", "content": ex.target}]
        reply = [{"role": "assistant", "content": shown}]
        text = f"{ex.question}\n{ex.kind}"
        if acfg.preference == "dpo":
            if not right and _norm(shown) != _norm(ex.target):
                rows.append(
                    Row("dpo", ex.kind, {"prompt": prompt, "chosen": chosen, "rejected": reply}, text, ex.chunk_id)
                )
        else:
            rows.append(
                Row("kto", ex.kind, {"prompt": prompt, "completion": reply, "label": right}, text + shown, ex.chunk_id)
            )
            if not right:
                rows.append(
                    Row("kto", ex.kind, {"prompt": prompt, "completion": chosen, "label": True}, text, ex.chunk_id)
                )
        if counts["answered"] % 10 == 0:
            log.info("on-policy answers: %d judged, %d right", counts["answered"], counts["right"])
    return rows, counts


# -- the gate suite -----------------------------------------------------------------------------


def gate_suite(
    heldout: Sequence[dict[str, Any]], gate_qa: Sequence[Path], path: Path, split: str = "dev"
) -> tuple[Path, dict[str, int]]:
    """The gate's cases: questions of held-out chunks (gold chunk, value when there is one) and the
    ``split`` rows of labelled QA sets; written to ``path``."""
    rows = []
    for i, q in enumerate(heldout):
        row = {"id": f"heldout-{i}", "question": q["text"], "passage_ids": [q["chunk_id"]], "evidence": q["sentence"]}
        row["answers"] = [q["value"]] if q["value"] else [q["sentence"]]
        rows.append(row)
    labelled = 0
    for p in gate_qa:
        for r in _read_jsonl(Path(p)):
            if r.get("split", split) == split:
                rows.append({k: v for k, v in r.items() if k != "split"})
                labelled += 1
    _write_jsonl(path, rows)
    return path, {"heldout": len(heldout), "labelled": labelled}


# -- the run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptResult:
    out_dir: Path
    model_id: str | None  # the gated model (the preference stage's, else SFT's)
    promoted: bool
    report: dict[str, Any]


def _chunks_hash(chunks: Sequence[Any]) -> str:
    h = hashlib.sha256()
    for c in sorted(chunks, key=lambda c: c.id):
        h.update(f"{c.id}\0{c.index_text}\0".encode())
    return h.hexdigest()[:16]


def _stage_config(cfg: Any, acfg: AdaptConfig, method: str, dataset: Path, out: Path, **kw: Any):
    return load_train_config(
        None,
        method,
        defaults=cfg.training,
        base_model=acfg.base_model,
        dataset=str(dataset),
        output_dir=str(out),
        lora_r=acfg.lora_r,
        lora_alpha=2 * acfg.lora_r,
        batch_size=acfg.batch_size,
        grad_accum=1,
        max_length=acfg.max_length,
        save_steps=acfg.save_steps,
        seed=acfg.seed,
        device=acfg.device,
        resume=True,
        **kw,
    )


def _finished_run(folder: Path) -> dict[str, Any] | None:
    """A trainer run that completed (adapter and run.yaml written), else None."""
    import yaml

    if (folder / "run.yaml").is_file() and (folder / "adapter" / "adapter_config.json").is_file():
        return yaml.safe_load((folder / "run.yaml").read_text(encoding="utf-8"))
    return None


def _train(cfg: Any, tc: Any, state: RunState, stage: str, job: Any) -> dict[str, Any]:
    """One trainer stage, or what it left when it already finished (its model row is recorded)."""
    from training.trainers import run

    if state.done(stage) and _finished_run(Path(tc.output_dir)):
        log.info("%s: already trained in %s", stage, tc.output_dir)
        return state.done(stage)
    res = run(tc, cfg)
    info = _finished_run(res.output_dir) or {}
    return state.finish(
        stage,
        {
            "adapter": str(res.adapter_dir),
            "model_id": res.model_id,
            "steps": res.steps,
            "final_loss": res.final_loss,
            "train_seconds": info.get("train_seconds"),
            "stopped_at_max_minutes": res.stopped_at_max_minutes,
            "resumed_from": res.resumed_from,
        },
    )


def _tokens(rows_path: Path, tokenizer: Any) -> list[int]:
    from training.data import Row, read_rows, row_length

    return [row_length(Row("", "", r, "", ""), tokenizer) for r in read_rows(rows_path)]


def run(
    cfg: Any,
    acfg: AdaptConfig,
    *,
    gate_qa: Sequence[Path] = (),
    held_out: Sequence[tuple[Path, Path]] = (),
    promote: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> AdaptResult:
    """Every stage, resumable: questions -> SFT rows -> SFT -> on-policy preference rows -> DPO/KTO ->
    gate (-> promote). ``progress(stage, i, n)`` is called as each stage starts. ``held_out``: (data
    dir, labelled QA set) pairs of other corpora whose dev rows gate the model too
    (``training.registry.promote``).

    Raises:
        ConfigError / TetherError: bad settings, an empty collection, no row survived the filters.
        KeyboardInterrupt: stopped; rerunning the same command resumes.
    """
    from tether.provenance import git_commit
    from training.cross_encoder import TrackedJob, collection_chunks
    from training.data import write_dataset

    acfg.validated()
    t0 = time.monotonic()
    out = Path(acfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chunks = collection_chunks(cfg, "the adapter")
    wanted = {"collection": cfg.retrieval.collection, "chunks": _chunks_hash(chunks), **acfg.data_fields()}
    state = RunState(out, wanted)
    job = TrackedJob(cfg.db_path, "adapt", {"adapt": asdict(acfg), "collection": cfg.retrieval.collection}, out)
    report: dict[str, Any] = {"collection": cfg.retrieval.collection, "chunks": len(chunks)}

    def stage(name: str) -> None:
        i = STAGES.index(name)
        log.info("adapt stage %d/%d: %s (%.1f min so far)", i + 1, len(STAGES), name, (time.monotonic() - t0) / 60)
        job.on_step(i, len(STAGES), None)
        if progress is not None:
            progress(name, i, len(STAGES))

    try:
        from retrieval.search import Searcher
        from training.reranker import split_heldout

        searcher = Searcher(cfg)
        from assistant.engine import ChatEngine

        engine = ChatEngine(cfg, searcher=searcher, generator=PromptBuilder(), log_turns=False)

        # 1. questions
        stage("questions")
        qpath, hpath = out / "questions.jsonl", out / "heldout.jsonl"
        if not (state.done("questions") and qpath.is_file() and hpath.is_file()):
            train_chunks, held_chunks = split_heldout(chunks, acfg.heldout, acfg.seed)
            gen = _hf(cfg, acfg.base_model, None) if acfg.backtranslate else None
            questions = make_questions(acfg, train_chunks, gen)
            del gen  # the base model is not needed again: free it before training
            held = value_questions(held_chunks, acfg.gate_questions, acfg.seed + 7, acfg.max_sentence_words)
            if not questions:
                raise TetherError(
                    f"no question could be made from the {len(chunks)} chunks of {cfg.retrieval.collection!r} "
                    "(they need sentences of 6 words or more): ingest prose documents first"
                )
            _write_jsonl(qpath, questions)
            _write_jsonl(hpath, held)
            state.finish("questions", {"questions": len(questions), "heldout": len(held)})
        questions, held = _read_jsonl(qpath), _read_jsonl(hpath)
        report["questions"] = state.done("questions")

        # 2. SFT rows
        stage("sft-data")
        sft_dir, ex_path = out / "data" / "sft", out / "data" / "examples.jsonl"
        ex_path.parent.mkdir(parents=True, exist_ok=True)
        if not (state.done("sft-data") and ex_path.is_file() and (sft_dir / "train.jsonl").is_file()):
            t = time.monotonic()
            rng = random.Random(acfg.seed)
            examples: list[Example] = []
            failed = 0
            for q in questions:
                got = engine_examples(engine, q, acfg, want_near_miss=rng.random() < acfg.near_miss)
                failed += not got
                examples.extend(got)
            kept_answers = sum(e.kind in ("answer", "conflict") for e in examples)
            if not kept_answers:
                raise TetherError(
                    f"none of the {len(questions)} questions retrieved its own chunk within --round-trip-k "
                    f"{acfg.round_trip_k}: raise it, or check the collection with `tether search`"
                )
            cases = _counterfactual_cases(cfg, acfg)
            examples += conflict_examples(engine, cases, acfg)
            cf_rows = _counterfactual_rows(cfg, cases, acfg)
            _write_jsonl(ex_path, [asdict(e) for e in examples])
            dcfg = DataConfig(
                out_dir=str(out / "data"), kinds="sft", eval_fraction=0.05, max_tokens=acfg.max_length, seed=acfg.seed
            )
            manifest = write_dataset(
                sft_rows(examples) + cf_rows, sft_dir, "sft", dcfg, tokenizer=_tokenizer(cfg, acfg)
            )
            kinds: dict[str, int] = {}
            for e in examples:
                kinds[e.kind] = kinds.get(e.kind, 0) + 1
            kinds["counterfactual"] = len(cf_rows)
            state.finish(
                "sft-data",
                {
                    "round_trip_failed": failed,
                    "by_kind": kinds,
                    "train": manifest.n_train,
                    "eval": manifest.n_eval,
                    "dataset": manifest.id,
                    "counts": manifest.counts,
                    "seconds": round(time.monotonic() - t, 1),
                },
            )
        report["sft_data"] = state.done("sft-data")
        examples = [_example(d) for d in _read_jsonl(ex_path)]

        # 3. SFT
        stage("sft")
        n_train = report["sft_data"]["train"]
        steps = max(1, int(round(n_train * acfg.epochs / acfg.batch_size)))
        tc = _stage_config(
            cfg, acfg, "sft", sft_dir, out / "runs" / "sft",
            max_steps=steps, max_minutes=acfg.sft_minutes, learning_rate=acfg.learning_rate,
            warmup_steps=min(10, steps // 10),
        )  # fmt: skip
        sft = _train(cfg, tc, state, "sft", job)
        tokens = _tokens(sft_dir / "train.jsonl", _tokenizer(cfg, acfg))
        mean_tokens = sum(tokens) / max(1, len(tokens))
        trained_tokens = sft["steps"] * acfg.batch_size * mean_tokens
        sft["tokens_per_second"] = round(trained_tokens / sft["train_seconds"], 1) if sft.get("train_seconds") else None
        sft["mean_row_tokens"] = round(mean_tokens, 1)
        report["sft"] = sft
        final = sft

        # 4-5. on-policy preference
        if acfg.preference != "none" and acfg.preference_questions:
            stage("preference-data")
            pdir = out / "data" / acfg.preference
            if not (state.done("preference-data") and (pdir / "train.jsonl").is_file()):
                t = time.monotonic()
                pool = [e for e in examples if e.kind in ("answer", "near_miss")]
                random.Random(acfg.seed + 1).shuffle(pool)
                gen = _hf(cfg, acfg.base_model, Path(sft["adapter"]))
                rows, counts = preference_rows(
                    engine,
                    gen,
                    pool[: acfg.preference_questions],
                    acfg,
                    time.monotonic() + 60 * acfg.preference_minutes,
                )
                del gen
                dcfg = DataConfig(
                    out_dir=str(out / "data"),
                    kinds=acfg.preference,
                    eval_fraction=0.0,
                    max_tokens=acfg.max_length,
                    seed=acfg.seed,
                )
                manifest = write_dataset(rows, pdir, acfg.preference, dcfg, tokenizer=_tokenizer(cfg, acfg))
                state.finish(
                    "preference-data",
                    {
                        **counts,
                        "rows": manifest.n_train,
                        "dataset": manifest.id,
                        "seconds": round(time.monotonic() - t, 1),
                    },
                )
            report["preference_data"] = state.done("preference-data")
            if report["preference_data"]["rows"] >= 2:
                stage("preference")
                n = report["preference_data"]["rows"]
                tc = _stage_config(
                    cfg, acfg, acfg.preference, pdir, out / "runs" / acfg.preference,
                    max_steps=max(1, int(round(n / acfg.batch_size))), max_minutes=acfg.preference_minutes,
                    learning_rate=acfg.learning_rate / 4, init_adapter=sft["adapter"],
                )  # fmt: skip
                final = report["preference"] = _train(cfg, tc, state, "preference", job)
            else:
                log.info(
                    "on-policy stage: %d rows, too few to train on; the SFT adapter is gated",
                    report["preference_data"]["rows"],
                )

        # 6. gate
        stage("gate")
        model_id = final["model_id"]
        promoted = False
        if state.done("gate") and state.done("gate").get("model_id") == model_id:
            report["gate"] = state.done("gate")
            promoted = bool(report["gate"].get("promoted"))
        elif promote and model_id:
            from training.registry import PromotionRefused
            from training.registry import promote as promote_model

            suite, sizes = gate_suite(held, gate_qa, out / "gate.jsonl")
            others = []
            for n, (data_dir, qa) in enumerate(held_out):
                other, other_sizes = gate_suite((), [qa], out / f"gate-held-out-{n}.jsonl")
                others.append((Path(data_dir), other))
                sizes[f"held_out_{n}"] = other_sizes["labelled"]
            try:
                res = promote_model(cfg, model_id, suite, held_out=others)
                promoted = True
                report["gate"] = state.finish("gate", {"model_id": model_id, "promoted": True, "suite": sizes, **res})
            except PromotionRefused as exc:
                gate_json = exc.gate.to_json() if hasattr(exc.gate, "to_json") else None
                report["gate"] = state.finish(
                    "gate",
                    {"model_id": model_id, "promoted": False, "suite": sizes, "reason": str(exc), "gate": gate_json},
                )
                log.warning("%s", exc)
        report["minutes"] = round((time.monotonic() - t0) / 60, 2)
        report["git_commit"] = git_commit(dirty=False)
        import yaml

        (out / "run.yaml").write_text(
            yaml.safe_dump({"adapt": asdict(acfg), "report": report}, sort_keys=False, allow_unicode=True), "utf-8"
        )
        job.on_step(len(STAGES), len(STAGES), None)
        job.done({"model_id": model_id, "promoted": promoted, "minutes": report["minutes"]})
        searcher.close()
        return AdaptResult(out, model_id, promoted, report)
    except BaseException as exc:
        job.failed(exc)
        raise


def _example(d: dict[str, Any]) -> Example:
    return Example(**{**d, "messages": tuple(d["messages"]), "hits": tuple(d["hits"])})


def _counterfactual_cases(cfg: Any, acfg: AdaptConfig) -> list[dict[str, Any]]:
    if not (acfg.conflicts or acfg.counterfactuals):
        return []
    from assistant.counterfactual import from_corpus

    return from_corpus(cfg, n=2 * (acfg.conflicts + acfg.counterfactuals), seed=acfg.seed)


def _counterfactual_rows(cfg: Any, cases: Sequence[dict[str, Any]], acfg: AdaptConfig) -> list[Any]:
    from training.data import sft_from_counterfactuals

    rows = sft_from_counterfactuals(cases[-acfg.counterfactuals :] if acfg.counterfactuals else [])
    return rows


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(cfg: Any, acfg: AdaptConfig) -> Any:
    from assistant.models import resolve_model
    from training.trainers import load_tokenizer

    key = acfg.base_model
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(resolve_model(acfg.base_model, cfg.models_dir))
    return _TOKENIZERS[key]


def _hf(cfg: Any, base_model: str, adapter: Path | None) -> Any:
    """The hf generator for the base model (with ``adapter``), plain greedy decoding."""
    from assistant.generators.hf import HFGenerator
    from assistant.models import resolve_model

    return HFGenerator.from_config(resolve_model(base_model, cfg.models_dir), adapter, cfg.hf)
