"""Evaluation: run a suite on a model, chart metrics per model version and per run, list the
conflict suite's misclassified cases."""

from __future__ import annotations

import streamlit as st

from app.ui import resources

st.title("Evaluation")
try:
    from app.ui import evaluation_view
except ImportError as exc:  # the evaluation package has not landed in this checkout
    st.info(f"Evaluation is not available yet ({exc}).")
else:
    evaluation_view.main(resources.base_config())
