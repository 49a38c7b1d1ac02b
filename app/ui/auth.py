"""The admin password for the web app: ``admin_password`` in ``st.secrets`` (plain, compared in
constant time), or the scrypt hash that ``tether models set-admin-password`` writes
(``<data dir>/admin.json`` or ``$TETHER_ADMIN_PASSWORD_HASH``, checked by ``training.admin``).

With neither configured the admin pages refuse everyone. Sign-in attempts share the CLI's
per-account lockout (``training.admin``): after 5 failures in a row the page refuses, the right
password too, for 1 s, doubling per further failure up to 15 min, and says when to retry.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.passwords import password_bytes
from training.admin import admin_hash, sign_in

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
