"""Section-aware chunks: heading structure from the readers, heading paths on chunks, the index text
the embedder and BM25 see, and collections that record whether they were built with it."""

import pytest

from retrieval.chunking import Chunk, heading_text, index_text, with_headings
from retrieval.ingest import ingest
from retrieval.ledger import Ledger
from retrieval.readers import TERM_LEVEL, html_document, html_visible_text, read_document
from retrieval.search import Searcher
from tether.errors import ConfigError

PAGE = """<html><head><title>Manual</title></head><body>
<h1>1. Server Manual</h1><p>Intro text.</p>
<h2>1.1. Memory</h2>
<dl>
  <dt><code>buffer_pool</code> (integer)</dt><dd><p>Sets the pool size.</p></dd>
  <dt>-n</dt><dt>--dry-run</dt><dd>Do nothing.<dl><dt>inner</dt><dd>Deep text.</dd></dl> After the inner list.</dd>
</dl>
<p>Closing words of memory.</p>
<h2>1.2. Disk</h2><p>Disk text.</p>
</body></html>"""


def _section(sections, title):
    return next(s for s in sections if s.title == title)


def test_html_sections_cover_headings_and_terms_without_changing_the_text():
    text, title, sections = html_document(PAGE)
    assert (text, title) == html_visible_text(PAGE)  # the structure never alters the visible text
    titles = [(s.level, s.title) for s in sections]
    assert titles == [
        (1, "1. Server Manual"),
        (2, "1.1. Memory"),
        (TERM_LEVEL, "buffer_pool (integer)"),
        (TERM_LEVEL, "-n, --dry-run"),  # a run of terms shares one definition
        (TERM_LEVEL + 1, "inner"),
        (2, "1.2. Disk"),
    ]
    for s in sections:
        assert text[s.title_start :].startswith(s.title.split(",")[0])
    memory, disk = _section(sections, "1.1. Memory"), _section(sections, "1.2. Disk")
    assert memory.end == disk.start  # a heading governs up to the next one of its level
    term = _section(sections, "buffer_pool (integer)")
    assert "Sets the pool size." in text[term.start : term.end]
    assert "Do nothing." not in text[term.start : term.end]
    dry = _section(sections, "-n, --dry-run")
    assert "After the inner list." in text[dry.start : dry.end]  # the outer term resumes after a nested list
    assert "Closing words" not in text[dry.start : dry.end]  # a term ends with its list


def test_heading_path_is_what_governs_an_offset():
    path = tmp_doc_path(PAGE)
    text = path.text
    assert [s.title for s in path.heading_path(text.index("Sets the pool"))] == [
        "1. Server Manual",
        "1.1. Memory",
        "buffer_pool (integer)",
    ]
    assert [s.title for s in path.heading_path(text.index("Deep text"))] == [
        "1. Server Manual",
        "1.1. Memory",
        "-n, --dry-run",
        "inner",
    ]
    assert [s.title for s in path.heading_path(text.index("Closing words"))] == ["1. Server Manual", "1.1. Memory"]
    assert [s.title for s in path.heading_path(text.index("Disk text"))] == ["1. Server Manual", "1.2. Disk"]
    assert path.heading_path(0) == []  # a title does not govern itself


def tmp_doc_path(html):
    from retrieval.readers import ParsedDocument

    text, title, sections = html_document(html)
    return ParsedDocument(kind="html", text=text, body_start=0, title=title or "", sections=sections)


def test_an_input_holding_the_mark_characters_gets_no_sections():
    html = "<h1>Title \ue001</h1><p>text</p>"
    text, _, sections = html_document(html)
    assert sections == ()
    assert text == html_visible_text(html)[0]


def test_markdown_sections_skip_fenced_code(tmp_path):
    path = tmp_path / "guide.md"
    path.write_text(
        "---\ntitle: Guide\n---\n# Guide\n\nIntro.\n\n## Install\n\n```sh\n# not a heading\nmake\n```\n\nRun it.\n\n"
        "### Options\n\nFlags.\n\n## Usage\n\nUse it.\n",
        encoding="utf-8",
    )
    doc = read_document(path)
    assert [(s.level, s.title) for s in doc.sections] == [(1, "Guide"), (2, "Install"), (3, "Options"), (2, "Usage")]
    assert [s.title for s in doc.heading_path(doc.text.index("Run it"))] == ["Guide", "Install"]
    assert [s.title for s in doc.heading_path(doc.text.index("Flags"))] == ["Guide", "Install", "Options"]
    assert [s.title for s in doc.heading_path(doc.text.index("Use it"))] == ["Guide", "Usage"]


def test_heading_text_drops_numbering_repeats_and_outer_titles_first():
    assert heading_text(["20.4. Resource Use", "20.4.1. Memory", "pool_size (integer)"]) == (
        "Resource Use > Memory > pool_size (integer)"
    )
    assert heading_text(["A.1. Appendix", "3.2 Setup", "Setup"]) == "Appendix > Setup"
    assert heading_text(["Chapter 3. Boot"]) == "Chapter 3. Boot"  # only a leading number is dropped
    long = heading_text(["x" * 100, "middle part", "leaf"], max_chars=30)
    assert long == "middle part > leaf"
    assert len(heading_text(["y" * 500], max_chars=40)) == 40
    assert heading_text([]) == ""


def test_with_headings_and_index_text():
    doc = tmp_doc_path(PAGE)
    at = doc.text.index("Sets the pool")
    chunks = [Chunk(0, doc.text[:20], 0, 20), Chunk(1, doc.text[at : at + 10], at, at + 10)]
    first, second = with_headings(chunks, doc.heading_path)
    assert first.heading == ""
    assert second.heading == "Server Manual > Memory > buffer_pool (integer)"
    assert (second.text, second.start, second.end) == (chunks[1].text, at, at + 10)  # the cited text is unchanged
    assert index_text(second.heading, second.text) == second.heading + "\n" + second.text
    assert index_text("", "body") == index_text(None, "body") == "body"


FILLER = " ".join(f"Sentence {i} talks about general maintenance of the machine." for i in range(60))


def _reference(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ref.html").write_text(
        "<html><head><title>Reference</title></head><body><h1>Reference</h1>"
        f"<h2>Zorblat tuning</h2><p>{FILLER}</p><p>The quantum setting is seven.</p>"
        f"<h2>Other things</h2><p>{FILLER}</p></body></html>",
        encoding="utf-8",
    )
    return folder


def test_heading_prefix_reaches_bm25_and_vectors_but_not_the_cited_text(cfg, embedder, tmp_path):
    folder = _reference(tmp_path / "kb")
    on = cfg.with_retrieval(heading_prefix=True)
    ingest(on, [folder], embedder=embedder)
    with Ledger.open(on.db_path) as led:
        ids, texts = led.all_chunks(on.retrieval.collection)
        rows = led.chunks_by_id(ids)
        entries = led.store_entries(on.retrieval.collection, ids)
    target = next(i for i in ids if "quantum setting is seven" in rows[i].text)
    assert "Zorblat" not in rows[target].text  # the heading is far above this chunk
    assert texts[ids.index(target)].startswith("Reference > Zorblat tuning\n")
    assert next(e.text for e in entries if e.id == target) == texts[ids.index(target)]  # re-embedding uses it too
    searcher = Searcher(on, embedder=embedder)
    try:
        hits = searcher.search("zorblat quantum", k=3)
        assert "quantum setting is seven" in hits[0].text
        assert not any(h.text.startswith("Reference > ") for h in hits)  # hits carry the document's own words
    finally:
        searcher.close()


def test_without_the_prefix_the_heading_does_not_reach_the_chunk(cfg, embedder, tmp_path):
    folder = _reference(tmp_path / "kb")
    cfg = cfg.with_retrieval(heading_prefix=False)
    ingest(cfg, [folder], embedder=embedder)
    with Ledger.open(cfg.db_path) as led:
        ids, texts = led.all_chunks(cfg.retrieval.collection)
        rows = led.chunks_by_id(ids)
    target = next(i for i in ids if "quantum setting is seven" in rows[i].text)
    assert texts[ids.index(target)] == rows[target].text


def test_a_collection_refuses_the_other_heading_setting(cfg, embedder, tmp_path):
    folder = _reference(tmp_path / "kb")
    assert cfg.retrieval.heading_prefix  # the default (docs/BENCHMARKS.md, 2026-12-02)
    ingest(cfg, [folder], embedder=embedder)
    off = cfg.with_retrieval(heading_prefix=False)
    assert cfg.retrieval.embed_identity != off.retrieval.embed_identity
    with pytest.raises(ConfigError, match="heading_prefix"):
        ingest(off, [folder], embedder=embedder)
