"""The ``hf`` backend: a local transformers checkpoint (optionally with a PEFT adapter), decoded
by our own token loop so that later features can change one step at a time.

The loop, top to bottom (``HFGenerator.tokens``):

    prefill   next_token_logits(model, prompt_ids, cache)    -> logits of the first new token
    repeat    _penalize(logits, seen ids)                     repetition penalty (HF semantics)
              _sample(logits, params, rng)                    argmax, or temperature/top-k/top-p
              stop at EOS or max_new_tokens
              next_token_logits(model, [token], cache)        one token through the KV cache

Context-aware decoding (two batched passes per step) and prompt-prefix KV reuse slot into
``next_token_logits`` and the prefill. ``stream`` turns the token ids into text pieces with
``_Detokenizer`` (never splits a multi-byte character) and cuts at ``params.stop`` strings without
ever yielding part of one.

Greedy output is token-for-token that of ``model.generate(do_sample=False)`` (tested).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Sequence

from assistant.generators.base import GenParams, GeneratorIdentity, Message
from retrieval.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


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


def next_token_logits(model, input_ids, past_key_values):
    """Run ``input_ids`` (shape [batch, n], the tokens the cache has not seen) through the model,
    extending ``past_key_values`` in place; returns float32 logits of the next token, [batch, vocab].

    Only the last position goes through the LM head (``logits_to_keep=1``): at a 600-token prompt
    that saves a 600 x vocab matmul.
    """
    out = model(input_ids=input_ids, past_key_values=past_key_values, use_cache=True, logits_to_keep=1)
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


def _sample(logits, params: GenParams, generator):
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


class _Detokenizer:
    """Token ids in, text pieces out. Decodes the accumulated ids and returns the new suffix,
    holding back a trailing U+FFFD (a multi-byte character whose bytes are still arriving)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # what has been returned so far

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.text):
            return ""
        piece, self.text = text[len(self.text) :], text
        return piece

    def flush(self) -> str:
        """Whatever is left (an unfinished character decodes as U+FFFD)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece = text[len(self.text) :] if text.startswith(self.text) else ""
        self.text += piece
        return piece


def _stop_cut(text: str, stops: Sequence[str]) -> tuple[int, bool]:
    """(how much of ``text`` is safe to emit, whether a stop string was found). Text that could be
    the start of a stop string is held back until it is known not to be one."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if found:
        return min(found), True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold, False


class HFGenerator:
    """A transformers causal LM from a local folder, streaming replies through our decode loop.

    Args:
        model_path: checkpoint folder (config.json, weights, tokenizer with a chat template).
        adapter: PEFT adapter folder applied on top (not merged).
        device: "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N".
        load_in_4bit: NF4 weights via bitsandbytes, bf16 compute; CUDA only.
        dtype: "auto" (bfloat16 on CUDA when supported, else float32), "float32", "bfloat16", "float16".

    Raises:
        ConfigError: invalid device/dtype, or 4-bit without CUDA.
        BackendUnavailable: the folder, its tokenizer/chat template, the adapter or bitsandbytes is missing.
    """

    def __init__(
        self,
        model_path: Path,
        *,
        adapter: Path | None = None,
        device: str = "auto",
        load_in_4bit: bool = False,
        dtype: str = "auto",
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
                raise BackendUnavailable("load_in_4bit needs bitsandbytes: pip install 'tether[gpu]' (bitsandbytes==0.50.2)") from exc
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
        self.model = model
        self.load_ms = (time.perf_counter() - t0) * 1000
        self.eos_ids = self._eos_ids()
        self.identity = GeneratorIdentity(
            backend="hf", model=str(model_path), adapter=str(adapter) if adapter else None, adapter_hash=a_hash
        )
        self.last_stats: dict[str, float] = {}
        log.info("loaded %s%s on %s (%s) in %.0f ms", model_path, f" + {adapter}" if adapter else "", self.device, torch_dtype, self.load_ms)

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

    def tokens(self, prompt_ids: Sequence[int], params: GenParams) -> Iterator[int]:
        """The decode loop: yields new token ids one at a time, up to EOS (not yielded) or
        ``params.max_new_tokens``. Fills ``last_stats``."""
        import torch
        from transformers import DynamicCache

        problems = params.problems()
        if params.cad_alpha > 0:
            problems.append(f"cad_alpha ({params.cad_alpha}): context-aware decoding is not implemented in the hf backend yet")
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and len(prompt_ids) >= limit:
            problems.append(f"the prompt ({len(prompt_ids)} tokens) does not fit the model's context ({limit} tokens)")
        if problems:
            raise ConfigError(problems)
        max_new = min(params.max_new_tokens, limit - len(prompt_ids)) if limit else params.max_new_tokens
        self.identity = replace(self.identity, decoding="greedy" if params.temperature == 0 else "sample")

        rng = None
        if params.temperature > 0:
            rng = torch.Generator(device=self.device)
            if params.seed is not None:
                rng.manual_seed(params.seed)
            else:
                rng.seed()
        stats = {"prompt_tokens": len(prompt_ids), "new_tokens": 0, "ttft_ms": 0.0, "total_ms": 0.0}
        self.last_stats = stats
        t0 = time.perf_counter()
        with torch.inference_mode():
            seen = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
            cache = DynamicCache(config=self.model.config)
            logits = next_token_logits(self.model, seen, cache)
            for step in range(max_new):
                logits = _penalize(logits, seen, params.repetition_penalty)
                token = _sample(logits, params, rng)  # [1, 1]
                token_id = int(token.item())
                now = (time.perf_counter() - t0) * 1000
                if step == 0:
                    stats["ttft_ms"] = now
                stats["total_ms"] = now
                if token_id in self.eos_ids:
                    break
                stats["new_tokens"] = step + 1
                yield token_id
                if step + 1 == max_new:
                    break
                if params.repetition_penalty != 1.0:
                    seen = torch.cat([seen, token], dim=-1)
                logits = next_token_logits(self.model, token, cache)
        stats["total_ms"] = (time.perf_counter() - t0) * 1000

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[str]:
        """The reply as text pieces, as the tokens come; stops at EOS, ``max_new_tokens`` or the
        first ``params.stop`` string (which is not included)."""
        detok = _Detokenizer(self.tokenizer)
        text, emitted = "", 0  # text decoded so far; how much of it has been yielded
        ids = self.prompt_ids(messages)
        tokens = self.tokens(ids, params)
        try:
            for token_id in tokens:
                text += detok.push(token_id)
                safe, stopped = _stop_cut(text, params.stop)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
                if stopped:
                    return
            text += detok.flush()
            safe, stopped = _stop_cut(text, params.stop)
            end = safe if stopped else len(text)  # at the end, a held-back partial stop string is just text
            if end > emitted:
                yield text[emitted:end]
        finally:
            tokens.close()
