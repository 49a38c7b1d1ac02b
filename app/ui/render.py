"""Rendering helpers: nothing from a document or a model reaches the page unescaped.

Documents may carry HTML and prompt-injection bait (see examples/README.md), and a model's
answer may echo them: answer text is rendered as Markdown with every punctuation character
escaped, passages and claims as HTML built from ``html.escape``-d text plus our own ``<mark>``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")
_CITE = re.compile(r"\\\[(\d+)\\\]")


def escape_markdown(text: str) -> str:
    """Text that st.markdown shows literally: no links, images, HTML, headings or LaTeX."""
    return _MD_SPECIAL.sub(r"\\\1", text or "")


def printable(text: str) -> str:
    """Text with control and other unprintable characters (a random model's bytes) shown as U+FFFD."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text or "")


def answer_markdown(text: str) -> str:
    """The answer as escaped Markdown, with its ``[n]`` citation markers shown in bold."""
    return _CITE.sub(lambda m: f"**\\[{m.group(1)}\\]**", escape_markdown(text))


def support_offsets(
    passage_text: str, passage_span: tuple[int, int], support: str, support_span: tuple[int, int] | None
) -> tuple[int, int] | None:
    """Where the supporting sentence lies inside the passage text, or None when it is not there.

    ``support_span`` is in document coordinates; the passage starts at ``passage_span[0]``.
    When the span does not fall inside the passage (HTML/PDF text, whitespace differences), the
    sentence is searched for with whitespace collapsed.
    """
    if support_span is not None:
        start, end = support_span[0] - passage_span[0], support_span[1] - passage_span[0]
        if 0 <= start < end <= len(passage_text):
            return start, end
    words = (support or "").split()
    if not words:
        return None
    pattern = r"\s+".join(re.escape(w) for w in words)
    m = re.search(pattern, passage_text)
    return (m.start(), m.end()) if m else None


def highlighted_html(text: str, span: tuple[int, int] | None) -> str:
    """The passage as escaped HTML, the span (if any) wrapped in ``<mark>``; newlines kept."""
    if span is None:
        body = html.escape(text)
    else:
        s, e = span
        body = html.escape(text[:s]) + "<mark>" + html.escape(text[s:e]) + "</mark>" + html.escape(text[e:])
    return f'<div class="tether-passage" style="white-space: pre-wrap; font-size: 0.9rem">{body}</div>'


def source_line(
    source: str, title: str | None, date: str | None, authority: str | None, status: str | None = None
) -> str:
    """One plain-text line naming a source: title — file · date · authority · status."""
    meta = " · ".join(x for x in (date, authority, status) if x)
    head = f"{title} — {source}" if title and title != source else source
    return head + (f" · {meta}" if meta else "")


def groundedness_badge(g: float | None) -> tuple[str, str]:
    """(label, colour) for st.badge."""
    if g is None:
        return "not grounded: nothing cited", "gray"
    colour = "green" if g >= 0.8 else "orange" if g >= 0.5 else "red"
    return f"grounded {g:.0%}", colour


@dataclass(frozen=True)
class ClaimView:
    text: str
    source: str
    date: str | None
    authority: str | None
    status: str | None
    winner: bool


@dataclass(frozen=True)
class ConflictView:
    title: str  # what the sources disagree about
    claims: tuple[ClaimView, ClaimView]
    decision: str  # the policy's decision in words


def conflict_views(conflicts: Sequence[Any], decisions: Sequence[Any] | None) -> list[ConflictView]:
    """What the conflict panel shows for each conflict, its decision aligned by position."""
    out = []
    decisions = list(decisions or [])
    for i, c in enumerate(conflicts):
        d = decisions[i] if i < len(decisions) else None
        winner = getattr(d, "winner", None)
        claims = tuple(
            ClaimView(
                text=getattr(cl, "text", str(cl)),
                source=getattr(cl, "source", "?"),
                date=getattr(cl, "date", None),
                authority=getattr(cl, "authority", None),
                status=getattr(cl, "status", None),
                winner=winner == j,
            )
            for j, cl in enumerate(getattr(c, "claims", ())[:2])
        )
        if len(claims) != 2:
            continue
        kind = getattr(c, "kind", None) or "conflict"
        subject = getattr(c, "subject", None)
        title = f"{kind}" + (f": {subject}" if subject else "")
        if d is None:
            decision = "no policy decision recorded"
        elif winner is None:
            decision = f"policy {d.policy}: both claims presented ({d.reason})"
        else:
            decision = f"policy {d.policy}: follows {claims[winner].source} ({d.reason})"
        out.append(ConflictView(title=title, claims=claims, decision=decision))  # type: ignore[arg-type]
    return out


def claim_html(claim: ClaimView) -> str:
    """A claim card: the sentence (escaped), then its source, date, authority and status."""
    meta = " · ".join(
        html.escape(x) for x in (claim.date or "no date", claim.authority or "authority unknown", claim.status) if x
    )
    crown = "<strong>✔ followed</strong><br>" if claim.winner else ""
    return (
        f'<div class="tether-claim" style="border-left: 3px solid {"#2e7d32" if claim.winner else "#999"}; padding-left: .5rem">'
        f"{crown}<q>{html.escape(claim.text)}</q><br><small>{html.escape(claim.source)} · {meta}</small></div>"
    )
