"""How a model is named on the page: by its name and its registry id, never by a filesystem path.

An hf model folder is shown by its folder name (``smollm2-135m-instruct``); a model or adapter
the registry knows (``training.registry``) by its id (``adapter-1a2b3c4d5e``); an adapter the
registry does not know by its folder name and the first 8 hex of its weights' hash.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from tether.config import TetherConfig


def registry_ids(cfg: TetherConfig) -> dict[str, str]:
    """Resolved path -> registry id of every registered model (empty without a registry)."""
    return _registry_ids(str(cfg.db_path))


@st.cache_data(ttl=10, show_spinner=False)
def _registry_ids(db_path: str) -> dict[str, str]:
    if not Path(db_path).is_file():
        return {}
    try:
        from training.registry import TrainingStore
    except ImportError:  # a checkout without the training package
        return {}
    with TrainingStore.open(db_path) as store:
        return {_resolved(m.path): m.id for m in store.list_models()}


def _resolved(path: str) -> str:
    try:
        return str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):
        return str(path)


def model_name(model: str | None, ids: dict[str, str]) -> str:
    if not model:
        return "?"
    known = ids.get(_resolved(model))
    if known:
        return known
    return Path(model).name if ("/" in model or "\\" in model) else model


def adapter_name(adapter: str | None, adapter_hash: str | None, ids: dict[str, str]) -> str | None:
    if not adapter:
        return None
    known = ids.get(_resolved(adapter))
    if known:
        return known
    return Path(adapter).name + (f" ({adapter_hash[:8]})" if adapter_hash else "")


def generator_label(identity, cfg: TetherConfig | None = None) -> str:
    """``hf · smollm2-135m-instruct + adapter adapter-1a2b3c4d5e · greedy`` for a GeneratorIdentity
    (or its dict, as eval runs store it)."""
    get = identity.get if isinstance(identity, dict) else lambda k, d=None: getattr(identity, k, d)
    ids = registry_ids(cfg) if cfg is not None else {}
    backend = get("backend") or "?"
    if backend == "extractive":
        head = "extractive"
    else:
        head = f"{backend} · {model_name(get('model'), ids)}"
    adapter = adapter_name(get("adapter"), get("adapter_hash"), ids)
    if adapter:
        head += f" + adapter {adapter}"
    decoding = get("decoding")
    return head + (f" · {decoding}" if decoding and backend != "extractive" else "")
