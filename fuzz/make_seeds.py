#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from the repository's fixtures.

Run from the repository root: python3 fuzz/make_seeds.py. The seeds are committed; this script
says where each came from, and rewrites them if the fixtures change.
"""
import json
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(os.path.join(d, name), mode) as f:
        f.write(data)


def copy(target, name, src):
    with open(os.path.join(ROOT, src), "rb") as f:
        put(target, name, f.read())


def gguf_tensors(path):
    """(type, raw bytes) of each tensor of a GGUF v3 file (enough of the format for our fixture)."""
    b = open(path, "rb").read()
    pos = 4
    _version, n_t, n_kv = struct.unpack_from("<IQQ", b, pos)
    pos += 20

    def string(p):
        (n,) = struct.unpack_from("<Q", b, p)
        return b[p + 8 : p + 8 + n].decode(), p + 8 + n

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def value(t, p):
        if t == 8:
            return string(p)
        if t == 9:
            inner, n = struct.unpack_from("<IQ", b, p)
            p += 12
            out = []
            for _ in range(n):
                v, p = value(inner, p)
                out.append(v)
            return out, p
        return None, p + sizes[t]

    align = 32
    for _ in range(n_kv):
        key, pos = string(pos)
        (t,) = struct.unpack_from("<I", b, pos)
        v, pos = value(t, pos + 4)
        if key == "general.alignment":
            (align,) = struct.unpack_from("<I", b, pos - 4)
    infos = []
    for _ in range(n_t):
        name, pos = string(pos)
        (nd,) = struct.unpack_from("<I", b, pos)
        dims = struct.unpack_from("<%dQ" % nd, b, pos + 4)
        pos += 4 + 8 * nd
        ty, off = struct.unpack_from("<IQ", b, pos)
        pos += 12
        infos.append((name, dims, ty, off))
    start = (pos + align - 1) // align * align
    block = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22),
             7: (32, 24), 8: (32, 34), 12: (256, 144), 13: (256, 176), 14: (256, 210)}
    for name, dims, ty, off in infos:
        n = 1
        for d in dims:
            n *= d
        per, size = block[ty]
        yield name, ty, b[start + off : start + off + n // per * size]


def gguf(metadata, tensors):
    """A GGUF v3 file: metadata as (key, type, value), tensors as (name, dims, F32 values)."""
    def string(x):
        x = x.encode()
        return struct.pack("<Q", len(x)) + x

    fmt = {4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}

    def value(t, v):
        if t == 8:
            return string(v)
        if t == 9:
            inner, items = v
            return struct.pack("<IQ", inner, len(items)) + b"".join(value(inner, x) for x in items)
        return struct.pack(fmt[t], v)

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for k, t, v in metadata:
        out += string(k) + struct.pack("<I", t) + value(t, v)
    data, infos = b"", b""
    for name, dims, values in tensors:
        infos += string(name) + struct.pack("<I", len(dims)) + struct.pack("<%dQ" % len(dims), *dims)
        infos += struct.pack("<IQ", 0, len(data))
        raw = struct.pack("<%df" % len(values), *values)
        data += raw + b"\0" * (-len(raw) % 32)
    out += infos
    out += b"\0" * (-len(out) % 32)
    return out + data


def tiny_llama_gguf():
    """A one-layer llama GGUF (hidden 4, 2 heads, FFN 8, vocab 6) with a byte-level BPE."""
    h, ff, vocab = 4, 8, 6
    tokens = ["a", "b", "ab", "Ġ", "<s>", "</s>"]
    meta = [("general.architecture", 8, "llama"), ("llama.block_count", 4, 1),
            ("llama.context_length", 4, 64), ("llama.embedding_length", 4, h),
            ("llama.feed_forward_length", 4, ff), ("llama.attention.head_count", 4, 2),
            ("llama.attention.head_count_kv", 4, 1), ("llama.rope.freq_base", 6, 10000.0),
            ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5), ("llama.vocab_size", 4, vocab),
            ("tokenizer.ggml.model", 8, "gpt2"), ("tokenizer.ggml.pre", 8, "llama-bpe"),
            ("tokenizer.ggml.tokens", 9, (8, tokens)),
            ("tokenizer.ggml.token_type", 9, (5, [1, 1, 1, 1, 3, 3])),
            ("tokenizer.ggml.merges", 9, (8, ["a b"])),
            ("tokenizer.ggml.bos_token_id", 4, 4), ("tokenizer.ggml.eos_token_id", 4, 5),
            ("tokenizer.ggml.add_bos_token", 7, True)]
    vals = lambda n: [((i * 7) % 11 - 5) / 10 for i in range(n)]
    kv = h // 2
    tensors = [("token_embd.weight", [h, vocab], vals(h * vocab)), ("output_norm.weight", [h], vals(h)),
               ("output.weight", [h, vocab], vals(h * vocab)),
               ("blk.0.attn_norm.weight", [h], vals(h)), ("blk.0.attn_q.weight", [h, h], vals(h * h)),
               ("blk.0.attn_k.weight", [h, kv], vals(h * kv)), ("blk.0.attn_v.weight", [h, kv], vals(h * kv)),
               ("blk.0.attn_output.weight", [h, h], vals(h * h)), ("blk.0.ffn_norm.weight", [h], vals(h)),
               ("blk.0.ffn_gate.weight", [h, ff], vals(h * ff)), ("blk.0.ffn_up.weight", [h, ff], vals(h * ff)),
               ("blk.0.ffn_down.weight", [ff, h], vals(h * ff))]
    return gguf(meta, tensors)


def safetensors(tensors, metadata=None):
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    # GGUF: the quantised fixture (every dequantiser's blocks) and its tensors' raw blocks.
    copy("gguf", "quants.gguf", "fixtures/gguf/quants.gguf")
    put("gguf", "tiny-llama.gguf", tiny_llama_gguf())
    seen = set()
    for name, ty, raw in gguf_tensors(os.path.join(ROOT, "fixtures/gguf/quants.gguf")):
        if ty in seen:
            continue
        seen.add(ty)
        put("dequantize", "type%d" % ty, struct.pack("<I", ty) + raw[:2048])
    # safetensors: small files in each dtype we read (the fixtures' shapes, fewer values).
    f32 = struct.pack("<6f", 0.5, -1.0, 2.0, 0.0, 3.5, -0.25)
    put("safetensors", "f32.safetensors", safetensors(
        [("model.embed_tokens.weight", "F32", [2, 3], f32),
         ("model.norm.weight", "F32", [3], f32[:12])], {"format": "pt"}))
    put("safetensors", "half.safetensors", safetensors(
        [("a", "BF16", [2, 2], bytes(range(8))), ("b", "F16", [4], bytes(range(8, 16))),
         ("c", "F64", [1], struct.pack("<d", 1.5))]))
    put("safetensors", "ids.safetensors", safetensors(
        [("input_ids", "I64", [1, 3], struct.pack("<3q", 1, 2, 3))]))
    # The index of a sharded checkpoint.
    put("safetensors_index", "index.json", json.dumps({
        "metadata": {"total_size": 1024},
        "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                       "lm_head.weight": "model-00002-of-00002.safetensors"}}, indent=1))
    # config.json of every family's fixtures.
    for d in sorted(os.listdir(os.path.join(ROOT, "fixtures/hf"))):
        for f in ("config.json", "config.transformers5.json"):
            src = os.path.join("fixtures/hf", d, f)
            if os.path.exists(os.path.join(ROOT, src)):
                copy("config_json", "%s-%s" % (d, f), src)
    copy("config_json", "smollm2-config.json", "fixtures/smollm2/config.json")
    copy("config_json", "tiny-parent-config.json", "model-zoo/tiny-parent/config.json")
    # tokenizer.json: the small fixture (SmolLM2's and the tiny parent's are 3.5 MB / 260 KB).
    copy("tokenizer", "tiny-llama.json", "fixtures/hf/tiny-llama/tokenizer.json")
    # Block libraries: NVlabs' layout and Model-Optimizer's, as in search/nvidia.rs's tests.
    parent = "attention = 8 kv heads (parent * 100%)\t&&\tffn = intermediate size 29e3 (parent * 100%)"
    small = "attention = no_op\t&&\tffn = intermediate size 14e3 (parent * 50%)"
    stats = lambda m, r, p, kl: {"stats": {"memory_mib": m, "runtime_ms": r, "num_params": p},
                                 "metrics": {"kl_div": kl, "lm_loss": 1.6 + kl}}
    put("block_library", "nvlabs.json", json.dumps({
        "layer_0": {parent: stats(1437.1, 817.0, 855654400, 0.0), small: stats(400.0, 300.0, 3e8, 0.2)},
        "layer_1": {parent: stats(1437.1, 817.0, 855654400, 0.0), small: stats(410.0, 310.0, 3e8, 0.4)},
    }, indent=1))

    def entry(layer, kv, ffn, teacher, mib, kl):
        return {"parent_layer_indices": [layer],
                "block_config": {"attention": {"no_op": kv is None, "num_key_value_heads": kv},
                                 "ffn": {"no_op": False, "intermediate_size": ffn}},
                "stats": {"memory_mib": mib, "runtime_ms": mib / 10, "num_params": mib * 1e3},
                "metrics": {"kl_div": kl, "one_minus_kl_div": 1 - kl}, "is_teacher": teacher}
    put("block_library", "modelopt.json", json.dumps({
        "replacement_0": entry(0, None, 7168, False, 80.0, 0.3),
        "replacement_1": entry(1, 4, 7168, False, 120.0, 0.1),
        "replacement_2": entry(0, 8, 14336, True, 200.0, 0.0),
        "replacement_3": entry(1, 8, 14336, True, 200.0, 0.0)}, indent=1))
    put("block_library", "table.json", json.dumps({
        "source": "seed", "constants": {"runtime_ms": 1.0},
        "groups": [{"name": "layer 0", "parent": 0, "choices": [
            {"id": "attn:gqa(kv=4)", "values": {"runtime_ms": 1.0, "kl_div": 0.0}},
            {"id": "attn:noop", "values": {"runtime_ms": 0.1, "kl_div": 0.3}}]},
            {"name": "layer 1", "parent": 0, "choices": [
            {"id": "ffn:width(64)", "values": {"runtime_ms": 2.0, "kl_div": 0.0}},
            {"id": "ffn:noop", "values": {"runtime_ms": 0.0, "kl_div": 0.5}}]}]}, indent=1))
    # The run config.
    copy("run_toml", "tiny.toml", "examples/tiny/tiny.toml")
    # A plugin's documents (first byte: which document).
    put("plugin_json", "describe", b"\x00" + json.dumps({
        "name": "example", "solvers": ["greedy"], "cost_models": ["flat"], "scorers": ["mse"],
        "catalogs": [{"name": "ex", "attn": ["attn:ex"], "ffn": []}]}).encode())
    put("plugin_json", "solution", b"\x01" + json.dumps({
        "status": "optimal", "choice": [0, 1, 0, 2, 1, 0], "objective": 1.5, "bound": 1.5,
        "seconds": 0.01}).encode())
    put("plugin_json", "infeasible", b"\x01" + json.dumps({
        "status": "infeasible", "choice": [], "objective": None, "bound": None, "seconds": 0}).encode())
    put("plugin_json", "costs", b"\x02" + json.dumps({
        "params": 1000, "param_bytes": 4000.0, "kv_bytes_per_token": 64.0,
        "kv_bytes_per_sequence": 12288.0, "prefill_ms": {"1": 0.5, "8": 3.0},
        "decode_ms": {"1": 0.01, "8": 0.05}}).encode())
    put("plugin_json", "variants", b"\x03" + json.dumps(
        ["attn:gqa(kv=2)", "attn:noop", "ffn:width(512)", "attn:window(w=64)", "ffn:linear"]).encode())
    put("plugin_json", "spec-ffn", b"\x04" + json.dumps(
        {"subblock": "ffn", "type": "swi_glu", "intermediate_size": 512}).encode())
    put("plugin_json", "spec-attn", b"\x04" + json.dumps(
        {"subblock": "attn", "type": "gqa", "num_kv_heads": 2, "window": 64}).encode())


if __name__ == "__main__":
    main()
