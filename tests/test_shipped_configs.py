"""Every YAML config that ships (training/configs/*.yaml, examples/*.yaml) loads and validates through
the loader that the command in its first line uses (accelerate's own loader for the
``accelerate_*.yaml`` launch configs), and the docs cite only configs that exist."""

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
    if path.name.startswith("accelerate_"):
        return "accelerate"
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
    kind = _kind(path)
    if kind == "accelerate":
        _check_accelerate_config(path, rel, first)
        return
    assert first.startswith("# ") and rel in first and "tether" in first, (
        f"{rel} must start with the command that uses it"
    )
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


# torchrun-based launchers: `--cpu` / `use_cpu: true` would make accelerate start ONE process (its
# simple launcher, which needs mpirun for several CPU processes), whatever num_processes says
MULTI_PROCESS = {"MULTI_GPU", "FSDP"}


def _check_accelerate_config(path: Path, rel: str, first: str) -> None:
    """An ``accelerate launch --config_file`` config: accelerate's loader accepts it (it rejects unknown
    keys), it starts several processes, and its first line is the command that trains with it."""
    from accelerate.commands.config.config_args import load_config_from_file

    command = first.removeprefix("# ").split()
    assert first.startswith("# accelerate launch --config_file ") and command[3] == rel, (
        f"{rel} must start with `# accelerate launch --config_file {rel} ...`"
    )
    assert command[4:8] == ["-m", "app.cli", "train", command[7]] and command[7] in METHODS, (
        f"{rel}: the command launches `-m app.cli train sft|dpo|kto`"
    )
    if "--config" in command:  # the training config it names ships too
        assert (ROOT / command[command.index("--config") + 1]).is_file()
    cfg = load_config_from_file(str(path))
    assert cfg.compute_environment.value == "LOCAL_MACHINE"
    assert cfg.distributed_type.value in MULTI_PROCESS and not cfg.use_cpu, (
        f"{rel}: distributed_type {cfg.distributed_type.value}, use_cpu {cfg.use_cpu} does not start several processes"
    )
    assert cfg.num_processes >= 2 and cfg.num_machines == 1
    if cfg.distributed_type.value == "FSDP":
        fsdp = cfg.fsdp_config
        # LoRA (frozen base + trainable adapter) needs FSDP2; the adapter is gathered whole to be saved once
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT", fsdp
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    else:
        assert str(cfg.mixed_precision) == "no" and cfg.fsdp_config in (None, {})


def test_accelerate_configs_ship():
    names = {p.name for p in SHIPPED}
    assert {"accelerate_cpu_ddp.yaml", "accelerate_fsdp.yaml"} <= names


def test_accelerate_loader_rejects_a_bad_launch_config(tmp_path):
    """The check above can fail: accelerate's loader refuses unknown keys."""
    from accelerate.commands.config.config_args import load_config_from_file

    bad = tmp_path / "accelerate_bad.yaml"
    text = (ROOT / "training/configs/accelerate_cpu_ddp.yaml").read_text(encoding="utf-8")
    bad.write_text(text + "num_gpus: 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="num_gpus"):
        load_config_from_file(str(bad))


def test_docs_cite_only_configs_that_exist():
    cited = set()
    for doc in [ROOT / "README.md", *ROOT.glob("docs/*.md")]:
        cited |= set(re.findall(r"--config(?:_file)?\s+([\w./-]+/[\w.-]+\.yaml)", doc.read_text(encoding="utf-8")))
    assert "training/configs/sft.yaml" in cited
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, f"docs cite configs that do not exist: {missing}"
