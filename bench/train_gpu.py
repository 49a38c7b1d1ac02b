"""LoRA training throughput and peak memory on a CUDA GPU: Tether's planned configuration and forced
4-bit against the plain stack, side by side in one run.

    .venv/bin/python bench/train_gpu.py --out bench/out/train_gpu.json [--steps 10 --warmup 3 --seq 2048]

Model: the Llama-3.1-8B shape (hidden 4096, 32 layers, intermediate 14336, 32 heads / 8 KV heads,
vocab 128256), random init (saved once as a bf16 checkpoint under --workdir so every variant loads
the same weights the same way), sequences of --seq random tokens, LoRA r=16 alpha=32 on all linear
layers of the decoder. Each variant runs in its own process (clean peak memory):

    plain-qlora   transformers Trainer + peft + bitsandbytes nf4 + gradient checkpointing (batch 4)
    tether        training.planner's plan for this GPU, built by training.trainers (load_model,
                  common_args, lora_config) and run with trl's SFTTrainer
    tether-4bit   the same with --quantize 4bit forced

tokens/s = trained tokens / wall time of the timed steps (after --warmup steps); peak memory =
torch.cuda.max_memory_allocated over the whole process (weights included), in GiB.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

VARIANTS = ("plain-qlora", "tether", "tether-4bit")
GIB = 1024**3


SMOKE = False  # --smoke: a tiny shape on the CPU, to check the script runs end to end (numbers meaningless)


def llama8b_config():
    from transformers import LlamaConfig

    if SMOKE:
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=400,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        )
    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def make_checkpoint(folder: Path) -> Path:
    """A random bf16 Llama-3.1-8B-shaped checkpoint (built on the GPU, saved once) + a byte tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    with torch.device("cpu" if SMOKE else "cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(llama8b_config())
        torch.set_default_dtype(torch.float32)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.tiny_llm import make_tokenizer

    make_tokenizer().save_pretrained(tmp)  # only for the trainers' processing_class; data are pre-tokenized
    os.replace(tmp, folder)
    return folder


def _dataset(n: int, seq: int, vocab: int):
    import torch
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (n, seq), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids})


class _Timer:
    """Records the wall time at the end of every optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        outer = self
        self.times: list[float] = []

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                outer.times.append(time.perf_counter())

        self.callback = CB()


def run_variant(name: str, ckpt: Path, steps: int, warmup: int, seq: int) -> dict:
    import torch

    cuda = torch.cuda.is_available() and not SMOKE
    vocab = llama8b_config().vocab_size
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timer = _Timer()
    total = steps + warmup
    if name == "plain-qlora":
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import (
            AutoModelForCausalLM,
            BitsAndBytesConfig,
            DataCollatorForLanguageModeling,
            Trainer,
            TrainingArguments,
        )

        from tests.tiny_llm import make_tokenizer

        batch, accum = 4, 1
        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        model = AutoModelForCausalLM.from_pretrained(
            ckpt, quantization_config=q, dtype=torch.bfloat16, device_map={"": 0}
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        )
        tok = make_tokenizer()
        args = TrainingArguments(
            output_dir=str(ckpt.parent / f"out-{name}"),
            max_steps=total,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accum,
            learning_rate=1e-4,
            bf16=True,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            activation_checkpointing=True,
            activation_checkpointing_kwargs={"use_reentrant": False},
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=_dataset(total * batch * accum, seq, vocab),
            data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
            callbacks=[timer.callback],
        )
        plan = {
            "quantize": "4bit",
            "gradient_checkpointing": True,
            "liger": False,
            "batch_size": batch,
            "grad_accum": accum,
        }
    else:
        from transformers import AutoConfig
        from trl import SFTConfig, SFTTrainer

        from training.config import TrainConfig
        from training.planner import detect_device, plan_for_model
        from training.trainers import common_args, load_model, load_tokenizer, lora_config

        tc = TrainConfig(
            method="sft",
            base_model=str(ckpt),
            dataset="-",
            output_dir=str(ckpt.parent / f"out-{name}"),
            lora_r=16,
            lora_alpha=32,
            max_steps=total,
            max_length=seq,
            save_steps=10**6,
            device="cuda" if cuda else "cpu",
            quantize="4bit" if name == "tether-4bit" else "auto",
        )
        p = plan_for_model(AutoConfig.from_pretrained(ckpt), tc, detect_device(tc.device))
        model = load_model(ckpt, p, init_adapter=None, device=tc.device)
        args = common_args(tc, p, ckpt.parent / f"out-{name}")
        args.update(save_strategy="no", logging_steps=1)
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(**args),
            train_dataset=_dataset(total * p.batch_size * p.grad_accum, seq, vocab),
            processing_class=load_tokenizer(ckpt),
            peft_config=lora_config(tc),
            callbacks=[timer.callback],
        )
        plan = {k: getattr(p, k) for k in ("quantize", "gradient_checkpointing", "liger", "batch_size", "grad_accum")}
        plan["estimate_gib"] = p.estimate_gib
        batch, accum = p.batch_size, p.grad_accum
    trainer.train()
    t = timer.times
    timed = t[-1] - t[warmup - 1] if warmup >= 1 else t[-1] - t[0]
    n_steps = len(t) - warmup
    tokens = n_steps * batch * accum * seq
    return {
        "variant": name,
        "tokens_per_s": tokens / timed,
        "peak_gib": torch.cuda.max_memory_allocated() / GIB if cuda else float("nan"),
        "reserved_gib": torch.cuda.max_memory_reserved() / GIB if cuda else float("nan"),
        "timed_steps": n_steps,
        "plan": plan,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (smoke)",
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/out/train_gpu.json"))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tether-train-gpu"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: run one variant, print JSON
    ap.add_argument("--smoke", action="store_true", help="tiny shape on the CPU: checks the script, measures nothing")
    args = ap.parse_args(argv)
    global SMOKE
    SMOKE = args.smoke
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    if not torch.cuda.is_available() and not SMOKE:
        sys.stderr.write("bench/train_gpu.py needs a CUDA GPU; nothing measured\n")
        sys.exit(2)
    ckpt = args.workdir / ("tiny-random" if SMOKE else "llama8b-random")
    if args.one:
        res = run_variant(args.one, ckpt, args.steps, args.warmup, args.seq)
        sys.stdout.write("RESULT " + json.dumps(res) + "\n")
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    make_checkpoint(ckpt)
    sys.stderr.write(f"checkpoint ready in {time.perf_counter() - t:.0f} s\n")
    results = []
    for name in [v for v in args.variants.split(",") if v]:
        cmd = [
            sys.executable,
            __file__,
            *(["--smoke"] if SMOKE else []),
            "--one",
            name,
            "--workdir",
            str(args.workdir),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--seq",
            str(args.seq),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            results.append({"variant": name, "error": proc.stderr[-2000:]})
        else:
            results.append(json.loads(line[len("RESULT ") :]))
        sys.stderr.write(json.dumps(results[-1])[:400] + "\n")
    plain = next((r for r in results if r["variant"] == "plain-qlora" and "error" not in r), None)
    for r in results:
        if plain and "error" not in r:
            r["speed_vs_plain_qlora"] = r["tokens_per_s"] / plain["tokens_per_s"]
            r["memory_vs_plain_qlora"] = r["peak_gib"] / plain["peak_gib"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"seq": args.seq, "steps": args.steps, "warmup": args.warmup, "results": results}, indent=2)
    )
    lines = [
        "| variant | plan | tokens/s | peak GiB | × plain QLoRA speed | × plain QLoRA memory |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: see JSON | | | | |")
            continue
        pl = r["plan"]
        desc = f"{pl['quantize']}, ckpt {'on' if pl['gradient_checkpointing'] else 'off'}, liger {'on' if pl['liger'] else 'off'}, batch {pl['batch_size']}x{pl['grad_accum']}"
        lines.append(
            f"| {r['variant']} | {desc} | {r['tokens_per_s']:.0f} | {r['peak_gib']:.1f} | {r.get('speed_vs_plain_qlora', float('nan')):.2f} | "
            f"{r.get('memory_vs_plain_qlora', float('nan')):.2f} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
