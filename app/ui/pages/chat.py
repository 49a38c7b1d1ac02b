"""Chat: ask questions about the documents; answers stream in with citations, conflicts and feedback."""

from __future__ import annotations

import streamlit as st

from app.ui import resources
from app.ui.chat_view import render_answer
from app.ui.render import escape_markdown
from assistant.engine import promoted_model_paths
from assistant.events import consume
from assistant.types import Answer, Conversation
from tether.errors import IndexEmpty, TetherError


def _settings(cfg):
    """The sidebar: generator, model and decoding; returns the config to answer with."""
    from tether import config as rc

    a = cfg.assistant
    st.sidebar.header("Answering")
    changes = {}
    gens = list(rc.GENERATORS)
    changes["generator"] = st.sidebar.selectbox(
        "Generator",
        gens,
        index=gens.index(a.generator),
        key="opt_generator",
        help="hf: a local model · extractive: quotes the best sentences · openai: a server",
    )
    if changes["generator"] == "hf":
        model, adapter = a.model, a.adapter
        served = promoted_model_paths(cfg, resources.model_source())
        if served is not None:  # the registry's promoted model replaces the configured one
            model, adapter = str(served[0]), str(served[1]) if served[1] else None
        changes["model"] = (
            st.sidebar.text_input(
                "Model", value=model, key="opt_model", help="'smollm2' or a local checkpoint folder"
            ).strip()
            or model
        )
        changes["adapter"] = (
            st.sidebar.text_input(
                "Adapter", value=adapter or "", key="opt_adapter", help="PEFT adapter folder (optional)"
            ).strip()
            or None
        )
    modes = list(rc.CAD_MODES)
    changes["cad"] = st.sidebar.radio(
        "Context-aware decoding", modes, index=modes.index(a.cad), key="opt_cad", horizontal=True
    )
    policies = list(rc.CONFLICT_POLICIES)
    changes["conflict_policy"] = st.sidebar.selectbox(
        "When sources disagree", policies, index=policies.index(a.conflict_policy), key="opt_policy"
    )
    changes["top_k"] = st.sidebar.slider("Passages retrieved", 1, 10, value=min(a.top_k, 10), key="opt_top_k")
    try:
        return cfg.with_assistant(**changes)
    except TetherError as exc:
        st.sidebar.error(str(exc))
        return cfg


def _new_chat() -> None:
    st.session_state.conversation = Conversation()
    st.session_state.history = []


def main() -> None:
    st.title("Chat")
    cfg = resources.base_config()
    cfg = _settings(cfg)
    if "conversation" not in st.session_state:
        _new_chat()
    st.sidebar.button("New chat", on_click=_new_chat, type="primary", key="new_chat")
    engine = resources.engine(cfg)
    store = resources.logstore(cfg)
    if engine.fallback:
        st.sidebar.warning(engine.fallback)

    if not st.session_state.history:
        st.caption("Ask about the documents in the knowledge base (Documents page to add more).")
    for item in st.session_state.history:
        with st.chat_message("user"):
            st.markdown(escape_markdown(item["question"]))
        with st.chat_message("assistant"):
            if isinstance(item.get("answer"), Answer):
                render_answer(item["answer"], store)
            else:
                st.error(item.get("error", "no answer"))

    question = st.chat_input("Ask a question about your documents", key="question")
    if not question:
        return
    with st.chat_message("user"):
        st.markdown(escape_markdown(question))
    with st.chat_message("assistant"):
        placeholder = st.empty()
        try:  # the text shown so far, a replacement (cad=auto, the conflict rewrite) included, then the answer
            answer = consume(
                engine.stream(question, st.session_state.conversation),
                on_text=lambda shown: placeholder.markdown(escape_markdown(shown) + " ▌"),
            )
        except IndexEmpty:
            placeholder.empty()
            msg = "The knowledge base is empty: upload documents on the Documents page (or run `tether ingest PATH`)."
            st.error(msg)
            st.session_state.history.append({"question": question, "error": msg})
            return
        except TetherError as exc:
            placeholder.empty()
            st.error(str(exc))
            st.session_state.history.append({"question": question, "error": str(exc)})
            return
        placeholder.empty()
        render_answer(answer, store)
        st.session_state.history.append({"question": question, "answer": answer})


main()
