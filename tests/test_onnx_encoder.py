"""The ONNX encoder: export with its parity check and manifest, vectors against sentence-transformers,
token counts identical to the torch embedder's, and the ``retrieval.encoder`` selection."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest

from retrieval.onnx_encoder import FP32_FILE, INT8_FILE, MANIFEST, EncoderExportError, OnnxEmbedder, export_encoder
from tether.config import DEFAULT_EMBED_MODEL, load_config
from tether.errors import BackendUnavailable, ConfigError

# not the export's parity sample: the check must hold on text it was not computed on
HELD_OUT = [
    "Who signs off on travel requests?",
    "Paid leave: 20 working days each year, carried over up to five days.",
    "To restart networking on Debian, run systemctl restart networking.",
    "PostgreSQL stores each table in one or more files under the data directory.",
    "The expense report is due within 30 days of the trip.",
    "Hello",
]


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A data dir whose models/encoders holds the default model's export."""
    data = tmp_path_factory.mktemp("onnx") / "data"
    report = export_encoder(DEFAULT_EMBED_MODEL, data / "models" / "encoders" / DEFAULT_EMBED_MODEL)
    return data, report


@pytest.fixture(scope="session")
def st_fp32():
    from retrieval.embeddings import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(int8=False)


def test_export_writes_files_and_manifest(exported):
    data, report = exported
    out = report.out_dir
    assert {p.name for p in out.iterdir()} == {FP32_FILE, INT8_FILE, "tokenizer.json", MANIFEST}
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["export"]["opset"] == 17 and manifest["export"]["dynamo"] is False
    assert manifest["export"]["quantization"]["per_channel"] is True
    for key in ("fp32", "int8"):
        assert manifest["parity"][key]["mean"] >= 0.99 and manifest["parity"][key]["n"] >= 10
    for name, info in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == info["sha256"]
    from tether.crossencoder import resolve_model_path

    src = resolve_model_path(DEFAULT_EMBED_MODEL)
    weights = manifest["source"]["sha256"]["model.safetensors"]
    assert weights == hashlib.sha256((src / "model.safetensors").read_bytes()).hexdigest()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


@pytest.mark.parametrize("file,floor", [(FP32_FILE, 0.9999), (INT8_FILE, 0.98)])
def test_vectors_match_sentence_transformers(exported, st_fp32, file, floor):
    _, report = exported
    enc = OnnxEmbedder(report.out_dir / file, name=DEFAULT_EMBED_MODEL)
    ref = st_fp32.embed_batch(HELD_OUT)
    got = enc.embed_batch(HELD_OUT)
    assert got.shape == (len(HELD_OUT), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    cos = np.sum(ref * got, axis=1)
    assert cos.mean() >= max(floor, 0.99 if file == INT8_FILE else floor), cos
    # batch order is kept and the query path agrees with the batched one
    single = np.stack([enc.embed_query(t) for t in HELD_OUT])
    assert np.sum(single * got, axis=1).min() > 0.97
    assert enc.embed_batch([]).shape == (0, 384)


def test_embed_each_gives_each_text_its_own_single_pass_vector(exported):
    """Side by side over single-threaded sessions, in order, and bit for bit what embed_query gives."""
    _, report = exported
    enc = OnnxEmbedder(report.out_dir / INT8_FILE, name=DEFAULT_EMBED_MODEL)
    texts = [f"{t} ({i})" for i, t in enumerate(HELD_OUT * 4)]  # over the side-by-side threshold
    got = enc.embed_each(texts)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.stack([enc.embed_query(t) for t in texts]))
    assert len(enc._each) >= 1
    np.testing.assert_array_equal(enc.embed_each(texts[:3]), np.stack([enc.embed_query(t) for t in texts[:3]]))
    assert enc.embed_each([]).shape == (0, 384)


def test_many_batches_run_side_by_side_in_order(exported):
    """An ingest-sized list runs its length-sorted batches on one session per core; the vectors come
    back in the caller's order and equal those of the one-session path."""
    _, report = exported
    enc = OnnxEmbedder(report.out_dir / INT8_FILE, name=DEFAULT_EMBED_MODEL, batch_size=2)
    texts = [f"{t} ({i})" * (1 + i % 3) for i, t in enumerate(HELD_OUT * 3)]  # 21 batches, mixed lengths
    got = enc.embed_batch(texts)
    assert enc._each is not None  # the side-by-side sessions were used
    alone = OnnxEmbedder(report.out_dir / INT8_FILE, name=DEFAULT_EMBED_MODEL, batch_size=2)
    alone.side_by_side_min = 10**9  # the one-session path
    one = alone.embed_batch(texts)
    assert alone._each is None
    np.testing.assert_allclose(got, one, atol=1e-5)
    assert np.sum(got * np.stack([enc.embed_query(t) for t in texts]), axis=1).min() > 0.97


def test_token_counts_match_the_torch_embedder(exported, embedder):
    _, report = exported
    enc = OnnxEmbedder(report.out_dir / INT8_FILE, name=DEFAULT_EMBED_MODEL)
    long_text = " ".join(HELD_OUT * 80)  # far over the 256-token window: counting never truncates
    for text in [*HELD_OUT, long_text, "Ünïcödé — “quotes” 3.5% ±2 €45 日本語"]:
        assert enc.count_tokens(text) == embedder.count_tokens(text)
    assert len(enc.count_tokens(long_text)) > 1000
    assert enc.max_tokens == 256


def test_export_refuses_a_model_that_fails_parity(tmp_path):
    out = tmp_path / "encoders" / "refused"
    with pytest.raises(EncoderExportError, match="parity"):
        export_encoder(DEFAULT_EMBED_MODEL, out, min_cosine=1.01)
    assert not out.exists()
    assert list((tmp_path / "encoders").iterdir()) == []  # nothing half-written either


def test_export_without_the_onnx_extra_names_the_fix(tmp_path, monkeypatch):
    """A machine without the ``onnx`` package gets the extra to install, not an ImportError."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes ``import onnx`` raise ImportError
    out = tmp_path / "encoders" / "no-onnx"
    with pytest.raises(EncoderExportError, match=r"pip install 'tether\[onnx\]'"):
        export_encoder(DEFAULT_EMBED_MODEL, out)
    assert not out.exists()


def test_encoder_selection(exported, tmp_path):
    from retrieval.embeddings import SentenceTransformerEmbedder, embedder_for

    data, report = exported
    assert isinstance(embedder_for(load_config(data)), OnnxEmbedder)  # auto, export present
    fp32 = embedder_for(load_config(data).with_retrieval(embed_int8=False))
    assert isinstance(fp32, OnnxEmbedder) and fp32.onnx_file.name == FP32_FILE
    assert isinstance(embedder_for(load_config(data).with_retrieval(encoder="torch")), SentenceTransformerEmbedder)
    empty = load_config(tmp_path / "empty")
    assert isinstance(embedder_for(empty), SentenceTransformerEmbedder)  # auto falls back
    with pytest.raises(BackendUnavailable, match="export-encoder"):
        embedder_for(empty.with_retrieval(encoder="onnx"))


def test_stale_export_is_not_used(exported, tmp_path):
    """An export made from other weights (its fingerprint differs) is ignored by auto."""
    from retrieval.embeddings import SentenceTransformerEmbedder, embedder_for

    _, report = exported
    copy = tmp_path / "data" / "models" / "encoders" / DEFAULT_EMBED_MODEL
    shutil.copytree(report.out_dir, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["source"]["fingerprint"] = {"model.safetensors": [1, 2]}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert isinstance(embedder_for(load_config(tmp_path / "data")), SentenceTransformerEmbedder)


def test_encoder_setting_is_checked(tmp_path):
    (tmp_path / "tether.yaml").write_text("retrieval:\n  encoder: gpu\n")
    with pytest.raises(ConfigError, match="retrieval.encoder"):
        load_config(tmp_path)
