"""Accounts in the web app, through Streamlit's AppTest: a fresh install used by the local user
creates its admin account from the page; sign-in is required from then on; each user sees only
their own conversations (open, rename, delete), every turn and feedback carries its user, and an
admin reads everyone's. The session token (app/ui/auth.py) is checked on its own below."""

from __future__ import annotations

import os
import stat

import pytest

from tests.apptest import ROOT, point_app_at
from tests.apptest import new_app as _app
from tests.apptest import ok as _ok
from tether.passwords import ScryptParams

FAST = ScryptParams(n=2**10, r=8, p=1)  # accounts made by the tests directly; the page hashes at full cost
QUESTION = "How many days of annual leave do full-time employees get?"


@pytest.fixture(scope="module")
def home(tmp_path_factory, embedder):
    from retrieval.ingest import ingest
    from tether.config import load_config

    root = tmp_path_factory.mktemp("accounts-home")
    (root / "tether.yaml").write_text("assistant:\n  generator: extractive\n", encoding="utf-8")
    handbook = ROOT / "examples" / "handbook"
    assert not ingest(
        load_config(root), [handbook / "annual-leave.md", handbook / "company-faq.txt"], embedder=embedder
    ).failed
    return root


@pytest.fixture(autouse=True)
def _app_env(_isolated_home, home, monkeypatch):
    point_app_at(monkeypatch, home)


def _accounts(home):
    from assistant.accounts import AccountStore

    return AccountStore(home / "tether.db", params=FAST)


def _logstore(home):
    from assistant.logstore import LogStore

    return LogStore(home / "tether.db")


def _sign_in(username: str, password: str):
    at = _app().run()
    _ok(at)
    at.text_input(key="signin_user").set_value(username)
    at.text_input(key="signin_password").set_value(password)
    at.button(key="signin_submit").click().run()
    _ok(at)
    return at


def _ask(at, question: str = QUESTION):
    at.chat_input(key="question").set_value(question).run()
    _ok(at)
    return at.session_state.history[-1]["answer"]


def test_a_fresh_install_creates_its_admin_in_the_page_then_requires_sign_in(home):
    assert _accounts(home).count() == 0
    at = _app().run()  # `make run`: straight into the chat, as the local user
    _ok(at)
    assert at.chat_input and any("No accounts yet" in c.value for c in at.sidebar.caption)
    local = _ask(at)
    assert _logstore(home).turn(local.turn_id)["user"] is None

    at.switch_page("app/ui/pages/admin.py").run()
    _ok(at)
    at.text_input(key="first_admin_user").set_value("Ada")
    at.text_input(key="first_admin_password").set_value("correct-horse")
    at.text_input(key="first_admin_repeat").set_value("correct-horse")
    at.button(key="first_admin_submit").click().run()
    _ok(at)
    assert any("Admin account 'ada' created" in s.value for s in at.success), [e.value for e in at.error]
    assert at.session_state.account == "ada" and at.tabs  # signed in as the admin, the admin's tabs shown
    assert _accounts(home).get("ADA").is_admin
    assert _logstore(home).conversation_owner(local.conversation_id) == "ada"  # the local chats are the admin's

    fresh = _app().run()  # another browser (or a reload without the cookie): sign-in only
    _ok(fresh)
    assert not fresh.chat_input and {t.key for t in fresh.text_input} == {"signin_user", "signin_password"}

    wrong = _sign_in("ada", "not-the-password")
    assert any("Wrong user name or password" in e.value for e in wrong.error) and not wrong.chat_input

    at = _sign_in("ada", "correct-horse")
    assert at.chat_input and at.session_state.viewer.is_admin
    assert any(b.key == f"conv_{local.conversation_id}" for b in at.sidebar.button)  # the adopted chat is listed

    from tether.errors import TetherError

    with pytest.raises(TetherError, match="already exists"):
        _accounts(home).create_first_admin("mallory", "password123")


@pytest.fixture
def users(home):
    store = _accounts(home)
    if store.count() == 0:
        store.create_first_admin("ada", "correct-horse")
    for name in ("ann", "bob"):
        if store.get(name) is None:
            store.create(name, f"{name}-password", "user")
    return store


def test_each_user_sees_only_their_own_conversations(home, users):
    ann = _sign_in("ann", "ann-password")
    assert ann.session_state.viewer.role == "user"
    first = _ask(ann)
    ann.feedback[0].set_value(1).run()  # 👍
    _ok(ann)
    log = _logstore(home)
    record = log.turn(first.turn_id)
    assert record["user"] == "ann" and [(f["kind"], f["user"]) for f in record["feedback"]] == [("up", "ann")]
    assert log.conversation_owner(first.conversation_id) == "ann"
    assert ann.query_params["c"] == first.conversation_id  # the URL names the open chat (not a secret)

    ann.button(key="new_chat").click().run()
    second = _ask(ann, "When is payday?")
    assert second.conversation_id != first.conversation_id
    listed = {b.key for b in ann.sidebar.button if b.key and b.key.startswith("conv_")}
    assert {f"conv_{first.conversation_id}", f"conv_{second.conversation_id}"} <= listed

    # a reload of the first chat: the whole turn back from SQLite, citations and feedback included
    reload = _app()
    reload.query_params["c"] = first.conversation_id
    reload.session_state["account"] = "ann"  # what the cookie restores (the token itself: tests below)
    reload.session_state["account_epoch"] = users.get("ann").session_epoch
    reload.run()
    _ok(reload)
    restored = reload.session_state.history[-1]["answer"]
    assert restored.text == first.text and restored.citations == first.citations
    assert any(e.label.startswith("[") for e in reload.expander)  # the cited passage
    assert any("Your feedback: 👍" in c.value for c in reload.caption)

    # rename, then delete the second chat
    ann.button(key=f"conv_{second.conversation_id}").click().run()
    ann.text_input(key=f"conv_title_{second.conversation_id}").set_value("Payday question")
    ann.button(key="conv_rename").click().run()
    _ok(ann)
    assert {r.id: r.title for r in log.conversations("ann")}[second.conversation_id] == "Payday question"
    ann.button(key="conv_delete").click().run()
    ann.button(key="conv_delete_yes").click().run()
    _ok(ann)
    assert second.conversation_id not in {r.id for r in log.conversations("ann")}
    assert ann.session_state.history == []

    # bob sees none of it, not even through ann's chat id in the URL, and has no Admin page
    bob = _app()
    bob.query_params["c"] = first.conversation_id
    bob.session_state["account"] = "bob"
    bob.session_state["account_epoch"] = users.get("bob").session_epoch
    bob.run()
    _ok(bob)
    assert bob.session_state.history == [] and not any(b.key and b.key.startswith("conv_") for b in bob.sidebar.button)
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        bob.switch_page("app/ui/pages/admin.py")  # not in a user's navigation at all

    # the admin reads everyone's conversations and feedback
    ada = _sign_in("ada", "correct-horse")
    ada.switch_page("app/ui/pages/admin.py").run()
    _ok(ada)
    frames = [df.value for df in ada.dataframe]
    conversations = next(f for f in frames if "questions" in f.columns)
    feedback = next(f for f in frames if "edited_answer" in f.columns)
    assert "ann" in set(conversations["user"])
    assert ("up", "ann", "ann") in set(zip(feedback["kind"], feedback["user"], feedback["asked_by"]))


def test_signing_out_revokes_the_token_everywhere(home, users):
    from app.ui import auth

    at = _sign_in("bob", "bob-password")
    token = at.session_state.session_token
    key = auth.signing_key(home)
    assert auth.account_from_token(users, key, token).username == "bob"
    at.button(key="sign_out").click().run()
    _ok(at)
    assert at.session_state.get("account") is None and not at.chat_input
    assert auth.account_from_token(users, key, token) is None  # the epoch moved on


def test_the_session_token_is_signed_expiring_and_holds_no_secret(tmp_path, home, users):
    import base64

    from app.ui import auth

    key = auth.signing_key(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / auth.KEY_FILE).st_mode) == 0o600 and len(key) == 32
    assert auth.signing_key(tmp_path) == key  # created once
    ann = users.get("ann")
    token = auth.issue_token(key, ann, now=1_000_000.0, ttl_s=60)
    assert auth.read_token(key, token, now=1_000_030.0) == ("ann", ann.session_epoch)
    assert auth.read_token(key, token, now=1_000_061.0) is None  # expired
    assert auth.read_token(b"x" * 32, token, now=1_000_030.0) is None  # another key
    head, payload, sig = token.split(".")
    forged = base64.urlsafe_b64encode(b'["ada", 0, 9999999999]').decode().rstrip("=")
    assert auth.read_token(key, f"{head}.{forged}.{sig}", now=1_000_030.0) is None  # tampered
    assert "ann-password" not in base64.urlsafe_b64decode(payload + "==").decode()
    for junk in (None, "", "v1.x", "v2.a.b", "a.b.c.d"):
        assert auth.read_token(key, junk) is None

    (tmp_path / auth.KEY_FILE).chmod(0o644)  # made readable by someone: narrowed again
    assert auth.signing_key(tmp_path) == key
    assert stat.S_IMODE(os.stat(tmp_path / auth.KEY_FILE).st_mode) == 0o600


def test_account_sign_in_is_locked_after_repeated_failures(home, users):
    from app.ui import auth
    from training.admin import AdminLocked, LockoutPolicy

    policy = LockoutPolicy(max_failures=2, first_wait_s=60)
    for _ in range(2):
        assert auth.sign_in_account(home, users, "bob", "guess", policy=policy) is None
    with pytest.raises(AdminLocked):
        auth.sign_in_account(home, users, "bob", "bob-password", policy=policy)
    assert auth.sign_in_account(home, users, "ann", "ann-password", policy=policy).username == "ann"  # per name
    assert auth.sign_in_account(home, users, "nobody", "whatever", policy=policy) is None
