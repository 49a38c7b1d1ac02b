"""``tether eval make-qa``: build a QA set from an ingested collection.

For each sampled passage, one question whose answer is a span of that passage, with the passage
(its id and source) as gold. With an LLM generator the model writes the question and picks the
span (kept only when the span really is in the passage); otherwise, or when the model's output
does not check out, a template turns a sentence holding an amount, a date, a duration or a name
into a question about it.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from assistant.generators.base import Message, capabilities_of
from tether.config import TetherConfig
from tether.errors import ConfigError, IndexEmpty
from tether.text.quantities import Quantity, extract_quantities, find_numbers
from tether.text.sentences import split_sentences

log = logging.getLogger(__name__)

# A name after a few lowercase words ("... approved by the Finance Director"): the one pattern that is not a quantity.
_NAME = re.compile(r"(?<=[a-z,] )(?:the )?(?:[A-Z][a-z]+(?: (?:of |de |van )?[A-Z][a-z]+)+)")


def _wh(q: Quantity) -> str | None:
    """The wh-phrase that asks for quantity ``q`` (from the one quantity parser, tether.text.quantities)."""
    if q.kind == "amount":
        return "what amount"
    if q.kind == "date":
        return {"date": "what date", "day-of-year": "what date", "time": "what time", "year": "what year"}.get(q.unit)
    if q.kind in ("duration", "percent"):
        return "how long or how many"
    return None


_PRIORITY = ("what amount", "what date", "how long or how many", "what time", "who or what", "what year", "how many")


def _answer_spans(s: str) -> dict[str, tuple[int, int]]:
    """The first span in sentence ``s`` for each wh-phrase the template maker asks with."""
    spans: dict[str, tuple[int, int]] = {}
    for q in extract_quantities(s):
        wh = _wh(q)
        if wh and wh not in spans:
            spans[wh] = q.span
    m = _NAME.search(s)
    if m and len(s[: m.start()].split()) >= 3:
        spans["who or what"] = m.span()
    taken = list(spans.values())
    for n in find_numbers(s):
        if not any(a <= n.span[0] < b for a, b in taken):
            spans.setdefault("how many", n.span)
            break
    return spans


@dataclass(frozen=True)
class GeneratedQA:
    id: str
    question: str
    answers: tuple[str, ...]
    source: str
    passage_id: str
    evidence: str  # the sentence holding the answer, a span of the passage
    maker: str  # template | llm

    def to_json(self) -> dict:
        out = asdict(self)
        out["answers"] = list(self.answers)
        return out


def template_question(sentence: str, title: str | None = None) -> tuple[str, str] | None:
    """(question, answer span) from one sentence, or None when it states no quantity or name to ask about.

    The answer span is replaced by a wh-phrase: "Claims are paid within 90 days." ->
    ("According to <title>, claims are paid within how long or how many?", "90 days").
    """
    lines = [ln.strip() for ln in sentence.strip().splitlines() if ln.strip()]
    s = " ".join(lines[-1].split()) if lines else ""  # a heading above the sentence is not part of it
    s = re.sub(r"^(?:[QA]:|[-*•]|\d+\.)\s+", "", s)
    if len(s.split()) < 6 or len(s) > 300 or not s.endswith((".", "!")) or re.search(r"[#|]|:\s", s):
        return None
    spans = _answer_spans(s)
    for wh in _PRIORITY:
        if wh not in spans:
            continue
        start, end = spans[wh]
        answer = s[start:end].strip()
        body = (s[:start] + wh + s[end:]).rstrip(" .;:!")
        if title and len(body) > 1 and (body[1].islower() or body[1] == " "):  # "According to T, the ..."
            body = body[0].lower() + body[1:]
        prefix = f"According to {title}, " if title else ""
        return f"{prefix}{body}?", answer
    return None


def _squash(text: str) -> str:
    return " ".join(text.split())


def qa_prompt(passage: str, title: str) -> list[Message]:
    """The messages asking an LLM for one question answered by a short span of the passage."""
    return [
        Message(
            "system",
            "You write exam questions. Reply with exactly two lines:\nQuestion: <a question answered by the passage>\n"
            "Answer: <a short span copied word for word from the passage>",
        ),
        Message("user", f'Passage from "{title}":\n{passage}'),
    ]


def parse_llm_qa(reply: str, passage: str) -> tuple[str, str] | None:
    """(question, answer) from the model's reply, when the answer is a span of the passage."""
    q = re.search(r"(?im)^\s*question\s*:\s*(.+)$", reply)
    a = re.search(r"(?im)^\s*answer\s*:\s*(.+)$", reply)
    if not q or not a:
        return None
    question, answer = q.group(1).strip(), a.group(1).strip().strip('"').rstrip(".")
    if not question.endswith("?") or not answer or len(answer.split()) > 12:
        return None
    if _squash(answer).lower() not in _squash(passage).lower():
        return None
    return question, answer


def _sample_chunks(cfg: TetherConfig, n: int, seed: int):
    from retrieval.ledger import Ledger

    with Ledger.open(cfg.db_path) as ledger:
        rows = sorted(ledger.chunk_rows(cfg.retrieval.collection), key=lambda r: r["id"])  # by id: the seed's sample
    if not rows:
        raise IndexEmpty(f"collection '{cfg.retrieval.collection}' holds no documents: run `tether ingest PATH` first")
    random.Random(seed).shuffle(rows)
    return rows


def make_qa(
    cfg: TetherConfig, n: int = 20, *, seed: int = 0, maker: str = "auto", generator=None, model_source=None
) -> list[GeneratedQA]:
    """Up to ``n`` QA cases from distinct sampled passages of the configured collection.

    ``maker``: ``template``, ``llm`` (the configured generator must be an LLM) or ``auto`` (the
    LLM when the configured generator is one, else templates). Passages where the LLM's output
    does not check out fall back to the template maker.
    """
    if maker not in ("auto", "template", "llm"):
        raise ConfigError(f"--maker {maker!r} must be auto, template or llm")
    if n < 1:
        raise ConfigError(f"-n ({n}) must be >= 1")
    use_llm = maker == "llm" or (maker == "auto" and cfg.assistant.generator != "extractive")
    if use_llm and generator is None:
        from assistant.engine import build_generator
        from retrieval.embeddings import embedder_for

        generator, fallback = build_generator(cfg, embedder_for(cfg), model_source=model_source)
        if fallback:
            log.warning("make-qa: %s", fallback)
    if use_llm and (not hasattr(generator, "stream") or not capabilities_of(generator).needs_llm_prompt):
        if maker == "llm":
            raise ConfigError("--maker llm needs an LLM generator (assistant.generator hf or openai) that loads")
        use_llm = False
    from assistant.generators.base import GenParams, generate

    out: list[GeneratedQA] = []
    for row in _sample_chunks(cfg, n, seed):
        if len(out) >= n:
            break
        text = row["text"]
        made = None
        evidence = None
        if use_llm:
            try:
                reply = generate(generator, qa_prompt(text, row["title"]), GenParams(max_new_tokens=64))
            except ConfigError as exc:  # e.g. the passage does not fit the model's context
                log.warning("make-qa: the model cannot take passage %s (%s); using a template", row["id"], exc)
                reply = ""
            parsed = parse_llm_qa(reply, text)
            if parsed:
                question, answer = parsed
                evidence = next(
                    (
                        _squash(text[s:e])
                        for s, e in split_sentences(text)
                        if _squash(answer).lower() in _squash(text[s:e]).lower()
                    ),
                    None,
                )
                made = (question, answer, "llm")
            else:
                log.info("make-qa: the model's question for %s did not check out; using a template", row["id"])
        if made is None:
            for s, e in split_sentences(text):
                found = template_question(text[s:e], row["title"])
                if found:
                    made, evidence = (found[0], found[1], "template"), _squash(text[s:e])
                    break
        if made is None or evidence is None:
            continue
        question, answer, how = made
        out.append(GeneratedQA(f"gen{len(out) + 1:03d}", question, (answer,), row["source"], row["id"], evidence, how))
    if not out:
        raise ConfigError(
            f"no passage of collection '{cfg.retrieval.collection}' holds a fact the question maker can ask about"
        )
    return out


def write_jsonl(cases: Sequence[GeneratedQA], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for c in cases:
            f.write(json.dumps(c.to_json(), ensure_ascii=False) + "\n")
    return path
