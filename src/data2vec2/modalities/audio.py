"""The speech modality (spec 3.3, 4.2, 5.2): the wav2vec 2.0 CNN over the raw 16 kHz waveform,
a convolutional relative-position encoder, ALiBi attention bias and a 1-D conv decoder.

    wave (B, L)  -> CNN (7 convs, stride 320) -> (B, C, T) -> LayerNorm(C) -> Linear(C, D)  = local features
    student      : clone M times, zero masked frames, pos-conv on the full length, keep the
                   unmasked frames (features + their pos-conv output), ALiBi gathered for them
    teacher      : shares the CNN + projection (its input is the student's local features,
                   detached); its own EMA pos-conv, context LayerNorm, ALiBi scales and blocks
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, ModelConfig
from ..encoder import EncoderOutput, Encoder, MaskInfo, gather_tokens, init_bert
from ..nn.decoders import Decoder1d, _ChannelLayerNorm


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
        """floor((L - k) / s) + 1 per layer: 16000 samples -> 49 frames with the base CNN."""
        for _, k, s in self.layers:
            num_samples = (num_samples - k) // s + 1
        return num_samples

    def forward(self, wave: Tensor) -> Tensor:
        x = wave.unsqueeze(1)  # (B, 1, L)
        for conv, norm in zip(self.convs, self.norms):
            x = conv(x)  # (B, C, T')
            y = F.layer_norm(x.transpose(1, 2).float(), norm.normalized_shape, norm.weight.float(),
                             norm.bias.float(), norm.eps)  # fp32 LayerNorm over channels
            x = F.gelu(y.to(x.dtype)).transpose(1, 2)
        return x  # (B, C, T)


class ConvPositions(nn.Module):
    """Relative positions (spec 3.3): `depth` x [Conv1d(D, D, k, groups) -> LayerNorm (no affine)
    -> GELU], not residual inside; the caller adds the output to the features. (N, T, D) -> same."""

    def __init__(self, dim: int, width: int, depth: int, groups: int):
        super().__init__()
        k = max(3, width // depth)  # 95 // 5 = 19
        self.layers = nn.Sequential(*[
            nn.Sequential(nn.Conv1d(dim, dim, k, padding=k // 2, groups=groups), _ChannelLayerNorm(dim), nn.GELU())
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


class AudioEncoder(Encoder):
    local_encoder_modules = ("feature_extractor", "project_features")

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        ac, D = cfg.audio, cfg.embed_dim
        # spec 2: the teacher shares the CNN and the projection, unless the config gives it its own
        self.ema_local_encoder = ac.ema_local_encoder
        self.feature_extractor = FeatureExtractor(ac.conv_layers)
        C = self.feature_extractor.out_channels
        self.project_features = nn.Sequential(nn.LayerNorm(C, eps=cfg.norm_eps), nn.Linear(C, D))
        self.pos_conv = ConvPositions(D, ac.conv_pos_width, ac.conv_pos_depth, ac.conv_pos_groups)
        if ac.alibi:
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.num_heads), persistent=False)
            # one learned scale per head, shared by all layers (clamped at >= 0 where it is used)
            self.alibi_scale = nn.Parameter(torch.full((cfg.num_heads,), ac.alibi_scale_init))
        else:
            self.alibi_scale = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # BERT init for Linear and LayerNorm (spec 3.5), then the PyTorch default for the Linear of
        # project_features; convolutions keep their own init (kaiming-normal for the CNN).
        self.apply(init_bert)
        self.project_features[1].reset_parameters()

    def num_frames(self, num_samples: int) -> int:
        return self.feature_extractor.num_frames(num_samples)

    def local_features(self, wave: Tensor) -> Tensor:
        """(B, L) normalised 16 kHz samples -> (B, T, D)."""
        return self.project_features(self.feature_extractor(wave).transpose(1, 2))

    def full_bias(self, length: int) -> Tensor | None:
        if self.alibi_scale is None:
            return None
        return alibi_bias(self.alibi_slopes, self.alibi_scale, length)  # (H, T, T)

    def forward_local(self, local_features: Tensor, padding_mask: Tensor | None = None) -> EncoderOutput:
        """Unmasked encoding (the teacher, evaluation): pos-conv added, full-length ALiBi."""
        x = local_features + self.pos_conv(local_features)
        bias = self.full_bias(x.shape[1])
        return self.contextualize(x, padding_mask, None if bias is None else bias.unsqueeze(0))

    def forward_masked(self, local_features: Tensor, mask_info: MaskInfo, num_masks: int,
                       padding_mask: Tensor | None = None) -> EncoderOutput:
        """The student: clone M times, zero the masked frames, run the pos-conv on the full length,
        keep the unmasked frames plus their pos-conv output, ALiBi gathered for them. (Pre-training
        batches are cropped to their shortest clip, so there is no padding here.)"""
        if padding_mask is not None:
            raise ValueError("speech pre-training batches are cropped, never padded")
        x = local_features.repeat_interleave(num_masks, dim=0)  # (B*M, T, D), sample-major
        T, K = x.shape[1], mask_info.ids_keep.shape[1]
        masked = mask_info.ids_restore >= K  # (B*M, T) True = masked
        pos = self.pos_conv(x.masked_fill(masked.unsqueeze(-1), 0.0))  # (B*M, T, D)
        x = gather_tokens(x, mask_info.ids_keep) + gather_tokens(pos, mask_info.ids_keep)  # (B*M, K, D)
        bias = self.full_bias(T)
        return self.contextualize(x, None, None if bias is None else gather_bias(bias, mask_info.ids_keep))


def build_audio_parts(config: Config) -> tuple[AudioEncoder, Decoder1d]:
    encoder = AudioEncoder(config.model)
    d = config.decoder
    decoder = Decoder1d(config.model.embed_dim, d.dim, kernel_size=d.kernel_size, layers=d.layers,
                        groups=d.groups, residual=d.residual)
    decoder.reset_projection()  # PyTorch default for the output projection (spec 3.5)
    return encoder, decoder
