"""Who may train, export, promote and roll back: the admin check shared by the CLI and the web app.

The admin password is stored only as a salted scrypt hash: ``$TETHER_ADMIN_PASSWORD_HASH`` (wins), else
``<data dir>/admin.json`` (written by ``tether models set-admin-password``, mode 0600).

    require_admin(data_dir, password, surface="cli" | "web")

With no hash configured the CLI is allowed (whoever runs it already owns the data dir) and the web
app is refused until one is set. With a hash configured both need the password: the CLI reads
``--admin-password`` or ``$TETHER_ADMIN_PASSWORD``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from tether.errors import TetherError

ENV_HASH = "TETHER_ADMIN_PASSWORD_HASH"
ENV_PASSWORD = "TETHER_ADMIN_PASSWORD"
FILE = "admin.json"
_N, _R, _P = 2**14, 8, 1


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return "$".join(["scrypt", str(_N), str(_R), str(_P), base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(base64.b64decode(digest)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def admin_hash(data_dir: str | Path) -> str | None:
    env = os.environ.get(ENV_HASH)
    if env:
        return env.strip()
    path = Path(data_dir) / FILE
    if path.is_file():
        return json.loads(path.read_text()).get("password_hash")
    return None


def set_admin_password(data_dir: str | Path, password: str) -> Path:
    if len(password) < 6:
        raise TetherError("the admin password must have at least 6 characters")
    path = Path(data_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"password_hash": hash_password(password)}, f)
    return path


def is_admin(data_dir: str | Path, password: str | None, *, surface: str = "web") -> bool:
    stored = admin_hash(data_dir)
    if stored is None:
        return surface == "cli"
    return bool(password) and verify_password(password, stored)


def require_admin(data_dir: str | Path, password: str | None, *, surface: str = "web") -> None:
    """Raise ``TetherError`` unless ``password`` is the admin's (see the module docstring)."""
    if is_admin(data_dir, password, surface=surface):
        return
    if admin_hash(data_dir) is None:
        raise TetherError("no admin password is set: run `tether models set-admin-password` (or set TETHER_ADMIN_PASSWORD_HASH) first")
    raise TetherError("admin password missing or wrong: pass --admin-password or set TETHER_ADMIN_PASSWORD")
