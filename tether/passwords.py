"""Password hashing for every account Tether knows: salted scrypt, ``scrypt$N$r$p$salt$digest`` (base64).

Used by the admin password (``training/admin.py``) and the web app's accounts
(``assistant.accounts.AccountStore``). New hashes use ``SCRYPT`` (N=2^17, r=8, p=1, OWASP's current
scrypt guidance; about 0.6 s and 128 MiB per check on a 2-core CPU). A hash stores its own
parameters, so an older, cheaper one still verifies (``needs_rehash`` says when to re-hash it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScryptParams:
    """scrypt's cost: N (CPU/memory, a power of 2), r (block size), p (parallelism)."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    @property
    def maxmem(self) -> int:
        """What ``hashlib.scrypt`` must be allowed (its default, 32 MiB, is below N=2^15, r=8):
        OpenSSL needs 128·r·(N+2) bytes for V plus 128·r·p for B; 1 MiB of headroom on top."""
        return 128 * self.r * (self.n + 2) + 128 * self.r * self.p + 2**20


SCRYPT = ScryptParams()  # for new hashes
# what a stored hash may ask for: anything above is refused as corrupt rather than run (2^20 is 1 GiB at r=8)
_MAX_N, _MAX_R, _MAX_P, _MAX_MEM = 2**20, 32, 16, 2**30


def password_bytes(password: str) -> bytes:
    """UTF-8, with argv's undecodable bytes (surrogate escapes) turned back into those bytes."""
    return password.encode("utf-8", "surrogateescape")


def hash_password(password: str, *, params: ScryptParams = SCRYPT) -> str:
    """``scrypt$N$r$p$salt$digest`` (base64), at ``params`` (default: ``SCRYPT``)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password_bytes(password), salt=salt, n=params.n, r=params.r, p=params.p, maxmem=params.maxmem, dklen=32
    )
    fields = [
        "scrypt",
        str(params.n),
        str(params.r),
        str(params.p),
        base64.b64encode(salt).decode(),
        base64.b64encode(digest).decode(),
    ]
    return "$".join(fields)


def parse_hash(stored: str) -> tuple[ScryptParams, bytes, bytes]:
    """(params, salt, digest) of a stored hash; ValueError saying what is wrong with it."""
    parts = stored.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not of the form scrypt$N$r$p$salt$digest")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = (base64.b64decode(x, validate=True) for x in parts[4:6])
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"unreadable field ({exc})") from None
    params = ScryptParams(n, r, p)
    if n < 2 or n & (n - 1) or n > _MAX_N or not 1 <= r <= _MAX_R or not 1 <= p <= _MAX_P or params.maxmem > _MAX_MEM:
        raise ValueError(f"scrypt parameters N={n}, r={r}, p={p} are out of range")
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        raise ValueError("salt or digest too short")
    return params, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (at the parameters it names); False for a malformed hash."""
    try:
        params, salt, digest = parse_hash(stored)
    except ValueError:
        return False
    try:
        got = hashlib.scrypt(
            password_bytes(password),
            salt=salt,
            n=params.n,
            r=params.r,
            p=params.p,
            maxmem=params.maxmem,
            dklen=len(digest),
        )
    except (ValueError, MemoryError) as exc:  # OpenSSL refused the memory
        log.warning("scrypt N=%d, r=%d, p=%d failed: %s", params.n, params.r, params.p, exc)
        return False
    return hmac.compare_digest(got, digest)


def needs_rehash(stored: str, params: ScryptParams = SCRYPT) -> bool:
    """True when ``stored`` was made at other parameters than ``params``."""
    try:
        return parse_hash(stored)[0] != params
    except ValueError:
        return False
