import dataclasses
import json
import re

import pytest

from tether.config import HFConfig, OpenAIConfig, load_config, resolve_data_dir
from tether.errors import ConfigError


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == (tmp_path / "home").resolve()
    assert resolve_data_dir(tmp_path / "x") == (tmp_path / "x").resolve()
    monkeypatch.delenv("TETHER_HOME")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir() == (tmp_path / ".tether").resolve()


def test_yaml_file_and_env_and_overrides(tmp_path, monkeypatch):
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_text("retrieval:\n  chunk_size: 120\n  chunk_overlap: 10\n")
    cfg = load_config(data)
    assert (cfg.retrieval.chunk_size, cfg.retrieval.chunk_overlap) == (120, 10)
    monkeypatch.setenv("TETHER_CHROMA_URL", "http://127.0.0.1:9999")
    cfg = load_config(data, chunk_size=300)
    assert cfg.retrieval.chroma_url == "http://127.0.0.1:9999"
    assert cfg.retrieval.chunk_size == 300
    assert cfg.db_path == data.resolve() / "tether.db"


def test_every_problem_is_reported_at_once(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_text("retrieval:\n  chunk_size: 100\n  chunk_overlap: 150\n  colour: red\nmodel: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(data, collection="x")
    text = str(info.value)
    assert "chunk_overlap (150) must be >= 0 and < chunk_size (100)" in text
    assert "retrieval.colour is not a known setting" in text
    assert "unknown section 'model'" in text
    assert "--collection / retrieval.collection ('x')" in text
    assert len(info.value.problems) == 4


def test_bad_yaml_and_missing_config_file(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_text("retrieval: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(data)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(data, config_file=tmp_path / "nope.yaml")


# -- the hf and openai sections ------------------------------------------------------------------------


def test_hf_and_openai_sections_load_from_yaml(tmp_path, monkeypatch):
    monkeypatch.delenv("TETHER_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_text(
        "assistant:\n  generator: openai\n"
        "openai:\n  url: http://127.0.0.1:8000/v1\n  model: tiny\n  api_key: k1\n  timeout_s: 5\n  max_retries: 0\n"
        "hf:\n  device: cpu\n  dtype: float32\n  quantize: int8\n  compile: false\n  cache: dynamic\n"
        "  prefix_cache: false\n  cad_batched: true\n"
    )
    cfg = load_config(data)
    assert cfg.openai == OpenAIConfig(
        url="http://127.0.0.1:8000/v1", model="tiny", api_key="k1", timeout_s=5.0, max_retries=0
    )
    assert cfg.hf == HFConfig(
        device="cpu",
        dtype="float32",
        quantize="int8",
        compile=False,
        cache="dynamic",
        prefix_cache=False,
        cad_batched=True,
    )
    assert "k1" not in repr(cfg)  # the key stays out of logs
    (data / "tether.yaml").write_text("hf:\n  compile: auto\n  device: cuda:1\n")
    assert (load_config(data).hf.compile, load_config(data).hf.device) == ("auto", "cuda:1")


def test_defaults_are_the_generators_own():
    """No config file = the generators' constructor defaults, and every constructor knob is reachable."""
    import inspect

    from assistant.generators.hf import HFGenerator
    from assistant.generators.openai_compat import OpenAIGenerator

    hf = inspect.signature(HFGenerator.__init__).parameters
    knobs = {n: p.default for n, p in hf.items() if n not in ("self", "model_path", "adapter")}
    # hf.runtime picks between HFGenerator and onnx_lm.OnnxLM (assistant.engine.hf_generator)
    assert knobs == {k: v for k, v in dataclasses.asdict(HFConfig()).items() if k != "runtime"}
    assert HFConfig().runtime == "auto"
    oa = inspect.signature(OpenAIGenerator.__init__).parameters
    assert (OpenAIConfig().timeout_s, OpenAIConfig().max_retries) == (oa["timeout"].default, oa["max_retries"].default)
    assert (OpenAIConfig().url, OpenAIConfig().model, OpenAIConfig().api_key) == (None, "tether", None)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("hf", "device", "tpu", r"hf.device \('tpu'\) must be one of auto, cpu, cuda \(or cuda:N\)"),
        ("hf", "device", "cuda:x", r"hf.device \('cuda:x'\)"),
        ("hf", "dtype", "int3", r"hf.dtype \('int3'\) must be one of auto, float32, bfloat16, float16"),
        ("hf", "quantize", "int4", r"hf.quantize \('int4'\) must be one of none, int8, quanto-int8, quanto-int4"),
        ("hf", "cache", "paged", r"hf.cache \('paged'\) must be one of auto, dynamic, static"),
        ("hf", "runtime", "tensorrt", r"hf.runtime \('tensorrt'\) must be one of auto, torch, onnx"),
        ("hf", "compile", "yes", r"hf.compile \('yes'\) must be auto, true or false"),
        ("hf", "compile", 1, r"hf.compile \('1'\) must be auto, true or false"),
        ("hf", "load_in_4bit", "no", r"hf.load_in_4bit must be true or false, got 'no'"),
        ("openai", "url", "localhost:8000", r"openai.url \('localhost:8000'\) must look like http://host:port/v1"),
        ("openai", "model", "", r"openai.model must not be empty"),
        ("openai", "timeout_s", 0, r"openai.timeout_s \(0.0\) must be > 0"),
        ("openai", "timeout_s", "fast", r"openai.timeout_s must be a number, got 'fast'"),
        ("openai", "max_retries", -1, r"openai.max_retries \(-1\) must be between 0 and 10"),
        ("openai", "max_retries", 1.5, r"openai.max_retries must be an integer, got 1.5"),
    ],
)
def test_each_bad_hf_or_openai_value_is_one_clear_problem(tmp_path, section, key, value, message):
    import yaml

    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert len(info.value.problems) == 1, info.value.problems
    assert re.search(message, info.value.problems[0]), info.value.problems[0]


@pytest.mark.parametrize(
    ("hf", "message"),
    [
        ({"quantize": "int8", "device": "cuda"}, "hf.quantize int8 is for the CPU"),
        ({"quantize": "int8", "load_in_4bit": True}, "hf.quantize int8 is for the CPU"),
        ({"load_in_4bit": True, "device": "cpu"}, "hf.load_in_4bit needs a CUDA GPU"),
        ({"compile": True, "cache": "dynamic"}, "hf.compile true needs hf.cache static"),
        ({"quantize": "quanto-int8", "load_in_4bit": True, "device": "cuda"}, "two quantizations"),
    ],
)
def test_hf_combinations_the_generator_refuses_are_caught_up_front(hf, message):
    problems = HFConfig(**hf).problems()
    assert len(problems) == 1 and message in problems[0]


def test_openai_generator_needs_the_openai_url(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_text("assistant:\n  generator: openai\n")
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert info.value.problems == [
        "--generator / assistant.generator is 'openai' but openai.url is not set (e.g. http://127.0.0.1:8000/v1)"
    ]
    (data / "tether.yaml").write_text("")
    with pytest.raises(ConfigError, match="openai.url is not set"):
        load_config(data).with_assistant(generator="openai")
    # the old assistant.openai_url/openai_model settings moved to the openai section
    (data / "tether.yaml").write_text("assistant:\n  openai_url: http://127.0.0.1:8000/v1\n")
    with pytest.raises(ConfigError, match="assistant.openai_url is not a known setting"):
        load_config(data)


def test_openai_api_key_from_the_environment(tmp_path, monkeypatch):
    data = tmp_path / "d"
    data.mkdir()
    monkeypatch.delenv("TETHER_OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "generic")
    assert load_config(data).openai.api_key == "generic"  # the fallback when nothing else sets one
    (data / "tether.yaml").write_text("openai:\n  api_key: from-file\n")
    assert load_config(data).openai.api_key == "from-file"  # the file beats the generic variable
    monkeypatch.setenv("TETHER_OPENAI_API_KEY", "tether-env")
    assert load_config(data).openai.api_key == "tether-env"  # Tether's own variable beats the file
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("TETHER_OPENAI_API_KEY")
    (data / "tether.yaml").write_text("")
    assert load_config(data).openai.api_key is None


# -- one coercer, every section ---------------------------------------------------------------------


def test_the_coercer_checks_every_type_and_reports_every_problem():
    from dataclasses import dataclass, field

    from tether.config import coerce

    @dataclass(frozen=True)
    class Section:
        n: int = 1
        x: float = 0.5
        flag: bool = False
        name: str = "a"
        maybe: str | None = None
        tags: tuple[str, ...] = ()
        sizes: list[int] = field(default_factory=list)

    problems: list[str] = []
    ok = coerce(
        Section,
        {"n": 3, "x": 2, "flag": True, "name": 7, "maybe": None, "tags": ["p", "q"], "sizes": [1, 2]},
        problems,
        where="s.",
    )
    assert problems == []
    assert ok == {"n": 3, "x": 2.0, "flag": True, "name": "7", "maybe": None, "tags": ("p", "q"), "sizes": [1, 2]}
    assert isinstance(ok["x"], float)
    bad = {"n": 2.5, "x": float("nan"), "flag": "yes", "name": False, "tags": "p", "sizes": [1, "two"], "extra": 1}
    kept = coerce(Section, bad, problems, where="s.")
    assert kept == {}
    text = "\n".join(problems)
    assert len(problems) == 7, text
    for needle in (
        "s.n must be an integer, got 2.5",
        "s.x must be a finite number, got nan",
        "s.flag must be true or false, got 'yes'",
        "s.name must be a string, got False (YAML reads unquoted on/off",
        "s.tags must be a list of strings, got 'p'",
        "s.sizes must be a list of integers",
        "s.extra is not a known setting",
    ):
        assert needle in text, needle
    problems.clear()
    coerce(Section, {"n": True, "x": float("inf"), "name": None}, problems)
    assert [p.split(" must")[0] for p in problems] == ["n", "x", "name"]
    assert "got null" in problems[2]


def test_every_section_comes_from_tether_yaml_with_one_error(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_text(
        "conflicts: {pair_similarity: 0.5, max_value_ratio: 3}\n"
        "extractive: {max_sentences: 2, mmr_lambda: 0.5}\n"
        "training: {lora_r: 8, device: cpu, gradient_checkpointing: 'off'}\n"
    )
    cfg = load_config(data)
    assert (cfg.conflicts.pair_similarity, cfg.conflicts.max_value_ratio) == (0.5, 3.0)
    assert (cfg.extractive.max_sentences, cfg.extractive.mmr_lambda, cfg.extractive.keep_ratio) == (2, 0.5, 0.8)
    assert (cfg.training.lora_r, cfg.training.device, cfg.training.gradient_checkpointing) == (8, "cpu", "off")
    (data / "tether.yaml").write_text(
        "retrieval: {chunk_size: .nan}\n"
        "conflicts: {pair_similarity: 2.0, cache_size: 0, max_value_ratio: 1, sharpness: 1}\n"
        "extractive: {keep_ratio: 1.5, max_sentences: three}\n"
        "training: {lora_r: 0, liger: off, learning_rate: 2e-4}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(data)
    text = str(info.value)
    for needle in (
        "retrieval.chunk_size must be an integer, got nan",
        "conflicts.pair_similarity (2.0) must be a cosine",
        "conflicts.cache_size (0) must be >= 1",
        "conflicts.max_value_ratio (1.0) must be > 1",
        "conflicts.sharpness is not a known setting",
        "extractive.keep_ratio (1.5)",
        "extractive.max_sentences must be an integer",
        "training.lora_r (0) must be >= 1",
        "training.liger must be a string, got False",
        "training.learning_rate must be a number, got '2e-4'",
    ):
        assert needle in text, needle
    assert len(info.value.problems) == 10, text


def test_the_detector_is_built_from_the_conflicts_section():
    from retrieval.conflicts import RuleConflictDetector, claim_features, get_detector, rule_hit
    from tether.config import ConflictsConfig

    assert RuleConflictDetector(None).thresholds == ConflictsConfig()  # same defaults as before the section
    section = ConflictsConfig(pair_similarity=0.5, max_claims=10, max_value_ratio=10.0)
    det = get_detector(None, config=section)
    assert det.thresholds == section
    assert RuleConflictDetector(None, section, cache_size=8).thresholds.cache_size == 8  # keyword overrides on top
    with pytest.raises(ConfigError) as err:
        RuleConflictDetector(None, section, contradiction_threshold=0.0, nli_max_pairs=-1)
    assert len(err.value.problems) == 2
    a, b = (
        claim_features("The daily meal allowance is €40 per day."),
        claim_features("The daily meal allowance is €200 per day."),
    )
    assert rule_hit(a, b) is None  # five times apart: different attributes at the default ratio (4)
    assert rule_hit(a, b, max_value_ratio=section.max_value_ratio) is not None


def test_the_extractive_answerer_takes_its_section(tmp_path):
    from assistant.generators.extractive import ExtractiveConfig

    assert ExtractiveConfig.from_config(load_config(tmp_path / "empty")) == ExtractiveConfig()
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_text(
        "extractive: {max_sentences: 1, keep_ratio: 0.5, mmr_lambda: 1.0}\nassistant: {min_relevance: 0.3}\n"
    )
    e = ExtractiveConfig.from_config(load_config(data))
    assert (e.max_sentences, e.keep_ratio, e.mmr_lambda, e.min_relevance) == (1, 0.5, 1.0, 0.3)


def test_training_section_defaults_sit_under_the_run_file_and_flags(tmp_path):
    from dataclasses import fields

    from tether.config import TrainingConfig
    from training.config import TrainConfig, load_train_config

    shared = {f.name: f for f in fields(TrainingConfig)}
    for f in fields(TrainConfig):
        if f.name in shared:  # one home for each default and its help
            assert (f.default, f.metadata["help"]) == (shared[f.name].default, shared[f.name].metadata["help"]), f.name
    assert set(shared) == {f.name for f in fields(TrainConfig)} - {"method", "dataset", "output_dir", "init_adapter"}
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text("{}\n")
    run = tmp_path / "run.yaml"
    run.write_text(f"dataset: {tmp_path / 'ds'}\noutput_dir: {tmp_path / 'out'}\nlora_r: 4\nmax_steps: 7\n")
    defaults = TrainingConfig(lora_r=8, max_steps=9, seed=3, device="cpu")
    tc = load_train_config(run, "sft", defaults=defaults, max_steps=5)
    assert (tc.seed, tc.device) == (3, "cpu")  # from the section
    assert tc.lora_r == 4  # the file beats the section
    assert tc.max_steps == 5  # the flag beats both
    assert load_train_config(run, "sft").seed == TrainingConfig.seed


def test_every_train_config_field_is_a_flag_with_its_help(tmp_path):
    from dataclasses import fields

    import typer
    from typer.main import get_command
    from typer.testing import CliRunner

    from tether.cli import CliOptions
    from training import cli as training_cli
    from training.config import TrainConfig

    app = typer.Typer()
    training_cli.register(app, typer.Typer())
    for method in ("sft", "dpo", "kto"):
        params = {p.name: p for p in get_command(app).commands["train"].commands[method].params}
        for f in fields(TrainConfig):
            if f.name == "method":  # the command names it
                assert f.name not in params
                continue
            p = params[f.name]
            assert f"--{f.name.replace('_', '-')}" in p.opts, f.name
            assert p.help == f.metadata["help"] and p.help, f.name
        assert params["resume"].secondary_opts == ["--no-resume"]
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text("{}\n")
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_text("training: {seed: 4, learning_rate: 0.5}\n")
    res = CliRunner().invoke(
        app,
        [
            "train",
            "sft",
            "--dataset",
            str(tmp_path / "ds"),
            "--output-dir",
            str(tmp_path / "o"),
            "--lora-r",
            "0",
            "--learning-rate",
            "2.0",
            "--no-resume",
            "--liger",
            "sometimes",
        ],
        obj=CliOptions(data_dir=data),
    )
    assert isinstance(res.exception, ConfigError), res.output
    text = str(res.exception)
    for needle in (
        "--lora-r / lora_r (0) must be >= 1",
        "--learning-rate / learning_rate (2.0) must be in (0, 1)",
        "--liger / liger ('sometimes')",
    ):
        assert needle in text, needle
    assert len(res.exception.problems) == 3, text


def test_pipeline_kinds_must_build_the_stages_datasets(tmp_path):
    from training.pipeline import load_pipeline_config

    (tmp_path / "p.yaml").write_text(
        "data: {out_dir: ds, kinds: 'sft,kto'}\nsft: {output_dir: a}\npreference: {method: dpo, output_dir: b}\n"
    )
    with pytest.raises(
        ConfigError, match=r"preference trains dpo on ds/dpo, which data.kinds \('sft,kto'\) does not build"
    ):
        load_pipeline_config(tmp_path / "p.yaml")


def test_stored_configuration_blanks_the_api_key(tmp_path):
    from assistant.evaluation.runs import config_dict
    from tether.config import public_dict

    (tmp_path / "tether.yaml").write_text("openai:\n  url: http://127.0.0.1:9/v1\n  api_key: sk-very-secret\n")
    cfg = load_config(tmp_path)
    assert cfg.openai.api_key == "sk-very-secret"
    stored = config_dict(cfg)
    assert stored == public_dict(cfg)
    assert stored["openai"]["api_key"] == "***" and stored["openai"]["url"] == "http://127.0.0.1:9/v1"
    assert "sk-very-secret" not in json.dumps(stored)


# -- answer bounds (assistant.max_conflicts_stated, max_answer_chars, max_citations) ----------------


def test_answer_bounds_have_defaults_help_and_range_checks(tmp_path):
    from tether.config import AssistantConfig

    a = load_config(tmp_path / "d").assistant
    assert (a.max_conflicts_stated, a.max_answer_chars, a.max_citations) == (3, 2000, 8)
    helps = {f.name: f.metadata.get("help") for f in dataclasses.fields(AssistantConfig)}
    assert all(helps[k] for k in ("max_conflicts_stated", "max_answer_chars", "max_citations"))
    data = tmp_path / "d"
    data.mkdir(exist_ok=True)
    (data / "tether.yaml").write_text(
        "assistant:\n  max_conflicts_stated: 51\n  max_answer_chars: 199\n  max_citations: 0\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert info.value.problems == [
        "assistant.max_conflicts_stated (51) must be between 0 and 50 (0 = state none)",
        "assistant.max_answer_chars (199) must be between 200 and 100000",
        "assistant.max_citations (0) must be between 1 and 100",
    ]
    (data / "tether.yaml").write_text("assistant:\n  max_citations: 2.5\n  max_conflicts_stated: 0\n")
    with pytest.raises(ConfigError, match=r"assistant.max_citations must be an integer, got 2.5"):
        load_config(data)
    (data / "tether.yaml").write_text("assistant:\n  max_conflicts_stated: 0\n  max_answer_chars: 200\n")
    assert load_config(data).assistant.max_conflicts_stated == 0


def test_config_file_read_errors_are_one_problem_each(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "tether.yaml").write_bytes(b"\xef\xbb\xbfretrieval:\n  chunk_size: 120\n")  # a UTF-8 BOM is fine
    assert load_config(data).retrieval.chunk_size == 120
    (data / "tether.yaml").write_bytes(b"retrieval:\n  collection: \xff\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 25 is 0xff\): save it as UTF-8"):
        load_config(data)
    with pytest.raises(ConfigError, match=r"--config .* is a folder: give the path of a YAML file"):
        load_config(data, config_file=tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"the data dir .*file is a file, not a folder"):
        load_config(tmp_path / "file")
