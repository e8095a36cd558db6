"""The text local encoder (paper section 3, "Language"; the reference's `TextEncoder`, fairseq
examples/data2vec/models/modalities/text.py): byte-level BPE tokens, learned positions; the 1-D
conv decoder without residual; the FLOP count of an update.

    local encoder : token embedding (not scaled) + learned positions -> LayerNorm -> dropout 0.1
    context       : identity (no LayerNorm, no prenet)
    shared blocks : post-LN, key padding mask; the only part the teacher keeps an EMA of
    teacher input : the student's embedding output, with the student's own dropout
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...encoder import LocalEncoder, init_bert
from ...masking import num_masked
from ...nn.decoders import Decoder1d
from ...nn.blocks import blocks_forward_flops

BOS, PAD, EOS, UNK = 0, 1, 2, 3  # RoBERTa's special-token layout
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]


@dataclass
class TextSettings:
    """`model.text`: byte-level BPE tokens, <s>=0, <pad>=1, </s>=2, <unk>=3."""

    vocab_size: int = 50_265
    max_positions: int = 512  # tokens per sequence, <s> included; the table has 2 more rows
    embed_dropout: float = 0.1  # after the embedding LayerNorm; the teacher sees it too


def token_positions(tokens: Tensor, pad: int = PAD) -> Tensor:
    """RoBERTa position ids: non-padding tokens count from pad + 1 = 2; padding gets `pad`, whose
    row of the table stays zero. tokens: (B, T) -> (B, T)."""
    real = tokens.ne(pad).long()
    return torch.cumsum(real, dim=1) * real + pad


class TextLocalEncoder(LocalEncoder):
    has_cls = True  # <s> is an ordinary token at position 0, not an extra token
    default_pool = "cls"
    normalize_context = False  # the text context encoder is empty (prenet_depth = 0)
    variable_length = True
    ema_local_encoder = False  # the teacher keeps only the shared blocks
    shareable = ("token_embed", "pos_embed", "embed_norm")
    # for the MLM baseline (objectives/mlm.py): the byte-level BPE never emits <unk>, so it serves
    # as the mask symbol; random replacements are drawn from the ordinary tokens after it
    mask_token_id, first_ordinary_token = UNK, UNK + 1

    def __init__(self, model_config):
        super().__init__()
        settings, D = model_config.settings, model_config.embed_dim
        self.max_positions, self.embed_dropout = settings.max_positions, settings.embed_dropout
        self.token_embed = nn.Embedding(settings.vocab_size, D, padding_idx=PAD)
        self.pos_embed = nn.Embedding(settings.max_positions + PAD + 1, D, padding_idx=PAD)  # 514 rows for 512
        self.embed_norm = nn.LayerNorm(D, eps=model_config.norm_eps)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, D): embeddings + positions -> LayerNorm -> dropout."""
        if tokens.shape[1] > self.max_positions:
            raise ValueError(f"{tokens.shape[1]} tokens exceed model.text.max_positions={self.max_positions}")
        x = self.token_embed(tokens) + self.pos_embed(token_positions(tokens))
        return F.dropout(self.embed_norm(x), self.embed_dropout, self.training)

    def padding_mask(self, tokens: Tensor) -> Tensor:
        return tokens.eq(PAD)  # (B, T), True = padding


def build_decoder(config) -> Decoder1d:
    decoder_config = config.decoder
    decoder = Decoder1d(config.model.embed_dim, decoder_config.dim, kernel_size=decoder_config.kernel_size,
                        layers=decoder_config.layers, groups=decoder_config.groups, residual=decoder_config.residual,
                        projection_layers=decoder_config.projection_layers)
    decoder.apply(init_bert)  # the text decoder keeps the BERT init, as the reference
    return decoder


def step_flops(config, batch: int, length: int) -> float:
    """FLOPs of one update on `batch` blocks of `length` tokens (see train/flops.py for what is
    counted). The embedding lookups are free."""
    model, decoder = config.model, config.decoder
    M, D = config.masking.num_masks, model.embed_dim
    num_keep = length - num_masked(config.masking.kind, length, config.masking.mask_prob)
    student = blocks_forward_flops(batch * M, num_keep, D, model.mlp_ratio, model.depth)
    teacher = blocks_forward_flops(batch, length, D, model.mlp_ratio, model.depth)
    decoder_flops = 0.0
    for i in range(decoder.layers):
        decoder_flops += (2 * batch * M * length * ((D if i == 0 else decoder.dim) // decoder.groups) * decoder.dim
                          * decoder.kernel_size)
    proj = [decoder.dim, 2 * decoder.dim, D] if decoder.projection_layers == 2 else [decoder.dim, D]
    decoder_flops += sum(2 * batch * M * length * a * b for a, b in zip(proj, proj[1:]))
    return 3 * (student + decoder_flops) + teacher
