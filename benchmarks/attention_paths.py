"""Explicit softmax(q k^T / sqrt(d) + bias) v against PyTorch's fused scaled_dot_product_attention
on CPU, forward + backward in fp32, for sequence lengths from image-tiny's 15 student tokens up to
speech lengths, at about 8,000 tokens a batch; the ratio of the two, measured in one run. It sets
CPU_EXPLICIT_ATTENTION_MAX_TOKENS in nn/blocks.py.

    python benchmarks/attention_paths.py --out docs/results/attention_paths.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from data2vec2.provenance import results_header

SHAPES = [(15, 3), (50, 3), (64, 4), (64, 12), (100, 12), (200, 12), (400, 12), (800, 12)]  # (tokens, heads), head dim 64


def best_ms(fn, repeats: int = 5, rounds: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens-per-batch", type=int, default=8000)
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = []
    for tokens, heads in SHAPES:
        batch = max(1, args.tokens_per_batch // tokens)
        q, k, v = (torch.randn(batch, heads, tokens, 64, requires_grad=True) for _ in range(3))
        bias, grad = torch.randn(1, heads, tokens, tokens), torch.randn(batch, heads, tokens, 64)

        def fused():
            F.scaled_dot_product_attention(q, k, v, attn_mask=bias).backward(grad)

        def explicit():
            scores = (q @ k.transpose(-2, -1)) * 0.125 + bias  # (B, H, N, N)
            (scores.softmax(dim=-1) @ v).backward(grad)

        fused_ms, explicit_ms = best_ms(fused), best_ms(explicit)
        rows.append({"tokens": tokens, "heads": heads, "batch": batch, "fused_ms": round(fused_ms, 2),
                     "explicit_ms": round(explicit_ms, 2), "fused_over_explicit": round(fused_ms / explicit_ms, 2)})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"benchmark": "attention_paths", "forward_backward": "fp32", "rows": rows,
                       "header": results_header("fp32")}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
