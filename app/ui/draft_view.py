"""What the Chat page shows while the engine writes an answer: a draft, never the answer.

The generator's tokens are not checked yet (the guard runs once the reply is complete), so they
stream into a collapsed, greyed area (``st.status``) whose label says what is happening, with
the number of words so far under it; the page's answer area stays empty until ``Final``. A ``Replace`` ends the draft
that streamed so far: it is no longer shown. When the guard replaced the reply, the failed
attempt is gone from the draft too; afterwards the page shows the checked answer, and a failed
attempt only inside the closed expander of ``chat_view`` ("The model's attempt …").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.ui.render import escape_markdown, printable
from assistant.engine import GUARD_LABEL
from assistant.events import Replace

DRAFTING = "Drafting; checked against the sources before it is shown as the answer…"
REDRAFTING = "Draft revised ({why}); checked against the sources before it is shown as the answer…"
GUARDED = "The model's reply did not pass the check; answering with sentences from the sources…"


@dataclass(frozen=True)
class DraftState:
    """One drawing of the draft area: its label (always visible; it changes only when the draft
    does, since a new label closes an area the user opened), the progress line under it, the text
    inside the collapsed area (escaped Markdown, "" for none) and the status icon."""

    label: str
    progress: str
    body: str
    state: Literal["running", "error"] = "running"


def draft_state(shown: str, replaced: list[Replace]) -> DraftState:
    """The draft area for the text shown so far (``consume``'s ``on_text``) and the replacements
    seen so far. After the guard's ``Replace`` nothing of the model's reply is kept."""
    if replaced and replaced[-1].reason.startswith(GUARD_LABEL):
        return DraftState(GUARDED, "", "", "error")
    n = len(shown.split())
    progress = f"{n} word so far" if n == 1 else f"{n} words so far"
    body = escape_markdown(printable(shown))
    if replaced:
        why = escape_markdown(replaced[-1].reason or "replaced")
        return DraftState(REDRAFTING.format(why=why), progress, body)
    return DraftState(DRAFTING, progress, body)


class DraftView:
    """The draft area of one answer, drawn in ``slot`` (an ``st.empty()``) and removed by ``close``."""

    def __init__(self, slot) -> None:
        self._slot = slot
        self._status = None
        self._body = None
        self._progress = None
        self._last: DraftState | None = None

    def update(self, shown: str, replaced: list[Replace]) -> None:
        state = draft_state(shown, replaced)
        if state != self._last:
            self._draw(state)
            self._last = state

    def _draw(self, state: DraftState) -> None:
        if self._status is None:
            box = self._slot.container()
            self._status = box.status(state.label, expanded=False, state=state.state)
            self._body = self._status.empty()  # not `with self._status`: leaving it marks the status complete
            self._progress = box.empty()
        elif (state.label, state.state) != (self._last.label, self._last.state):
            self._status.update(label=state.label, state=state.state)
        if state.body:
            self._body.caption(state.body)
        else:
            self._body.empty()
        if state.progress:
            self._progress.caption(state.progress)
        else:
            self._progress.empty()

    def close(self) -> None:
        """Remove the draft: the checked answer is drawn next."""
        self._slot.empty()
