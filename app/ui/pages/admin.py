"""Admin (password required): feedback, datasets, training jobs, the model registry."""

from __future__ import annotations

import streamlit as st

from app.ui import auth, resources
from tether.errors import TetherError


def _gate(cfg) -> bool:
    """True once this session has given the admin password; refuses when none is configured."""
    try:
        configured = auth.configured(cfg.data_dir, st.secrets)
    except TetherError as exc:  # a corrupt admin.json or hash: the message names the file and the fix
        st.error(str(exc))
        return False
    if not configured:
        st.error(
            f"Admin is disabled: no admin password is configured. Set `{auth.SECRET_KEY}` in .streamlit/secrets.toml, "
            "or run `tether models set-admin-password`, then reload."
        )
        return False
    if st.session_state.get("admin_ok"):
        if st.sidebar.button("Log out of admin", key="admin_logout"):
            st.session_state.admin_ok = False
            st.rerun()
        return True
    with st.form("admin_login"):
        given = st.text_input("Admin password", type="password", key="admin_password")
        submitted = st.form_submit_button("Enter")
    if submitted:
        try:
            ok = auth.password_ok(cfg.data_dir, st.secrets, given)
        except TetherError as exc:  # locked after repeated failures (says when to retry), or a corrupt hash
            st.error(str(exc))
            return False
        if ok:
            st.session_state.admin_ok = True
            st.rerun()
        st.error("Wrong password.")
    return False


def main() -> None:
    st.title("Admin")
    cfg = resources.base_config()
    if not _gate(cfg):
        return
    from app.ui import admin_view

    admin_view.main(cfg)


main()
