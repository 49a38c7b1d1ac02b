"""Documents: upload and ingest files, see what the knowledge base holds; admins (and the local
user of an install without accounts) also edit metadata, delete and re-ingest."""

from __future__ import annotations

import streamlit as st

from app.ui import library, resources, session
from app.ui.uploads import ALLOWED_SUFFIXES, UploadRejected, save_upload
from retrieval.readers import AUTHORITIES, STATUSES
from tether.errors import TetherError


def _upload(cfg) -> None:
    st.subheader("Add documents")
    limit = cfg.retrieval.max_file_mb
    files = st.file_uploader(
        f"Files ({', '.join(s.lstrip('.') for s in ALLOWED_SUFFIXES)}; up to {limit:g} MB each)",
        type=[s.lstrip(".") for s in ALLOWED_SUFFIXES],
        accept_multiple_files=True,
        key="uploads",
    )
    if not st.button("Ingest uploaded files", disabled=not files, type="primary", key="ingest"):
        return
    uploads, problems = [], []
    for f in files or []:
        try:
            uploads.append(save_upload(cfg.data_dir, f.name, f.getvalue(), max_mb=limit))
        except UploadRejected as exc:
            problems.append({"file": f.name, "status": "rejected", "reason": str(exc)})
    for up in uploads:  # renamed because another file holds the name, or already uploaded
        if up.message():
            st.info(up.message())
    saved = [up.path for up in uploads]
    bar = st.progress(0.0, text=f"Ingesting {len(saved)} file(s)…")
    search = resources.searcher(cfg)

    def on_file(done: int, total: int, outcome) -> None:
        bar.progress(done / total, text=f"{done}/{total}: {outcome.source} — {outcome.status}")

    outcomes = (
        library.ingest_files(cfg, saved, store=search.store, embedder=search.embedder, on_file=on_file) if saved else []
    )
    bar.progress(1.0, text="Done")
    for up, o in zip(uploads, outcomes):
        if o.status in ("failed", "skipped"):
            if not up.identical:  # keep only what the knowledge base holds (and what was there before)
                up.path.unlink(missing_ok=True)
            problems.append({"file": o.source, "status": o.status, "reason": o.reason})
        for w in o.warnings:
            problems.append({"file": o.source, "status": "warning", "reason": w})
    ok = [o for o in outcomes if o.status in ("ingested", "unchanged")]
    if ok:
        st.success(", ".join(f"{o.source}: {o.status}" + (f" ({o.chunks} chunks)" if o.chunks else "") for o in ok))
    if problems:
        st.error(f"{len(problems)} file(s) not ingested or with warnings")
        st.dataframe(problems, hide_index=True, width="stretch")


def _library(cfg) -> None:
    st.subheader(f"Knowledge base · collection '{cfg.retrieval.collection}'")
    docs = library.documents(cfg)
    if not docs:
        st.info("No documents yet: upload some above (or run `tether ingest PATH`).")
        return
    if not session.viewer().can_manage:
        st.caption(f"{len(docs)} documents, {sum(d.n_chunks for d in docs)} chunks. An admin can edit or delete them.")
        st.dataframe(
            [
                {
                    "source": d.source,
                    "title": d.title,
                    "chunks": d.n_chunks,
                    "date": d.doc_date or "",
                    "status": d.status,
                }
                for d in docs
            ],
            hide_index=True,
            width="stretch",
            key="doc_list",
        )
        return
    st.caption(
        f"{len(docs)} documents, {sum(d.n_chunks for d in docs)} chunks. Date, status and authority are editable."
    )
    rows = [
        {
            "source": d.source,
            "title": d.title,
            "kind": d.kind,
            "chunks": d.n_chunks,
            "date": d.doc_date or "",
            "status": d.status,
            "authority": d.authority,
            "ingested": d.ingested_at,
            "upload": library.is_upload(cfg, d),
        }
        for d in docs
    ]
    edited = st.data_editor(
        rows,
        key="doc_table",
        hide_index=True,
        width="stretch",
        disabled=["source", "title", "kind", "chunks", "ingested", "upload"],
        column_config={
            "status": st.column_config.SelectboxColumn("status", options=list(STATUSES)),
            "authority": st.column_config.SelectboxColumn("authority", options=list(AUTHORITIES)),
            "date": st.column_config.TextColumn("date", help="YYYY-MM-DD"),
        },
    )
    changes = [
        library.MetadataEdit(
            new["source"], (new["date"] or "").strip() or None, new["status"] or None, new["authority"] or None
        )
        for old, new in zip(rows, edited)
        if (old["date"], old["status"], old["authority"]) != (new["date"], new["status"], new["authority"])
    ]
    if changes and st.button(f"Save {len(changes)} metadata change(s)", key="save_meta"):
        try:
            for change in changes:
                library.set_metadata(cfg, change)
            st.success("Metadata saved.")
            st.rerun()
        except TetherError as exc:
            st.error(str(exc))

    st.markdown("**Delete or re-ingest**")
    pick = st.selectbox("Document", [d.source for d in docs], key="doc_pick")
    left, right = st.columns(2)
    search = resources.searcher(cfg)
    if left.button("Re-ingest", key="reingest"):
        try:
            outcome = library.reingest_document(cfg, pick, store=search.store, embedder=search.embedder)
            (st.success if outcome.status in ("ingested", "unchanged") else st.error)(
                f"{outcome.source}: {outcome.status}" + (f" ({outcome.reason})" if outcome.reason else "")
            )
        except TetherError as exc:
            st.error(str(exc))
    if right.button("Delete", key="delete", type="secondary"):
        st.session_state.confirm_delete = pick
    if st.session_state.get("confirm_delete") == pick:
        st.warning(
            f"Delete {pick} from the knowledge base"
            + (" and its uploaded file?" if any(d.source == pick and library.is_upload(cfg, d) for d in docs) else "?")
        )
        if st.button("Yes, delete", key="confirm_delete_btn"):
            try:
                n = library.delete_document(cfg, pick, search.store)
                st.session_state.confirm_delete = None
                st.session_state.flash = f"Deleted {pick} ({n} chunks)."
                st.rerun()
            except TetherError as exc:
                st.error(str(exc))


def main() -> None:
    st.title("Documents")
    cfg = resources.base_config()
    if st.session_state.get("flash"):
        st.success(st.session_state.pop("flash"))
    _upload(cfg)
    st.divider()
    _library(cfg)


main()
