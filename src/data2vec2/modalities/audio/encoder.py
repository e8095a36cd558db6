"""The audio local encoder (paper section 3, "Speech"; the reference's `AudioEncoder`, fairseq
examples/data2vec/models/modalities/audio.py): the wav2vec 2.0 CNN over the raw 16 kHz waveform, a
convolutional relative-position encoder, ALiBi attention bias; the 1-D conv decoder; the FLOP count.

    wave (B, L)  -> CNN (7 convs, stride 320) -> (B, C, T) -> LayerNorm(C) -> Linear(C, D)  = local features
    student      : clone M times, zero masked frames, pos-conv on the full length, keep the
                   unmasked frames (features + their pos-conv output), ALiBi gathered for them
    teacher      : shares the CNN + projection (its input is the student's local features,
                   detached); its own EMA pos-conv, context LayerNorm, ALiBi scales and blocks
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...encoder import LocalEncoder
from ...masking import num_masked
from ...nn.decoders import ChannelLayerNorm, Decoder1d
from ...nn.blocks import blocks_forward_flops


@dataclass
class AudioSettings:
    """`model.audio`: the CNN feature encoder (then LayerNorm + Linear to D), the convolutional
    relative-position encoder and the ALiBi attention bias."""

    # (channels, kernel, stride) of each conv layer; the base CNN is 512 x [(10,5), (3,2) x4, (2,2) x2]
    conv_layers: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    conv_pos_width: int = 95  # total width; each of the conv_pos_depth layers has kernel width // depth
    conv_pos_depth: int = 5
    conv_pos_groups: int = 16
    alibi: bool = True
    alibi_scale_init: float = 1.0
    # False (the reference): the teacher is fed the student's CNN + projection output. True: the
    # teacher keeps its own EMA copy of them (audio-tiny: the shared CNN collapsed, docs/audio.md)
    ema_local_encoder: bool = False


def num_frames(conv_layers: tuple[tuple[int, int, int], ...], num_samples: int) -> int:
    """floor((L - k) / s) + 1 per layer: 16000 samples -> 49 frames with the base CNN."""
    for _, kernel, stride in conv_layers:
        num_samples = (num_samples - kernel) // stride + 1
    return num_samples


class FeatureExtractor(nn.Module):
    """The wav2vec 2.0 CNN in "layer_norm" mode: each layer is Conv1d (no bias) -> LayerNorm over
    channels (affine, computed in fp32) -> GELU. (B, L) samples -> (B, C, T) frames."""

    def __init__(self, layers: tuple[tuple[int, int, int], ...]):
        super().__init__()
        self.layers = layers
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        in_ch = 1
        for ch, k, s in layers:
            conv = nn.Conv1d(in_ch, ch, kernel_size=k, stride=s, bias=False)
            nn.init.kaiming_normal_(conv.weight)
            self.convs.append(conv)
            self.norms.append(nn.LayerNorm(ch))
            in_ch = ch

    @property
    def out_channels(self) -> int:
        return self.layers[-1][0]

    def num_frames(self, num_samples: int) -> int:
        return num_frames(self.layers, num_samples)

    def forward(self, wave: Tensor) -> Tensor:
        x = wave.unsqueeze(1)  # (B, 1, L)
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)  # (B, C, T')
            y = F.layer_norm(x.transpose(1, 2).float(), norm.normalized_shape, norm.weight.float(),
                             norm.bias.float(), norm.eps)  # fp32 LayerNorm over channels
            x = F.gelu(y.to(x.dtype)).transpose(1, 2)
        return x  # (B, C, T)


class ConvPositions(nn.Module):
    """Relative positions (as in `AudioEncoder`): `depth` x [Conv1d(D, D, k, groups) -> LayerNorm (no affine)
    -> GELU], not residual inside; the caller adds the output to the features. (N, T, D) -> same."""

    def __init__(self, dim: int, width: int, depth: int, groups: int):
        super().__init__()
        k = max(3, width // depth)  # 95 // 5 = 19
        self.layers = nn.Sequential(*[
            nn.Sequential(nn.Conv1d(dim, dim, k, padding=k // 2, groups=groups), ChannelLayerNorm(dim), nn.GELU())
            for _ in range(depth)])
        self.trim = 1 if k % 2 == 0 else 0  # "same" padding for an even kernel

    def forward(self, x: Tensor) -> Tensor:
        y = x.transpose(1, 2)  # (N, D, T)
        for layer in self.layers:
            y = layer(y)
            if self.trim:
                y = y[..., :-self.trim]
        return y.transpose(1, 2)


def alibi_slopes(num_heads: int) -> Tensor:
    """The ALiBi head slopes: for a power of two n, 2^(-8 i / n), i = 1..n; otherwise those of the
    closest smaller power of two p, then every other slope of 2p (12 heads: 1/2 .. 1/256, then
    2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5)."""

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    p = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two(p)
    if p < num_heads:
        slopes += power_of_two(2 * p)[0::2][: num_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: Tensor, scale: Tensor, length: int) -> Tensor:
    """bias[h, i, j] = -slope_h * |i - j| * max(scale_h, 0): (H, T, T) in fp32."""
    pos = torch.arange(length, device=slopes.device, dtype=torch.float32)
    dist = (pos[None, :] - pos[:, None]).abs()  # (T, T)
    return -dist[None] * (slopes * scale.float().clamp_min(0.0))[:, None, None]


def gather_bias(bias: Tensor, ids_keep: Tensor) -> Tensor:
    """(H, T, T) full-length bias -> (N, H, T_keep, T_keep) for the kept frames of each row, so the
    distances stay those of the original frame indices."""
    N, K = ids_keep.shape
    H = bias.shape[0]
    rows = bias[:, ids_keep]  # (H, N, K, T)
    cols = ids_keep[None, :, None, :].expand(H, N, K, K)
    return rows.gather(3, cols).transpose(0, 1)  # (N, H, K, K)


class AudioLocalEncoder(LocalEncoder):
    """CNN + projection (the shareable part), and what the teacher always copies: the position
    convolution and the ALiBi scales."""

    shareable = ("feature_extractor", "project_features")
    variable_length = True

    def __init__(self, model_config):
        super().__init__()
        settings, D = model_config.settings, model_config.embed_dim
        self.ema_local_encoder = settings.ema_local_encoder
        self.feature_extractor = FeatureExtractor(settings.conv_layers)
        C = self.feature_extractor.out_channels
        self.project_features = nn.Sequential(nn.LayerNorm(C, eps=model_config.norm_eps), nn.Linear(C, D))
        self.pos_conv = ConvPositions(D, settings.conv_pos_width, settings.conv_pos_depth, settings.conv_pos_groups)
        if settings.alibi:
            self.register_buffer("alibi_slopes", alibi_slopes(model_config.num_heads), persistent=False)
            # one learned scale per head, shared by all layers (clamped at >= 0 where it is used)
            self.alibi_scale = nn.Parameter(torch.full((model_config.num_heads,), settings.alibi_scale_init))
        else:
            self.alibi_scale = None

    def reset_parameters(self) -> None:
        # after the BERT init: PyTorch's default for the Linear of project_features; the
        # convolutions keep their own init (kaiming-normal for the CNN)
        self.project_features[1].reset_parameters()

    def num_frames(self, num_samples: int) -> int:
        return self.feature_extractor.num_frames(num_samples)

    def forward(self, wave: Tensor) -> Tensor:
        """(B, L) normalised 16 kHz samples -> (B, T, D)."""
        return self.project_features(self.feature_extractor(wave).transpose(1, 2))

    def add_positions(self, x: Tensor, masked: Tensor | None = None) -> Tensor:
        """x + pos-conv(x) over the full length; a clone's masked frames are zeroed before the
        convolution, so they do not leak into the kept frames' positions."""
        source = x if masked is None else x.masked_fill(masked.unsqueeze(-1), 0.0)
        return x + self.pos_conv(source)

    def attention_bias(self, length: int, ids_keep: Tensor | None = None) -> Tensor | None:
        """ALiBi for `length` frames (1, H, T, T), or gathered for each clone's kept frames
        (N, H, T_keep, T_keep) so that distances stay those of the original frame indices."""
        if self.alibi_scale is None:
            return None
        bias = alibi_bias(self.alibi_slopes, self.alibi_scale, length)  # (H, T, T)
        return bias.unsqueeze(0) if ids_keep is None else gather_bias(bias, ids_keep)


def build_decoder(config) -> Decoder1d:
    decoder_config = config.decoder
    decoder = Decoder1d(config.model.embed_dim, decoder_config.dim, kernel_size=decoder_config.kernel_size,
                        layers=decoder_config.layers, groups=decoder_config.groups, residual=decoder_config.residual,
                        projection_layers=decoder_config.projection_layers)
    decoder.reset_projection()  # PyTorch's default for the output projection, as the reference
    return decoder


def cnn_flops(conv_layers, batch: int, num_samples: int) -> tuple[float, int, int]:
    """The CNN's forward FLOPs on `batch` clips of `num_samples` samples, its frames and channels out."""
    flops, length, c_in = 0.0, num_samples, 1
    for ch, k, s in conv_layers:
        length = (length - k) // s + 1
        flops += 2 * batch * length * c_in * ch * k
        c_in = ch
    return flops, length, c_in


def pos_conv_flops(config, frames: int) -> float:
    """The position convolution's forward FLOPs on one row of `frames` frames."""
    settings, D = config.model.settings, config.model.embed_dim
    k_pos = max(3, settings.conv_pos_width // settings.conv_pos_depth)
    return settings.conv_pos_depth * 2 * frames * D * (D // settings.conv_pos_groups) * k_pos


def step_flops(config, batch: int, num_samples: int) -> float:
    """FLOPs of one update on `batch` utterances of `num_samples` samples (see train/flops.py for
    what is counted): the CNN and projection once per sample, the pos-conv on B*M full-length
    clones, the blocks on the kept frames (student) and on all frames (teacher), the 1-D decoder."""
    model, decoder, settings = config.model, config.decoder, config.model.settings
    M, D = config.masking.num_masks, model.embed_dim
    cnn, T, c_in = cnn_flops(settings.conv_layers, batch, num_samples)  # T = num_frames(..., num_samples)
    keep = T - num_masked(config.masking.kind, T, config.masking.mask_prob)
    local = cnn + 2 * batch * T * c_in * D
    pos = pos_conv_flops(config, T)  # per row
    layers = model.depth + model.prenet_depth
    student = local + batch * M * pos + blocks_forward_flops(batch * M, keep, D, model.mlp_ratio, layers)
    teacher = batch * pos + blocks_forward_flops(batch, T, D, model.mlp_ratio, layers)
    decoder_flops = 0.0
    for i in range(decoder.layers):
        c = D if i == 0 else decoder.dim
        decoder_flops += 2 * batch * M * T * (c // decoder.groups) * decoder.dim * decoder.kernel_size
    proj = [decoder.dim, 2 * decoder.dim, D] if decoder.projection_layers == 2 else [decoder.dim, D]
    decoder_flops += sum(2 * batch * M * T * a * b for a, b in zip(proj, proj[1:]))
    return 3 * (student + decoder_flops) + teacher
