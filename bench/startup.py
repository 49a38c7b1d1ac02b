"""Start-up cost of the light commands, timed as whole processes (wall seconds and peak RSS).

Builds a data dir with the sample handbook ingested and the ONNX encoder exported (unless
``--data-dir`` names one), then runs each command ``--runs`` times after one warm-up run, once
with ``retrieval.encoder: auto`` (the export) and once with ``torch``::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false \\
        .venv/bin/python bench/startup.py --runs 3 --out bench/out/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TETHER = [str(ROOT / ".venv" / "bin" / "tether")]
QUESTION = "Who approves business trips?"
COMMANDS = {
    "search": ["search", QUESTION, "--json"],
    "ask -g extractive": ["ask", QUESTION, "-g", "extractive", "--json"],
    "docs": ["docs"],
    "logs export": ["logs", "export", "--format", "jsonl"],
    "eval list": ["eval", "list"],
    "models list": ["models", "list"],
    "--help": ["--help"],
}


def timed(argv: list[str], env: dict[str, str], tmp: Path) -> tuple[float, float, int]:
    """(wall s, peak RSS MiB, exit code) of one process; RSS from GNU time (``/usr/bin/time -f %M``)."""
    rss = tmp / "rss.txt"
    t = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(rss), *argv],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - t
    if proc.returncode:
        print(f"warning: {' '.join(argv[-4:])} exited {proc.returncode}: {proc.stderr[-300:]}", file=sys.stderr)
    return wall, int(rss.read_text().split()[-1]) / 1024, proc.returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, help="an ingested data dir with the export (default: build one)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--encoders", default="auto,torch")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    env.pop("TETHER_HOME", None)
    tmp = Path(tempfile.mkdtemp(prefix="tether-startup-"))
    data = args.data_dir or tmp / "data"
    if args.data_dir is None:
        subprocess.run(
            [*TETHER, "--data-dir", str(data), "models", "export-encoder"], env=env, check=True, capture_output=True
        )
        subprocess.run(
            [*TETHER, "--data-dir", str(data), "ingest", str(ROOT / "examples" / "handbook")], env=env, check=True
        )
    results = {"load_1min": os.getloadavg()[0], "runs": args.runs, "commands": {}}
    for encoder in args.encoders.split(","):
        config = tmp / f"{encoder}.yaml"
        config.write_text(f"retrieval:\n  encoder: {encoder}\n")
        for name, cmd in COMMANDS.items():
            argv = [*TETHER, "--data-dir", str(data), "--config", str(config), *cmd]
            timed(argv, env, tmp)  # warm-up: page cache, bytecode
            walls, peaks = [], []
            for _ in range(args.runs):
                wall, peak, _code = timed(argv, env, tmp)
                walls.append(wall)
                peaks.append(peak)
            row = {"wall_median_s": round(statistics.median(walls), 2), "wall_all_s": [round(w, 2) for w in walls]}
            row["peak_rss_mib_max"] = round(max(peaks), 0) if peaks else None
            results["commands"][f"{name} [{encoder}]"] = row
            print(f"{name:<20} {encoder:<6} median {row['wall_median_s']:6.2f} s  runs {row['wall_all_s']}", flush=True)
    results["load_1min_after"] = os.getloadavg()[0]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
