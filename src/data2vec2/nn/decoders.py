"""The light convolutional decoder (spec 4): fills the masked positions back in.

Each layer is Conv -> LayerNorm over channels (no affine) -> GELU; a residual wraps the whole
layer whenever its input and output channel counts agree; a final Linear maps to the model width.
"""

from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor, nn


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis (axis 1) of (N, C, ...) without affine parameters."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps

    def forward(self, x: Tensor) -> Tensor:
        x = x.movedim(1, -1)
        x = F.layer_norm(x, (self.channels,), eps=self.eps)
        return x.movedim(-1, 1)


class Decoder2d(nn.Module):
    """Image decoder on the h x w patch grid: (B*M, T, D) -> (B*M, T, D)."""

    def __init__(self, in_dim: int, dim: int, *, kernel_size: int, layers: int, groups: int,
                 residual: bool, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.residual = residual
        self.layers = nn.ModuleList()
        for i in range(layers):
            self.layers.append(nn.Sequential(
                nn.Conv2d(in_dim if i == 0 else dim, dim, kernel_size, padding=kernel_size // 2, groups=groups),
                _ChannelLayerNorm(dim),
                nn.GELU(),
            ))
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
        """The reference re-initialises the output projection with PyTorch's default (spec 3.5)."""
        self.proj.reset_parameters()


def decoder_parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


