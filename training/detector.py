"""``tether train detector``: a contradiction classifier Tether trains itself, on the CPU, from the
claims of the ingested collection.

No NLI model ships offline, so the classifier is made here: a sentence-transformers ``CrossEncoder``
started from the shipped all-MiniLM-L6-v2 weights, trained on claim pairs built from the collection's
own sentences with the rewrites of ``retrieval/lexicon.yaml`` (``perturbations``):

- contradiction: a value swapped, a negation added or removed, a role holder swapped, a date
  shifted, a word replaced by its antonym;
- compatible: a paraphrase, the value in an equivalent unit ("3 weeks" / "21 days"), another value
  for another scope or another period ("For contractors, ...", "Until 2019, ...");
- unrelated: two claims of different documents.

The recipe, top to bottom: ``build_pairs`` -> ``train`` (``CrossEncoderTrainer``; checkpoints, so a
rerun resumes; stops, checkpointed, at ``max_minutes``; progress in the log and the job row) ->
``register`` (a ``cross_encoders`` row of kind detector) -> ``gate`` (rules alone vs rules + classifier on the dev
halves of labelled sets, the threshold chosen there) -> promoted only when it beats the rules.
The detector uses it (``retrieval.conflicts.ClassifierConflictDetector``) only once promoted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tether.errors import ConfigError, TetherError
from training.cross_encoder import (
    CrossEncoderRun,
    TrackedJob,
    collection_chunks,
    fit,
    loop_problems,
    save_model,
    settings_for,
    versions,
)

log = logging.getLogger(__name__)

LABELS = {0: "contradiction", 1: "compatible", 2: "unrelated"}
BASE = "all-MiniLM-L6-v2"
THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5 ... 0.95, chosen on the dev halves


@dataclass(frozen=True)
class DetectorConfig:
    """One ``tether train detector`` run."""

    out_dir: str = field(metadata={"help": "folder for pairs, checkpoints and the trained model (reuse it to resume)"})
    max_pairs: int = field(default=3000, metadata={"help": "training pairs built from the collection"})
    epochs: float = field(default=2.0, metadata={"help": "passes over the pairs"})
    batch_size: int = field(default=16, metadata={"help": "pairs per step"})
    learning_rate: float = field(default=4e-5, metadata={"help": "AdamW learning rate"})
    max_length: int = field(default=128, metadata={"help": "tokens per pair (longer pairs are truncated)"})
    max_minutes: float = field(default=15.0, metadata={"help": "stop (checkpointed, resumable) after this long"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many steps (-1: epochs decide)"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every this many steps"})
    seed: int = field(default=0, metadata={"help": "pair sampling and training seed"})
    base: str = field(default=BASE, metadata={"help": "weights to start from: the shipped MiniLM or a local folder"})

    def problems(self) -> list[str]:
        out = [f"--max-pairs ({self.max_pairs}) must be >= 1"] if self.max_pairs < 1 else []
        return out + loop_problems(self)

    def validated(self) -> DetectorConfig:
        if self.problems():
            raise ConfigError(self.problems())
        return self


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    label: int  # LABELS
    how: str  # the rewrite: value-swap, negation, owner-swap, date-shift, antonym, paraphrase, ...


# -- pairs --------------------------------------------------------------------------------------


def collection_claims(cfg) -> list[Any]:
    """The sentence claims of every chunk of the configured collection (``retrieval.conflicts.Claim``)."""
    from retrieval.conflicts import split_claims

    chunks = collection_chunks(cfg, "the detector")
    seen: set[str] = set()
    out = []
    for c in chunks:
        hit = SimpleNamespace(id=c.id, text=c.text, source=c.source, span=None, title=c.title)
        for claim in split_claims(hit, cfg.conflicts.min_claim_words):
            if claim.text not in seen and len(claim.text) <= 400:
                seen.add(claim.text)
                out.append(claim)
    return out


def _swap_phrase(text: str, pairs: Sequence[tuple[str, str]], rng: random.Random) -> str | None:
    """``text`` with one phrase of ``pairs`` replaced by its partner (whole words, either way)."""
    options = []
    for a, b in pairs:
        for src, dst in ((a, b), (b, a)):
            for m in re.finditer(rf"(?<![\w-]){re.escape(src)}(?![\w-])", text, re.I):
                options.append((m.start(), m.end(), dst))
    if not options:
        return None
    start, end, dst = rng.choice(options)
    if text[start].isupper():
        dst = dst[:1].upper() + dst[1:]
    return text[:start] + dst + text[end:]


_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _number_in(text: str, q) -> re.Match[str] | None:
    m = _NUMBER.search(text, q.span[0], q.span[1])
    return m if m and m.end() <= q.span[1] else None


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}".rstrip("0").rstrip(".")


def _value_swap(text: str, feats, rng: random.Random) -> str | None:
    qs = [q for q in feats.quantities if q.kind in ("amount", "count", "duration", "percent")]
    rng.shuffle(qs)
    for q in qs:
        m = _number_in(text, q)
        if m is None:
            continue
        v = float(m.group(0).replace(",", ""))
        new = v * rng.choice((2.0, 3.0, 0.5, 1.5)) if v else 5.0
        new = round(new) if v.is_integer() else round(new, 2)
        if new == v:
            new = v + 1
        return text[: m.start()] + _fmt(new) + text[m.end() :]
    return None


def _date_shift(text: str, feats, rng: random.Random) -> str | None:
    for q in feats.quantities:
        if q.kind != "date" or q.unit not in ("date", "day-of-year", "month", "year"):
            continue
        piece = text[q.span[0] : q.span[1]]
        year = re.search(r"\b(19|20)\d{2}\b", piece)
        day = re.search(r"\b([12]?\d|3[01])\b", piece)
        if day and q.unit in ("date", "day-of-year") and (not year or day.start() != year.start()):
            d = int(day.group(0))
            new = d + 7 if d <= 20 else d - 7
            start = q.span[0] + day.start()
            return text[:start] + str(new) + text[start + len(day.group(0)) :]
        if year:
            start = q.span[0] + year.start()
            return text[:start] + str(int(year.group(0)) + rng.choice((-1, 1))) + text[start + 4 :]
    return None


def _owner_swap(text: str, feats, holders: Sequence[str], rng: random.Random) -> str | None:
    for _, who in feats.roles:
        others = [h for h in holders if h.lower() != who.lower() and h.lower() not in text.lower()]
        if others and who in text:
            return text.replace(who, rng.choice(others), 1)
    names = sorted(feats.names)
    if names:
        others = [h for h in holders if h not in names and h.lower() not in text.lower()]
        if others:
            return text.replace(names[0], rng.choice(others), 1)
    return None


def _unit_equivalent(text: str, feats, units, rng: random.Random) -> str | None:
    for q in feats.quantities:
        piece = text[q.span[0] : q.span[1]]
        for big, small, factor in units:
            m = re.search(rf"(\d[\d,]*(?:\.\d+)?)\s*({big}s?)\b", piece, re.I)
            if m:
                v = float(m.group(1).replace(",", "")) * factor
                new = f"{_fmt(v)} {small}{'' if v == 1 else 's'}"
            else:
                m = re.search(rf"(\d[\d,]*(?:\.\d+)?)\s*({small}s?)\b", piece, re.I)
                if not m:
                    continue
                v = float(m.group(1).replace(",", "")) / factor
                if not v.is_integer():
                    continue
                new = f"{_fmt(v)} {big}{'' if v == 1 else 's'}"
            start = q.span[0] + m.start()
            return text[:start] + new + text[start + len(m.group(0)) :]
    return None


def _prefixed(prefix: str, text: str) -> str:
    return f"{prefix} {text[:1].lower() + text[1:] if text[1:2].islower() else text}"


def build_pairs(claims: Sequence[Any], *, max_pairs: int, seed: int = 0) -> list[Pair]:
    """Labelled pairs from claims (``Claim``s or anything with ``text`` and ``source``): about 45%
    contradictions, 40% compatible rewrites and 15% unrelated pairs, each in a random order."""
    from retrieval.conflicts import claim_features
    from retrieval.lexicon import lexicon

    rng = random.Random(seed)
    pert = lexicon().perturbations
    feats = {c.text: claim_features(c.text) for c in claims}
    holders = sorted({who for f in feats.values() for _, who in f.roles} | {n for f in feats.values() for n in f.names})
    pool = list(claims)
    rng.shuffle(pool)
    out: list[Pair] = []
    targets = {0: int(max_pairs * 0.45), 1: int(max_pairs * 0.40)}
    counts = Counter()

    def add(a: str, b: str | None, label: int, how: str) -> None:
        if b and b != a and counts[label] < targets.get(label, max_pairs):
            counts[label] += 1
            out.append(Pair(*((a, b) if rng.random() < 0.5 else (b, a)), label, how))

    for rnd in range(3):  # a few passes: every claim gets one rewrite per pass
        for c in pool:
            text, f = c.text, feats[c.text]
            year = rng.randint(2010, 2020)
            contradictions = [
                ("value-swap", lambda t=text, f=f: _value_swap(t, f, rng)),
                ("date-shift", lambda t=text, f=f: _date_shift(t, f, rng)),
                ("owner-swap", lambda t=text, f=f: _owner_swap(t, f, holders, rng)),
                ("negation", lambda t=text: _swap_phrase(t, pert.negations, rng)),
                ("antonym", lambda t=text: _swap_phrase(t, pert.antonyms, rng)),
            ]
            compatibles = [
                ("paraphrase", lambda t=text: _swap_phrase(t, pert.paraphrases, rng)),
                ("unit-equivalent", lambda t=text, f=f: _unit_equivalent(t, f, pert.unit_equivalents, rng)),
                ("clause-drop", lambda t=text: _clause_drop(t)),
            ]
            if pert.scopes:
                compatibles.append(
                    ("other-scope", lambda t=text, f=f: _with(_value_swap(t, f, rng), rng.choice(pert.scopes)))
                )
            if pert.periods:
                period = rng.choice(pert.periods).format(year=year, next=year + 1)
                compatibles.append(("other-period", lambda t=text, f=f, p=period: _with(_value_swap(t, f, rng), p)))
            rng.shuffle(contradictions)
            rng.shuffle(compatibles)
            for how, make in contradictions:
                b = make()
                if b:
                    add(text, b, 0, how)
                    break
            for how, make in compatibles:
                b = make()
                if b:
                    add(text, b, 1, how)
                    break
            if len(out) >= max_pairs * 0.85 or rnd and counts[0] >= targets[0] and counts[1] >= targets[1]:
                break
    n_unrelated = max(0, min(max_pairs - len(out), len(out) // 4))
    for _ in range(n_unrelated * 3):
        if n_unrelated <= 0 or len(pool) < 2:
            break
        a, b = rng.sample(pool, 2)
        if a.source != b.source:
            out.append(Pair(a.text, b.text, 2, "unrelated"))
            n_unrelated -= 1
    rng.shuffle(out)
    return out


def _clause_drop(text: str) -> str | None:
    """The claim without its last clause ("X, which Y." -> "X."): it still holds."""
    m = re.search(r"^(.{25,}?)(?:[,;]\s+(?:which|and|so|as|including|for example|e\.g\.)\b|;\s+).{10,}$", text)
    return m.group(1).rstrip(" ,;") + "." if m else None


def _with(text: str | None, prefix: str) -> str | None:
    return _prefixed(prefix, text) if text else None


def pairs_manifest(pairs: Sequence[Pair]) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(f"{p.a}\t{p.b}\t{p.label}" for p in pairs).encode()).hexdigest()
    return {
        "pairs": len(pairs),
        "by_label": {LABELS[k]: v for k, v in sorted(Counter(p.label for p in pairs).items())},
        "by_rewrite": dict(sorted(Counter(p.how for p in pairs).items())),
        "hash": digest[:16],
    }


def write_pairs(pairs: Sequence[Pair], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(asdict(p)) + "\n")


def read_pairs(path: Path) -> list[Pair]:
    return [Pair(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- training -----------------------------------------------------------------------------------


def train(
    cfg,
    dcfg: DetectorConfig,
    *,
    pairs: Sequence[Pair] | None = None,
    on_step: Callable[[int, int, float | None], None] | None = None,
) -> CrossEncoderRun:
    """Train the classifier into ``dcfg.out_dir`` (``model/``), resuming from its last checkpoint.

    ``pairs``: given, or read back from ``out_dir/pairs.jsonl`` (a resumed run trains on the same
    pairs), or built from the collection. ``on_step(step, total, loss)``: progress at each log step.
    """
    dcfg = dcfg.validated()
    out = Path(dcfg.out_dir)
    pairs_path = out / "pairs.jsonl"
    if pairs is None:
        if pairs_path.is_file():
            pairs = read_pairs(pairs_path)
            log.info("resuming on the %d pairs of %s", len(pairs), pairs_path)
        else:
            pairs = build_pairs(collection_claims(cfg), max_pairs=dcfg.max_pairs, seed=dcfg.seed)
    if not pairs_path.is_file():
        write_pairs(pairs, pairs_path)
    if len({p.label for p in pairs}) < 2:
        raise TetherError(
            f"the collection gave {len(pairs)} training pairs of one label only: ingest more documents "
            "(sentences with numbers, dates, roles or modal verbs) before training the detector"
        )
    manifest = pairs_manifest(pairs)
    log.info("training pairs: %s", manifest)

    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, losses

    from tether.crossencoder import resolve_model_path

    torch.manual_seed(dcfg.seed)
    base = resolve_model_path(dcfg.base, setting="--base", what="detector base model")
    model = CrossEncoder(
        str(base),
        num_labels=len(LABELS),
        max_length=dcfg.max_length,
        device="cpu",
        local_files_only=True,
        config_kwargs={"id2label": dict(LABELS), "label2id": {v: k for k, v in LABELS.items()}},
    )
    data = Dataset.from_dict(
        {"sentence1": [p.a for p in pairs], "sentence2": [p.b for p in pairs], "label": [p.label for p in pairs]}
    )
    settings = settings_for(dcfg, "detector", len(pairs))
    done = fit(model, data, losses.CrossEntropyLoss(model), settings, out / "checkpoints", on_step)
    model_dir = out / "model"
    if done.finished:
        from retrieval.conflicts.detectors import CLASSIFIER_CARD

        card = {
            "base": str(dcfg.base),
            "labels": LABELS,
            "pairs": manifest,
            "steps": done.steps,
            "total_steps": done.total_steps,
            "seconds": round(done.seconds, 1),
            "train_loss": done.train_loss,
            "config": asdict(dcfg),
            "versions": versions(),
        }
        save_model(model, model_dir, {CLASSIFIER_CARD: json.dumps(card, indent=2, default=str)})
    return CrossEncoderRun(
        model_dir=model_dir,
        steps=done.steps,
        final_loss=done.final_loss,
        seconds=done.seconds,
        resumed_from=done.resumed_from,
        finished=done.finished,
        manifest=manifest,
    )


def write_card(model_dir: Path, card: dict[str, Any]) -> None:
    from retrieval.conflicts.detectors import CLASSIFIER_CARD, classifier_card

    path = model_dir / CLASSIFIER_CARD
    merged = {**classifier_card(model_dir), **card}
    path.write_text(json.dumps(merged, indent=2, default=str), encoding="utf-8")


# -- the promotion gate -------------------------------------------------------------------------


def default_gate_sets(root: Path) -> list[Path]:
    """The frozen labelled sets with a dev half under ``root`` (bench/data/conflicts_*/cases.jsonl),
    and the sample base's labelled pairs (examples/eval/handbook_conflicts.jsonl, not split: used
    whole, as a guard that the classifier does not cost the rules what they already get right)."""
    sets = sorted((root / "bench" / "data").glob("conflicts_*/cases.jsonl"))
    handbook = root / "examples" / "eval" / "handbook_conflicts.jsonl"
    return sets + ([handbook] if handbook.is_file() else [])


def gate(cfg, model_dir: Path, sets: Sequence[Path], *, split: str = "dev", embedder=None) -> dict[str, Any]:
    """Rules alone against rules + classifier on the ``split`` half of each set (a set without a
    split: all of it): F1 per set at each
    threshold of ``THRESHOLDS``; the chosen threshold maximises the mean F1. ``passed`` when, at that
    threshold, the classifier's mean F1 beats the rules' and no set's F1 falls below the rules'."""
    from assistant.evaluation.cases import load_cases
    from assistant.evaluation.conflicts import ConflictOutcome, conflict_metrics, make_claim, select_split
    from retrieval.conflicts import ClassifierConflictDetector
    from retrieval.embeddings import embedder_for

    if not sets:
        raise ConfigError(["--gate-cases: no labelled set with a dev half to gate the classifier on"])
    embedder = embedder or embedder_for(cfg)
    detector = ClassifierConflictDetector(embedder, model_dir, cfg.conflicts)
    per_set: dict[str, Any] = {}
    scored: dict[str, list[tuple[Any, Any, float | None]]] = {}
    for path in sets:
        cases = load_cases(path).conflicts
        if any(c.split for c in cases):
            cases = select_split(cases, split, path)
        rows = []
        for case in cases:
            found, p = detector.score(make_claim(case.a, {}), make_claim(case.b, {}))
            rows.append((case, found, p))
        scored[str(path)] = rows

    def f1_at(rows, threshold: float | None) -> float:
        outcomes = [
            ConflictOutcome(
                case.id,
                case.conflict,
                found is not None or (threshold is not None and p is not None and p >= threshold),
                gold_kind=case.kind,
            )
            for case, found, p in rows
        ]
        return conflict_metrics(outcomes)["conflicts.f1"]

    rules = {name: f1_at(rows, None) for name, rows in scored.items()}
    by_threshold = {t: {name: f1_at(rows, t) for name, rows in scored.items()} for t in THRESHOLDS}
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    best = max(THRESHOLDS, key=lambda t: (round(mean(by_threshold[t]), 6), t))
    chosen = by_threshold[best]
    worse = sorted(n for n in rules if chosen[n] < rules[n])
    passed = mean(chosen) > mean(rules) and not worse
    if worse:
        reason = "F1 below the rules' on " + ", ".join(f"{Path(n).parent.name}/{Path(n).name}" for n in worse)
    elif not passed:
        reason = f"mean F1 {mean(chosen):.3f} does not beat the rules' {mean(rules):.3f}"
    else:
        reason = f"mean F1 {mean(chosen):.3f} beats the rules' {mean(rules):.3f}, no set worse"
    for name in scored:
        per_set[name] = {"cases": len(scored[name]), "rules_f1": rules[name], "classifier_f1": chosen[name]}
    return {
        "split": split,
        "threshold": best,
        "sets": per_set,
        "rules_mean_f1": mean(rules),
        "classifier_mean_f1": mean(chosen),
        "passed": passed,
        "reason": reason,
        "by_threshold": {str(t): v for t, v in by_threshold.items()},
    }


# -- the recipe ---------------------------------------------------------------------------------


def run(
    cfg,
    dcfg: DetectorConfig,
    *,
    gate_sets: Sequence[Path] = (),
    promote: bool = True,
    pairs: Sequence[Pair] | None = None,
) -> tuple[CrossEncoderRun, dict[str, Any] | None]:
    """Train (resuming), register, gate on the dev halves, promote when it beats the rules."""
    from training.registry import TrainingStore

    out = Path(dcfg.out_dir)
    job = TrackedJob(cfg.db_path, "detector", asdict(dcfg), out)
    try:
        res = train(cfg, dcfg, pairs=pairs, on_step=job.on_step)
    except BaseException as exc:
        job.failed(exc)
        raise
    if not res.finished:
        job.stopped(dcfg.max_minutes)
        return replace(res, job_id=job.id), None
    with TrainingStore.open(cfg.db_path) as store:
        detector_id = store.register_detector(
            path=str(res.model_dir.resolve()), base=dcfg.base, config=asdict(dcfg), manifest=res.manifest, job_id=job.id
        )
    report = None
    if gate_sets:
        report = gate(cfg, res.model_dir, gate_sets)
        write_card(res.model_dir, {"threshold": report["threshold"], "gate": report})
        with TrainingStore.open(cfg.db_path) as store:
            store.record_detector_gate(detector_id, report)
            if promote and report["passed"]:
                store.promote_detector(detector_id)
                log.info("promoted the contradiction classifier %s", detector_id)
            elif promote:
                log.warning("the classifier %s is not promoted: %s", detector_id, report["reason"])
    job.done({"detector_id": detector_id, "gate": report})
    return replace(res, registered_id=detector_id, job_id=job.id), report
