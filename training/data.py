"""Training datasets built from the conversation log, the documents and counterfactual contexts.

Everything is written in TRL's standard conversational formats, one JSONL row per example:

    sft   {"messages": [system, user, assistant]}
    dpo   {"prompt": [system, user], "chosen": [assistant], "rejected": [assistant]}
    kto   {"prompt": [system, user], "completion": [assistant], "label": true|false}

Every prompt comes from ``assistant.prompts.build_messages``, the builder the engine uses at
inference (one template, never two). A logged LLM turn carries its exact prompt (``turns.prompt_json``)
and that is used as is. Extractive turns log no prompt: theirs is rebuilt from the logged retrievals
(passage ids -> the ledger's chunk text and document metadata) with the same builder, showing each
whole passage (``llm_context: passages``), because the sentence selection the engine applies for an
LLM depends on the embedder and is not logged.

Sources of rows:
    sft  thumbs-up answers, edited answers; synthetic Q/A backtranslated from document chunks
         (the configured LLM writes the question a chunk sentence answers); counterfactual contexts
         (the gold answer follows the context, not the model's memory).
    dpo  edited or accepted answer vs a thumbs-down answer to the same prompt; conflict-aware pairs
         (chosen names the logged conflict with the engine's ``conflict_statement`` and the logged
         decision, rejected is the answer that ignored it);
         counterfactual pairs (context answer vs the memorised original answer).
    kto  single thumbs: up (or edit) -> label true, down -> label false.

Each dataset is deduplicated (exact, then near-duplicate by word-shingle MinHash), length-filtered,
split train/eval by prompt (a prompt never lands in both) and gets a ``manifest.json`` (counts,
SHA-256 of each file, the SQL that selected the rows).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from assistant.conflict_answering import conflict_statement, split_statements
from assistant.generators.base import GenParams, Message
from assistant.logstore import CONFLICT_QUERY, FEEDBACK_QUERY, RETRIEVAL_QUERY, ConflictRow, LogStore
from assistant.prompts import PromptSource, build_messages
from assistant.resolution import Decision
from retrieval.conflicts import Conflict
from retrieval.ledger import CHUNKS_BY_ID_QUERY, COLLECTION_CHUNKS_QUERY, Ledger
from training.config import DataConfig

log = logging.getLogger(__name__)

# -- what is read from the log: the log's rows come from LogStore, the chunks from the Ledger; the
# statements they run are recorded in each manifest's ``source_query``

PROMPT_REBUILD_QUERY = f"{RETRIEVAL_QUERY}; {CHUNKS_BY_ID_QUERY}"

_CONFLICT_WORDS = re.compile(
    r"\b(conflict\w*|disagree\w*|contradict\w*|differ\w*|inconsistent|however|whereas|while)\b", re.I
)


@dataclass(frozen=True)
class LoggedTurn:
    """A logged turn with the feedback that makes it training data."""

    id: str
    question: str
    answer: str
    refused: bool
    prompt: tuple[Message, ...]
    feedback: tuple[tuple[str, str | None], ...]  # (kind, edited answer)

    @property
    def prompt_key(self) -> str:
        return _hash(json.dumps([asdict(m) for m in self.prompt], sort_keys=True))


@dataclass
class Row:
    """One example before it is written: ``data`` is the TRL row; ``text`` what dedup compares."""

    kind: str
    source: str
    data: dict[str, Any]
    text: str
    group: str  # split key: rows of one prompt stay together


@dataclass
class DatasetManifest:
    kind: str
    path: str
    n_train: int
    n_eval: int
    hash: str
    counts: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    source_query: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.hash[:12]}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _msgs(messages: Iterable[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text.strip()}]


# -- prompts of logged turns -------------------------------------------------------------------


def rebuild_prompt(store: LogStore, turn_id: str, question: str, *, faithful: bool = False) -> list[Message]:
    """The grounded prompt of a turn that logged none (extractive), rebuilt from its retrievals
    with the inference builder. Passages gone from the ledger are skipped."""
    sources = [
        PromptSource(
            title=r.title or r.passage_id, text=r.text, date=r.doc_date, authority=r.authority, status=r.status
        )
        for r in store.retrieved_passages(turn_id)
        if r.text
    ]
    return build_messages(question, sources, faithful=faithful)


def logged_turns(store: LogStore, *, faithful: bool = False) -> list[LoggedTurn]:
    """Turns that received up/down/edit feedback, each with its exact (or rebuilt) prompt."""
    out = []
    for r in store.feedback_turns():
        prompt = r.prompt if r.prompt is not None else rebuild_prompt(store, r.id, r.question, faithful=faithful)
        out.append(LoggedTurn(r.id, r.question, r.answer, r.refused, tuple(prompt), r.feedback))
    return out


def _verdict(turn: LoggedTurn) -> tuple[str | None, str | None]:
    """(good answer or None, bad answer or None) from a turn's feedback; the latest edit wins."""
    kinds = [k for k, _ in turn.feedback]
    edits = [e for k, e in turn.feedback if k == "edit" and (e or "").strip()]
    good = edits[-1] if edits else (turn.answer if "up" in kinds and "down" not in kinds else None)
    bad = turn.answer if ("down" in kinds or edits) and (good is None or good.strip() != turn.answer.strip()) else None
    return good, bad


# -- SFT --------------------------------------------------------------------------------------


def sft_from_feedback(turns: Sequence[LoggedTurn]) -> list[Row]:
    rows = []
    for t in turns:
        good, _ = _verdict(t)
        if good:
            source = "edit" if any(k == "edit" for k, _ in t.feedback) else "up"
            rows.append(
                Row(
                    "sft",
                    source,
                    {"messages": _msgs(t.prompt) + _assistant(good)},
                    f"{t.question}\n{good}",
                    t.prompt_key,
                )
            )
    return rows


def sft_from_counterfactuals(cases: Sequence[dict[str, Any]], *, faithful: bool = False) -> list[Row]:
    """Rows whose answer follows the (counterfactual) context, cited as source [1]."""
    rows = []
    for c in cases:
        prompt = counterfactual_prompt(c, faithful=faithful)
        answer = _cited(c["answer"])
        rows.append(
            Row(
                "sft",
                "counterfactual",
                {"messages": _msgs(prompt) + _assistant(answer)},
                f"{c['question']}\n{c['context']}\n{answer}",
                _hash(c["question"] + c["context"]),
            )
        )
    return rows


def counterfactual_prompt(case: dict[str, Any], *, faithful: bool = False) -> list[Message]:
    title = str(case.get("title") or case.get("source") or "Document")
    return build_messages(case["question"], [PromptSource(title=title, text=case["context"])], faithful=faithful)


def _cited(answer: str, n: int = 1) -> str:
    a = answer.strip()
    if re.search(r"\[\d+\]", a):
        return a
    if a and a[-1] in ".!?":
        return f"{a[:-1]} [{n}]{a[-1]}"
    return f"{a} [{n}]."


BACKTRANSLATE_SYSTEM = "You write one question a reader would ask. Reply with the question only."


# One worked example (written here, about no corpus) shows a small model what is asked: without it
# SmolLM2-135M mostly echoes the sentence; with it, twice as many of its replies on a PostgreSQL
# corpus were questions about the sentence (6 of 24 against 3 of 24, same sentences, greedy).
_BACKTRANSLATE_SHOT = (
    "The desk lamp has two brightness levels. It turns itself off after 30 minutes without use; "
    "the delay can be changed in the settings menu.",
    "It turns itself off after 30 minutes without use; the delay can be changed in the settings menu.",
    "After how long does the lamp switch off when nobody uses it?",
)


def _backtranslate_request(passage: str, sentence: str) -> str:
    return f"Passage:\n{passage}\n\nWrite one short question that this sentence of the passage answers:\n{sentence}"


def backtranslate_prompt(passage: str, sentence: str) -> list[Message]:
    """The chat asking the model for the question that ``sentence`` (of ``passage``) answers, after
    one worked example."""
    shot_passage, shot_sentence, shot_question = _BACKTRANSLATE_SHOT
    return [
        Message("system", BACKTRANSLATE_SYSTEM),
        Message("user", _backtranslate_request(shot_passage, shot_sentence)),
        Message("assistant", shot_question),
        Message("user", _backtranslate_request(passage, sentence)),
    ]


def sft_from_documents(
    ledger: Ledger,
    collection: str,
    generator: Any,
    n: int,
    *,
    seed: int = 0,
    faithful: bool = False,
    params: GenParams | None = None,
) -> list[Row]:
    """Synthetic Q/A by backtranslation (Li et al. 2023): a chunk sentence is the answer; the
    configured LLM writes the question it answers. Questions that are not one line ending in '?'
    with 3-30 words are dropped."""
    from assistant.generators.base import generate
    from tether.text.sentences import split_sentences

    chunks = ledger.collection_chunks(collection)
    rng = random.Random(seed)
    rng.shuffle(chunks)
    params = params or GenParams(max_new_tokens=40, temperature=0.0)
    rows: list[Row] = []
    for ch in chunks:
        if len(rows) >= n:
            break
        text = ch.text
        sentences = [" ".join(text[s:e].split()) for s, e in split_sentences(text)]
        sentences = [s for s in sentences if len(s.split()) >= 6]
        if not sentences:
            continue
        sentence = rng.choice(sentences)
        raw = generate(generator, backtranslate_prompt(text, sentence), params).strip()
        question = raw.splitlines()[0].strip() if raw else ""
        question = re.sub(r"^(question\s*:\s*)", "", question, flags=re.I)
        if not question.endswith("?") or not 3 <= len(question.split()) <= 30:
            log.debug("backtranslation of chunk %s dropped: %r", ch.id, raw[:80])
            continue
        src = PromptSource(title=ch.title, text=text, date=ch.doc_date, authority=ch.authority, status=ch.status)
        prompt = build_messages(question, [src], faithful=faithful)
        answer = _cited(sentence)
        rows.append(
            Row(
                "sft",
                "synthetic",
                {"messages": _msgs(prompt) + _assistant(answer)},
                f"{question}\n{answer}",
                _hash(question + text),
            )
        )
    if len(rows) < n:
        log.warning(
            "backtranslation gave %d of %d synthetic rows (the generator's questions were dropped)", len(rows), n
        )
    return rows


# -- DPO --------------------------------------------------------------------------------------


def dpo_from_feedback(turns: Sequence[LoggedTurn]) -> list[Row]:
    """Pairs on one prompt: a turn's edit vs its own answer; an accepted or edited answer vs a
    thumbs-down answer to the same prompt (another turn)."""
    rows: list[Row] = []
    seen: set[tuple[str, str, str]] = set()
    by_prompt: dict[str, list[LoggedTurn]] = {}
    for t in turns:
        by_prompt.setdefault(t.prompt_key, []).append(t)

    def add(t: LoggedTurn, chosen: str, rejected: str, source: str) -> None:
        key = (t.prompt_key, chosen.strip(), rejected.strip())
        if chosen.strip() == rejected.strip() or key in seen:
            return
        seen.add(key)
        rows.append(
            Row(
                "dpo",
                source,
                {"prompt": _msgs(t.prompt), "chosen": _assistant(chosen), "rejected": _assistant(rejected)},
                f"{t.question}\n{chosen}\n{rejected}",
                t.prompt_key,
            )
        )

    for group in by_prompt.values():
        goods = [(t, g) for t in group for g in [_verdict(t)[0]] if g]
        bads = [(t, b) for t in group for b in [_verdict(t)[1]] if b]
        for t, good in goods:
            for u, bad in bads:
                add(t, good, bad, "edit" if (t is u) else "feedback")
    return rows


def _logged_conflict(r: ConflictRow) -> tuple[Conflict, Decision] | None:
    """The typed conflict and decision of one ``conflicts`` row; None (with a warning) for a row
    written before the log stored ``Conflict.to_json`` and ``Decision.to_json``."""
    try:
        conflict = Conflict.from_json(json.loads(r.claims_json))
        if not r.decision:
            raise ValueError("the row has no decision")
        decision = Decision.from_json(json.loads(r.decision))
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        log.warning("conflict %s of turn %s skipped: not a typed conflict and decision (%s)", r.idx, r.turn_id, exc)
        return None
    return conflict, decision


def _logged_turn(store: LogStore, turn_id: str) -> LoggedTurn:
    row = store.turn_row(turn_id)
    prompt = row.prompt if row.prompt is not None else rebuild_prompt(store, row.id, row.question)
    return LoggedTurn(row.id, row.question, row.answer, row.refused, tuple(prompt), ())


def dpo_from_conflicts(store: LogStore, turns: Sequence[LoggedTurn]) -> list[Row]:
    """Pairs whose chosen answer names the turn's logged conflict in the engine's own words
    (``conflict_statement`` with the logged decision and the turn's passage numbers, [n] = the
    retrieval rank), and whose rejected answer is the one that ignored it:

    - the engine named the conflict (its statement ends the logged answer): chosen is the logged
      answer, rejected the generator's reply without Tether's statements;
    - the logged answer mentions no disagreement: chosen is the statement, rejected the answer.

    Rows whose conflict or decision is not the typed shape are skipped with a warning.
    """
    by_id = {t.id: t for t in turns}
    logged: dict[str, list[tuple[Conflict, Decision]]] = {}
    for r in store.answered_conflicts():
        resolved = _logged_conflict(r)
        entry = logged.setdefault(r.turn_id, [])
        if resolved is not None:
            entry.append(resolved)
    rows = []
    for turn_id, resolved in logged.items():
        if not resolved:
            continue
        t = by_id.get(turn_id) or _logged_turn(store, turn_id)
        numbers = {x.passage_id: x.rank for x in store.retrievals(t.id)}
        reply, named = split_statements(t.answer, resolved, numbers)
        if named:
            pairs = [(t.answer.strip(), reply)] if reply and not _CONFLICT_WORDS.search(reply) else []
        elif not _CONFLICT_WORDS.search(t.answer):
            pairs = [(s, t.answer) for s in (conflict_statement(c, d, numbers) for c, d in resolved) if s]
        else:
            pairs = []
        for chosen, rejected in pairs:
            rows.append(
                Row(
                    "dpo",
                    "conflict",
                    {"prompt": _msgs(t.prompt), "chosen": _assistant(chosen), "rejected": _assistant(rejected)},
                    f"{t.question}\n{chosen}",
                    t.prompt_key,
                )
            )
    return rows


def dpo_from_counterfactuals(cases: Sequence[dict[str, Any]], *, faithful: bool = False) -> list[Row]:
    """Chosen follows the context (the counterfactual answer), rejected is the memorised original."""
    rows = []
    for c in cases:
        if not c.get("original_answer") or str(c["original_answer"]).strip() == str(c["answer"]).strip():
            continue
        prompt = counterfactual_prompt(c, faithful=faithful)
        chosen, rejected = _cited(c["answer"]), str(c["original_answer"]).strip()
        rows.append(
            Row(
                "dpo",
                "counterfactual",
                {"prompt": _msgs(prompt), "chosen": _assistant(chosen), "rejected": _assistant(rejected)},
                f"{c['question']}\n{c['context']}\n{chosen}",
                _hash(c["question"] + c["context"]),
            )
        )
    return rows


# -- KTO --------------------------------------------------------------------------------------


def kto_from_feedback(turns: Sequence[LoggedTurn]) -> list[Row]:
    rows = []
    for t in turns:
        good, bad = _verdict(t)
        for text, label in ((good, True), (bad, False)):
            if text:
                rows.append(
                    Row(
                        "kto",
                        "up" if label else "down",
                        {"prompt": _msgs(t.prompt), "completion": _assistant(text), "label": label},
                        f"{t.question}\n{text}\n{label}",
                        t.prompt_key,
                    )
                )
    return rows


# -- cleaning, split, writing -----------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _shingles(text: str, k: int = 3) -> set[str]:
    words = _norm(text).split()
    return {" ".join(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}


def _minhash(shingles: set[str], n: int = 64) -> tuple[int, ...]:
    return tuple(
        min(int.from_bytes(hashlib.blake2b(f"{i}:{s}".encode(), digest_size=8).digest(), "big") for s in shingles)
        for i in range(n)
    )


def dedupe(rows: Sequence[Row], threshold: float = 0.9) -> tuple[list[Row], int, int]:
    """(kept, exact duplicates dropped, near duplicates dropped). Exact = same normalised text;
    near = word-3-shingle Jaccard >= ``threshold``, candidates found by MinHash banding (16 bands
    of 4) and confirmed on the real shingle sets."""
    kept: list[Row] = []
    exact = near = 0
    seen: set[str] = set()
    buckets: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    sets: list[set[str]] = []
    for row in rows:
        key = _hash(_norm(row.text))
        if key in seen:
            exact += 1
            continue
        seen.add(key)
        sh = _shingles(row.text)
        sig = _minhash(sh)
        bands = [(b, sig[b * 4 : b * 4 + 4]) for b in range(16)]
        cands = {i for band in bands for i in buckets.get(band, [])}
        if any(len(sh & sets[i]) / max(1, len(sh | sets[i])) >= threshold for i in cands):
            near += 1
            continue
        for band in bands:
            buckets.setdefault(band, []).append(len(kept))
        sets.append(sh)
        kept.append(row)
    return kept, exact, near


def row_length(row: Row, tokenizer: Any | None) -> int:
    """Tokens of prompt + answer through the chat template (chars/4 without a tokenizer)."""
    d = row.data
    chat = d.get("messages") or (
        d["prompt"] + (d.get("completion") or max(d["chosen"], d["rejected"], key=lambda m: len(m[0]["content"])))
    )
    if tokenizer is None:
        return sum(len(m["content"]) for m in chat) // 4 + 8 * len(chat)
    enc = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)
    return len(enc["input_ids"])


def split(rows: Sequence[Row], eval_fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Deterministic split by prompt group; at least one train row, and one eval row when there are >= 4 groups."""
    groups = sorted({r.group for r in rows}, key=lambda g: _hash(f"{seed}:{g}"))
    n_eval = int(round(len(groups) * eval_fraction))
    if eval_fraction > 0 and n_eval == 0 and len(groups) >= 4:
        n_eval = 1
    n_eval = min(n_eval, max(0, len(groups) - 1))
    held = set(groups[:n_eval])
    return [r for r in rows if r.group not in held], [r for r in rows if r.group in held]


def _write_jsonl(path: Path, rows: Sequence[Row]) -> str:
    text = "".join(json.dumps(r.data, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return _hash(text)


def write_dataset(
    rows: Sequence[Row],
    out_dir: Path,
    kind: str,
    dcfg: DataConfig,
    *,
    tokenizer: Any | None = None,
    queries: dict[str, str] | None = None,
    db_path: str | None = None,
) -> DatasetManifest:
    """Dedup, length-filter, split and write ``train.jsonl``, ``eval.jsonl`` and ``manifest.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_in = len(rows)
    kept, exact, near = dedupe(rows, dcfg.near_dup_threshold)
    fitting = [r for r in kept if row_length(r, tokenizer) <= dcfg.max_tokens]
    too_long = len(kept) - len(fitting)
    train, ev = split(fitting, dcfg.eval_fraction, dcfg.seed)
    files = {
        "train.jsonl": _write_jsonl(out_dir / "train.jsonl", train),
        "eval.jsonl": _write_jsonl(out_dir / "eval.jsonl", ev),
    }
    by_source: dict[str, int] = {}
    for r in fitting:
        by_source[r.source] = by_source.get(r.source, 0) + 1
    manifest = DatasetManifest(
        kind=kind,
        path=str(out_dir),
        n_train=len(train),
        n_eval=len(ev),
        hash=_hash(files["train.jsonl"] + files["eval.jsonl"]),
        counts={
            "candidates": n_in,
            "exact_duplicates": exact,
            "near_duplicates": near,
            "too_long": too_long,
            "by_source": by_source,
            "max_tokens": dcfg.max_tokens,
            "length_unit": "tokens" if tokenizer else "chars/4",
        },
        files=files,
        source_query=queries or {},
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        config={**asdict(dcfg), "db": db_path},
    )
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    log.info(
        "%s dataset: %d train, %d eval (%d exact and %d near duplicates, %d too long)",
        kind,
        len(train),
        len(ev),
        exact,
        near,
        too_long,
    )
    return manifest


def load_counterfactual_cases(cfg: Any, dcfg: DataConfig) -> list[dict[str, Any]]:
    """Counterfactual rows from ``assistant.counterfactual``: cases from a file, or made from the corpus."""
    if not dcfg.counterfactual_cases and not dcfg.counterfactuals:
        return []
    from assistant import counterfactual

    if dcfg.counterfactual_cases:
        rows = counterfactual.make_counterfactuals(counterfactual.load_cases(dcfg.counterfactual_cases), seed=dcfg.seed)
        return rows[: dcfg.counterfactuals] if dcfg.counterfactuals else rows
    return counterfactual.from_corpus(cfg, n=dcfg.counterfactuals, seed=dcfg.seed)


def build_datasets(
    cfg: Any,
    dcfg: DataConfig,
    *,
    generator: Any | None = None,
    tokenizer: Any | None = None,
    counterfactual_rows: Sequence[dict[str, Any]] | None = None,
    record: Callable[[DatasetManifest], None] | None = None,
) -> dict[str, DatasetManifest]:
    """Build every kind in ``dcfg.kinds`` under ``dcfg.out_dir/<kind>/`` from ``cfg.db_path``.

    ``generator`` (a ``Generator``) is needed only when ``dcfg.synthetic > 0``; ``tokenizer`` measures
    lengths; ``counterfactual_rows`` replaces ``load_counterfactual_cases``; ``record`` is called
    with each manifest (the registry stores it). Returns the manifests by kind.
    """
    from tether.errors import ConfigError

    dcfg.validated()
    faithful = bool(getattr(cfg.assistant, "faithful_prompt", False))
    if dcfg.synthetic and generator is None:
        raise ConfigError(f"--synthetic {dcfg.synthetic} needs an LLM generator (assistant.generator hf or openai)")
    cases = list(counterfactual_rows) if counterfactual_rows is not None else load_counterfactual_cases(cfg, dcfg)
    store, ledger = LogStore.open(cfg.db_path), Ledger.open(cfg.db_path)
    try:
        turns = logged_turns(store, faithful=faithful)
        out: dict[str, DatasetManifest] = {}
        for kind in dcfg.kind_list:
            queries = {"feedback": FEEDBACK_QUERY}
            if kind == "sft":
                rows = sft_from_feedback(turns) + sft_from_counterfactuals(cases, faithful=faithful)
                if dcfg.synthetic:
                    rows += sft_from_documents(
                        ledger, cfg.retrieval.collection, generator, dcfg.synthetic, seed=dcfg.seed, faithful=faithful
                    )
                    queries["synthetic"] = COLLECTION_CHUNKS_QUERY.replace("?", repr(cfg.retrieval.collection))
            elif kind == "dpo":
                rows = (
                    dpo_from_feedback(turns)
                    + dpo_from_conflicts(store, turns)
                    + dpo_from_counterfactuals(cases, faithful=faithful)
                )
                queries["conflict"] = CONFLICT_QUERY
            else:
                rows = kto_from_feedback(turns)
            if cases and kind != "kto":
                queries["counterfactual"] = f"{len(cases)} rows from assistant.counterfactual" + (
                    f" ({dcfg.counterfactual_cases})" if dcfg.counterfactual_cases else " (from_corpus)"
                )
            queries["prompt_rebuild"] = PROMPT_REBUILD_QUERY
            manifest = write_dataset(
                rows,
                Path(dcfg.out_dir) / kind,
                kind,
                dcfg,
                tokenizer=tokenizer,
                queries=queries,
                db_path=str(cfg.db_path),
            )
            out[kind] = manifest
            if record is not None:
                record(manifest)
    finally:
        store.close()
        ledger.close()
    return out


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
