"""Intra-memory consistency (assistant/consistency.py) with a real hf generator on a tiny random Llama
and the real MiniLM embedder."""

import pytest

from assistant.consistency import agree, check_consistency, paraphrases, summarise
from assistant.generators.base import GenParams
from tests.tiny_llm import make_tiny_llm


def test_paraphrases_keep_every_word_of_the_question():
    q = "How many days of annual leave do employees get?"
    ps = paraphrases(q)
    assert len(ps) == 2 and len(set(ps + [q])) == 3
    words = set(q.lower().rstrip("?").split())
    for p in ps:
        assert words <= set(p.lower().rstrip("?").replace(":", "").replace(",", "").split())


def test_agreement_needs_the_same_numbers_and_similar_meaning():
    assert agree("You get 25 days.", "Employees receive 25 days.", 0.9)
    assert not agree("You get 25 days.", "You get 30 days.", 0.95)  # similar words, different number
    assert not agree("Ask your manager.", "The canteen opens at noon.", 0.2)


@pytest.fixture(scope="module")
def tiny_gen(tmp_path_factory):
    from assistant.generators.hf import HFGenerator

    return HFGenerator(make_tiny_llm(tmp_path_factory.mktemp("tiny-llm")), device="cpu")


def test_check_consistency_asks_three_phrasings_without_sources(tiny_gen, embedder):
    result = check_consistency(
        tiny_gen, "How many days of leave?", "You get 25 days [1].", embedder, GenParams(max_new_tokens=8)
    )
    assert result["questions"][0] == "How many days of leave?" and len(result["answers"]) == 3
    assert [p[:2] for p in result["pairwise"]] == [[0, 1], [0, 2], [1, 2]]
    assert result["consistent"] == all(p[3] for p in result["pairwise"])
    # greedy decoding of the same prompt is deterministic, so the same question twice agrees with itself
    again = check_consistency(
        tiny_gen, "How many days of leave?", "You get 25 days [1].", embedder, GenParams(max_new_tokens=8)
    )
    assert again["answers"] == result["answers"]
    assert len(result["agrees_with_context"]) == 3


def test_summarise_flags_both_kinds_of_disagreement():
    assert "inconsistently" in summarise({"consistent": False, "context_memory_conflict": False})
    assert "context-memory" in summarise({"consistent": True, "context_memory_conflict": True})
    assert summarise({"consistent": True, "context_memory_conflict": False}) is None
    assert summarise(None) is None
