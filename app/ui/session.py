"""Who is using this browser session: the local user (an install without accounts), or a signed-in
account, kept across reloads by the signed ``tether_session`` cookie (``app/ui/auth.py``).

``streamlit_app.py`` calls ``current`` on every run: it returns the ``Viewer`` (also in
``st.session_state.viewer`` for the pages) or None when sign-in is needed, and the app then shows
only the sign-in page. An account is re-read from ``tether.db`` on every run, so a deleted account,
a changed role or a revoked session takes effect at the next click.

The cookie is written by a script in the page (``st.html(..., unsafe_allow_javascript=True)``, our
own code only, no user text in it): Streamlit offers no server-side way to set a cookie, and reads
the ones the browser sends with ``st.context.cookies``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import streamlit as st

from app.ui import auth, resources
from tether.config import TetherConfig
from tether.errors import TetherError
from training.admin import AdminLocked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Viewer:
    username: str | None  # None: the local user of an install without accounts
    role: str  # local | user | admin

    @property
    def local(self) -> bool:
        return self.role == "local"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def can_manage(self) -> bool:
        """May edit and delete documents and run evaluations: an admin, or the local user."""
        return self.role in ("admin", "local")

    @property
    def label(self) -> str:
        return "local user" if self.local else f"{self.username} ({self.role})"


LOCAL = Viewer(None, "local")


def viewer() -> Viewer:
    """The viewer ``current`` found for this run (the local user outside the app, e.g. in a test)."""
    return st.session_state.get("viewer") or LOCAL


def current(cfg: TetherConfig) -> Viewer | None:
    """The viewer of this run, or None when an account must sign in first."""
    store = resources.accountstore(cfg)
    if store.count() == 0:
        _forget()
        st.session_state.viewer = LOCAL
        return LOCAL
    account = None
    name, epoch = st.session_state.get("account"), st.session_state.get("account_epoch")
    if name:
        account = store.get(name)
        if account is None or account.session_epoch != epoch:  # deleted, or signed out elsewhere
            _forget()
            account = None
    if account is None:
        token = _cookie()
        if token:
            try:
                account = auth.account_from_token(store, auth.signing_key(cfg.data_dir), token)
            except TetherError as exc:
                st.error(str(exc))
                account = None
            if account is not None:
                _remember(account, token)
    if account is None:
        st.session_state.pop("viewer", None)
        return None
    who = Viewer(account.username, account.role)
    st.session_state.viewer = who
    return who


def _cookie() -> str | None:
    try:
        return st.context.cookies.get(auth.COOKIE)
    except (AttributeError, RuntimeError):  # no browser request behind this run (AppTest, bare mode)
        return None


def _remember(account, token: str) -> None:
    st.session_state.account = account.username
    st.session_state.account_epoch = account.session_epoch
    st.session_state.session_token = token


def _forget() -> None:
    for key in ("account", "account_epoch", "session_token", "viewer"):
        st.session_state.pop(key, None)


def signed_in(cfg: TetherConfig, account) -> None:
    """This browser session is now ``account``'s; the next run writes the cookie."""
    token = auth.issue_token(auth.signing_key(cfg.data_dir), account)
    _remember(account, token)
    st.session_state.viewer = Viewer(account.username, account.role)
    log.info("%s signed in", account.username)


def write_cookie() -> None:
    """Keep the browser's cookie in step with this session: the token while signed in, deleted
    after a sign-out. Called at the end of every run (the script only ever holds our own token)."""
    if st.session_state.pop("clear_cookie", False):
        _script(f"document.cookie = '{auth.COOKIE}=; Path=/; Max-Age=0; SameSite=Strict';")
        return
    token = st.session_state.get("session_token")
    if not token:
        return
    expires = dt.datetime.fromtimestamp(auth.token_expiry(token) or 0, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    _script(
        f"document.cookie = '{auth.COOKIE}={token}; Path=/; Expires={expires}; SameSite=Strict'"
        " + (location.protocol === 'https:' ? '; Secure' : '');"
    )


def _script(js: str) -> None:
    with st.sidebar:
        st.html(f'<div style="display:none"><script>{js}</script></div>', unsafe_allow_javascript=True)


def sign_out(cfg: TetherConfig) -> None:
    """End this account's sessions in every browser (the session epoch moves on) and delete the cookie."""
    name = st.session_state.get("account")
    if name:
        try:
            resources.accountstore(cfg).revoke_sessions(name)
        except TetherError as exc:  # the account was deleted meanwhile: nothing left to revoke
            log.info("sign-out of %s: %s", name, exc)
    _forget()
    for key in list(st.session_state.keys()):
        if key not in ("clear_cookie",):
            del st.session_state[key]
    st.session_state.clear_cookie = True


def sidebar(cfg: TetherConfig, who: Viewer) -> None:
    """Who is signed in, with Sign out; for the local user, the offer to create the admin account."""
    with st.sidebar:
        if who.local:
            st.caption("No accounts yet: you are the local user.")
            st.page_link("app/ui/pages/admin.py", label="Create the admin account", icon=":material/person_add:")
            return
        st.caption(f"Signed in as **{who.username}** ({who.role})")
        if st.button("Sign out", key="sign_out", icon=":material/logout:"):
            sign_out(cfg)
            st.rerun()


def sign_in_page() -> None:
    """The only page while no account is signed in."""
    cfg = resources.base_config()
    st.title("Sign in to Tether")
    with st.form("sign_in"):
        username = st.text_input("User name", key="signin_user")
        password = st.text_input("Password", type="password", key="signin_password")
        submitted = st.form_submit_button("Sign in", type="primary", key="signin_submit")
    st.caption("No account yet? Ask an admin of this Tether to create one for you (Admin page → Accounts).")
    if not submitted:
        return
    try:
        account = auth.sign_in_account(cfg.data_dir, resources.accountstore(cfg), username, password)
    except AdminLocked as exc:
        st.error(
            f"Sign-in for {username.strip()!r} is locked after {exc.failures} failed attempts: retry in "
            f"{exc.retry_after_s} s. Every further failure doubles the wait."
        )
        return
    except TetherError as exc:
        st.error(str(exc))
        return
    if account is None:
        st.error("Wrong user name or password.")
        return
    signed_in(cfg, account)
    st.rerun()


def first_admin_form(cfg: TetherConfig, *, need_admin_password: bool) -> None:
    """Create the first account, an admin, from the page (an install without accounts). When an
    admin password is configured, it must be given too: it already proves who owns this install."""
    st.subheader("Create the admin account")
    st.caption(
        "Until an account exists, Tether is used by one local user without signing in. Once you create "
        "the admin account, everyone signs in; your chats so far become the admin's, and you can add "
        "accounts for others on this page."
    )
    with st.form("first_admin"):
        username = st.text_input("Admin user name", key="first_admin_user")
        password = st.text_input("Password (8 characters or more)", type="password", key="first_admin_password")
        repeat = st.text_input("Password again", type="password", key="first_admin_repeat")
        current = (
            st.text_input("Current admin password", type="password", key="first_admin_current")
            if need_admin_password
            else None
        )
        submitted = st.form_submit_button("Create the admin account", type="primary", key="first_admin_submit")
    if not submitted:
        return
    if password != repeat:
        st.error("The two passwords differ: type the same password twice.")
        return
    try:
        if need_admin_password and not auth.password_ok(cfg.data_dir, st.secrets, current):
            st.error("Wrong admin password: the admin password configured for this install is needed.")
            return
        account = resources.accountstore(cfg).create_first_admin(username, password)
    except TetherError as exc:
        st.error(str(exc))
        return
    moved = resources.logstore(cfg).adopt_local(account.username)
    log.info("first admin account %s created; %d local conversations adopted", account.username, moved)
    signed_in(cfg, account)
    st.session_state.flash = f"Admin account {account.username!r} created; you are signed in."
    st.rerun()
