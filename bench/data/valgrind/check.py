#!/usr/bin/env python3
"""Validate the Valgrind near-miss QA set (qa.jsonl) against the installed HTML manual.

Usage: python3 check.py   (runnable from any directory; stdlib only)
"""
import json, os, re, sys
from html.parser import HTMLParser

HERE = os.path.dirname(os.path.abspath(__file__))
DROP = {'head', 'script', 'style', 'title'}
BLOCK = {'p', 'div', 'br', 'li', 'ul', 'ol', 'dl', 'dt', 'dd', 'table', 'tr', 'td', 'th',
         'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'pre', 'blockquote', 'hr', 'section', 'article',
         'header', 'footer', 'nav', 'tbody', 'thead', 'body', 'html', 'form', 'caption', 'img'}
FIELDS = {'id', 'question', 'answers', 'sources', 'evidence', 'unanswerable', 'hops', 'split', 'form'}
FORMS = set('abcdefgh')


class Text(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.drop = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in DROP:
            self.drop += 1
        elif tag in BLOCK:
            self.out.append(' ')

    def handle_endtag(self, tag):
        if tag in DROP:
            self.drop = max(0, self.drop - 1)
        elif tag in BLOCK:
            self.out.append(' ')

    def handle_startendtag(self, tag, attrs):
        if tag in BLOCK:
            self.out.append(' ')

    def handle_data(self, data):
        if not self.drop:
            self.out.append(data)


def norm(s):
    return re.sub(r'\s+', ' ', s.replace('\xa0', ' ')).strip()


def page_text(path):
    p = Text()
    with open(path, encoding='utf-8', errors='replace') as fh:
        p.feed(fh.read())
    p.close()
    return norm(''.join(p.out))


def main():
    problems = []
    with open(os.path.join(HERE, 'pages.txt'), encoding='utf-8') as fh:
        lines = [l.strip() for l in fh if l.strip()]
    if not lines or not lines[0].startswith('# root:'):
        print('pages.txt: first line must be "# root: ..."'); return 1
    root = lines[0].split(':', 1)[1].strip()
    pages = [l for l in lines[1:] if not l.startswith('#')]
    texts = {}
    for p in pages:
        fp = os.path.join(root, p)
        if not os.path.isfile(fp):
            problems.append('missing page %s' % fp)
        else:
            texts[p] = page_text(fp)
    if len(set(pages)) != len(pages):
        problems.append('duplicate page in pages.txt')

    items, ids = [], set()
    with open(os.path.join(HERE, 'qa.jsonl'), encoding='utf-8') as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                items.append((n, json.loads(line)))
            except ValueError as e:
                problems.append('line %d: bad JSON (%s)' % (n, e))

    counts = {}
    for n, it in items:
        where = 'line %d (%s)' % (n, it.get('id'))
        un = it.get('unanswerable')
        need = FIELDS | ({'why'} if un else set())
        keys = set(it)
        if keys != need:
            problems.append('%s: fields %s, expected %s' % (where, sorted(keys), sorted(need)))
        if not isinstance(it.get('id'), str) or not re.fullmatch(r'vg\d{3}', it.get('id', '')):
            problems.append('%s: bad id' % where)
        if it.get('id') in ids:
            problems.append('%s: duplicate id' % where)
        ids.add(it.get('id'))
        if not isinstance(it.get('question'), str) or not it['question'].strip():
            problems.append('%s: empty question' % where)
        for f in ('answers', 'sources', 'evidence'):
            v = it.get(f)
            if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
                problems.append('%s: %s must be a list of non-empty strings' % (where, f))
        if not isinstance(un, bool):
            problems.append('%s: unanswerable must be a boolean' % where)
        if not isinstance(it.get('hops'), int) or isinstance(it.get('hops'), bool) or it.get('hops') not in (1, 2):
            problems.append('%s: hops must be 1 or 2' % where)
        if it.get('split') not in ('dev', 'test'):
            problems.append('%s: split must be dev or test' % where)
        if it.get('form') not in FORMS:
            problems.append('%s: form must be one of a-h' % where)
        srcs = it.get('sources') or []
        if not srcs:
            problems.append('%s: no sources' % where)
        for s in srcs:
            if s not in texts:
                problems.append('%s: source %s not in pages.txt' % (where, s))
        if un is True:
            if it.get('answers') or it.get('evidence'):
                problems.append('%s: unanswerable item must have empty answers and evidence' % where)
            if not isinstance(it.get('why'), str) or not it['why'].strip():
                problems.append('%s: unanswerable item needs a why' % where)
            if it.get('hops') != 1 or len(srcs) != 1:
                problems.append('%s: unanswerable item must have hops 1 and one source' % where)
        elif un is False:
            ans, ev = it.get('answers') or [], it.get('evidence') or []
            if len(ans) < 1 or len(ev) < 1:
                problems.append('%s: answerable item needs >=1 answer and >=1 evidence' % where)
            if it.get('hops') == 2 and (len(set(srcs)) != 2 or len(ev) != 2):
                problems.append('%s: 2-hop item needs two sources and two evidence sentences' % where)
            if it.get('hops') == 1 and len(srcs) != 1:
                problems.append('%s: 1-hop item needs exactly one source' % where)
            for k, e in enumerate(ev):
                cands = [srcs[k]] if it.get('hops') == 2 and k < len(srcs) else srcs
                if not any(s in texts and norm(e) in texts[s] for s in cands):
                    problems.append('%s: evidence %d not found verbatim in %s' % (where, k, cands))
        sp = it.get('split')
        c = counts.setdefault(sp, {'items': 0, 'unanswerable': 0, 'answerable': 0, 'hops2': 0})
        c['items'] += 1
        c['unanswerable' if un else 'answerable'] += 1
        c['hops2'] += it.get('hops') == 2

    for p in problems:
        print('PROBLEM:', p)
    for sp in sorted(counts, key=str):
        c = counts[sp]
        print('%s: %d items (%d answerable, %d of them 2-hop; %d unanswerable)'
              % (sp, c['items'], c['answerable'], c['hops2'], c['unanswerable']))
    if problems:
        print('%d problems in %d items' % (len(problems), len(items)))
        return 1
    print('%d items ok' % len(items))
    return 0


if __name__ == '__main__':
    sys.exit(main())
