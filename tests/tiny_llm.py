"""Tiny random chat LLMs built inside a test: a 2-layer Llama (hidden 64) and a byte-level BPE
tokenizer trained offline on the text below, with ChatML special tokens and chat template.
Seeded and deterministic; a checkpoint builds and saves in well under a second.

    model_dir = make_tiny_llm(tmp_path / "tiny")
    adapter_dir = make_lora_adapter(model_dir, tmp_path / "lora")
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TRAINING_TEXT = """\
Employees get twenty-five days of annual leave each year. Unused leave can be carried over until March.
The Halden office canteen opens at 07:45 and closes at 14:30. Coffee is free on the second floor.
Travel must be approved by your manager before booking. Receipts are submitted within 30 days.
Remote work is allowed up to three days per week. Laptops are replaced every four years.
Question: When does the canteen open? Answer: The canteen opens at 07:45 [1].
Question: How many days of leave do I get? Answer: You get 25 days of annual leave [2].
The context does not say. I don't know. According to the handbook, the policy changed in 2024.
Naïve café résumé — 日本語 ✓ 30 € per night. Zürich, Malmö, São Paulo.
system user assistant Context: Sources: [1] [2] [3]
"""


def make_tokenizer(vocab_size: int = 400):
    """A byte-level BPE (``tokenizers``, trained here, offline) wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TRAINING_TEXT.splitlines() * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.model_max_length = 512
    return tok


def make_tiny_llm(out_dir: Path, *, seed: int = 0, init_std: float = 0.1, max_positions: int = 512) -> Path:
    """Save a random 2-layer Llama and its tokenizer into ``out_dir``; returns ``out_dir``.

    ``init_std`` is larger than Llama's 0.02 so the next-token logits are peaked: greedy choices
    then do not hinge on float rounding when two decoders are compared.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=max_positions,  # raise it for whole grounded prompts (the tiny vocab splits words finely)
        initializer_range=init_std,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def make_lora_adapter(model_dir: Path, out_dir: Path, *, seed: int = 1, rank: int = 4) -> Path:
    """Save a PEFT LoRA adapter for the model in ``model_dir`` with random non-zero B matrices
    (a fresh LoRA has B = 0 and changes nothing), so the adapter visibly changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, lora)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.5)
    model.save_pretrained(out_dir)
    return Path(out_dir)
