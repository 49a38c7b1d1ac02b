"""How one chat turn is drawn: the answer, its badges, the cited passages, the conflict panel and
the feedback controls (stored by turn id through the LogStore)."""

from __future__ import annotations

import streamlit as st

from app.ui.render import (
    answer_markdown,
    claim_html,
    conflict_views,
    escape_markdown,
    groundedness_badge,
    highlighted_html,
    source_line,
    support_offsets,
)
from assistant.types import Answer
from tether.errors import TetherError


def render_answer(answer: Answer, store) -> None:
    """Everything under an assistant message, keyed by the turn id."""
    st.markdown(answer_markdown(answer.text))
    _badges(answer)
    _citations(answer)
    _conflicts(answer)
    if answer.turn_id:
        _feedback(answer, store)


def _badges(answer: Answer) -> None:
    label, colour = groundedness_badge(answer.groundedness)
    g = answer.generator
    cols = st.columns([1, 3])
    with cols[0]:
        st.badge(label, color=colour, icon=":material/verified:" if colour == "green" else None)
    with cols[1]:
        model = (
            f"{g.backend}:{g.model}"
            + (f" + {g.adapter}" if g.adapter else "")
            + (f" · {g.decoding}" if g.decoding else "")
        )
        policy = f" · policy {answer.policy}" if answer.policy else ""
        st.caption(f"{model}{policy} · {answer.latency_ms.get('total', 0):.0f} ms")
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


def _feedback(answer: Answer, store) -> None:
    tid = answer.turn_id
    key = f"thumbs_{tid}"
    st.feedback("thumbs", key=key, on_change=_store_thumbs, args=(store, tid, key))
    with st.expander("Improve this answer", expanded=False):
        edited = st.text_area("Edit the answer", value=answer.text, key=f"edit_{tid}")
        if st.button("Save edited answer", key=f"save_edit_{tid}"):
            _store(store, tid, "edit", edited_answer=edited)
        if answer.passages:
            labels = [f"[{n}] {h.title} — {h.source}" for n, h in enumerate(answer.passages, start=1)]
            pick = st.selectbox(
                "This source was right", options=range(len(labels)), format_func=labels.__getitem__, key=f"src_{tid}"
            )
            if st.button("Save right source", key=f"save_src_{tid}"):
                _store(store, tid, "source", passage_id=answer.passages[pick].id)
    if st.session_state.get(f"saved_{tid}"):
        st.caption(st.session_state[f"saved_{tid}"])


def _store_thumbs(store, turn_id: str, key: str) -> None:
    value = st.session_state.get(key)
    if value is None:
        return
    _store(store, turn_id, "up" if value == 1 else "down")


def _store(store, turn_id: str, kind: str, **fields) -> None:
    try:
        store.add_feedback(turn_id, kind, **fields)
    except TetherError as exc:
        st.session_state[f"saved_{turn_id}"] = f"Feedback not stored: {exc}"
        return
    st.session_state[f"saved_{turn_id}"] = f"Feedback stored ({kind}). Thank you."
