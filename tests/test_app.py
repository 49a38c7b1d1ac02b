"""The web app, page by page, through Streamlit's AppTest (no browser): real engine, real SQLite,
real Chroma over the handbook, the extractive generator (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.apptest import ROOT, point_app_at
from tests.apptest import new_app as _app
from tests.apptest import ok as _ok

QUESTION = "How many days of annual leave do full-time employees get?"


@pytest.fixture(scope="module")
def home(tmp_path_factory, embedder):
    """A data dir holding the handbook, answering extractively."""
    from retrieval.ingest import ingest
    from tether.config import load_config

    root = tmp_path_factory.mktemp("app-home")
    (root / "tether.yaml").write_text("assistant:\n  generator: extractive\n", encoding="utf-8")
    summary = ingest(load_config(root), [ROOT / "examples" / "handbook"], embedder=embedder)
    assert not summary.failed
    return root


@pytest.fixture(autouse=True)
def _app_env(_isolated_home, home, monkeypatch):
    point_app_at(monkeypatch, home)


def _page(at, name: str):
    at.switch_page(f"app/ui/pages/{name}.py").run()
    _ok(at)
    return at


def _frame(at, column: str):
    """The first table on the page that has this column."""
    for df in at.dataframe:
        if column in df.value.columns:
            return df.value
    raise AssertionError(f"no table with a {column!r} column")


def _store(home):
    from assistant.logstore import LogStore

    return LogStore(home / "tether.db")


def _wait_job(home, method: str, timeout: float = 180) -> dict:
    """The newest background job of ``method`` once it has finished."""
    import time

    from training.registry import TrainingStore

    deadline = time.monotonic() + timeout
    while True:
        with TrainingStore.open(home / "tether.db") as store:
            rows = [r for r in store.list_jobs() if r["method"] == method]
        if rows and rows[0]["status"] in ("done", "failed", "interrupted"):
            return rows[0]
        assert time.monotonic() < deadline, rows
        time.sleep(0.5)


# -- chat ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asked(home):
    """One app session that asked QUESTION (shared by the chat tests: AppTest runs are slow)."""
    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse fixture has not run yet
        mp.setenv("TETHER_HOME", str(home))
        at = _app().run()
        _ok(at)
        at.chat_input(key="question").set_value(QUESTION).run()
        _ok(at)
    return at


def test_chat_answers_with_a_cited_passage_highlighted(asked):
    at = asked
    answer = at.session_state.history[-1]["answer"]
    assert not answer.refused and answer.citations
    assert "25 working days" in answer.text  # annual-leave.md
    texts = [m.value for m in at.markdown]
    assert any("**\\[1\\]**" in t or "**\\[2\\]**" in t for t in texts), texts  # inline [n] markers
    labels = [e.label for e in at.expander]
    first = answer.citations[0]
    hit = answer.passages[first.n - 1]
    assert any(
        label.startswith(f"[{first.n}] ") and hit.source in label and (hit.date or "") in label for label in labels
    ), labels
    marked = [h.value for h in at.html if "<mark>" in h.value]
    assert marked, "no passage with a highlighted span"
    support = " ".join(first.support.split())
    assert any(support[:40] in " ".join(v.split()) for v in marked)
    assert any("grounded" in m.value for m in at.markdown)  # the groundedness badge


def test_feedback_is_stored_by_turn_id(asked, home):
    at = asked
    answer = at.session_state.history[-1]["answer"]
    at.feedback[0].set_value(0).run()  # thumbs down
    _ok(at)
    at.text_area(key=f"edit_{answer.turn_id}").set_value("Full-time employees get 25 working days of annual leave [1].")
    at.button(key=f"save_edit_{answer.turn_id}").click().run()
    _ok(at)
    at.selectbox(key=f"src_{answer.turn_id}").set_value(0)
    at.button(key=f"save_src_{answer.turn_id}").click().run()
    _ok(at)
    stored = _store(home).turn(answer.turn_id)["feedback"]
    kinds = [f["kind"] for f in stored]
    assert kinds == ["down", "edit", "source"], kinds
    assert stored[1]["edited_answer"].startswith("Full-time employees get 25 working days")
    assert stored[2]["passage_id"] == answer.passages[0].id
    assert any("Feedback stored" in c.value for c in at.caption)


def test_multi_turn_history_and_new_chat(asked):
    at = asked
    before = len(at.session_state.history)
    at.chat_input(key="question").set_value("And how many days can be carried over?").run()
    _ok(at)
    history = at.session_state.history
    assert len(history) == before + 1
    assert history[-1]["answer"].conversation_id == history[0]["answer"].conversation_id
    assert len(at.chat_message) == 2 * len(history)  # every turn stays on the page
    at.button(key="new_chat").click().run()
    _ok(at)
    assert at.session_state.history == [] and not at.chat_message


class _SecondThoughts:
    """A CAD-capable fake LLM: a wrong first attempt; the right answer when asked for CAD."""

    FIRST = "Full-time employees get 97 days of annual leave [1]."
    SECOND = "Full-time employees get 25 working days of paid annual leave."

    def __init__(self):
        from assistant.generators.base import Capabilities, GeneratorIdentity

        self.capabilities = Capabilities(cad=True)
        self.identity = GeneratorIdentity("fake", "second-thoughts")

    def stream(self, messages, params):
        head, tail = (self.SECOND if params.cad_alpha else self.FIRST).split(" ", 1)
        yield head
        yield " " + tail


def test_chat_shows_the_replaced_text_not_the_first_attempt(monkeypatch):
    """cad=auto regenerates a poorly grounded reply: the engine emits a Replace, and the page
    shows the new attempt (it used to join every stream item as text and raise TypeError)."""
    from app.ui import resources
    from assistant.engine import ChatEngine
    from assistant.events import Replace

    replaced = []

    def engine(cfg):
        e = ChatEngine(cfg.with_assistant(cad="auto"), searcher=resources.searcher(cfg), generator=_SecondThoughts())
        stream = e.stream

        def watched(question, conversation=None):
            for event in stream(question, conversation):
                replaced.extend([event] if isinstance(event, Replace) else [])
                yield event

        e.stream = watched
        return e

    monkeypatch.setattr(resources, "engine", engine)
    at = _app().run()
    _ok(at)
    at.chat_input(key="question").set_value(QUESTION).run()
    _ok(at)
    assert len(replaced) == 1 and replaced[0].text == "" and "context-aware decoding" in replaced[0].reason
    answer = at.session_state.history[-1]["answer"]
    assert "25 working days" in answer.text and "97 days" not in answer.text and answer.generator.backend == "fake"
    shown = " ".join(m.value for m in at.markdown)
    assert "25 working days" in shown and "97 days" not in shown


class _Looping:
    """A fake LLM that loops, as SmolLM2 did in issue 15: the guard must keep it off the screen."""

    LOOP = 'is the one that says "line manager" '

    def __init__(self):
        from assistant.generators.base import Capabilities, GeneratorIdentity

        self.capabilities = Capabilities()
        self.identity = GeneratorIdentity("fake", "/models/private/looping-llm")

    def stream(self, messages, params):
        yield "The approver "
        for _ in range(20):
            yield self.LOOP


def _fake_engine(monkeypatch, generator, **assistant):
    from app.ui import resources
    from assistant.engine import ChatEngine

    def engine(cfg):
        return ChatEngine(cfg.with_assistant(**assistant), searcher=resources.searcher(cfg), generator=generator)

    monkeypatch.setattr(resources, "engine", engine)


def _answer_shown(at) -> str:
    """The answer's own text on the page: the assistant message's markdown outside any expander."""
    message = at.chat_message[-1]
    inside = {id(m) for e in message.get("expander") for m in e.markdown}
    return " ".join(m.value for m in message.markdown if id(m) not in inside)


def test_a_degenerate_reply_never_reaches_the_screen_as_the_answer(monkeypatch, home):
    """The guard replaces a looping reply by the labelled extractive answer; the model's attempt is
    one click away (an expander), logged as rejected, and restored the same way from the log."""
    from app.ui.chat_view import ATTEMPT_LABEL
    from assistant.engine import GUARD_LABEL

    _fake_engine(monkeypatch, _Looping())
    at = _app().run()
    _ok(at)
    at.chat_input(key="question").set_value("Who approves business trips?").run()
    _ok(at)
    answer = at.session_state.history[-1]["answer"]
    assert answer.rejected is not None and "repeats itself" in " ".join(answer.rejected.reasons)
    assert "line manager" not in answer.text or _Looping.LOOP.strip() not in answer.text
    shown = _answer_shown(at)
    assert _Looping.LOOP.strip()[:20] not in shown and answer.text[:30] in shown.replace("\\", "")
    assert any(GUARD_LABEL in i.value for i in at.info)
    attempt = next(e for e in at.chat_message[-1].get("expander") if e.label == ATTEMPT_LABEL)
    assert "line manager" in " ".join(m.value for m in attempt.markdown).replace("\\", "")
    captions = " ".join(c.value for c in at.caption).replace("\\", "")
    assert "looping-llm" in captions and "/models/private" not in captions  # the model by name, not by path
    assert _store(home).turn(answer.turn_id)["rejected"]["text"].count(_Looping.LOOP.strip()) == 20

    reload = _app()
    reload.query_params["c"] = answer.conversation_id
    reload.run()
    _ok(reload)
    restored = reload.session_state.history[-1]["answer"]
    assert restored.rejected is not None and restored.text == answer.text
    assert _Looping.LOOP.strip()[:20] not in _answer_shown(reload)
    assert any(e.label == ATTEMPT_LABEL for e in reload.expander)


def test_a_looping_draft_streams_collapsed_and_is_dropped_when_the_guard_replaces_it(monkeypatch):
    """While the model writes, its unchecked tokens stream into a collapsed, greyed status area
    (never the answer area); the guard's Replace removes them from it; once the answer is final the
    draft area is gone and the loop is only inside the closed attempt expander."""
    from streamlit.delta_generator import DeltaGenerator

    from app.ui import draft_view
    from app.ui.chat_view import ATTEMPT_LABEL

    drawn: list[draft_view.DraftState] = []
    draw = draft_view.DraftView._draw

    def recorded(self, state):
        drawn.append(state)
        draw(self, state)

    monkeypatch.setattr(draft_view.DraftView, "_draw", recorded)
    status = DeltaGenerator.status
    opened = []

    def status_recorded(self, label, *, expanded=False, state="running", **kw):
        opened.append(expanded)
        return status(self, label, expanded=expanded, state=state, **kw)

    monkeypatch.setattr(DeltaGenerator, "status", status_recorded)
    _fake_engine(monkeypatch, _Looping())
    at = _app().run()
    _ok(at)
    at.chat_input(key="question").set_value("Who approves business trips?").run()
    _ok(at)
    loop = _Looping.LOOP.strip()[:20]
    assert opened == [False]  # one draft area, drawn collapsed
    looping = [s for s in drawn if loop in s.body.replace("\\", "")]
    assert len(looping) >= 10  # the draft streamed token by token, inside the collapsed area only
    assert all(loop not in s.label + s.progress for s in drawn)  # the visible lines never quote the reply
    assert {s.label for s in looping} == {draft_view.DRAFTING}  # constant: an area the user opened stays open
    assert looping[-1].progress.endswith("words so far")
    assert drawn[-1] == draft_view.DraftState(draft_view.GUARDED, "", "", "error")  # the guard's Replace: dropped
    assert not at.status  # the final answer replaced the draft area
    answer = at.session_state.history[-1]["answer"]
    assert answer.rejected is not None
    assert loop not in _answer_shown(at)
    attempt = next(e for e in at.chat_message[-1].get("expander") if e.label == ATTEMPT_LABEL)
    assert not attempt.proto.expanded and loop in " ".join(m.value for m in attempt.markdown).replace("\\", "")


def test_draft_state_names_what_happens_without_quoting_a_replaced_reply():
    from app.ui.draft_view import DRAFTING, GUARDED, DraftState, draft_state
    from assistant.engine import CAD_RETRY, GUARD_LABEL
    from assistant.events import Replace

    assert draft_state("", []) == DraftState(DRAFTING, "0 words so far", "")
    assert draft_state(" Trips", []).progress == "1 word so far"
    assert draft_state("Trips need [1] <b>", []).body == "Trips need \\[1\\] \\<b\\>"  # escaped Markdown
    cad = Replace("", CAD_RETRY.format(g=0.2, min=0.5))
    revised = draft_state("Line managers approve", [cad])
    assert revised.label.startswith("Draft revised (") and revised.progress == "3 words so far"
    assert "context\\-aware decoding" in revised.label and revised.body == "Line managers approve"
    guard = Replace("Business trips are approved by the line manager [1].", GUARD_LABEL + " (it repeats itself)")
    assert draft_state(guard.text, [cad, guard]) == DraftState(GUARDED, "", "", "error")


def test_a_tiny_random_model_answers_through_the_guard(home, tmp_path_factory):
    """A real hf generator (a tiny random Llama) chosen in the sidebar: its gibberish cites nothing,
    so the page shows the extractive answer, labelled, with citations; the attempt is logged."""
    import json

    from tests.tiny_llm import make_tiny_llm

    tiny = make_tiny_llm(tmp_path_factory.mktemp("tiny-chat"))
    conf = json.loads((tiny / "config.json").read_text())
    conf["max_position_embeddings"] = 4096  # room for the grounded prompt
    (tiny / "config.json").write_text(json.dumps(conf))
    at = _app()
    at.session_state["opt_generator"] = "hf"  # as if chosen in the sidebar (one run: no SmolLM2 loads meanwhile)
    at.session_state["opt_model"] = str(tiny)
    at.run()
    _ok(at)
    at.chat_input(key="question").set_value(QUESTION).run(timeout=300)
    _ok(at)
    answer = at.session_state.history[-1]["answer"]
    assert answer.generator.backend == "hf" and not at.sidebar.warning  # the model loaded: no fallback
    assert answer.rejected is not None, answer.text
    assert "25 working days" in answer.text and answer.citations
    assert "25 working days" in _answer_shown(at)
    captions = " ".join(c.value for c in at.caption).replace("\\", "")
    assert tiny.name in captions and str(tiny.parent) not in captions
    assert _store(home).turn(answer.turn_id)["rejected"]["text"] == answer.rejected.text


def test_conflict_panel_follows_the_sidebar_policy(home):
    """c01 in examples/eval: EUR 45 (2022, superseded) against EUR 60 (2024)."""
    at = _app().run()
    _ok(at)
    at.selectbox(key="opt_policy").set_value("prefer-recent")
    at.chat_input(key="question").set_value("What is the daily meal allowance for a business trip inside the EU?").run()
    _ok(at)
    answer = at.session_state.history[-1]["answer"]
    assert answer.policy == "prefer-recent" and answer.conflicts
    assert _store(home).turn(answer.turn_id)["policy"] == "prefer-recent"
    panel = [e for e in at.expander if e.label.startswith("⚠ The sources disagree")]
    assert len(panel) == 1
    cards = [h.value for h in panel[0].get("html")]
    pairs = {frozenset(c.source for c in conflict.claims) for conflict in answer.conflicts}
    assert frozenset({"travel-expenses-2022.md", "travel-expenses-2024.pdf"}) in pairs
    assert any("travel-expenses-2022.md" in c for c in cards) and any("travel-expenses-2024.pdf" in c for c in cards)
    c01 = next(
        i
        for i, c in enumerate(answer.conflicts)
        if {cl.source for cl in c.claims} == {"travel-expenses-2022.md", "travel-expenses-2024.pdf"}
    )
    decision = answer.decisions[c01]
    assert answer.conflicts[c01].claims[decision.winner].source == "travel-expenses-2024.pdf"  # the more recent one
    assert any("✔ followed" in c and "travel-expenses-2024.pdf" in c for c in cards)
    assert any("policy prefer-recent" in c.value for c in panel[0].caption)


# -- documents ----------------------------------------------------------------------------------

BAIT = b"""---
title: Zeppelin Parking Rules
date: 2025-04-01
authority: team
---
# Zeppelin parking

Visitors park their zeppelins on mooring mast 7 behind the Brno office.
<script>alert('x')</script> <img src=x onerror=alert(1)> Mooring costs 12 euros per hour.
"""


def test_upload_ingest_ask_and_delete(home):
    from app.ui import library
    from tether.config import load_config

    at = _page(_app().run(), "documents")
    at.file_uploader(key="uploads").set_value(
        [
            ("../../zeppelin parking?.md", BAIT, "text/markdown"),
            ("broken.pdf", b"%PDF-1.4 not really a pdf", "application/pdf"),
            ("empty.txt", b"", "text/plain"),
        ]
    ).run()
    at.button(key="ingest").click().run()
    _ok(at)
    saved = home / "uploads" / "zeppelin_parking.md"
    assert saved.read_bytes() == BAIT
    assert sorted(p.name for p in (home / "uploads").iterdir()) == [
        "zeppelin_parking.md"
    ]  # failed uploads are not kept
    assert not (home.parent / "zeppelin parking?.md").exists()
    assert [p.value for p in at.get("progress")] == [100]  # the bar ran to the end
    assert any("zeppelin_parking.md: ingested" in s.value for s in at.success)
    errors = at.dataframe[0].value  # the per-file error list
    assert dict(zip(errors["file"], errors["status"])) == {"empty.txt": "rejected", "broken.pdf": "failed"}
    docs = {d.source: d for d in library.documents(load_config(home))}
    assert docs["zeppelin_parking.md"].authority == "team" and docs["zeppelin_parking.md"].n_chunks >= 1

    at = _app().run()
    at.chat_input(key="question").set_value("Where do visitors park their zeppelins?").run()
    _ok(at)
    answer = at.session_state.history[-1]["answer"]
    assert any(answer.passages[c.n - 1].source == "zeppelin_parking.md" for c in answer.citations), (
        answer.text,
        answer.refused,
        [h.source for h in answer.passages],
        [(c.n, c.source) for c in answer.citations],
    )
    page = "".join(h.value for h in at.html)
    assert "<script>" not in page and "<img" not in page  # document HTML is shown as text, never run
    assert "&lt;script&gt;" in page or "zeppelin" in page.lower()

    at = _page(_app().run(), "documents")
    at.selectbox(key="doc_pick").set_value("zeppelin_parking.md")
    at.button(key="delete").click().run()
    at.button(key="confirm_delete_btn").click().run()
    _ok(at)
    assert "zeppelin_parking.md" not in {d.source for d in library.documents(load_config(home))}
    assert not saved.exists()
    assert any("Deleted zeppelin_parking.md" in s.value for s in at.success)


def test_metadata_edit_reaches_search(home, embedder):
    from app.ui import library
    from retrieval.search import Searcher
    from tether.config import load_config
    from tether.errors import TetherError

    cfg = load_config(home)
    before = {d.source: d for d in library.documents(cfg)}["company-faq.txt"]
    try:
        library.set_metadata(cfg, library.MetadataEdit("company-faq.txt", "2025-01-21", "current", "official"))
        hits = Searcher(cfg, embedder=embedder).search("When is payday?", k=3)
        faq = [h for h in hits if h.source == "company-faq.txt"]
        assert faq and faq[0].authority == "official" and faq[0].date == "2025-01-21"
        with pytest.raises(TetherError, match="authority 'boss'"):
            library.set_metadata(cfg, library.MetadataEdit("company-faq.txt", None, None, "boss"))
    finally:
        library.set_metadata(
            cfg, library.MetadataEdit("company-faq.txt", before.doc_date, before.status, before.authority)
        )


@pytest.mark.parametrize(
    "given, expected",
    [
        ("report.md", "report.md"),
        ("../../etc/passwd.txt", "passwd.txt"),
        ("C:\\Users\\me\\Notes 2024.DOCX", "Notes_2024.docx"),
        (".hidden.html", "hidden.html"),
        ("Ünïcödé résumé.pdf", "Ünïcödé_résumé.pdf"),  # letters of any script are kept (tests/test_uploads.py)
        ("con.txt", "file_con.txt"),
    ],
)
def test_upload_names_are_sanitised(given, expected):
    from app.ui.uploads import sanitize_filename

    assert sanitize_filename(given) == expected


@pytest.mark.parametrize("bad", ["run.sh", "noext", "...", "x.meta.yaml", "/"])
def test_upload_rejects_unsupported_names(bad, tmp_path):
    from app.ui.uploads import UploadRejected, save_upload

    with pytest.raises(UploadRejected):
        save_upload(tmp_path, bad, b"data", max_mb=1)
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())


def test_upload_size_limit(tmp_path):
    from app.ui.uploads import UploadRejected, save_upload

    with pytest.raises(UploadRejected, match="over the 0.001 MB limit"):
        save_upload(tmp_path, "big.txt", b"x" * 2000, max_mb=0.001)
    assert (
        save_upload(tmp_path, "small.txt", b"x" * 100, max_mb=0.001).path
        == (tmp_path / "uploads" / "small.txt").resolve()
    )


# -- admin --------------------------------------------------------------------------------------


def test_admin_without_accounts_or_password_only_offers_to_create_the_admin_account():
    """A fresh install: no account, no admin password. The Admin page offers the first admin
    account (tests/test_app_accounts.py creates one) and shows nothing of the admin's tabs."""
    at = _page(_app().run(), "admin")
    assert {t.key for t in at.text_input} == {"first_admin_user", "first_admin_password", "first_admin_repeat"}
    assert any("Create the admin account" in s.value for s in at.subheader)
    assert not at.tabs and not at.error


def test_admin_refuses_a_wrong_password_and_accepts_the_right_one():
    at = _app()
    at.secrets["admin_password"] = "s3cret-pw"
    at = _page(at.run(), "admin")
    at.text_input(key="admin_password").set_value("guess")
    at.get("form_submit_button")[0].click().run()
    _ok(at)
    assert any("Wrong password" in e.value for e in at.error)
    assert not at.session_state.get("admin_ok")
    at.text_input(key="admin_password").set_value("s3cret-pw")
    at.get("form_submit_button")[0].click().run()
    _ok(at)
    assert at.session_state["admin_ok"] is True
    assert not any("Wrong password" in e.value for e in at.error)


def _admin_session():
    at = _app()
    at.secrets["admin_password"] = "s3cret-pw"
    at = _page(at.run(), "admin")
    at.text_input(key="admin_password").set_value("s3cret-pw")
    at.get("form_submit_button")[0].click().run()
    _ok(at)
    assert at.session_state["admin_ok"] is True
    return at


def _submit(at, label: str) -> None:
    """Press the form button with this label (the Admin page's tabs hold several forms)."""
    next(b for b in at.get("form_submit_button") if b.label == label).click().run()
    _ok(at)


def test_admin_feedback_table_and_datasets(home):
    from assistant.engine import ChatEngine
    from tether.config import load_config

    turn = ChatEngine(load_config(home)).answer("Who approves purchases above the limit?").turn_id
    _store(home).add_feedback(turn, "down", comment="admin-test marker")
    at = _admin_session()
    table = _frame(at, "edited_answer")
    assert "admin-test marker" in set(table["comment"])
    at.multiselect(key="fb_kinds").set_value(["down"]).run()
    _ok(at)
    assert set(_frame(at, "edited_answer")["kind"]) == {"down"}

    at.button(key="ds_build").click().run()
    _ok(at)
    counts = _frame(at, "by source")
    assert list(counts["kind"]) == ["sft", "dpo", "kto"]
    kto = counts.set_index("kind").loc["kto"]
    too_long = int(kto["dropped (dup/near/long)"].split("/")[2])
    assert kto["train"] + kto["eval"] + too_long >= 1, counts.to_dict(
        "records"
    )  # the 👎 above, kept or measured too long
    for kind, path in at.session_state.last_datasets.items():
        assert (Path(path) / "train.jsonl").is_file(), kind


def test_promote_is_blocked_by_the_gate(home, tmp_path_factory):
    """A random tiny model answers worse than the configured (extractive) one: the gate refuses it."""
    import json

    from tests.tiny_llm import make_tiny_llm
    from tether.config import load_config
    from tether.db import connect
    from training import registry

    tiny = make_tiny_llm(tmp_path_factory.mktemp("tiny-llm"))
    conf = json.loads((tiny / "config.json").read_text())
    conf["max_position_embeddings"] = 4096  # room for the grounded prompt (random weights either way)
    (tiny / "config.json").write_text(json.dumps(conf))
    db = connect(home / "tether.db")
    try:
        model_id = registry.register(db, kind="merged", path=tiny, base=str(tiny), method="sft")
    finally:
        db.close()
    rows = [json.loads(line) for line in (ROOT / "examples" / "eval" / "qa.jsonl").read_text().splitlines()[:3]]
    (home / "eval").mkdir(exist_ok=True)
    (home / "eval" / "gate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    try:
        at = _admin_session()
        at.selectbox(key="promote_pick").set_value(model_id)
        at.selectbox(key="promote_suite").set_value("gate.jsonl (data dir)")
        at.text_area(key="promote_held_out").set_value("no-colon-here")
        at.button(key="promote").click().run()
        _ok(at)
        assert any("give DATA_DIR:FILE" in e.value for e in at.error) and not any(
            "Promotion job" in s.value for s in at.success
        )
        # a held-out corpus (here the same data dir, for speed): its two runs are part of the job
        at.text_area(key="promote_held_out").set_value(f"{home}:{home / 'eval' / 'gate.jsonl'}")
        at.button(key="promote").click().run()
        _ok(at)
        assert any("Promotion job" in s.value for s in at.success), [e.value for e in at.error]
        job = _wait_job(home, "promote", timeout=300)  # in the background: the page did not wait
        assert job["status"] == "failed" and job["result"]["refused"], job
        db = connect(home / "tether.db")
        try:
            labels = {r[0].split(":")[0] for r in db.execute("SELECT label FROM eval_runs")}
        finally:
            db.close()
        assert {"held-out candidate", "held-out baseline"} <= labels
        at.run()
        _ok(at)
        assert any("Promotion refused by the gate" in e.value for e in at.error), [e.value for e in at.error]
        assert _frame(at, "regressed")["regressed"].any()  # the gate's rows
        db = connect(home / "tether.db")
        try:
            assert not registry.get_model(db, model_id).promoted
        finally:
            db.close()
        assert registry.promoted_model(load_config(home)) is None
    finally:
        (home / "eval" / "gate.jsonl").unlink()


# -- evaluation ---------------------------------------------------------------------------------


def test_evaluation_runs_the_conflict_suite_and_charts_it(home):
    from assistant.evaluation.runs import list_runs, load_run, store_run

    baseline = store_run(  # a perfect earlier run to compare with
        home / "tether.db",
        suite=str(ROOT / "examples" / "eval" / "handbook_conflicts.jsonl"),
        suite_hash="earlier",
        label="ui-perfect",
        suites=["conflicts"],
        collection=None,
        generator={"backend": "extractive", "model": "", "decoding": ""},
        config={},
        corpus_hash="earlier",
        git_commit=None,
        metrics={"conflicts.f1": 1.0},
        details={},
        items=[],
    )
    at = _page(_app().run(), "evaluation")
    at.selectbox(key="eval_suite").set_value("handbook conflicts (examples/eval/handbook_conflicts.jsonl)")
    at.multiselect(key="eval_suites").set_value(["conflicts"])
    at.text_input(key="eval_label").set_value("ui-conflicts")
    at.button(key="eval_run").click().run()
    _ok(at)
    assert any("Evaluation job" in s.value for s in at.success)
    assert at.get("progress")  # the job is listed at once, with its progress bar
    job = _wait_job(home, "eval", timeout=300)
    assert job["status"] == "done" and job["step"] == job["total_steps"] == 1, job
    at.run()  # the page polls the job table; a finished job's run is charted
    _ok(at)
    runs = [r for r in list_runs(home / "tether.db") if r.label == "ui-conflicts"]
    assert len(runs) == 1 and job["result"]["run_id"] == runs[0].run_id
    run = load_run(home / "tether.db", runs[0].run_id)
    assert any(k.startswith("conflicts.") for k in run.metrics)
    charts = at.get("vega_lite_chart")
    assert charts  # the gate metrics per model version
    assert {m.label for m in at.metric} >= {
        k.removeprefix("conflicts.") for k in sorted(run.metrics) if k.startswith("conflicts.")
    }
    mis = run.details["conflicts"].get("misclassified") or []
    assert any(m.value == f"**Misclassified cases: {len(mis)}**" for m in at.markdown)
    assert at.selectbox(key="fail_run").value == run.run_id  # the finished job's run is the one listed
    assert any(m.value.startswith("**Failing QA cases: ") for m in at.markdown)
    at.selectbox(key="cmp_a").set_value(baseline.run_id).run()
    _ok(at)
    assert at.selectbox(key="cmp_b").value == run.run_id  # B: the run just made
    compared = _frame(at, "verdict").set_index("metric")
    f1 = compared.loc["conflicts.f1"]
    assert f1["A"] == 1.0 and f1["verdict"] == ("regressed" if f1["B"] < 0.98 else "")
    assert any("different case files" in w.value for w in at.warning)  # not like for like: said so


def test_an_empty_knowledge_base_explains_upload(tmp_path, monkeypatch):
    (tmp_path / "tether.yaml").write_text("assistant:\n  generator: extractive\n", encoding="utf-8")
    monkeypatch.setenv("TETHER_HOME", str(tmp_path))
    at = _app().run()
    _ok(at)
    assert any("knowledge base is empty" in i.value for i in at.info)
    assert any("Upload" in m.value and "Ingest uploaded files" in m.value for m in at.markdown)
    assert not at.chat_input  # nothing to ask yet


@pytest.mark.slow
def test_training_job_runs_in_the_background_and_survives_a_reload(home, tmp_path_factory):
    """Launch SFT on a tiny model from the Admin page, then open a fresh session (a reload): the
    job is listed from the database with its progress, log and loss chart."""
    import json
    import time

    from tests.tiny_llm import make_tiny_llm
    from tether.db import connect
    from training.jobs import list_jobs

    tiny = make_tiny_llm(tmp_path_factory.mktemp("tiny-base"))
    conf = json.loads((tiny / "config.json").read_text())
    conf["max_position_embeddings"] = 4096
    (tiny / "config.json").write_text(json.dumps(conf))
    dataset = tmp_path_factory.mktemp("sft-data")
    row = {
        "messages": [
            {"role": "user", "content": "How many days of annual leave?"},
            {"role": "assistant", "content": "25 working days [1]."},
        ]
    }
    (dataset / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for _ in range(4)), encoding="utf-8")
    (dataset / "eval.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")

    at = _admin_session()
    at.text_input(key="tr_dataset").set_value(str(dataset))
    at.text_input(key="tr_base").set_value(str(tiny))
    at.number_input(key="tr_steps").set_value(3)
    _submit(at, "Launch training")
    _ok(at)
    assert any("Started sft" in s.value for s in at.success), [e.value for e in at.error]
    deadline = time.monotonic() + 180
    while True:
        db = connect(home / "tether.db")
        try:
            jobs = list_jobs(db)
        finally:
            db.close()
        jobs = [j for j in jobs if j["method"] == "sft"]  # the module's eval and promote jobs are listed too
        if jobs and jobs[0]["status"] in ("done", "failed", "interrupted"):
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(1)
    job = jobs[0]
    console = Path(job["output_dir"]) / "console.log"
    assert job["status"] == "done", (job, console.read_text()[-2000:] if console.exists() else "")
    assert job["step"] == 3 and job["model_id"]

    at = _admin_session()  # a new session: nothing of the launch is left in session state
    table = _frame(at, "step")
    assert table.iloc[0]["status"] == "done" and table.iloc[0]["step"] == "3/3"
    assert at.get("arrow_line_chart") or at.get("vega_lite_chart")  # the loss chart
    assert any("step" in c.value for c in at.code)  # the log tail


@pytest.mark.slow
def test_detector_training_runs_in_the_background_from_the_admin_page(home):
    """`tether train detector` from the Admin page's Detector tab: a detached job (pairs from the
    handbook's claims, a few steps of the CrossEncoder, the gate) listed with its progress, loss
    curve and log, then its result (registered, gate verdict) once it is done."""
    import json
    import time

    from training.registry import TrainingStore

    at = _admin_session()
    at.number_input(key="det_pairs").set_value(60)
    at.number_input(key="det_steps").set_value(3)
    at.checkbox(key="det_promote").uncheck()
    _submit(at, "Train the conflict detector")
    assert any("Started the detector training" in s.value for s in at.success), [e.value for e in at.error]
    deadline, seen_running = time.monotonic() + 400, False
    while True:
        with TrainingStore.open(home / "tether.db") as store:
            rows = [j for j in store.list_jobs() if j["method"] == "detector"]
        if rows and rows[0]["status"] in ("done", "failed", "interrupted"):
            break
        if rows and not seen_running:  # listed while it runs, the page not waiting for it
            at.run()
            _ok(at)
            seen_running = any(
                "detector" in set(df.value.get("method", ())) and "running" in set(df.value["status"])
                for df in at.dataframe
            )
        assert time.monotonic() < deadline, rows
        time.sleep(1)
    job = rows[0]
    console = Path(job["output_dir"]) / "console.log"
    assert job["status"] == "done", (job, console.read_text()[-3000:] if console.exists() else "")
    assert seen_running
    assert job["step"] == job["total_steps"] == 3 and json.loads(job["config_json"])["max_pairs"] == 60
    result = job["result"]
    assert result["detector_id"] and "passed" in result["gate"]

    from app.ui import jobs

    assert [r["step"] for r in jobs.detector_loss_records(job["log_path"])] == [1, 2, 3]
    at = _admin_session()  # a reload: the job is read back from the database
    table = next(
        df.value for df in at.dataframe if "method" in df.value.columns and "detector" in set(df.value["method"])
    )
    detector_row = table.iloc[0]
    assert detector_row["status"] == "done" and detector_row["step"] == "3/3"
    assert any(s.value.startswith(f"Registered {result['detector_id']}; gate ") for s in at.success)
    assert at.get("arrow_line_chart") or at.get("vega_lite_chart")  # the loss curve
    detectors = _frame(at, "classifier F1 (dev)")
    assert result["detector_id"] in set(detectors["id"])
    with TrainingStore.open(home / "tether.db") as store:
        assert store.promoted_detector() is None  # "Promote" was unchecked


def test_adapt_form_launches_the_background_job_with_its_settings(home, monkeypatch):
    """The Adapt tab hands `tether train adapt`'s runner the form's settings and the collection's
    run folder (the CLI's default, so either resumes the other); the page does not wait for it."""
    from app.ui import jobs

    launched: list[tuple] = []
    monkeypatch.setattr(
        jobs, "launch", lambda data_dir, method, settings: launched.append((method, settings)) or (4242, Path("c"))
    )
    at = _admin_session()
    at.number_input(key="adapt_q").set_value(60)
    at.number_input(key="adapt_minutes").set_value(2.5)
    at.selectbox(key="adapt_pref").set_value("kto")
    at.checkbox(key="adapt_promote").uncheck()
    _submit(at, "Adapt the model to this knowledge base")
    assert any("Started adapting the model (pid 4242)" in s.value for s in at.success), [e.value for e in at.error]
    [(method, settings)] = launched
    assert method == jobs.ADAPT
    assert settings["questions"] == 60 and settings["sft_minutes"] == 2.5 and settings["preference"] == "kto"
    assert settings["promote"] is False and settings["base_model"] == "smollm2"
    assert Path(settings["output_dir"]) == Path(home) / "models" / "adapt-tether"
    assert jobs.adapt_config(settings["output_dir"], settings).preference_questions == 40


def test_adapt_settings_are_checked_before_anything_starts(tmp_path):
    from app.ui import jobs
    from tether.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        jobs.adapt_config(tmp_path, {"questions": 4, "backtranslate": 9, "near_miss": 1.5})
    assert "--backtranslate (9) must not exceed --questions (4)" in str(err.value) and "--near-miss" in str(err.value)


@pytest.mark.slow
def test_adapt_runs_in_the_background_and_its_result_is_shown(home, tmp_path_factory):
    """The Admin page's adapt job for real, as the page launches it (a detached process), on a tiny
    random base model: it records its stages as steps, ends done with the model it registered, and
    a fresh session lists it with its result."""

    from app.ui import jobs
    from tests.tiny_llm import make_tiny_llm
    from training.registry import TrainingStore

    tiny = make_tiny_llm(tmp_path_factory.mktemp("tiny-adapt"), max_positions=4096)
    settings = {
        "base_model": str(tiny),
        "questions": 12,
        "backtranslate": 0,
        "conflicts": 1,
        "counterfactuals": 1,
        "gate_questions": 2,
        "sft_minutes": 2.0,
        "preference": "kto",
        "preference_questions": 2,
        "preference_minutes": 1.0,
        "batch_size": 2,
        "max_length": 4096,
        "lora_r": 4,
        "device": "cpu",
        "promote": False,
        "output_dir": str(Path(home) / "models" / "adapt-app-test"),
    }
    jobs.launch(home, jobs.ADAPT, settings)
    job = _wait_job(home, "adapt", timeout=400)
    with TrainingStore.open(home / "tether.db") as store:
        models = {m.id for m in store.list_models()}
    console = Path(settings["output_dir"]) / "console.log"
    assert job["status"] == "done", (job, console.read_text()[-3000:] if console.exists() else "")
    assert job["step"] == job["total_steps"] == 6  # one step per stage
    result = job["result"]
    assert result["model_id"] in models and result["promoted"] is False
    assert "adapt" in (Path(settings["output_dir"]) / "train.log").read_text()  # the engine's log lines
    at = _admin_session()  # a fresh session reads the job back from the database
    assert any(s.value.startswith(f"Trained {result['model_id']} in ") for s in at.success)
    with TrainingStore.open(home / "tether.db") as store:
        assert store.served_id() != result["model_id"]  # "promote" was off
