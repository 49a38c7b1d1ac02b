"""Admin: feedback, conversations, accounts, datasets, training jobs, the model registry.

With accounts, for admin accounts only. In an install without accounts (the local user), the page
offers to create the admin account, and the admin password (if one is configured) opens it for
this browser session, as before accounts existed."""

from __future__ import annotations

import streamlit as st

from app.ui import auth, resources, session
from tether.errors import TetherError


def _gate(cfg) -> bool:
    """True once this session has given the admin password; refuses when none is configured."""
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


def _local(cfg) -> None:
    """No account yet: create the admin account; the configured admin password opens the page meanwhile."""
    try:
        configured = auth.configured(cfg.data_dir, st.secrets)
    except TetherError as exc:  # a corrupt admin.json or hash: the message names the file and the fix
        st.error(str(exc))
        return
    if not configured:
        session.first_admin_form(cfg, need_admin_password=False)
        return
    if not _gate(cfg):
        st.caption("Sign in with the admin password (`tether models set-admin-password`), or create the admin account.")
        st.divider()
        session.first_admin_form(cfg, need_admin_password=True)
        return
    from app.ui import admin_view

    admin_view.main(cfg, session.viewer())


def main() -> None:
    st.title("Admin")
    cfg = resources.base_config()
    if st.session_state.get("flash"):
        st.success(st.session_state.pop("flash"))
    who = session.viewer()
    if who.local:
        _local(cfg)
        return
    if not who.is_admin:
        st.error("The Admin page is for admin accounts: ask an admin to give your account the admin role.")
        return
    from app.ui import admin_view

    admin_view.main(cfg, who)


main()
