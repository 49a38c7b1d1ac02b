"""Scoring a conflict suite beyond detection: recall per kind, look-alikes flagged, the dev/test split,
and the answers (both sides shown, the policy followed, no silent pick), with the "policy cannot
decide" statement of assistant/conflict_answering.py."""

from __future__ import annotations

import json

import pytest

from assistant.conflict_answering import conflict_statement, prompt_notes
from assistant.evaluation.cases import ClaimSide, ConflictCase, load_cases
from assistant.evaluation.conflicts import ConflictOutcome, conflict_metrics, score_answer, select_split
from assistant.resolution import resolve
from retrieval.conflicts import Claim, Conflict
from tether.errors import ConfigError

A = Claim("A replacement permit costs £15.", "resident.md", "p1", date="2025-03-10", authority="official")
B = Claim("A replacement permit costs £20.", "business.md", "p2", date="2025-03-10", authority="official")
TIE = Conflict("numeric", "amount", "a replacement permit", (A, B), 0.9)


def test_a_policy_that_cannot_decide_says_so_and_picks_neither():
    for policy in ("prefer-official", "prefer-recent"):
        decision = resolve(TIE, policy)
        assert decision.winner is None
        text = conflict_statement(TIE, decision, {"p1": 1, "p2": 2})
        assert f"The {policy} policy cannot decide between them" in text and "neither is picked" in text
        assert "[1]" in text and "[2]" in text and "applies" not in text
        assert "2025-03-10" in decision.reason
    official = resolve(TIE, "prefer-official").reason
    assert "official authority" in official and "dated 2025-03-10" in official
    (note,) = prompt_notes([TIE], [resolve(TIE, "prefer-official")], {"p1": 1, "p2": 2})
    assert "cannot decide" in note and "pick neither" in note
    # present-both is not a policy that failed to decide
    both = conflict_statement(TIE, resolve(TIE, "present-both"), {"p1": 1, "p2": 2})
    assert "both are shown" in both and "cannot decide" not in both


def _case(resolution, conflict=True, kind="numeric", lookalike=None, split=None) -> ConflictCase:
    return ConflictCase(
        "m1",
        conflict,
        ClaimSide(A.source, A.text, date=A.date, authority=A.authority),
        ClaimSide(B.source, B.text, date=B.date, authority=B.authority),
        kind=kind if conflict else None,
        resolution=resolution,
        lookalike=lookalike,
        split=split,
    )


def test_score_answer_checks_both_sides_and_each_policy():
    both, correct = score_answer(TIE, _case({"prefer-recent": None, "prefer-official": None}))
    assert both and correct == {"prefer-recent": True, "prefer-official": True}
    # a label that names a winner the statement does not pick is wrong
    _, correct = score_answer(TIE, _case({"prefer-official": "a"}))
    assert correct == {"prefer-official": False}
    newer = Claim(B.text, B.source, "p2", date="2025-04-01", authority="informal")
    c = Conflict("numeric", "amount", "a replacement permit", (A, newer), 0.9)
    case = ConflictCase(
        "m2",
        True,
        ClaimSide(A.source, A.text, date=A.date, authority="official"),
        ClaimSide(B.source, B.text, date="2025-04-01", authority="informal"),
        resolution={"prefer-recent": "b", "prefer-official": "a"},
    )
    assert score_answer(c, case) == (True, {"prefer-recent": True, "prefer-official": True})


def test_metrics_per_kind_look_alikes_and_answers():
    outcomes = [
        ConflictOutcome("c1", True, True, "numeric", "numeric", {"prefer-recent": "a"}, {"prefer-recent": "a"},
                        both_sides=True, policy_correct={"prefer-recent": True}),
        ConflictOutcome("c2", True, False, "polarity", None, {"prefer-recent": "b"}, {}),
        ConflictOutcome("c3", True, True, "polarity", "polarity", {"prefer-recent": None}, {"prefer-recent": "a"},
                        both_sides=True, policy_correct={"prefer-recent": False}),
        ConflictOutcome("n1", False, True, lookalike="equivalent-unit"),
        ConflictOutcome("n2", False, False, lookalike="equivalent-unit"),
        ConflictOutcome("n3", False, False, lookalike="other-scope"),
    ]  # fmt: skip
    m = conflict_metrics(outcomes)
    assert m["conflicts.recall.numeric"] == 1.0 and m["conflicts.recall.polarity"] == 0.5
    assert m["conflicts.lookalike_flagged"] == pytest.approx(1 / 3)
    assert m["conflicts.lookalike_flagged.equivalent-unit"] == 0.5 and m["conflicts.lookalike_flagged.other-scope"] == 0
    assert m["conflicts.answers.both_sides_rate"] == pytest.approx(2 / 3)
    assert m["conflicts.answers.silent_pick_rate"] == pytest.approx(1 / 3)
    assert m["conflicts.answers.policy_accuracy"] == pytest.approx(1 / 3)
    assert m["conflicts.answers.policy_accuracy.prefer-recent"] == pytest.approx(1 / 3)


def test_cases_carry_split_and_look_alike_type_and_a_split_is_selected(tmp_path):
    rows = [
        {"id": "d1", "conflict": True, "kind": "numeric", "split": "dev", "a": {"source": "a", "text": "x"},
         "b": {"source": "b", "text": "y"}},
        {"id": "t1", "conflict": False, "lookalike": "in-range", "split": "test", "a": {"source": "a", "text": "x"},
         "b": {"source": "b", "text": "y"}},
    ]  # fmt: skip
    path = tmp_path / "cases.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cases = load_cases(path).conflicts
    assert [(c.split, c.lookalike) for c in cases] == [("dev", None), ("test", "in-range")]
    assert [c.id for c in select_split(cases, "test", path)] == ["t1"]
    with pytest.raises(ConfigError, match="no conflict case"):
        select_split(cases[:1], "test", path)
    with pytest.raises(ConfigError, match="carry no 'split'"):
        select_split(load_cases(path).conflicts[:0], "dev", path)
