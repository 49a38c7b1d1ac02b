"""End to end in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no
browser is ever downloaded): `streamlit run` on loopback over part of the handbook.

In file order (one server): the local user of a fresh install asks, opens the cited passage and
the conflict panel; then accounts exist, and a user signs in, has two conversations, reloads and
finds them (citations included), uploads a file and asks about it; an admin starts an
evaluation in the background and watches its progress until its chart appears. Screenshots are
saved in each test's tmp dir (the path is printed) to be looked at."""

from __future__ import annotations

import contextlib
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
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("browser-home")


@pytest.fixture(scope="module")
def app_url(home, embedder):
    from retrieval.ingest import ingest
    from tether.config import load_config

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


@contextlib.contextmanager
def _browser(tmp_path, height: int = 1600):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "user-data"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": height},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(45_000)
            expect.set_options(timeout=45_000)  # the first answer loads the embedder in the server
            yield page
        finally:
            browser.close()


def _shot(page, tmp_path, name: str) -> Path:
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    return shot


def _ask(page, question: str, n_messages: int) -> None:
    """Ask and wait for the answer with an inline [n] marker (the ``n_messages``-th message)."""
    from playwright.sync_api import expect

    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(question)
    box.press("Enter")
    answer = page.get_by_test_id("stChatMessage").nth(n_messages - 1)
    expect(answer).to_contain_text(re.compile(r"\[\d\]"))
    expect(answer.get_by_test_id("stExpander").first).to_be_visible()
    expect(page.get_by_test_id("stSidebar")).to_contain_text(question[:30])  # the run is over: the chat is listed


def _sign_in(page, url: str, username: str, password: str) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    page.get_by_role("textbox", name="User name").fill(username)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("stChatInputTextArea")).to_be_visible()
    expect(page.get_by_test_id("stSidebar")).to_contain_text(f"Signed in as {username}")


def _choose(page, expander: str, label: str, option: str) -> None:
    """Pick ``option`` in the select box ``label`` inside the sidebar expander ``expander``. The
    sidebar is redrawn while the script of the page still runs (the conversation list comes last),
    which can close the expander or the open list under the click: open both again until the option
    shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(10):
        box = page.get_by_role("combobox", name=label)
        if not box.is_visible():
            page.get_by_test_id("stSidebar").get_by_text(expander).click()
        try:
            box.click(timeout=5_000)
            page.get_by_role("option", name=option, exact=True).click(timeout=3_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    raise AssertionError(f"could not choose {option!r} in {label!r}")


def test_ask_see_citation_and_conflict_in_chromium(app_url, tmp_path):
    from playwright.sync_api import expect

    with _browser(tmp_path) as page:
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
        expect(page.get_by_text("Deploy", exact=True)).to_have_count(0)  # client.toolbarMode = minimal
        expect(page.get_by_test_id("stSidebar")).to_contain_text("No accounts yet")
        _shot(page, tmp_path, "chat")


ZEPPELIN = b"""---
title: Zeppelin Parking Rules
date: 2025-04-01
---
# Zeppelin parking

Visitors park their zeppelins on mooring mast 7 behind the Brno office. Mooring costs 12 euros per hour.
"""


@pytest.fixture(scope="module")
def accounts(app_url, home):
    """From here on the install has accounts: sign-in is required."""
    from assistant.accounts import AccountStore
    from tether.passwords import ScryptParams

    with AccountStore(home / "tether.db", params=ScryptParams(n=2**10, r=8, p=1)) as store:
        store.create_first_admin("ada", "ada-password")
        store.create("ann", "ann-password", "user")
    return app_url


def test_sign_in_two_chats_reload_and_upload_in_chromium(accounts, tmp_path):
    from playwright.sync_api import expect

    with _browser(tmp_path) as page:
        page.goto(accounts)
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()  # nothing else without an account
        expect(page.get_by_test_id("stChatInputTextArea")).to_have_count(0)
        _shot(page, tmp_path, "sign-in")
        _sign_in(page, accounts, "ann", "ann-password")
        _ask(page, "How many days of annual leave do full-time employees get?", 2)
        sidebar = page.get_by_test_id("stSidebar")
        page.get_by_role("button", name="New chat").click()
        expect(page.get_by_test_id("stChatMessage")).to_have_count(0)
        _ask(page, QUESTION, 2)
        first = sidebar.get_by_role("button", name=re.compile("How many days of annual leave"))
        expect(first).to_be_visible()
        expect(sidebar.get_by_role("button", name=re.compile("What is the daily meal allowance"))).to_be_visible()

        page.reload()  # the cookie keeps ann signed in; the URL names the open chat
        expect(page.get_by_test_id("stSidebar")).to_contain_text("Signed in as ann")
        messages = page.get_by_test_id("stChatMessage")
        expect(messages.nth(0)).to_contain_text(QUESTION)
        first.click()
        expect(messages.nth(0)).to_contain_text("How many days of annual leave")
        cited = messages.nth(1).get_by_test_id("stExpander").filter(has=page.locator("summary", has_text="[")).first
        cited.locator("summary").click()
        expect(cited.locator("mark").first).to_be_visible()  # the citation restored from SQLite
        _shot(page, tmp_path, "restored")

        page.get_by_role("link", name="Documents").click()
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
            files=[{"name": "zeppelin parking.md", "mimeType": "text/markdown", "buffer": ZEPPELIN}]
        )
        page.get_by_role("button", name="Ingest uploaded files").click()
        expect(page.get_by_test_id("stAlert").filter(has_text="zeppelin_parking.md: ingested")).to_be_visible()
        page.get_by_role("link", name="Chat").click()
        expect(page.get_by_test_id("stChatMessage").nth(0)).to_contain_text("How many days")  # still open
        page.get_by_role("button", name="New chat").click()
        expect(page.get_by_test_id("stChatMessage")).to_have_count(0)
        _ask(page, "Where do visitors park their zeppelins?", 2)
        answer = page.get_by_test_id("stChatMessage").nth(1)
        expect(answer.get_by_test_id("stExpander").filter(has_text="zeppelin_parking.md").first).to_be_visible()
        _shot(page, tmp_path, "uploaded")


def test_admin_runs_an_evaluation_in_the_background_in_chromium(accounts, home, tmp_path):
    import json

    from playwright.sync_api import expect

    rows = [json.loads(line) for line in (ROOT / "examples" / "eval" / "qa.jsonl").read_text().splitlines()]
    mine = [r for r in rows if r.get("source") in ("annual-leave.md", "company-faq.txt")][:3]
    (home / "eval").mkdir(exist_ok=True)
    (home / "eval" / "smoke.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mine), encoding="utf-8")
    with _browser(tmp_path, height=2400) as page:
        _sign_in(page, accounts, "ada", "ada-password")
        page.get_by_role("link", name="Evaluation").click()
        # the data dir's own suite comes first
        expect(page.get_by_role("combobox", name="Cases")).to_have_value("smoke.jsonl (data dir)")
        page.get_by_role("button", name="Run evaluation").click()
        expect(page.get_by_test_id("stAlert").filter(has_text="Evaluation job")).to_be_visible()
        expect(page.get_by_test_id("stProgress").first).to_be_visible()  # the page did not wait for it
        _shot(page, tmp_path, "eval-running")
        expect(page.get_by_text(re.compile(r"Run \w{8} stored: \d+ items"))).to_be_visible(timeout=150_000)
        expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible()
        page.wait_for_timeout(1000)  # let the chart draw
        _shot(page, tmp_path, "eval-done")


def test_a_random_models_reply_is_not_shown_as_the_answer_in_chromium(accounts, tmp_path):
    """A tiny random Llama chosen in the sidebar (a real hf generator): its gibberish cites nothing,
    so the guard's labelled extractive answer is shown, the attempt behind a click."""
    import json

    from playwright.sync_api import expect

    from assistant.engine import GUARD_LABEL
    from tests.tiny_llm import make_tiny_llm

    tiny = make_tiny_llm(tmp_path / "tiny-random-llm")
    conf = json.loads((tiny / "config.json").read_text())
    conf["max_position_embeddings"] = 4096  # room for the grounded prompt
    (tiny / "config.json").write_text(json.dumps(conf))
    with _browser(tmp_path) as page:
        _sign_in(page, accounts, "ann", "ann-password")
        _choose(page, "Answering", "Generator", "hf")
        model = page.get_by_role("textbox", name="Model", exact=True)
        model.fill(str(tiny))
        model.press("Enter")
        expect(model).to_have_value(str(tiny))
        page.get_by_role("button", name="New chat").click()
        _ask(page, "How many days of annual leave do full-time employees get?", 2)
        answer = page.get_by_test_id("stChatMessage").nth(1)
        expect(answer.get_by_test_id("stAlert")).to_contain_text(GUARD_LABEL)
        expect(answer).to_contain_text("25 working days")
        expect(answer).to_contain_text("tiny-random-llm")  # the model by its name, not its path
        expect(answer).not_to_contain_text(str(tmp_path))
        attempt = answer.get_by_test_id("stExpander").filter(has_text="The model's attempt").first
        attempt.locator("summary").click()
        expect(attempt).to_contain_text("Not shown as the answer because")
        expect(attempt.get_by_test_id("stMarkdownContainer").last).not_to_be_empty()
        page.wait_for_timeout(500)  # let the expander finish opening
        _shot(page, tmp_path, "guarded")
