"""Make the lab's tiny random Llama model offline: a byte-level BPE tokenizer trained on a fixed
text, a chat template, and random weights from a fixed seed, saved as safetensors.

Run with the lab venv's Python (it has torch, transformers and tokenizers):
``python make_model.py OUT_DIR``. No network is used. The shape serves TP=2 on vLLM's CPU
backend: 4 attention heads and 2 KV heads (both divisible by 2), head_dim 64 (the CPU attention
rejects small head sizes such as 16).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SPECIALS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TEXT = """\
Hello! How are you today? I am fine, thank you. What is the capital of France? Paris.
The cluster has two nodes. Each node runs one process. The head node serves the API and the
worker node joins it. A model is split across the nodes with tensor parallelism.
The quick brown fox jumps over the lazy dog. One two three four five six seven eight nine ten.
Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.
Complex is better than complicated. Flat is better than nested. Sparse is better than dense.
Readability counts. Special cases aren't special enough to break the rules.
Errors should never pass silently. In the face of ambiguity, refuse the temptation to guess.
SLURM schedules jobs on compute nodes; sbatch submits a batch script and srun starts steps.
"""


def main(out: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(1234)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    vocab = len(fast)

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    # Keep the template in tokenizer_config.json too (older readers look only there).
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"  - tiny-llama: vocab {vocab}, hidden 256, 2 layers, 4 heads (2 KV), head_dim 64")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_model.py OUT_DIR")
    main(Path(sys.argv[1]))
