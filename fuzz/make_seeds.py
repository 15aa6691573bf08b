#!/usr/bin/env python3
"""Writes the hand-made seeds of the fuzz corpus (fuzz/corpus/<target>/seed-*): well-formed
KV frames and streams, chat and completions bodies, and a tiny llama GGUF header; and the
hand-made crash-* inputs of fixed findings. libFuzzer mutates from these; `cargo fuzz cmin`
keeps what adds coverage."""

import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data, prefix="seed-"):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, prefix + name), "wb") as f:
        f.write(data)


# ---- kv_wire: the frame format of kv-transfer/src/wire.rs (version 2, little-endian)
def frame(kind, transfer, payload, dtype=0, shape=(0, 0, 0, 0, 0, 0)):
    h = b"GKVT" + struct.pack("<HBBQ", 2, kind, dtype, transfer)
    h += struct.pack("<6I", *shape) + struct.pack("<I", len(payload))
    h += struct.pack("<I", zlib.crc32(h))
    return h + payload + struct.pack("<I", zlib.crc32(payload))


# layer 0 of 2, 1 kv head, head_dim 4, 2 tokens, f16: 2 (K,V) x 2 x 4 x 2 bytes = 32
layer = frame(1, 0, bytes(range(32)), 1, (0, 2, 1, 4, 0, 2))
layer1 = frame(1, 0, bytes(range(32, 64)), 1, (1, 2, 1, 4, 0, 2))
hidden = frame(4, 1, bytes(range(32)), 2, (1, 2, 1, 4, 0, 2))  # 2 tokens x 4 x f32
trailer = json.dumps({"prompt_tokens": 2, "first_token": 7, "sampler": {}}).encode()
complete = frame(2, 0, trailer)
abort = frame(3, 2, b"prefill worker gone")
write("kv_wire", "layer", layer)
write("kv_wire", "hidden", hidden)
write("kv_wire", "complete", complete)
write("kv_wire", "abort", abort)
write("kv_wire", "stream", layer + layer1 + complete)
write("kv_wire", "stream-abort", layer + frame(3, 0, b"cancelled"))
write("kv_wire", "mixed", layer + frame(1, 3, bytes(32), 1, (0, 2, 1, 4, 0, 2)))

# ---- request_body: chat and completions bodies
M = "SmolLM2-135M-Instruct"
bodies = {
    "chat": {"model": M, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    "chat-full": {
        "model": M,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Name a color."}]},
            {"role": "assistant", "content": "Red."},
        ],
        "max_completion_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
        "n": 2, "stop": ["\n", "."], "seed": 3, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "logit_bias": {"42": -100}, "logprobs": True,
        "top_logprobs": 2, "stream": True, "stream_options": {"include_usage": True},
        "user": "u", "ignore_eos": False, "genie": {"disaggregate": True},
    },
    "chat-roles": {"model": M, "messages": [{"role": "tool", "content": "x"}]},
    "completion": {"model": M, "prompt": "The capital of France is", "max_tokens": 4},
    "completion-tokens": {"model": M, "prompt": [1, 2, 3], "echo": True, "logprobs": 1},
    "completion-lists": {"model": M, "prompt": [[1, 2], [3, 99999]], "n": 3},
    "completion-texts": {"model": M, "prompt": ["a", "b"], "stop": "x", "max_tokens": 9000},
}
for name, b in bodies.items():
    write("request_body", name, json.dumps(b).encode())
write("request_body", "nested", b'{"model":' + b"[" * 64 + b"]" * 64 + b"}")


# ---- gguf_meta: a tiny llama GGUF v3 header (tensor directory only, no data)
def s(x):
    x = x.encode()
    return struct.pack("<Q", len(x)) + x


T_U32, T_F32, T_BOOL, T_STR, T_ARR, T_I32 = 4, 6, 7, 8, 9, 5


def kv(key, vtype, payload):
    return s(key) + struct.pack("<I", vtype) + payload


tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "Ġ", "Ġa"]
kvs = [
    kv("general.architecture", T_STR, s("llama")),
    kv("general.name", T_STR, s("tiny")),
    kv("llama.embedding_length", T_U32, struct.pack("<I", 8)),
    kv("llama.attention.head_count", T_U32, struct.pack("<I", 2)),
    kv("llama.attention.head_count_kv", T_U32, struct.pack("<I", 1)),
    kv("llama.block_count", T_U32, struct.pack("<I", 1)),
    kv("llama.feed_forward_length", T_U32, struct.pack("<I", 16)),
    kv("llama.context_length", T_U32, struct.pack("<I", 64)),
    kv("llama.rope.freq_base", T_F32, struct.pack("<f", 10000.0)),
    kv("llama.attention.layer_norm_rms_epsilon", T_F32, struct.pack("<f", 1e-5)),
    kv("tokenizer.ggml.model", T_STR, s("gpt2")),
    kv("tokenizer.ggml.pre", T_STR, s("smollm")),
    kv("tokenizer.ggml.tokens", T_ARR, struct.pack("<IQ", T_STR, len(tokens)) + b"".join(s(t) for t in tokens)),
    kv("tokenizer.ggml.merges", T_ARR, struct.pack("<IQ", T_STR, 2) + s("a b") + s("Ġ a")),
    kv("tokenizer.ggml.token_type", T_ARR, struct.pack("<IQ", T_I32, len(tokens)) + struct.pack("<8i", 3, 3, 3, 1, 1, 1, 1, 1)),
    kv("tokenizer.ggml.bos_token_id", T_U32, struct.pack("<I", 1)),
    kv("tokenizer.ggml.eos_token_id", T_U32, struct.pack("<I", 2)),
    kv("tokenizer.ggml.add_bos_token", T_BOOL, b"\x00"),
    kv("tokenizer.chat_template", T_STR, s("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")),
]
F32 = 0
h, kvd, f = 8, 4, 16
tensors = [("token_embd.weight", (h, len(tokens))), ("output_norm.weight", (h,))]
for name, dims in [("attn_norm", (h,)), ("attn_q", (h, h)), ("attn_k", (h, kvd)), ("attn_v", (h, kvd)),
                   ("attn_output", (h, h)), ("ffn_norm", (h,)), ("ffn_gate", (h, f)), ("ffn_up", (h, f)),
                   ("ffn_down", (f, h))]:
    tensors.append((f"blk.0.{name}.weight", dims))
infos = b""
off = 0
for name, dims in tensors:
    infos += s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
    infos += struct.pack("<IQ", F32, off)
    n = 1
    for d in dims:
        n *= d
    off += (n * 4 + 31) // 32 * 32
head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + infos
write("gguf_meta", "tiny-llama", head)
write("gguf_meta", "no-tensors", b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))
write("gguf_meta", "v2-empty", b"GGUF" + struct.pack("<IQQ", 2, 0, 0))

# Inputs that crashed the target before their fixes (engine/src/gguf.rs tests hold the same
# cases; crash-tensor-dims-overflow is the fuzzer's own find, kept as found):
# `general.alignment` 0 (candle's reader divided by it), and a block_count of 2^32 - 1
# (every block's tensor names were made before the first missing one was noticed).
write("gguf_meta", "alignment-zero", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv("general.alignment", T_U32, struct.pack("<I", 0)), "crash-")
huge_blocks = [kv("llama.block_count", T_U32, struct.pack("<I", 0xFFFFFFFF)) if k.startswith(s("llama.block_count")) else k for k in kvs]
write("gguf_meta", "block-count-huge", b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(huge_blocks) + infos, "crash-")
