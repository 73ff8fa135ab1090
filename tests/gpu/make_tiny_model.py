"""Make a tiny random-weight Llama model (+ tokenizer with a chat template) on a machine
without hub access, using transformers + tokenizers only.

Shape: head_dim 64, 8 attention heads, 4 KV heads, 4 layers, hidden 512 -- enough heads for
TP=2 and layers for PP=2. Weights are random (bf16): the output is gibberish, which is fine for
serving mechanics, transport and latency measurements.

    python3 make_tiny_model.py /tmp/tiny-llama
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = (
    "the a of to and in is that it for on with as was at by be this from or have an "
    "model node gpu cluster serve token cache tensor pipeline parallel nccl socket "
    "hello world how are you today what time is it please answer briefly"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def corpus() -> list[str]:
    words = WORDS.split()
    lines = []
    for i in range(4000):
        lines.append(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12)))
    return lines + [str(n) for n in range(1000)] + ["".join(chr(c) for c in range(32, 127))]


def make_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    fast.save_pretrained(out)
    return fast


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny-llama")
    out.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(out)
    vocab = (len(tok) + 63) // 64 * 64
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    # make sure the chat template is reachable both ways transformers/vLLM look for it
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    if "chat_template" not in cfg and not (out / "chat_template.jinja").exists():
        cfg["chat_template"] = CHAT_TEMPLATE
        (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny model: {out} vocab {vocab} params {params} files {sorted(os.listdir(out))}")


if __name__ == "__main__":
    main()
