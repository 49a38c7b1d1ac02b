"""The conflict rules carry no corpus vocabulary: retrieval/lexicon.yaml and the rule modules name no
entity of a sample base, and the lexicon loads typed, with every problem reported at once.

The entities are derived from the sample bases' own files (examples/ and the frozen sets under
bench/data/conflicts_*), never typed by hand: a capitalised word seen in mid-sentence whose lower-case
form never occurs in those files is a name (of a company, person, place, product or team). Months and
weekdays (from ``calendar``) are English, not names.
"""

from __future__ import annotations

import calendar
import json
import re
from functools import cache
from pathlib import Path

import pytest

from retrieval.lexicon import DEFAULT_PATH, Lexicon, lexicon, load_lexicon, parse_lexicon
from tether.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BASES = {
    "examples": ROOT / "examples",
    "conflicts_municipal": ROOT / "bench" / "data" / "conflicts_municipal",
    "conflicts_gitnotes": ROOT / "bench" / "data" / "conflicts_gitnotes",
}
RULE_FILES = sorted((ROOT / "retrieval" / "conflicts").glob("*.py"))  # the loader (retrieval/lexicon.py) holds none

_ADDRESS = re.compile(r"\S+@\S+|\b\w+://\S+|\b[\w-]+(?:\.[\w-]+)+\.(?:com|org|net|eu|io|gov|uk|cz|nl)\b\S*", re.I)
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'’-]*")
_CAP = r"[A-Z][\w'’&-]*"
# a capitalised run after a lower-case word: "requested in ToolName", "is First Last"
_BARE_RUN = re.compile(rf"(?<![\w'’-])([a-z][a-z'’-]*) ({_CAP}(?:(?: (?:of|and|de|van|der|den|von|&))? {_CAP})*)")
# a title with the definite article: "the Finance Director", "the Head of X", "the CEO"
_TITLE = re.compile(
    rf"\b[Tt]he ((?:{_CAP} )+)?({_CAP})(?= of [A-Z])|\b[Tt]he ({_CAP} )+({_CAP})\b(?! {_CAP})|\b[Tt]he ([A-Z]{{2,}})\b"
)
_DETERMINERS = {
    "the",
    "a",
    "an",
    "our",
    "your",
    "their",
    "its",
    "his",
    "her",
    "this",
    "that",
    "each",
    "every",
    "any",
    "no",
}
_ENGLISH_CAPITALS = {w.lower() for w in list(calendar.month_name) + list(calendar.day_name) if w}


def _texts(base: Path) -> list[str]:
    """The text of every document and labelled case of a sample base."""
    from retrieval.readers import SUPPORTED, read_document

    out = []
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        if path.suffix == ".jsonl":
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    out.extend(_strings(json.loads(line)))
        elif path.suffix.lower() in SUPPORTED and not path.name.endswith(".meta.yaml"):
            out.append(read_document(path).text)
    return out


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@cache
def entities(name: str) -> frozenset[str]:
    """The names (lower case) of one sample base, derived from its files: the words of capitalised
    runs after a lower-case word that is not a determiner, never written in lower case in the base,
    and not month or day names, nor title words ("the Finance Director", "the Head of X", "the CEO")."""
    texts = [_ADDRESS.sub(" ", t) for t in _texts(BASES[name])]
    lower = {w.lower() for t in texts for w in _WORD.findall(t) if w[0].islower()}
    lower |= {w.rstrip("s") for w in lower}
    titles = set()
    for t in texts:
        for m in _TITLE.finditer(t):
            titles |= {g.strip().lower() for g in (m.group(2), m.group(4), m.group(5)) if g}
    out = set()
    for t in texts:
        for m in _BARE_RUN.finditer(t):
            if m.group(1) in _DETERMINERS:
                continue
            for part in re.split(r"[^A-Za-zÀ-ž]+", m.group(2)):
                low = part.lower()
                if len(low) < 3 or low in titles or low in lower or low.rstrip("s") in lower:
                    continue
                if low in _ENGLISH_CAPITALS or low.rstrip("s") in _ENGLISH_CAPITALS:
                    continue
                out.add(low)
    return frozenset(out)


def _regex_words(source: str) -> list[str]:
    """The literal words of a regular expression (escapes and syntax removed)."""
    source = re.sub(r"\\[bBsSdDwW]|\\.", " ", source)
    return re.findall(r"[A-Za-z][A-Za-z'’-]*", source)


def lexicon_words(path: Path = DEFAULT_PATH) -> set[str]:
    """Every word a lexicon file names, from its raw YAML (words, phrases and regexes)."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = set()
    for s in _strings(data):
        out |= {w.lower() for w in _regex_words(s)}
    return out


def code_words(path: Path) -> set[str]:
    """The words of a rule module's string literals (the patterns and words its rules match);
    docstrings and comments are prose about the code, not rules."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if node.value.isidentifier() or re.fullmatch(r"[\w-]+\.[a-z]+", node.value):
                continue  # a name of the code ("claim_from_json" in __all__) or a file name, not a word it matches
            out |= {w.lower() for w in _regex_words(node.value)}
    return out


# -- the derivation finds the names it must ------------------------------------------------------


def test_entities_are_derived_from_each_base():
    for name in BASES:
        found = entities(name)
        assert len(found) >= 10, (name, sorted(found))
    # common words of a base are not names, months are English
    handbook = entities("examples")
    assert not {"policy", "employees", "january", "monday", "travel"} & handbook


def test_the_check_catches_a_planted_name(tmp_path):
    """A name of each base planted in a copy of the lexicon, as a word or inside a regex, is found."""
    import yaml

    for base in BASES:
        planted = sorted(entities(base))[len(entities(base)) // 2]
        data = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
        data["stop_words"] += f" {planted}"
        data["contrast_groups"][0]["members"].append(rf"\b{planted.title()}\s+(?:site|office)\b")
        copy = tmp_path / f"{base}.yaml"
        copy.write_text(yaml.safe_dump(data), encoding="utf-8")
        assert planted in lexicon_words(copy) & entities(base), base
        parse_lexicon(data)  # still a valid lexicon: only the name check refuses it


# -- no entity of any sample base in the lexicon or the rules ------------------------------------


@pytest.mark.parametrize("base", sorted(BASES))
def test_the_lexicon_names_no_entity_of_a_sample_base(base):
    named = lexicon_words() & entities(base)
    assert not named, f"retrieval/lexicon.yaml names entities of {base}: {sorted(named)}"


@pytest.mark.parametrize("base", sorted(BASES))
def test_no_rule_names_an_entity_of_a_sample_base(base):
    problems = []
    for path in RULE_FILES:
        named = code_words(path) & entities(base)
        if named:
            problems.append(f"{path.relative_to(ROOT)}: {sorted(named)}")
    assert not problems, f"rules name entities of {base}:\n" + "\n".join(problems)


def test_no_lexicon_phrase_is_lifted_from_a_sample_base():
    """No run of four or more literal words in a lexicon entry occurs verbatim in a sample base."""
    import yaml

    data = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    runs = []
    for s in _strings(data):
        if re.search(r"[\\(|?]", s):  # a regex: its literal runs lie between the syntax
            pieces = re.split(r"\(\?:|[()|?*+\[\]{}]", re.sub(r"\\s[+*]?", " ", re.sub(r"\\b", "", s)))
        else:
            continue  # a list of words, not a phrase
        runs += [" ".join(p.split()).lower() for p in pieces if len(p.split()) >= 4]
    corpus = " ".join(" ".join(t.split()).lower() for base in BASES.values() for t in _texts(base))
    lifted = [r for r in runs if r in corpus]
    assert not lifted, lifted


# -- the lexicon as a typed value ----------------------------------------------------------------


def test_the_shipped_lexicon_loads_once_and_typed():
    lex = lexicon()
    assert isinstance(lex, Lexicon) and lexicon() is lex
    assert {"the", "must"} <= set(lex.stop_words) | {"the", "must"} and "officer" in lex.role_heads
    assert [label for label, _ in lex.polarity] == [
        "not-default",
        "default",
        "removed",
        "deprecated",
        "prohibited",
        "optional",
        "required",
        "allowed",
    ]
    assert dict(lex.polarity)["prohibited"].search("Smoking is not permitted.") and len(lex.contrast_groups) >= 5
    assert frozenset(("allowed", "prohibited")) in lex.opposed


def test_a_bad_lexicon_is_one_error_naming_every_problem(tmp_path):
    import yaml

    data = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    data["restricted"] = "(unclosed"
    data["polarity"].pop("optional")
    data["contrast_groups"].append({"name": "lonely", "members": ["x"]})
    with pytest.raises(ConfigError) as err:
        parse_lexicon(data, "bad.yaml")
    text = str(err.value)
    assert "restricted" in text and "polarity" in text and "contrast_groups" in text
    assert len(err.value.problems) == 3
    with pytest.raises(ConfigError, match="missing key role_heads"):
        parse_lexicon({k: v for k, v in data.items() if k != "role_heads"}, "short.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_lexicon(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("stop_words: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_lexicon(tmp_path / "broken.yaml")
