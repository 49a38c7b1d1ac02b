"""The web app's local accounts in ``tether.db`` (``accounts``): user name, scrypt password hash
(``tether.passwords``), role (``user`` | ``admin``) and a session epoch.

An install without any account is used by one local user (``AccountStore.count() == 0``); the
first account is always an admin (``create_first_admin``, which refuses once any account exists,
also under concurrent requests). User names are case-insensitive (stored lower-cased). The session
epoch is part of every sign-in token the app issues (``app/ui/auth.py``); bumping it (sign-out,
a new password) revokes every older token of that account.

Every SQL statement over ``accounts`` is in this module; one connection per thread, each write one
``BEGIN IMMEDIATE`` transaction (as in ``assistant.logstore``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tether.clock import now_iso
from tether.db import PerThreadStore, transaction
from tether.errors import TetherError
from tether.passwords import SCRYPT, ScryptParams, hash_password, needs_rehash, verify_password

ROLES = ("user", "admin")
MIN_PASSWORD = 8
_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class Account:
    username: str
    role: str
    session_epoch: int
    created_at: str
    last_sign_in_at: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def normal_username(name: str) -> str:
    """The stored form of a user name (stripped, lower-cased); TetherError saying what is allowed."""
    value = (name or "").strip().lower()
    if not _NAME.fullmatch(value):
        raise TetherError(
            f"user name {name!r} is not allowed: use 1 to 64 letters a-z, digits and . _ @ -, starting with a letter or digit"
        )
    return value


def check_password(password: str) -> None:
    if len(password or "") < MIN_PASSWORD:
        raise TetherError(f"the password must have at least {MIN_PASSWORD} characters")


class AccountStore(PerThreadStore):
    def __init__(self, path: str | Path, *, params: ScryptParams = SCRYPT):
        self.params = params  # for new hashes (tests pass a cheaper one)
        super().__init__(path)

    # -- reading -----------------------------------------------------------------------------

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM accounts").fetchone()[0])

    def get(self, username: str) -> Account | None:
        try:
            name = normal_username(username)
        except TetherError:
            return None
        row = self.db.execute(
            "SELECT username, role, session_epoch, created_at, last_sign_in_at FROM accounts WHERE username = ?",
            (name,),
        ).fetchone()
        return _account(row) if row else None

    def accounts(self) -> list[Account]:
        return [
            _account(r)
            for r in self.db.execute(
                "SELECT username, role, session_epoch, created_at, last_sign_in_at FROM accounts ORDER BY username"
            )
        ]

    # -- writing -----------------------------------------------------------------------------

    def create(self, username: str, password: str, role: str = "user") -> Account:
        """A new account; TetherError for a taken or malformed name, a short password or an unknown role."""
        return self._create(username, password, role, first=False)

    def create_first_admin(self, username: str, password: str) -> Account:
        """The first account, an admin; refused once any account exists (checked in the same
        transaction, so two first-run pages racing create one admin)."""
        return self._create(username, password, "admin", first=True)

    def _create(self, username: str, password: str, role: str, *, first: bool) -> Account:
        name = normal_username(username)
        check_password(password)
        if role not in ROLES:
            raise TetherError(f"role {role!r} must be one of {', '.join(ROLES)}")
        stored = hash_password(password, params=self.params)  # slow: outside the write lock
        with transaction(self.db) as db:
            if first and db.execute("SELECT 1 FROM accounts LIMIT 1").fetchone():
                raise TetherError("an admin account already exists: sign in, or ask an admin to add your account")
            if db.execute("SELECT 1 FROM accounts WHERE username = ?", (name,)).fetchone():
                raise TetherError(f"user name {name!r} is taken: choose another")
            db.execute(
                "INSERT INTO accounts (username, password_hash, role, session_epoch, created_at) VALUES (?, ?, ?, 0, ?)",
                (name, stored, role, now_iso()),
            )
        return self.get(name)  # type: ignore[return-value]

    def verify(self, username: str, password: str) -> Account | None:
        """The account when ``password`` is its password, else None (an unknown name costs a hash
        check too). A hash made at other parameters than this store's is re-hashed on success."""
        try:
            name = normal_username(username)
        except TetherError:
            name = None
        row = (
            self.db.execute("SELECT password_hash FROM accounts WHERE username = ?", (name,)).fetchone()
            if name
            else None
        )
        if row is None:
            verify_password(password or "", _dummy_hash(self.params))  # a wrong name costs as much as a wrong password
            return None
        if not verify_password(password or "", row["password_hash"]):
            return None
        with transaction(self.db) as db:
            db.execute("UPDATE accounts SET last_sign_in_at = ? WHERE username = ?", (now_iso(), name))
        if needs_rehash(row["password_hash"], self.params):
            self._set_hash(name, hash_password(password, params=self.params), bump=False)  # type: ignore[arg-type]
        return self.get(name)  # type: ignore[arg-type]

    def set_password(self, username: str, password: str) -> None:
        """A new password; every sign-in token issued before it stops working."""
        check_password(password)
        self._set_hash(normal_username(username), hash_password(password, params=self.params), bump=True)

    def _set_hash(self, name: str, stored: str, *, bump: bool) -> None:
        with transaction(self.db) as db:
            cur = db.execute(
                "UPDATE accounts SET password_hash = ?, session_epoch = session_epoch + ? WHERE username = ?",
                (stored, int(bump), name),
            )
            if not cur.rowcount:
                raise TetherError(f"no account {name!r}")

    def revoke_sessions(self, username: str) -> None:
        """Bump the session epoch: every token issued for this account so far stops working."""
        with transaction(self.db) as db:
            db.execute(
                "UPDATE accounts SET session_epoch = session_epoch + 1 WHERE username = ?", (normal_username(username),)
            )

    def set_role(self, username: str, role: str) -> None:
        """Change a role; the last admin cannot lose it."""
        if role not in ROLES:
            raise TetherError(f"role {role!r} must be one of {', '.join(ROLES)}")
        name = normal_username(username)
        with transaction(self.db) as db:
            self._keep_an_admin(db, name, "demote")
            cur = db.execute("UPDATE accounts SET role = ? WHERE username = ?", (role, name))
            if not cur.rowcount:
                raise TetherError(f"no account {name!r}")

    def delete(self, username: str) -> None:
        """Delete an account (its conversations stay in the log); the last admin cannot be deleted."""
        name = normal_username(username)
        with transaction(self.db) as db:
            self._keep_an_admin(db, name, "delete")
            cur = db.execute("DELETE FROM accounts WHERE username = ?", (name,))
            if not cur.rowcount:
                raise TetherError(f"no account {name!r}")

    @staticmethod
    def _keep_an_admin(db, name: str, what: str) -> None:
        row = db.execute("SELECT role FROM accounts WHERE username = ?", (name,)).fetchone()
        if row is not None and row["role"] == "admin":
            admins = db.execute("SELECT COUNT(*) FROM accounts WHERE role = 'admin'").fetchone()[0]
            if admins <= 1:
                raise TetherError(f"cannot {what} {name!r}: it is the last admin account; make another admin first")


@lru_cache(maxsize=4)
def _dummy_hash(params: ScryptParams) -> str:
    return hash_password("not-an-account", params=params)


def _account(row) -> Account:
    return Account(row["username"], row["role"], int(row["session_epoch"]), row["created_at"], row["last_sign_in_at"])
