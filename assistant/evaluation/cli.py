"""``tether eval``: the typer app ``eval_app`` (mounted by app/cli.py as ``tether eval``).

    run       -> suites.run_suite
    compare   -> compare.compare
    gate      -> gate.gate (after run_suite for a model given instead of a run id)
    make-qa   -> make_qa.make_qa
    conflicts -> suites.run_suite(suites=("conflicts",))
    list/show -> runs.list_runs / runs.load_run

The configuration comes from the root options in ``typer.Context.obj`` (``tether.cli.load``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from tether.cli import load, options, with_assistant
from tether.errors import ConfigError

eval_app = typer.Typer(
    help="Evaluation: suites over JSONL cases, stored runs, compare, gate, QA builder.", no_args_is_help=True
)


def _cfg(ctx: typer.Context, collection: str | None = None, **assistant):
    return with_assistant(load(ctx, collection=collection), **assistant)


def _echo_or_write(text: str, path: Path | None) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {path}", err=True)
    else:
        typer.echo(text, nl=False)


def _suites(value: str | None) -> tuple[str, ...]:
    from assistant.evaluation.suites import QA_SUITES, check_suites

    return check_suites([s.strip() for s in value.split(",") if s.strip()]) if value else QA_SUITES


@eval_app.command("run")
def run_cmd(
    ctx: typer.Context,
    suite: Path = typer.Option(..., "--suite", "-s", help="JSONL file of cases, or a folder of them"),
    label: str | None = typer.Option(
        None, "--label", help="a name for this run (compare/gate accept it instead of the id)"
    ),
    corpus: Path | None = typer.Option(
        None, "--corpus", help="folder to ingest (incrementally) into the collection first"
    ),
    collection: str | None = typer.Option(None, "--collection", "-c"),
    generator: str | None = typer.Option(None, "--generator", "-g", help="hf | extractive | openai"),
    model: str | None = typer.Option(None, "--model", help="'smollm2' or a local checkpoint dir"),
    adapter: Path | None = typer.Option(None, "--adapter", help="PEFT adapter dir"),
    k: int | None = typer.Option(None, "-k", help="passages retrieved per question"),
    suites: str | None = typer.Option(
        None, "--suites", help="comma list of retrieval,answers,grounding,latency,conflicts"
    ),
    counterfactual: Path | None = typer.Option(
        None, "--counterfactual", help="counterfactual cases for the follow-context rate"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the run as JSON"),
    report: Path | None = typer.Option(
        None, "--report", help="also write the Markdown report here (.json: the JSON report)"
    ),
) -> None:
    """Run the suites over a case file with the configured engine and store the run."""
    from assistant.evaluation import report as R
    from assistant.evaluation.runs import load_items
    from assistant.evaluation.suites import run_suite

    cfg = _cfg(ctx, collection, generator=generator, model=model, adapter=str(adapter) if adapter else None, top_k=k)
    run = run_suite(
        cfg,
        suite,
        label=label,
        suites=_suites(suites),
        corpus=corpus,
        counterfactual=counterfactual,
        model_source=options(ctx).model_source,
    )
    items = load_items(cfg.db_path, run.run_id)
    if report:
        _echo_or_write(
            R.dumps(R.run_json(run, items)) if report.suffix == ".json" else R.run_markdown(run, items), report
        )
    typer.echo(R.dumps(R.run_json(run)) + "\n" if as_json else R.run_markdown(run, items), nl=False)
    if not as_json:
        typer.echo(f"stored run {run.run_id} in {cfg.db_path}")


@eval_app.command("compare")
def compare_cmd(
    ctx: typer.Context,
    run_a: str = typer.Argument(..., help="run id, unique id prefix or label (the baseline, A)"),
    run_b: str = typer.Argument(..., help="run id, unique id prefix or label (B)"),
    tolerance: float = typer.Option(
        0.02, "--tolerance", help="absolute tolerance on rates before a drop counts as a regression"
    ),
    latency_tolerance: float = typer.Option(
        0.5, "--latency-tolerance", help="relative latency growth allowed (0.5 = +50%)"
    ),
    metrics: str | None = typer.Option(None, "--metrics", help="comma list of metrics (default: all)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Two stored runs side by side with deltas; regressions of B against A are flagged."""
    from assistant.evaluation import report as R
    from assistant.evaluation.compare import compare
    from assistant.evaluation.runs import load_run

    db = load(ctx).db_path
    cmp = compare(
        load_run(db, run_a),
        load_run(db, run_b),
        metrics=_split(metrics),
        tolerance=tolerance,
        latency_tolerance=latency_tolerance,
    )
    typer.echo(R.dumps(R.comparison_json(cmp)) + "\n" if as_json else R.comparison_markdown(cmp), nl=False)


def _split(value: str | None) -> list[str] | None:
    return [m.strip() for m in value.split(",") if m.strip()] if value else None


def resolve_run(
    cfg,
    ref: str,
    adapter: Path | None,
    suite: Path | None,
    role: str,
    *,
    corpus: Path | None = None,
    generator: str | None = None,
):
    """A stored run for ``ref``: the run itself when ``ref`` names one (id, prefix or label);
    otherwise ``ref`` is a model ('smollm2' or a checkpoint dir) and the suite is run on it now."""
    from assistant.evaluation.runs import load_run
    from assistant.evaluation.suites import run_suite

    looks_like_model = ref.lower() == "smollm2" or Path(ref).expanduser().is_dir()
    if not looks_like_model:
        if adapter:
            raise ConfigError(f"--{role}-adapter applies to a model, but --{role} {ref!r} is a stored run")
        return load_run(cfg.db_path, ref)
    if suite is None:
        raise ConfigError(f"--{role} {ref!r} is a model: give --suite FILE to evaluate it")
    cfg = cfg.with_assistant(
        generator=generator or "hf", model=ref, adapter=str(adapter) if adapter else None, fallback_to_extractive=False
    )
    typer.echo(f"evaluating {role} {ref}{' + ' + str(adapter) if adapter else ''} on {suite} ...", err=True)
    return run_suite(cfg, suite, label=f"gate-{role}", corpus=corpus)


@eval_app.command("gate")
def gate_cmd(
    ctx: typer.Context,
    candidate: str = typer.Option(
        ..., "--candidate", help="stored run (id/prefix/label), or a model: 'smollm2' or a checkpoint dir"
    ),
    baseline: str = typer.Option(..., "--baseline", help="stored run (id/prefix/label), or a model"),
    suite: Path | None = typer.Option(None, "--suite", help="cases to run a model on (needed when a side is a model)"),
    candidate_adapter: Path | None = typer.Option(
        None, "--candidate-adapter", help="PEFT adapter for a candidate model"
    ),
    baseline_adapter: Path | None = typer.Option(None, "--baseline-adapter", help="PEFT adapter for a baseline model"),
    corpus: Path | None = typer.Option(None, "--corpus", help="folder ingested before running a model"),
    metrics: str | None = typer.Option(None, "--metrics", help="comma list (default: the gate's quality metrics)"),
    tolerance: float = typer.Option(0.02, "--tolerance"),
    latency_tolerance: float = typer.Option(0.5, "--latency-tolerance"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Exit 0 when the candidate is not worse than the baseline beyond tolerance, 1 when it is (2: usage)."""
    from assistant.evaluation import report as R
    from assistant.evaluation.gate import DEFAULT_GATE_METRICS, gate

    if tolerance < 0 or latency_tolerance < 0:
        raise ConfigError(f"--tolerance ({tolerance}) and --latency-tolerance ({latency_tolerance}) must be >= 0")
    if suite is not None and not suite.exists():
        raise ConfigError(f"--suite {suite} does not exist")
    cfg = load(ctx)
    base = resolve_run(cfg, baseline, baseline_adapter, suite, "baseline", corpus=corpus)
    cand = resolve_run(cfg, candidate, candidate_adapter, suite, "candidate", corpus=corpus)
    result = gate(
        cand,
        base,
        metrics=_split(metrics) or DEFAULT_GATE_METRICS,
        tolerance=tolerance,
        latency_tolerance=latency_tolerance,
    )
    if as_json:
        typer.echo(R.dumps({**result.to_json(), "candidate": cand.run_id, "baseline": base.run_id}))
    else:
        typer.echo(R.gate_markdown(result, cand, base), nl=False)
    raise typer.Exit(0 if result.passed else 1)


@eval_app.command("make-qa")
def make_qa_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="JSONL file to write"),
    n: int = typer.Option(20, "-n", help="number of questions (one per sampled passage)"),
    seed: int = typer.Option(0, "--seed"),
    maker: str = typer.Option("auto", "--maker", help="auto (LLM when the generator is one) | template | llm"),
    collection: str | None = typer.Option(None, "--collection", "-c"),
    generator: str | None = typer.Option(None, "--generator", "-g", help="hf | extractive | openai"),
    model: str | None = typer.Option(None, "--model"),
) -> None:
    """Build a QA set from an ingested collection: a question per sampled passage, its answer a span of it."""
    from assistant.evaluation.make_qa import make_qa, write_jsonl

    cfg = _cfg(ctx, collection, generator=generator, model=model)
    cases = make_qa(cfg, n, seed=seed, maker=maker, model_source=options(ctx).model_source)
    write_jsonl(cases, out)
    by = {m: sum(c.maker == m for c in cases) for m in ("llm", "template")}
    typer.echo(f"wrote {len(cases)} cases to {out} ({by['llm']} by the LLM, {by['template']} by templates)")


@eval_app.command("conflicts")
def conflicts_cmd(
    ctx: typer.Context,
    cases: Path = typer.Option(
        ..., "--cases", help="labelled conflict pairs (JSONL), e.g. examples/eval/handbook_conflicts.jsonl"
    ),
    counterfactual: Path | None = typer.Option(
        None, "--counterfactual", help="counterfactual cases for the follow-context rate"
    ),
    label: str | None = typer.Option(None, "--label"),
    collection: str | None = typer.Option(
        None, "--collection", "-c", help="collection whose ledger fills missing dates/authority"
    ),
    generator: str | None = typer.Option(None, "--generator", "-g"),
    split: str | None = typer.Option(
        None, "--split", help="dev | test: only that half of a split set (bench/data/conflicts_*)"
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The conflict suite: detection P/R/F1, recall per kind, look-alikes flagged, kind and resolution
    accuracy, follow-context rate; stores the run."""
    from assistant.evaluation import report as R
    from assistant.evaluation.runs import load_items
    from assistant.evaluation.suites import run_suite

    if split not in (None, "dev", "test"):
        raise ConfigError(f"--split {split}: give dev or test")
    cfg = _cfg(ctx, collection, generator=generator)
    run = run_suite(
        cfg,
        cases,
        label=label,
        suites=("conflicts",),
        counterfactual=counterfactual,
        model_source=options(ctx).model_source,
        split=split,
    )
    if as_json:
        typer.echo(R.dumps(R.run_json(run)))
    else:
        typer.echo(R.run_markdown(run, load_items(cfg.db_path, run.run_id)), nl=False)
        typer.echo(f"stored run {run.run_id}")


@eval_app.command("list")
def list_cmd(
    ctx: typer.Context,
    suite: str | None = typer.Option(None, "--suite", help="only runs of this suite path"),
    label: str | None = typer.Option(None, "--label"),
    limit: int = typer.Option(20, "--limit", "-n"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Stored runs, newest first."""
    from assistant.evaluation import report as R
    from assistant.evaluation.runs import list_runs

    runs = list_runs(load(ctx).db_path, suite=suite, label=label, limit=limit)
    if as_json:
        typer.echo(R.dumps([r.to_json() for r in runs]))
        return
    if not runs:
        typer.echo("no evaluation runs yet: tether eval run --suite FILE")
        return
    for r in runs:
        key = ", ".join(
            f"{m.split('.', 1)[1] if m.count('.') else m} {r.metrics[m]:.3f}"
            for m in ("retrieval.recall@5", "answers.f1", "grounding.groundedness", "conflicts.f1")
            if m in r.metrics
        )
        typer.echo(
            f"{r.run_id[:12]}  {r.created_at[:19]}  {r.label or '-':<12} {r.generator.get('backend')}:{Path(str(r.generator.get('model'))).name:<20} {r.suite}  {key}"
        )


@eval_app.command("show")
def show_cmd(
    ctx: typer.Context,
    run: str = typer.Argument(..., help="run id, unique prefix or label"),
    as_json: bool = typer.Option(False, "--json"),
    items: bool = typer.Option(False, "--items", help="include every item (JSON)"),
) -> None:
    """One stored run: provenance, metrics and failing cases."""
    from assistant.evaluation import report as R
    from assistant.evaluation.runs import load_items, load_run

    db = load(ctx).db_path
    summary = load_run(db, run)
    rows = load_items(db, summary.run_id)
    if as_json:
        typer.echo(R.dumps(R.run_json(summary, rows if items else ())))
    else:
        typer.echo(R.run_markdown(summary, rows), nl=False)


__all__ = ["eval_app", "resolve_run"]
