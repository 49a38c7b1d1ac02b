"""What the Streamlit AppTest files share: the app script, pointing the app at a data dir, a new
AppTest and the check that a run raised nothing."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "streamlit_app.py"


def point_app_at(monkeypatch, home: Path) -> None:
    """The app reads ``home`` (``$TETHER_HOME``), no other config, and no admin secret from the
    environment of whoever runs the tests."""
    monkeypatch.setenv("TETHER_HOME", str(home))
    for name in ("TETHER_CONFIG", "TETHER_ADMIN_PASSWORD", "TETHER_ADMIN_PASSWORD_HASH"):
        monkeypatch.delenv(name, raising=False)


def new_app(timeout: float = 120):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(APP), default_timeout=timeout)


def ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
