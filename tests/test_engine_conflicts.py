"""Conflict-aware answering end to end on the sample handbook (real MiniLM, Chroma, SQLite, the
built-in conflict detector, the extractive generator): the 2022 and 2024 travel policies disagree."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assistant.engine import ChatEngine
from assistant.logstore import LogStore
from retrieval.ingest import ingest
from tether.config import load_config

ROOT = Path(__file__).resolve().parent.parent
MEALS = "What is the daily meal allowance for a business trip inside the EU?"


@pytest.fixture(scope="module")
def handbook_cfg(tmp_path_factory):
    from retrieval.embeddings import embedder_for

    cfg = load_config(tmp_path_factory.mktemp("hbc")).with_assistant(generator="extractive", top_k=8)
    assert ingest(cfg, [ROOT / "examples" / "handbook"], embedder=embedder_for(cfg)).exit_code == 0
    return cfg


def _answer(cfg, question, **changes):
    engine = ChatEngine(cfg.with_assistant(**changes) if changes else cfg)
    try:
        return engine.answer(question)
    finally:
        engine.searcher.close()


def _meal_conflict(answer):
    for i, c in enumerate(answer.conflicts):
        sources = {x.source for x in c.claims}
        if sources == {"travel-expenses-2022.md", "travel-expenses-2024.pdf"} and "45" in " ".join(
            x.text for x in c.claims
        ):
            return i, c
    raise AssertionError(f"the €45 vs EUR 60 conflict was not found: {[c.to_json() for c in answer.conflicts]}")


def _n(answer, source):
    return next(n for n, h in enumerate(answer.passages, start=1) if h.source == source)


@pytest.mark.parametrize("policy", ["prefer-official", "prefer-recent"])
def test_the_answer_names_the_conflict_cites_both_and_applies_the_policy(handbook_cfg, policy):
    a = _answer(handbook_cfg, MEALS, conflict_policy=policy)
    i, conflict = _meal_conflict(a)
    assert i in a.relevant_conflicts
    decision = a.decisions[i]
    assert decision.policy == policy and conflict.claims[decision.winner].source == "travel-expenses-2024.pdf"
    new, old = _n(a, "travel-expenses-2024.pdf"), _n(a, "travel-expenses-2022.md")
    assert "disagree" in a.text
    assert f"source {new} applies and overrides source {old}" in a.text
    cited = {c.n: c for c in a.citations}
    assert cited[new].supported and cited[old].supported  # both quoted claims verified against their passages
    # the overridden value is quoted as such, never stated alone as the answer
    first_sentence = a.text.split(". ")[0]
    assert "€45" not in first_sentence


def test_present_both_shows_both_values_without_picking(handbook_cfg):
    a = _answer(handbook_cfg, MEALS, conflict_policy="present-both")
    i, _ = _meal_conflict(a)
    assert a.decisions[i].winner is None
    assert "€45" in a.text and "60" in a.text and "both are shown" in a.text


def test_a_question_without_conflicting_sources_gets_no_conflict_statement(handbook_cfg):
    a = _answer(handbook_cfg, "How much is reimbursed per kilometre when I drive my own car on a business trip?")
    assert "disagree" not in a.text
    assert not any(
        {x.source for x in a.conflicts[i].claims} >= {"travel-expenses-2024.pdf"}
        and "0.23" in a.conflicts[i].claims[0].text
        for i in a.relevant_conflicts
    )


def test_conflicts_and_decisions_are_logged_and_exported(handbook_cfg):
    a = _answer(handbook_cfg, MEALS)
    i, _ = _meal_conflict(a)
    record = LogStore(handbook_cfg.db_path).turn(a.turn_id)
    assert record["policy"] == "prefer-official"
    row = record["conflicts"][i]
    assert row["kind"] == a.conflicts[i].kind
    assert {c["source"] for c in row["claims"]["claims"]} == {"travel-expenses-2022.md", "travel-expenses-2024.pdf"}
    assert row["decision"]["winner"] == a.decisions[i].winner and row["decision"]["relevant"] is True


def test_ask_json_carries_kind_claims_decision_and_policy(handbook_cfg):
    from app.cli import app as tether

    result = CliRunner().invoke(
        tether,
        [
            "--data-dir",
            str(handbook_cfg.data_dir),
            "ask",
            MEALS,
            "--generator",
            "extractive",
            "-k",
            "8",
            "--json",
            "--policy",
            "prefer-recent",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    conflicts = [
        c
        for c in out["conflicts"]
        if {x["source"] for x in c["claims"]} == {"travel-expenses-2022.md", "travel-expenses-2024.pdf"}
    ]
    assert conflicts, out["conflicts"]
    c = conflicts[0]
    assert c["kind"] in ("numeric", "supersession") and c["policy"] == "prefer-recent"
    assert all({"source", "text", "date", "authority"} <= set(x) for x in c["claims"])
    assert c["decision"]["winner"] in (0, 1) and c["claims"][c["decision"]["winner"]]["date"] == "2024-06-01"


def test_turning_detection_off_removes_conflicts(handbook_cfg):
    a = _answer(handbook_cfg, MEALS, conflicts=False)
    assert a.conflicts == () and a.policy is None and "disagree" not in a.text


def test_cad_auto_turns_on_only_when_the_question_meets_a_conflict(handbook_cfg, tmp_path_factory):
    """cad=auto with a real hf generator (tiny random Llama): CAD decodes the conflicting question,
    plain decoding the other; the answer still names the conflict either way."""
    from assistant.generators.hf import HFGenerator
    from tests.tiny_llm import make_tiny_llm

    gen = HFGenerator(make_tiny_llm(tmp_path_factory.mktemp("tiny"), max_positions=4096), device="cpu")
    cfg = handbook_cfg.with_assistant(generator="hf", cad="auto", max_new_tokens=4, cad_min_groundedness=0.0)
    engine = ChatEngine(cfg, generator=gen)
    try:
        a = engine.answer(MEALS)
        assert a.generator.decoding == "cad(alpha=0.5)" and a.relevant_conflicts and "disagree" in a.text
        b = engine.answer("How much is reimbursed per kilometre when I drive my own car on a business trip?")
        assert not b.relevant_conflicts and b.generator.decoding == "greedy"
    finally:
        engine.searcher.close()


# -- the conflict stages on their own -----------------------------------------------------------


def _stages(handbook_cfg, **changes):
    engine = ChatEngine(handbook_cfg.with_assistant(**changes) if changes else handbook_cfg)
    hits = engine.searcher.search(MEALS, k=handbook_cfg.assistant.top_k)
    return engine, hits


def test_detect_conflicts_keeps_the_ones_the_question_is_about(handbook_cfg):
    from assistant.engine import Findings

    engine, hits = _stages(handbook_cfg)
    try:
        found = engine.detect_conflicts(MEALS, hits)
        assert found.conflicts and len(found.decisions) == len(found.conflicts)
        meal = next(
            i
            for i, c in enumerate(found.conflicts)
            if {x.source for x in c.claims} == {"travel-expenses-2022.md", "travel-expenses-2024.pdf"}
            and "45" in " ".join(x.text for x in c.claims)
        )
        assert meal in found.relevant
        claims = found.claims_by_passage()
        assert {x.passage_id for x in found.conflicts[meal].claims} <= set(claims)
        assert engine.detect_conflicts(MEALS, hits[:1]) == Findings()
        # the threshold is assistant.relevant_conflict: at 2 (the maximum score) nothing is relevant
        strict = ChatEngine(handbook_cfg.with_assistant(relevant_conflict=2.0), searcher=engine.searcher)
        assert strict.detect_conflicts(MEALS, hits).relevant == () and strict.detect_conflicts(MEALS, hits).conflicts
    finally:
        engine.searcher.close()
    off, hits = _stages(handbook_cfg, conflicts=False)
    try:
        assert off.detect_conflicts(MEALS, hits) == Findings()
    finally:
        off.searcher.close()


def test_resolve_appends_a_statement_or_replaces_the_text(handbook_cfg):
    from assistant.engine import CONFLICT_REWRITE, Context, Draft, Findings, Verification
    from assistant.events import Replace, Token

    engine, hits = _stages(handbook_cfg, conflict_policy="prefer-recent")
    try:
        found = engine.detect_conflicts(MEALS, hits)
        ctx = Context(MEALS, tuple(hits))
        meal = next(i for i in found.relevant if "45" in " ".join(x.text for x in found.conflicts[i].claims))
        conflict, decision = found.conflicts[meal], found.decisions[meal]
        only = Findings(found.conflicts, found.decisions, (meal,))
        # an answer about something else: the statement is appended, as a Token
        draft = Draft("Receipts must be kept for every meal [1].", refused=False, checked=Verification())
        events, resolved = run_stage(engine.resolve(draft, ctx, only))
        assert resolved.text.startswith(draft.text) and resolved.statements and "disagree" in resolved.text
        assert events == [Token(resolved.text[len(draft.text) :])] and resolved.checked is None
        # an answer stating the overridden claim as fact: that sentence goes, the text is replaced
        loser = conflict.claims[1 - decision.winner]
        n = next(k for k, h in enumerate(hits, start=1) if h.id == loser.passage_id)
        stated = Draft(f"{loser.text.rstrip('.')} [{n}].", refused=False)
        events, resolved = run_stage(engine.resolve(stated, ctx, only))
        assert events == [Replace(resolved.text, CONFLICT_REWRITE)] and not resolved.text.startswith(stated.text)
        # nothing relevant, or a refusal: the draft passes through with its check
        assert run_stage(engine.resolve(draft, ctx, Findings(found.conflicts, found.decisions, ()))) == (
            [],
            type(resolved)(draft.text, False, (), draft.checked),
        )
        refusal = Draft("I don't know: the documents do not say.", refused=True)
        assert run_stage(engine.resolve(refusal, ctx, only))[0] == []
    finally:
        engine.searcher.close()


def run_stage(stage):
    events = []
    while True:
        try:
            events.append(next(stage))
        except StopIteration as stop:
            return events, stop.value
