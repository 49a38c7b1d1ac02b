#!/usr/bin/env python3
"""Checker for the conflicts_municipal evaluation set (stdlib only).

Usage: python3 check.py            (works from any directory)

Checks the documents' front matter, that every case sentence occurs verbatim
(whitespace-normalised) in its source document, that each side's date /
authority / status copy the front matter, id uniqueness, kind / look-alike
vocabularies, resolution consistency with the stated policies, and split
balance. Prints one line per problem, a count table, and a final line.
Exit status 0 if everything passes, 1 otherwise.
"""
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DOCS = ROOT / "docs"
CASES = ROOT / "cases.jsonl"

KINDS = ["numeric", "date", "entity", "polarity", "unit", "supersession"]
LOOKALIKES = ["paraphrased-number", "equivalent-unit", "other-entity",
              "other-period", "in-range", "other-scope", "paraphrased-negation"]
STATUSES = {"current", "superseded", "draft"}
RANK = {"official": 3, "team": 2, "informal": 1}
MIN_PER_KIND, MIN_PER_LOOKALIKE = 5, 3
MIN_CONFLICTS, MIN_LOOKALIKES, MIN_UNDECIDED = 32, 22, 3
DOC_RANGE, WORD_RANGE = (22, 30), (300, 1500)

problems = []


def problem(msg):
    problems.append(msg)
    print("PROBLEM: " + msg)


def norm(s):
    return re.sub(r"\s+", " ", s).strip()


def parse_doc(path):
    text = path.read_text(encoding="utf-8")
    m = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.S)
    if not m:
        problem(f"{path.name}: no YAML front matter")
        return None, text
    meta = {}
    for line in m.group(1).splitlines():
        if not line.strip():
            continue
        if ":" not in line:
            problem(f"{path.name}: bad front-matter line {line!r}")
            continue
        key, val = line.split(":", 1)
        val = re.sub(r"\s+#.*$", "", val).strip()
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
            val = val[1:-1]
        meta[key.strip()] = val
    for key in ("title", "date", "status", "authority"):
        if key not in meta:
            problem(f"{path.name}: front matter lacks {key}")
    if "date" in meta and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", meta["date"]):
        problem(f"{path.name}: bad date {meta['date']!r}")
    if meta.get("status") not in STATUSES:
        problem(f"{path.name}: bad status {meta.get('status')!r}")
    if meta.get("authority") not in RANK:
        problem(f"{path.name}: bad authority {meta.get('authority')!r}")
    return meta, m.group(2)


def expected_resolution(a, b):
    if a["date"] == b["date"]:
        recent = None
    else:
        recent = "a" if a["date"] > b["date"] else "b"
    sup_a, sup_b = a["status"] == "superseded", b["status"] == "superseded"
    if sup_a != sup_b:
        official = "b" if sup_a else "a"
    elif RANK[a["authority"]] != RANK[b["authority"]]:
        official = "a" if RANK[a["authority"]] > RANK[b["authority"]] else "b"
    else:
        official = recent
    return {"prefer-recent": recent, "prefer-official": official}


def main():
    docs = {}
    for path in sorted(DOCS.glob("*.md")):
        meta, body = parse_doc(path)
        words = len(body.split())
        if not WORD_RANGE[0] <= words <= WORD_RANGE[1]:
            problem(f"{path.name}: {words} words, outside {WORD_RANGE}")
        docs["docs/" + path.name] = (meta, norm(body))
    if not DOC_RANGE[0] <= len(docs) <= DOC_RANGE[1]:
        problem(f"{len(docs)} documents, outside {DOC_RANGE}")

    cases = []
    for n, line in enumerate(CASES.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            cases.append(json.loads(line))
        except json.JSONDecodeError as e:
            problem(f"cases.jsonl line {n}: invalid JSON ({e})")

    ids = Counter(c.get("id") for c in cases)
    for i, k in ids.items():
        if k > 1:
            problem(f"id {i} used {k} times")

    label_split = defaultdict(Counter)
    split_total = Counter()
    undecided = 0
    pairs_seen = set()
    for c in cases:
        cid = c.get("id", "?")
        conflict = c.get("conflict")
        if conflict is True:
            label = c.get("kind")
            if label not in KINDS:
                problem(f"{cid}: bad kind {label!r}")
            if c.get("lookalike") is not None:
                problem(f"{cid}: conflict with lookalike set")
        elif conflict is False:
            label = c.get("lookalike")
            if label not in LOOKALIKES:
                problem(f"{cid}: bad lookalike {label!r}")
            if c.get("kind") is not None:
                problem(f"{cid}: look-alike with kind set")
            if "resolution" in c:
                problem(f"{cid}: look-alike has a resolution")
        else:
            problem(f"{cid}: conflict must be true or false")
            label = None
        for key in ("question", "note"):
            if not isinstance(c.get(key), str) or not c[key].strip():
                problem(f"{cid}: missing {key}")
        split = c.get("split")
        if split not in ("dev", "test"):
            problem(f"{cid}: bad split {split!r}")
        label_split[label][split] += 1
        split_total[split] += 1

        sides_ok = True
        for s in ("a", "b"):
            side = c.get(s)
            if not isinstance(side, dict):
                problem(f"{cid}: side {s} missing")
                sides_ok = False
                continue
            src = side.get("source")
            if src not in docs:
                problem(f"{cid}.{s}: unknown source {src!r}")
                sides_ok = False
                continue
            meta, body = docs[src]
            if not side.get("text") or norm(side["text"]) not in body:
                problem(f"{cid}.{s}: text not found verbatim in {src}: {side.get('text')!r}")
            for key in ("date", "authority", "status"):
                if meta is None or side.get(key) != meta.get(key):
                    problem(f"{cid}.{s}: {key}={side.get(key)!r} but {src} says "
                            f"{None if meta is None else meta.get(key)!r}")
                    sides_ok = False
        if sides_ok and c["a"]["source"] == c["b"]["source"]:
            problem(f"{cid}: both sides come from the same document")
        if sides_ok:
            key = tuple(sorted([(c["a"]["source"], norm(c["a"]["text"])),
                                (c["b"]["source"], norm(c["b"]["text"]))]))
            if key in pairs_seen:
                problem(f"{cid}: duplicate pair")
            pairs_seen.add(key)
        if conflict is True and sides_ok:
            res = c.get("resolution")
            exp = expected_resolution(c["a"], c["b"])
            if not isinstance(res, dict) or set(res) != set(exp):
                problem(f"{cid}: resolution must have keys {sorted(exp)}")
            else:
                for pol, want in exp.items():
                    if res[pol] not in ("a", "b", None):
                        problem(f"{cid}: {pol} must be 'a', 'b' or null")
                    elif res[pol] != want:
                        problem(f"{cid}: {pol}={res[pol]!r}, policy gives {want!r}")
                if None in exp.values():
                    undecided += 1

    # balance and minimum counts
    for label, cnt in label_split.items():
        if label is not None and abs(cnt["dev"] - cnt["test"]) > 1:
            problem(f"{label}: split unbalanced (dev {cnt['dev']}, test {cnt['test']})")
    if abs(split_total["dev"] - split_total["test"]) > 1:
        problem(f"overall split unbalanced (dev {split_total['dev']}, test {split_total['test']})")
    for k in KINDS:
        if sum(label_split[k].values()) < MIN_PER_KIND:
            problem(f"kind {k}: fewer than {MIN_PER_KIND} cases")
    for t in LOOKALIKES:
        if sum(label_split[t].values()) < MIN_PER_LOOKALIKE:
            problem(f"lookalike {t}: fewer than {MIN_PER_LOOKALIKE} cases")
    n_conf = sum(1 for c in cases if c.get("conflict") is True)
    n_look = sum(1 for c in cases if c.get("conflict") is False)
    if n_conf < MIN_CONFLICTS:
        problem(f"only {n_conf} conflicts (need {MIN_CONFLICTS})")
    if n_look < MIN_LOOKALIKES:
        problem(f"only {n_look} look-alikes (need {MIN_LOOKALIKES})")
    if undecided < MIN_UNDECIDED:
        problem(f"only {undecided} conflicts where a policy cannot decide (need {MIN_UNDECIDED})")

    # table
    print()
    print(f"{'label':<28}{'dev':>5}{'test':>6}{'total':>7}")
    for group, labels in (("conflict", KINDS), ("look-alike", LOOKALIKES)):
        for lab in labels:
            cnt = label_split[lab]
            print(f"{group[:4] + ':' + lab:<28}{cnt['dev']:>5}{cnt['test']:>6}{cnt['dev'] + cnt['test']:>7}")
    print(f"{'all':<28}{split_total['dev']:>5}{split_total['test']:>6}{len(cases):>7}")
    print(f"documents: {len(docs)}; conflicts: {n_conf}; look-alikes: {n_look}; "
          f"conflicts with an undecided policy: {undecided}")
    if problems:
        print(f"{len(problems)} problems in {len(cases)} cases")
        return 1
    print(f"{len(cases)} cases ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
