"""Who may train, export, promote and roll back: the admin check shared by the CLI and the web app.

The admin password is stored only as a salted scrypt hash, ``scrypt$N$r$p$salt$digest`` (base64):
``$TETHER_ADMIN_PASSWORD_HASH`` (wins), else ``<data dir>/admin.json`` (written by ``tether models
set-admin-password``, mode 0600).

    require_admin(data_dir, password, surface="cli" | "web")
    sign_in(data_dir, password, also=...)          # the web app's sign-in (app/ui/auth.py)

With no hash configured the CLI is allowed (whoever runs it already owns the data dir) and the web
app is refused until one is set. With a hash configured both need the password: the CLI reads
``--admin-password`` or ``$TETHER_ADMIN_PASSWORD``.

Cost: new hashes use ``SCRYPT`` (N=2^17, r=8, p=1, OWASP's current scrypt guidance; about 0.6 s and
128 MiB per check here). A hash stores its own parameters, so an older, cheaper one still verifies
and is re-hashed at the current cost on the next successful sign-in (``admin.json`` only; a hash in
the environment cannot be rewritten and gets a warning instead).

Lockout (``LOCKOUT``): every sign-in attempt of an admin account is counted in ``admin_lockouts``
(``tether.db``, through ``TrainingStore``) *before* the password is checked, so parallel guesses are
counted too. From the 5th failure in a row, sign-in is refused for 1 s, then 2, 4, ... up to 15 min
per further failure: the right password included, with a message saying when to retry. A success
resets the count; so do 15 quiet minutes after the last lockout ends. The CLI and the web app share
the count, so neither is a way around the other.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tether.errors import TetherError
from tether.passwords import (  # the hashing lives in the core (accounts use it too)
    SCRYPT,
    ScryptParams,
    hash_password,
    needs_rehash,
    parse_hash,
    verify_password,
)
from training.registry import AdminLockout, TrainingStore

log = logging.getLogger(__name__)

ENV_HASH = "TETHER_ADMIN_PASSWORD_HASH"
FILE = "admin.json"
DB_FILE = "tether.db"  # TetherConfig.db_path, relative to the data dir
ADMIN_USER = "admin"  # the one admin account; the lockout is kept per account name
_FIX = "remove it and run `tether models set-admin-password`"


@dataclass(frozen=True)
class LockoutPolicy:
    """When failed admin sign-ins lock the account, and for how long."""

    max_failures: int = 5  # failures in a row before the first lockout
    first_wait_s: float = 1.0  # the first lockout; each further failure doubles it
    max_wait_s: float = 15 * 60.0  # the longest lockout
    window_s: float = 15 * 60.0  # quiet time (after the last lockout ends) that forgets the failures

    def wait_s(self, failures: int) -> float:
        """The lockout that ``failures`` failures in a row earn (0 below ``max_failures``)."""
        if failures < self.max_failures:
            return 0.0
        return min(self.first_wait_s * 2.0 ** min(failures - self.max_failures, 60), self.max_wait_s)


LOCKOUT = LockoutPolicy()


class AdminLocked(TetherError):
    """Admin sign-in is refused until ``until`` (Unix seconds) after too many failures."""

    def __init__(self, user: str, failures: int, until: float, now: float, max_wait_s: float = LOCKOUT.max_wait_s):
        self.user, self.failures, self.until = user, failures, until
        self.retry_after_s = max(1, math.ceil(until - now))
        at = dt.datetime.fromtimestamp(until, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        super().__init__(
            f"admin sign-in is locked after {failures} failed attempts: retry in {_duration(self.retry_after_s)} "
            f"(at {at}); every further failure doubles the wait, up to {_duration(int(max_wait_s))}"
        )


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60} s" if seconds % 60 else f"{seconds // 60} min"


# -- where the hash lives ---------------------------------------------------------------------------


def _read_file_hash(path: Path) -> str | None:
    """The hash in ``admin.json``; TetherError naming the file and the fix when it is unreadable or corrupt."""
    try:
        if not path.exists():
            return None
        raw = path.read_bytes()
    except OSError as exc:
        raise TetherError(
            f"cannot read the admin password file {path} ({exc.strerror or exc}): fix its permissions, or {_FIX}"
        ) from None
    try:
        doc = json.loads(raw.decode("utf-8"))
        value = doc.get("password_hash") if isinstance(doc, dict) else None
        if not isinstance(value, str):
            raise ValueError("no password_hash string in a JSON object")
        parse_hash(value)
    except UnicodeDecodeError:
        reason = "not UTF-8"
    except json.JSONDecodeError:
        reason = "not JSON"
    except ValueError as exc:
        reason = str(exc)
    else:
        return value.strip()
    raise TetherError(f"the admin password file {path} is corrupt ({reason}): {_FIX}")


def admin_hash(data_dir: str | Path) -> str | None:
    """The configured hash: ``$TETHER_ADMIN_PASSWORD_HASH``, else ``admin.json``'s, else None.
    Raises TetherError (naming the source and the fix) for an unreadable or corrupt one."""
    env = os.environ.get(ENV_HASH, "").strip()
    if env:
        try:
            parse_hash(env)
        except ValueError as exc:
            raise TetherError(
                f"${ENV_HASH} is not a valid admin password hash ({exc}): unset it, or set it to the password_hash "
                f"that `tether models set-admin-password` writes to {FILE}"
            ) from None
        return env
    return _read_file_hash(Path(data_dir) / FILE)


def _write_hash(data_dir: str | Path, stored: str) -> Path:
    """Replace ``admin.json`` atomically (a new file, mode 0600, renamed over the old one)."""
    path = Path(data_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".admin-", suffix=".json")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"password_hash": stored}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def set_admin_password(data_dir: str | Path, password: str, *, params: ScryptParams = SCRYPT) -> Path:
    if len(password) < 6:
        raise TetherError("the admin password must have at least 6 characters")
    return _write_hash(data_dir, hash_password(password, params=params))


# -- sign-in with lockout ---------------------------------------------------------------------------


def _attempt(
    data_dir: Path, user: str, check: Callable[[], bool], policy: LockoutPolicy, clock: Callable[[], float]
) -> bool:
    """Count one attempt (refusing it while locked), run ``check``, then reset on success or
    restart the lockout from now on failure. Returns what ``check`` returned."""
    now = clock()

    def reserve(state: AdminLockout | None) -> AdminLockout:
        if state and now > max(state.locked_until, state.last_failure_at) + policy.window_s:
            state = None  # quiet long enough: forgotten
        if state and state.locked_until > now:
            raise AdminLocked(user, state.failures, state.locked_until, now, policy.max_wait_s)
        failures = (state.failures if state else 0) + 1  # counted as failed until the check says otherwise
        wait = policy.wait_s(failures)
        return AdminLockout(user, failures, now, now + wait if wait else 0.0)

    def restamp(state: AdminLockout | None) -> AdminLockout | None:
        # a lockout runs from the end of the failed check; a concurrent success may have reset it
        if state is None or not state.locked_until:
            return state
        return AdminLockout(user, state.failures, done, done + policy.wait_s(state.failures))

    db_path = data_dir / DB_FILE
    try:
        with TrainingStore.open(db_path) as store:
            store.update_admin_lockout(user, reserve)
            ok = check()
            done = clock()
            state = store.update_admin_lockout(user, (lambda state: None) if ok else restamp)
    except sqlite3.Error as exc:
        raise TetherError(
            f"cannot record the admin sign-in in {db_path} ({exc}): check that the data dir is writable"
        ) from None
    if not ok and state and state.locked_until:
        log.warning(
            "admin sign-in for %r locked for %.0f s after %d failures in a row",
            user,
            state.locked_until - done,
            state.failures,
        )
    elif not ok:
        log.info("admin sign-in failed for %r", user)
    return ok


def counted_sign_in(
    data_dir: str | Path,
    account: str,
    check: Callable[[], bool],
    *,
    policy: LockoutPolicy = LOCKOUT,
    clock: Callable[[], float] = time.time,
) -> bool:
    """Run ``check`` (a password check) as one sign-in attempt of ``account``, under the same lockout
    as the admin password (the web app's accounts, ``app/ui/auth.py``). Raises AdminLocked while
    the account is locked, without running ``check``."""
    return _attempt(Path(data_dir), account, check, policy, clock)


def sign_in(
    data_dir: str | Path,
    password: str | None,
    *,
    also: Callable[[str], bool] | None = None,
    user: str = ADMIN_USER,
    policy: LockoutPolicy = LOCKOUT,
    params: ScryptParams = SCRYPT,
    clock: Callable[[], float] = time.time,
) -> bool:
    """True when ``password`` is the admin's: it matches the configured hash, or ``also`` accepts
    it (the web app's plain secret). Counts the attempt against ``user``'s lockout; raises
    AdminLocked while locked (the right password too) and TetherError for a corrupt hash.
    An empty password is refused without counting. A hash in ``admin.json`` made at other
    parameters than ``params`` is re-hashed at them after a success."""
    data_dir = Path(data_dir)
    stored = admin_hash(data_dir)
    if not password or (stored is None and also is None):
        return False

    by_hash = False

    def check() -> bool:
        nonlocal by_hash
        if also is not None and also(password):
            return True
        by_hash = stored is not None and verify_password(password, stored)
        return by_hash

    ok = _attempt(data_dir, user, check, policy, clock)
    if by_hash and needs_rehash(stored, params):
        _rehash(data_dir, password, stored, params)
    return ok


def _rehash(data_dir: Path, password: str, stored: str, params: ScryptParams) -> None:
    if os.environ.get(ENV_HASH, "").strip():
        log.warning(
            "$%s uses scrypt parameters other than N=%d, r=%d, p=%d: set it again from a new `tether models "
            "set-admin-password`",
            ENV_HASH,
            params.n,
            params.r,
            params.p,
        )
        return
    old = parse_hash(stored)[0]
    try:
        _write_hash(data_dir, hash_password(password, params=params))
    except OSError as exc:
        log.warning("could not re-hash the admin password in %s: %s", data_dir / FILE, exc)
        return
    log.info(
        "admin password re-hashed from scrypt N=%d, r=%d, p=%d to N=%d, r=%d, p=%d",
        old.n,
        old.r,
        old.p,
        params.n,
        params.r,
        params.p,
    )


def require_admin(data_dir: str | Path, password: str | None, *, surface: str = "web", **options) -> None:
    """Raise ``TetherError`` unless ``password`` is the admin's (see the module docstring);
    ``AdminLocked`` while the account is locked. ``options`` go to ``sign_in`` (tests: policy, params, clock)."""
    stored = admin_hash(data_dir)
    if stored is None:
        if surface == "cli":
            return
        raise TetherError(
            "no admin password is set: run `tether models set-admin-password` (or set TETHER_ADMIN_PASSWORD_HASH) first"
        )
    if not sign_in(data_dir, password, **options):
        raise TetherError("admin password missing or wrong: pass --admin-password or set TETHER_ADMIN_PASSWORD")
