"""The light convolutional decoder (the reference's `Decoder1d`/`Decoder2d`): fills the masked positions back in.
(`TransformerDecoder` at the end is an ablation, not the reference.)

Each layer is Conv -> LayerNorm over channels (no affine) -> GELU; a residual wraps the whole
layer whenever its input and output channel counts agree; a final Linear maps to the model width.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis (axis 1) of (N, C, ...) without affine parameters."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps

    def forward(self, x: Tensor) -> Tensor:
        x = x.movedim(1, -1)
        x = F.layer_norm(x, (self.channels,), eps=self.eps)
        return x.movedim(-1, 1)


def _conv_stage(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, ChannelLayerNorm(channels), nn.GELU())


def projection(dim: int, out_dim: int, layers: int) -> nn.Module:
    """1 layer: Linear(dim -> out_dim); 2: Linear(dim -> 2 dim) -> GELU -> Linear(2 dim -> out_dim)
    (the reference's text decoder projection and data2vec 1.0's text regression head)."""
    if layers == 1:
        return nn.Linear(dim, out_dim)
    if layers == 2:
        return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, out_dim))
    raise ValueError(f"projection layers must be 1 or 2, got {layers}")


class Decoder1d(nn.Module):
    """Speech and text decoder over the time axis: (N, T, D) -> (N, T, out_dim) (the reference's `Decoder1d`).

    `projection_layers=1`: Linear(dim -> out_dim); 2: Linear(dim -> 2 dim) -> GELU -> Linear."""

    def __init__(self, in_dim: int, dim: int, *, kernel_size: int, layers: int, groups: int,
                 residual: bool, projection_layers: int = 1, out_dim: int | None = None):
        super().__init__()
        out_dim = out_dim or in_dim
        self.residual = residual
        self.layers = nn.ModuleList(
            _conv_stage(nn.Conv1d(in_dim if i == 0 else dim, dim, kernel_size, padding=kernel_size // 2,
                                  groups=groups), dim)
            for i in range(layers))
        self.proj = projection(dim, out_dim, projection_layers)

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2)  # (N, D, T)
        for layer in self.layers:
            y = layer(x)
            x = y + x if self.residual and y.shape[1] == x.shape[1] else y
        return self.proj(x.transpose(1, 2))  # (N, T, out_dim)

    def reset_projection(self) -> None:
        """PyTorch's default init for the output projection (the reference does this for audio)."""
        for m in self.proj.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()


class Decoder2d(nn.Module):
    """Image decoder on the h x w patch grid: (B*M, T, D) -> (B*M, T, D)."""

    def __init__(self, in_dim: int, dim: int, *, kernel_size: int, layers: int, groups: int,
                 residual: bool, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.residual = residual
        self.layers = nn.ModuleList()
        for i in range(layers):
            self.layers.append(_conv_stage(
                nn.Conv2d(in_dim if i == 0 else dim, dim, kernel_size, padding=kernel_size // 2, groups=groups),
                dim))
        self.proj = nn.Linear(dim, in_dim)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        h, w = self.grid
        x = x.transpose(1, 2).reshape(B, D, h, w)  # (B, D, h, w)
        for layer in self.layers:
            y = layer(x)
            x = y + x if self.residual and y.shape[1] == x.shape[1] else y
        x = x.flatten(2).transpose(1, 2)  # (B, T, dim)
        return self.proj(x)

    def reset_projection(self) -> None:
        """The reference re-initialises the output projection with PyTorch's default (DecoderBase.reset_parameters)."""
        self.proj.reset_parameters()


class TransformerDecoder(nn.Module):
    """An ablation of the conv decoder (decoder.kind=transformer): (B*M, T, D) -> (B*M, T, D) as the
    conv decoders, with attention instead of local convolutions.

    Linear(D -> dim) + a fixed position table (T, dim) -> `layers` pre-LN Transformer blocks
    (`heads` heads, MLP 4 x dim, GELU) -> LayerNorm -> Linear(dim -> D)."""

    def __init__(self, in_dim: int, dim: int, *, layers: int, heads: int, positions: Tensor):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.register_buffer("positions", positions.unsqueeze(0), persistent=False)  # (1, T, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, in_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x) + self.positions.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x))

    def reset_projection(self) -> None:
        self.proj.reset_parameters()
