"""Probe (issue 11, deliverable 4): do relevance scores separate near-miss questions from answerable ones?

For the dev halves of the postgresql and git sets (data dirs made by bench/external_qa.py under
/tmp/tether-extqa), prints per label the best sentence relevance (ChatEngine.best_relevance, what
assistant.min_relevance thresholds) and the share of question content words found in the top-k
passages. Run: .venv/bin/python bench/answerability_probe.py
"""

import json

from assistant.engine import ChatEngine
from tether.config import load_config
from tether.text.terms import content_words

res = []
for corpus, d in [
    ("postgresql", "/tmp/tether-extqa/postgresql-879a4b06a17b"),
    ("git", "/tmp/tether-extqa/git-879a4b06a17b"),
]:
    cfg = load_config(d).with_retrieval(reranker="off").with_assistant(generator="extractive")
    eng = ChatEngine(cfg)
    rows = [json.loads(l) for l in open(f"bench/data/{corpus}/qa.jsonl")]
    for r in rows:
        if r.get("split") != "dev":
            continue
        hits = eng.searcher.search(r["question"], k=cfg.assistant.top_k)
        best = eng.best_relevance(r["question"], hits)
        # share of question content words found anywhere in the top-k passages
        q = content_words(r["question"])
        allw = set().union(*(content_words(h.text) for h in hits))
        cov = len(q & allw) / max(1, len(q))
        res.append((corpus, r["unanswerable"], round(best, 3), round(cov, 3)))
    eng.searcher.close()
for c in ("postgresql", "git"):
    for u in (False, True):
        xs = sorted(x[2] for x in res if x[0] == c and x[1] == u)
        cv = sorted(x[3] for x in res if x[0] == c and x[1] == u)
        print(c, "unanswerable" if u else "answerable", len(xs), "best", xs, "\n   cov", cv)
