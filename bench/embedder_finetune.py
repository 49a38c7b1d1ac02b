"""Lever (c) of issue 11, deliverable 2, the bi-encoder side: fine-tune MiniLM on one collection's own
synthetic questions, then measure evidence recall with it (an experiment, not a Tether command).

The questions and hard negatives are the reranker's (``training.reranker.prepare``: questions made from
the chunks, one negative from the same page and one from the fused search's top hits; the held-out
chunks are never trained on); the loss is sentence-transformers' ``MultipleNegativesRankingLoss`` (each
question against its chunk, its two negatives and the other questions' chunks in the batch), one epoch on
the CPU. The model is written to ``--out/model``; then measure it as an index-time variant::

    .venv/bin/python bench/embedder_finetune.py --data-dir /tmp/tether-extqa/postgresql-<hash> --out /tmp/ft-pg
    .venv/bin/python bench/external_qa.py --corpus postgresql --split dev --variant new-defaults \\
        --variant ft:embed_model=/tmp/ft-pg/model

(the data dir is the one ``bench/external_qa.py`` ingested; no labelled question is used for training).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # bench/retrieval.py would shadow the retrieval package


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="an ingested Tether data dir")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--questions", type=int, default=600)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-seq-length", type=int, default=256)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.training_args import BatchSamplers

    from tether.config import load_config
    from tether.crossencoder import resolve_model_path
    from training.reranker import RerankerConfig, listwise_rows, prepare

    cfg = load_config(args.data_dir)
    rcfg = RerankerConfig(
        out_dir=str(args.out / "pairs"),
        max_questions=args.questions,
        same_doc_negatives=1,
        retrieved_negatives=1,
        random_negatives=0,
    )
    pairs, _, manifest = prepare(cfg, rcfg)
    cols = listwise_rows(pairs, 0)
    torch.manual_seed(0)
    model = SentenceTransformer(str(resolve_model_path(cfg.retrieval.embed_model)), device="cpu", local_files_only=True)
    model.max_seq_length = args.max_seq_length
    data = Dataset.from_dict(
        {
            "anchor": cols["query"],
            "positive": cols["positive"],
            **{k: v for k, v in cols.items() if k.startswith("negative")},
        }
    )
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(args.out / "checkpoints"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=max(1, int(len(data) / args.batch_size * args.epochs) // 10),
        use_cpu=True,
        save_strategy="no",
        logging_steps=5,
        report_to=[],
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        seed=0,
    )
    t = time.monotonic()
    SentenceTransformerTrainer(
        model=model, args=targs, train_dataset=data, loss=losses.MultipleNegativesRankingLoss(model)
    ).train()
    seconds = round(time.monotonic() - t, 1)
    model.save(str(args.out / "model"))
    info = {"questions": len(cols["query"]), "train_seconds": seconds, "pairs": manifest, "args": vars(args)}
    (args.out / "model" / "finetune.json").write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    print(json.dumps({"model": str(args.out / "model"), "questions": len(cols["query"]), "train_seconds": seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
