"""The answerability check (assistant/answerability.py): what a question asks for, which sentences
state it, and the refusal it gives every generator on a near-miss (real MiniLM, Chroma, SQLite)."""

import pytest

from assistant.answerability import expected_answer, holds, judge, windows
from assistant.engine import ChatEngine, Findings
from assistant.prompts import REFUSAL
from retrieval.ingest import ingest
from tether.config import load_config


@pytest.mark.parametrize(
    ("question", "kind", "bound", "units"),
    [
        ("How many indexes must a table have before workers start?", "quantity", None, ()),
        ("What's the maximum length of a snapshot label?", "quantity", "max", ()),
        ("How many linked copies can one store have at most?", "quantity", "max", ()),
        ("What is the minimum number of replicas?", "quantity", "min", ()),
        ("How many entries does each slot take in shared memory, in bytes?", "quantity", None, ("size",)),
        ("On Linux, how many seconds pass before a probe is sent?", "quantity", None, ("time",)),
        ("How long can the file names handed to the hook be?", "quantity", None, ()),  # a length, not a time
        ("Which TCP port does the daemon listen on?", "quantity", None, ()),
        ("In which release was the switch command introduced?", "version", None, ()),
        ("Since what version is the flag deprecated?", "version", None, ()),
        ("Which checksum algorithm is used for pages?", "open", None, ()),
        ("Why is --checksum needed on the second pass?", "open", None, ()),
        ("Does the backup tool check the modification field?", "open", None, ()),
    ],
)
def test_the_kind_of_answer_a_question_asks_for(question, kind, bound, units):
    e = expected_answer(question)
    assert (e.kind, e.bound, e.units) == (kind, bound, units)
    assert e.checked == (kind != "open")


def test_a_value_must_be_new_of_the_asked_unit_and_bound_and_not_a_reference():
    many = expected_answer("How many FROM items does a query need by default?")
    assert holds("The default is 12.", many)
    assert holds("Workers start only when there are at least two indexes.", many)
    assert not holds("See Section 20.4.4 and git-config(1) for the details.", many)  # references, not values
    assert not holds("Specifies the number of items that triggers the planner.", many)
    assert not holds("The one before it is kept.", many)  # "one" as a pronoun
    at_zero = expected_answer("How many seconds pass when the idle setting is left at 0?")
    assert not holds("A value of 0 selects the system default.", at_zero)  # 0 is the question's own value
    assert holds("Setting it to 0 uses 7200 seconds.", at_zero)
    in_bytes = expected_answer("How much memory does each lock entry take, in bytes?")
    assert holds("Each entry uses about 270 bytes of shared memory.", in_bytes)
    assert holds("The default is 4MB.", in_bytes)  # a unit glued to its number
    assert not holds("The table tracks 64 entries per transaction.", in_bytes)  # a count, not a size
    assert holds("If this value is specified without units, it is taken as bytes. The default is 8.", in_bytes)
    longest = expected_answer("What is the maximum number of parallel jobs the restore accepts?")
    assert holds("File names can be up to 64 characters long.", longest)
    assert not holds("It runs the slow steps using up to number-of-jobs concurrent sessions.", longest)
    assert not holds("A repository has 1 main tree and 0 or more linked trees.", longest)  # no bound stated
    version = expected_answer("Which release made simple the default?")
    assert holds("This used to be the default, but not since Git 2.0.", version)
    assert not holds("See chapter 2.3 for the rules.", version)
    assert holds("Anything at all.", expected_answer("Why does the push fail?"))


def test_judge_reads_the_sentences_after_the_best_ones_and_says_why_not():
    per_passage = [
        ["Use the planner for queries with at least this many items.", "The default is 12.", "It is fast."],
        ["The planner is an algorithm.", "It searches heuristically."],
    ]
    ranked = [(0.9, 0, 0), (0.2, 0, 1), (0.1, 0, 2), (0.7, 1, 0), (0.5, 1, 1)]
    q = "How many items does a query need before the planner is used?"
    verdict = judge(q, windows(ranked, per_passage, depth=1, follow=2))
    assert verdict.answerable and verdict.evidence == "The default is 12."
    assert not judge(q, windows(ranked, per_passage, depth=1, follow=0)).answerable  # the value is in the next one
    ranked_b = [(0.9, 1, 0), (0.8, 1, 1), (0.1, 0, 0), (0.1, 0, 1), (0.1, 0, 2)]
    no = judge(q, windows(ranked_b, per_passage, depth=2, follow=2))
    assert not no.answerable and no.evidence is None and "a number" in no.reason
    assert judge("Why is the planner used?", []).answerable  # open questions are not checked


DOCS = {
    "snapshots.md": (
        "# Snapshots\n\nThe archive service stores a snapshot of every project each night. "
        "Snapshots are compressed before they are written to the archive disk. "
        "Each snapshot is kept for a retention period.\n\nThe default retention is 45 days.\n\n"
        "Administrators can restore any kept snapshot from the archive page.\n"
    ),
    "projects.md": (
        "# Projects\n\nA project groups repositories, members and their settings. "
        "Project owners invite members and choose who can push to the repositories.\n"
    ),
}


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    from retrieval.embeddings import embedder_for

    root = tmp_path_factory.mktemp("answerability")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    cfg = load_config(root / "data").with_assistant(generator="extractive")
    assert ingest(cfg, [docs], embedder=embedder_for(cfg)).exit_code == 0
    return cfg


KEPT = "How many days is a snapshot kept by default?"
NEAR_MISS = "What is the maximum size of a snapshot?"


def test_the_extractive_answerer_refuses_a_near_miss_and_states_the_asked_value(small_cfg):
    engine = ChatEngine(small_cfg, log_turns=False)
    try:
        kept = engine.answer(KEPT)
        assert not kept.refused and "45 days" in kept.text
        miss = engine.answer(NEAR_MISS)
        assert miss.refused and miss.text == REFUSAL
        assert not engine.answer("Who decides who can push to the repositories of a project?").refused
        off = ChatEngine(small_cfg.with_assistant(answerability=False), log_turns=False)
        assert not off.answer(NEAR_MISS).refused  # on topic: only the check refuses it
    finally:
        engine.searcher.close()


def test_an_llm_is_not_asked_a_near_miss_and_is_shown_the_value_sentence(small_cfg):
    from tests.test_engine import Scripted, _llm

    base = ChatEngine(small_cfg, log_turns=False)
    try:
        llm = _llm(base, Scripted(["45 days."]), min_relevance=0.0)
        hits = base.searcher.search(NEAR_MISS, k=5)
        assert llm.select_context(NEAR_MISS, hits, Findings()).refuse
        off = _llm(base, Scripted(["45 days."]), min_relevance=0.0, answerability=False)
        assert not off.select_context(NEAR_MISS, hits, Findings()).refuse
        ctx = llm.select_context(KEPT, base.searcher.search(KEPT, k=5), Findings())
        assert not ctx.refuse and "The default retention is 45 days." in ctx.messages[1].content
        verdict, holder = llm.answerability(KEPT, base.searcher.search(KEPT, k=5))
        assert verdict.evidence == "The default retention is 45 days." and holder is not None
    finally:
        base.searcher.close()


def test_answerability_settings_are_validated(tmp_path):
    from tether.errors import ConfigError

    (tmp_path / "tether.yaml").write_text("assistant:\n  answerability_depth: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="answerability_depth"):
        load_config(tmp_path)
