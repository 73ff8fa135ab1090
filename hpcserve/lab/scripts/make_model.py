"""Make the lab's tiny random Llama model offline: a byte-level BPE tokenizer trained on a fixed
text, a chat template, and random weights from a fixed seed, saved as safetensors.

Run with the lab venv's Python (it has torch, transformers and tokenizers):
``python make_model.py OUT_DIR``. No network is used. The default shape serves TP=2 on vLLM's
CPU backend: 4 attention heads and 2 KV heads (both divisible by 2), head_dim 64 (the CPU
attention rejects small head sizes such as 16).

Options change the shape for other runs; the GPU test (tests/gpu/run_vllm_gpu.sh) makes a
TP=2 x PP=2 model with ``--hidden-size 512 --intermediate-size 1408 --layers 4 --heads 8
--kv-heads 4 --max-positions 4096 --dtype bfloat16 --vocab-multiple 64 --seed 0``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Shape:
    """The model's sizes; the defaults are the lab's model."""

    hidden_size: int = 256
    intermediate_size: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    max_positions: int = 2048
    dtype: str = "float32"
    vocab_multiple: int = 1  # round the vocabulary up to a multiple of this
    seed: int = 1234


def main(out: Path, shape: Shape = Shape()) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(shape.seed)
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
    vocab = -(-len(fast) // shape.vocab_multiple) * shape.vocab_multiple

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_positions,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype=shape.dtype,
    )
    model = LlamaForCausalLM(config).to(getattr(torch, shape.dtype))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    # Keep the template in tokenizer_config.json too (older readers look only there).
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    print(
        f"  - tiny-llama: vocab {vocab}, hidden {shape.hidden_size}, {shape.layers} layers, "
        f"{shape.heads} heads ({shape.kv_heads} KV), head_dim {shape.head_dim}"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> tuple[Path, Shape]:
    d = Shape()
    p = argparse.ArgumentParser(description="Make a tiny random Llama model offline.")
    p.add_argument("out", type=Path, metavar="OUT_DIR")
    p.add_argument("--hidden-size", type=_positive, default=d.hidden_size)
    p.add_argument("--intermediate-size", type=_positive, default=d.intermediate_size)
    p.add_argument("--layers", type=_positive, default=d.layers)
    p.add_argument("--heads", type=_positive, default=d.heads)
    p.add_argument("--kv-heads", type=_positive, default=d.kv_heads)
    p.add_argument("--head-dim", type=_positive, default=d.head_dim)
    p.add_argument("--max-positions", type=_positive, default=d.max_positions)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=d.dtype)
    p.add_argument("--vocab-multiple", type=_positive, default=d.vocab_multiple)
    p.add_argument("--seed", type=int, default=d.seed)
    a = p.parse_args(argv)
    if a.heads % a.kv_heads:
        p.error(f"--heads {a.heads} is not a multiple of --kv-heads {a.kv_heads}")
    shape = Shape(
        hidden_size=a.hidden_size,
        intermediate_size=a.intermediate_size,
        layers=a.layers,
        heads=a.heads,
        kv_heads=a.kv_heads,
        head_dim=a.head_dim,
        max_positions=a.max_positions,
        dtype=a.dtype,
        vocab_multiple=a.vocab_multiple,
        seed=a.seed,
    )
    return a.out, shape


if __name__ == "__main__":
    main(*parse_args())
