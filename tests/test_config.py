import pytest

from tether.config import load_config, resolve_data_dir
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
