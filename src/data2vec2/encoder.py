"""The modality-agnostic encoder (paper section 3; the reference's `Data2VecMultiModel` with a
`ModalitySpecificEncoder`, fairseq examples/data2vec/models/modalities/base.py):

    local encoder (modality)   raw input -> (B, T, D) tokens, computed once per sample
    positions (modality)       added to each clone; may depend on the clone's mask (audio)
    drop masked tokens         the student only: M clones per sample, masked tokens removed
    extra tokens (modality)    prepended (the image CLS token)
    context encoder            LayerNorm -> dropout -> prenet blocks
    shared blocks              the only source of targets

The modality supplies a `LocalEncoder` module (its folder under `modalities/`); the path through the
encoder, masked or not, is the one written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
    def from_mask(mask: Tensor, masked_per_row: int | None = None) -> "MaskInfo":
        """mask: (N, T) bool, True = masked; every row must mask the same number of tokens,
        `masked_per_row`: that number where the caller knows it (counted on the CPU copy of the
        mask), so that the host need not wait for the device to count it."""
        if masked_per_row is None:
            masked_per_row = int(mask[0].sum())
        num_keep = mask.shape[1] - masked_per_row
        ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # kept first
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        return MaskInfo(ids_keep=ids_shuffle[:, :num_keep], ids_restore=ids_restore)


def gather_tokens(x: Tensor, ids: Tensor) -> Tensor:
    """x: (N, T, D), ids: (N, K) -> (N, K, D)."""
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def init_bert(module: nn.Module) -> None:
    """BERT-style init (the reference's `init_bert_params`): Linear and Embedding ~ N(0, 0.02),
    zero bias; LayerNorm (1, 0)."""
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


class LocalEncoder(nn.Module):
    """What a modality supplies. Its `forward` maps raw inputs to (B, T, D) tokens; the hooks
    below have the defaults of a modality without positions, extra tokens or padding."""

    num_extra_tokens = 0  # tokens prepended before the context encoder (the image CLS)
    has_cls = False  # pool="cls" is meaningful: x[:, 0] summarises the sample
    default_pool = "mean"
    normalize_context = True  # the context encoder starts with a LayerNorm (text has none)
    variable_length = False  # inputs of one model differ in length (a waveform, a text), not only in batch
    # submodules the EMA teacher shares with the student (it gets the student's local features,
    # detached) unless `ema_local_encoder`; a modality sets both
    shareable: tuple[str, ...] = ()
    ema_local_encoder = True

    def reset_parameters(self) -> None:
        """The modality's own init, after the BERT init of the whole encoder (`build_encoder`)."""

    def add_positions(self, x: Tensor, masked: Tensor | None = None) -> Tensor:
        """x: (N, T, D) tokens, whole sequences; masked: (N, T) bool, True = masked (the student's
        clones) or None (unmasked encoding). Returns (N, T, D)."""
        return x

    def extra_tokens(self, n: int) -> Tensor | None:
        return None

    def attention_bias(self, length: int, ids_keep: Tensor | None = None) -> Tensor | None:
        """Additive attention logits (1 or N, H, T', T') for `length` tokens, or for the kept
        tokens `ids_keep` (N, T_keep) of each clone; None for plain attention."""
        return None

    def padding_mask(self, inputs: Tensor) -> Tensor | None:
        """(B, T) bool, True = padding, for inputs that carry padding (text); None otherwise."""
        return None


def make_block(cfg: ModelConfig, drop_path: float = 0.0) -> Block:
    return Block(cfg.embed_dim, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, norm_eps=cfg.norm_eps,
                 dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
                 activation_dropout=cfg.activation_dropout, post_mlp_dropout=cfg.post_mlp_dropout,
                 drop_path=drop_path)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, make_local_encoder: Callable[[ModelConfig], LocalEncoder]):
        """`make_local_encoder(cfg)` is called after the blocks exist: with that order (and the
        local encoder registered last) a seed gives the same initial weights as version 0.1.0."""
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        # drop-path rises linearly over the shared blocks; the prenet reuses the first entries
        rates = torch.linspace(0, cfg.drop_path, max(cfg.depth, 1), device="cpu").tolist()
        self.prenet = nn.ModuleList(make_block(cfg, rates[min(i, len(rates) - 1)]) for i in range(cfg.prenet_depth))
        self.blocks = nn.ModuleList(make_block(cfg, rates[i]) for i in range(cfg.depth))
        local_encoder = make_local_encoder(cfg)
        self.context_norm = nn.LayerNorm(D, eps=cfg.norm_eps) if local_encoder.normalize_context else nn.Identity()
        self.local_encoder = local_encoder

    @property
    def num_extra_tokens(self) -> int:
        return self.local_encoder.num_extra_tokens

    def local_features(self, inputs: Tensor) -> Tensor:
        """Raw input (B, ...) -> local features (B, T, D), once per sample."""
        return self.local_encoder(inputs)

    def contextualize(self, x: Tensor, padding_mask: Tensor | None, attn_bias: Tensor | None) -> EncoderOutput:
        """(N, T', D) tokens -> extra tokens -> context encoder -> shared blocks."""
        extra = self.local_encoder.extra_tokens(x.shape[0])
        if extra is not None:
            x = torch.cat([extra.to(x.dtype), x], dim=1)  # (N, extra + T', D)
            if padding_mask is not None:
                padding_mask = F.pad(padding_mask, (extra.shape[1], 0), value=False)
        x = self.context_norm(x)
        x = F.dropout(x, self.cfg.prenet_dropout, self.training)
        x, _ = run_blocks(self.prenet, x, self.cfg.layerdrop, attn_bias, padding_mask)
        x, ffn = run_blocks(self.blocks, x, self.cfg.layerdrop, attn_bias, padding_mask)
        return EncoderOutput(x=x, ffn=ffn)

    def forward_unmasked(self, local_features: Tensor, padding_mask: Tensor | None = None) -> EncoderOutput:
        """Whole sequences (the teacher, evaluation): (B, T, D) local features -> (B, extra + T, D)."""
        x = self.local_encoder.add_positions(local_features)
        return self.contextualize(x, padding_mask, self.local_encoder.attention_bias(x.shape[1]))

    def forward_masked(self, local_features: Tensor, mask_info: MaskInfo, num_masks: int,
                       padding_mask: Tensor | None = None) -> EncoderOutput:
        """The student: each sample cloned M times (sample-major: rows b*M .. b*M+M-1 are sample
        b), positions added per clone, masked tokens dropped. padding_mask: (B, T), True = pad."""
        x = local_features.repeat_interleave(num_masks, dim=0)  # (B*M, T, D)
        masked = mask_info.ids_restore >= mask_info.ids_keep.shape[1]  # (B*M, T), True = masked
        x = self.local_encoder.add_positions(x, masked)  # (B*M, T, D)
        x = gather_tokens(x, mask_info.ids_keep)  # (B*M, T_keep, D)
        if padding_mask is not None:
            padding_mask = padding_mask.repeat_interleave(num_masks, dim=0).gather(1, mask_info.ids_keep)
        bias = self.local_encoder.attention_bias(local_features.shape[1], mask_info.ids_keep)
        return self.contextualize(x, padding_mask, bias)

    def forward_mask_embedded(self, local_features: Tensor, mask: Tensor, num_masks: int, mask_embedding: Tensor,
                              padding_mask: Tensor | None = None) -> EncoderOutput:
        """The student of data2vec 1.0 (and BERT): each sample cloned M times, every token encoded,
        the masked ones replaced by `mask_embedding` (D,) before positions are added.
        mask: (B*M, T) bool, True = masked. Returns (B*M, extra + T, D)."""
        x = local_features.repeat_interleave(num_masks, dim=0)  # (B*M, T, D)
        x = torch.where(mask.unsqueeze(-1), mask_embedding.to(x.dtype), x)
        x = self.local_encoder.add_positions(x, mask)
        if padding_mask is not None:
            padding_mask = padding_mask.repeat_interleave(num_masks, dim=0)
        return self.contextualize(x, padding_mask, self.local_encoder.attention_bias(x.shape[1]))

    def forward(self, inputs: Tensor) -> EncoderOutput:
        """Encode whole, unmasked inputs: (B, ...) -> x (B, extra + T, D)."""
        return self.forward_unmasked(self.local_features(inputs), self.local_encoder.padding_mask(inputs))

    def embed(self, inputs: Tensor, pool: str | None = None) -> Tensor:
        """Pooled features (B, D): "mean" over the tokens (extra tokens and padding excluded) or
        "cls" (the first token); None: the modality's default."""
        pool = pool or self.local_encoder.default_pool
        x = self.forward(inputs).x
        if pool == "cls":
            if not self.local_encoder.has_cls:
                raise ValueError("this encoder has no CLS token; use pool='mean'")
            return x[:, 0]
        if pool != "mean":
            raise ValueError(f"unknown pooling {pool!r}: expected 'mean' or 'cls'")
        x = x[:, self.num_extra_tokens:]
        padding = self.local_encoder.padding_mask(inputs)
        if padding is None:
            return x.mean(dim=1)
        keep = (~padding).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        return (x * keep).sum(1) / keep.sum(1).clamp(min=1)
