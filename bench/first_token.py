"""Cold first token of ``tether ask`` as a whole process: the seconds from starting the command to
the first byte of the answer on its standard output, and to its exit, over several runs.

With ``--vs`` a second command runs in turn with the first (A B A B ...), so load from other work
hits both alike; each pair gives a ratio. Nothing is timed inside the process: the clock is this
script's, the process is a fresh one each run (the "cold" a user meets)::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python bench/first_token.py --runs 3 \\
        -- .venv/bin/tether --data-dir D ask "Who approves business trips?"

``tether ask`` writes nothing on standard output before the answer's first token (warnings go to
standard error), so the first byte is the first token.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shlex
import statistics
import subprocess
import sys
import time


def one_run(argv: list[str], timeout: float) -> dict[str, float | int | None]:
    """(first byte s, exit s, exit code) of one fresh process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    first = None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = started + timeout
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            proc.kill()
            break
        if not sel.select(timeout=min(left, 1.0)):
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        if first is None and chunk.strip():
            first = time.perf_counter() - started
    code = proc.wait()
    return {"first_byte_s": first, "exit_s": time.perf_counter() - started, "code": code}


def summary(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="counted runs of each command (after one warm-up)")
    ap.add_argument("--vs", default=None, help="a second command, as one shell-quoted string")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds one run may take")
    ap.add_argument("--json", default=None, help="also write every run here")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")
    args = ap.parse_args()
    a = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not a:
        ap.error("give the command after --")
    commands = {"A": a} | ({"B": shlex.split(args.vs)} if args.vs else {})
    for argv in commands.values():  # warm-up: the page cache, not the process
        one_run(argv, args.timeout)
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            runs[name].append(one_run(argv, args.timeout))
    print(f"{time.strftime('%Y-%m-%d %H:%M')} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; {args.runs} runs")
    print("| command | first byte s (min / median / max) | exit s (min / median / max) | exit codes |")
    print("|---|---:|---:|---|")
    for name, argv in commands.items():
        firsts = [r["first_byte_s"] for r in runs[name] if r["first_byte_s"] is not None]
        exits = [r["exit_s"] for r in runs[name]]
        codes = ",".join(str(r["code"]) for r in runs[name])
        print(
            f"| {name}: `{shlex.join(argv)}` | {summary(firsts) if firsts else 'none'} | {summary(exits)} | {codes} |"
        )
    if "B" in runs:
        pairs = [
            ra["first_byte_s"] / rb["first_byte_s"]
            for ra, rb in zip(runs["A"], runs["B"], strict=True)
            if ra["first_byte_s"] and rb["first_byte_s"]
        ]
        if pairs:
            print(f"\nA/B first byte, pair by pair: {summary(pairs)}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"commands": commands, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
