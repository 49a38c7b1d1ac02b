"""Errors users should see. The CLI turns them into exit code 2 with the message; the app into st.error.

Every message says what to do about it.
"""

from __future__ import annotations


class TetherError(Exception):
    """Base of every error Tether raises on purpose."""


class ConfigError(TetherError):
    """One or more configuration values are invalid. Collects every problem, then raises once."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


class BackendUnavailable(TetherError):
    """A model, server or store that the configuration names cannot be reached or loaded."""


class IndexEmpty(TetherError):
    """A search or answer was asked of a collection that holds no documents."""


class FileRejected(TetherError):
    """One input file cannot be ingested; `kind` says why ('failed' or 'skipped')."""

    def __init__(self, reason: str, *, skipped: bool = False):
        self.reason = reason
        self.skipped = skipped
        super().__init__(reason)
