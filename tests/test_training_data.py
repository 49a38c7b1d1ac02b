"""Dataset builders over a seeded log database (real SQLite, real LogStore, the inference prompt builder)."""

from __future__ import annotations

import json

import pytest

from assistant.conflict_answering import conflict_statement
from assistant.prompts import PromptSource, build_messages
from assistant.resolution import Decision, resolve
from retrieval.conflicts import Claim, Conflict
from tests.training_fixtures import COUNTERFACTUALS, TURNS, read_jsonl, seed_ledger, seed_log_db
from tether.errors import ConfigError
from training.config import DataConfig, load_train_config
from training.data import Row, build_datasets, dedupe, rebuild_prompt, split

LEAVE_CONFLICT = Conflict(
    "numeric",
    "amount",
    "annual leave days",
    (
        Claim(
            "Employees get twenty-five days of annual leave each year.",
            "leave.md",
            "leave.md#0",
            "Leave policy",
            "2024-01-10",
            "official",
            "current",
        ),
        Claim(
            "Employees get thirty days of annual leave.",
            "canteen.md",
            "canteen.md#1",
            "Canteen",
            "2023-05-02",
            "team",
            "current",
        ),
    ),
    0.9,
)
LEAVE_QUESTION = "How many leave days do employees get?"


def log_conflict_turn(db_path, policy: str, answer: str = "Employees get thirty days [2].") -> tuple[str, Decision]:
    """A turn whose two sources conflict, logged through the real LogStore with the typed conflict
    and the policy's decision (passages [1] leave.md#0 and [2] canteen.md#1)."""
    from assistant.generators.base import GeneratorIdentity
    from assistant.logstore import LogStore
    from assistant.types import Answer
    from retrieval.search import SearchHit

    def hit(cid, text, source, title, date, authority, rank):
        return SearchHit(
            cid,
            text,
            source,
            title,
            (0, len(text)),
            None,
            1.0 / rank,
            rank,
            None,
            None,
            date,
            "current",
            authority,
            rank,
        )

    passages = (
        hit("leave.md#0", LEAVE_CONFLICT.claims[0].text, "leave.md", "Leave policy", "2024-01-10", "official", 1),
        hit("canteen.md#1", LEAVE_CONFLICT.claims[1].text, "canteen.md", "Canteen", "2023-05-02", "team", 2),
    )
    decision = resolve(LEAVE_CONFLICT, policy)
    logged = Answer(
        text=answer,
        refused=False,
        question=LEAVE_QUESTION,
        query=LEAVE_QUESTION,
        passages=passages,
        citations=(),
        groundedness=None,
        generator=GeneratorIdentity(backend="hf", model="tiny"),
        latency_ms={"total": 1.0},
        conflicts=(LEAVE_CONFLICT,),
        decisions=(decision,),
        policy=policy,
        relevant_conflicts=(0,),
    )
    prompt = [m.__dict__ for m in build_messages(LEAVE_QUESTION, [PromptSource(h.title, h.text) for h in passages])]
    _, turn_id = LogStore(db_path).log_turn(logged, collection="tether", conversation_id=None, prompt=prompt)
    return turn_id, decision


@pytest.fixture
def built(cfg, tmp_path):
    seeded = seed_log_db(cfg.db_path)  # its conflict turn predates the typed log: skipped
    log_conflict_turn(cfg.db_path, "prefer-official")
    dcfg = DataConfig(out_dir=str(tmp_path / "ds"), eval_fraction=0.2)
    manifests = build_datasets(cfg, dcfg, counterfactual_rows=COUNTERFACTUALS)
    return seeded, dcfg, manifests


def _all(d, kind):
    return read_jsonl(f"{d.out_dir}/{kind}/train.jsonl") + read_jsonl(f"{d.out_dir}/{kind}/eval.jsonl")


def test_sft_rows_use_the_logged_prompt_and_the_good_answers(built):
    seeded, dcfg, manifests = built
    rows = _all(dcfg, "sft")
    answers = [r["messages"][-1]["content"] for r in rows]
    # accepted and edited answers are in, rejected ones are not
    assert "Your manager approves leave in the HR portal [1]." in answers
    assert "HR approves leave." not in answers and "Ask the canteen." not in answers
    assert "You get ten days of leave." not in answers
    # the prompt is exactly what the engine logged (the inference builder)
    first = next(r for r in rows if r["messages"][-1]["content"] == TURNS[0][1])
    assert first["messages"][:-1] == seeded["pair_prompt"]
    assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][0]["role"] == "system" for r in rows)
    # counterfactual rows answer from the context, cited
    cf = [r for r in rows if "Lyon" in r["messages"][1]["content"]]
    assert cf and cf[0]["messages"][-1]["content"] == "Lyon [1]."


def test_extractive_turn_prompt_is_rebuilt_from_retrievals_with_the_same_builder(built, cfg):
    from assistant.logstore import LogStore

    seeded, dcfg, _ = built
    rows = _all(dcfg, "sft")
    ext = [r for r in rows if r["messages"][-1]["content"].startswith("The canteen opens at 07:45 and closes")]
    assert len(ext) == 1
    from tests.training_fixtures import DOCS

    title, date, authority, chunks = DOCS["canteen.md"]
    expected = build_messages(
        "What are the canteen hours?", [PromptSource(title, c, date, authority, "current") for c in chunks]
    )
    assert ext[0]["messages"][:-1] == [{"role": m.role, "content": m.content} for m in expected]
    with LogStore.open(cfg.db_path) as store:
        assert rebuild_prompt(store, seeded["extractive"], "What are the canteen hours?") == expected


def test_dpo_pairs_feedback_edits_conflicts_and_counterfactuals(built):
    _, dcfg, manifests = built
    rows = _all(dcfg, "dpo")
    pairs = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows}
    assert ("Your manager approves leave in the HR portal [1].", "HR approves leave.") in pairs  # edit vs own answer
    assert (TURNS[0][1], "You get ten days of leave.") in pairs  # accepted vs thumbs-down, same prompt
    conflict = [r for r in rows if r["chosen"][0]["content"].startswith("The sources disagree")]
    assert len(conflict) == 1
    assert conflict[0]["rejected"][0]["content"] == "Employees get thirty days [2]."
    assert "twenty-five days" in conflict[0]["chosen"][0]["content"] and "[1]" in conflict[0]["chosen"][0]["content"]
    assert ("Christopher Marlowe [1].", "William Shakespeare") in pairs
    assert all(r["prompt"][-1]["role"] == "user" for r in rows)
    assert manifests["dpo"].counts["by_source"]["conflict"] == 1


NUMBERS = {"leave.md#0": 1, "canteen.md#1": 2}  # the logged retrieval ranks


@pytest.mark.parametrize("policy, winner", [("prefer-official", 0), ("prefer-recent", 0), ("present-both", None)])
def test_conflict_chosen_is_the_engines_statement_for_the_logged_decision(cfg, tmp_path, policy, winner):
    from assistant.logstore import LogStore
    from training.data import dpo_from_conflicts

    seed_log_db(cfg.db_path)
    _, decision = log_conflict_turn(cfg.db_path, policy)
    assert decision.winner == winner
    rows = dpo_from_conflicts(LogStore.open(cfg.db_path), [])
    assert len(rows) == 1 and rows[0].source == "conflict"
    chosen = rows[0].data["chosen"][0]["content"]
    assert chosen == conflict_statement(LEAVE_CONFLICT, decision, NUMBERS)  # the same template, the logged decision
    assert (
        f"Following the {policy} policy" in chosen
        and rows[0].data["rejected"][0]["content"] == "Employees get thirty days [2]."
    )


def test_each_policy_gives_its_own_chosen_text(cfg):
    from assistant.logstore import LogStore
    from training.data import dpo_from_conflicts

    seed_ledger(cfg.db_path)
    for policy in ("prefer-official", "present-both"):
        log_conflict_turn(cfg.db_path, policy)
    chosen = [r.data["chosen"][0]["content"] for r in dpo_from_conflicts(LogStore.open(cfg.db_path), [])]
    assert len(chosen) == 2 and chosen[0] != chosen[1]
    assert "source 1 applies and overrides source 2" in chosen[0] and "both are shown" in chosen[1]


def test_an_answer_that_already_carries_the_statement_is_chosen_over_the_bare_reply(cfg):
    from assistant.logstore import LogStore
    from training.data import dpo_from_conflicts

    seed_ledger(cfg.db_path)
    reply = "Employees get twenty-five days of annual leave each year [1]."
    statement = conflict_statement(LEAVE_CONFLICT, resolve(LEAVE_CONFLICT, "prefer-official"), NUMBERS, answer=reply)
    log_conflict_turn(cfg.db_path, "prefer-official", answer=f"{reply} {statement}")
    rows = dpo_from_conflicts(LogStore.open(cfg.db_path), [])
    assert [(r.data["chosen"][0]["content"], r.data["rejected"][0]["content"]) for r in rows] == [
        (f"{reply} {statement}", reply)
    ]


def test_untyped_conflict_rows_are_skipped_with_a_warning(cfg, caplog):
    from assistant.logstore import LogStore
    from tether.db import connect, transaction
    from training.data import dpo_from_conflicts

    seeded = seed_log_db(cfg.db_path)  # logs {"kind", "claims": [{text, source, passage_id}]} and no decision
    turn_id, _ = log_conflict_turn(cfg.db_path, "prefer-official")
    db = connect(cfg.db_path)
    with transaction(db):  # a typed conflict whose decision column is empty
        db.execute("UPDATE conflicts SET decision = NULL WHERE turn_id = ?", (turn_id,))
    db.close()
    with caplog.at_level("WARNING", logger="training.data"):
        assert dpo_from_conflicts(LogStore.open(cfg.db_path), []) == []
    warned = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warned) == 2 and any(seeded["conflict"] in w and "subject" in w for w in warned)
    assert any(turn_id in w and "no decision" in w for w in warned)


def test_kto_rows_from_single_thumbs(built):
    _, dcfg, _ = built
    rows = _all(dcfg, "kto")
    labels = {(r["completion"][0]["content"], r["label"]) for r in rows}
    assert ("Coffee costs two euros.", False) in labels
    assert ("The canteen opens at 07:45 [1].", True) in labels
    assert ("Your manager approves leave in the HR portal [1].", True) in labels and (
        "HR approves leave.",
        False,
    ) in labels


def test_manifest_counts_hashes_and_dedup(built):
    import hashlib

    _, dcfg, manifests = built
    m = manifests["sft"]
    on_disk = json.loads(open(f"{dcfg.out_dir}/sft/manifest.json").read())
    assert on_disk["hash"] == m.hash and on_disk["n_train"] + on_disk["n_eval"] == len(_all(dcfg, "sft"))
    for name in ("train.jsonl", "eval.jsonl"):
        assert on_disk["files"][name] == hashlib.sha256(open(f"{dcfg.out_dir}/sft/{name}", "rb").read()).hexdigest()
    assert on_disk["counts"]["exact_duplicates"] >= 1  # the duplicated accepted turn
    assert "FROM turns t JOIN feedback" in on_disk["source_query"]["feedback"]
    assert m.n_eval >= 1 and m.n_train >= 1


def test_near_duplicates_dropped_and_split_keeps_prompts_together():
    def row(text, group):
        return Row("sft", "up", {"messages": []}, text, group)

    base = "the canteen opens at seven forty five every weekday morning and closes at half past two in the afternoon"
    kept, exact, near = dedupe(
        [row(base, "a"), row(base.upper(), "b"), row(base + " today", "c"), row("coffee is free on floor two", "d")]
    )
    assert (exact, near, len(kept)) == (1, 1, 2)
    rows = [row(f"q{i} text", f"g{i % 5}") for i in range(20)]
    train, ev = split(rows, 0.2, seed=0)
    assert {r.group for r in train}.isdisjoint({r.group for r in ev}) and len(ev) == 4


def test_length_filter_with_a_tokenizer(cfg, tmp_path):
    from tests.tiny_llm import make_tokenizer

    seed_log_db(cfg.db_path)
    m = build_datasets(
        cfg,
        DataConfig(out_dir=str(tmp_path / "ds"), kinds="kto", max_tokens=100),
        tokenizer=make_tokenizer(),
        counterfactual_rows=[],
    )
    assert m["kto"].counts["too_long"] > 0 and m["kto"].counts["length_unit"] == "tokens"


def test_configs_collect_every_problem(tmp_path):
    with pytest.raises(ConfigError) as err:
        DataConfig(out_dir="", kinds="sft,ppo", eval_fraction=1.5).validated()
    assert len(err.value.problems) == 3
    (tmp_path / "c.yaml").write_text("lora_r: 0\nlearning_rate: fast\nbogus: 1\nmethod: dpo\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(tmp_path / "c.yaml", "sft")
    text = str(err.value)
    for needle in (
        "lora_r",
        "learning_rate must be a number",
        "bogus is not a known setting",
        "`tether train sft`",
        "dataset",
    ):
        assert needle in text


class QueuedGenerator:
    """Yields queued replies (the LLM seam only; the backtranslation logic is what is tested)."""

    def __init__(self, replies):
        from assistant.generators.base import GeneratorIdentity

        self.replies = list(replies)
        self.prompts = []
        self.identity = GeneratorIdentity(backend="queued", model="test")

    def stream(self, messages, params):
        self.prompts.append(messages)
        yield self.replies.pop(0)


def test_backtranslated_rows_use_the_chunk_sentence_as_the_answer(cfg):
    from retrieval.ledger import Ledger
    from tests.training_fixtures import seed_ledger
    from training.data import sft_from_documents

    seed_ledger(cfg.db_path)
    gen = QueuedGenerator(
        ["When does the canteen open on weekdays?\nextra line", "not a question", "Question: How much leave is there?"]
        + ["x"] * 5
    )
    with Ledger.open(cfg.db_path) as ledger:
        rows = sft_from_documents(ledger, "tether", gen, 2, seed=0)
    assert len(rows) == 2 and len(gen.prompts) == 3  # the reply without '?' was dropped
    for row, prompt in zip(rows, [gen.prompts[0], gen.prompts[2]]):
        msgs = row.data["messages"]
        sentence = prompt[-1].content.rsplit("\n", 1)[1]  # the sentence the LLM was asked about
        assert [m.role for m in prompt] == ["system", "user", "assistant", "user"]  # one worked example first
        assert prompt[2].content.endswith("?") and sentence not in prompt[1].content
        assert msgs[-1]["content"].startswith(sentence.rstrip(".")) and msgs[-1]["content"].endswith("[1].")
        assert msgs[1]["content"].endswith("Question: " + row.text.split("\n")[0])
        assert sentence in msgs[1]["content"]  # the chunk is the one source of the prompt
    assert rows[1].text.startswith("How much leave is there?")


def test_backtranslation_with_a_real_tiny_llm_keeps_exactly_the_well_formed_questions(cfg, tmp_path):
    import torch

    from assistant.generators.base import GenParams
    from assistant.generators.hf import HFGenerator
    from retrieval.ledger import Ledger
    from tests.tiny_llm import make_tiny_llm
    from tests.training_fixtures import seed_ledger
    from training.data import sft_from_documents

    class Recording:
        def __init__(self, gen):
            self.gen, self.identity, self.outputs = gen, gen.identity, []

        def stream(self, messages, params):
            text = "".join(self.gen.stream(messages, params))
            self.outputs.append(text)
            yield text

    seed_ledger(cfg.db_path)
    gen = Recording(HFGenerator(make_tiny_llm(tmp_path / "tiny"), device="cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Ledger.open(cfg.db_path) as ledger:
            rows = sft_from_documents(ledger, "tether", gen, 2, seed=0, params=GenParams(max_new_tokens=8))
    finally:
        torch.set_num_threads(threads)
    assert gen.outputs  # the real model was asked
    well_formed = [o.strip().splitlines()[0].strip() for o in gen.outputs if o.strip()]
    well_formed = [q for q in well_formed if q.endswith("?") and 3 <= len(q.split()) <= 30]
    assert [r.text.split("\n")[0] for r in rows] == well_formed[:2]


def test_counterfactual_cases_from_a_file_reach_the_datasets(tmp_path):
    """`tether train data --counterfactual-cases FILE` makes counterfactuals of a QA file's cases through
    assistant.counterfactual (it once imported a module that does not exist, so the option crashed)."""
    from pathlib import Path

    from training.data import load_counterfactual_cases

    cases = Path(__file__).resolve().parent.parent / "examples" / "eval" / "qa.jsonl"
    rows = load_counterfactual_cases(
        None, DataConfig(out_dir=str(tmp_path / "ds"), counterfactual_cases=str(cases), counterfactuals=3)
    )
    assert len(rows) == 3 and all(r["context"] and r["question"] and r["answer"] != r["original_answer"] for r in rows)
    assert load_counterfactual_cases(None, DataConfig(out_dir=str(tmp_path / "ds"))) == []
