"""Evaluation: run a suite on a model, chart metrics per model version and per run, list the
conflict suite's misclassified cases."""

from __future__ import annotations

import streamlit as st

from app.ui import evaluation_view, resources

st.title("Evaluation")
evaluation_view.main(resources.base_config())
