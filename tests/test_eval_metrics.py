"""Evaluation metrics, case loading, compare and gate rules against hand-computed values (pure, fast)."""

from __future__ import annotations

import json
import math

import pytest

from assistant.evaluation import metrics as M
from assistant.evaluation.cases import load_cases
from assistant.evaluation.compare import compare, higher_is_better
from assistant.evaluation.conflicts import ConflictOutcome, conflict_metrics, follow_context_rate
from assistant.evaluation.gate import gate
from assistant.evaluation.make_qa import parse_llm_qa, template_question
from assistant.evaluation.runs import RunSummary
from tether.db import connect
from tether.errors import ConfigError


def test_normalize_answer_squad_style_plus_currency_and_thousands():
    assert M.normalize_answer("The  EUR 5,000!") == "eur 5000"
    assert M.normalize_answer("€5,000") == "eur 5000"
    assert M.normalize_answer("EUR 0.23 per km.") == "eur 0.23 per km"
    assert M.normalize_answer("An (official) answer") == "official answer"


def test_exact_match_and_token_f1_take_the_best_gold():
    assert M.exact_match("the Finance Director", ["Finance Director"]) == 1.0
    assert M.exact_match("Finance Director of Brno", ["Finance Director"]) == 0.0
    # pred [eur, 0.23, per, km] vs gold [eur, 0.23]: P 2/4, R 2/2 -> F1 2/3
    assert M.token_f1("EUR 0.23 per km", ["€0.23"]) == pytest.approx(2 / 3)
    # vs "5 days": P 2/3, R 1 -> 0.8; vs "five days": P 1/3, R 1/2 -> 0.4; best 0.8
    assert M.token_f1("5 working days", ["five days", "5 days"]) == pytest.approx(0.8)
    assert M.token_f1("nothing in common", ["90 days"]) == 0.0
    assert M.token_f1("", []) == 0.0


def test_contains_answer_on_word_boundaries():
    assert M.contains_answer("Claims are paid within 90 days [1].", ["90 days"]) == 1.0
    assert M.contains_answer("Claims are paid within 190 days.", ["90 days"]) == 0.0
    assert M.strip_citation_marks("It is EUR 60 [1] per day [2].") == "It is EUR 60 per day."


def _ranked(*sources):
    return [M.Retrieved(f"p{i}", s, f"text {s}") for i, s in enumerate(sources, start=1)]


def test_retrieval_metrics_on_gold_sources():
    ranked = _ranked("x", "a", "y", "b", "a")
    gold = M.Gold(sources=("a", "b"))
    assert [M.recall_at_k(ranked, gold, k) for k in (1, 3, 5)] == [0.0, 0.5, 1.0]
    assert M.reciprocal_rank(ranked, gold) == 0.5
    # gains at ranks 2 and 4 (the second "a" gains nothing); ideal: ranks 1 and 2
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert M.ndcg_at_k(ranked, gold, 10) == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert M.ndcg_at_k(ranked, gold, 3) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert M.reciprocal_rank(ranked, M.Gold(sources=("zzz",))) == 0.0


def test_retrieval_metrics_on_passage_ids_and_evidence():
    ranked = [
        M.Retrieved("p1", "a", "one"),
        M.Retrieved("p2", "a", "two"),
        M.Retrieved("p3", "b", "The limit is\nEUR 240  per night."),
    ]
    assert M.reciprocal_rank(ranked, M.Gold(passage_ids=("p3",), sources=("a",))) == pytest.approx(
        1 / 3
    )  # ids win over sources
    assert M.recall_at_k(ranked, M.Gold(passage_ids=("p3",)), 2) == 0.0
    assert M.reciprocal_rank(ranked, M.Gold(evidence="the limit is EUR 240 per night.")) == pytest.approx(1 / 3)
    assert not M.Gold()


def test_citation_correct():
    gold = M.Gold(sources=("a.md",), evidence="Rail is the default.")
    assert M.citation_correct("a.md", "anything", gold)
    assert M.citation_correct("b.md", "x. Rail is  the default. y", gold)
    assert not M.citation_correct("b.md", "Planes are the default.", gold)
    assert M.citation_correct("", "", M.Gold(passage_ids=("p9",)), passage_id="p9")


def test_percentile_and_prf():
    assert M.percentile([40, 10, 30, 20], 50) == 25
    assert M.percentile([10, 20, 30, 40], 95) == pytest.approx(38.5)  # position 2.85 between 30 and 40
    assert M.percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        M.percentile([], 50)
    assert M.precision_recall_f1(3, 1, 2) == pytest.approx((0.75, 0.6, 2 / 3))
    assert M.precision_recall_f1(0, 0, 0) == (0.0, 0.0, 0.0)
    assert M.mean([1, None, 0]) == 0.5 and M.mean([]) is None


def test_conflict_metrics_by_hand():
    outcomes = [
        ConflictOutcome(
            "c1", True, True, "numeric", "numeric", {"prefer-recent": "b"}, {"prefer-recent": "b"}
        ),  # TP, all right
        ConflictOutcome(
            "c2", True, True, "entity", "numeric", {"prefer-recent": "a"}, {"prefer-recent": "b"}
        ),  # TP, kind and resolution wrong
        ConflictOutcome("n1", False, True),  # FP
        ConflictOutcome("c3", True, False, "date"),  # FN
        ConflictOutcome("n2", False, False),  # TN
    ]
    m = conflict_metrics(outcomes)
    assert (m["conflicts.precision"], m["conflicts.recall"], m["conflicts.f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert m["conflicts.kind_accuracy"] == 0.5 and m["conflicts.resolution.prefer-recent"] == 0.5
    assert "conflicts.resolution.prefer-official" not in m
    assert (
        follow_context_rate([True, None, False, True]) == pytest.approx(2 / 3) and follow_context_rate([None]) is None
    )


def _run(run_id, **metrics):
    return RunSummary(
        run_id, "2025-01-01T00:00:00", "s.jsonl", None, {"backend": "extractive"}, metrics, "h", None, {}, 1
    )


def test_compare_directions_and_tolerances():
    assert (
        higher_is_better("answers.f1")
        and not higher_is_better("latency.total.p95")
        and not higher_is_better("answers.false_refusal_rate")
    )
    a = _run(
        "a" * 32,
        **{
            "answers.f1": 0.50,
            "retrieval.mrr": 0.80,
            "latency.total.p95": 100.0,
            "answers.false_refusal_rate": 0.0,
            "only.a": 1.0,
        },
    )
    b = _run(
        "b" * 32,
        **{"answers.f1": 0.49, "retrieval.mrr": 0.70, "latency.total.p95": 160.0, "answers.false_refusal_rate": 0.1},
    )
    rows = {r.metric: r for r in compare(a, b, tolerance=0.02, latency_tolerance=0.5).rows}
    assert not rows["answers.f1"].regressed and rows["answers.f1"].delta == pytest.approx(-0.01)  # within tolerance
    assert (
        rows["retrieval.mrr"].regressed
        and rows["latency.total.p95"].regressed
        and rows["answers.false_refusal_rate"].regressed
    )
    assert rows["only.a"].delta is None and not rows["only.a"].regressed
    back = {r.metric: r for r in compare(b, a).rows}
    assert back["retrieval.mrr"].improved and back["latency.total.p95"].improved and not back["retrieval.mrr"].regressed
    assert not {r.metric: r for r in compare(a, b, latency_tolerance=0.7).rows}["latency.total.p95"].regressed
    # a near-zero stage (0.01 -> 0.04 ms) is four times slower and still not a regression: 1 ms floor
    tiny = compare(
        _run("c" * 32, **{"latency.condense.p50": 0.01}), _run("d" * 32, **{"latency.condense.p50": 0.04})
    ).rows
    assert not tiny[0].regressed


def test_gate_rules():
    base = _run("base", **{"answers.f1": 0.5, "retrieval.recall@5": 0.9, "grounding.groundedness": 0.8})
    ok = _run("ok", **{"answers.f1": 0.49, "retrieval.recall@5": 0.95, "grounding.groundedness": 0.8})
    res = gate(ok, base)
    assert res.passed and res.reason.startswith("no regression") and len(res.rows) == 3
    bad = _run("bad", **{"answers.f1": 0.40, "retrieval.recall@5": 0.95})
    res = gate(bad, base)
    regressed = {r.metric for r in res.rows if r.regressed}
    assert not res.passed and regressed == {
        "answers.f1",
        "grounding.groundedness",
    }  # a missing metric counts against the candidate
    assert gate(bad, base, tolerance=0.2, metrics=("answers.f1",)).passed
    assert not gate(ok, _run("empty")).passed  # nothing to compare against
    slow = gate(
        _run("c", **{"latency.total.p95": 300.0}),
        _run("d", **{"latency.total.p95": 100.0}),
        metrics=("latency.total.p95",),
    )
    assert not slow.passed


def test_load_cases_normalises_shapes(tmp_path):
    rows = [
        {"id": "1", "question": "Q one?", "answer": "A", "source": "a.md"},
        {
            "question": "Q two?",
            "answers": {"text": ["x", "y"], "answer_start": [0, 3]},
            "contexts": ["ctx"],
            "extra": 1,
        },
        {"id": "3", "query": "Q three?", "is_impossible": True},
        {
            "id": "c1",
            "conflict": True,
            "kind": "numeric",
            "a": {"source": "a", "text": "ta"},
            "b": {"source": "b", "text": "tb"},
            "resolution": {"prefer-recent": "b", "prefer-official": None},
        },
        {"id": "cf", "question": "q", "context": "c", "answer": "x", "original_answer": "y"},
    ]
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    cs = load_cases(path)
    assert [c.id for c in cs.qa] == ["1", "cases-2", "3"] and len(cs) == 5
    one, two, three = cs.qa
    assert one.answers == ("A",) and one.sources == ("a.md",) and not one.unanswerable
    assert two.answers == ("x", "y") and two.contexts == ("ctx",) and two.meta == {"extra": 1}
    assert three.unanswerable and three.question == "Q three?"
    assert (
        cs.conflicts[0].resolution == {"prefer-recent": "b", "prefer-official": None} and cs.conflicts[0].b.text == "tb"
    )
    assert cs.counterfactual[0]["id"] == "cf" and len(cs.digest) == 64
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "x.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (folder / "y.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert [c.id for c in load_cases(folder).qa] == ["x:1", "y:1"]  # unique across files


def test_load_cases_lists_every_problem(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"id": "1", "question": "ok?"}\nnot json\n{"id": "1", "question": "dup?"}\n{"answers": ["x"]}\n'
        '{"question": "q?", "unanswerable": true, "answers": ["x"]}\n[1]\n'
    )
    with pytest.raises(ConfigError) as err:
        load_cases(path)
    text = "\n".join(err.value.problems)
    assert len(err.value.problems) == 5
    for where in (
        ":2: not valid JSON",
        ":3: duplicate id '1'",
        ":4: 'question'",
        ":5: an unanswerable",
        ":6: each line",
    ):
        assert where in text
    with pytest.raises(ConfigError, match="does not exist"):
        load_cases(tmp_path / "missing.jsonl")


def test_template_question_and_llm_reply_check():
    q, a = template_question("Claims submitted more than 90 days after the trip are not reimbursed.", "Travel Policy")
    assert (q, a) == (
        "According to Travel Policy, claims submitted more than how long or how many after the trip are not reimbursed?",
        "90 days",
    )
    q, a = template_question("Gifts from suppliers with a value up to EUR 50 may be accepted.")
    assert a == "EUR 50" and q == "Gifts from suppliers with a value up to what amount may be accepted?"
    assert (
        template_question("## Scope") is None
        and template_question("Policy owner: Ingrid Vermeulen, Head of People.") is None
    )
    passage = "The monthly limit on a corporate card is EUR 5,000."
    assert parse_llm_qa("Question: What is the card limit?\nAnswer: EUR 5,000.", passage) == (
        "What is the card limit?",
        "EUR 5,000",
    )
    assert parse_llm_qa("Question: What is the card limit?\nAnswer: EUR 6,000", passage) is None  # not a span
    assert parse_llm_qa("the limit is high", passage) is None


def test_m003_schema():
    db = connect(":memory:")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"eval_runs", "eval_items", "eval_metrics"} <= tables
    cols = {r[1]: r[2] for r in db.execute("PRAGMA table_info(eval_runs)")}
    for c in (
        "id",
        "suite",
        "label",
        "generator",
        "model",
        "adapter",
        "adapter_hash",
        "config_json",
        "corpus_hash",
        "git_commit",
        "metrics_json",
    ):
        assert c in cols
    fks = {(r[2], r[3], r[4]) for r in db.execute("PRAGMA foreign_key_list(eval_items)")}
    assert fks == {("eval_runs", "run_id", "id")}
    assert "m003_evaluation" in {r[0] for r in db.execute("SELECT name FROM _migrations")}
