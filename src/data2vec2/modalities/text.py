"""The text modality (spec 3.4, 2, 4.2, 5.3): byte-level BPE tokens, learned positions, random
masking, a 1-D conv decoder without residual, and a teacher that is an EMA of the shared blocks.

    local encoder : token embedding (not scaled) + learned positions -> LayerNorm -> dropout 0.1
    context       : identity (no LayerNorm, no prenet)
    shared blocks : post-LN, key padding mask; the only part the teacher keeps an EMA of
    teacher input : the student's embedding output, with the student's own dropout (spec 2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, ModelConfig
from ..data.text import PAD  # <s>=0, <pad>=1, </s>=2, <unk>=3: RoBERTa's special-token layout
from ..encoder import Encoder, init_bert
from ..nn.decoders import Decoder1d
from ..train.flops import _blocks_forward


def token_positions(tokens: Tensor, pad: int = PAD) -> Tensor:
    """RoBERTa position ids: non-padding tokens count from pad + 1 = 2; padding gets `pad`, whose
    row of the table stays zero. tokens: (B, T) -> (B, T)."""
    real = tokens.ne(pad).long()
    return torch.cumsum(real, dim=1) * real + pad


class TextEncoder(Encoder):
    num_extra_tokens = 0  # <s> is an ordinary token at position 0
    ema_local_encoder = False  # the teacher keeps only the shared blocks
    local_encoder_modules = ("token_embed", "pos_embed", "embed_norm")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        tc, D = cfg.text, cfg.embed_dim
        self.token_embed = nn.Embedding(tc.vocab_size, D, padding_idx=PAD)
        self.pos_embed = nn.Embedding(tc.max_positions + PAD + 1, D, padding_idx=PAD)  # 514 rows for 512
        self.embed_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.context_norm = nn.Identity()  # the text context encoder is empty (prenet_depth = 0)
        self.apply(init_bert)

    def local_features(self, tokens: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, D): embeddings + positions -> LayerNorm -> dropout."""
        if tokens.shape[1] > self.cfg.text.max_positions:
            raise ValueError(f"{tokens.shape[1]} tokens exceed model.text.max_positions={self.cfg.text.max_positions}")
        x = self.token_embed(tokens) + self.pos_embed(token_positions(tokens))
        return F.dropout(self.embed_norm(x), self.cfg.text.embed_dropout, self.training)

    def padding_mask(self, tokens: Tensor) -> Tensor:
        return tokens.eq(PAD)  # (B, T), True = padding

    def embed(self, tokens: Tensor, pool: str = "cls") -> Tensor:
        """Pooled features (B, D): the <s> token ("cls") or the mean over non-padding tokens."""
        x = self.forward(tokens).x
        if pool == "cls":
            return x[:, 0]
        if pool == "mean":
            keep = (~self.padding_mask(tokens)).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            return (x * keep).sum(1) / keep.sum(1).clamp(min=1)
        raise ValueError(f"unknown pooling {pool!r}: expected 'cls' or 'mean'")


def build_text_parts(config: Config) -> tuple[TextEncoder, Decoder1d]:
    encoder = TextEncoder(config.model)
    d = config.decoder
    decoder = Decoder1d(config.model.embed_dim, d.dim, kernel_size=d.kernel_size, layers=d.layers, groups=d.groups,
                        residual=d.residual, projection_layers=d.projection_layers)
    decoder.apply(init_bert)  # the text decoder keeps the BERT init (spec 3.5)
    return encoder, decoder


def text_step_flops(config: Config, batch: int, length: int, num_keep: int) -> float:
    """FLOPs of one update on `batch` blocks of `length` tokens, `num_keep` kept per clone (see
    train/flops.py for what is counted). The embedding lookups are free."""
    m, d = config.model, config.decoder
    M, D = config.masking.num_masks, m.embed_dim
    student = _blocks_forward(batch * M, num_keep, D, m.mlp_ratio, m.depth)
    teacher = _blocks_forward(batch, length, D, m.mlp_ratio, m.depth)
    decoder = 0.0
    for i in range(d.layers):
        decoder += 2 * batch * M * length * ((D if i == 0 else d.dim) // d.groups) * d.dim * d.kernel_size
    proj = [d.dim, 2 * d.dim, D] if d.projection_layers == 2 else [d.dim, D]
    decoder += sum(2 * batch * M * length * a * b for a, b in zip(proj, proj[1:]))
    return 3 * (student + decoder) + teacher
