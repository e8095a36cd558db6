"""FLOP counts of a training step and the machine's measured matmul rate, for MFU.

MFU = (model FLOPs per step x steps per second) / (measured dense matmul FLOP/s in the training
precision). Counted: every matmul and convolution (2 FLOPs per multiply-add) of the teacher's
forward pass, and of the student's and decoder's forward and backward passes (backward = 2x
forward). Elementwise work, norms and softmax are not counted.
"""

from __future__ import annotations

import time

import torch

from ..config import Config


def _blocks_forward(rows: int, tokens: int, dim: int, mlp_ratio: float, depth: int) -> float:
    linear = 2 * rows * tokens * dim * dim * (4 + 2 * mlp_ratio)  # qkv + proj + 2 MLP matmuls
    attention = 2 * 2 * rows * tokens * tokens * dim  # scores + weighted sum
    return depth * (linear + attention)


def image_step_flops(config: Config, batch: int, num_keep: int) -> float:
    """FLOPs of one update on `batch` images with `num_keep` kept patches per clone."""
    m, d, ic = config.model, config.decoder, config.model.image
    M, D = config.masking.num_masks, m.embed_dim
    T = (ic.image_size // ic.patch_size) ** 2
    layers = m.depth + m.prenet_depth
    patch = 2 * batch * T * D * ic.in_channels * ic.patch_size**2
    student = patch + _blocks_forward(batch * M, 1 + num_keep, D, m.mlp_ratio, layers)
    teacher = patch + _blocks_forward(batch, 1 + T, D, m.mlp_ratio, layers)
    decoder = 0.0
    for i in range(d.layers):
        c_in = D if i == 0 else d.dim
        decoder += 2 * batch * M * T * (c_in // d.groups) * d.dim * d.kernel_size**2
    decoder += 2 * batch * M * T * d.dim * D
    return 3 * (student + decoder) + teacher


def audio_step_flops(config: Config, batch: int, num_samples: int, num_frames: int) -> float:
    """FLOPs of one update on `batch` utterances of `num_samples` samples (`num_frames` frames):
    the CNN and projection once per sample, the pos-conv on B*M full-length clones, the blocks
    on the kept frames (student) and on all frames (teacher), the 1-D decoder."""
    m, d, ac = config.model, config.decoder, config.model.audio
    M, D, T = config.masking.num_masks, m.embed_dim, num_frames
    keep = T - int(T * config.masking.mask_prob)
    cnn, length, c_in = 0.0, num_samples, 1
    for ch, k, s in ac.conv_layers:
        length = (length - k) // s + 1
        cnn += 2 * batch * length * c_in * ch * k
        c_in = ch
    local = cnn + 2 * batch * T * c_in * D
    k_pos = max(3, ac.conv_pos_width // ac.conv_pos_depth)
    pos = ac.conv_pos_depth * 2 * T * D * (D // ac.conv_pos_groups) * k_pos  # per row
    layers = m.depth + m.prenet_depth
    student = local + batch * M * pos + _blocks_forward(batch * M, keep, D, m.mlp_ratio, layers)
    teacher = batch * pos + _blocks_forward(batch, T, D, m.mlp_ratio, layers)
    decoder = 0.0
    for i in range(d.layers):
        c = D if i == 0 else d.dim
        decoder += 2 * batch * M * T * (c // d.groups) * d.dim * d.kernel_size
    decoder += 2 * batch * M * T * d.dim * D
    return 3 * (student + decoder) + teacher


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 0.5) -> float:
    """Dense matmul throughput (FLOP/s) of this machine in `dtype`, measured now."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)  # warm up
    n, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 3:
            return 2 * size**3 * n / elapsed
