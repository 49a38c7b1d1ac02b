"""The ``hf`` backend on ONNX Runtime: the same checkpoint, exported once with its KV cache, decoded
without torch or transformers (``hf.runtime``: auto | torch | onnx).

Why: on the CPU a cold ``tether ask`` spends most of its time before the first token importing torch
and transformers (about 2.3 s of 4.1 s on a quiet 2-core machine, docs/BENCHMARKS.md); ONNX Runtime
and ``tokenizers`` import in a tenth of a second. The graph is the model's own forward with the KV
cache as inputs and outputs, so the loop below computes what ``hf.HFGenerator`` computes on the CPU
and its greedy replies are token for token the same (checked by ``export_graph`` before it writes
the graph, and by the tests).

The graph (``export_graph``; ``tether models export-generator``), kept in ``<model>/onnx/``:

    inputs   input_ids [1, q], attention_mask [1, past + q] (ones), position_ids [1, q],
             past.<layer>.key / past.<layer>.value [1, kv_heads, past, head_dim] (past may be 0)
    outputs  logits [1, vocab] (the last position only), present.<layer>.key / .value [1, kv_heads, past + q, head_dim]

written by ``torch.onnx.export`` (dynamo=False, opset 17), optimized once by ONNX Runtime
(``ORT_ENABLE_EXTENDED``) and saved with its weights in ``model.onnx.data``, with a manifest
(``tether-onnx.json``) that names the checkpoint's files by size and mtime and the onnxruntime
release, so a changed checkpoint (or runtime) makes the graph stale and ``auto`` goes back to torch.

The decode loop is ``hf.py``'s, in NumPy: the prompt (the checkpoint's own chat template, rendered
with jinja2 as transformers renders it, tokenized by ``tokenizers``), prefill, then per step CAD
(plain or adaptive, each row with its own cache as on the CPU path of ``hf._Rows``), repetition
penalty, no-repeat n-gram, greedy or temperature/top-k/top-p sampling, EOS; ``decoding.stream_text``
turns ids into text. The KV of the prompt prefix shared with the previous turn is reused. Not here:
adapters, quantization, ``hf.restrict_numbers`` and CUDA; ``runtime: auto`` picks torch for those.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from assistant.generators.base import Capabilities, GeneratorIdentity, GenParams, Message
from assistant.generators.decoding import KeptPrefix, NgramBlock, plan_decoding, stream_text
from tether.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

GRAPH_DIR = "onnx"  # inside the checkpoint folder
GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
MANIFEST = "tether-onnx.json"
FORMAT = "tether-causal-lm-kv/1"
OPSET = 17
EXPORT_COMMAND = "tether models export-generator"
# saved already optimized: the fusions of this level are not tied to the CPU's instruction set (ALL's are)
OPTIMIZATION = "ORT_ENABLE_EXTENDED"
# generic prompts the export's parity check decodes (greedy), through the chat template
PARITY_PROMPTS = (
    "Explain in two sentences what a write-ahead log is for.",
    "List three things to check before restoring a backup.",
)
PARITY_TOKENS = 24


def checkpoint_files(model_dir: Path) -> dict[str, list[int]]:
    """The files that decide the graph's weights and shapes: name -> [size, mtime_ns]."""
    out = {}
    for p in sorted(Path(model_dir).iterdir()):
        if p.is_file() and (p.suffix == ".safetensors" or p.name == "config.json"):
            st = p.stat()
            out[p.name] = [st.st_size, st.st_mtime_ns]
    return out


def graph_problem(model_dir: Path, folder: Path | None = None) -> str | None:
    """Why ``model_dir`` has no usable ONNX graph in ``folder`` (default ``<model_dir>/onnx``);
    None: it has a current one."""
    folder = Path(folder) if folder is not None else Path(model_dir) / GRAPH_DIR
    manifest = folder / MANIFEST
    if not manifest.is_file() or not (folder / GRAPH_FILE).is_file():
        return f"{model_dir} has no ONNX graph: run `{EXPORT_COMMAND}`"
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{manifest} is unreadable ({exc}): run `{EXPORT_COMMAND}` again"
    if info.get("format") != FORMAT:
        return f"{folder} holds a graph of another format ({info.get('format')!r}): run `{EXPORT_COMMAND}` again"
    if info.get("checkpoint") != checkpoint_files(model_dir):
        return f"the checkpoint in {model_dir} changed since its ONNX graph was exported: run `{EXPORT_COMMAND}` again"
    if info.get("optimized") and info.get("onnxruntime") != _ort_version():
        # an optimized graph may hold this release's fused operators
        return (
            f"the ONNX graph in {folder} was optimized by onnxruntime {info.get('onnxruntime')}, this is "
            f"{_ort_version()}: run `{EXPORT_COMMAND}` again"
        )
    return None


def cuda_present() -> bool:
    """Whether this machine has an NVIDIA driver loaded (without importing torch to ask)."""
    return Path("/proc/driver/nvidia/version").exists()


def choose_runtime(cfg: Any, model_dir: Path, adapter: Path | None) -> tuple[str, str]:
    """``("onnx" | "torch", why)`` for the ``hf`` generator under ``cfg`` (``HFConfig``): ``runtime:
    auto`` takes the exported graph when it is current and nothing asked for needs torch.

    Raises:
        ConfigError: ``runtime: onnx`` with a setting or an adapter only torch serves.
        BackendUnavailable: ``runtime: onnx`` and no current graph (the message names the export command).
    """
    needs = list(cfg.torch_only())
    if adapter is not None:
        needs.append(f"the adapter {adapter} (merge it and export the merged checkpoint to serve it on ONNX Runtime)")
    if cfg.runtime == "torch":
        return "torch", "hf.runtime torch"
    if cfg.runtime == "onnx":
        if needs:
            raise ConfigError([f"hf.runtime onnx cannot serve {n}: use hf.runtime auto or torch" for n in needs])
        problem = graph_problem(model_dir)
        if problem:
            raise BackendUnavailable(problem)
        return "onnx", "hf.runtime onnx"
    if cfg.device == "auto" and cuda_present():
        needs.append("a CUDA GPU (hf.device auto)")
    if needs:
        return "torch", "torch serves " + "; ".join(needs)
    problem = graph_problem(model_dir)
    if problem:
        return "torch", problem
    return "onnx", f"the ONNX graph in {Path(model_dir) / GRAPH_DIR}"


# -- the chat template, rendered as transformers renders it ---------------------------------------


class ChatTemplate:
    """The checkpoint's chat template (``chat_template.jinja``, or ``chat_template`` in
    ``tokenizer_config.json``) in a sandboxed jinja2 environment with transformers' settings
    (trim_blocks, lstrip_blocks, loop controls, ``raise_exception``, ``strftime_now``, a ``tojson``
    that does not escape HTML) and its special tokens as variables."""

    def __init__(self, model_dir: Path):
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        model_dir = Path(model_dir)
        config = _read_json(model_dir / "tokenizer_config.json")
        source = None
        if (model_dir / "chat_template.jinja").is_file():
            source = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
        elif isinstance(config.get("chat_template"), str):
            source = config["chat_template"]
        elif isinstance(config.get("chat_template"), list):  # named templates: the default one
            source = next((t["template"] for t in config["chat_template"] if t.get("name") == "default"), None)
        if not source:
            raise BackendUnavailable(f"the tokenizer in {model_dir} has no chat template; the hf backend needs one")

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.template = env.from_string(source)
        self.special = {
            k: (v["content"] if isinstance(v, dict) else v)
            for k, v in config.items()
            if k.endswith("_token") and isinstance(v, (str, dict))
        }

    def render(self, messages: Sequence[Message]) -> str:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        return self.template.render(messages=chat, add_generation_prompt=True, **self.special)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(f"{path} is unreadable: {exc}") from exc


# -- decoding in NumPy ---------------------------------------------------------------------------


def _log_softmax(x):
    import numpy as np

    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def jensen_shannon(a, b) -> float:
    """JSD(softmax(a) || softmax(b)) in bits, in [0, 1] (``hf.jensen_shannon`` in NumPy)."""
    import numpy as np

    la, lb = _log_softmax(a.astype(np.float64)), _log_softmax(b.astype(np.float64))
    m = np.logaddexp(la, lb) - math.log(2)
    kl_am = (np.exp(la) * (la - m)).sum(-1)
    kl_bm = (np.exp(lb) * (lb - m)).sum(-1)
    return float(np.clip((kl_am + kl_bm) / (2 * math.log(2)), 0, 1))


def cad_combine(logits, alpha: float, adaptive: bool = False):
    """``(1 + alpha) * logits[0] - alpha * logits[1]`` -> [vocab] (``hf._cad_combine``); one row passes."""
    if logits.shape[0] == 1:
        return logits[0]
    if adaptive:
        alpha = jensen_shannon(logits[0], logits[1])
    return (1 + alpha) * logits[0] - alpha * logits[1]


def penalize(logits, seen: Sequence[int], penalty: float):
    """Repetition penalty as transformers applies it: a seen token's logit divided by ``penalty``
    when positive, multiplied when negative."""
    import numpy as np

    if penalty == 1.0 or not seen:
        return logits
    ids = np.unique(np.asarray(seen, dtype=np.int64))
    logits = logits.copy()
    score = logits[ids]
    logits[ids] = np.where(score < 0, score * penalty, score / penalty)
    return logits


def sample_token(logits, params: GenParams, rng) -> int:
    """argmax at temperature 0; else temperature, top-k, top-p (as ``hf.sample_token``), then a draw."""
    import numpy as np

    if params.temperature == 0:
        return int(logits.argmax())
    logits = logits.astype(np.float64) / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = np.partition(logits, -params.top_k)[-params.top_k]
        logits = np.where(logits < kth, -np.inf, logits)
    if params.top_p < 1.0:
        order = np.argsort(logits)  # ascending
        probs = np.exp(_log_softmax(logits[order]))
        drop = np.cumsum(probs) <= (1 - params.top_p)
        drop[-1] = False  # always keep the most likely token
        logits = logits.copy()
        logits[order[drop]] = -np.inf
    probs = np.exp(_log_softmax(logits))
    return int(rng.choice(len(probs), p=probs / probs.sum()))


class _Row:
    """One prompt row's KV cache (one array per layer and key/value) and length."""

    def __init__(self, past: list, length: int):
        self.past, self.length = past, length


class OnnxLM:
    """A ``Generator`` over ``<model_dir>/onnx`` (see the module docstring); identity ``backend="hf"``,
    ``runtime="onnx"``: the same model and decoding as ``HFGenerator`` on the CPU.

    Raises:
        BackendUnavailable: no current graph (the message names ``tether models export-generator``),
            onnxruntime, tokenizers or jinja2 missing, or no chat template.
    """

    capabilities = Capabilities(cad=True, token_streaming=True, needs_llm_prompt=True)

    def __init__(
        self,
        model_dir: Path,
        *,
        no_repeat_ngram: int = 6,
        prefix_cache: bool = True,
        threads: int = 0,
        graph_dir: Path | None = None,
    ):
        model_dir = Path(model_dir)
        folder = Path(graph_dir) if graph_dir is not None else model_dir / GRAPH_DIR
        problem = graph_problem(model_dir, folder)
        if problem:
            raise BackendUnavailable(problem)
        if no_repeat_ngram < 0:
            raise ConfigError(f"no_repeat_ngram ({no_repeat_ngram}) must be >= 0 (0: off)")
        t0 = time.perf_counter()
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise BackendUnavailable(f"hf.runtime onnx needs onnxruntime and tokenizers ({exc})") from exc
        self.info = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 8)
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(folder / GRAPH_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendUnavailable(
                f"cannot load {folder / GRAPH_FILE} ({exc}): run `{EXPORT_COMMAND}` again"
            ) from exc
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.template = ChatTemplate(model_dir)
        self.layers = int(self.info["layers"])
        self.kv_heads = int(self.info["kv_heads"])
        self.head_dim = int(self.info["head_dim"])
        self.max_positions = self.info.get("max_positions")
        self.eos_ids = set(self.info.get("eos_ids", []))
        self.no_repeat_ngram = no_repeat_ngram
        self.prefix_cache = prefix_cache
        self._prefix = KeptPrefix()  # the last generation's prompt and _Row, for prefix reuse
        self.load_ms = (time.perf_counter() - t0) * 1000
        runtime = "onnx-int8" if self.info.get("quantization") else "onnx"  # an int8 graph is another model
        self.identity = GeneratorIdentity(backend="hf", model=str(model_dir), runtime=runtime)
        self.last_stats: dict[str, float] = {}
        log.info("loaded %s on ONNX Runtime (CPU) in %.0f ms", folder, self.load_ms)

    # -- prompt ----------------------------------------------------------------------------------

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The chat template applied to ``messages``, ending with the assistant turn's header."""
        return list(self.tokenizer.encode(self.template.render(messages), add_special_tokens=False).ids)

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.prompt_ids(messages))

    # -- the model -------------------------------------------------------------------------------

    def _empty(self) -> list:
        import numpy as np

        return [np.zeros((1, self.kv_heads, 0, self.head_dim), dtype=np.float32) for _ in range(2 * self.layers)]

    def _forward(self, row: _Row, ids: Sequence[int]):
        """``ids`` (the tokens ``row`` has not seen) through the graph; extends ``row``; returns the
        float32 logits of the next token, [vocab]."""
        import numpy as np

        q = len(ids)
        feeds = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, row.length + q), dtype=np.int64),
            "position_ids": np.arange(row.length, row.length + q, dtype=np.int64)[None],
        }
        for i in range(self.layers):
            feeds[f"past.{i}.key"] = row.past[2 * i]
            feeds[f"past.{i}.value"] = row.past[2 * i + 1]
        out = self.session.run(None, feeds)
        row.past, row.length = out[1:], row.length + q
        return out[0][0]

    def teacher_forced_logits(self, prompt: Sequence[int], reply: Sequence[int]):
        """The logits predicting each token of ``reply`` from ``prompt`` and the reply before it,
        [len(reply), vocab] (a parity check's teacher forcing, through the cache)."""
        import numpy as np

        row = _Row(self._empty(), 0)
        out = [self._forward(row, list(prompt))]
        out += [self._forward(row, [t]) for t in list(reply)[:-1]]
        return np.stack(out)

    def _take_prefix(self, prompt: Sequence[int]) -> tuple[_Row, int] | None:
        """The kept row cut to the prefix this prompt shares with the last one (at least one
        token is left to prefill), or None."""
        taken = self._prefix.take(prompt) if self.prefix_cache else None
        if taken is None:
            return None
        row, n = taken  # n <= the kept prompt's length <= row.length
        return _Row([p[:, :, :n, :] for p in row.past], n), n

    # -- decoding --------------------------------------------------------------------------------

    def tokens(
        self, prompt_ids: Sequence[int], params: GenParams, context_free_ids: Sequence[int] | None = None
    ) -> Iterator[int]:
        """The decode loop (``HFGenerator.tokens``' semantics): new token ids up to EOS (not
        yielded) or ``params.max_new_tokens``; fills ``last_stats``."""
        import numpy as np

        refused = []
        if params.allowed_numbers is not None:
            refused.append("restricting numbers (GenParams.allowed_numbers) needs hf.runtime: torch")
        plan = plan_decoding(
            params,
            prompt_ids,
            context_free_ids,
            limit=self.max_positions,
            default_ngram=self.no_repeat_ngram,
            problems=refused,
        )
        prompts, max_new, ngram, decoding = plan.rows, plan.max_new, plan.ngram, plan.decoding
        self.identity = replace(self.identity, decoding=decoding)
        blocker = NgramBlock(ngram)
        rng = np.random.default_rng(params.seed) if params.temperature > 0 else None
        prefix = self._take_prefix(prompts[0])
        stats = plan.new_stats(prefix[1] if prefix else 0)
        self.last_stats = stats
        rows: list[_Row] = []
        t0 = time.perf_counter()
        try:
            logits = []
            for r, ids in enumerate(prompts):
                row, done = prefix if r == 0 and prefix is not None else (_Row(self._empty(), 0), 0)
                logits.append(self._forward(row, ids[done:]))
                rows.append(row)
            seen = list(prompts[0])
            for step in range(max_new):
                scores = cad_combine(np.stack(logits), params.cad_alpha, params.cad_adaptive)
                scores = penalize(scores, seen, params.repetition_penalty)
                scores = blocker.block(scores)
                token_id = sample_token(scores, params, rng)
                blocker.add(token_id)
                if plan.record_step(stats, step, token_id, self.eos_ids, t0):
                    break
                yield token_id
                if step + 1 == max_new:
                    break
                seen.append(token_id)
                logits = [self._forward(row, [token_id]) for row in rows]
        finally:
            stats["total_ms"] = (time.perf_counter() - t0) * 1000
            if self.prefix_cache and len(rows) == 1:
                self._prefix.keep(prompts[0], rows[0])

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[str]:
        """The reply as text pieces (``HFGenerator.stream``'s contract)."""
        ids = self.prompt_ids(messages)
        free = self.prompt_ids(params.cad_context_free) if params.cad_alpha > 0 and params.cad_context_free else None
        return stream_text(self.tokens(ids, params, free), self.tokenizer, params.stop)


# -- export ----------------------------------------------------------------------------------------


def export_graph(model_dir: Path, *, threads: int = 0) -> Path:
    """Export ``model_dir`` (a transformers causal LM checkpoint) to ``<model_dir>/onnx`` with its KV
    cache, check that ``OnnxLM`` decodes ``PARITY_PROMPTS`` greedily to the same tokens as the torch
    model, and only then replace the previous graph (written beside it, renamed into place).

    Raises:
        BackendUnavailable: no checkpoint, or torch, transformers or onnx missing.
        ConfigError: the exported graph decodes differently from the checkpoint (nothing is replaced).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise BackendUnavailable(f"no model checkpoint at {model_dir} (config.json not found)")
    try:
        import onnx
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

        from assistant.generators.hf import next_token_logits
    except ImportError as exc:
        raise BackendUnavailable(f"exporting the generator needs torch, transformers and onnx ({exc})") from exc
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    cfg = model.config
    layers = int(cfg.num_hidden_layers)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)

    class WithCache(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            # the torch runtime's own step (the cache is extended in place: it holds the presents)
            logits = next_token_logits(
                self.m, input_ids, cache, attention_mask=attention_mask, position_ids=position_ids
            )
            return (logits, *[t for layer in cache.layers for t in (layer.keys, layer.values)])

    past_names = [f"past.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present_names = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {1: "new"},
        "attention_mask": {1: "total"},
        "position_ids": {1: "new"},
    }
    axes.update({n: {2: "past"} for n in past_names})
    axes.update({n: {2: "total"} for n in present_names})
    example_past, example_new = 5, 3  # both non-zero, so no length is traced as a constant
    ids = torch.randint(0, int(cfg.vocab_size), (1, example_new))
    mask = torch.ones(1, example_past + example_new, dtype=torch.long)
    pos = torch.arange(example_past, example_past + example_new)[None]
    past = [torch.randn(1, kv_heads, example_past, head_dim) for _ in past_names]
    folder = model_dir / GRAPH_DIR
    for stale in [*model_dir.glob(f".{GRAPH_DIR}.tmp-*"), *model_dir.glob(f".{GRAPH_DIR}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by an export that was killed
    tmp = model_dir / f".{GRAPH_DIR}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        single = tmp / "single.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes on the cache's Python branches: the graph is checked below instead
            warnings.simplefilter("ignore")
            torch.onnx.export(
                WithCache(model),
                (ids, mask, pos, *past),
                str(single),
                input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                output_names=["logits", *present_names],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
        graph = onnx.load(str(single))
        single.unlink()
        raw = tmp / "raw"
        raw.mkdir()
        onnx.save_model(graph, str(raw / GRAPH_FILE), save_as_external_data=True, location=DATA_FILE)
        del graph
        optimize_graph(raw / GRAPH_FILE, tmp / GRAPH_FILE)
        shutil.rmtree(raw)
        eos = model.generation_config.eos_token_id
        eos_ids = sorted(set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []))
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(int(tokenizer.eos_token_id))
        info = {
            "format": FORMAT,
            "checkpoint": checkpoint_files(model_dir),
            "layers": layers,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
            "vocab": int(cfg.vocab_size),
            "max_positions": getattr(cfg, "max_position_embeddings", None),
            "eos_ids": eos_ids,
            "opset": OPSET,
            "exporter": f"torch.onnx.export(dynamo=False), torch {torch.__version__}",
            "optimized": OPTIMIZATION,
            "onnxruntime": _ort_version(),
        }
        (tmp / MANIFEST).write_text(json.dumps(info, indent=1), encoding="utf-8")
        parity = _parity(model, tokenizer, tmp, model_dir, threads=threads)
        info.update(parity=parity, seconds=round(time.perf_counter() - t0, 1))
        (tmp / MANIFEST).write_text(json.dumps(info, indent=1), encoding="utf-8")
        old = model_dir / f".{GRAPH_DIR}.old-{os.getpid()}"
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s in %.1f s (parity: %s)", folder, time.perf_counter() - t0, info["parity"])
    return folder


def optimize_graph(src: Path, dst: Path) -> None:
    """ONNX Runtime's graph optimizations (``OPTIMIZATION``: fusions that hold on any CPU) applied
    once and saved as ``dst`` with its weights beside it, so a session opens without redoing them
    (0.9 -> 0.5 s for SmolLM2 on a 2-core x86_64)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION)
    options.optimized_model_filepath = str(dst)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", DATA_FILE)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def _ort_version() -> str | None:
    import importlib.metadata as md

    try:
        return md.version("onnxruntime")
    except md.PackageNotFoundError:
        return None


def _parity(model, tokenizer, graph_dir: Path, model_dir: Path, *, threads: int) -> dict[str, Any]:
    """Greedy tokens of the torch model and of the new graph on ``PARITY_PROMPTS``; raises
    ConfigError when they differ (or the chat template renders a prompt differently)."""
    import torch

    gen = OnnxLM(model_dir, graph_dir=graph_dir, no_repeat_ngram=0, prefix_cache=False, threads=threads)
    params = GenParams(max_new_tokens=PARITY_TOKENS, no_repeat_ngram=0)
    problems = []
    for prompt in PARITY_PROMPTS:
        ours = gen.prompt_ids([Message("user", prompt)])
        chat = [{"role": "user", "content": prompt}]
        enc = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
        theirs = list(enc["input_ids"])
        if ours != theirs:
            problems.append(f"the chat template renders {prompt!r} differently from transformers")
            continue
        with torch.inference_mode():
            out = model.generate(torch.tensor([theirs]), max_new_tokens=PARITY_TOKENS, do_sample=False)
        ref = []
        for t in out[0, len(theirs) :].tolist():
            if t in gen.eos_ids:
                break
            ref.append(t)
        got = list(gen.tokens(ours, params))
        if got != ref:
            problems.append(f"greedy tokens differ on {prompt!r}: graph {got[:8]}..., torch {ref[:8]}...")
    if problems:
        raise ConfigError([f"the exported graph of {model_dir} was not kept: {p}" for p in problems])
    return {"prompts": len(PARITY_PROMPTS), "greedy_tokens": PARITY_TOKENS, "equal": True}
