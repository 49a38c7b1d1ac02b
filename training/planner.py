"""The memory planner: for a model shape and the device found, the fastest training configuration
that fits — bf16 LoRA or 4-bit QLoRA, gradient checkpointing or not, batch and accumulation,
Liger kernels on CUDA. ``tether train sft --plan`` prints the plan and its estimate.

The estimate (GiB) is a sum of parts, each a formula over the shape (``Plan.breakdown``):

    weights      params x 2 bytes (bf16), 4 (fp32, CPU) or ~0.56 (nf4 linears; embeddings stay bf16)
    lora         trainable LoRA params x 16 bytes (fp32 weight, grad, two Adam moments)
    activations  per token per layer: 7h + 2kv + 4i bf16 values kept for backward (Liger's fused
                 SwiGLU/RMSNorm keep 7h + 2kv + 2i); with checkpointing only the layer input (h)
                 plus one layer recomputed
    logits       seq x vocab x 10 bytes (bf16 logits, fp32 upcast, fp32 grad) for a plain stack;
                 ~0 under trl 1.16, whose trainers compute the token log-probs through a chunked
                 ("fused") LM head and never hold the full logits (``fused_lm_head=True``)
    overhead     1.5 GiB (CUDA context, allocator) + 8 % of the rest

Speed is ranked by a cost per token: x4/3 with checkpointing (the forward runs twice), x1.25 for
nf4 (dequantizing every matmul), x0.9 with Liger, and a utilisation factor that favours bigger
batches. These are rules of thumb to rank candidates; bench/train_gpu.py measures the real figures.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

GIB = 1024**3
HEADROOM = 0.90  # plan to use at most this share of the device memory


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        heads = config.num_attention_heads
        return cls(
            hidden=config.hidden_size,
            layers=config.num_hidden_layers,
            intermediate=config.intermediate_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            vocab=config.vocab_size,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
        )

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder block (q, k, v, o, gate, up, down)."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes())

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        return self.linear_params + self.embed_params + self.layers * 2 * self.hidden

    def lora_params(self, r: int) -> int:
        return self.layers * sum(r * (a + b) for a, b in self.linear_shapes())


@dataclass(frozen=True)
class Device:
    kind: str  # cuda | cpu
    name: str
    memory_gib: float
    bf16: bool = False
    liger_available: bool = False


@dataclass(frozen=True)
class Plan:
    device: Device
    quantize: str  # none | 4bit
    dtype: str  # bfloat16 | float32
    gradient_checkpointing: bool
    liger: bool
    batch_size: int
    grad_accum: int
    seq_len: int
    estimate_gib: float
    breakdown: dict[str, float] = field(default_factory=dict)
    relative_speed: float = 1.0
    reason: str = ""
    considered: tuple[dict[str, Any], ...] = ()

    def describe(self) -> list[str]:
        d = self.device
        lines = [
            f"device        {d.kind} ({d.name}, {d.memory_gib:.1f} GiB{', bf16' if d.bf16 else ''}{', liger installed' if d.liger_available else ''})",
            f"weights       {'4-bit nf4 (QLoRA)' if self.quantize == '4bit' else self.dtype} ",
            f"checkpointing {'on' if self.gradient_checkpointing else 'off'}",
            f"liger         {'on' if self.liger else 'off'}",
            f"batch         {self.batch_size} x accumulation {self.grad_accum} (seq {self.seq_len})",
            f"estimate      {self.estimate_gib:.1f} GiB of {d.memory_gib:.1f} ("
            + ", ".join(f"{k} {v:.2f}" for k, v in self.breakdown.items())
            + ")",
            f"why           {self.reason}",
        ]
        return lines

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def detect_device(requested: str = "auto") -> Device:
    """The device training will run on: the first CUDA GPU when present (unless ``cpu``), else the CPU."""
    import importlib.util

    import torch

    from tether.errors import ConfigError

    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
    if requested != "cpu" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Device(
            "cuda",
            props.name,
            props.total_memory / GIB,
            bf16=torch.cuda.is_bf16_supported(),
            liger_available=importlib.util.find_spec("liger_kernel") is not None,
        )
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        mem = 8.0
    return Device("cpu", f"{os.cpu_count()} cores", mem)


def estimate(
    shape: ModelShape,
    *,
    quantize: str,
    dtype_bytes: int,
    gc: bool,
    liger: bool,
    batch: int,
    seq: int,
    lora_r: int,
    cuda: bool,
    fused_lm_head: bool = True,
) -> dict[str, float]:
    """Memory parts in GiB (see the module docstring)."""
    h, kv, i, L = shape.hidden, shape.kv_dim, shape.intermediate, shape.layers
    if quantize == "4bit":
        weights = shape.linear_params * 0.5625 + (shape.embed_params + L * 2 * h) * 2
    else:
        weights = shape.params * dtype_bytes
    lora = shape.lora_params(lora_r) * 16
    act_bytes = 2 if dtype_bytes == 2 else 4
    per_layer = (7 * h + 2 * kv + (2 if liger else 4) * i) * act_bytes
    tokens = batch * seq
    activations = tokens * (L * h * act_bytes + per_layer) if gc else tokens * L * per_layer
    logits = tokens * shape.hidden * 4.0 if fused_lm_head else tokens * shape.vocab * 10
    parts = {"weights": weights / GIB, "lora": lora / GIB, "activations": activations / GIB, "logits": logits / GIB}
    rest = sum(parts.values())
    parts["overhead"] = (1.5 if cuda else 0.3) + 0.08 * rest
    return parts


def _speed(quantize: str, gc: bool, liger: bool, batch: int, seq: int) -> float:
    cost = (4 / 3 if gc else 1.0) * (1.25 if quantize == "4bit" else 1.0) * (0.9 if liger else 1.0)
    utilisation = min(1.0, (batch * seq / 8192) ** 0.25)
    return utilisation / cost


def plan_training(
    shape: ModelShape,
    device: Device,
    *,
    seq_len: int,
    lora_r: int = 16,
    quantize: str = "auto",
    gradient_checkpointing: str = "auto",
    liger: str = "auto",
    batch_size: int = 0,
    grad_accum: int = 0,
    effective_batch: int = 8,
    min_batch: int = 1,
) -> Plan:
    """The fastest candidate that fits ``HEADROOM`` of the device memory.

    ``quantize``/``gradient_checkpointing``/``liger``/``batch_size``/``grad_accum`` fixed by the
    user are honoured ("4bit" forces QLoRA); "auto"/0 are the planner's to choose. On the CPU the
    planner keeps fp32 weights and no Liger (both are CUDA features) and does not quantize unless forced.

    Raises:
        ConfigError: nothing fits, naming the smallest estimate and what to change.
    """
    from tether.errors import ConfigError

    cuda = device.kind == "cuda"
    dtype_bytes = 2 if (cuda and device.bf16) else 4
    dtype = "bfloat16" if dtype_bytes == 2 else "float32"
    quants = ["4bit"] if quantize == "4bit" else ["none"] if (quantize == "none" or not cuda) else ["none", "4bit"]
    gcs = [gradient_checkpointing == "on"] if gradient_checkpointing != "auto" else [False, True]
    ligers = [liger == "on"] if liger != "auto" else [cuda and device.liger_available]
    if not cuda:
        ligers = [False]
    batches = (
        [batch_size]
        if batch_size
        else [b for b in (1, 2, 4, 8, 16, 32) if min_batch <= b <= max(min_batch, effective_batch)]
    )
    budget = device.memory_gib * HEADROOM
    cands = []
    for q in quants:
        for gc in gcs:
            for lg in ligers:
                for b in batches:
                    parts = estimate(
                        shape,
                        quantize=q,
                        dtype_bytes=dtype_bytes,
                        gc=gc,
                        liger=lg,
                        batch=b,
                        seq=seq_len,
                        lora_r=lora_r,
                        cuda=cuda,
                    )
                    cands.append((_speed(q, gc, lg, b, seq_len), sum(parts.values()), q, gc, lg, b, parts))
    if quantize == "4bit" and cands:
        # forcing 4-bit means memory is what matters: the fastest within 1.5x the leanest candidate
        budget = min(budget, 1.5 * min(c[1] for c in cands))
    considered = []
    best = None
    for c in cands:
        speed, total, q, gc, lg, b, _ = c
        fits = total <= budget
        considered.append(
            {
                "quantize": q,
                "gc": gc,
                "liger": lg,
                "batch": b,
                "gib": round(total, 2),
                "speed": round(speed, 3),
                "fits": fits,
            }
        )
        if fits and (best is None or (speed, -total) > (best[0], -best[1])):  # fastest; then the smaller
            best = c
    if best is None:
        smallest = min(considered, key=lambda c: c["gib"])
        raise ConfigError(
            f"no training configuration fits {device.name} ({device.memory_gib:.1f} GiB): the smallest needs about "
            f"{smallest['gib']:.1f} GiB ({smallest}); lower --max-length, --lora-r or --batch-size, or use --quantize 4bit"
        )
    speed, total, q, gc, lg, b, parts = best
    accum = grad_accum or max(1, effective_batch // b)
    reason = (
        f"fastest of {sum(c['fits'] for c in considered)} fitting candidates"
        + (" (4-bit forced)" if quantize == "4bit" else "")
        + ("" if cuda else "; CPU: fp32 weights, no Liger, no quantization unless forced")
    )
    return Plan(
        device,
        q,
        dtype,
        gc,
        lg,
        b,
        accum,
        seq_len,
        round(total, 2),
        {k: round(v, 3) for k, v in parts.items()},
        round(speed, 3),
        reason,
        tuple(considered),
    )


def plan_for_model(model_config: Any, cfg: Any, device: Device | None = None) -> Plan:
    """The plan for a ``TrainConfig`` and a transformers model config."""
    device = device or detect_device(cfg.device)
    return plan_training(
        ModelShape.from_config(model_config),
        device,
        seq_len=cfg.max_length,
        lora_r=cfg.lora_r,
        quantize=cfg.quantize,
        gradient_checkpointing=cfg.gradient_checkpointing,
        liger=cfg.liger,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        effective_batch=8,
        min_batch=2 if cfg.method == "kto" else 1,
    )
