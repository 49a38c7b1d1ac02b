#!/usr/bin/env python3
"""Check debian_reference_answers.jsonl against debian_reference_qa.jsonl.

Checks: ids match the questions file one-to-one and in the same order; every
answers list is a non-empty list of non-empty strings; split is dev/test; at
least one alias occurs (case-insensitive, whitespace-normalised) in the item's
evidence or else in the visible text of its source page under
/usr/share/debian-reference/ (items found only on the page are listed);
prints split counts and a last line "N answers ok". Exit 0 when all pass.

Usage: python3 check_debian_answers.py [--doc-dir DIR]
"""
import html.parser, json, os, re, sys

HERE = os.path.dirname(os.path.abspath(__file__))
QA = os.path.join(HERE, "debian_reference_qa.jsonl")
ANS = os.path.join(HERE, "debian_reference_answers.jsonl")
DOC = "/usr/share/debian-reference"
if "--doc-dir" in sys.argv:
    DOC = sys.argv[sys.argv.index("--doc-dir") + 1]


def norm(s):
    return re.sub(r"\s+", " ", s).strip().lower()


class Visible(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "head"):
            self.skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style", "head"):
            self.skip = max(0, self.skip - 1)

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


_pages = {}


def page_text(name):
    if name not in _pages:
        path = os.path.join(DOC, name)
        if not os.path.exists(path):
            _pages[name] = None
        else:
            p = Visible()
            with open(path, encoding="utf-8") as f:
                p.feed(f.read())
            _pages[name] = norm("".join(p.parts))
    return _pages[name]


def load(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as e:
                    sys.exit(f"{os.path.basename(path)} line {n}: bad JSON: {e}")
    return out


def main():
    qs, ans = load(QA), load(ANS)
    errors, page_only = [], []
    qids = [q["id"] for q in qs]
    aids = [a.get("id") for a in ans]
    if len(set(aids)) != len(aids):
        errors.append("duplicate ids in answers file")
    if set(qids) != set(aids):
        miss = sorted(set(qids) - set(aids))
        extra = sorted(set(aids) - set(qids))
        errors.append(f"id mismatch: missing={miss} extra={extra}")
    elif qids != aids:
        errors.append("ids are not in the same order as the questions file")
    byid = {q["id"]: q for q in qs}
    splits = {}
    for a in ans:
        i = a.get("id")
        al = a.get("answers")
        if not isinstance(al, list) or not al or not all(isinstance(x, str) and x.strip() for x in al):
            errors.append(f"{i}: answers must be a non-empty list of non-empty strings")
            continue
        sp = a.get("split")
        if sp not in ("dev", "test"):
            errors.append(f"{i}: split must be dev or test, got {sp!r}")
        splits.setdefault(sp, {}).setdefault(byid.get(i, {}).get("source", "?"), 0)
        splits[sp][byid.get(i, {}).get("source", "?")] += 1
        q = byid.get(i)
        if q is None:
            continue
        ev = norm(q["evidence"])
        if any(norm(x) in ev for x in al):
            continue
        pt = page_text(q["source"])
        if pt is None:
            errors.append(f"{i}: source page {q['source']} not found in {DOC}")
        elif any(norm(x) in pt for x in al):
            page_only.append(i)
        else:
            errors.append(f"{i}: no alias found in evidence or page {q['source']}")
    for sp in sorted(k for k in splits if k):
        print(f"split {sp}: {sum(splits[sp].values())} "
              + " ".join(f"{s}={c}" for s, c in sorted(splits[sp].items())))
    nd = sum(splits.get("dev", {}).values())
    nt = sum(splits.get("test", {}).values())
    if abs(nd - nt) > 1:
        errors.append(f"split unbalanced: dev={nd} test={nt}")
    if page_only:
        print(f"alias only on source page (not in evidence): {len(page_only)}: " + ", ".join(page_only))
    for e in errors:
        print("ERROR:", e)
    if errors:
        print(f"{len(errors)} errors")
        return 1
    print(f"{len(ans)} answers ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
