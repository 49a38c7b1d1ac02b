"""The evaluation case files the app offers: the shipped handbook suites, then any ``*.jsonl``
in ``<data dir>/eval/`` (your own cases, same format as examples/eval/)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {
    "handbook QA (examples/eval/qa.jsonl)": ROOT / "examples" / "eval" / "qa.jsonl",
    "handbook conflicts (examples/eval/handbook_conflicts.jsonl)": ROOT
    / "examples"
    / "eval"
    / "handbook_conflicts.jsonl",
}


def suite_files(data_dir: Path) -> dict[str, Path]:
    """Label -> case file; the data dir's own suites come first."""
    own = sorted((Path(data_dir) / "eval").glob("*.jsonl")) if (Path(data_dir) / "eval").is_dir() else []
    return {**{f"{p.name} (data dir)": p for p in own}, **{k: v for k, v in SHIPPED.items() if v.is_file()}}
