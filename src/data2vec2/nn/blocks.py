"""The post-LN transformer block used by every modality (`AltBlock`, examples/data2vec/models/modalities/modules.py).

    a = Attn(x)                       fused QKV, scaled dot-product, optional additive bias
    x = LN1(x + DropPath(a))
    h = MLP(x)                        <- the block's FFN output: the teacher's target (`AltBlock.forward`'s `t`)
    x = LN2(x + DropPath(Dropout(h)))
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability p (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


# Up to this many tokens, explicit softmax(q k^T / sqrt(d)) v runs forward + backward 1.1-1.6x faster
# on CPU than PyTorch's fused kernel (image-tiny has 15 student and 50 teacher tokens; fp32, 2 AVX2
# threads); from about 100 tokens on the fused kernel is faster and never holds the (N, N) scores:
# benchmarks/attention_paths.py, docs/results/attention_paths.json.
CPU_EXPLICIT_ATTENTION_MAX_TOKENS = 64
_fused_only = False


@contextlib.contextmanager
def fused_attention_only():
    """Within: always the fused kernel, whatever the length (an export traced with a symbolic
    length must not branch on it). Both paths compute the same attention."""
    global _fused_only
    previous, _fused_only = _fused_only, True
    try:
        yield
    finally:
        _fused_only = previous


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v with dropout on the weights; q, k, v: (B, H, N, d)."""
    if not _fused_only and q.device.type == "cpu" and k.shape[-2] <= CPU_EXPLICIT_ATTENTION_MAX_TOKENS:
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, N, N)
        if mask is not None:
            scores = scores + mask
        return F.dropout(scores.softmax(dim=-1), dropout_p) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attention_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None, padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, N, D); attn_bias: additive logits (B or 1, H, N, N); padding_mask: (B, N), True = pad."""
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, D/H)
        mask = attn_bias
        if padding_mask is not None:
            pad = torch.zeros(B, 1, 1, N, dtype=torch.float32, device=x.device)
            pad = pad.masked_fill(padding_mask[:, None, None, :], float("-inf"))
            mask = pad if mask is None else mask + pad
        dropout_p = self.attention_dropout if self.training else 0.0
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.is_grad_enabled():
            # The bf16 backward of CPU attention is ~20x slower than fp32 (docs/image.md): when
            # training on CPU keep attention itself in fp32; the linears around it still run in bf16.
            with torch.autocast("cpu", enabled=False):
                out = attend(q.float(), k.float(), v.float(), mask, dropout_p)
        else:
            if mask is not None:
                mask = mask.to(q.dtype)
            out = attend(q, k, v, mask, dropout_p)
        out = out.transpose(1, 2)  # (B, N, H, D/H)
        if _fused_only:  # an export with a symbolic length: a plain copy, which the exporter can view
            out = out.clone(memory_format=torch.contiguous_format)
        out = out.reshape(B, N, D)
        return self.dropout(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, activation_dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Post-LN transformer block that also returns its FFN output (the data2vec target)."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 dropout: float = 0.0, attention_dropout: float = 0.0, activation_dropout: float = 0.0,
                 post_mlp_dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.attn = Attention(dim, num_heads, attention_dropout, dropout)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), activation_dropout)
        self.post_mlp_dropout = nn.Dropout(post_mlp_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path)
        # activation checkpointing (train.activation_checkpointing): keep only the block's input for the
        # backward pass and run the block again there; the random draws (dropout, drop path) repeat exactly
        self.recompute_in_backward = False

    def forward(self, x: Tensor, attn_bias: Tensor | None = None,
                padding_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns (block output, FFN output), both (B, N, D)."""
        if self.recompute_in_backward and torch.is_grad_enabled():
            return checkpoint(self._forward, x, attn_bias, padding_mask, use_reentrant=False)
        return self._forward(x, attn_bias, padding_mask)

    def _forward(self, x: Tensor, attn_bias: Tensor | None, padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self.norm1(x + self.drop_path(self.attn(x, attn_bias, padding_mask)))
        ffn = self.mlp(x)
        x = self.norm2(x + self.drop_path(self.post_mlp_dropout(ffn)))
        return x, ffn


def run_blocks(blocks: nn.ModuleList, x: Tensor, layerdrop: float = 0.0, attn_bias: Tensor | None = None,
               padding_mask: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
    """Apply blocks in order; layerdrop skips a whole block for the whole batch (training only).
    Returns the final output and each block's FFN output (None for a skipped block)."""
    ffn_outputs: list[Tensor] = []
    for block in blocks:
        if blocks.training and layerdrop > 0 and torch.rand(()) < layerdrop:
            ffn_outputs.append(None)  # type: ignore[arg-type]
            continue
        x, ffn = block(x, attn_bias, padding_mask)
        ffn_outputs.append(ffn)
    return x, ffn_outputs


def blocks_forward_flops(rows: int, tokens: int, dim: int, mlp_ratio: float, depth: int) -> float:
    """Forward FLOPs of `depth` transformer blocks on `rows` sequences of `tokens` tokens. Each
    modality adds its local encoder and decoder to this (its `step_flops`; train/flops.py's convention)."""
    linear = 2 * rows * tokens * dim * dim * (4 + 2 * mlp_ratio)  # qkv + proj + 2 MLP matmuls
    attention = 2 * 2 * rows * tokens * tokens * dim  # scores + weighted sum
    return depth * (linear + attention)
