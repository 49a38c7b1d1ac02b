"""How one chat turn is drawn: the answer, its badges, the cited passages, the conflict panel and
the feedback controls (stored by turn id, with the user, through the LogStore).

A reply the engine's guard replaced (``answer.rejected``) is drawn as what it is: the extractive
answer from the sources, labelled, with the model's attempt and the reasons one click away in an
expander, never as the answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from app.ui.names import generator_label
from app.ui.render import (
    answer_markdown,
    claim_html,
    conflict_views,
    escape_markdown,
    groundedness_badge,
    highlighted_html,
    printable,
    source_line,
    support_offsets,
)
from assistant.engine import GUARD_LABEL
from assistant.types import Answer
from tether.errors import TetherError

ATTEMPT_LABEL = "The model's attempt (not shown as the answer)"
THUMBS = {"up": 1, "down": 0}


def render_answer(
    answer: Answer,
    store,
    *,
    user: str | None = None,
    feedback: Sequence[dict[str, Any]] = (),
    cfg=None,
    read_only: bool = False,
) -> None:
    """Everything under an assistant message, keyed by the turn id. ``feedback``: the stored rows
    of a restored turn; ``read_only``: an admin reading someone else's conversation."""
    if answer.rejected is not None:
        st.info(GUARD_LABEL, icon=":material/shield:")
    st.markdown(answer_markdown(answer.text))
    if answer.rejected is not None:
        _attempt(answer)
    _badges(answer, cfg)
    _citations(answer)
    _conflicts(answer)
    if answer.turn_id and not read_only:
        _feedback(answer, store, user, feedback)
    elif feedback:
        st.caption("Feedback: " + ", ".join(_feedback_word(f) for f in feedback))


def _attempt(answer: Answer) -> None:
    rejected = answer.rejected
    with st.expander(ATTEMPT_LABEL, expanded=False, icon=":material/visibility_off:"):
        st.caption("Not shown as the answer because " + "; ".join(escape_markdown(r) for r in rejected.reasons) + ".")
        st.markdown(escape_markdown(printable(rejected.text)) or "*(empty)*")


def _badges(answer: Answer, cfg=None) -> None:
    label, colour = groundedness_badge(answer.groundedness)
    cols = st.columns([1, 3])
    with cols[0]:
        st.badge(label, color=colour, icon=":material/verified:" if colour == "green" else None)
    with cols[1]:
        model = generator_label(answer.generator, cfg)
        if answer.rejected is not None:
            model = f"answered from the sources; model {model}"
        policy = f" · policy {answer.policy}" if answer.policy else ""
        st.caption(escape_markdown(f"{model}{policy} · {answer.latency_ms.get('total', 0):.0f} ms"))
    if answer.fallback:
        st.warning(answer.fallback)
    uncited = answer.uncited
    if uncited:
        st.caption(
            f"⚠ {len(uncited)} sentence(s) cite no source and could not be checked: "
            + " · ".join(escape_markdown(u) for u in uncited)
        )


def _citations(answer: Answer) -> None:
    by_n: dict[int, list] = {}
    for c in answer.citations:
        by_n.setdefault(c.n, []).append(c)
    for n in sorted(by_n):
        if not 1 <= n <= len(answer.passages):
            continue
        hit = answer.passages[n - 1]
        cites = by_n[n]
        ok = all(c.supported for c in cites)
        label = f"[{n}] " + source_line(hit.source, hit.title, hit.date, hit.authority, hit.status)
        with st.expander(label + ("" if ok else "  ⚠ not supported"), expanded=False):
            c = next((c for c in cites if c.supported), cites[0])
            span = support_offsets(hit.text, hit.span, c.support, c.span)
            st.html(highlighted_html(hit.text, span))
            if hit.page:
                st.caption(f"page {hit.page}")
            if not ok:
                st.caption("The highlighted sentence is the closest one; it does not support the answer sentence.")
    uncited = [(n, h) for n, h in enumerate(answer.passages, start=1) if n not in by_n]
    if uncited and not answer.refused:
        with st.expander(f"Other retrieved passages ({len(uncited)})", expanded=False):
            for n, h in uncited:
                st.caption(f"[{n}] " + source_line(h.source, h.title, h.date, h.authority, h.status))


def _conflicts(answer: Answer) -> None:
    views = conflict_views(answer.conflicts, answer.decisions)
    if not views:
        return
    with st.expander(f"⚠ The sources disagree ({len(views)})", expanded=False):
        relevant = set(answer.relevant_conflicts)
        for i, v in enumerate(views):
            st.markdown(
                f"**{v.title}**" + ("" if i in relevant else " (in the retrieved passages, not what was asked)")
            )
            left, right = st.columns(2)
            with left:
                st.html(claim_html(v.claims[0]))
            with right:
                st.html(claim_html(v.claims[1]))
            st.caption(v.decision)


def _feedback_word(row: dict[str, Any]) -> str:
    return {"up": "👍", "down": "👎", "edit": "edited answer", "source": "right source"}.get(row["kind"], row["kind"])


def _feedback(answer: Answer, store, user: str | None, stored: Sequence[dict[str, Any]]) -> None:
    tid = answer.turn_id
    key = f"thumbs_{tid}"
    thumbs = [f["kind"] for f in stored if f["kind"] in THUMBS]
    st.feedback(
        "thumbs",
        key=key,
        on_change=_store_thumbs,
        args=(store, tid, key, user),
        default=THUMBS[thumbs[-1]] if thumbs else None,
    )
    if stored:
        st.caption("Your feedback: " + ", ".join(_feedback_word(f) for f in stored))
    with st.expander("Improve this answer", expanded=False):
        edited = st.text_area("Edit the answer", value=answer.text, key=f"edit_{tid}")
        if st.button("Save edited answer", key=f"save_edit_{tid}"):
            _store(store, tid, "edit", user, edited_answer=edited)
        if answer.passages:
            labels = [f"[{n}] {h.title} — {h.source}" for n, h in enumerate(answer.passages, start=1)]
            pick = st.selectbox(
                "This source was right", options=range(len(labels)), format_func=labels.__getitem__, key=f"src_{tid}"
            )
            if st.button("Save right source", key=f"save_src_{tid}"):
                _store(store, tid, "source", user, passage_id=answer.passages[pick].id)
    if st.session_state.get(f"saved_{tid}"):
        st.caption(st.session_state[f"saved_{tid}"])


def _store_thumbs(store, turn_id: str, key: str, user: str | None = None) -> None:
    value = st.session_state.get(key)
    if value is None:
        return
    _store(store, turn_id, "up" if value == 1 else "down", user)


def _store(store, turn_id: str, kind: str, user: str | None = None, **fields) -> None:
    try:
        store.add_feedback(turn_id, kind, user=user, **fields)
    except TetherError as exc:
        st.session_state[f"saved_{turn_id}"] = f"Feedback not stored: {exc}"
        return
    st.session_state[f"saved_{turn_id}"] = f"Feedback stored ({kind}). Thank you."
