"""The admin password (training/admin.py): scrypt at current cost with old hashes re-hashed, the
per-account lockout shared by the CLI and the web app, and a corrupt ``admin.json`` reported as
one clear error. Hashes are made at a small N (``FAST``) except where the default cost is the point."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tether.errors import TetherError
from training.admin import (
    ENV_HASH,
    LOCKOUT,
    SCRYPT,
    AdminLocked,
    LockoutPolicy,
    ScryptParams,
    admin_hash,
    hash_password,
    needs_rehash,
    parse_hash,
    require_admin,
    set_admin_password,
    sign_in,
    verify_password,
)
from training.registry import AdminLockout, TrainingStore

FAST = ScryptParams(n=2**10, r=8, p=1)
ROOT = Path(__file__).resolve().parent.parent
TETHER = Path(sys.executable).parent / "tether"


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv(ENV_HASH, raising=False)
    d = tmp_path / "data"
    set_admin_password(d, "s3cret-pw", params=FAST)
    return d


def _state(data: Path) -> AdminLockout | None:
    with TrainingStore.open(data / "tether.db") as store:
        return store.admin_lockout("admin")


def _stored_params(data: Path) -> ScryptParams:
    return parse_hash(json.loads((data / "admin.json").read_text())["password_hash"])[0]


# -- cost ---------------------------------------------------------------------------------------------


def test_new_hashes_use_the_current_scrypt_cost(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_HASH, raising=False)
    assert SCRYPT == ScryptParams(n=2**17, r=8, p=1)  # OWASP's current scrypt guidance
    assert SCRYPT.maxmem > 128 * 8 * 2**17  # hashlib's default (32 MiB) would refuse N=2^17
    h = hash_password("s3cret-pw")
    assert h.startswith("scrypt$131072$8$1$")
    assert verify_password("s3cret-pw", h) and not verify_password("s3cret-px", h)
    set_admin_password(tmp_path, "s3cret-pw")
    assert _stored_params(tmp_path) == SCRYPT
    assert (tmp_path / "admin.json").stat().st_mode & 0o777 == 0o600


def test_an_old_hash_verifies_and_is_rehashed_at_the_current_cost_on_success(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_HASH, raising=False)
    old = ScryptParams(n=2**14, r=8, p=1)
    set_admin_password(tmp_path, "s3cret-pw", params=old)
    assert needs_rehash(admin_hash(tmp_path)) and _stored_params(tmp_path) == old
    with pytest.raises(TetherError, match="missing or wrong"):
        require_admin(tmp_path, "wrong-pw", surface="web")
    assert _stored_params(tmp_path) == old  # a failure re-hashes nothing
    require_admin(tmp_path, "s3cret-pw", surface="web")
    assert _stored_params(tmp_path) == SCRYPT and not needs_rehash(admin_hash(tmp_path))
    assert (tmp_path / "admin.json").stat().st_mode & 0o777 == 0o600
    assert verify_password("s3cret-pw", admin_hash(tmp_path)) and not verify_password("wrong-pw", admin_hash(tmp_path))


def test_an_old_hash_in_the_environment_verifies_and_is_left_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(ENV_HASH, hash_password("s3cret-pw", params=FAST))
    with caplog.at_level(logging.WARNING, logger="training.admin"):
        assert sign_in(tmp_path, "s3cret-pw")
    assert not (tmp_path / "admin.json").exists()
    assert any(ENV_HASH in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "stored, why",
    [
        ("bcrypt$16384$8$1$c2FsdHNhbHQ=$ZGlnZXN0ZGlnZXN0ZGlnZXN0", "not of the form"),
        ("scrypt$16384$8$1$c2FsdHNhbHQ=", "not of the form"),
        ("scrypt$abc$8$1$c2FsdHNhbHQ=$ZGlnZXN0ZGlnZXN0ZGlnZXN0", "unreadable"),
        ("scrypt$16384$8$1$not base64!$ZGlnZXN0ZGlnZXN0ZGlnZXN0", "unreadable"),
        ("scrypt$1000$8$1$c2FsdHNhbHQ=$ZGlnZXN0ZGlnZXN0ZGlnZXN0", "out of range"),  # not a power of 2
        ("scrypt$1073741824$8$1$c2FsdHNhbHQ=$ZGlnZXN0ZGlnZXN0ZGlnZXN0", "out of range"),  # 2^30: never run
        ("scrypt$16384$8$1$c2FsdA==$ZGlnZXN0ZGlnZXN0ZGlnZXN0", "too short"),
    ],
)
def test_malformed_hashes_are_refused_without_running_scrypt(stored, why):
    with pytest.raises(ValueError, match=why):
        parse_hash(stored)
    assert verify_password("anything", stored) is False


# -- lockout ------------------------------------------------------------------------------------------


def test_the_default_lockout_policy():
    assert LOCKOUT == LockoutPolicy(max_failures=5, first_wait_s=1.0, max_wait_s=900.0, window_s=900.0)
    assert [LOCKOUT.wait_s(n) for n in range(1, 9)] == [0, 0, 0, 0, 1, 2, 4, 8]
    assert LOCKOUT.wait_s(14) == 512 and LOCKOUT.wait_s(15) == 900 and LOCKOUT.wait_s(10**6) == 900


def test_five_failures_lock_even_the_right_password_with_a_doubling_wait(data):
    clock = Clock()
    opts = {"params": FAST, "clock": clock}
    for _ in range(4):
        assert sign_in(data, "guess", **opts) is False
    assert _state(data).failures == 4 and _state(data).locked_until == 0  # no lockout yet
    assert sign_in(data, "guess", **opts) is False  # the 5th: locked for 1 s
    assert _state(data).locked_until == clock.t + 1
    clock.t += 0.5
    with pytest.raises(AdminLocked, match=r"locked after 5 failed attempts: retry in 1 s") as err:
        sign_in(data, "s3cret-pw", **opts)  # the right password is refused too
    assert err.value.retry_after_s == 1
    assert _state(data).failures == 5  # a refused attempt is not counted
    waits = []
    for _ in range(12):  # each further failure doubles the wait, up to 15 min
        clock.t = _state(data).locked_until + 0.01
        assert sign_in(data, "guess", **opts) is False
        waits.append(round(_state(data).locked_until - clock.t))
    assert waits == [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900]
    with pytest.raises(AdminLocked, match=r"retry in 15 min \(at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)"):
        sign_in(data, "s3cret-pw", **opts)
    clock.t = _state(data).locked_until + 0.01
    assert sign_in(data, "s3cret-pw", **opts) is True  # after the wait: a success resets the count
    assert _state(data) is None
    assert sign_in(data, "guess", **opts) is False
    assert _state(data).failures == 1 and _state(data).locked_until == 0


def test_failures_are_forgotten_after_a_quiet_window(data):
    clock = Clock()
    for _ in range(4):
        sign_in(data, "guess", params=FAST, clock=clock)
    clock.t += LOCKOUT.window_s + 1
    sign_in(data, "guess", params=FAST, clock=clock)
    assert _state(data).failures == 1  # a fresh count, not the 5th failure


def test_an_empty_password_is_not_counted(data):
    for given in (None, ""):
        assert sign_in(data, given, params=FAST) is False
        with pytest.raises(TetherError, match="missing or wrong"):
            require_admin(data, given, surface="cli", params=FAST)
    assert _state(data) is None


def test_parallel_guesses_are_all_counted(tmp_path, monkeypatch):
    """Each attempt is counted before the password is checked: 12 guesses at once, and only the
    first 5 ever reach the check."""
    monkeypatch.delenv(ENV_HASH, raising=False)
    checked, results = [], []
    clock = Clock()

    def slow_wrong(password: str) -> bool:
        checked.append(password)
        time.sleep(0.05)
        return False

    def guess(i: int) -> None:
        try:
            results.append(sign_in(tmp_path, f"guess-{i}", also=slow_wrong, clock=clock))
        except AdminLocked:
            results.append("locked")

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checked) == 5 and results.count(False) == 5 and results.count("locked") == 7
    assert _state(tmp_path).failures == 5


def test_the_cli_and_the_app_share_one_lockout(data):
    from app.ui import auth

    clock = Clock()
    for _ in range(5):
        assert auth.password_ok(data, {"admin_password": "plain-secret"}, "guess", params=FAST, clock=clock) is False
    with pytest.raises(AdminLocked):
        require_admin(data, "s3cret-pw", surface="cli", params=FAST, clock=clock)
    with pytest.raises(AdminLocked):  # the app's plain secret is locked out too
        auth.password_ok(data, {"admin_password": "plain-secret"}, "plain-secret", params=FAST, clock=clock)
    clock.t += 1.5
    assert auth.password_ok(data, {"admin_password": "plain-secret"}, "plain-secret", params=FAST, clock=clock)
    assert _state(data) is None


# -- corrupt admin.json -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, why",
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"[1, 2]", "no password_hash"),
        (b'{"other": 1}', "no password_hash"),
        (b'{"password_hash": "scrypt$16384$8$1$c2FsdHNhbHQ="}', "not of the form"),
        (b"", "not JSON"),
    ],
)
def test_a_corrupt_admin_json_is_one_clear_error(tmp_path, monkeypatch, content, why):
    monkeypatch.delenv(ENV_HASH, raising=False)
    (tmp_path / "admin.json").write_bytes(content)
    for surface in ("cli", "web"):
        with pytest.raises(TetherError) as err:
            require_admin(tmp_path, "s3cret-pw", surface=surface)
        text = str(err.value)
        assert str(tmp_path / "admin.json") in text and why in text
        assert "remove it and run `tether models set-admin-password`" in text


def test_an_unreadable_admin_json_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_HASH, raising=False)
    (tmp_path / "admin.json").mkdir()  # reading it fails with an OSError, as for missing permissions
    with pytest.raises(TetherError, match=r"cannot read the admin password file .*admin\.json .*set-admin-password"):
        require_admin(tmp_path, "s3cret-pw", surface="cli")


def test_a_malformed_hash_in_the_environment_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_HASH, "not-a-hash")
    with pytest.raises(TetherError, match=rf"\${ENV_HASH} is not a valid admin password hash"):
        require_admin(tmp_path, "s3cret-pw", surface="web")


# -- through the console script -----------------------------------------------------------------------


def _tether(home: Path, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_HASH, "TETHER_ADMIN_PASSWORD", "TETHER_CONFIG")}
    env["TETHER_HOME"] = str(home)
    if password is not None:
        env["TETHER_ADMIN_PASSWORD"] = password
    return subprocess.run([str(TETHER), *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_the_cli_locks_out_and_reports_it_in_one_line(data):
    for _ in range(5):
        res = _tether(data, "models", "rollback", password="guess")
        assert res.returncode == 2 and "admin password missing or wrong" in res.stderr, res.stderr
    assert _state(data).failures == 5 and _state(data).locked_until > time.time() - 5
    with TrainingStore.open(data / "tether.db") as store:  # make the lockout long enough to test without racing it
        store.update_admin_lockout("admin", lambda s: AdminLockout("admin", s.failures, time.time(), time.time() + 600))
    res = _tether(data, "models", "rollback", password="s3cret-pw")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0
    assert re.search(r"admin sign-in is locked after 5 failed attempts: retry in (10 min|9 min 5\d s)", res.stderr)
    with TrainingStore.open(data / "tether.db") as store:  # the lockout is over
        store.update_admin_lockout(
            "admin", lambda s: AdminLockout("admin", s.failures, time.time() - 2, time.time() - 1)
        )
    res = _tether(data, "models", "rollback", password="s3cret-pw")
    assert res.returncode == 2 and "nothing to roll back" in res.stderr  # past the admin check
    assert _state(data) is None


def test_the_cli_reports_a_corrupt_admin_json_without_a_traceback(tmp_path):
    (tmp_path / "admin.json").write_text("{oops", encoding="utf-8")
    for args in (["models", "rollback"], ["models", "set-admin-password", "--password", "new-password"]):
        res = _tether(tmp_path, *args, password="s3cret-pw")
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and res.stderr.strip().count("\n") == 0
        assert f"the admin password file {tmp_path / 'admin.json'} is corrupt (not JSON)" in res.stderr
        assert "remove it and run `tether models set-admin-password`" in res.stderr
    (tmp_path / "admin.json").unlink()  # the documented fix works
    res = _tether(tmp_path, "models", "set-admin-password", "--password", "new-password")
    assert res.returncode == 0 and verify_password("new-password", admin_hash(tmp_path))


# -- the Admin page -----------------------------------------------------------------------------------


def test_the_admin_page_counts_failures_and_says_when_to_retry(data, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TETHER_HOME", str(data))
    monkeypatch.delenv("TETHER_CONFIG", raising=False)
    (data / "tether.yaml").write_text("assistant:\n  generator: extractive\n", encoding="utf-8")
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("app/ui/pages/admin.py").run()
    for _ in range(2):
        at.text_input(key="admin_password").set_value("guess")
        at.get("form_submit_button")[0].click().run()
        assert not at.exception and any("Wrong password" in e.value for e in at.error)
    assert _state(data).failures == 2
    with TrainingStore.open(data / "tether.db") as store:
        store.update_admin_lockout("admin", lambda s: AdminLockout("admin", 7, time.time(), time.time() + 120))
    at.text_input(key="admin_password").set_value("s3cret-pw")
    at.get("form_submit_button")[0].click().run()
    assert not at.exception
    assert any(re.search(r"locked after 7 failed attempts: retry in (2 min|1\d\d s)", e.value) for e in at.error)
    assert not at.session_state.get("admin_ok")


def test_the_admin_page_reports_a_corrupt_admin_json(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv(ENV_HASH, raising=False)
    monkeypatch.setenv("TETHER_HOME", str(tmp_path))
    monkeypatch.delenv("TETHER_CONFIG", raising=False)
    (tmp_path / "tether.yaml").write_text("assistant:\n  generator: extractive\n", encoding="utf-8")
    (tmp_path / "admin.json").write_text("[]", encoding="utf-8")
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("app/ui/pages/admin.py").run()
    assert not at.exception
    assert any("is corrupt" in e.value and "set-admin-password" in e.value for e in at.error)
    assert not at.text_input  # no sign-in form
