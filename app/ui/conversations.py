"""The Chat page's conversations: the one on the page (``st.session_state.conversation`` and
``history``), the sidebar list of the viewer's past ones, and open / rename / delete.

Every turn is in ``tether.db`` already (the engine logs it), so opening a conversation reads its
turns back whole (``LogStore.conversation_answers``: citations, conflicts, the guard's record and
the feedback). The open conversation's id is kept in the page URL (``?c=ID``, not a secret: only
its owner can open it), so a reload shows it again.
"""

from __future__ import annotations

import logging

import streamlit as st

from app.ui.render import escape_markdown
from assistant.types import Conversation, Turn
from tether.errors import TetherError

log = logging.getLogger(__name__)
PARAM = "c"
LISTED = 30  # the most recent conversations in the sidebar


def new_chat(user: str | None) -> None:
    st.session_state.conversation = Conversation(user=user)
    st.session_state.history = []
    st.session_state.pop("confirm_conv_delete", None)
    if PARAM in st.query_params:
        del st.query_params[PARAM]


def ensure(store, user: str | None) -> None:
    """A conversation on the page: the one named in the URL when it is the viewer's, else a new one."""
    current = st.session_state.get("conversation")
    if current is not None and current.user == user:
        remember_current()  # back from another page: the URL names the open chat again
        return
    cid = st.query_params.get(PARAM)
    if cid and open_conversation(store, cid, user):
        return
    new_chat(user)


def open_conversation(store, cid: str, user: str | None) -> bool:
    """Put ``user``'s conversation ``cid`` on the page; False when it is not theirs or is gone."""
    try:
        owner = store.conversation_owner(cid)
    except TetherError:
        owner = object()  # no such conversation
    if owner != user:
        log.info("conversation %s is not %s's: not opened", cid, user or "the local user")
        return False
    turns = store.conversation_answers(cid)
    st.session_state.conversation = Conversation(
        id=cid, user=user, turns=[Turn(t.answer.question, t.answer.text) for t in turns]
    )
    st.session_state.history = [
        {"question": t.answer.question, "answer": t.answer, "feedback": t.feedback} for t in turns
    ]
    st.session_state.pop("confirm_conv_delete", None)
    st.query_params[PARAM] = cid
    return True


def remember_current() -> None:
    """After a logged turn: the URL names the conversation on the page."""
    conversation = st.session_state.get("conversation")
    if conversation is not None and conversation.id and st.query_params.get(PARAM) != conversation.id:
        st.query_params[PARAM] = conversation.id


def sidebar(store, user: str | None) -> None:
    """New chat, the viewer's conversations (title and date; the open one highlighted), and rename
    or delete for the open one; drawn in the current container (the Chat page's sidebar slot)."""
    st.button("New chat", on_click=new_chat, args=(user,), type="primary", key="new_chat", icon=":material/add:")
    rows = store.conversations(user)
    current = st.session_state.conversation.id
    if not rows:
        st.caption("Your conversations will be listed here.")
        return
    st.markdown("**Conversations**")
    for row in rows[:LISTED]:
        title = row.title or "(untitled)"
        if st.button(
            f"{title[:48]}{'…' if len(title) > 48 else ''} · {row.last_at[:10]}",
            key=f"conv_{row.id}",
            type="secondary" if row.id == current else "tertiary",
            help=f"{row.turns} question(s), last on {row.last_at[:16].replace('T', ' ')}",
            width="stretch",
        ):
            open_conversation(store, row.id, user)
            st.rerun()
    if len(rows) > LISTED:
        st.caption(f"{len(rows) - LISTED} older conversation(s) not listed.")
    if current and any(r.id == current for r in rows):
        _manage(store, user, next(r for r in rows if r.id == current))


def _manage(store, user: str | None, row) -> None:
    with st.expander("Rename or delete this chat", icon=":material/edit:"):
        title = st.text_input("Title", value=row.title, key=f"conv_title_{row.id}")
        if st.button("Rename", key="conv_rename"):
            try:
                store.rename_conversation(row.id, title, user=user)
            except TetherError as exc:
                st.error(str(exc))
            else:
                st.rerun()
        if st.button("Delete this chat", key="conv_delete", icon=":material/delete:"):
            st.session_state.confirm_conv_delete = row.id
        if st.session_state.get("confirm_conv_delete") == row.id:
            st.warning(f"Delete '{escape_markdown(row.title)}' and its {row.turns} question(s) with their feedback?")
            if st.button("Yes, delete", key="conv_delete_yes", type="primary"):
                try:
                    store.delete_conversation(row.id, user=user)
                except TetherError as exc:
                    st.error(str(exc))
                    return
                new_chat(user)
                st.rerun()
