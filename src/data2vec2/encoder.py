"""The modality-agnostic encoder skeleton (spec 0 and 1.2).

    local encoder (modality)  ->  positions (modality)  ->  [drop masked tokens]
      ->  prepend extra tokens (CLS)  ->  context encoder: LayerNorm -> dropout -> prenet blocks
      ->  shared blocks (the only source of targets)

A modality subclasses `Encoder` and supplies `local_features` and `add_positions`; everything
else, including the masked (token-dropping) path of the student, lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .nn.blocks import Block, run_blocks


@dataclass
class EncoderOutput:
    x: Tensor  # (N, extra + tokens, D): final output, extra tokens first
    ffn: list[Tensor]  # FFN output of every shared block, each (N, extra + tokens, D)


@dataclass
class MaskInfo:
    """Index tensors that drop masked tokens and put them back (MAE-style)."""

    ids_keep: Tensor  # (N, T_keep): kept token indices, in their original order
    ids_restore: Tensor  # (N, T): position of each original token in [kept..., masked...]

    @staticmethod
    def from_mask(mask: Tensor) -> "MaskInfo":
        """mask: (N, T) bool, True = masked; every row must mask the same number of tokens."""
        num_keep = mask.shape[1] - int(mask[0].sum())
        ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # kept first
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        return MaskInfo(ids_keep=ids_shuffle[:, :num_keep], ids_restore=ids_restore)


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x: (N, T, D), ids: (N, K) -> (N, K, D)."""
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def make_block(cfg: ModelConfig, drop_path: float = 0.0) -> Block:
    return Block(cfg.embed_dim, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, norm_eps=cfg.norm_eps,
                 dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
                 activation_dropout=cfg.activation_dropout, post_mlp_dropout=cfg.post_mlp_dropout,
                 drop_path=drop_path)


def init_bert(module: nn.Module) -> None:
    """BERT-style init (spec 3.5): Linear and Embedding ~ N(0, 0.02), zero bias; LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Encoder(nn.Module):
    num_extra_tokens = 0
    # The EMA teacher copies the whole encoder for images (its own patch embedding). Text, and
    # speech unless `model.audio.ema_local_encoder`, set `ema_local_encoder = False`: the teacher
    # then has no local encoder (the submodules named in `local_encoder_modules`) and encodes the
    # student's local features, detached.
    ema_local_encoder = True
    local_encoder_modules: tuple[str, ...] = ()

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        # drop-path rises linearly over the shared blocks; the prenet reuses the first entries
        rates = torch.linspace(0, cfg.drop_path, max(cfg.depth, 1)).tolist()
        self.context_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.prenet = nn.ModuleList(make_block(cfg, rates[min(i, len(rates) - 1)]) for i in range(cfg.prenet_depth))
        self.blocks = nn.ModuleList(make_block(cfg, rates[i]) for i in range(cfg.depth))

    # -- supplied by the modality ---------------------------------------------------------
    def local_features(self, inputs: Tensor) -> Tensor:
        """Raw input -> (B, T, D) local features, computed once per sample."""
        raise NotImplementedError

    def add_positions(self, x: Tensor) -> Tensor:
        return x

    def extra_tokens(self, n: int) -> Tensor | None:
        return None

    def padding_mask(self, inputs: Tensor) -> Tensor | None:
        """(B, T) bool, True = padding, for inputs that carry padding (text); None otherwise."""
        return None

    # -- shared path ----------------------------------------------------------------------
    def contextualize(self, x: Tensor, padding_mask: Tensor | None = None,
                      attn_bias: Tensor | None = None) -> EncoderOutput:
        """(N, T', D) tokens (kept ones for the student) -> context encoder -> shared blocks.
        `attn_bias`: additive attention logits (N or 1, H, extra + T', extra + T'), e.g. ALiBi."""
        extra = self.extra_tokens(x.shape[0])
        if extra is not None:
            x = torch.cat([extra.to(x.dtype), x], dim=1)  # (N, extra + T', D)
            if padding_mask is not None:
                padding_mask = F.pad(padding_mask, (extra.shape[1], 0), value=False)
        x = self.context_norm(x)
        x = F.dropout(x, self.cfg.prenet_dropout, self.training)
        x, _ = run_blocks(self.prenet, x, self.cfg.layerdrop, attn_bias, padding_mask)
        x, ffn = run_blocks(self.blocks, x, self.cfg.layerdrop, attn_bias, padding_mask)
        return EncoderOutput(x=x, ffn=ffn)

    def forward_local(self, local_features: Tensor, padding_mask: Tensor | None = None) -> EncoderOutput:
        """Unmasked encoding of precomputed local features (the teacher's path)."""
        return self.contextualize(self.add_positions(local_features), padding_mask)

    def forward_masked(self, local_features: Tensor, mask_info: MaskInfo, num_masks: int,
                       padding_mask: Tensor | None = None) -> EncoderOutput:
        """The student's path: clone each sample M times (sample-major), drop masked tokens.
        `padding_mask` (B, T), True = padding: kept padding stays masked out of attention."""
        x = self.add_positions(local_features)  # (B, T, D)
        x = x.repeat_interleave(num_masks, dim=0)  # (B*M, T, D): rows b*M .. b*M+M-1 are sample b
        x = gather_tokens(x, mask_info.ids_keep)  # (B*M, T_keep, D)
        if padding_mask is not None:
            padding_mask = padding_mask.repeat_interleave(num_masks, dim=0).gather(1, mask_info.ids_keep)  # (B*M, T_keep)
        return self.contextualize(x, padding_mask)

    def forward(self, inputs: Tensor) -> EncoderOutput:
        """Encode whole, unmasked inputs: (B, ...) -> x (B, extra + T, D)."""
        return self.forward_local(self.local_features(inputs), self.padding_mask(inputs))

    def embed(self, inputs: Tensor, pool: str = "mean") -> Tensor:
        """Pooled features (B, D): "mean" over the tokens (extra tokens excluded), or "cls"."""
        x = self.forward(inputs).x
        if pool == "cls":
            if self.num_extra_tokens == 0:
                raise ValueError("this encoder has no CLS token; use pool='mean'")
            return x[:, 0]
        if pool == "mean":
            return x[:, self.num_extra_tokens:].mean(dim=1)
        raise ValueError(f"unknown pooling {pool!r}: expected 'mean' or 'cls'")
