"""``tether eval``: evaluation suites over JSONL cases, runs stored in ``tether.db``, compare, gate, QA builder.

cases.py     the case schema and loaders (a file or a folder of JSONL)
metrics.py   pure metric functions (retrieval, answers, grounding, conflicts, latency)
suites.py    run_suite: the engine over the cases -> metrics -> a stored run
conflicts.py the conflict suite (detection, resolution, follow-context rate)
runs.py      store / load / list runs (RunSummary), corpus hash, git commit
compare.py   two runs side by side, with deltas and regressions
gate.py      pass / fail a candidate run against a baseline run
make_qa.py   build a QA set from an ingested collection
report.py    Markdown and JSON reports
cli.py       the typer app ``eval_app``
"""
