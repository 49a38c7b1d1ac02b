"""The Streamlit web app's pages and the UI-side helpers they share.

``streamlit_app.py`` (repository root) is the entry point; ``pages/`` holds one script per page.
Helpers here only render or adapt: the engine, the ingest pipeline and the stores do the work.

- ``render``: escaping, the cited passage with its supporting span highlighted, badges
- ``uploads``: file-name sanitising and writing uploads under ``<data dir>/uploads/``
- ``library``: the document list, metadata edits, delete and re-ingest
- ``auth``: account sign-in, the signed session token and its key, the admin password check
- ``session``: who this browser session is (local user or account), the sign-in page, the cookie
- ``conversations``: the Chat page's open conversation and the sidebar list (open, rename, delete)
- ``chat_view``: one turn drawn (answer, guard label and the model's attempt, citations, conflicts, feedback)
- ``names``: models and adapters by name and registry id, never by path
- ``jobs``, ``job_view``: background training, evaluation and promotion jobs and their panel
- ``resources``: the cached config, searcher, engines and stores (``st.cache_resource``)
"""
