"""End to end in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no
browser is ever downloaded): `streamlit run` on loopback over the handbook, ask a question, wait
for the answer and a citation, open the cited passage and the conflict panel, save a screenshot."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
QUESTION = "What is the daily meal allowance for a business trip inside the EU?"  # c01: EUR 45 (2022) vs 60 (2024)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; CI installs it in .ci/run)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="needs playwright (pip install -e '.[dev]')"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, embedder):
    from retrieval.ingest import ingest
    from tether.config import load_config

    home = tmp_path_factory.mktemp("browser-home")
    (home / "tether.yaml").write_text("assistant:\n  generator: extractive\n", encoding="utf-8")
    handbook = ROOT / "examples" / "handbook"  # the part of the sample base the question needs: ingest stays short
    files = [
        handbook / n
        for n in ("travel-expenses-2022.md", "travel-expenses-2024.pdf", "company-faq.txt", "annual-leave.md")
    ]
    assert not ingest(load_config(home), files, embedder=embedder).failed
    port = _free_port()
    env = {**os.environ, "TETHER_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("TETHER_ADMIN_PASSWORD", None)
    log = (home / "streamlit.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "streamlit_app.py"),
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "streamlit did not start:\n" + (home / "streamlit.log").read_text(errors="replace")[-3000:]
                )
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_ask_see_citation_and_conflict_in_chromium(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "user-data"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 1600},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(45_000)
            expect.set_options(timeout=45_000)  # the first answer loads the embedder in the server
            page.goto(app_url)
            box = page.get_by_test_id("stChatInputTextArea")
            box.fill(QUESTION)
            box.press("Enter")
            # the answer with an inline [n] marker, then the cited passage below it
            expect(page.get_by_test_id("stChatMessage").nth(1)).to_contain_text(re.compile(r"\[\d\]"))
            cited = (
                page.get_by_test_id("stExpander")
                .filter(has=page.locator("summary", has_text=re.compile(r"\[\d\] .*travel-expenses")))
                .first
            )
            cited.locator("summary").click()
            mark = cited.locator("mark").first
            expect(mark).to_be_visible()
            assert re.search(r"(€|EUR) ?\d+", mark.inner_text())
            panel = page.get_by_test_id("stExpander").filter(has_text="The sources disagree").first
            panel.locator("summary").click()
            expect(panel).to_contain_text("travel-expenses-2022.md")
            expect(panel).to_contain_text("travel-expenses-2024.pdf")
            expect(panel).to_contain_text("✔ followed")
            expect(panel).to_contain_text("policy")
            panel.locator(".tether-claim").last.scroll_into_view_if_needed()
            page.wait_for_timeout(500)  # let the expander finish opening
            shot = tmp_path / "chat.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
