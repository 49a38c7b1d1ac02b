"""What the pages share, built once per process with ``st.cache_resource``: the configuration,
the searcher (embedder, Chroma, BM25) and one chat engine per generator/decoding choice.

The data dir comes from ``$TETHER_HOME`` (else ``./.tether``) and the config file from
``$TETHER_CONFIG`` (else ``<data dir>/tether.yaml``), exactly as for the ``tether`` command.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import streamlit as st

from tether.config import TetherConfig, load_config, resolve_data_dir

log = logging.getLogger(__name__)


def offline_env() -> None:
    """Nothing downloads at run time; same defaults as the CLI."""
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("ANONYMIZED_TELEMETRY", "False"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(key, value)


def base_config() -> TetherConfig:
    """The configuration for this process's data dir (raises ConfigError with every problem)."""
    return _base_config(str(resolve_data_dir()), os.environ.get("TETHER_CONFIG") or "")


@st.cache_resource(show_spinner=False)
def _base_config(data_dir: str, config_file: str) -> TetherConfig:
    return load_config(data_dir, config_file or None)


def searcher(cfg: TetherConfig):
    """The shared Searcher of cfg's data dir and collection."""
    return _searcher(_key(cfg.data_dir, cfg.retrieval), cfg)


@st.cache_resource(show_spinner="Loading the embedder and the index…")
def _searcher(key: str, _cfg: TetherConfig):
    from retrieval.search import Searcher

    return Searcher(_cfg)


def engine(cfg: TetherConfig):
    """The chat engine for cfg (one per distinct assistant section and promoted model), sharing the searcher."""
    from assistant.engine import promoted_model_paths

    served = promoted_model_paths(cfg, model_source()) if cfg.assistant.generator == "hf" else None
    return _engine(_key(cfg.data_dir, cfg.retrieval, cfg.assistant, served), cfg)


@st.cache_resource(show_spinner="Loading the model…")
def _engine(key: str, _cfg: TetherConfig):
    from assistant.engine import ChatEngine

    return ChatEngine(_cfg, searcher=searcher(_cfg), model_source=model_source())


def model_source():
    """Where the engine finds the model to serve: the registry's promoted one (training/registry.py).
    None in a checkout without the training package: the configured model is served."""
    try:
        from training.registry import RegistryModelSource
    except ImportError as exc:
        log.info("no model registry (%s): serving the configured model", exc)
        return None
    return RegistryModelSource()


def logstore(cfg: TetherConfig):
    return _logstore(str(cfg.db_path))


@st.cache_resource(show_spinner=False)
def _logstore(path: str):
    from assistant.logstore import LogStore

    return LogStore(path)


def accountstore(cfg: TetherConfig):
    """The data dir's accounts (assistant/accounts.py)."""
    return _accountstore(str(cfg.db_path))


@st.cache_resource(show_spinner=False)
def _accountstore(path: str):
    from assistant.accounts import AccountStore

    return AccountStore(path)


def warm_up() -> threading.Thread:
    """Start (once per process) a background thread that builds what the first question needs: the
    searcher (embedder, Chroma, BM25), the chat engine with its model, and the conflict detector,
    for the base configuration, so the first answer does not pay for them. The pages' calls wait on
    the same ``st.cache_resource`` entries (Streamlit computes each value once)."""
    return _warm_up_thread()


@st.cache_resource(show_spinner=False)
def _warm_up_thread() -> threading.Thread:
    thread = threading.Thread(target=_warm, name="tether-warm-up", daemon=True)
    thread.start()
    return thread


def _warm() -> None:
    from tether.errors import TetherError

    t0 = time.perf_counter()
    try:
        cfg = base_config()
        search = searcher(cfg)
        search.embedder.embed_query("warm-up")  # first run of the encoder allocates its buffers
        search.bm25()
        chat = engine(cfg)
        chat.detector  # noqa: B018 - the property builds the detector once
    except TetherError as exc:  # a bad config or a missing index: the page shows it on its own call
        log.warning("warm-up stopped: %s", exc)
        return
    except Exception:  # never let the background thread die silently
        log.exception("warm-up failed; the first question will load what is missing")
        return
    log.info("warm-up done in %.1fs", time.perf_counter() - t0)


def _key(*parts: Any) -> str:
    return "|".join(repr(p) for p in parts)
