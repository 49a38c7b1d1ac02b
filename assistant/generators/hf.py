"""The ``hf`` backend: a local transformers checkpoint (optionally with a PEFT adapter), decoded
by our own token loop so that later features can change one step at a time.

The loop, top to bottom (``HFGenerator.tokens``):

    prefill   each prompt row through the model into its own KV cache   -> logits of the first token
              (row 0: the prompt, reusing the KV of the prefix it shares with the previous prompt;
               row 1, with CAD only: the context-free prompt)
    repeat    _cad_combine(logits, alpha)                  (1+a)*ctx - a*free, with CAD (adaptive: a = JSD); else row 0
              _penalize(logits, seen ids)                  repetition penalty (HF semantics)
              NgramBlock.block(logits)                     no n-gram of the reply twice (``no_repeat_ngram``)
              _NumberGuard.block(logits)                   numbers only as the sources state them (``restrict_numbers``)
              sample_token(logits, params, rng)                 argmax, or temperature/top-k/top-p
              stop at EOS or max_new_tokens
              _Rows.step(token)                            the token through every row: ONE forward

Context-aware decoding (Shi et al. 2023, arXiv 2305.14739) decodes the prompt and the same question
without its sources in lockstep: after their prefills the two KV caches are merged into one batch of
two rows, the shorter left-padded with zero keys/values that the attention mask hides, and each
row's position ids continue from its own length, so each row computes what it would alone. On the
CPU (``cad_batched=False`` by default there) each row keeps its own cache and forward instead.

On CUDA the decode step runs on a ``StaticCache`` and is compiled (``torch.compile``,
``mode="reduce-overhead"``: CUDA graphs) the first time it is needed; on the CPU the cache is a
``DynamicCache`` and nothing is compiled unless asked. ``quantize="int8"`` swaps the Linear layers
for dynamically quantized int8 ones (CPU only).

``stream`` turns the token ids into text pieces with ``decoding.stream_text`` (never splits a multi-byte
character) and cuts at ``params.stop`` strings without ever yielding part of one.

Greedy output is token-for-token that of ``model.generate(do_sample=False)`` (tested).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from assistant.generators.base import Capabilities, GeneratorIdentity, GenParams, Message
from assistant.generators.decoding import KeptPrefix, NgramBlock, plan_decoding, stream_text
from tether.config import HF_CACHES as CACHES
from tether.config import HF_DEVICES as DEVICES
from tether.config import HF_DTYPES as DTYPES
from tether.config import HF_QUANTIZE as QUANTIZE
from tether.config import HFConfig
from tether.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
STATIC_BUCKET = 256  # static caches are sized in multiples of this, so a compiled step is reused across prompts


def adapter_hash(adapter: Path) -> str:
    """First 16 hex of sha256 over the adapter's weight file(s), in name order."""
    files = sorted(p for p in Path(adapter).iterdir() if p.name in ADAPTER_WEIGHTS)
    if not files:
        raise BackendUnavailable(f"adapter {adapter} holds no {' or '.join(ADAPTER_WEIGHTS)}")
    h = hashlib.sha256()
    for path in files:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


# -- the decode loop's parts ------------------------------------------------------------------


def next_token_logits(model, input_ids, past_key_values, **kwargs):
    """Run ``input_ids`` (shape [batch, n], the tokens the cache has not seen) through the model,
    extending ``past_key_values`` in place; returns float32 logits of the next token, [batch, vocab].
    ``kwargs`` (attention_mask, position_ids) go to the model.

    Only the last position goes through the LM head (``logits_to_keep=1``): at a 600-token prompt
    that saves a 600 x vocab matmul.
    """
    out = model(input_ids=input_ids, past_key_values=past_key_values, use_cache=True, logits_to_keep=1, **kwargs)
    return out.logits[:, -1, :].float()


def _penalize(logits, seen_ids, penalty: float):
    """Repetition penalty as transformers applies it (CTRL): every token already in the prompt or
    the output has its logit divided by ``penalty`` when positive, multiplied when negative."""
    if penalty == 1.0:
        return logits
    score = logits.gather(-1, seen_ids)
    score = score.where(score < 0, score / penalty)
    score = score.where(score >= 0, score * penalty)
    return logits.scatter(-1, seen_ids, score)


_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def source_numbers(texts: Iterable[str]) -> frozenset[str]:
    """The numbers stated in ``texts`` as the reply may write them: digit runs with their inner
    separators, thousands commas dropped ("1,000" and "1000" are one number)."""
    return frozenset(m.group().replace(",", "") for t in texts for m in _NUMBER.finditer(t))


def number_vocab(tokenizer, vocab_size: int):
    """(id, text) of every token that holds a digit or is a lone "." or ",", and the bool mask of
    them over ``vocab_size`` ids: what ``_NumberGuard`` checks."""
    import torch

    found = []
    for tid, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if tok is None or tid >= vocab_size:
            continue
        if any(c.isdigit() for c in tok) or tok.strip("\u0120 ") in (".", ","):
            found.append((tid, tokenizer.convert_tokens_to_string([tok])))
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[[tid for tid, _ in found]] = True
    return found, mask


class _NumberGuard:
    """Numbers in the reply only as the sources state them (``hf.restrict_numbers``): a token that
    would write a number no selected source holds gets -inf, and while a number is unfinished only
    its continuations are allowed (no stopping at "4" of "45"). A citation ``[n]`` is not a value.
    Dates are numbers here too ("2024", "15"); words ("twenty") are not checked.

    Only tokens that hold a digit, or are a lone "." or ",", are looked at (``number_vocab``: found
    once per tokenizer); every other token is free unless a number is unfinished."""

    TAIL = 32  # characters of the reply that a number the next token continues can start in

    def __init__(self, digit_tokens: Sequence[tuple[int, str]], digit_mask, allowed: Iterable[str]):
        self.tokens = digit_tokens
        self.mask = digit_mask  # bool [vocab]: the token is one of digit_tokens
        self.allowed = frozenset(allowed)
        self.prefixes = frozenset(a[:i] for a in self.allowed for i in range(1, len(a) + 1))
        self.text = ""

    def add(self, piece: str) -> None:
        self.text = (self.text + piece)[-self.TAIL :]

    @staticmethod
    def _citation(text: str, m: re.Match[str]) -> bool:
        """The number ``m`` of ``text`` is a citation marker ``[n]``, not a value."""
        return m.start() > 0 and text[m.start() - 1] == "[" and len(m.group()) <= 2

    def _ok(self, cand: str, start: int) -> bool:
        for m in _NUMBER.finditer(cand):
            if m.end() < start or self._citation(cand, m):
                continue  # written and ended before this token (checked then), or a citation
            value = m.group().replace(",", "")
            rest = cand[m.end() :]
            if not rest:  # unfinished: it must lead to a source's number
                ok = value in self.prefixes
            elif rest in (".", ","):  # a sentence's end after it, or its next part
                ok = value in self.allowed or (value + rest.replace(",", "")) in self.prefixes
            else:
                ok = value in self.allowed
            if not ok:
                return False
        return True

    def _unfinished(self) -> bool:
        m = re.search(r"\d+(?:[.,]\d+)*[.,]?$", self.text)
        if m is None or self._citation(self.text, m):
            return False
        value = m.group().replace(",", "")
        return value not in self.allowed and value.rstrip(".") not in self.allowed

    def block(self, logits):
        start = len(self.text)
        banned = [tid for tid, piece in self.tokens if not self._ok(self.text + piece, start)]
        unfinished = self._unfinished()
        if not banned and not unfinished:
            return logits
        logits = logits.clone()
        if banned:
            logits[..., banned] = float("-inf")
        if unfinished:  # only its continuation may follow an unfinished number
            logits[..., ~self.mask] = float("-inf")
        return logits


def sample_token(logits, params: GenParams, generator):
    """The next token id for each row of ``logits`` [batch, vocab] -> [batch, 1].

    temperature 0 is greedy (argmax). Otherwise temperature, then top-k (0 = off), then top-p
    (1 = off), in that order as in transformers, then a draw from ``generator``.
    """
    import torch

    if params.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - params.top_p)
        drop[..., -1:] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def _cad_combine(logits, alpha: float, adaptive: bool = False):
    """Context-aware decoding: ``(1 + alpha) * logits[0] - alpha * logits[1]`` -> [1, vocab].
    Row 0 is the prompt with its context, row 1 the same question without it; one row passes through.

    ``adaptive`` (AdaCAD, Wang et al., NAACL 2025): alpha is, at each step, the Jensen-Shannon
    divergence (base 2, in [0, 1]) of the two rows' next-token distributions, so a step where the
    model's memory agrees with the sources (nothing competes) decodes as plain; ``alpha`` is unused."""
    if logits.shape[0] == 1:
        return logits
    if adaptive:
        alpha = float(jensen_shannon(logits[0], logits[1]))
    return (1 + alpha) * logits[0:1] - alpha * logits[1:2]


def jensen_shannon(a, b):
    """JSD(softmax(a) || softmax(b)) in bits (0: the same distribution, 1: disjoint)."""
    import math

    import torch

    la, lb = torch.log_softmax(a.float(), -1), torch.log_softmax(b.float(), -1)
    m = torch.logsumexp(torch.stack([la, lb]), 0) - math.log(2)  # log of the mixture
    pa, pb = la.exp(), lb.exp()
    kl_am = (pa * (la - m)).sum(-1)
    kl_bm = (pb * (lb - m)).sum(-1)
    return ((kl_am + kl_bm) / (2 * math.log(2))).clamp(0, 1)


class _Rows:
    """One generation's model state: prompt rows decoded in lockstep, one forward per step for all rows.

    Each row is prefilled on its own (a short row costs no padded compute), then, with several rows,
    their KV caches are merged into one batch cache: row r left-padded with zero keys/values that
    ``attention_mask`` hides, its ``position_ids`` continuing from its own length. One row keeps the
    plain path (no mask, no position ids): exactly ``model.generate``'s computation.

    ``batched=False`` keeps one cache and one forward per row instead: on the CPU a 2-row matmul
    is far slower than two 1-row ones (measured here: Linear 576->1536, 2 rows 24 ms, 1 row
    0.28 ms, with torch 2.13+cpu on 2 cores), while on a GPU one batched forward is the cheap way.

    Args:
        model: the causal LM.
        rows: prompt token ids per row.
        make_cache: ``() -> Cache`` for the batch (DynamicCache, or a reset StaticCache).
        prefix: ``(cache, n)``: a DynamicCache already holding row 0's first ``n`` tokens (prefix reuse).
        step_fn: the one-token forward, ``(input_ids, position_ids, attention_mask, cache) -> logits``
            (compiled on CUDA); None: eager.
    """

    def __init__(
        self, model, rows: Sequence[Sequence[int]], *, device, make_cache, prefix=None, step_fn=None, batched=True
    ):
        self.model, self.device, self.step_fn, self.batched = model, device, step_fn, batched
        self.row_caches = None  # batched=False: each row keeps its own cache and its own forward
        self.rows = [list(r) for r in rows]
        self.make_cache, self.prefix = make_cache, prefix
        self.cache = None
        self.mask = None  # [rows, kv] bool, several rows only
        self.positions = None  # [rows, 1], several rows only
        self.static = False

    def _forward(self, input_ids, cache, **kwargs):
        return next_token_logits(self.model, input_ids, cache, **kwargs)

    def prefill(self):
        """Every row's prompt through the model; returns the next-token logits, [rows, vocab]."""
        import torch
        from transformers import DynamicCache, StaticCache

        ids = self.rows[0]
        if len(self.rows) == 1:
            if self.prefix is not None:
                self.cache, done = self.prefix
            else:
                self.cache, done = self.make_cache(), 0
            self.static = isinstance(self.cache, StaticCache)
            x = torch.tensor([ids[done:]], dtype=torch.long, device=self.device)
            return self._forward(x, self.cache)
        logits, caches = [], []
        for r, ids in enumerate(self.rows):
            if r == 0 and self.prefix is not None:
                cache, done = self.prefix
            else:
                cache, done = DynamicCache(config=self.model.config), 0
            x = torch.tensor([ids[done:]], dtype=torch.long, device=self.device)
            logits.append(self._forward(x, cache))
            caches.append(cache)
        if not self.batched:
            self.row_caches = caches
            return torch.cat(logits)
        self.cache = self.make_cache()
        self.static = isinstance(self.cache, StaticCache)
        width = max(len(r) for r in self.rows)
        kv_len = self.cache.get_max_length() if self.static else width
        self.mask = torch.zeros(len(self.rows), kv_len, dtype=torch.long, device=self.device)
        for r, ids in enumerate(self.rows):
            # a static cache: every slot past the prompt is visible too; the causal mask hides the unwritten ones
            self.mask[r, width - len(ids) : (kv_len if self.static else width)] = 1
        self.positions = torch.tensor([[len(r)] for r in self.rows], dtype=torch.long, device=self.device)
        for layer in range(len(caches[0].layers)):
            keys, values = [], []
            for cache in caches:
                k, v = cache.layers[layer].keys, cache.layers[layer].values
                pad = width - k.shape[-2]
                keys.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                values.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            self.cache.layers[layer].update(torch.cat(keys), torch.cat(values))
        return torch.cat(logits)

    def step(self, token):
        """``token`` [1, 1] appended to every row; returns the next logits, [rows, vocab]."""
        n = len(self.rows)
        if self.row_caches is not None:
            import torch

            return torch.cat([self._forward(token, cache) for cache in self.row_caches])
        token = token.expand(n, 1)
        if n == 1 and not self.static:
            return self._forward(token, self.cache)
        if n == 1:
            if self.positions is None:
                self.positions = token.new_full((1, 1), len(self.rows[0]))
            position_ids, mask = self.positions, None
        else:
            if not self.static:
                import torch

                self.mask = torch.cat([self.mask, self.mask.new_ones(n, 1)], dim=-1)
            position_ids, mask = self.positions, self.mask
        if self.step_fn is not None:
            logits = self.step_fn(token, position_ids, mask, self.cache)
        else:
            logits = self._forward(token, self.cache, position_ids=position_ids, attention_mask=mask)
        self.positions = self.positions + 1
        return logits


def _quanto(model, quantize: str, *, merge: bool):
    """``model`` with optimum-quanto int8/int4 weights in every Linear layer but the LM head (tied to the
    embeddings in SmolLM2; quantizing it unties a 49k x 576 matrix for little memory); a PEFT model is
    merged first, as quanto quantizes plain Linear layers."""
    try:
        from optimum.quanto import freeze, qint4, qint8
        from optimum.quanto import quantize as quanto_quantize
    except ImportError as exc:
        raise BackendUnavailable(
            f"hf.quantize {quantize!r} needs optimum-quanto: pip install 'tether[quantize]' (optimum-quanto==0.2.7)"
        ) from exc
    if merge:
        model = model.merge_and_unload()
    quanto_quantize(model, weights=qint8 if quantize == "quanto-int8" else qint4, exclude=["lm_head"])
    freeze(model)
    return model


class HFGenerator:
    """A transformers causal LM from a local folder, streaming replies through our decode loop.

    Args:
        model_path: checkpoint folder (config.json, weights, tokenizer with a chat template).
        adapter: PEFT adapter folder applied on top (not merged).
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
        load_in_4bit: NF4 weights via bitsandbytes, bf16 compute; CUDA only.
        dtype: "auto" (bfloat16 on CUDA when supported, else float32), "float32", "bfloat16", "float16".
        cache: KV cache of the decode loop: "dynamic" (grows per token), "static" (preallocated, needed
            by the compiled step), "auto" (static when compiling, else dynamic).
        compile: compile the one-token decode step (torch.compile, CUDA graphs) on first use:
            "auto" = on CUDA only; True also on the CPU (slow first call); False never.
        quantize: "int8": dynamic int8 quantization of every Linear layer (CPU only, no adapter);
            "quanto-int8" / "quanto-int4": optimum-quanto weight quantization of every Linear layer but
            the LM head (activations stay in ``dtype``; an adapter is merged into the weights first).
        prefix_cache: keep the KV cache of the last prompt and reuse the part the next prompt shares
            with it (the system prompt and chat header are the same every turn); dynamic cache only.
        cad_batched: decode CAD's two rows in one batched forward per step (None: on CUDA only;
            on the CPU two 1-row forwards are faster, see ``_Rows``).

    Raises:
        ConfigError: invalid device/dtype/cache/quantize, 4-bit without CUDA, int8 on CUDA.
        BackendUnavailable: the folder, its tokenizer/chat template, the adapter or bitsandbytes is missing.
    """

    capabilities = Capabilities(cad=True, token_streaming=True, needs_llm_prompt=True)

    def __init__(
        self,
        model_path: Path,
        *,
        adapter: Path | None = None,
        device: str = "auto",
        load_in_4bit: bool = False,
        dtype: str = "auto",
        cache: Literal["auto", "dynamic", "static"] = "auto",
        compile: Literal["auto"] | bool = "auto",
        quantize: Literal["none", "int8", "quanto-int8", "quanto-int4"] = "none",
        prefix_cache: bool = True,
        cad_batched: bool | None = None,
        no_repeat_ngram: int = 6,
        restrict_numbers: bool = False,
    ):
        import torch

        model_path = Path(model_path)
        adapter = Path(adapter) if adapter is not None else None
        has_cuda = torch.cuda.is_available()
        problems = []
        if device.split(":")[0] not in DEVICES:
            problems.append(f"device ({device!r}) must be one of {', '.join(DEVICES)} (or cuda:N)")
        if dtype not in DTYPES:
            problems.append(f"dtype ({dtype!r}) must be one of {', '.join(DTYPES)}")
        if device.startswith("cuda") and not has_cuda:
            problems.append(f"device ({device!r}) asks for CUDA but torch sees no CUDA device; use device='cpu'")
        if load_in_4bit and (not has_cuda or device == "cpu"):
            problems.append(
                "load_in_4bit needs a CUDA GPU (bitsandbytes NF4); this machine has none or device='cpu' was given: "
                "drop load_in_4bit"
            )
        if cache not in CACHES:
            problems.append(f"cache ({cache!r}) must be one of {', '.join(CACHES)}")
        if compile not in ("auto", True, False):
            problems.append(f"compile ({compile!r}) must be 'auto', True or False")
        if quantize not in QUANTIZE:
            problems.append(f"quantize ({quantize!r}) must be one of {', '.join(QUANTIZE)}")
        on_cuda = device.startswith("cuda") or (device == "auto" and has_cuda)
        if quantize == "int8" and (on_cuda or adapter is not None or load_in_4bit):
            problems.append(
                "quantize='int8' is for the CPU without an adapter or 4-bit: use device='cpu', or drop quantize"
            )
        if quantize.startswith("quanto-") and load_in_4bit:
            problems.append(f"quantize={quantize!r} and load_in_4bit are two quantizations: keep one")
        if compile is True and cache == "dynamic":
            problems.append("compile=True needs cache='static' (or 'auto')")
        if problems:
            raise ConfigError(problems)
        if not (model_path / "config.json").is_file():
            raise BackendUnavailable(
                f"no model checkpoint at {model_path} (config.json not found); use assistant.model 'smollm2' or a "
                "local folder, or fetch one with `tether models pull ID`"
            )
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise BackendUnavailable(f"no PEFT adapter at {adapter} (adapter_config.json not found)")

        self.device = torch.device("cuda" if device == "auto" and has_cuda else "cpu" if device == "auto" else device)
        if dtype == "auto":
            on_cuda = self.device.type == "cuda"
            torch_dtype = torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)

        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict = {"local_files_only": True, "dtype": torch_dtype}
        if load_in_4bit:
            try:
                import bitsandbytes  # noqa: F401
            except ImportError as exc:
                raise BackendUnavailable(
                    "load_in_4bit needs bitsandbytes: pip install 'tether[gpu]' (bitsandbytes==0.50.2)"
                ) from exc
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
            kwargs["device_map"] = {"": self.device.index or 0}
        t0 = time.perf_counter()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
        except OSError as exc:
            raise BackendUnavailable(f"cannot load the model in {model_path}: {exc}") from exc
        if not self.tokenizer.chat_template:
            raise BackendUnavailable(f"the tokenizer in {model_path} has no chat template; the hf backend needs one")
        if not load_in_4bit:
            model.to(self.device)
        a_hash = None
        if adapter is not None:
            from peft import PeftModel

            a_hash = adapter_hash(adapter)
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        model.eval()
        self.quantize = quantize
        if quantize.startswith("quanto-"):
            model = _quanto(model, quantize, merge=adapter is not None)
        if quantize == "int8":
            from torch.ao.quantization import quantize_dynamic

            # the LM head is a Linear too: quantized with the rest (greedy agreement measured in bench/generation.py)
            model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model
        self.compile = self.device.type == "cuda" if compile == "auto" else bool(compile)
        self.cache_kind = ("static" if self.compile else "dynamic") if cache == "auto" else cache
        self.prefix_cache = prefix_cache and self.cache_kind == "dynamic"
        self.cad_batched = self.device.type == "cuda" if cad_batched is None else cad_batched
        if no_repeat_ngram < 0:
            raise ConfigError(f"no_repeat_ngram ({no_repeat_ngram}) must be >= 0 (0: off)")
        self.no_repeat_ngram = no_repeat_ngram  # the default; GenParams.no_repeat_ngram overrides it
        self.restrict_numbers = restrict_numbers  # numbers only from GenParams.grounding's passages
        self._number_vocab = None  # (digit tokens, mask), found on first use
        self._prefix = KeptPrefix()  # the last generation's prompt and DynamicCache, for prefix reuse
        self._static: dict = {}  # (rows, length) -> StaticCache, reset and reused
        self._step_fn = None  # the compiled decode step, built on first use
        self.load_ms = (time.perf_counter() - t0) * 1000
        self.eos_ids = self._eos_ids()
        self.identity = GeneratorIdentity(
            backend="hf", model=str(model_path), adapter=str(adapter) if adapter else None, adapter_hash=a_hash
        )
        self.last_stats: dict[str, float] = {}
        log.info(
            "loaded %s%s on %s (%s) in %.0f ms",
            model_path,
            f" + {adapter}" if adapter else "",
            self.device,
            torch_dtype,
            self.load_ms,
        )

    def no_grad(self):
        """The context the model runs in: ``torch.inference_mode``, or ``torch.no_grad`` for quanto
        weights (their autograd functions cannot run on inference tensors)."""
        import torch

        return torch.no_grad() if self.quantize.startswith("quanto-") else torch.inference_mode()

    @classmethod
    def from_config(cls, model_path: Path, adapter: Path | None, cfg: HFConfig) -> HFGenerator:
        """The generator for ``model_path`` (+ ``adapter``) loaded as the ``hf:`` config section says.

        Raises:
            ConfigError, BackendUnavailable: as the constructor.
        """
        return cls(
            model_path,
            adapter=adapter,
            device=cfg.device,
            load_in_4bit=cfg.load_in_4bit,
            dtype=cfg.dtype,
            cache=cfg.cache,
            compile=cfg.compile,
            quantize=cfg.quantize,
            prefix_cache=cfg.prefix_cache,
            cad_batched=cfg.cad_batched,
            no_repeat_ngram=cfg.no_repeat_ngram,
            restrict_numbers=cfg.restrict_numbers,
        )

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    # -- prompt ----------------------------------------------------------------------------------

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The chat template applied to ``messages``, ending with the assistant turn's header."""
        chat = [{"role": m.role, "content": m.content} for m in messages]
        # transformers 5: tokenize=True returns a BatchEncoding by default, not a list of ids
        enc = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(enc["input_ids"])

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return len(self.prompt_ids(messages))

    # -- decoding --------------------------------------------------------------------------------

    def _make_cache(self, rows: int, needed: int):
        """A fresh cache factory for one generation: DynamicCache, or a reset StaticCache of
        ``needed`` tokens rounded up to STATIC_BUCKET (kept per size, so a compiled step is reused)."""
        from transformers import DynamicCache, StaticCache

        if self.cache_kind == "dynamic":
            return lambda: DynamicCache(config=self.model.config)
        limit = getattr(self.model.config, "max_position_embeddings", None) or needed
        length = min(-(-needed // STATIC_BUCKET) * STATIC_BUCKET, max(limit, needed))

        def make():
            cache = self._static.get((rows, length))
            if cache is None:
                cache = self._static[(rows, length)] = StaticCache(config=self.model.config, max_cache_len=length)
            else:
                cache.reset()
            return cache

        return make

    def _decode_step(self):
        """The one-token forward, compiled on first use when ``self.compile``; None: eager."""
        if not self.compile:
            return None
        if self._step_fn is None:
            import torch

            model = self.model

            def step(input_ids, position_ids, attention_mask, cache):
                out = model(
                    input_ids=input_ids,
                    position_ids=position_ids,
                    attention_mask=attention_mask,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                return out.logits[:, -1, :].float()

            compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)

            def run(*args):
                if self._step_fn is step:
                    return step(*args)
                try:
                    # CUDA graphs reuse the output buffer on the next replay: copy the logits out
                    return compiled(*args).clone()
                except torch._dynamo.exc.TorchDynamoException as exc:  # e.g. a 4-bit kernel dynamo cannot trace
                    log.warning("the compiled decode step failed (%s); decoding eagerly from now on", exc)
                    self._step_fn = step
                    return step(*args)

            self._step_fn = run
            log.info("compiling the decode step (torch.compile, reduce-overhead) on first use")
        return self._step_fn

    def _take_prefix(self, prompt_ids: Sequence[int]):
        """``(cache, n)``: the kept cache cropped to the first ``n`` tokens this prompt shares with the
        last one (at least one token is left to prefill), or None."""
        taken = self._prefix.take(prompt_ids) if self.prefix_cache else None
        if taken is None:
            return None
        cache, n = taken
        cache.crop(n - cache.get_seq_length())
        return cache, n

    def _number_guard(self, params: GenParams) -> _NumberGuard | None:
        """The guard of ``params.allowed_numbers``, else, with ``restrict_numbers``, of the numbers
        in ``params.grounding``'s passages; None: numbers are free."""
        allowed = params.allowed_numbers
        if allowed is None and self.restrict_numbers and params.grounding is not None:
            allowed = source_numbers(hit.text for hit in params.grounding.passages)
        if allowed is None:
            return None
        if self._number_vocab is None:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            tokens, mask = number_vocab(self.tokenizer, vocab)
            self._number_vocab = (tokens, mask.to(self.device))
        return _NumberGuard(*self._number_vocab, allowed)

    def tokens(
        self, prompt_ids: Sequence[int], params: GenParams, context_free_ids: Sequence[int] | None = None
    ) -> Iterator[int]:
        """The decode loop: yields new token ids one at a time, up to EOS (not yielded) or
        ``params.max_new_tokens``. Fills ``last_stats``.

        With ``params.cad_alpha > 0``, ``context_free_ids`` (the prompt of the same question without
        its sources) is decoded in lockstep and the logits are ``(1+a)*ctx - a*free``."""
        import torch

        plan = plan_decoding(
            params,
            prompt_ids,
            context_free_ids,
            limit=getattr(self.model.config, "max_position_embeddings", None),
            default_ngram=self.no_repeat_ngram,
        )
        rows, max_new, ngram, decoding = plan.rows, plan.max_new, plan.ngram, plan.decoding
        longest = max(len(r) for r in rows)
        numbers = self._number_guard(params)
        if numbers is not None:
            decoding += ",source-numbers"
        self.identity = replace(self.identity, decoding=decoding)
        blocker = NgramBlock(ngram)

        rng = None
        if params.temperature > 0:
            rng = torch.Generator(device=self.device)
            if params.seed is not None:
                rng.manual_seed(params.seed)
            else:
                rng.seed()
        prefix = self._take_prefix(rows[0])
        stats = plan.new_stats(prefix[1] if prefix else 0)
        self.last_stats = stats
        state = _Rows(
            self.model,
            rows,
            device=self.device,
            make_cache=self._make_cache(len(rows), longest + max_new),
            prefix=prefix,
            step_fn=self._decode_step(),
            batched=self.cad_batched,
        )
        t0 = time.perf_counter()
        try:
            with self.no_grad():
                seen = torch.tensor([rows[0]], dtype=torch.long, device=self.device)
                logits = state.prefill()
                for step in range(max_new):
                    logits = _cad_combine(logits, params.cad_alpha, params.cad_adaptive)
                    logits = _penalize(logits, seen, params.repetition_penalty)
                    logits = blocker.block(logits)
                    if numbers is not None:
                        logits = numbers.block(logits)
                    token = sample_token(logits, params, rng)  # [1, 1]
                    token_id = int(token.item())
                    blocker.add(token_id)
                    if numbers is not None:
                        numbers.add(self.tokenizer.decode([token_id]))
                    if plan.record_step(stats, step, token_id, self.eos_ids, t0):
                        break
                    yield token_id
                    if step + 1 == max_new:
                        break
                    if params.repetition_penalty != 1.0:
                        seen = torch.cat([seen, token], dim=-1)
                    logits = state.step(token)
        finally:
            stats["total_ms"] = (time.perf_counter() - t0) * 1000
            if self.prefix_cache and len(rows) == 1 and state.cache is not None:
                self._prefix.keep(rows[0], state.cache)

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[str]:
        """The reply as text pieces, as the tokens come; stops at EOS, ``max_new_tokens`` or the
        first ``params.stop`` string (which is not included).

        Context-aware decoding: ``params.cad_alpha > 0`` with ``params.cad_context_free`` = the
        same chat without the sources (``build_context_free_messages(question)``); without them
        it raises ConfigError."""
        ids = self.prompt_ids(messages)
        free = self.prompt_ids(params.cad_context_free) if params.cad_alpha > 0 and params.cad_context_free else None
        return stream_text(self.tokens(ids, params, free), self.tokenizer, params.stop)
