"""Citation verification (assistant/citations.py) with the real MiniLM embedder."""

from assistant.citations import verify_citations
from retrieval.search import SearchHit


def hit(text, source="travel.pdf"):
    return SearchHit(
        "p1",
        text,
        source,
        "Travel",
        (100, 100 + len(text)),
        None,
        1.0,
        1,
        None,
        None,
        "2024-06-01",
        "current",
        "official",
        1,
    )


PASSAGE = hit("Within the EU the daily allowance is EUR 60. For trips outside the EU the daily allowance is €85.")


def test_a_sentence_stating_the_cited_fact_is_supported_with_its_span(embedder):
    citations, groundedness = verify_citations("The daily allowance within the EU is EUR 60 [1].", [PASSAGE], embedder)
    (c,) = citations
    assert c.supported and groundedness == 1.0
    assert c.support == "Within the EU the daily allowance is EUR 60."
    assert c.span == (100, 100 + len(c.support))


def test_a_value_taken_from_another_scope_is_not_supported(embedder):
    # 85 is in the passage, but for trips outside the EU: similar words, different fact
    citations, groundedness = verify_citations("The daily allowance inside the EU is EUR 85 [1].", [PASSAGE], embedder)
    assert [c.supported for c in citations] == [False] and groundedness == 0.0


def test_a_number_missing_from_the_passage_and_a_citation_out_of_range_are_not_supported(embedder):
    citations, groundedness = verify_citations("The allowance is EUR 70 [1]. Hotels are free [3].", [PASSAGE], embedder)
    assert [c.supported for c in citations] == [False, False] and groundedness == 0.0
    assert citations[1].passage_id == ""


def test_uncited_sentences_count_against_groundedness_but_tethers_own_words_do_not():
    from assistant.engine import uncited_sentences

    text = "The allowance is EUR 60 [1]. It is paid monthly by payroll. Yes. Source 1 is travel.pdf (dated 2024-06-01)."
    assert uncited_sentences(text, own=["Source 1 is travel.pdf (dated 2024-06-01)."]) == [
        "It is paid monthly by payroll."
    ]
