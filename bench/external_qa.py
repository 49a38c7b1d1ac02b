"""Evidence recall of ``Searcher.search`` on the external QA sets (issue 11), per corpus and split.

Corpora and sets (made blind by others; never edited here):

* ``postgresql``: ``bench/data/postgresql/qa.jsonl``, pages listed in its ``pages.txt`` (root on the
  first line, ``/usr/share/doc/postgresql-doc-15/html``);
* ``git``: ``bench/data/git/qa.jsonl`` and ``pages.txt`` (``/usr/share/doc/git-doc``);
* ``valgrind``: ``bench/data/valgrind/qa.jsonl`` and ``pages.txt`` (``/usr/share/doc/valgrind/html``), a
  set made for the answerability check (half its items are near-misses); any other folder of
  ``bench/data`` with the same two files works the same way;
* ``debian``: ``bench/data/debian_reference_qa.jsonl`` (question, evidence, source) with the split of
  ``bench/data/debian_reference_answers.jsonl``, over the ``*.en.html`` pages of
  ``/usr/share/debian-reference`` (the 15 pages of ``bench/retrieval_quality.py``).

For each corpus the listed pages are copied into a folder under ``--work`` and ingested with
``retrieval.ingest.ingest`` into a data dir kept there, one per corpus and index-time settings
(chunking, embedder, heading prefix), so a second run with the same settings only searches; pass
``--fresh`` after changing the reader or chunking code. Every question of the chosen split goes through
``Searcher.search(question, k=20)``.

Metric: a retrieved chunk is a hit for an evidence string when its text, whitespace-collapsed and
lower-cased, contains the evidence, whitespace-collapsed and lower-cased. Per item the rank of each
evidence is the rank of its first hit (none past 20). Reported per corpus: recall@5 and recall@20
("any": some evidence of the item is found, "all": every evidence is found; the same for 1-hop
items), MRR@20 (first hit of any evidence), page recall@5 (a top-5 chunk comes from one of the
item's sources). Unanswerable items are excluded from recall.

Variants: ``--variant NAME`` or ``--variant NAME:key=value,key=value`` (retrieval settings of
``tether.config.RetrievalConfig``; repeatable). ``baseline`` is today's defaults. Variants that
differ only in search-time settings share one index.

Run from the repository root, one corpus at a time on a shared machine::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false \\
        .venv/bin/python bench/external_qa.py --corpus postgresql --split dev \\
        --variant baseline --variant hp:heading_prefix=true --out bench/out/extqa-pg-dev.json

Writes the JSON (settings, per-item ranks, summaries) to ``--out`` and the Markdown table to stdout
(and to ``--md`` when given); logs go to stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.external_qa")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "bench" / "data"
DEPTH = 20  # ranks looked at per question
INDEX_FIELDS = ("chunk_size", "chunk_overlap", "embed_model", "embed_int8", "heading_prefix")


def norm(text: str) -> str:
    return " ".join(text.split()).lower()


# --- data --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    id: str
    question: str
    evidence: tuple[str, ...]
    sources: tuple[str, ...]
    unanswerable: bool
    hops: int
    split: str


@dataclass(frozen=True)
class Corpus:
    name: str
    root: Path
    pages: tuple[str, ...]
    items: tuple[Item, ...]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_pages_txt(path: Path) -> tuple[Path, list[str]]:
    root, pages = None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("# root:"):
            root = Path(line.split(":", 1)[1].strip())
        elif line and not line.startswith("#"):
            pages.append(line)
    if root is None:
        raise SystemExit(f"error: {path} has no '# root: DIR' line")
    return root, pages


def load_corpus(name: str) -> Corpus:
    if name != "debian" and (DATA / name / "pages.txt").is_file() and (DATA / name / "qa.jsonl").is_file():
        root, pages = load_pages_txt(DATA / name / "pages.txt")
        items = [
            Item(
                r["id"],
                r["question"],
                tuple(r["evidence"]),
                tuple(r["sources"]),
                bool(r["unanswerable"]),
                int(r["hops"]),
                r["split"],
            )
            for r in _read_jsonl(DATA / name / "qa.jsonl")
        ]
        return Corpus(name, root, tuple(pages), tuple(items))
    if name == "debian":
        root = Path("/usr/share/debian-reference")
        pages = sorted(p.name for p in root.glob("*.en.html") if p.is_file())
        splits = {r["id"]: r["split"] for r in _read_jsonl(DATA / "debian_reference_answers.jsonl")}
        items = [
            Item(r["id"], r["question"], (r["evidence"],), (r["source"],), False, 1, splits[r["id"]])
            for r in _read_jsonl(DATA / "debian_reference_qa.jsonl")
        ]
        return Corpus(name, root, tuple(pages), tuple(items))
    raise SystemExit(
        f"error: unknown corpus {name!r}: debian, or a folder of bench/data with pages.txt and qa.jsonl "
        "(postgresql, git, valgrind)"
    )


def copy_pages(corpus: Corpus, dest: Path) -> None:
    missing = [p for p in corpus.pages if not (corpus.root / p).is_file()]
    if missing:
        raise SystemExit(
            f"error: {len(missing)} pages of {corpus.name} are missing under {corpus.root} (first: {missing[0]}); "
            "install the Debian documentation package that holds them"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for p in corpus.pages:
        shutil.copy2(corpus.root / p, dest / p)


# --- variants ----------------------------------------------------------------------------


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    changes = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise SystemExit(f"error: --variant {text!r}: {part!r} is not key=value")
        changes[key.strip()] = _value(value.strip())
    return name.strip() or "baseline", changes


def index_key(corpus: str, cfg: Any) -> str:
    r = cfg.retrieval
    h = hashlib.sha1()
    for name in INDEX_FIELDS:
        value = getattr(r, name, False)  # a field this checkout lacks is off
        h.update(f"{name}={value}\0".encode())
    return f"{corpus}-{h.hexdigest()[:12]}"


# --- scoring -----------------------------------------------------------------------------


@dataclass
class ItemResult:
    id: str
    hops: int
    ranks: list[int | None]  # per evidence: rank of the first hit, None past DEPTH
    page_hit: bool
    top_sources: list[str]

    def first(self, how: str) -> int | None:
        found = [r for r in self.ranks if r is not None]
        if how == "any":
            return min(found) if found else None
        return max(found) if len(found) == len(self.ranks) else None


@dataclass
class Summary:
    corpus: str
    split: str
    variant: str
    items: int
    answerable: int
    two_hop: int
    recall5_any: float
    recall5_all: float
    recall20_any: float
    recall20_all: float
    mrr20: float
    page_recall5: float
    chunks: int
    median_query_ms: float
    settings: dict[str, Any] = field(default_factory=dict)


def score_item(item: Item, hits: Sequence[Any]) -> ItemResult:
    texts = [norm(h.text) for h in hits]
    ranks = []
    for ev in item.evidence:
        key = norm(ev)
        ranks.append(next((i + 1 for i, t in enumerate(texts) if key in t), None))
    sources = {s for s in item.sources}
    page_hit = any(h.source in sources for h in hits[:5])
    return ItemResult(item.id, item.hops, ranks, page_hit, [h.source for h in hits[:5]])


def summarise(
    corpus: str, split: str, variant: str, results: Sequence[ItemResult], n_items: int, **extra: Any
) -> Summary:
    n = max(1, len(results))

    def recall(k: int, how: str) -> float:
        return sum(1 for r in results if (f := r.first(how)) is not None and f <= k) / n

    mrr = sum(1.0 / f for r in results if (f := r.first("any")) is not None) / n
    return Summary(
        corpus=corpus,
        split=split,
        variant=variant,
        items=n_items,
        answerable=len(results),
        two_hop=sum(1 for r in results if len(r.ranks) > 1),
        recall5_any=round(recall(5, "any"), 4),
        recall5_all=round(recall(5, "all"), 4),
        recall20_any=round(recall(DEPTH, "any"), 4),
        recall20_all=round(recall(DEPTH, "all"), 4),
        mrr20=round(mrr, 4),
        page_recall5=round(sum(r.page_hit for r in results) / n, 4),
        **extra,
    )


# --- running -----------------------------------------------------------------------------


def build_index(corpus: Corpus, cfg: Any, work: Path, *, fresh: bool) -> Any:
    """The data dir for corpus under cfg's index settings, ingested unless it already is."""
    from retrieval.ingest import ingest

    key = index_key(corpus.name, cfg)
    data_dir = work / key
    pages = work / f"{corpus.name}-pages"
    if fresh:
        shutil.rmtree(data_dir, ignore_errors=True)
    if not pages.is_dir() or sorted(p.name for p in pages.iterdir()) != sorted(corpus.pages):
        shutil.rmtree(pages, ignore_errors=True)
        copy_pages(corpus, pages)
    cfg = _with_data_dir(cfg, data_dir)
    done = data_dir / "ingested.json"
    if done.is_file():
        log.info("%s: reusing %s", corpus.name, data_dir)
        return cfg
    t = time.perf_counter()
    summary = ingest(cfg, [pages])
    info = summary.to_json()
    if info["files_failed"] or info["files_skipped"]:
        log.warning("%s: skipped %s failed %s", corpus.name, info["skipped"], info["failed"])
    info["seconds"] = round(time.perf_counter() - t, 1)
    done.write_text(json.dumps({k: v for k, v in info.items() if k != "files"}, indent=1))
    log.info("%s: %d chunks in %.1fs into %s", corpus.name, summary.chunks_total, info["seconds"], data_dir)
    return cfg


def _with_data_dir(cfg: Any, data_dir: Path) -> Any:
    import dataclasses

    return dataclasses.replace(cfg, data_dir=data_dir)


def run_variant(corpus: Corpus, split: str, name: str, changes: dict[str, Any], work: Path, fresh: bool):
    from retrieval.search import Searcher
    from tether.config import load_config

    cfg = load_config(data_dir=work / "unused")
    if changes:
        cfg = cfg.with_retrieval(**changes)
    cfg = build_index(corpus, cfg, work, fresh=fresh)
    items = [i for i in corpus.items if i.split == split]
    answerable = [i for i in items if not i.unanswerable and i.evidence]
    searcher = Searcher(cfg)
    results, times = [], []
    try:
        for item in answerable:
            t = time.perf_counter()
            hits = searcher.search(item.question, k=DEPTH)
            times.append((time.perf_counter() - t) * 1e3)
            results.append(score_item(item, hits))
        chunks = searcher.ledger.chunk_count(searcher.collection)
    finally:
        searcher.close()
    times.sort()
    settings = {f: getattr(cfg.retrieval, f, None) for f in (*INDEX_FIELDS, "rrf_k", "candidates", "reranker")}
    settings.update({k: v for k, v in changes.items()})
    summary = summarise(
        corpus.name,
        split,
        name,
        results,
        len(items),
        chunks=chunks,
        median_query_ms=round(times[len(times) // 2], 1) if times else 0.0,
        settings=settings,
    )
    return summary, results


def markdown(summaries: Sequence[Summary]) -> str:
    lines = [
        "| corpus | split | variant | answerable (2-hop) | recall@5 any | recall@5 all | recall@20 any | recall@20 all "
        "| MRR@20 | page recall@5 | chunks |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.corpus} | {s.split} | {s.variant} | {s.answerable} ({s.two_hop}) | {s.recall5_any:.3f} | "
            f"{s.recall5_all:.3f} | {s.recall20_any:.3f} | {s.recall20_all:.3f} | {s.mrr20:.3f} | "
            f"{s.page_recall5:.3f} | {s.chunks} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--corpus",
        action="append",
        help="postgresql, git, debian or another bench/data folder; repeatable; default the first three",
    )
    ap.add_argument("--split", choices=("dev", "test"), required=True)
    ap.add_argument("--variant", action="append", help="NAME or NAME:key=value,...; repeatable; default baseline")
    ap.add_argument("--work", type=Path, default=Path("/tmp/tether-extqa"), help="pages and data dirs, reused")
    ap.add_argument("--fresh", action="store_true", help="re-ingest even when a data dir exists")
    ap.add_argument("--out", type=Path, help="JSON results")
    ap.add_argument("--md", type=Path, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "chromadb", "sentence_transformers", "retrieval.ingest"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    sys.path.insert(0, str(REPO))

    variants = [parse_variant(v) for v in (args.variant or ["baseline"])]
    summaries, per_item = [], {}
    started = time.perf_counter()
    for name in args.corpus or ["postgresql", "git", "debian"]:
        corpus = load_corpus(name)
        for label, changes in variants:
            summary, results = run_variant(corpus, args.split, label, changes, args.work, args.fresh)
            summaries.append(summary)
            per_item[f"{name}/{label}"] = [asdict(r) for r in results]
            log.info("%s %s %s: recall@5 %.3f", name, args.split, label, summary.recall5_any)
    table = markdown(summaries)
    print(table)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(table + "\n", encoding="utf-8")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        env = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
            "python": platform.python_version(),
            "command": " ".join(sys.argv),
            "seconds": round(time.perf_counter() - started, 1),
        }
        out = {"env": env, "summaries": [asdict(s) for s in summaries], "items": per_item}
        args.out.write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
