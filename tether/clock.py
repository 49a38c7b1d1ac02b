"""The one clock: timestamps as ISO 8601 text in UTC, the form every table stores."""

from __future__ import annotations

import datetime as dt
from typing import Literal


def now_iso(timespec: Literal["seconds", "milliseconds"] = "milliseconds") -> str:
    """Now, in UTC: '2025-03-14T09:26:53.589+00:00' ('2025-03-14T09:26:53+00:00' with timespec='seconds')."""
    return dt.datetime.now(dt.UTC).isoformat(timespec=timespec)
