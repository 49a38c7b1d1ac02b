"""The layers run one way: tether (core) <- retrieval <- assistant <- training <- app.

Every import in the shipped packages (at module level or inside a function) is read with ``ast``;
an import of a higher layer, or of a private (``_name``) name of another module, fails the test
with the file, line and the import. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"tether": 0, "retrieval": 1, "assistant": 2, "training": 3, "app": 4}
TOP_FILES = {"streamlit_app.py": 4}  # the app's entry point sits at the top


def _module_file(dotted: str) -> Path | None:
    base = ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _own_module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def violations(source: str, path: Path, layer: int) -> list[str]:
    """Upward imports and cross-module private names in one file's source."""
    tree = ast.parse(source, filename=str(path))
    own = _own_module(path) if path.is_relative_to(ROOT) else path.stem
    out: list[str] = []
    module_aliases: set[str] = set()  # local names bound to a Tether module (for `mod._private`)

    def check_target(dotted: str, lineno: int, what: str) -> None:
        top = dotted.split(".")[0]
        if top in LAYERS and LAYERS[top] > layer:
            out.append(
                f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{lineno}: {what} imports the higher layer '{top}'"
            )

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check_target(alias.name, node.lineno, f"import {alias.name}")
                if alias.name.split(".")[0] in LAYERS:
                    module_aliases.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            check_target(node.module, node.lineno, f"from {node.module} import ...")
            if node.module.split(".")[0] not in LAYERS:
                continue
            for alias in node.names:
                name = alias.name
                if _module_file(f"{node.module}.{name}") is not None:
                    module_aliases.add(alias.asname or name)
                elif name.startswith("_") and not name.startswith("__") and node.module != own:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports the private name {node.module}.{name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            out.append(
                f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}: uses the private name {node.value.id}.{node.attr}"
            )
    return out


def _shipped_files() -> list[tuple[Path, int]]:
    files = [(ROOT / name, layer) for name, layer in TOP_FILES.items()]
    for package, layer in LAYERS.items():
        files += [(p, layer) for p in sorted((ROOT / package).rglob("*.py"))]
    return files


def test_every_package_is_a_layer():
    for package in LAYERS:
        assert (ROOT / package / "__init__.py").is_file(), f"{package}/ is not a package"


def test_imports_run_one_way_and_private_names_stay_home():
    problems = []
    for path, layer in _shipped_files():
        problems += violations(path.read_text(encoding="utf-8"), path, layer)
    assert not problems, "imports against the layers (see docs/ARCHITECTURE.md):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from training.registry import promoted_model\n", "higher layer 'training'"),
        ("def f():\n    import app.cli\n", "higher layer 'app'"),
        ("from assistant.generators.hf import _sample\n", "private name assistant.generators.hf._sample"),
        ("from assistant.generators import hf\nhf._common_prefix([])\n", "private name hf._common_prefix"),
    ],
)
def test_the_checker_catches_each_kind_of_violation(source, expected):
    path = ROOT / "retrieval" / "example.py"  # a retrieval module (layer 1): may import only tether
    found = violations(source, path, LAYERS["retrieval"])
    assert any(expected in line for line in found), found


def test_the_checker_accepts_imports_down_the_layers():
    source = "from tether.config import TetherConfig\nimport numpy\nfrom retrieval.search import Searcher\n"
    assert violations(source, ROOT / "assistant" / "example.py", LAYERS["assistant"]) == []
