"""``run_suite``: run the chat engine over a case file, compute the suite metrics, store the run.

Suites: ``retrieval`` (recall@k, MRR, nDCG@10 over the passages the engine retrieves, top_k of
them), ``answers`` (EM, token F1, contains, refusal accuracy, false refusals), ``grounding``
(groundedness, citation precision and recall), ``latency`` (p50/p95 per engine stage) and
``conflicts`` (see ``assistant.evaluation.conflicts``; run whenever the file holds conflict rows).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from assistant.evaluation import metrics as M
from assistant.evaluation.cases import CaseSet, QACase, load_cases
from assistant.evaluation.runs import EvalItem, RunSummary, config_dict, corpus_hash, store_run
from tether.config import TetherConfig
from tether.errors import ConfigError
from tether.provenance import git_commit

log = logging.getLogger(__name__)

QA_SUITES = ("retrieval", "answers", "grounding", "latency")
ALL_SUITES = QA_SUITES + ("conflicts",)
K_VALUES = (1, 3, 5, 10)
NDCG_K = 10


def check_suites(suites: Sequence[str]) -> tuple[str, ...]:
    unknown = [s for s in suites if s not in ALL_SUITES]
    if unknown or not suites:
        raise ConfigError(f"--suites {','.join(suites)!r}: choose among {', '.join(ALL_SUITES)}")
    return tuple(dict.fromkeys(suites))


def gold_of(case: QACase) -> M.Gold:
    return M.Gold(passage_ids=case.passage_ids, sources=case.sources, evidence=case.evidence)


def ingest_contexts(cfg: TetherConfig, cases: Sequence[QACase], *, embedder=None) -> tuple[TetherConfig, list[QACase]]:
    """Write the cases' ``contexts`` as text files and ingest them into a run-specific collection
    (``eval-<hash>``, reused when the same contexts come again). Cases without gold sources get
    their own contexts as gold. Returns the config pointing at that collection, and the cases."""
    import dataclasses

    from retrieval.ingest import ingest

    names: dict[str, str] = {}
    for case in cases:
        for text in case.contexts:
            names.setdefault(text, f"ctx-{hashlib.sha256(text.encode()).hexdigest()[:12]}.txt")
    digest = hashlib.sha256("\0".join(sorted(names.values())).encode()).hexdigest()[:12]
    folder = cfg.data_dir / "eval-corpora" / digest
    folder.mkdir(parents=True, exist_ok=True)
    for text, name in names.items():
        path = folder / name
        if not path.exists():
            path.write_text(text, encoding="utf-8")
    cfg = cfg.with_retrieval(collection=f"eval-{digest}")
    summary = ingest(cfg, [folder], embedder=embedder)
    if summary.failed:
        raise ConfigError([f"context file {f.source}: {f.reason}" for f in summary.failed])
    out = [
        dataclasses.replace(c, sources=tuple(dict.fromkeys(names[t] for t in c.contexts)))
        if c.contexts and not c.has_retrieval_gold
        else c
        for c in cases
    ]
    return cfg, out


def _ranked(engine, query: str, answer) -> list:
    """The passages retrieval gave the engine: the answer's own for the extractive generator
    (it shows the LLM-less answerer every passage), a fresh top_k search otherwise (an LLM sees
    a focused subset, which is not what retrieval returned)."""
    if answer is not None and answer.generator.backend == "extractive" and answer.fallback is None:
        return list(answer.passages)
    return engine.searcher.search(query, k=engine.cfg.assistant.top_k)


def evaluate_qa(
    engine, cases: Sequence[QACase], suites: Sequence[str], *, on_case: Callable[[int], None] | None = None
) -> tuple[list[EvalItem], dict[str, float], dict]:
    """Answer every case with ``engine`` and compute the requested QA suites: (items, metrics, counts).
    ``on_case(n)`` is called after each case with the number done so far."""
    need_answer = any(s in suites for s in ("answers", "grounding", "latency"))
    items: list[EvalItem] = []
    per: dict[str, list[float]] = {}
    latency: dict[str, list[float]] = {}
    cit_total = cit_correct = 0
    counts = {"qa_cases": len(cases), "answerable": 0, "unanswerable": 0, "with_retrieval_gold": 0, "refused": 0}

    def add(name: str, value: float | None) -> None:
        if value is not None:
            per.setdefault(name, []).append(float(value))

    for case in cases:
        gold = gold_of(case)
        counts["unanswerable" if case.unanswerable else "answerable"] += 1
        answer = engine.answer(case.question) if need_answer else None
        item_metrics: dict[str, float] = {}
        ranked_hits = []
        if "retrieval" in suites or answer is not None:
            ranked_hits = _ranked(engine, answer.query if answer is not None else case.question, answer)
        ranked = [M.Retrieved(h.id, h.source, h.text) for h in ranked_hits]
        if "retrieval" in suites and gold and not case.unanswerable:
            counts["with_retrieval_gold"] += 1
            for k in K_VALUES:
                item_metrics[f"recall@{k}"] = M.recall_at_k(ranked, gold, k)
            item_metrics["rr"] = M.reciprocal_rank(ranked, gold)
            item_metrics[f"ndcg@{NDCG_K}"] = M.ndcg_at_k(ranked, gold, NDCG_K)
        correct = None
        if answer is not None:
            counts["refused"] += int(answer.refused)
            text = "" if answer.refused else M.strip_citation_marks(answer.text)
            if "answers" in suites:
                if case.unanswerable:
                    item_metrics["refusal_correct"] = float(answer.refused)
                    correct = answer.refused
                elif case.answers:
                    item_metrics["em"] = M.exact_match(text, case.answers)
                    item_metrics["f1"] = M.token_f1(text, case.answers)
                    item_metrics["contains"] = M.contains_answer(text, case.answers)
                    item_metrics["false_refusal"] = float(answer.refused)
                    correct = bool(item_metrics["contains"] or item_metrics["em"])
            if "grounding" in suites and not answer.refused:
                if answer.groundedness is not None:
                    item_metrics["groundedness"] = answer.groundedness
                if gold and not case.unanswerable:
                    ok = [
                        M.citation_correct(
                            c.source,
                            answer.passages[c.n - 1].text if 1 <= c.n <= len(answer.passages) else "",
                            gold,
                            c.passage_id,
                        )
                        for c in answer.citations
                    ]
                    cit_total += len(ok)
                    cit_correct += sum(ok)
                    if ok:
                        item_metrics["citation_precision"] = sum(ok) / len(ok)
                    item_metrics["citation_hit"] = float(any(ok))
            if "grounding" in suites and answer.refused and gold and not case.unanswerable:
                item_metrics["citation_hit"] = 0.0
            if "latency" in suites:
                for stage, ms in answer.latency_ms.items():
                    latency.setdefault(stage, []).append(float(ms))
        for name in (
            "recall@1",
            "recall@3",
            "recall@5",
            "recall@10",
            "rr",
            f"ndcg@{NDCG_K}",
            "em",
            "f1",
            "contains",
            "refusal_correct",
            "false_refusal",
            "groundedness",
            "citation_hit",
        ):
            add(name, item_metrics.get(name))
        items.append(
            EvalItem(
                case_id=case.id,
                kind="qa",
                gold=case.gold_json(),
                metrics=item_metrics,
                question=case.question,
                prediction=answer.text if answer is not None else None,
                refused=answer.refused if answer is not None else None,
                correct=correct,
                retrieved=[
                    {"rank": i, "id": h.id, "source": h.source, "score": round(h.score, 5)}
                    for i, h in enumerate(ranked_hits, 1)
                ],
                citations=[
                    {
                        "n": c.n,
                        "id": c.passage_id,
                        "source": c.source,
                        "supported": c.supported,
                        "score": round(c.score, 4),
                    }
                    for c in answer.citations
                ]
                if answer is not None
                else None,
                groundedness=answer.groundedness if answer is not None else None,
                latency_ms={k: round(v, 2) for k, v in answer.latency_ms.items()} if answer is not None else None,
            )
        )
        if on_case is not None:
            on_case(len(items))

    out: dict[str, float] = {}
    mean = lambda name: M.mean(per.get(name, []))  # noqa: E731
    if "retrieval" in suites and per.get("rr"):
        for k in K_VALUES:
            out[f"retrieval.recall@{k}"] = mean(f"recall@{k}")
        out["retrieval.mrr"] = mean("rr")
        out[f"retrieval.ndcg@{NDCG_K}"] = mean(f"ndcg@{NDCG_K}")
    if "answers" in suites:
        for name in ("em", "f1", "contains"):
            if per.get(name):
                out[f"answers.{name}"] = mean(name)
        if per.get("refusal_correct"):
            out["answers.refusal_accuracy"] = mean("refusal_correct")
        if per.get("false_refusal"):
            out["answers.false_refusal_rate"] = mean("false_refusal")
    if "grounding" in suites:
        if per.get("groundedness"):
            out["grounding.groundedness"] = mean("groundedness")
        if cit_total:
            out["grounding.citation_precision"] = cit_correct / cit_total
        if per.get("citation_hit"):
            out["grounding.citation_recall"] = mean("citation_hit")
    for stage, values in latency.items():
        out[f"latency.{stage}.p50"] = M.percentile(values, 50)
        out[f"latency.{stage}.p95"] = M.percentile(values, 95)
    counts["citations"] = cit_total
    return items, {k: v for k, v in out.items() if v is not None}, counts


def run_suite(
    cfg: TetherConfig,
    suite_path: Path,
    *,
    label: str | None = None,
    engine=None,
    suites: Sequence[str] = QA_SUITES,
    corpus: Path | None = None,
    counterfactual: Path | None = None,
    model_source=None,
    progress: Callable[[int, int], None] | None = None,
    split: str | None = None,
) -> RunSummary:
    """Run the suites over the cases in ``suite_path`` (a JSONL file or a folder), store the run
    in ``cfg.db_path`` and return its summary.

    ``corpus``: a folder ingested (incrementally) into the configured collection first. Cases with
    ``contexts`` are answered from a run-specific collection instead. ``engine``: an already built
    ``ChatEngine`` to reuse (its config then wins). The conflict suite runs whenever the file holds
    conflict rows (or counterfactual rows, or ``counterfactual`` is given). ``model_source``: an
    ``assistant.engine.ModelSource`` (the registry's promoted model) for an engine built here.
    ``progress(done, total)``: called as the run goes, in steps of one QA case (the conflict suite
    is one step), for a job's progress bar. ``split`` ("dev" | "test"): only that half of the
    conflict rows (``assistant.evaluation.conflicts.select_split``).
    """
    suites = check_suites(suites)
    cases: CaseSet = load_cases(suite_path)
    if engine is not None:
        cfg = engine.cfg
    qa = list(cases.qa)
    embedder = engine.embedder if engine is not None else None
    if any(c.contexts for c in qa):
        if engine is not None:
            raise ConfigError("cases with 'contexts' need their own collection: call run_suite without engine=")
        from retrieval.embeddings import embedder_for

        embedder = embedder_for(cfg)
        cfg, qa = ingest_contexts(cfg, qa, embedder=embedder)
    elif corpus is not None:
        from retrieval.embeddings import embedder_for
        from retrieval.ingest import ingest

        embedder = embedder or embedder_for(cfg)
        summary = ingest(cfg, [Path(corpus)], embedder=embedder)
        if summary.failed:
            log.warning("--corpus %s: %d files failed to ingest", corpus, len(summary.failed))
    qa_suites = [s for s in suites if s in QA_SUITES]
    with_conflicts = bool(cases.conflicts or cases.counterfactual or counterfactual is not None)
    total = (len(qa) if qa and qa_suites else 0) + int(with_conflicts)

    def step(done: int) -> None:
        if progress is not None:
            progress(done, total)

    step(0)
    items: list[EvalItem] = []
    metrics: dict[str, float] = {}
    details: dict = {
        "suites": [],
        "suite_hash": cases.digest,
        "collection": cfg.retrieval.collection,
        "top_k": cfg.assistant.top_k,
    }
    generator: dict | None = None
    own_engine = False
    if qa and qa_suites:
        if engine is None:
            from assistant.engine import ChatEngine
            from retrieval.search import Searcher

            # the model is scored on its own replies: the guard's extractive stand-in would hide a bad one
            engine = ChatEngine(
                cfg.with_assistant(guard=False),
                searcher=Searcher(cfg, embedder=embedder) if embedder is not None else None,
                log_turns=False,
                model_source=model_source,
            )
            own_engine = True
        try:
            qa_items, qa_metrics, counts = evaluate_qa(engine, qa, qa_suites, on_case=step)
        finally:
            if own_engine:
                engine.searcher.close()
        items += qa_items
        metrics.update(qa_metrics)
        details["counts"] = counts
        details["suites"] += qa_suites
        details["fallback"] = engine.fallback
        generator = _identity(engine.generator.identity)
    if with_conflicts:
        from assistant.evaluation.conflicts import run_conflicts

        result = run_conflicts(
            cfg,
            cases,
            counterfactual=counterfactual,
            embedder=embedder,
            generator=engine.generator if engine is not None else None,
            model_source=model_source,
            split=split,
        )
        items += result.items
        metrics.update(result.metrics)
        details["suites"].append("conflicts")
        details["conflicts"] = result.details
        generator = generator or result.generator
        step(total)
    if not details["suites"]:
        raise ConfigError(f"--suite {suite_path}: none of the suites {', '.join(suites)} applies to its cases")
    return store_run(
        cfg.db_path,
        suite=str(suite_path),
        suite_hash=cases.digest,
        label=label,
        suites=details["suites"],
        collection=cfg.retrieval.collection,
        generator=generator or {"backend": "none", "model": "", "decoding": ""},
        config=config_dict(cfg),
        corpus_hash=corpus_hash(cfg.db_path, cfg.retrieval.collection),
        git_commit=git_commit(),
        metrics=metrics,
        details=details,
        items=items,
    )


def _identity(identity) -> dict:
    import dataclasses

    return dataclasses.asdict(identity)
