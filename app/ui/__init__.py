"""The Streamlit web app's pages and the UI-side helpers they share.

``streamlit_app.py`` (repository root) is the entry point; ``pages/`` holds one script per page.
Helpers here only render or adapt: the engine, the ingest pipeline and the stores do the work.

- ``render``: escaping, the cited passage with its supporting span highlighted, badges
- ``uploads``: file-name sanitising and writing uploads under ``<data dir>/uploads/``
- ``library``: the document list, metadata edits, delete and re-ingest
- ``auth``: the admin password check
- ``resources``: the cached config, searcher and engines (``st.cache_resource``)
"""
