"""The refusal decision an LLM generator gets, without generating (issue 11, deliverable 4).

For each corpus (data dirs made by ``bench/external_qa.py`` under ``--work``) and one split of its
``bench/data/<corpus>/qa.jsonl``, runs what ``ChatEngine.select_context`` decides before a model is
asked: search, the relevance floor (``assistant.min_relevance``), then the answerability check
(``assistant/answerability.py``). Reports per corpus the near-misses refused and the answerable
questions refused (false refusals), which is what the check alone contributes to
``answers.refusal_accuracy`` and ``answers.false_refusal_rate`` of ``tether eval run`` with ``-g hf``.
A second of CPU per question, no model loaded, so the check can be tuned in a loop.

``--reranker DIR`` (one per ``--corpus``, a cross-encoder ``tether train reranker`` trained on that
corpus's own chunks, no label read) adds the probe of a learned signal: the best cross-encoder score
over the question's retrieved chunks, its AUC between near-misses and answerable questions, and the
decisions with ``--rr-threshold T`` (refuse also when that score is below T).

``--errors`` lists the questions decided wrongly, and only for the dev split: the test halves are for
reporting. Run from the repository root::

    .venv/bin/python bench/answerability_check.py --corpus postgresql --corpus git --split dev --errors
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def data_dir(work: Path, corpus: str) -> Path:
    """The data dir ``bench/external_qa.py`` made for ``corpus`` with today's index settings."""
    from bench.external_qa import index_key
    from tether.config import load_config

    found = work / index_key(corpus, load_config(data_dir=work / "unused"))
    if not (found / "ingested.json").is_file():
        raise SystemExit(
            f"error: no ingested {corpus} data dir under {work}: run "
            f"`.venv/bin/python bench/external_qa.py --corpus {corpus} --split dev` first"
        )
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", action="append", help="a folder of bench/data; repeatable")
    ap.add_argument("--split", choices=("dev", "test"), required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/tether-extqa"))
    ap.add_argument("--data-dir", type=Path, action="append", help="use this data dir (one per --corpus, in order)")
    ap.add_argument("--errors", action="store_true", help="list wrong decisions (dev split only)")
    ap.add_argument("--json", type=Path, help="write per-item decisions here")
    ap.add_argument("--reranker", type=Path, action="append", help="a trained cross-encoder per --corpus, in order")
    ap.add_argument("--rr-threshold", type=float, help="also refuse when the best cross-encoder score is below this")
    args = ap.parse_args()
    if args.errors and args.split != "dev":
        raise SystemExit("error: --errors lists dev items only; the test halves are for reporting")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.path.insert(0, str(REPO))  # the repository's packages and bench/ as a package
    from assistant.engine import ChatEngine
    from tether.config import load_config
    from tether.crossencoder import load_cross_encoder

    corpora = args.corpus or ["postgresql", "git"]
    dirs = args.data_dir or [data_dir(args.work, c) for c in corpora]
    if len(dirs) != len(corpora):
        raise SystemExit("error: give one --data-dir per --corpus")
    if args.reranker and len(args.reranker) != len(corpora):
        raise SystemExit("error: give one --reranker per --corpus")
    out: dict[str, list[dict]] = {}
    for n, (corpus, d) in enumerate(zip(corpora, dirs)):
        cross = load_cross_encoder(args.reranker[n], setting="--reranker") if args.reranker else None
        cfg = (
            load_config(d).with_retrieval(reranker="off").with_assistant(generator="extractive")
        )  # no model loaded: the check is the same
        engine = ChatEngine(cfg)
        rows = [json.loads(line) for line in (REPO / "bench" / "data" / corpus / "qa.jsonl").open(encoding="utf-8")]
        decided = []
        try:
            for row in rows:
                if row.get("split") != args.split:
                    continue
                q = row["question"]
                hits = engine.searcher.search(q, k=cfg.assistant.top_k)
                best = None
                if cross is not None and hits:
                    rows_by_id = engine.searcher.ledger.chunks_by_id([h.id for h in hits])
                    pairs = [(q, rows_by_id[h.id].index_text) for h in hits if h.id in rows_by_id]
                    best = float(max(cross.predict(pairs, show_progress_bar=False)))
                if not hits or engine.best_relevance(q, hits) < cfg.assistant.min_relevance:
                    refused, why = True, "relevance"
                else:
                    verdict, _ = engine.answerability(q, hits)
                    refused, why = not verdict.answerable, verdict.reason or verdict.expected.kind
                if not refused and best is not None and args.rr_threshold is not None and best < args.rr_threshold:
                    refused, why = True, f"cross-encoder {best:.3f} < {args.rr_threshold}"
                decided.append(
                    {"id": row["id"], "unanswerable": bool(row["unanswerable"]), "refused": refused, "why": why}
                    | ({"cross": best} if best is not None else {})
                    | ({"question": q, "form": row.get("form")} if args.split == "dev" else {})
                )
        finally:
            engine.searcher.close()
        out[corpus] = decided
        nm = [r for r in decided if r["unanswerable"]]
        ans = [r for r in decided if not r["unanswerable"]]
        print(
            f"{corpus} {args.split} ({d.name}): near-misses refused {sum(r['refused'] for r in nm)}/{len(nm)}, "
            f"false refusals {sum(r['refused'] for r in ans)}/{len(ans)}"
        )
        if cross is not None:
            pos = [r["cross"] for r in nm]
            neg = [r["cross"] for r in ans]
            auc = sum((a < b) + 0.5 * (a == b) for a in pos for b in neg) / max(1, len(pos) * len(neg))
            print(
                f"  best cross-encoder score: near-misses {sorted(round(x, 2) for x in pos)}\n"
                f"                            answerable  {sorted(round(x, 2) for x in neg)}\n"
                f"  AUC (answerable above near-misses) {auc:.3f}"
            )
        if args.errors:
            for r in decided:
                if r["refused"] != r["unanswerable"]:
                    label = "missed near-miss" if r["unanswerable"] else "false refusal"
                    print(f"  {label} [{r['form'] or '-'}] {r['id']}: {r['question']}\n      ({r['why']})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
