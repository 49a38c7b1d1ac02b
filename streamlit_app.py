"""Tether's web app: ``streamlit run streamlit_app.py`` (see docs/APP.md).

Pages live in ``app/ui/pages/``; the engine and the stores are built once per process in
``app/ui/resources.py``. The data dir is ``$TETHER_HOME`` (else ``./.tether``).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # `streamlit run` puts the script's folder first; keep it so when run from elsewhere
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app.ui.resources import offline_env, warm_up  # noqa: E402

offline_env()
warm_up()  # the encoder, the model and the conflict detector load in the background from the first page load
st.set_page_config(page_title="Tether", page_icon=":material/link:", layout="wide")
st.set_option("client.toolbarMode", "minimal")  # no Deploy button (also in .streamlit/config.toml)
PAGES = ROOT / "app" / "ui" / "pages"


def _pages(who) -> list:
    """The pages this viewer may open: everyone chats and adds documents; evaluation and admin are
    for admins (and the local user of an install without accounts, whose Admin page creates the
    admin account)."""
    pages = [
        st.Page(PAGES / "chat.py", title="Chat", icon=":material/chat:", default=True),
        st.Page(PAGES / "documents.py", title="Documents", icon=":material/description:"),
    ]
    if who.can_manage:
        pages += [
            st.Page(PAGES / "evaluation.py", title="Evaluation", icon=":material/monitoring:"),
            st.Page(PAGES / "admin.py", title="Admin", icon=":material/admin_panel_settings:"),
        ]
    return pages


def main() -> None:
    from app.ui import resources, session
    from tether.errors import TetherError

    try:
        cfg = resources.base_config()
        who = session.current(cfg)
        if who is None:
            navigation = st.navigation([st.Page(session.sign_in_page, title="Sign in", icon=":material/login:")])
        else:
            navigation = st.navigation(_pages(who))
            session.sidebar(cfg, who)
        navigation.run()
    except Exception as exc:  # a TetherError (bad config, missing index) is shown, not a traceback
        if not isinstance(exc, TetherError):
            raise
        st.error(str(exc))
    session.write_cookie()


main()
