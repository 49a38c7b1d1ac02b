"""Conflict detection quality on the labelled sets, per set, split and kind (the library, no CLI).

    .venv/bin/python bench/conflict_quality.py --split test            # the figures in docs/CONFLICTS.md
    .venv/bin/python bench/conflict_quality.py --split dev --errors    # while tuning: the dev cases it gets wrong
    .venv/bin/python bench/conflict_quality.py --split test --detector classifier --classifier DIR --json out.json

Sets: the handbook's labelled pairs (examples/eval/handbook_conflicts.jsonl, not split: all of it),
bench/data/conflicts_municipal and bench/data/conflicts_gitnotes (frozen, blind, split dev/test).
Rules are tuned on the dev halves only; ``--errors`` refuses to list test-half cases, so tuning
never reads them. Case g17 of conflicts_gitnotes carries a doubtful winner label (see its README):
it is scored as labelled.

Metrics are those of ``tether eval conflicts`` (``assistant.evaluation.conflicts.conflict_metrics``):
precision/recall/F1, recall per kind, share of look-alikes flagged (and per type), resolution accuracy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETS = {
    "handbook": (ROOT / "examples" / "eval" / "handbook_conflicts.jsonl", False),
    "municipal": (ROOT / "bench" / "data" / "conflicts_municipal" / "cases.jsonl", True),
    "gitnotes": (ROOT / "bench" / "data" / "conflicts_gitnotes" / "cases.jsonl", True),
}


def build_detector(kind: str, data_dir: Path | None, classifier: Path | None = None):
    from retrieval.conflicts import get_detector
    from retrieval.embeddings import embedder_for
    from tether.config import load_config

    cfg = load_config(data_dir or ROOT / ".tether")
    embedder = embedder_for(cfg)
    if kind == "rules":
        return get_detector(embedder, config=cfg.conflicts)
    if classifier is None:
        from training.registry import promoted_detector_path

        classifier = promoted_detector_path(cfg)
        if classifier is None:
            raise SystemExit(f"no contradiction classifier promoted in {cfg.data_dir}: pass --classifier DIR")
    return get_detector(embedder, config=cfg.conflicts, classifier=classifier)


def measure(detector, name: str, split: str | None) -> tuple[dict[str, float], list]:
    from assistant.evaluation.cases import load_cases
    from assistant.evaluation.conflicts import conflict_metrics, judge_cases, select_split

    path, is_split = SETS[name]
    cases = load_cases(path).conflicts
    if is_split and split:
        cases = select_split(cases, split, path)
    judged = judge_cases(cases, detector, {})
    outcomes = [o for o, _ in judged]
    return conflict_metrics(outcomes), list(zip(cases, outcomes))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("dev", "test"), required=True, help="half of the split sets")
    ap.add_argument("--sets", default="handbook,municipal,gitnotes")
    ap.add_argument("--detector", choices=("rules", "classifier"), default="rules")
    ap.add_argument("--data-dir", type=Path, default=None, help="data dir whose registry holds the classifier")
    ap.add_argument("--classifier", type=Path, default=None, help="classifier folder (default: the promoted one)")
    ap.add_argument("--errors", action="store_true", help="list the misjudged cases (dev split only)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    if args.errors and args.split != "dev":
        ap.error("--errors lists dev cases only: tuning never reads the test halves")
    detector = build_detector(args.detector, args.data_dir, args.classifier)
    report = {
        "split": args.split,
        "detector": args.detector,
        "classifier": str(getattr(detector, "path", "")) or None,
        "sets": {},
    }
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        metrics, rows = measure(detector, name, args.split)
        n = len(rows)
        report["sets"][name] = {"cases": n, "seconds": round(time.perf_counter() - t0, 2), "metrics": metrics}
        split = args.split if SETS[name][1] else "all"
        print(f"\n## {name} ({split}, {n} cases, {sum(c.conflict for c, _ in rows)} conflicts)")
        for key in sorted(metrics):
            print(f"  {key:<48} {metrics[key]:.3f}")
        if args.errors and (SETS[name][1] or name == "handbook"):
            for case, o in rows:
                if o.predicted != o.gold_conflict:
                    what = "MISSED" if case.conflict else "FLAGGED"
                    print(f"  {what} {case.id} {case.kind or case.lookalike}: {case.a.text!r} | {case.b.text!r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
