#!/usr/bin/env python3
"""Checker for the PostgreSQL 15 documentation QA set (stdlib only).

Usage: python3 check.py            (from anywhere)
       python3 check.py --dump DIR (also write each page's extracted text to DIR)
Exits 0 when every item passes, 1 otherwise.
"""
import json
import os
import re
import sys
from collections import Counter
from html.parser import HTMLParser

HERE = os.path.dirname(os.path.abspath(__file__))

BLOCK_TAGS = {
    "address", "article", "aside", "blockquote", "br", "caption", "dd", "div",
    "dl", "dt", "figcaption", "figure", "footer", "form", "h1", "h2", "h3",
    "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
    "section", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
    "body", "html",
}
SKIP_TAGS = {"head", "script", "style", "title"}


class TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in SKIP_TAGS:
            self.skip += 1
        elif tag in BLOCK_TAGS:
            self.parts.append(" ")

    def handle_startendtag(self, tag, attrs):
        if tag in BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in SKIP_TAGS:
            if self.skip:
                self.skip -= 1
        elif tag in BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def norm(s):
    s = s.replace("\u00a0", " ")
    return re.sub(r"\s+", " ", s).strip()


def page_text(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        html = f.read()
    p = TextExtractor()
    p.feed(html)
    p.close()
    return norm("".join(p.parts))


def main():
    problems = []
    pages_path = os.path.join(HERE, "pages.txt")
    qa_path = os.path.join(HERE, "qa.jsonl")
    root = None
    pages = []
    with open(pages_path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                m = re.match(r"#\s*root:\s*(\S+)", line)
                if m:
                    root = m.group(1)
                continue
            pages.append(line)
    if root is None:
        print("pages.txt: missing '# root:' line")
        sys.exit(1)
    texts = {}
    for p in pages:
        fp = os.path.join(root, p)
        if not os.path.isfile(fp):
            problems.append(f"pages.txt: page not found: {fp}")
            continue
        texts[p] = page_text(fp)
    if len(pages) != len(set(pages)):
        problems.append("pages.txt: duplicate page entries")

    if "--dump" in sys.argv:
        d = sys.argv[sys.argv.index("--dump") + 1]
        os.makedirs(d, exist_ok=True)
        for p, t in texts.items():
            with open(os.path.join(d, p + ".txt"), "w", encoding="utf-8") as f:
                f.write(t)

    items = []
    with open(qa_path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                problems.append(f"qa.jsonl line {n}: bad JSON: {e}")

    seen = set()
    counts = Counter()
    used_pages = Counter()
    required = {"id": str, "question": str, "answers": list, "sources": list,
                "evidence": list, "unanswerable": bool, "hops": int, "split": str}
    for it in items:
        iid = it.get("id", "?")
        bad = False
        for k, t in required.items():
            if k not in it:
                problems.append(f"{iid}: missing field {k}")
                bad = True
            elif not isinstance(it[k], t) or (t is int and isinstance(it[k], bool)):
                problems.append(f"{iid}: field {k} should be {t.__name__}")
                bad = True
        if bad:
            continue
        if iid in seen:
            problems.append(f"{iid}: duplicate id")
        seen.add(iid)
        if not it["question"].strip():
            problems.append(f"{iid}: empty question")
        if it["split"] not in ("dev", "test"):
            problems.append(f"{iid}: split must be dev or test")
        if it["hops"] not in (1, 2):
            problems.append(f"{iid}: hops must be 1 or 2")
        if not all(isinstance(x, str) for x in it["answers"] + it["sources"] + it["evidence"]):
            problems.append(f"{iid}: answers/sources/evidence must be strings")
            continue
        for s in it["sources"]:
            used_pages[s] += 1
            if s not in texts:
                problems.append(f"{iid}: source not in pages.txt: {s}")
        if not it["sources"]:
            problems.append(f"{iid}: no sources")
        kind = "unanswerable" if it["unanswerable"] else f"{it['hops']}-hop"
        counts[(it["split"], kind)] += 1
        if it["unanswerable"]:
            if it["answers"] or it["evidence"]:
                problems.append(f"{iid}: unanswerable item must have empty answers and evidence")
            if not str(it.get("why", "")).strip():
                problems.append(f"{iid}: unanswerable item needs a 'why'")
            continue
        if not it["answers"] or any(not a.strip() for a in it["answers"]):
            problems.append(f"{iid}: answerable item needs non-empty answers")
            continue
        if len(it["sources"]) != it["hops"] or len(it["evidence"]) != it["hops"]:
            problems.append(f"{iid}: hops={it['hops']} needs that many sources and evidence")
            continue
        if len(it["answers"][0].split()) > 8:
            problems.append(f"{iid}: gold answer too long")
        for s, ev in zip(it["sources"], it["evidence"]):
            e = norm(ev)
            if not 40 <= len(e) <= 300:
                problems.append(f"{iid}: evidence length {len(e)} outside 40-300")
            if s in texts and e not in texts[s]:
                problems.append(f"{iid}: evidence not found verbatim in {s}: {e[:60]}...")
        evjoined = " ".join(norm(e) for e in it["evidence"]).lower()
        if not any(norm(a).lower() in evjoined for a in it["answers"]):
            if it.get("answer_not_verbatim") is True and str(it.get("reason", "")).strip():
                pass
            else:
                problems.append(f"{iid}: no answer alias occurs in evidence "
                                "(set answer_not_verbatim: true with a reason)")

    for p in problems:
        print(p)
    for sp in ("dev", "test"):
        c = {k: v for (s, k), v in counts.items() if s == sp}
        print(f"split {sp}: total={sum(c.values())} " +
              " ".join(f"{k}={v}" for k, v in sorted(c.items())))
    print(f"pages covered: {len([p for p in used_pages if p in texts])}/{len(pages)}")
    if problems:
        print(f"{len(problems)} problems in {len(items)} items")
        sys.exit(1)
    print(f"{len(items)} items ok")
    sys.exit(0)


if __name__ == "__main__":
    main()
