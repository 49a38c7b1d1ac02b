"""The training loop end to end on the real default model, SmolLM2-135M-Instruct, on the CPU.

    .venv/bin/python bench/train_cpu_smollm2.py --out bench/out/smollm2-train [--sft-steps 30 --kto-steps 20 --eval-cases 12]

1. ingest examples/handbook; convert the shipped SmolLM2 once
2. feedback: questions made from handbook chunks (``assistant.counterfactual.from_corpus`` on the real
   corpus, their original values as the gold) are answered by the engine (SmolLM2) and judged by a
   simulated user: thumbs up when the answer states the gold value, down otherwise (logged as real
   turns and feedback in tether.db)
3. datasets (``training.data.build_datasets``): SFT from counterfactual contexts made from the corpus
   (cases whose chunk is an evaluation context are dropped), KTO from the thumbs
4. eval before: ``run_suite`` on a subset of examples/eval (QA questions -> grounding; counterfactual
   cases -> follow-context rate)
5. SFT (LoRA, ``--sft-steps``) then KTO on top of it (``--kto-steps``), through ``training.trainers.run``
6. eval after with the KTO adapter (SFT stacked in), the gate verdict, and a JSON summary in --out

The equivalent CLI sequence is in docs/TRAINING.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METRICS = (
    "conflicts.follow_context.plain",
    "conflicts.follow_context.cad",
    "grounding.groundedness",
    "grounding.citation_precision",
    "answers.contains",
    "answers.f1",
    "answers.refusal_accuracy",
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "smollm2-train")
    p.add_argument("--sft-steps", type=int, default=30)
    p.add_argument("--kto-steps", type=int, default=20)
    p.add_argument("--feedback", type=int, default=24, help="questions answered for simulated feedback")
    p.add_argument("--counterfactuals", type=int, default=60)
    p.add_argument(
        "--eval-cases", type=int, default=12, help="QA questions and counterfactual cases each, from examples/eval"
    )
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "chromadb", "sentence_transformers", "transformers", "urllib3", "bm25s"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    from assistant.counterfactual import from_corpus
    from assistant.engine import ChatEngine
    from assistant.evaluation.gate import gate
    from assistant.evaluation.suites import run_suite
    from assistant.models import install_smollm2
    from retrieval.ingest import ingest
    from tether.config import load_config
    from tether.db import connect
    from training.config import DataConfig, load_train_config
    from training.data import build_datasets
    from training.registry import record_dataset
    from training.trainers import run

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(out / "data").with_assistant(generator="hf", model="smollm2", max_new_tokens=args.max_new_tokens)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    ingest(cfg, [ROOT / "examples" / "handbook"])
    install_smollm2(cfg.models_dir)
    timings["setup_s"] = time.perf_counter() - t

    # the evaluation subset (held out from training below)
    eval_rows = []
    for name in ("qa.jsonl", "counterfactual.jsonl"):
        rows = [json.loads(x) for x in (ROOT / "examples" / "eval" / name).read_text().splitlines() if x.strip()]
        eval_rows += rows[: args.eval_cases]
    suite = out / "eval-subset.jsonl"
    suite.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in eval_rows))
    eval_texts = [r.get("context") or r.get("evidence") or "" for r in eval_rows]

    def held_out(case: dict) -> bool:
        ctx = case.get("context", "")
        return not any(e and (e[:60] in ctx or e[:60] in case.get("evidence", "")) for e in eval_texts) and not any(
            case["question"] == r["question"] for r in eval_rows
        )

    # 2. simulated feedback on real engine turns
    t = time.perf_counter()
    fb_cases = [c for c in from_corpus(cfg, n=args.feedback * 2, seed=11) if held_out(c)][: args.feedback]
    engine = ChatEngine(cfg)
    ups = downs = 0
    from assistant.counterfactual import mentions  # the same value matcher the follow-context judge uses

    for c in fb_cases:
        answer = engine.answer(c["question"])
        original = c["swap"]["from"]
        good = mentions(answer.text, original, c["swap"]["kind"])
        engine.logstore.add_feedback(answer.turn_id, "up" if good else "down", user="simulated")
        ups += good
        downs += not good
    engine.searcher.close()
    del engine
    timings["feedback_s"] = time.perf_counter() - t
    logging.info("simulated feedback: %d up, %d down", ups, downs)

    # 3. datasets
    cf_rows = [c for c in from_corpus(cfg, n=args.counterfactuals * 2, seed=3) if held_out(c)][: args.counterfactuals]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.models_dir / "smollm2-135m-instruct", local_files_only=True)
    db = connect(cfg.db_path)
    manifests = build_datasets(
        cfg,
        DataConfig(out_dir=str(out / "datasets"), kinds="sft,kto", eval_fraction=0.1, max_tokens=768),
        tokenizer=tok,
        counterfactual_rows=cf_rows,
        record=lambda m: record_dataset(db, m),
    )
    db.close()

    # 4. before
    t = time.perf_counter()
    before = run_suite(cfg, suite, label="smollm2-before")
    timings["eval_before_s"] = time.perf_counter() - t

    # 5. SFT then KTO
    common = dict(
        base_model="smollm2", lora_r=16, lora_alpha=32, max_length=768, device="cpu", save_steps=10, learning_rate=2e-4
    )
    sft = run(
        load_train_config(
            None,
            "sft",
            dataset=str(out / "datasets" / "sft"),
            output_dir=str(out / "runs" / "sft"),
            max_steps=args.sft_steps,
            batch_size=2,
            grad_accum=1,
            **common,
        ),
        cfg,
    )
    kto = run(
        load_train_config(
            None,
            "kto",
            dataset=str(out / "datasets" / "kto"),
            output_dir=str(out / "runs" / "kto"),
            max_steps=args.kto_steps,
            batch_size=2,
            grad_accum=1,
            init_adapter=str(sft.adapter_dir),
            beta=0.1,
            **common,
        ),
        cfg,
    )

    # 6. after
    t = time.perf_counter()
    after_sft = run_suite(cfg.with_assistant(adapter=str(sft.adapter_dir)), suite, label="smollm2-after-sft")
    after = run_suite(cfg.with_assistant(adapter=str(kto.adapter_dir)), suite, label="smollm2-after-sft-kto")
    timings["eval_after_s"] = time.perf_counter() - t
    verdict = gate(after, before)
    summary = {
        "feedback": {"up": ups, "down": downs},
        "datasets": {
            k: {"train": m.n_train, "eval": m.n_eval, "by_source": m.counts["by_source"]} for k, m in manifests.items()
        },
        "sft": {
            "steps": sft.steps,
            "final_loss": sft.final_loss,
            "plan": {k: sft.plan[k] for k in ("batch_size", "grad_accum", "dtype")},
        },
        "kto": {"steps": kto.steps, "final_loss": kto.final_loss},
        "metrics": {
            label: {m: run_.metrics.get(m) for m in METRICS}
            for label, run_ in (("before", before), ("after_sft", after_sft), ("after_sft_kto", after))
        },
        "runs": {"before": before.run_id, "after_sft": after_sft.run_id, "after_sft_kto": after.run_id},
        "gate": verdict.to_json(),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "train_seconds": {
            "sft": json.loads(json.dumps(_yaml(sft.output_dir / "run.yaml")["train_seconds"])),
            "kto": _yaml(kto.output_dir / "run.yaml")["train_seconds"],
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


if __name__ == "__main__":
    main()
