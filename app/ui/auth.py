"""The admin password for the web app: ``admin_password`` in ``st.secrets`` (plain, compared in
constant time), or the scrypt hash that ``tether models set-admin-password`` writes
(``<data dir>/admin.json`` or ``$TETHER_ADMIN_PASSWORD_HASH``, checked by ``training.admin``).

With neither configured the admin pages refuse everyone.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any, Mapping

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


def _stored_hash(data_dir: Path) -> str | None:
    try:
        from training.admin import admin_hash
    except ImportError:
        return None
    return admin_hash(data_dir)


def configured(data_dir: Path, secrets: Mapping[str, Any] | None) -> bool:
    return bool(secret_password(secrets) or _stored_hash(data_dir))


def password_ok(data_dir: Path, secrets: Mapping[str, Any] | None, given: str | None) -> bool:
    """True when ``given`` is the configured admin password; False when none is configured."""
    if not given:
        return False
    expected = secret_password(secrets)
    if expected and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        return True
    stored = _stored_hash(data_dir)
    if stored:
        from training.admin import verify_password

        return verify_password(given, stored)
    return False
