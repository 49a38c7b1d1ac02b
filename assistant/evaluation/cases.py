"""Evaluation cases: the JSONL schema and its loaders (one file, or a folder of ``*.jsonl``).

A line is one of three kinds, told apart by its fields:

- QA case (``question``): ``answers`` (list) or ``answer`` (string) or SQuAD's ``{"text": [...]}``;
  gold retrieval as ``source``/``sources`` (document names), ``passage_id``/``passage_ids`` and/or
  ``evidence`` (a sentence of the gold document); ``contexts``/``context`` (texts to ingest into a
  run-specific collection, which then become the gold sources when none are named);
  ``unanswerable``/``is_impossible`` marks a question the documents cannot answer.
- conflict case (``a`` and ``b`` claims and a boolean ``conflict``): see examples/README.md.
- counterfactual case (``context`` and ``original_answer``): read by assistant.counterfactual.

See docs/EVALUATION.md for the full schema.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tether.errors import ConfigError


@dataclass(frozen=True)
class QACase:
    id: str
    question: str
    answers: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()  # gold document names (ledger `source`)
    passage_ids: tuple[str, ...] = ()  # gold chunk ids
    evidence: str | None = None  # a sentence of the gold document
    contexts: tuple[str, ...] = ()  # texts ingested into a run-specific collection
    unanswerable: bool = False
    conflict: bool = False  # the question touches a planted conflict
    meta: dict[str, Any] = field(default_factory=dict)  # everything else on the line

    @property
    def has_retrieval_gold(self) -> bool:
        return bool(self.sources or self.passage_ids or self.evidence)

    def gold_json(self) -> dict[str, Any]:
        return {
            "answers": list(self.answers),
            "sources": list(self.sources),
            "passage_ids": list(self.passage_ids),
            "evidence": self.evidence,
            "unanswerable": self.unanswerable,
        }


@dataclass(frozen=True)
class ClaimSide:
    """One side of a labelled conflict case."""

    source: str
    text: str
    title: str | None = None
    date: str | None = None
    authority: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class ConflictCase:
    id: str
    conflict: bool
    a: ClaimSide
    b: ClaimSide
    kind: str | None = None
    value_type: str | None = None
    question: str | None = None
    note: str | None = None
    resolution: dict[str, str | None] = field(default_factory=dict)  # policy -> "a" | "b" | None (labelled winner)
    lookalike: str | None = None  # non-conflicts: what makes the pair look like one ("equivalent-unit", "in-range")
    split: str | None = None  # "dev" | "test" where the set is split (bench/data/conflicts_*)

    def gold_json(self) -> dict[str, Any]:
        return {
            "conflict": self.conflict,
            "kind": self.kind,
            "resolution": dict(self.resolution),
            "lookalike": self.lookalike,
        }


@dataclass(frozen=True)
class CaseSet:
    """Everything a suite file (or folder) holds."""

    path: Path
    qa: tuple[QACase, ...] = ()
    conflicts: tuple[ConflictCase, ...] = ()
    counterfactual: tuple[dict[str, Any], ...] = ()  # raw rows, for assistant.counterfactual
    digest: str = ""  # sha256 of the files' bytes

    def __len__(self) -> int:
        return len(self.qa) + len(self.conflicts) + len(self.counterfactual)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if isinstance(value, dict) and "text" in value:  # SQuAD / HF datasets: {"text": [...], "answer_start": [...]}
        return _strings(value["text"])
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for v in value:
            out.extend(_strings(v))
        return tuple(out)
    return (str(value),)


_QA_KEYS = {
    "id",
    "question",
    "query",
    "answers",
    "answer",
    "gold_answers",
    "ground_truth",
    "ground_truths",
    "source",
    "sources",
    "gold_source",
    "passage_id",
    "passage_ids",
    "evidence",
    "contexts",
    "context",
    "unanswerable",
    "is_impossible",
    "conflict",
}


def parse_qa(row: dict[str, Any], default_id: str) -> QACase:
    """Normalise the common shapes of a QA line into a ``QACase`` (raises ValueError when unusable)."""
    question = row.get("question", row.get("query"))
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string")
    answers: tuple[str, ...] = ()
    for key in ("answers", "answer", "gold_answers", "ground_truths", "ground_truth"):
        if key in row:
            answers = _strings(row[key])
            break
    unanswerable = bool(row.get("unanswerable") or row.get("is_impossible"))
    if unanswerable and answers:
        raise ValueError("an unanswerable case must not carry answers")
    contexts = _strings(row.get("contexts", row.get("context")))
    return QACase(
        id=str(row.get("id", default_id)),
        question=question.strip(),
        answers=answers,
        sources=_strings(row.get("sources", row.get("source", row.get("gold_source")))),
        passage_ids=_strings(row.get("passage_ids", row.get("passage_id"))),
        evidence=(row.get("evidence") or None)
        if isinstance(row.get("evidence"), (str, type(None)))
        else " ".join(_strings(row["evidence"])),
        contexts=contexts,
        unanswerable=unanswerable,
        conflict=bool(row.get("conflict")),
        meta={k: v for k, v in row.items() if k not in _QA_KEYS},
    )


def _side(value: Any, name: str) -> ClaimSide:
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("text"), str)
        or not isinstance(value.get("source"), str)
    ):
        raise ValueError(f"'{name}' must be an object with string 'source' and 'text'")
    return ClaimSide(
        source=value["source"],
        text=value["text"],
        title=value.get("title"),
        date=value.get("date"),
        authority=value.get("authority"),
        status=value.get("status"),
    )


def parse_conflict(row: dict[str, Any], default_id: str) -> ConflictCase:
    if not isinstance(row.get("conflict"), bool):
        raise ValueError("'conflict' must be true or false")
    resolution = row.get("resolution") or {}
    if not isinstance(resolution, dict) or any(v not in ("a", "b", None) for v in resolution.values()):
        raise ValueError('\'resolution\' must map policies to "a", "b" or null')
    return ConflictCase(
        id=str(row.get("id", default_id)),
        conflict=row["conflict"],
        a=_side(row.get("a"), "a"),
        b=_side(row.get("b"), "b"),
        kind=row.get("kind"),
        value_type=row.get("value_type"),
        question=row.get("question"),
        note=row.get("note"),
        resolution=dict(resolution),
        lookalike=row.get("lookalike") if isinstance(row.get("lookalike"), str) else None,
        split=row.get("split") if isinstance(row.get("split"), str) else None,
    )


def row_kind(row: dict[str, Any]) -> str:
    """'conflict', 'counterfactual' or 'qa'."""
    if "a" in row and "b" in row and "conflict" in row:
        return "conflict"
    if "original_answer" in row and "context" in row:
        return "counterfactual"
    return "qa"


def load_cases(path: str | Path) -> CaseSet:
    """Load a JSONL file, or every ``*.jsonl`` under a folder (sorted), into a ``CaseSet``.

    Raises one ``ConfigError`` listing every bad line (file:line: problem), duplicate ids included.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        if not files:
            raise ConfigError(f"--suite {path}: the folder holds no *.jsonl files")
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(
            f"--suite {path} does not exist: give a JSONL file or a folder of them (e.g. examples/eval/qa.jsonl)"
        )
    problems: list[str] = []
    qa: list[QACase] = []
    conflicts: list[ConflictCase] = []
    counterfactual: list[dict[str, Any]] = []
    digest = hashlib.sha256()
    seen: dict[str, str] = {}
    for f in files:
        data = f.read_bytes()
        digest.update(f.name.encode() + b"\0" + data)
        prefix = f"{f.stem}:" if len(files) > 1 else ""
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            where = f"{f}:{lineno}"
            if not line.strip() or line.lstrip().startswith("//"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"{where}: each line must be a JSON object")
                continue
            default_id = f"{f.stem}-{lineno}"
            try:
                kind = row_kind(row)
                if kind == "conflict":
                    case: Any = parse_conflict(row, default_id)
                    conflicts.append(case)
                elif kind == "counterfactual":
                    case = None
                    counterfactual.append(row)
                else:
                    case = parse_qa(row, default_id)
                    qa.append(case)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            if case is not None:
                key = prefix + case.id
                if prefix:  # ids stay unique across the files of a folder
                    case = replace(case, id=key)
                    (conflicts if kind == "conflict" else qa)[-1] = case
                if key in seen:
                    problems.append(f"{where}: duplicate id {case.id!r} (first at {seen[key]})")
                seen[key] = where
    if problems:
        raise ConfigError(problems)
    if not (qa or conflicts or counterfactual):
        raise ConfigError(f"--suite {path}: no cases found")
    return CaseSet(
        path=path,
        qa=tuple(qa),
        conflicts=tuple(conflicts),
        counterfactual=tuple(counterfactual),
        digest=digest.hexdigest(),
    )
