"""One module per text fact: citation checks, conflict detection and the consistency check read values
through the one parser (tether.text.quantities), so they agree on what "3 weeks" means; the shared
helpers (terms, sentences, the CrossEncoder loader, the clock, the git commit) behave as their callers
need."""

from __future__ import annotations

import re

import pytest

from assistant.citations import supports, unsupported_quantities, verify_citations
from assistant.consistency import agree
from retrieval.conflicts import Claim, RuleConflictDetector, claim_features, rule_hit
from retrieval.search import SearchHit
from tether.text.quantities import find_numbers, find_times, missing_values, number_word

CLAIM = "Flights must be booked through the travel desk at least 3 weeks before departure."
SAME = "Flights must be booked through the travel desk at least 21 days before departure."
OTHER = "Flights must be booked through the travel desk at least 14 days before departure."


def hit(text: str) -> SearchHit:
    return SearchHit(
        "p1",
        text,
        "travel.md",
        "Travel",
        (0, len(text)),
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


def test_citations_and_conflicts_agree_that_3_weeks_is_21_days_and_not_14_days():
    # the citation check: a sentence stating "3 weeks" is backed by a source saying "21 days"
    assert supports(1.0, CLAIM, SAME)
    assert unsupported_quantities(CLAIM, SAME) == set()
    assert not supports(1.0, CLAIM, OTHER)
    assert unsupported_quantities(CLAIM, OTHER) == {("3", "week")}
    # conflict detection: "3 weeks" and "21 days" are one value; "14 days" contradicts it
    assert rule_hit(claim_features(CLAIM), claim_features(SAME)) is None
    found = rule_hit(claim_features(CLAIM), claim_features(OTHER))
    assert found is not None and found.kind == "numeric" and {found.value_a, found.value_b} == {"21 days", "14 days"}
    # the consistency check reads them the same way
    assert agree(CLAIM, SAME, 0.9) and not agree(CLAIM, OTHER, 0.9)


def test_the_full_paths_agree_too(embedder):
    cited = CLAIM[:-1] + " [1]."
    (backed,), g_same = verify_citations(cited, [hit(SAME)], embedder)
    (unbacked,), g_other = verify_citations(cited, [hit(OTHER)], embedder)
    assert backed.supported and g_same == 1.0
    assert not unbacked.supported and g_other == 0.0
    detector = RuleConflictDetector(embedder)
    a = Claim(CLAIM, "travel-2024.md")
    assert detector.judge(a, Claim(SAME, "travel-2022.md")) is None
    conflict = detector.judge(a, Claim(OTHER, "travel-2022.md"))
    assert conflict is not None and conflict.kind == "numeric"


@pytest.mark.parametrize(
    "claim, evidence, missing",
    [
        ("Requests are answered within one month.", "Requests are answered within 1 month.", []),
        # a date the evidence gives more precisely
        ("Carried-over days must be taken by 31 March.", "The deadline is 2025-03-31.", []),
        ("The office opens at 9:00.", "The office is open from 09:00 to 18:00.", []),  # one end of a stated range
        ("The policy dates from 2024.", "Effective date: 1 June 2024.", []),  # a bare year is a number
        ("Call 2222 in an emergency.", "Emergency: call internal number 2222.", []),
        ("Call 2223 in an emergency.", "Emergency: call internal number 2222.", ["2223"]),
        ("Use form A4.", "Use form A5.", ["4"]),  # digits in codes count for citations
        ("The allowance is EUR 60 per day.", "The allowance is EUR 60 per night.", ["EUR 60"]),  # another rate
        ("Employees get 25 days.", "Employees get 25 working days.", ["25 days"]),  # working days are not days
    ],
)
def test_missing_values(claim, evidence, missing):
    assert [v.text for v in missing_values(claim, evidence)] == missing


def test_find_numbers_times_and_number_words():
    assert [(n.text, n.value) for n in find_numbers("3 weeks, twenty-five days, EUR 1,000, a dozen, 2.5%")] == [
        ("3", 3.0),
        ("twenty-five", 25.0),
        ("1,000", 1000.0),
        ("a dozen", 12.0),
        ("2.5", 2.5),
    ]
    assert find_numbers("a one-off payment for the HS400 sensor") == []  # words glued to words, digits in codes
    assert [n.text for n in find_numbers("the HS400 sensor", in_codes=True)] == ["400"]
    times = find_times("Core hours are 9:00-14:00 CET; 2.30 is a number")
    assert [(t.text, t.hour, t.minute) for t in times] == [("9:00", 9, 0), ("14:00", 14, 0)]
    assert [number_word(n) for n in (0, 7, 20, 21)] == ["zero", "seven", "twenty", None]


def test_one_stop_word_list_feeds_lexical_overlap_and_conflict_terms():
    from retrieval.conflicts import claim_features
    from tether.text.terms import STOP_WORDS, content_words, lexical_overlap

    assert content_words("How many days of leave do I get?") == {"many", "days", "leave"}
    overlap = lexical_overlap("How many days of leave?", ["Leave is 25 days.", "Hotels are booked."])
    assert overlap.tolist() == pytest.approx([2 / 3, 0.0])
    terms = claim_features("The travel desk books the hotels for every employee.").terms
    assert not {w for w in STOP_WORDS if len(w) >= 3} & terms and {"travel", "desk", "hotel"} <= terms


def test_sentence_texts_collapse_whitespace_and_drop_fragments():
    from tether.text.sentences import split_sentences_text

    text = "Leave is\n25 days.  Yes. Ask   your manager first."
    assert split_sentences_text(text) == ["Leave is 25 days.", "Ask your manager first."]


def test_cross_encoder_loader_names_the_folder_and_the_setting(tmp_path):
    from tether.crossencoder import load_cross_encoder
    from tether.errors import BackendUnavailable

    with pytest.raises(
        BackendUnavailable, match=r"reranker '.*missing' is not a local folder; set retrieval\.reranker"
    ):
        load_cross_encoder(tmp_path / "missing", setting="retrieval.reranker", what="reranker")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendUnavailable, match=r"cannot load the NLI model from .*empty.*set assistant\.nli_model"):
        load_cross_encoder(tmp_path / "empty", setting="assistant.nli_model", what="NLI model")


def test_now_iso_keeps_both_stored_formats():
    from tether.clock import now_iso

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", now_iso())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", now_iso("seconds"))


def test_git_commit_outside_and_inside_a_checkout(tmp_path):
    from tether.provenance import git_commit

    assert git_commit(tmp_path) is None
    head = git_commit()
    if head is not None:  # a source checkout
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", head)
        assert git_commit(dirty=False) == head.split("+")[0]
