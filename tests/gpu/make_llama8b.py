"""Make a random-weight model of Llama-3-8B's layout on a machine without hub access (bf16).

hidden 4096, 32 layers, 32 heads, 8 KV heads (head_dim 128), intermediate 14336, vocab 128256,
untied lm_head, max_position_embeddings 8192: 8.03 G parameters, 16.06 GB in four safetensors
shards with an index, as the real checkpoint has. Weights are N(0, 0.02) drawn on the GPU (norms
1) and written tensor by tensor in the safetensors format (an 8-byte header length, a JSON
header, the raw little-endian bytes), so the host never holds more than one tensor.

The tokenizer (tokenizers + transformers) has all 128256 ids: the 256 byte-level symbols, filler
tokens ``t<id>`` up to 127999 and special tokens from 128000 (``<|begin_of_text|>``,
``<|end_of_text|>``, reserved ones), no merges: text encodes one token per byte and every id
decodes. Output is gibberish, which is fine for start-up, loading and serving measurements.

    python3 make_llama8b.py /tmp/llama-8b
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": None,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
    "use_cache": True,
}
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SHARD_BYTES = 5_000_000_000


def tensors(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, shape, is_norm) of every weight, in checkpoint order."""
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    out: list[tuple[str, tuple[int, ...], bool]] = [("model.embed_tokens.weight", (v, h), False)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (h, h), False),
            (p + "self_attn.k_proj.weight", (kv, h), False),
            (p + "self_attn.v_proj.weight", (kv, h), False),
            (p + "self_attn.o_proj.weight", (h, h), False),
            (p + "mlp.gate_proj.weight", (inter, h), False),
            (p + "mlp.up_proj.weight", (inter, h), False),
            (p + "mlp.down_proj.weight", (h, inter), False),
            (p + "input_layernorm.weight", (h,), True),
            (p + "post_attention_layernorm.weight", (h,), True),
        ]
    out += [("model.norm.weight", (h,), True), ("lm_head.weight", (v, h), False)]
    return out


def shards(items: list[tuple[str, tuple[int, ...], bool]]) -> list[list[Any]]:
    groups: list[list[Any]] = [[]]
    size = 0
    for item in items:
        n = 2
        for d in item[1]:
            n *= d
        if groups[-1] and size + n > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += n
    return groups


def gpu_bytes(seed: int) -> Any:
    """Bytes of one bf16 tensor: ones for a norm, else N(0, 0.02) drawn on the GPU."""
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)

    def make(shape: tuple[int, ...], norm: bool) -> bytes:
        if norm:
            t = torch.ones(shape, dtype=torch.bfloat16, device="cuda")
        else:
            t = torch.empty(shape, dtype=torch.bfloat16, device="cuda")
            t.normal_(0.0, 0.02, generator=gen)
        data: bytes = t.view(torch.int16).cpu().numpy().tobytes()
        return data

    return make


def write_shard(path: Path, group: list[Any], make: Any) -> int:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in group:
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for _, shape, norm in group:
            fh.write(make(shape, norm))
    return offset


def make_tokenizer(out: Path, cfg: dict[str, Any]) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    first_special = cfg["bos_token_id"]
    for i in range(len(vocab), first_special):
        vocab[f"t{i}"] = i
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>"]
    specials += ["<|end_header_id|>", "<|eot_id|>"]
    specials += [
        f"<|reserved_special_token_{k}|>" for k in range(cfg["vocab_size"] - 5 - first_special)
    ]
    for k, tok in enumerate(specials):
        vocab[tok] = first_special + k
    model = models.BPE(vocab=vocab, merges=[])
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = cfg["max_position_embeddings"]
    fast.save_pretrained(out)
    assert len(fast) == cfg["vocab_size"], len(fast)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/llama-8b")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    make_tokenizer(out, CONFIG)
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 128000, "eos_token_id": 128001}) + "\n"
    )
    groups = shards(tensors(CONFIG))
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(groups, 1):
        name = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        total += write_shard(out / name, group, gpu_bytes(k))
        weight_map.update({t[0]: name for t in group})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    params = total // 2
    print(
        f"llama-8b layout: {out} {params / 1e9:.3f} G params, {total / 1e9:.2f} GB in "
        f"{len(groups)} shards, made in {time.time() - t0:.1f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
