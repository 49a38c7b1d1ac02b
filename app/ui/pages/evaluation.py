"""Evaluation: run a suite in the background, chart the gate metrics per model version, compare
two runs, list the failing cases (admins, and the local user of an install without accounts)."""

from __future__ import annotations

import streamlit as st

from app.ui import evaluation_view, resources, session

st.title("Evaluation")
if session.viewer().can_manage:
    evaluation_view.main(resources.base_config())
else:
    st.error("Evaluation is for admin accounts: ask an admin to give your account the admin role.")
