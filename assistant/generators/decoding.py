"""The parts of a token decode loop that need no tensor library, shared by the ``hf`` backend's two
runtimes (torch in ``hf.py``, ONNX Runtime in ``onnx_lm.py``) so both decode the same way:

* ``NgramBlock``: no n-gram of the reply twice (``hf.no_repeat_ngram``);
* ``Detokenizer``: token ids in, text pieces out, never half a multi-byte character;
* ``stop_cut``: where a reply stops at one of ``GenParams.stop``, holding back a partial stop string;
* ``common_prefix``: how many leading ids two prompts share (the reusable part of a KV cache);
* ``KeptPrefix``: the last generation's prompt and KV state, handed to the next one that shares its start;
* ``plan_decoding``: the checks and settings every generation starts from (rows, token budget, the
  decoding label recorded in the generator's identity).

Logits are whatever array type the runtime uses (a torch tensor or a NumPy array): only indexing
with a list of ids and a copy are asked of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from assistant.generators.base import GenParams
from tether.errors import ConfigError


class NgramBlock:
    """No n-gram twice in the reply: the tokens that would complete an n-gram the reply already
    holds get -inf. Only the reply's own tokens count, never the prompt's: copying a phrase of the
    sources is what a grounded answer does; saying it again and again is the loop a small model falls
    into ("is the one that says ... is the one that says ..."). ``n`` 0 or 1: off."""

    def __init__(self, n: int):
        self.n = n
        self.ids: list[int] = []
        self.after: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram -> the tokens that followed it

    def add(self, token_id: int) -> None:
        self.ids.append(token_id)
        if self.n > 1 and len(self.ids) >= self.n:
            self.after.setdefault(tuple(self.ids[-self.n : -1]), set()).add(token_id)

    def banned(self) -> set[int]:
        """The ids that would repeat an n-gram of the reply if they came next."""
        if self.n <= 1 or len(self.ids) < self.n - 1:
            return set()
        return self.after.get(tuple(self.ids[len(self.ids) - self.n + 1 :]), set())

    def block(self, logits):
        """``logits`` [..., vocab] with the banned ids at -inf (a copy; the same object when none is)."""
        banned = self.banned()
        if not banned:
            return logits
        logits = logits.clone() if hasattr(logits, "clone") else logits.copy()
        logits[..., sorted(banned)] = float("-inf")
        return logits


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading items ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class KeptPrefix:
    """The prompt ids and KV state (whatever the runtime keeps: a cache, a list of arrays) of the last
    generation, for the next prompt that starts the same way (the system prompt and chat header are
    the same every turn). Taking it empties it, so two concurrent generations never share a state."""

    def __init__(self):
        self._lock = threading.Lock()
        self._kept: tuple[list[int], object] | None = None

    @property
    def ids(self) -> list[int] | None:
        """The kept prompt's ids (None: nothing kept)."""
        kept = self._kept
        return kept[0] if kept else None

    def keep(self, ids: Sequence[int], state: object) -> None:
        with self._lock:
            self._kept = (list(ids), state)

    def take(self, ids: Sequence[int]) -> tuple[object, int] | None:
        """``(state, n)``: the kept state and how many leading tokens ``ids`` shares with its prompt
        (at least one token is left to prefill); None when nothing is kept or nothing is shared. The
        caller cuts the state to ``n`` tokens."""
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is None:
            return None
        old, state = kept
        n = min(common_prefix(old, ids), len(ids) - 1)
        return (state, n) if n > 0 else None


class Detokenizer:
    """Token ids in, text pieces out. Decodes the accumulated ids and returns the new suffix,
    holding back a trailing U+FFFD (a multi-byte character whose bytes are still arriving).
    ``tokenizer`` is a transformers tokenizer or a ``tokenizers.Tokenizer``: both decode
    ``(ids, skip_special_tokens=True)``."""

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


def stop_cut(text: str, stops: Sequence[str]) -> tuple[int, bool]:
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


def stream_text(tokens, tokenizer, stops: Sequence[str]):
    """The text pieces of the token ids ``tokens`` yields (an iterator it closes), cut at the first
    of ``stops`` (not included): what a ``Generator.stream`` returns."""
    detok = Detokenizer(tokenizer)
    text, emitted = "", 0  # text decoded so far; how much of it has been yielded
    try:
        for token_id in tokens:
            text += detok.push(token_id)
            safe, stopped = stop_cut(text, stops)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            if stopped:
                return
        text += detok.flush()
        safe, stopped = stop_cut(text, stops)
        end = safe if stopped else len(text)  # at the end, a held-back partial stop string is just text
        if end > emitted:
            yield text[emitted:end]
    finally:
        tokens.close()


@dataclass(frozen=True)
class Plan:
    """What one generation decodes: the prompt rows (the prompt, and with CAD the context-free one),
    the new-token budget, the n-gram block size and the decoding label."""

    rows: list[list[int]]
    max_new: int
    ngram: int
    decoding: str

    def record_step(self, stats: dict[str, float], step: int, token_id: int, eos_ids, t0: float) -> bool:
        """Note the ``step``-th chosen token in ``stats`` (time to first token, total, new tokens);
        True when it is an EOS, which ends the reply without being yielded."""
        now = (time.perf_counter() - t0) * 1000
        if step == 0:
            stats["ttft_ms"] = now
        stats["total_ms"] = now
        if token_id in eos_ids:
            return True
        stats["new_tokens"] = step + 1
        return False

    def new_stats(self, reused_prefix_tokens: int) -> dict[str, float]:
        """The ``last_stats`` a generation starts with (the loop fills in tokens and times)."""
        return {
            "prompt_tokens": len(self.rows[0]),
            "new_tokens": 0,
            "ttft_ms": 0.0,
            "total_ms": 0.0,
            "reused_prefix_tokens": reused_prefix_tokens,
            "rows": len(self.rows),
        }


def plan_decoding(
    params: GenParams,
    prompt_ids: Sequence[int],
    context_free_ids: Sequence[int] | None,
    *,
    limit: int | None,
    default_ngram: int,
    problems: Sequence[str] = (),
) -> Plan:
    """Check ``params`` against the prompt (``limit``: the model's context, None = unknown) and say
    what to decode. ``problems`` are the runtime's own; all are raised together.

    Raises:
        ConfigError: invalid params, CAD without the context-free prompt, a prompt the context cannot hold.
    """
    found = params.problems() + list(problems)
    cad = params.cad_alpha > 0
    if cad and not context_free_ids:
        found.append(
            f"cad_alpha ({params.cad_alpha}) > 0 needs the context-free prompt: set GenParams.cad_context_free to "
            "the messages without the sources (assistant.prompts.build_context_free_messages(question)), or cad_alpha=0"
        )
    rows = [list(prompt_ids)] + ([list(context_free_ids)] if cad and context_free_ids else [])
    longest = max(len(r) for r in rows)
    if limit and longest >= limit:
        found.append(f"the prompt ({longest} tokens) does not fit the model's context ({limit} tokens)")
    if found:
        raise ConfigError(found)
    max_new = min(params.max_new_tokens, limit - longest) if limit else params.max_new_tokens
    decoding = "greedy" if params.temperature == 0 else "sample"
    if cad:
        decoding = ("adacad" if params.cad_adaptive else f"cad(alpha={params.cad_alpha:g})") + (
            "" if params.temperature == 0 else ",sample"
        )
    ngram = default_ngram if params.no_repeat_ngram is None else params.no_repeat_ngram
    if ngram > 1:
        decoding += f",no-repeat-{ngram}gram"
    if params.repetition_penalty != 1.0:
        decoding += f",repetition-penalty-{params.repetition_penalty:g}"
    return Plan(rows, max_new, ngram, decoding)
