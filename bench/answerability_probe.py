"""Probe (issue 11, deliverable 4): do relevance scores separate near-miss questions from answerable ones?

For the dev halves of the postgresql and git sets (data dirs made by ``bench/external_qa.py`` under
``--work``, default /tmp/tether-extqa), prints per label the best sentence relevance
(``ChatEngine.best_relevance``, what ``assistant.min_relevance`` thresholds) and the share of the
question's content words found in the top-k passages. Run from the repository root::

    .venv/bin/python bench/answerability_probe.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    sys.path.insert(0, str(REPO))  # the repository's retrieval/, not bench/retrieval.py
    from assistant.engine import ChatEngine
    from tether.config import load_config
    from tether.text.terms import lexical_overlap

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/tether-extqa"))
    ap.add_argument("--split", default="dev")
    args = ap.parse_args()
    for corpus in ("postgresql", "git"):
        found = sorted(p for p in args.work.glob(f"{corpus}-*") if (p / "tether.db").is_file())
        if not found:
            raise SystemExit(f"no ingested {corpus} data dir under {args.work}: run bench/external_qa.py first")
        cfg = load_config(found[0]).with_retrieval(reranker="off").with_assistant(generator="extractive")
        engine = ChatEngine(cfg)
        scores: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        with open(REPO / "bench" / "data" / corpus / "qa.jsonl", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        try:
            for row in rows:
                if row.get("split") != args.split:
                    continue
                hits = engine.searcher.search(row["question"], k=cfg.assistant.top_k)
                coverage = float(lexical_overlap(row["question"], [" ".join(h.text for h in hits)])[0])
                scores[bool(row["unanswerable"])].append((engine.best_relevance(row["question"], hits), coverage))
        finally:
            engine.searcher.close()
        for unanswerable, pairs in scores.items():
            best = sorted(round(b, 3) for b, _ in pairs)
            cover = sorted(round(c, 3) for _, c in pairs)
            label = "near-miss" if unanswerable else "answerable"
            print(f"{corpus} {label} ({len(pairs)}): best relevance {best}\n    coverage {cover}")


if __name__ == "__main__":
    main()
