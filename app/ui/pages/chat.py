"""Chat: ask questions about the documents; answers stream in with citations, conflicts and
feedback. The viewer's past conversations are listed in the sidebar (app/ui/conversations.py)."""

from __future__ import annotations

import streamlit as st

from app.ui import conversations, library, resources, session
from app.ui.chat_view import render_answer
from app.ui.draft_view import DraftView
from app.ui.names import generator_label
from app.ui.render import escape_markdown
from assistant.engine import promoted_model_paths
from assistant.events import Replace, consume
from assistant.types import Answer
from tether.errors import IndexEmpty, TetherError


def _settings(cfg):
    """The sidebar: generator, model and decoding; returns the config to answer with."""
    from tether import config as rc

    a = cfg.assistant
    box = st.sidebar.expander("Answering", icon=":material/tune:")
    changes = {}
    gens = list(rc.GENERATORS)
    changes["generator"] = box.selectbox(
        "Generator",
        gens,
        index=gens.index(a.generator),
        key="opt_generator",
        help="hf: a local model · extractive: quotes the best sentences · openai: a server",
    )
    if changes["generator"] == "hf":
        changes["model"] = (
            box.text_input(
                "Model",
                value=a.model,
                key="opt_model",
                help="'smollm2' (the registry's promoted model when there is one) or a local checkpoint folder",
            ).strip()
            or a.model
        )
        changes["adapter"] = (
            box.text_input(
                "Adapter", value=a.adapter or "", key="opt_adapter", help="PEFT adapter folder (optional)"
            ).strip()
            or None
        )
        served = promoted_model_paths(cfg.with_assistant(**changes), resources.model_source())
        if served is not None:  # the registry's promoted model replaces the default one
            ids = {"backend": "hf", "model": str(served[0]), "adapter": str(served[1]) if served[1] else None}
            box.caption("Serving the promoted model: " + escape_markdown(generator_label(ids, cfg)))
    modes = list(rc.CAD_MODES)
    changes["cad"] = box.radio(
        "Context-aware decoding", modes, index=modes.index(a.cad), key="opt_cad", horizontal=True
    )
    policies = list(rc.CONFLICT_POLICIES)
    changes["conflict_policy"] = box.selectbox(
        "When sources disagree", policies, index=policies.index(a.conflict_policy), key="opt_policy"
    )
    changes["top_k"] = box.slider("Passages retrieved", 1, 10, value=min(a.top_k, 10), key="opt_top_k")
    try:
        return cfg.with_assistant(**changes)
    except TetherError as exc:
        st.sidebar.error(str(exc))
        return cfg


def _first_run() -> None:
    """The knowledge base holds no document yet: say what to do first."""
    st.info("Your knowledge base is empty: Tether answers only from documents you give it.", icon=":material/info:")
    st.markdown(
        "1. Open **Documents** and drop files on **Upload** (Markdown, text, HTML, PDF or Word; "
        "up to the size limit shown there).\n"
        "2. Press **Ingest uploaded files**: each file is read, split into passages and indexed.\n"
        "3. Come back here and ask: every answer cites the passages it comes from, and says so when "
        "two documents disagree."
    )
    st.page_link("app/ui/pages/documents.py", label="Upload documents", icon=":material/upload_file:")
    st.caption("From a terminal: `tether ingest PATH` ingests a folder.")


def main() -> None:
    st.title("Chat")
    who = session.viewer()
    cfg = resources.base_config()
    store = resources.logstore(cfg)
    conversations.ensure(store, who.username)
    listed = st.sidebar.container()  # filled last, so a conversation begun in this run is listed
    try:
        _chat(cfg, store, who)
    finally:
        with listed:
            conversations.sidebar(store, who.username)


def _chat(cfg, store, who) -> None:
    cfg = _settings(cfg)
    if not library.documents(cfg):
        _first_run()
        return
    if not st.session_state.history:
        st.caption("Ask about the documents in the knowledge base (Documents page to add more).")
    for item in st.session_state.history:
        with st.chat_message("user"):
            st.markdown(escape_markdown(item["question"]))
        with st.chat_message("assistant"):
            if isinstance(item.get("answer"), Answer):
                render_answer(item["answer"], store, user=who.username, feedback=item.get("feedback", ()), cfg=cfg)
            else:
                st.error(item.get("error", "no answer"))

    question = st.chat_input("Ask a question about your documents", key="question")
    if not question:
        return
    with st.chat_message("user"):
        st.markdown(escape_markdown(question))
    with st.chat_message("assistant"):
        draft = DraftView(st.empty())  # the unchecked reply, collapsed and greyed (app/ui/draft_view.py)
        replaced: list[Replace] = []
        try:  # the text shown so far, a replacement (cad=auto, the conflict rewrite, the guard) included
            # The engine is built only now, so the chat box is on the page while the warm-up
            # (app/ui/resources.py) loads the searcher and the model; this waits for it.
            engine = resources.engine(cfg)
            if engine.fallback:
                st.sidebar.warning(engine.fallback)
            answer = consume(
                engine.stream(question, st.session_state.conversation),
                on_replace=replaced.append,
                on_text=lambda shown: draft.update(shown, replaced),
            )
        except IndexEmpty:
            draft.close()
            msg = "The knowledge base is empty: upload documents on the Documents page (or run `tether ingest PATH`)."
            st.error(msg)
            st.session_state.history.append({"question": question, "error": msg})
            return
        except TetherError as exc:
            draft.close()
            st.error(str(exc))
            st.session_state.history.append({"question": question, "error": str(exc)})
            return
        draft.close()
        render_answer(answer, store, user=who.username, cfg=cfg)
        st.session_state.history.append({"question": question, "answer": answer})
    conversations.remember_current()


main()
