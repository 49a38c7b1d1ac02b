#!/usr/bin/env python3
"""Checker for the frozen git-doc QA set (stdlib only).

Usage: python3 check.py            (from any directory)
       python3 check.py --dump DIR (also write each page's visible text to DIR)

Reads pages.txt and qa.jsonl from this script's folder, extracts the
visible text of every corpus page, and verifies every item.  Prints one
line per problem and a final line "N items ok"; exit status 0 when all
pass, 1 otherwise.
"""
import html
import json
import os
import re
import sys
from html.parser import HTMLParser

HERE = os.path.dirname(os.path.abspath(__file__))

SKIP = {"head", "script", "style", "title"}
BLOCK = {
    "address", "article", "aside", "blockquote", "body", "br", "caption",
    "dd", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer",
    "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "html",
    "li", "main", "nav", "ol", "p", "pre", "section", "table", "tbody",
    "td", "tfoot", "th", "thead", "tr", "ul",
}
VOID = {"br", "hr", "img", "meta", "link", "input", "area", "base", "col",
        "embed", "param", "source", "track", "wbr"}


class TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        tag = tag.lower()
        if tag in SKIP:
            if tag not in VOID:
                self.skip += 1
            return
        if tag in BLOCK:
            self.parts.append(" ")

    def handle_startendtag(self, tag, attrs):
        tag = tag.lower()
        if tag in BLOCK:
            self.parts.append(" ")

    def handle_endtag(self, tag):
        tag = tag.lower()
        if tag in SKIP:
            if self.skip:
                self.skip -= 1
            return
        if tag in BLOCK:
            self.parts.append(" ")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def norm(s):
    s = html.unescape(s)
    s = s.replace("\u00a0", " ")
    return re.sub(r"\s+", " ", s).strip()


def page_text(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        raw = f.read()
    p = TextExtractor()
    p.feed(raw)
    p.close()
    return norm("".join(p.parts))


def main(argv):
    dump = None
    if len(argv) > 2 and argv[1] == "--dump":
        dump = argv[2]
        os.makedirs(dump, exist_ok=True)
    problems = []
    root = None
    pages = []
    with open(os.path.join(HERE, "pages.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            m = re.match(r"#\s*root:\s*(\S+)", line)
            if m:
                root = m.group(1)
                continue
            if line.startswith("#"):
                continue
            pages.append(line)
    if root is None:
        print("pages.txt: missing '# root:' line")
        return 1
    texts = {}
    for pg in pages:
        fp = os.path.join(root, pg)
        if not os.path.isfile(fp):
            problems.append("pages.txt: page not found: %s" % fp)
            continue
        texts[pg] = page_text(fp)
        if dump:
            with open(os.path.join(dump, pg + ".txt"), "w", encoding="utf-8") as f:
                f.write(texts[pg])
    if len(set(pages)) != len(pages):
        problems.append("pages.txt: duplicate pages")

    items = []
    with open(os.path.join(HERE, "qa.jsonl"), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append((n, json.loads(line)))
            except ValueError as e:
                problems.append("qa.jsonl line %d: bad JSON: %s" % (n, e))

    seen = set()
    counts = {}
    required = {"id": str, "question": str, "answers": list, "sources": list,
                "evidence": list, "unanswerable": bool, "hops": int,
                "split": str}
    for n, it in items:
        iid = it.get("id", "line%d" % n)
        bad = False
        for k, t in required.items():
            if k not in it:
                problems.append("%s: missing field %s" % (iid, k))
                bad = True
            elif not isinstance(it[k], t) or (t is int and isinstance(it[k], bool)):
                problems.append("%s: field %s should be %s" % (iid, k, t.__name__))
                bad = True
        if bad:
            continue
        if iid in seen:
            problems.append("%s: duplicate id" % iid)
        seen.add(iid)
        if not it["question"].strip():
            problems.append("%s: empty question" % iid)
        if it["split"] not in ("dev", "test"):
            problems.append("%s: split must be dev or test" % iid)
        if it["hops"] not in (1, 2):
            problems.append("%s: hops must be 1 or 2" % iid)
        if not it["sources"]:
            problems.append("%s: no sources" % iid)
        for s in it["sources"]:
            if s not in pages:
                problems.append("%s: source not in pages.txt: %s" % (iid, s))
        if not all(isinstance(a, str) and a.strip() for a in it["answers"]):
            problems.append("%s: answers must be non-empty strings" % iid)
        if not all(isinstance(e, str) for e in it["evidence"]):
            problems.append("%s: evidence must be strings" % iid)
            continue
        key = (it["split"], "unans" if it["unanswerable"] else "hop%d" % it["hops"])
        counts[key] = counts.get(key, 0) + 1
        if it["unanswerable"]:
            if it["answers"] or it["evidence"]:
                problems.append("%s: unanswerable item must have empty answers and evidence" % iid)
            if not isinstance(it.get("why"), str) or not it["why"].strip():
                problems.append("%s: unanswerable item needs a 'why'" % iid)
            continue
        if not it["answers"]:
            problems.append("%s: answerable item has no answers" % iid)
            continue
        if len(it["evidence"]) != len(it["sources"]):
            problems.append("%s: need one evidence per source" % iid)
            continue
        if it["hops"] == 2 and len(set(it["sources"])) < 2:
            problems.append("%s: 2-hop item needs two distinct sources" % iid)
        if it["hops"] == 1 and len(it["sources"]) != 1:
            problems.append("%s: 1-hop item needs exactly one source" % iid)
        ev_all = []
        for s, ev in zip(it["sources"], it["evidence"]):
            e = norm(ev)
            ev_all.append(e.lower())
            if not 40 <= len(e) <= 300:
                problems.append("%s: evidence length %d not in 40-300" % (iid, len(e)))
            if s in texts and e not in texts[s]:
                problems.append("%s: evidence not found verbatim in %s: %r" % (iid, s, e[:80]))
        joined = " \n ".join(ev_all)
        hit = any(norm(a).lower() in joined for a in it["answers"])
        if not hit:
            why = it.get("answer_not_verbatim")
            if why is True and isinstance(it.get("answer_not_verbatim_reason"), str) \
                    and it["answer_not_verbatim_reason"].strip():
                pass
            else:
                problems.append("%s: no answer alias occurs in evidence "
                                "(and no answer_not_verbatim + reason)" % iid)

    for p in problems:
        print(p)
    for split in ("dev", "test"):
        c = {k[1]: v for k, v in counts.items() if k[0] == split}
        print("%s: %d items (%s)" % (split, sum(c.values()),
              ", ".join("%s=%d" % (k, c[k]) for k in sorted(c))))
    if problems:
        print("%d problems in %d items" % (len(problems), len(items)))
        return 1
    print("%d items ok" % len(items))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
