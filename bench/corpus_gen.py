"""The synthetic corpus of the retrieval benchmarks, and its queries: deterministic, importable, no I/O at import.

Documents are Markdown company documents (policies, procedures, meeting notes, runbooks, guidelines)
with front matter (``title``, ``date``, ``status``, ``authority``), numbered sections, bullet lists,
names, dates, amounts and a vocabulary of a few thousand real words (``load_vocabulary``: taken from
the MiniLM WordPiece vocabulary), about 50 Tether chunks per file. Document ``idx`` is a pure
function of (seed, idx) (``CorpusGenerator.document``), so any scale is a prefix of a larger one.
``ensure_corpus`` writes them once in shards of ``SHARD_FILES`` files; ``shard_subset`` gives the
folders holding exactly the first N. ``make_queries`` turns corpus sentences into questions (a
question opener plus 50-80% of the sentence's content words), each knowing the file it came from.

Used by ``bench/retrieval.py``::

    gen = CorpusGenerator(load_vocabulary(model_path / "vocab.txt", 4000, seed), seed, (4800, 6200))
    shards = shard_subset(ensure_corpus(root, gen, n_files), n_files, root)
    queries = make_queries(gen, n_files, 200, seed)
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CORPUS_VERSION = "v1"  # bump when the generated text changes: the corpus folder is keyed by it
SHARD_FILES = 50

FIRST = (
    "Alice Amara Ben Carla Chen Dana Diego Elena Emeka Farah Felix Grace Hana Hugo Ines Ivan Jade "
    "Jonas Kai Kamala Lars Leila Liam Maya Marco Nadia Noah Olga Omar Priya Paul Quinn Rosa Rahul "
    "Sara Sven Tariq Tess Uma Victor Wanda Wei Xavier Yara Yusuf Zoe Anil Beatriz Cormac Dmitri"
).split()
LAST = (
    "Adeyemi Bauer Castillo Dubois Eriksen Fischer Garcia Haddad Ibrahim Jensen Kowalski Larsen "
    "Moreau Nakamura Okafor Petrov Quintero Rossi Schmidt Tanaka Ueda Varga Whitfield Xu Yilmaz "
    "Zimmermann Abbott Brennan Costa Delgado Engel Fontaine Gallo Horvat Iqbal Jovanovic Keller "
    "Lindqvist Mendes Novak Oyelaran Pereira Ramos Silva Thorne Underwood Vance Walsh Young Zhou"
).split()
TEAMS = (
    "Finance, People Operations, Facilities, IT Service Desk, Security, Legal, Procurement, Sales "
    "Operations, Customer Support, Platform Engineering, Data Engineering, Payroll, Compliance, "
    "Internal Audit, Marketing, Logistics, Quality Assurance, Research, Treasury, Field Services"
).split(", ")
ROLES = (
    "finance director, head of people, facilities manager, security officer, data protection officer, "
    "team lead, line manager, site manager, payroll administrator, compliance officer, duty engineer, "
    "incident commander, procurement lead, office manager, chief operating officer, budget holder, "
    "internal auditor, records manager, release manager, service owner"
).split(", ")
CITIES = "Lisbon, Toronto, Austin, Manchester, Rotterdam, Nairobi, Singapore, Warsaw, Dublin, Melbourne".split(", ")
SYSTEM_SUFFIX = ("portal", "tracker", "ledger", "dashboard", "gateway", "register", "workspace", "console")
MONTHS = ("January February March April May June July August September October November December").split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday".split()
PERIODS = ("day", "week", "month", "quarter", "year", "trip")
KINDS = {
    "policies": (
        "policy",
        (
            "Purpose",
            "Scope",
            "Definitions",
            "Eligibility",
            "Approval",
            "Allowances",
            "Exceptions",
            "Compliance",
            "Records",
            "Responsibilities",
            "Review",
            "Escalation",
        ),
    ),
    "procedures": (
        "procedure",
        (
            "Overview",
            "Prerequisites",
            "Preparation",
            "Execution",
            "Verification",
            "Rollback",
            "Reporting",
            "Handover",
            "Troubleshooting",
            "Contacts",
            "Checklist",
        ),
    ),
    "meetings": (
        "meeting notes",
        (
            "Attendees",
            "Updates",
            "Budget",
            "Risks",
            "Decisions",
            "Action items",
            "Open questions",
            "Metrics",
            "Staffing",
            "Next steps",
        ),
    ),
    "runbooks": (
        "runbook",
        (
            "Symptoms",
            "Impact",
            "Diagnosis",
            "Mitigation",
            "Recovery",
            "Communication",
            "Post-incident review",
            "Monitoring",
            "Escalation",
            "References",
        ),
    ),
    "guidelines": (
        "guideline",
        (
            "Principles",
            "Recommendations",
            "Examples",
            "Do and do not",
            "Tools",
            "Training",
            "Accessibility",
            "Security",
            "Feedback",
            "Glossary",
        ),
    ),
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
OPENERS = (
    "What does the policy say about",
    "What is the rule for",
    "Who handles",
    "How many",
    "When is",
    "Where do I find",
    "What happens with",
    "Who approves",
    "What are the details of",
    "Tell me about",
    "",
    "",
)


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
        lines = [
            "---",
            f'title: "{title}"',
            f"date: {date.isoformat()}",
            f"status: {status}",
            f"authority: {authority}",
            "---",
            "",
            f"# {title}",
            "",
            f"Owner: {rng.choice(people)} ({rng.choice(TEAMS)}). Last reviewed {date.strftime('%d %B %Y')}.",
            "",
        ]
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
    template_words = {
        w.lower()
        for t in (*COMMON, *(x for ts in TEMPLATES.values() for x in ts))
        for w in re.findall(r"(?<![{\w])[A-Za-z]+(?![\w}])", t)
    }
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
