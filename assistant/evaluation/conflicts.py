"""The conflict suite: detection precision/recall/F1 and kind accuracy over labelled claim pairs,
resolution accuracy per policy, and the follow-context rate of the generator on counterfactual cases.

Built on ``retrieval.conflicts`` (``Claim``, ``get_detector``), ``assistant.resolution.resolve``
and ``assistant.counterfactual`` (``load_cases``, ``follows_context``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.evaluation import metrics as M
from assistant.evaluation.cases import CaseSet, ClaimSide, ConflictCase
from assistant.evaluation.runs import EvalItem
from assistant.generators.base import capabilities_of
from tether.config import TetherConfig

log = logging.getLogger(__name__)

RESOLUTION_POLICIES = ("prefer-recent", "prefer-official")  # present-both never picks: nothing to score
CAD_ALPHA = 0.5


@dataclass(frozen=True)
class ConflictOutcome:
    """What the detector and the resolver said about one labelled case."""

    case_id: str
    gold_conflict: bool
    predicted: bool
    gold_kind: str | None = None
    predicted_kind: str | None = None
    gold_resolution: dict[str, str | None] = field(default_factory=dict)  # policy -> "a" | "b" | None
    predicted_resolution: dict[str, str | None] = field(default_factory=dict)
    lookalike: str | None = None  # non-conflicts: the labelled look-alike type
    both_sides: bool | None = None  # gold conflicts: the present-both answer quotes and cites both claims
    policy_correct: dict[str, bool] = field(default_factory=dict)  # policy -> the answer follows the labelled winner


def conflict_metrics(outcomes: Sequence[ConflictOutcome]) -> dict[str, float]:
    """Detection precision/recall/F1 (a case is predicted conflicting when the judge returns a
    Conflict); the answers to the gold conflicts (``conflicts.answers.*``: the share whose present-both
    answer quotes and cites both claims, whose answer follows every labelled policy, per policy, and
    that are answered from one side without a word about the other, i.e. missed); recall per labelled kind (``conflicts.recall.<kind>``), the share of non-conflicts
    flagged (``conflicts.lookalike_flagged``, and ``.<type>`` per labelled look-alike type), kind
    accuracy on true positives, and resolution accuracy per policy on true positives whose case
    labels that policy (a null label means "no winner")."""
    tp = sum(o.gold_conflict and o.predicted for o in outcomes)
    fp = sum(o.predicted and not o.gold_conflict for o in outcomes)
    fn = sum(o.gold_conflict and not o.predicted for o in outcomes)
    p, r, f = M.precision_recall_f1(tp, fp, fn)
    out = {"conflicts.precision": p, "conflicts.recall": r, "conflicts.f1": f}
    for kind in sorted({o.gold_kind for o in outcomes if o.gold_conflict and o.gold_kind}):
        of_kind = [o for o in outcomes if o.gold_conflict and o.gold_kind == kind]
        out[f"conflicts.recall.{kind}"] = sum(o.predicted for o in of_kind) / len(of_kind)
    negatives = [o for o in outcomes if not o.gold_conflict]
    if negatives:
        out["conflicts.lookalike_flagged"] = sum(o.predicted for o in negatives) / len(negatives)
    for kind in sorted({o.lookalike for o in negatives if o.lookalike}):
        of_kind = [o for o in negatives if o.lookalike == kind]
        out[f"conflicts.lookalike_flagged.{kind}"] = sum(o.predicted for o in of_kind) / len(of_kind)
    hits = [o for o in outcomes if o.gold_conflict and o.predicted]
    kinds = [o for o in hits if o.gold_kind]
    if kinds:
        out["conflicts.kind_accuracy"] = sum(o.predicted_kind == o.gold_kind for o in kinds) / len(kinds)
    gold = [o for o in outcomes if o.gold_conflict]
    if gold:
        # answers (the engine's conflict statement): a missed conflict is answered from one side, silently
        out["conflicts.answers.both_sides_rate"] = sum(bool(o.both_sides) for o in gold) / len(gold)
        out["conflicts.answers.silent_pick_rate"] = sum(not o.predicted for o in gold) / len(gold)
        labelled = [o for o in gold if o.gold_resolution]
        if labelled:
            right = [
                all(o.policy_correct.get(p, False) for p in o.gold_resolution) if o.predicted else False
                for o in labelled
            ]
            out["conflicts.answers.policy_accuracy"] = sum(right) / len(labelled)
            for policy in sorted({p for o in labelled for p in o.gold_resolution}):
                of = [o for o in labelled if policy in o.gold_resolution]
                out[f"conflicts.answers.policy_accuracy.{policy}"] = sum(
                    o.policy_correct.get(policy, False) for o in of
                ) / len(of)
    for policy in sorted({p for o in hits for p in o.gold_resolution}):
        labelled = [o for o in hits if policy in o.gold_resolution and policy in o.predicted_resolution]
        if labelled:
            right = sum(o.predicted_resolution[policy] == o.gold_resolution[policy] for o in labelled)
            out[f"conflicts.resolution.{policy}"] = right / len(labelled)
    return out


def select_split(cases: Sequence[ConflictCase], split: str, path: Any = None) -> tuple[ConflictCase, ...]:
    """The cases of one half of a split set; ``ConfigError`` when no case carries that split."""
    from tether.errors import ConfigError

    chosen = tuple(c for c in cases if c.split == split)
    if not chosen:
        have = sorted({c.split for c in cases if c.split})
        raise ConfigError(
            f"--split {split}: no conflict case of {path or 'the set'} has split {split!r} "
            + (f"(it has {', '.join(have)})" if have else "(its lines carry no 'split': drop --split)")
        )
    return chosen


def follow_context_rate(results: Sequence[bool | None]) -> float | None:
    """Share of judged cases (``follows_context`` not None) whose answer follows the given context."""
    judged = [r for r in results if r is not None]
    return sum(judged) / len(judged) if judged else None


@dataclass(frozen=True)
class ConflictSuiteResult:
    metrics: dict[str, float]
    items: list[EvalItem]
    details: dict[str, Any]
    generator: dict | None


def _ledger_meta(cfg: TetherConfig) -> dict[str, dict[str, Any]]:
    """source -> title/date/status/authority from the configured collection (fills what a case omits)."""
    from retrieval.ledger import Ledger

    with Ledger.open(cfg.db_path) as ledger:
        return {
            d.source: {"title": d.title, "date": d.doc_date, "status": d.status, "authority": d.authority}
            for d in ledger.documents(cfg.retrieval.collection)
        }


def make_claim(side: ClaimSide, meta: dict[str, dict[str, Any]]):
    from retrieval.conflicts import Claim

    known = meta.get(side.source, {})
    return Claim(
        text=side.text,
        source=side.source,
        title=side.title or known.get("title"),
        date=side.date or known.get("date"),
        authority=side.authority or known.get("authority"),
        status=side.status or known.get("status"),
    )


def _side_of(claim, case: ConflictCase) -> str | None:
    """'a' or 'b': which side of the case a claim of the detected conflict is."""
    for name, side in (("a", case.a), ("b", case.b)):
        if " ".join(claim.text.split()) == " ".join(side.text.split()) and claim.source == side.source:
            return name
    for name, side in (("a", case.a), ("b", case.b)):
        if claim.source == side.source:
            return name
    return None


_APPLIES = re.compile(r"source (\d+) applies and overrides source (\d+)")


def score_answer(conflict, case: ConflictCase) -> tuple[bool, dict[str, bool]]:
    """The engine's conflict statement for a detected conflict, scored against the case: (does the
    present-both answer quote both claims with both citations; per labelled policy, does the answer
    follow the labelled winner, or, where the label is "no winner", say the policy cannot decide and
    pick none)."""
    from dataclasses import replace

    from assistant.conflict_answering import conflict_statement
    from assistant.resolution import resolve

    claims = tuple(replace(c, passage_id=f"p{i + 1}") for i, c in enumerate(conflict.claims))
    conflict = replace(conflict, claims=claims)
    numbers = {"p1": 1, "p2": 2}
    sides = {n: _side_of(c, case) for n, c in zip((1, 2), claims)}
    both = conflict_statement(conflict, resolve(conflict, "present-both"), numbers)
    quoted = all(
        f"[{n}]" in both and " ".join(c.text.split()).rstrip(" .;:")[:40] in both for n, c in zip((1, 2), claims)
    )
    correct = {}
    for policy, gold in case.resolution.items():
        if policy not in RESOLUTION_POLICIES:
            continue
        text = conflict_statement(conflict, resolve(conflict, policy), numbers)
        m = _APPLIES.search(text)
        if gold is None:
            correct[policy] = m is None and "cannot decide" in text and "[1]" in text and "[2]" in text
        else:
            correct[policy] = m is not None and sides.get(int(m.group(1))) == gold
    return quoted, correct


def judge_cases(
    cases: Sequence[ConflictCase], detector, meta: dict[str, dict[str, Any]]
) -> list[tuple[ConflictOutcome, Any]]:
    """Run the detector (and, on detected conflicts, every resolution policy) over labelled cases."""
    from assistant.resolution import resolve

    out = []
    for case in cases:
        conflict = detector.judge(make_claim(case.a, meta), make_claim(case.b, meta))
        predicted_resolution: dict[str, str | None] = {}
        answer = score_answer(conflict, case) if conflict is not None and case.conflict else None
        if conflict is not None:
            for policy in RESOLUTION_POLICIES:
                decision = resolve(conflict, policy)
                predicted_resolution[policy] = (
                    None if decision.winner is None else _side_of(conflict.claims[decision.winner], case)
                )
        out.append(
            (
                ConflictOutcome(
                    case_id=case.id,
                    gold_conflict=case.conflict,
                    predicted=conflict is not None,
                    gold_kind=case.kind,
                    predicted_kind=getattr(conflict, "kind", None),
                    gold_resolution=dict(case.resolution),
                    predicted_resolution=predicted_resolution,
                    lookalike=case.lookalike,
                    both_sides=answer[0] if answer else None,
                    policy_correct=answer[1] if answer else {},
                ),
                conflict,
            )
        )
    return out


def _conflict_item(case: ConflictCase, outcome: ConflictOutcome, conflict) -> EvalItem:
    wrong_resolution = [
        p
        for p, w in outcome.gold_resolution.items()
        if p in outcome.predicted_resolution and outcome.predicted_resolution[p] != w
    ]
    return EvalItem(
        case_id=case.id,
        kind="conflict",
        gold=case.gold_json(),
        question=case.question,
        prediction=json.dumps(
            {
                "conflict": outcome.predicted,
                "kind": outcome.predicted_kind,
                "resolution": outcome.predicted_resolution,
                "confidence": getattr(conflict, "confidence", None),
                "value_type": getattr(conflict, "value_type", None),
            }
        ),
        correct=outcome.predicted == outcome.gold_conflict and (not outcome.predicted or not wrong_resolution),
        metrics={
            "detected": float(outcome.predicted),
            "kind_correct": float(outcome.predicted_kind == outcome.gold_kind)
            if outcome.predicted and case.conflict
            else None,
            "wrong_resolution": wrong_resolution,
        },
    )


def _misclassified(cases: Sequence[ConflictCase], outcomes: Sequence[ConflictOutcome]) -> list[dict[str, Any]]:
    rows = []
    for case, o in zip(cases, outcomes):
        error = None
        if o.gold_conflict and not o.predicted:
            error = "missed conflict"
        elif o.predicted and not o.gold_conflict:
            error = "false alarm"
        elif o.predicted and o.gold_kind and o.predicted_kind != o.gold_kind:
            error = f"kind {o.predicted_kind} (gold {o.gold_kind})"
        else:
            wrong = [
                p
                for p, w in o.gold_resolution.items()
                if p in o.predicted_resolution and o.predicted_resolution[p] != w
            ]
            if wrong:
                error = "resolution wrong under " + ", ".join(wrong)
        if error:
            rows.append(
                {
                    "id": case.id,
                    "error": error,
                    "gold_kind": case.kind,
                    "lookalike": case.lookalike,
                    "predicted_kind": o.predicted_kind,
                    "a": case.a.text,
                    "b": case.b.text,
                    "note": case.note,
                }
            )
    return rows


def follow_context(generator, cf_cases: Sequence[Any]) -> tuple[dict[str, float], list[EvalItem], dict[str, Any]]:
    """Answer each counterfactual case from its context alone, with CAD off and (hf only) on."""
    from assistant.counterfactual import follows_context
    from assistant.generators.base import GenParams, generate
    from assistant.prompts import PromptSource, build_context_free_messages, build_messages

    backend = generator.identity.backend
    settings = [("plain", 0.0)] + ([("cad", CAD_ALPHA)] if capabilities_of(generator).cad else [])
    results: dict[str, list[bool | None]] = {name: [] for name, _ in settings}
    items = []
    for case in cf_cases:
        question = case.question if hasattr(case, "question") else case["question"]
        context = case.context if hasattr(case, "context") else case["context"]
        title = getattr(case, "title", None) or (case.get("title") if isinstance(case, dict) else None) or "Source"
        messages = build_messages(question, [PromptSource(title=title, text=context)])
        for name, alpha in settings:
            params = GenParams(
                max_new_tokens=64,
                cad_alpha=alpha,
                cad_context_free=tuple(build_context_free_messages(question)) if alpha else (),
            )
            text = generate(generator, messages, params).strip()
            follows = follows_context(text, case)
            results[name].append(follows)
            items.append(
                EvalItem(
                    case_id=f"{getattr(case, 'id', None) or (case.get('id') if isinstance(case, dict) else '') or len(items)}:{name}",
                    kind="counterfactual",
                    gold={
                        "answer": getattr(case, "answer", None) if not isinstance(case, dict) else case.get("answer")
                    },
                    question=question,
                    prediction=text,
                    correct=follows,
                    metrics={"setting": name, "follows": follows},
                )
            )
    metrics = {
        f"conflicts.follow_context.{name}": rate
        for name, r in results.items()
        if (rate := follow_context_rate(r)) is not None
    }
    details = {"follow_context_settings": [n for n, _ in settings]}
    if not capabilities_of(generator).cad:
        details["cad_skipped"] = f"context-aware decoding needs the hf generator (this run: {backend})"
    return metrics, items, details


def run_conflicts(
    cfg: TetherConfig,
    cases: CaseSet,
    *,
    counterfactual: Path | None = None,
    embedder=None,
    generator=None,
    model_source=None,
    split: str | None = None,
) -> ConflictSuiteResult:
    """The conflict suite over a case set's conflict rows and counterfactual rows (or ``counterfactual``).
    ``model_source`` (an ``assistant.engine.ModelSource``) applies when the generator is built here.
    ``split`` ("dev" | "test"): only the conflict rows of that half (``split`` on each line)."""
    metrics: dict[str, float] = {}
    items: list[EvalItem] = []
    details: dict[str, Any] = {}
    identity = None
    if split is not None:
        cases = dataclasses.replace(cases, conflicts=select_split(cases.conflicts, split, cases.path))
        details["split"] = split
    if cases.conflicts:
        from retrieval.conflicts import get_detector
        from retrieval.embeddings import embedder_for

        embedder = embedder or embedder_for(cfg)
        from assistant.engine import promoted_classifier

        classifier = promoted_classifier(cfg, model_source)
        detector = get_detector(
            embedder, nli_model=cfg.assistant.nli_model, config=cfg.conflicts, classifier=classifier
        )
        details["detector"] = {
            "kind": type(detector).__name__,
            "classifier": str(classifier or cfg.conflicts.classifier or ""),
        }
        judged = judge_cases(cases.conflicts, detector, _ledger_meta(cfg))
        outcomes = [o for o, _ in judged]
        metrics.update(conflict_metrics(outcomes))
        items += [_conflict_item(case, o, c) for case, (o, c) in zip(cases.conflicts, judged)]
        details["counts"] = {
            "conflict_cases": len(cases.conflicts),
            "conflicts": sum(c.conflict for c in cases.conflicts),
            "detected": sum(o.predicted for o in outcomes),
        }
        details["misclassified"] = _misclassified(cases.conflicts, outcomes)
    cf_path = Path(counterfactual) if counterfactual else None
    if cf_path is None and cases.counterfactual:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8")
        with tmp:
            for row in cases.counterfactual:
                tmp.write(json.dumps(row) + "\n")
        cf_path = Path(tmp.name)
    if cf_path is not None:
        from assistant.counterfactual import load_cases as load_counterfactual

        if generator is None:
            from assistant.engine import build_generator
            from retrieval.embeddings import embedder_for

            generator, fallback = build_generator(cfg, embedder or embedder_for(cfg), model_source=model_source)
            if fallback:
                details["fallback"] = fallback
        identity = dataclasses.asdict(generator.identity)
        if not capabilities_of(generator).needs_llm_prompt:
            details["follow_context_skipped"] = (
                f"the {generator.identity.backend} generator answers from passages, not prompts: use an LLM generator"
            )
        else:
            cf_metrics, cf_items, cf_details = follow_context(generator, load_counterfactual(cf_path))
            metrics.update(cf_metrics)
            items += cf_items
            details.update(cf_details)
        if cf_path is not None and not counterfactual:
            cf_path.unlink(missing_ok=True)
    return ConflictSuiteResult(metrics=metrics, items=items, details=details, generator=identity)
