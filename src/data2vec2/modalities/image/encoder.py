"""The image local encoder (paper section 3, "Vision"; the reference's `ImageEncoder`, fairseq
examples/data2vec/models/modalities/images.py): ViT patches, fixed 2-D sin-cos positions, a CLS
token; the 2-D conv decoder; the FLOP count of an update."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...encoder import LocalEncoder
from ...masking import num_masked
from ...nn.decoders import Decoder2d, TransformerDecoder
from ...nn.blocks import blocks_forward_flops


@dataclass
class ImageSettings:
    """`model.image`: the patch embedding."""

    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3


def sincos_positions_2d(dim: int, grid: int) -> Tensor:
    """The MAE 2-D sin-cos table, (grid*grid, dim): the first half of the channels encodes the
    column (x) index, the second half the row (y); each half is [sin(p w_k), cos(p w_k)] with
    w_k = 10000^(-k / (dim/4)), k = 0 .. dim/4 - 1. Rows are in row-major patch order."""
    assert dim % 4 == 0, "sin-cos positions need embed_dim divisible by 4"
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))  # (D/4,)
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = np.outer(pos.reshape(-1), omega)  # (T, D/4)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # (T, D/2)

    table = np.concatenate([encode(xs), encode(ys)], axis=1)  # (T, D)
    return torch.from_numpy(table).float()


class ImageLocalEncoder(LocalEncoder):
    num_extra_tokens = 1  # CLS
    has_cls = True
    default_pool = "mean"
    ema_local_encoder = True  # the teacher is a full EMA copy, patch embedding and CLS included

    def __init__(self, model_config):
        super().__init__()
        settings, D = model_config.settings, model_config.embed_dim
        self.grid = settings.image_size // settings.patch_size
        self.patch_size = settings.patch_size
        self.patch_dim = settings.in_channels * settings.patch_size**2  # pixels of a patch
        self.patch_embed = nn.Conv2d(settings.in_channels, D, kernel_size=settings.patch_size,
                                     stride=settings.patch_size)
        self.register_buffer("pos_embed", sincos_positions_2d(D, self.grid).unsqueeze(0))  # (1, T, D), fixed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))

    def reset_parameters(self) -> None:
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # on the flattened (D, C*p*p) view
        nn.init.normal_(self.cls_token, std=1.0)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, T, D) patch tokens in row-major order."""
        return self.patch_embed(images).flatten(2).transpose(1, 2)

    def add_positions(self, x: Tensor, masked: Tensor | None = None) -> Tensor:
        return x + self.pos_embed.to(x.dtype)  # the same fixed table for every clone

    def extra_tokens(self, n: int) -> Tensor:
        return self.cls_token.expand(n, -1, -1)

    # -- for the MAE baseline (objectives/mae.py) --
    def patch_values(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, T, C*p*p): each patch's pixels, patches in the tokens' row-major order."""
        return F.unfold(images, self.patch_size, stride=self.patch_size).transpose(1, 2)

    def position_table(self, dim: int) -> Tensor:
        """The fixed 2-D sin-cos table at another width (the MAE decoder's), (T, dim)."""
        return sincos_positions_2d(dim, self.grid).to(self.pos_embed.device)


def build_decoder(config) -> Decoder2d | TransformerDecoder:
    grid = config.model.settings.image_size // config.model.settings.patch_size
    decoder_config = config.decoder
    if decoder_config.kind == "transformer":  # the ablation; positions as the MAE decoder's
        decoder = TransformerDecoder(config.model.embed_dim, decoder_config.dim, layers=decoder_config.layers,
                                     heads=decoder_config.num_heads,
                                     positions=sincos_positions_2d(decoder_config.dim, grid))
        decoder.reset_projection()
        return decoder
    decoder = Decoder2d(config.model.embed_dim, decoder_config.dim, kernel_size=decoder_config.kernel_size,
                        layers=decoder_config.layers, groups=decoder_config.groups, residual=decoder_config.residual,
                        grid=(grid, grid))
    decoder.reset_projection()
    return decoder


def step_flops(config, batch: int, length: int = 0) -> float:
    """FLOPs of one update on `batch` images (see train/flops.py for what is counted); `length`
    is unused (every image has the preset's size)."""
    model, decoder, settings = config.model, config.decoder, config.model.settings
    M, D = config.masking.num_masks, model.embed_dim
    T = (settings.image_size // settings.patch_size) ** 2
    num_keep = T - num_masked(config.masking.kind, T, config.masking.mask_prob)
    layers = model.depth + model.prenet_depth
    patch = 2 * batch * T * D * settings.in_channels * settings.patch_size**2
    student = patch + blocks_forward_flops(batch * M, 1 + num_keep, D, model.mlp_ratio, layers)
    teacher = patch + blocks_forward_flops(batch, 1 + T, D, model.mlp_ratio, layers)
    decoder_flops = 0.0
    for i in range(decoder.layers):
        c_in = D if i == 0 else decoder.dim
        decoder_flops += 2 * batch * M * T * (c_in // decoder.groups) * decoder.dim * decoder.kernel_size**2
    decoder_flops += 2 * batch * M * T * decoder.dim * D
    return 3 * (student + decoder_flops) + teacher
