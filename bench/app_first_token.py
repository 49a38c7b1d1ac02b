"""The web app's first answer as a user meets it: seconds from page load to the first streamed token
and to the final answer, in a real headless Chromium (Debian's /usr/bin/chromium driven by
Playwright; no browser is downloaded) against a fresh ``streamlit run`` process each run.

Each run starts the server on the data dir, waits for ``/_stcore/health``, loads the page, waits
``--think`` seconds (a user reading and typing; 0 = ask as soon as the chat box is there), asks,
and reads the clock of the page itself (``performance.now()``: 0 is the navigation start) from a
MutationObserver installed before the page's scripts:

- ``input_s``: the chat box is on the page;
- ``first_token_s``: the draft area (app/ui/draft_view.py) counts a first word, or another
  sign of the answer arrived (the draft revised or replaced by the guard, the answer itself);
- ``final_s``: the answer's feedback control is drawn (the answer is final and rendered).

Then the same page asks a second question and waits for its first token only (seconds from
asking): the process is warm by now.

Variants run interleaved (A B A B ...), so load from other work hits both alike:
``warm-up`` is the app as shipped (app/ui/resources.py ``warm_up``: the searcher, the engine with
its model and the conflict detector load in a background thread from the first page load);
``no-warm-up`` runs the same app through a wrapper that replaces ``warm_up`` by a no-op (the app
has no switch for it), so the first question loads everything itself::

    tether --data-dir D models install smollm2 && tether --data-dir D ingest examples/handbook
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python bench/app_first_token.py --data-dir D \\
        --runs 3 --think 0 --out bench/out/app_first_token.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"]
QUESTION = "What is the daily meal allowance for a business trip inside the EU?"
SECOND = "Who approves business trips?"

# Marks the page's own clock (ms since navigation start) the first time each thing is seen.
OBSERVER = r"""
(() => {
  const marks = {};
  window.__marks = marks;
  window.__asked = 0;
  const mark = (name) => { if (!(name in marks)) marks[name] = performance.now(); };
  const look = () => {
    if (document.querySelector('[data-testid="stChatInputTextArea"]')) mark("input");
    const n = window.__asked;
    if (!n) return;
    const messages = document.querySelectorAll('[data-testid="stChatMessage"]');
    const answer = messages[2 * n - 1];
    if (!answer) return;
    const text = answer.innerText || "";
    const m = text.match(/(\d+) words? so far/);
    if ((m && +m[1] > 0) || /Draft revised|did not pass the check|\[\d\]/.test(text)) mark("first_token_" + n);
    if (answer.querySelector('[data-testid="stFeedback"], [data-testid="stButtonGroup"]')) mark("final_" + n);
  };
  new MutationObserver(look).observe(document, {subtree: true, childList: true, characterData: true});
})();
"""

NO_WARM_UP = """\
import runpy
import sys

sys.path.insert(0, {root!r})
import app.ui.resources as resources

resources.warm_up = lambda: None  # the benchmark's "no-warm-up" variant; the app has no switch
runpy.run_path({app!r}, run_name="__main__")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(data_dir: Path, script: Path, log_path: Path) -> tuple[subprocess.Popen, str, float]:
    """A fresh streamlit process; (process, url, seconds until healthy)."""
    port = _free_port()
    env = {**os.environ, "TETHER_HOME": str(data_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update(ANONYMIZED_TELEMETRY="False", TOKENIZERS_PARALLELISM="false")
    argv = [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true"]
    argv += ["--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    argv += ["--server.fileWatcherType", "none"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url, time.perf_counter() - started
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - started > 60:
            proc.kill()
            raise RuntimeError("streamlit did not start:\n" + log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _ask(page, n: int, question: str, timeout_s: float, until: str = "final") -> None:
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(question)
    page.evaluate(f"window.__asked = {n}")
    box.press("Enter")
    page.wait_for_function(f"'{until}_{n}' in window.__marks", timeout=timeout_s * 1000, polling=100)


def one_run(data_dir: Path, script: Path, think: float, timeout_s: float, work: Path, shot: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    proc, url, health_s = _serve(data_dir, script, work / "streamlit.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1400})
                page.add_init_script(OBSERVER)
                page.goto(url)
                page.get_by_test_id("stChatInputTextArea").wait_for(timeout=180_000)
                if think:
                    page.wait_for_timeout(think * 1000)
                asked_at = page.evaluate("performance.now()")
                _ask(page, 1, QUESTION, timeout_s, until="first_token")
                if shot is not None:  # the draft area while the model writes
                    page.screenshot(path=str(shot.with_name(shot.stem + "-drafting.png")))
                page.wait_for_function("'final_1' in window.__marks", timeout=timeout_s * 1000, polling=100)
                answer = page.get_by_test_id("stChatMessage").nth(1).inner_text()
                if shot is not None:
                    page.wait_for_timeout(1000)  # the run's last elements
                    page.screenshot(path=str(shot), full_page=True)
                second_at = page.evaluate("performance.now()")
                _ask(page, 2, SECOND, timeout_s, until="first_token")  # the process is warm now
                marks = page.evaluate("window.__marks")
            finally:
                browser.close()
    finally:
        _stop(proc)
    s = {k: v / 1000 for k, v in marks.items()}
    return {
        "health_s": round(health_s, 2),
        "input_s": round(s["input"], 2),
        "asked_s": round(asked_at / 1000, 2),
        "first_token_s": round(s["first_token_1"], 2),
        "final_s": round(s["final_1"], 2),
        "second_first_token_s": round(s["first_token_2"] - second_at / 1000, 2),
        "answer_head": answer[:300],
    }


def _summary(rows: list[dict], key: str) -> str:
    v = [r[key] for r in rows]
    return f"{min(v):.1f} / {statistics.median(v):.1f} / {max(v):.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True, help="ingested data dir (its tether.yaml is used)")
    ap.add_argument("--runs", type=int, default=3, help="runs per variant, interleaved")
    ap.add_argument("--think", type=float, default=0.0, help="seconds between the chat box appearing and asking")
    ap.add_argument("--variants", default="warm-up,no-warm-up")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for one answer")
    ap.add_argument("--screenshots", type=Path, help="save one full-page screenshot per run here")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not CHROMIUM.exists():
        ap.error(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    variants = args.variants.split(",")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="app-first-token-") as tmp:
        work = Path(tmp)
        wrapper = work / "no_warm_up_app.py"
        wrapper.write_text(NO_WARM_UP.format(root=str(ROOT), app=str(ROOT / "streamlit_app.py")))
        (work / "app").symlink_to(ROOT / "app", target_is_directory=True)  # page links are relative to it
        scripts = {"warm-up": ROOT / "streamlit_app.py", "no-warm-up": wrapper}
        if args.screenshots:
            args.screenshots.mkdir(parents=True, exist_ok=True)
        for i in range(args.runs):
            for v in variants:
                shot = args.screenshots / f"{v}-{i + 1}.png" if args.screenshots else None
                row = one_run(args.data_dir, scripts[v], args.think, args.timeout, work, shot)
                results[v].append(row)
                print(f"{v} run {i + 1}: " + json.dumps({k: x for k, x in row.items() if k != "answer_head"}))
    print(f"\nseconds since page load, min / median / max of {args.runs} (think {args.think:g} s):")
    print("| variant | chat box | first token | final answer | 2nd question, from asking: first token |")
    print("|---|---:|---:|---:|---:|")
    for v, rows in results.items():
        cols = [_summary(rows, k) for k in ("input_s", "first_token_s", "final_s", "second_first_token_s")]
        print(f"| {v} | " + " | ".join(cols) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count()}
        meta.update(load=os.getloadavg(), think_s=args.think, runs=args.runs, question=QUESTION, second=SECOND)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
