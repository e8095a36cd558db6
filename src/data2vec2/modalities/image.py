"""The image modality (spec 3.2, 4.3, 5.1): ViT patches, fixed 2-D sin-cos positions, a CLS
token, inverse block masking and a 2-D conv decoder."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..config import Config, ModelConfig
from ..encoder import Encoder, init_bert
from ..nn.decoders import Decoder2d


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


class ImageEncoder(Encoder):
    num_extra_tokens = 1  # CLS

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        ic, D = cfg.image, cfg.embed_dim
        self.grid = ic.image_size // ic.patch_size
        self.patch_embed = nn.Conv2d(ic.in_channels, D, kernel_size=ic.patch_size, stride=ic.patch_size)
        self.register_buffer("pos_embed", sincos_positions_2d(D, self.grid).unsqueeze(0))  # (1, T, D), fixed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.apply(init_bert)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # on the flattened (D, C*p*p) view
        nn.init.normal_(self.cls_token, std=1.0)

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def local_features(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, T, D) patch tokens in row-major order."""
        return self.patch_embed(images).flatten(2).transpose(1, 2)

    def add_positions(self, x: Tensor) -> Tensor:
        return x + self.pos_embed.to(x.dtype)

    def extra_tokens(self, n: int) -> Tensor:
        return self.cls_token.expand(n, -1, -1)


def build_image_parts(config: Config) -> tuple[ImageEncoder, Decoder2d]:
    encoder = ImageEncoder(config.model)
    d = config.decoder
    decoder = Decoder2d(config.model.embed_dim, d.dim, kernel_size=d.kernel_size, layers=d.layers,
                        groups=d.groups, residual=d.residual, grid=(encoder.grid, encoder.grid))
    decoder.reset_projection()
    return encoder, decoder
