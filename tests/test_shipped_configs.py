"""Every YAML config that ships (training/configs/*.yaml, examples/*.yaml) loads and validates through
the loader that the command in its first line uses, and the docs cite only configs that exist."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from tether.config import TetherConfig, load_config
from training.config import METHODS, load_train_config
from training.pipeline import SECTIONS as PIPELINE_SECTIONS
from training.pipeline import load_pipeline_config

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted([*ROOT.glob("training/configs/*.yaml"), *ROOT.glob("examples/*.yaml")])
TETHER_SECTIONS = {f.name for f in dataclasses.fields(TetherConfig)} - {"data_dir"}


def _kind(path: Path) -> str:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if path.stem in METHODS:
        return path.stem
    if isinstance(raw, dict) and raw and set(raw) <= set(PIPELINE_SECTIONS):
        return "pipeline"
    if isinstance(raw, dict) and raw and set(raw) <= TETHER_SECTIONS:
        return "tether"
    raise AssertionError(
        f"{path}: not a training config (sft/dpo/kto.yaml), a pipeline or a tether.yaml; teach this test its loader"
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run from a folder holding what the shipped configs point at (datasets, the SFT adapter)."""
    monkeypatch.chdir(tmp_path)
    for kind in METHODS:
        (tmp_path / ".tether/datasets" / kind).mkdir(parents=True)
        (tmp_path / ".tether/datasets" / kind / "train.jsonl").write_text("{}\n")
    (tmp_path / ".tether/runs/sft/adapter").mkdir(parents=True)
    (tmp_path / ".tether/runs/sft/adapter/adapter_config.json").write_text("{}")
    return tmp_path


def test_configs_ship():
    names = {p.name for p in SHIPPED}
    assert {"sft.yaml", "dpo.yaml", "kto.yaml", "pipeline.yaml", "tether.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_loads_and_validates(path, workdir):
    rel = str(path.relative_to(ROOT))
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and rel in first and "tether" in first, (
        f"{rel} must start with the command that uses it"
    )
    kind = _kind(path)
    if kind in METHODS:
        tc = load_train_config(path, kind)  # full validation: dataset and init_adapter exist in workdir
        assert tc.method == kind and tc.output_dir
    elif kind == "pipeline":
        pc = load_pipeline_config(path)
        assert pc.sft.method == "sft"
    else:
        cfg = load_config(workdir / "data", config_file=path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert set(raw) == TETHER_SECTIONS, f"{rel} shows every section of tether.yaml"
        defaults = load_config(workdir / "empty")
        for section in TETHER_SECTIONS:
            assert getattr(cfg, section) == getattr(defaults, section), (
                f"{rel}: {section} is documented with its defaults"
            )


def test_docs_cite_only_configs_that_exist():
    cited = set()
    for doc in [ROOT / "README.md", *ROOT.glob("docs/*.md")]:
        cited |= set(re.findall(r"--config\s+([\w./-]+/[\w.-]+\.yaml)", doc.read_text(encoding="utf-8")))
    assert "training/configs/sft.yaml" in cited
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, f"docs cite configs that do not exist: {missing}"
