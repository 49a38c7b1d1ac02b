"""Who may use the web app: local accounts with a signed session token, and the admin password.

Accounts (``assistant.accounts.AccountStore``): ``sign_in_account`` checks a user name and password
under the same per-name lockout as the admin password; ``issue_token`` / ``read_token`` make and
check the session token the browser keeps in the ``tether_session`` cookie: the user name, the
account's session epoch and an expiry, signed with HMAC-SHA256 by ``<data dir>/session.key``
(0600). No password or secret is ever put in a URL or a cookie.

The admin password: ``admin_password`` in ``st.secrets`` (plain, compared in constant time), or the
scrypt hash that ``tether models set-admin-password`` writes (``<data dir>/admin.json`` or
``$TETHER_ADMIN_PASSWORD_HASH``, checked by ``training.admin``). Before any account exists it opens
the Admin page for one browser session and is needed to create the first admin account. Sign-in
attempts share the CLI's per-account lockout (``training.admin``): after 5 failures in a row the
page refuses, the right password too, for 1 s, doubling per further failure up to 15 min, and
says when to retry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from assistant.accounts import Account, AccountStore
from tether.errors import TetherError
from tether.passwords import password_bytes
from training.admin import admin_hash, counted_sign_in, sign_in

log = logging.getLogger(__name__)

SECRET_KEY = "admin_password"


def secret_password(secrets: Mapping[str, Any] | None) -> str | None:
    """``admin_password`` from the secrets, or None (also when no secrets.toml exists)."""
    if secrets is None:
        return None
    try:
        value = secrets.get(SECRET_KEY)
    except (FileNotFoundError, KeyError):  # st.secrets raises FileNotFoundError's subclass without a secrets.toml
        return None
    return str(value) if value else None


def configured(data_dir: Path, secrets: Mapping[str, Any] | None) -> bool:
    """True when an admin password is configured. Raises TetherError for a corrupt ``admin.json``
    or ``$TETHER_ADMIN_PASSWORD_HASH`` (the message names the file and the fix)."""
    return bool(secret_password(secrets) or admin_hash(data_dir))


def password_ok(data_dir: Path, secrets: Mapping[str, Any] | None, given: str | None, **options) -> bool:
    """True when ``given`` is the configured admin password; False when none is configured.

    Every attempt counts against the admin account's lockout, shared with the CLI
    (``training.admin.sign_in``): while locked it raises ``AdminLocked`` (a TetherError saying when
    to retry), the right password included. ``options`` go to ``sign_in`` (tests: policy, clock)."""
    if not given:
        return False
    expected = secret_password(secrets)

    def secret_matches(password: str) -> bool:
        return bool(expected) and hmac.compare_digest(password_bytes(password), password_bytes(expected))

    return sign_in(data_dir, given, also=secret_matches if expected else None, **options)


# -- accounts: sign-in and the signed session token ----------------------------------------------

COOKIE = "tether_session"  # the browser cookie that carries the session token
SESSION_TTL_S = 7 * 24 * 3600  # a token (and its cookie) expires a week after sign-in
KEY_FILE = "session.key"  # <data dir>/session.key: the token signing key, mode 0600
_TOKEN_VERSION = "v1"


def signing_key(data_dir: str | Path) -> bytes:
    """The key that signs session tokens: ``<data dir>/session.key`` (32 random bytes, mode 0600),
    created on first use. A key file others can read is narrowed to 0600 with a warning; one that
    cannot be read or is too short is a TetherError naming the file and the fix."""
    path = Path(data_dir) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
            f.flush()
            os.fsync(f.fileno())
        log.info("created the session signing key %s", path)
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o): narrowed to 0600", path, mode)
            path.chmod(0o600)
        key = path.read_bytes()
    except OSError as exc:
        raise TetherError(
            f"cannot read the session signing key {path} ({exc.strerror or exc}): fix its permissions, or remove "
            "it (everyone then signs in again)"
        ) from None
    if len(key) < 32:
        raise TetherError(f"the session signing key {path} is too short: remove it (everyone then signs in again)")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, body: str) -> str:
    return _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())


def issue_token(key: bytes, account: Account, *, now: float | None = None, ttl_s: int = SESSION_TTL_S) -> str:
    """``v1.<payload>.<signature>``: the user name, the account's session epoch and the expiry
    (Unix seconds), signed with HMAC-SHA256. Holds no password and no secret."""
    expires = int((time.time() if now is None else now) + ttl_s)
    payload = _b64(json.dumps([account.username, account.session_epoch, expires]).encode())
    body = f"{_TOKEN_VERSION}.{payload}"
    return f"{body}.{_sign(key, body)}"


def token_expiry(token: str) -> int | None:
    try:
        return int(json.loads(_unb64(token.split(".")[1]))[2])
    except (IndexError, ValueError, TypeError):
        return None


def read_token(key: bytes, token: str | None, *, now: float | None = None) -> tuple[str, int] | None:
    """(user name, session epoch) of a genuine, unexpired token; None for anything else."""
    parts = (token or "").split(".")
    if len(parts) != 3 or parts[0] != _TOKEN_VERSION:
        return None
    body = f"{parts[0]}.{parts[1]}"
    if not hmac.compare_digest(_sign(key, body), parts[2]):
        return None
    try:
        username, epoch, expires = json.loads(_unb64(parts[1]))
    except (ValueError, TypeError):
        return None
    if not isinstance(username, str) or not isinstance(epoch, int) or not isinstance(expires, int):
        return None
    if expires <= (time.time() if now is None else now):
        return None
    return username, epoch


def account_from_token(store: AccountStore, key: bytes, token: str | None, **options) -> Account | None:
    """The account a token signs in, while the account exists and the token's epoch is current."""
    found = read_token(key, token, **options)
    if found is None:
        return None
    account = store.get(found[0])
    return account if account is not None and account.session_epoch == found[1] else None


def sign_in_account(
    data_dir: str | Path, store: AccountStore, username: str, password: str, **options
) -> Account | None:
    """The account when the password is right, else None. Every attempt counts against that user
    name's lockout (``training.admin.counted_sign_in``: 5 failures in a row, then a doubling wait):
    while locked it raises ``AdminLocked`` without checking the password. ``options``: policy, clock."""
    if not (username or "").strip() or not password:
        return None
    found: list[Account] = []

    def check() -> bool:
        account = store.verify(username, password)
        found.extend([account] if account else [])
        return account is not None

    counted_sign_in(data_dir, "account:" + username.strip().lower()[:64], check, **options)
    return found[0] if found else None
