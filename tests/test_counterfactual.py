"""Counterfactual QA cases: swaps, answers, determinism, the shipped file, cases from a corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.counterfactual import follows_context, from_corpus, load_cases, make_counterfactuals, write_cases

ROOT = Path(__file__).resolve().parent.parent
QA = ROOT / "examples" / "eval" / "qa.jsonl"


@pytest.fixture(scope="module")
def qa():
    return load_cases(QA)


@pytest.fixture(scope="module")
def made(qa):
    return make_counterfactuals(qa, seed=0)


def test_every_case_swaps_a_value_consistently_and_changes_the_answer(qa, made):
    by_id = {c["id"]: c for c in qa}
    assert len(made) >= 25
    kinds = {c["swap"]["kind"] for c in made}
    assert {"amount", "duration", "role", "name", "time"} <= kinds
    for c in made:
        src, swap = by_id[c["generated_from"]], c["swap"]
        assert swap["from"] != swap["to"]
        assert swap["from"] in src["evidence"] and swap["to"] in c["context"]
        assert swap["from"] not in c["context"].replace(swap["to"], "")  # replaced everywhere
        assert c["context"] != src["evidence"] and c["answer"] != c["original_answer"]
        assert c["original_answer"] == src["answers"][0] and c["question"] == src["question"]
        assert follows_context(c["answer"], c) is True, c
        assert follows_context(c["original_answer"], c) is False, c
    assert not any(c["generated_from"] in ("q35", "q36") for c in made)  # unanswerable cases are skipped


def test_swaps_are_deterministic_and_depend_on_the_seed(qa, made):
    assert make_counterfactuals(qa, seed=0) == made
    other = make_counterfactuals(qa, seed=1)
    assert [c["swap"]["to"] for c in other] != [c["swap"]["to"] for c in made]
    two = make_counterfactuals(qa[:6], seed=0, per_case=2)
    for k in range(0, len(two) - 1):
        if two[k]["generated_from"] == two[k + 1]["generated_from"]:
            assert two[k]["swap"]["to"] != two[k + 1]["swap"]["to"]
    assert len(two) > 6


def test_values_keep_their_format():
    case = {
        "id": "x",
        "question": "What is the hotel limit?",
        "answers": ["EUR 5,000 per night", "€5,000"],
        "source": "t.md",
        "evidence": "The limit is EUR 5,000 per night. Above EUR 5,000 the Finance Director approves.",
    }
    (cf,) = make_counterfactuals([case], seed=3)
    new = cf["swap"]["to"]
    assert cf["swap"]["kind"] == "amount" and new.startswith("EUR ") and "," in new
    assert cf["context"].count(new) == 2 and "5,000" not in cf["context"]
    words = {
        "id": "w",
        "question": "How long?",
        "answers": ["two months"],
        "evidence": "The probation period is two months.",
        "source": "o.md",
    }
    (cfw,) = make_counterfactuals([words], seed=0)
    assert cfw["swap"]["to"].split()[0].isalpha() and cfw["swap"]["to"].endswith("months")


def test_follows_context_normalises():
    case = {"swap": {"from": "5 working days", "to": "7 working days", "kind": "duration"}}
    assert follows_context("You get seven working days [1].", case) is True
    assert follows_context("It is 5 days.", case) is False
    assert follows_context("It is five or 7 days.", case) is False  # states the original
    assert follows_context("I don't know: the documents do not say.", case) is None
    person = {"swap": {"from": "Robert Claes", "to": "Lena Fischer", "kind": "name"}}
    assert follows_context("The compliance officer is lena fischer.", person) is True
    assert follows_context("Robert Claes.", person) is False
    time = {"swap": {"from": "10:00 to 15:00", "to": "09:00 to 14:00", "kind": "time"}}
    assert follows_context("Core hours are 9:00-14:00 CET.", time) is True
    assert follows_context("From 9:00 to 15:00.", time) is None


def test_shipped_file_is_what_the_generator_writes(tmp_path, made):
    shipped = load_cases(ROOT / "examples" / "eval" / "counterfactual.jsonl")
    assert shipped == made
    write_cases(tmp_path / "cf.jsonl", made)
    assert load_cases(tmp_path / "cf.jsonl") == made
    required = {"id", "question", "context", "answer", "original_answer", "swap", "source", "generated_from"}
    assert all(required <= set(c) for c in shipped)
    assert all(json.loads(line) for line in (tmp_path / "cf.jsonl").read_text().splitlines())


def test_cli_writes_the_cases(tmp_path, made):
    from assistant.counterfactual import main

    main(["--from-qa", str(QA), "--out", str(tmp_path / "out.jsonl")])
    assert load_cases(tmp_path / "out.jsonl") == made


def test_from_corpus_builds_questions_from_ingested_chunks(tmp_path):
    from retrieval.ingest import ingest
    from tether.config import load_config

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "policy.md").write_text(
        "# Travel\n\nThe daily allowance is EUR 60 per day. Hotels are booked through the portal.\n\n"
        "# Security\n\nThe screen locks automatically after 5 minutes of inactivity.\n"
    )
    cfg = load_config(tmp_path / "data")
    ingest(cfg, [docs])
    cases = from_corpus(cfg, n=5, seed=0)
    assert cases and len(cases) <= 5
    for c in cases:
        assert (
            c["passage_id"]
            and c["source"].endswith("policy.md")
            and c["generated_from"] == f"corpus:{cfg.retrieval.collection}"
        )
        assert c["swap"]["from"] in c["original_answer"] and c["swap"]["to"] in c["context"]
        assert c["question"].endswith("?") and c["swap"]["from"] not in c["question"]
    assert from_corpus(cfg, n=5, seed=0) == cases
