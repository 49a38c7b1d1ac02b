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
        assert a.generator.decoding == "cad(alpha=0.5),no-repeat-6gram"  # the default n-gram block, logged
        assert a.relevant_conflicts and "disagree" in a.text
        b = engine.answer("How much is reimbursed per kilometre when I drive my own car on a business trip?")
        assert not b.relevant_conflicts and b.generator.decoding == "greedy,no-repeat-6gram"
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


# -- bounded answers: a corpus that contradicts itself everywhere -----------------------------------

LEAVE = "How many days of annual leave do employees receive?"


@pytest.fixture(scope="module")
def contradictions_cfg(tmp_path_factory):
    """30 small documents that each give another number of leave days (435 conflicting pairs), plus
    6 that repeat one pair of values (20 vs 25 days, between two sources each)."""
    from retrieval.embeddings import embedder_for

    root = tmp_path_factory.mktemp("contradictions")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"leave-{i:02d}.md").write_text(
            f"---\ndate: 2024-01-{i + 1:02d}\nauthority: official\n---\n# Leave policy {i}\n\n"
            f"Employees receive {10 + i} days of annual leave per year.\n"
        )
    cfg = load_config(root / "data").with_assistant(generator="extractive", top_k=30)
    assert ingest(cfg, [corpus], embedder=embedder_for(cfg)).exit_code == 0
    return cfg


def test_many_contradictions_give_a_bounded_answer_and_the_json_keeps_them_all(contradictions_cfg):
    a = _answer(contradictions_cfg, LEAVE)
    limits = contradictions_cfg.assistant
    assert len(a.conflicts) >= 100 and len(a.relevant_conflicts) >= 100  # the corpus does contradict itself
    assert 1 <= len(a.stated_conflicts) <= limits.max_conflicts_stated == 3
    assert len(a.text) <= limits.max_answer_chars and len(a.citations) <= limits.max_citations
    assert a.text.count("The sources disagree on") == len(a.stated_conflicts)  # one statement each, no repeats
    out = a.to_json()
    assert len(out["conflicts"]) == len(a.conflicts)
    assert [i for i, c in enumerate(out["conflicts"]) if c["stated"]] == list(a.stated_conflicts)
    assert out["conflicts_stated"] == len(a.stated_conflicts)
    # the caps are configuration: one conflict, a shorter answer, fewer citations
    b = _answer(contradictions_cfg, LEAVE, max_conflicts_stated=1, max_answer_chars=400, max_citations=2)
    assert len(b.stated_conflicts) <= 1 and len(b.text) <= 400 and len(b.citations) <= 2
    assert _answer(contradictions_cfg, LEAVE, max_conflicts_stated=0).stated_conflicts == ()


def test_ask_json_lists_every_conflict_with_stated_true_or_false(contradictions_cfg):
    from app.cli import app as tether

    args = ["--data-dir", str(contradictions_cfg.data_dir), "ask", LEAVE, "-g", "extractive", "-k", "30"]
    out = json.loads(CliRunner().invoke(tether, [*args, "--json"]).output)
    flags = [c["stated"] for c in out["conflicts"]]
    assert len(flags) >= 100 and 1 <= sum(flags) <= 3 and len(out["answer"]) <= 2000
    assert len(out["citations"]) <= 8
    text = CliRunner().invoke(tether, args)
    assert (
        text.exit_code == 0 and "more conflicts between the sources: `tether ask --json` lists every one" in text.output
    )
    assert text.output.count("  conflict (") <= 5


def test_conflicts_over_the_same_values_or_sources_are_stated_once():
    from assistant.engine import distinct_conflicts
    from retrieval.conflicts import Claim, Conflict

    def conflict(a, b, va, vb):
        return Conflict(
            "numeric",
            "duration",
            "annual leave",
            (Claim(f"{va} text", a, value=va), Claim(f"{vb} text", b, value=vb)),
            0.9,
        )

    cs = [
        conflict("x.md", "y.md", "20 days", "25 days"),
        conflict("z.md", "w.md", "25 days", "20 days"),  # the same pair of values, other sources
        conflict("x.md", "y.md", "4 weeks", "25 days"),  # the same pair of sources
        conflict("x.md", "w.md", "20 days", "30 days"),
    ]
    assert distinct_conflicts(cs, [0, 1, 2, 3]) == [0, 3]
    assert distinct_conflicts(cs, [3, 1, 2, 0]) == [3, 1, 2]


def test_bound_cuts_later_reply_sentences_first_then_statements(handbook_cfg):
    engine = ChatEngine(handbook_cfg.with_assistant(max_answer_chars=200, max_citations=2))
    try:
        reply = "First fact [1]. Second fact [2]. Third fact [3]."
        statement = "The sources disagree on x. " + '"a" [1]. "b" [2].'
        kept, added = engine.bound(reply, [(4, statement)])
        assert kept == "First fact [1]." and added == []  # 3 citations in all: the statement cannot fit
        kept, added = engine.bound("Only [1].", [(4, statement)])
        assert kept == "Only [1]." and added == []
        engine = ChatEngine(
            handbook_cfg.with_assistant(max_answer_chars=200, max_citations=3), searcher=engine.searcher
        )
        assert engine.bound(reply, [(4, statement)]) == ("First fact [1].", [(4, statement)])
        long = "word " * 100 + "[1] [2] [3] [4]."
        cut, _ = engine.bound(long, [])
        assert len(cut) <= 200 and cut.endswith(" …")
    finally:
        engine.searcher.close()


def test_cad_adaptive_decodes_every_answer_with_adacad(handbook_cfg, tmp_path_factory):
    from assistant.generators.hf import HFGenerator
    from tests.tiny_llm import make_tiny_llm

    gen = HFGenerator(make_tiny_llm(tmp_path_factory.mktemp("tiny"), max_positions=4096), device="cpu")
    cfg = handbook_cfg.with_assistant(generator="hf", cad="adaptive", max_new_tokens=4)
    engine = ChatEngine(cfg, generator=gen)
    try:
        a = engine.answer("How much is reimbursed per kilometre when I drive my own car on a business trip?")
        assert a.generator.decoding == "adacad,no-repeat-6gram" and not a.relevant_conflicts
    finally:
        engine.searcher.close()
