"""One conflict-answer template for inference and training data.

The typed round trip of a conflict (``Conflict.from_json`` / ``Claim.from_json``), then end to end
on the sample handbook (real MiniLM, Chroma, SQLite, the rule detector, the extractive generator):
the engine answers a question whose sources conflict and logs the turn; the DPO dataset built from
that log has a "chosen" answer that carries exactly the engine's ``conflict_statement`` for that
conflict and decision, and the statement changes with the policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.conflict_answering import conflict_statement
from assistant.engine import ChatEngine
from retrieval.conflicts import Claim, Conflict
from retrieval.ingest import ingest
from tether.config import load_config
from training.config import DataConfig
from training.data import build_datasets, read_rows

ROOT = Path(__file__).resolve().parent.parent
MEALS = "What is the daily meal allowance for a business trip inside the EU?"
OLD = Claim(
    "The daily allowance for meals is €45 per day.",
    "travel-2022.md",
    "p1",
    "Travel 2022",
    "2022-03-01",
    "official",
    "superseded",
    (10, 55),
    "EUR 45 per day",
)
NEW = Claim("The daily allowance for meals is EUR 60 per day.", "travel-2024.pdf", date="2024-06-01")


# -- the typed round trip ----------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.9, 0.123456789, 1])
def test_conflict_round_trips_through_json(confidence):
    c = Conflict("supersession", "amount", "the daily meal allowance", (OLD, NEW), confidence)
    assert Conflict.from_json(json.loads(json.dumps(c.to_json()))) == c
    assert Conflict.from_json(c.to_json()).claims[0].span == (10, 55)  # a tuple again, as the detector made it
    for claim in (OLD, NEW):
        assert Claim.from_json(json.loads(json.dumps(claim.to_json()))) == claim


@pytest.mark.parametrize(
    "data, needle",
    [
        (
            {"kind": "numeric", "claims": [{"text": "a", "source": "x"}, {"text": "b", "source": "y"}]},
            "value_type, subject, confidence",
        ),
        ({**Conflict("numeric", "amount", "s", (OLD, NEW), 0.5).to_json(), "claims": [OLD.to_json()]}, "a list of two"),
        (
            {
                **Conflict("numeric", "amount", "s", (OLD, NEW), 0.5).to_json(),
                "claims": [{"sentence": "a"}, NEW.to_json()],
            },
            "text and source",
        ),
        (
            {
                **Conflict("numeric", "amount", "s", (OLD, NEW), 0.5).to_json(),
                "claims": [{**OLD.to_json(), "span": [1]}, NEW.to_json()],
            },
            "span",
        ),
        ([OLD.to_json(), NEW.to_json()], "object"),
    ],
)
def test_conflict_from_json_refuses_other_shapes(data, needle):
    with pytest.raises(ValueError, match=needle):
        Conflict.from_json(data)


# -- the engine's statement is the DPO chosen text ---------------------------------------------


@pytest.fixture(scope="module")
def handbook_cfg(tmp_path_factory):
    from retrieval.embeddings import embedder_for

    cfg = load_config(tmp_path_factory.mktemp("template")).with_assistant(generator="extractive", top_k=8)
    assert ingest(cfg, [ROOT / "examples" / "handbook"], embedder=embedder_for(cfg)).exit_code == 0
    return cfg


def _meal_conflict(answer) -> int:
    for i in answer.relevant_conflicts:
        c = answer.conflicts[i]
        if {x.source for x in c.claims} == {"travel-expenses-2022.md", "travel-expenses-2024.pdf"} and "45" in " ".join(
            x.text for x in c.claims
        ):
            return i
    raise AssertionError(
        f"the €45 vs EUR 60 conflict is not among the relevant ones: {[c.to_json() for c in answer.conflicts]}"
    )


def _engine_answer(cfg, policy):
    engine = ChatEngine(cfg.with_assistant(conflict_policy=policy))
    try:
        return engine.answer(MEALS)
    finally:
        engine.searcher.close()


def _conflict_rows(cfg, out_dir):
    dcfg = DataConfig(out_dir=str(out_dir), kinds="dpo", eval_fraction=0.0, max_tokens=100_000, near_dup_threshold=1.0)
    build_datasets(cfg, dcfg, counterfactual_rows=[])
    return read_rows(out_dir / "dpo" / "train.jsonl")


def test_the_dpo_chosen_row_carries_exactly_the_engines_statement_under_each_policy(handbook_cfg, tmp_path):
    statements = {}
    for policy in ("prefer-official", "present-both"):
        a = _engine_answer(handbook_cfg, policy)
        i = _meal_conflict(a)
        conflict, decision = a.conflicts[i], a.decisions[i]
        assert decision.policy == policy and a.turn_id
        rows = [r for r in _conflict_rows(handbook_cfg, tmp_path / policy) if r["chosen"][0]["content"] == a.text]
        assert len(rows) == 1, "no DPO row whose chosen answer is the engine's answer"
        chosen, rejected = rows[0]["chosen"][0]["content"], rows[0]["rejected"][0]["content"]
        numbers = {h.id: n for n, h in enumerate(a.passages, start=1)}  # the passage numbering of the answer
        statement = conflict_statement(conflict, decision, numbers, answer=rejected)
        assert statement and statement in a.text and statement in chosen  # the one template, same string
        assert chosen.startswith(rejected) and f" {statement}" in chosen[len(rejected) :]
        assert "disagree" not in rejected  # the generator's reply, which ignored the conflict
        statements[policy] = statement
    assert statements["prefer-official"] != statements["present-both"]  # the decision is in the text
    assert (
        "applies and overrides source" in statements["prefer-official"]
        and "both are shown" in statements["present-both"]
    )
