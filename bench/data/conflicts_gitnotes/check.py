#!/usr/bin/env python3
"""Checker for the frozen conflicts_gitnotes evaluation set (python3 stdlib only).

Usage: python3 /path/to/conflicts_gitnotes/check.py
Verifies cases.jsonl against docs/ and docs/*.meta.yaml. Prints one line per
problem, a count table, and finally 'N cases ok' (exit 0) or
'N cases, M problems' (exit 1).
"""
import json, os, re, sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = {"numeric", "date", "entity", "polarity", "unit", "supersession"}
LOOKALIKES = {"paraphrase", "other-entity", "other-period", "other-scope", "refinement"}
SIDE_KEYS = {"source", "text", "date", "authority", "status"}
problems = []

def prob(msg):
    problems.append(msg)
    print("PROBLEM: " + msg)

def norm_file(t):
    # drop leading bullet markers ("* ", "- ") on each line, then collapse whitespace
    lines = [re.sub(r"^\s*[*-]\s+", "", l) for l in t.split("\n")]
    return re.sub(r"\s+", " ", " ".join(lines)).strip()

def norm_span(s):
    return re.sub(r"\s+", " ", re.sub(r"^\s*\*\s+", "", s)).strip()

def read_meta(path):
    meta = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].rstrip()
            if not line.strip():
                continue
            k, _, v = line.partition(":")
            meta[k.strip()] = v.strip().strip('"').strip("'")
    return meta

file_cache, meta_cache = {}, {}

def doc(src):
    if src not in file_cache:
        p = os.path.join(HERE, src)
        file_cache[src] = norm_file(open(p, encoding="utf-8").read()) if os.path.isfile(p) else None
    return file_cache[src]

def meta(src):
    if src not in meta_cache:
        p = os.path.join(HERE, src + ".meta.yaml")
        meta_cache[src] = read_meta(p) if os.path.isfile(p) else None
    return meta_cache[src]

# every doc has a meta file and every meta has the required keys
docs_dir = os.path.join(HERE, "docs")
doc_files = sorted(f for f in os.listdir(docs_dir) if not f.endswith(".meta.yaml"))
for f in doc_files:
    m = meta("docs/" + f)
    if m is None:
        prob("docs/%s: missing meta file" % f)
        continue
    for k in ("title", "date", "status", "authority"):
        if not m.get(k):
            prob("docs/%s.meta.yaml: missing %s" % (f, k))
    if not re.match(r"^\d{4}-\d{2}-\d{2}$", m.get("date", "")):
        prob("docs/%s.meta.yaml: bad date %r" % (f, m.get("date")))
    if m.get("status") not in ("current", "superseded"):
        prob("docs/%s.meta.yaml: bad status %r" % (f, m.get("status")))
if not 15 <= len(doc_files) <= 40:
    prob("docs/ holds %d source files (expected 15-40)" % len(doc_files))

cases = []
with open(os.path.join(HERE, "cases.jsonl"), encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            cases.append(json.loads(line))
        except ValueError as e:
            prob("cases.jsonl line %d: invalid JSON (%s)" % (n, e))

ids = Counter(c.get("id") for c in cases)
for i, k in ids.items():
    if k > 1:
        prob("duplicate id %s (%d times)" % (i, k))

used = set()
for c in cases:
    cid = c.get("id", "?")
    conf = c.get("conflict")
    if conf is True:
        if c.get("kind") not in KINDS:
            prob("%s: bad kind %r" % (cid, c.get("kind")))
        if c.get("lookalike") is not None:
            prob("%s: conflict must have lookalike null" % cid)
    elif conf is False:
        if c.get("kind") is not None:
            prob("%s: non-conflict must have kind null" % cid)
        if c.get("lookalike") not in LOOKALIKES:
            prob("%s: bad lookalike %r" % (cid, c.get("lookalike")))
        if "resolution" in c:
            prob("%s: non-conflict must not have a resolution" % cid)
    else:
        prob("%s: conflict must be true/false" % cid)
    if c.get("split") not in ("dev", "test"):
        prob("%s: bad split %r" % (cid, c.get("split")))
    if not str(c.get("question", "")).strip():
        prob("%s: empty question" % cid)
    for s in ("a", "b"):
        side = c.get(s)
        if not isinstance(side, dict) or set(side) != SIDE_KEYS:
            prob("%s.%s: side must have keys %s" % (cid, s, sorted(SIDE_KEYS)))
            continue
        src, text = side["source"], side["text"]
        used.add(src)
        if not 40 <= len(text) <= 400:
            prob("%s.%s: text length %d outside 40-400" % (cid, s, len(text)))
        d = doc(src)
        if d is None:
            prob("%s.%s: source file %s missing" % (cid, s, src))
            continue
        if norm_span(text) not in d:
            prob("%s.%s: text not found verbatim in %s: %r" % (cid, s, src, text[:70]))
        m = meta(src)
        if m is None:
            prob("%s.%s: meta file for %s missing" % (cid, s, src))
            continue
        for k in ("date", "authority", "status"):
            if side[k] != m.get(k):
                prob("%s.%s: %s %r differs from meta %r" % (cid, s, k, side[k], m.get(k)))
    if conf is True and all(isinstance(c.get(s), dict) and SIDE_KEYS <= set(c[s]) for s in "ab"):
        a, b = c["a"], c["b"]
        res = c.get("resolution") or {}
        if a["date"] == b["date"]:
            prob("%s: conflict sides share a date; prefer-recent undefined" % cid)
        later = "a" if a["date"] > b["date"] else "b"
        sa, sb = a["status"] == "superseded", b["status"] == "superseded"
        if sa != sb:
            off = "b" if sa else "a"
        elif a["authority"] != b["authority"]:
            off = "a" if a["authority"] == "official" else "b"
        else:
            off = later
        if res.get("prefer-recent") != later:
            prob("%s: prefer-recent should be %s" % (cid, later))
        if res.get("prefer-official") != off:
            prob("%s: prefer-official should be %s" % (cid, off))
    if c.get("a", {}).get("source") == c.get("b", {}).get("source") and \
       c.get("a", {}).get("text") == c.get("b", {}).get("text"):
        prob("%s: both sides identical" % cid)

unused = sorted(set("docs/" + f for f in doc_files) - used)
for u in unused:
    prob("%s: copied but not used by any case" % u)

nconf = sum(1 for c in cases if c.get("conflict") is True)
nnon = sum(1 for c in cases if c.get("conflict") is False)
if nconf < 30:
    prob("only %d conflict cases (need >= 30)" % nconf)
if nnon < 25:
    prob("only %d non-conflict cases (need >= 25)" % nnon)

# split balance: per kind/lookalike group and overall
groups = Counter()
for c in cases:
    g = ("conflict", c.get("kind")) if c.get("conflict") else ("non-conflict", c.get("lookalike"))
    groups[(g, c.get("split"))] += 1
gnames = sorted({g for g, _ in groups})
for g in gnames:
    d, t = groups[(g, "dev")], groups[(g, "test")]
    if abs(d - t) > 1:
        prob("split imbalance in %s/%s: dev %d test %d" % (g[0], g[1], d, t))
tot = Counter(c.get("split") for c in cases)
if abs(tot["dev"] - tot["test"]) > 1:
    prob("overall split imbalance: dev %d test %d" % (tot["dev"], tot["test"]))

print("%-14s %-14s %5s %5s %5s" % ("class", "type", "dev", "test", "all"))
for g in gnames:
    d, t = groups[(g, "dev")], groups[(g, "test")]
    print("%-14s %-14s %5d %5d %5d" % (g[0], g[1], d, t, d + t))
print("%-14s %-14s %5d %5d %5d" % ("total", "", tot["dev"], tot["test"], len(cases)))
print("source files: %d, used: %d" % (len(doc_files), len(used)))
if problems:
    print("%d cases, %d problems" % (len(cases), len(problems)))
    sys.exit(1)
print("%d cases ok" % len(cases))
