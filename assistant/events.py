"""What ``ChatEngine.stream`` yields, and the one helper every front end reads it with.

An answer streams as ``Token`` pieces; ``Replace`` says the text shown so far is replaced by
``Replace.text`` (cad=auto regenerating a poorly grounded answer, or the conflict rewrite), and the
tokens that follow extend the replacement; ``Final`` ends the stream with the logged ``Answer``::

    answer = consume(engine.stream(question), on_text=lambda shown: placeholder.markdown(shown))

The CLI (``tether ask``, ``tether chat``) and the app's Chat page all go through ``consume``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from assistant.types import Answer


@dataclass(frozen=True)
class Token:
    """A piece of the answer, appended to the text shown so far."""

    text: str


@dataclass(frozen=True)
class Replace:
    """The text shown so far is replaced by ``text`` ("" when a new attempt streams next)."""

    text: str
    reason: str


@dataclass(frozen=True)
class Final:
    """The end of the stream: the answer as verified and logged (its text may differ from what streamed)."""

    answer: Answer


Event = Token | Replace | Final


def consume(
    events: Iterable[Event],
    *,
    on_token: Callable[[str], None] | None = None,
    on_replace: Callable[[Replace], None] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> Answer:
    """Read a stream to its ``Final`` answer, calling ``on_token(piece)`` for each token,
    ``on_replace(event)`` for each replacement and ``on_text(shown)`` with the whole text shown
    so far after either. Raises ``TypeError`` on anything that is not an ``Event`` and
    ``ValueError`` when the stream ends without a ``Final``."""
    shown = ""
    for event in events:
        if isinstance(event, Final):
            return event.answer
        if isinstance(event, Token):
            shown += event.text
            if on_token is not None:
                on_token(event.text)
        elif isinstance(event, Replace):
            shown = event.text
            if on_replace is not None:
                on_replace(event)
        else:
            raise TypeError(f"not a stream event: {event!r}")
        if on_text is not None:
            on_text(shown)
    raise ValueError("the stream ended without a Final answer")
