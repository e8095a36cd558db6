"""Shared pieces of the audio evaluations: labelled clips, padded batches, encoder features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...errors import DataError
from .data import load_audio, normalize, open_audio_source


@dataclass
class LabelledClips:
    waves: list[np.ndarray]  # normalised 16 kHz
    labels: list[str]  # transcript or word


def load_clips(manifest: str, *, limit: int = 0, max_samples: int = 0, min_samples: int = 400) -> LabelledClips:
    """Decode every clip of a TSV manifest whose third column is its label (a transcript or a
    word). `max_samples` drops longer clips (0: keep all)."""
    source = open_audio_source(manifest, min_samples=min_samples, on_bad_file="stop")
    if source.texts is None:
        raise DataError(f"{manifest}: expected a third column with the transcript or label of each file")
    waves, labels = [], []
    for path, n, text in zip(source.paths, source.lengths, source.texts):
        if max_samples and n > max_samples:
            continue
        waves.append(normalize(load_audio(path)))
        labels.append(text)
        if limit and len(waves) >= limit:
            break
    return LabelledClips(waves, labels)


def pad_batch(waves: list[np.ndarray], num_frames) -> tuple[Tensor, Tensor, Tensor]:
    """Zero-pad to the longest: wave (B, L), frame padding mask (B, T) True = padding, and the
    frame count of each clip (B,)."""
    L = max(len(w) for w in waves)
    batch = torch.zeros(len(waves), L)
    for i, w in enumerate(waves):
        batch[i, :len(w)] = torch.from_numpy(w)
    frames = torch.tensor([num_frames(len(w)) for w in waves])
    T = num_frames(L)
    padding = torch.arange(T)[None, :] >= frames[:, None]
    return batch, padding, frames


def encode(encoder, wave: Tensor, padding: Tensor | None) -> Tensor:
    """Unmasked encoder output (B, T, D) of a padded batch; padded frames are zeroed before the
    position convolution and ignored by attention."""
    local_features = encoder.local_features(wave)
    if padding is not None:
        local_features = local_features.masked_fill(padding.unsqueeze(-1), 0.0)
    return encoder.forward_unmasked(local_features, padding if padding is not None and padding.any() else None).x


@torch.no_grad()
def pooled_features(encoder, waves: list[np.ndarray], batch_size: int = 32) -> Tensor:
    """Mean over the (unpadded) frames of the encoder output: (N, D). Clips are batched by length."""
    encoder.eval()
    order = np.argsort([len(w) for w in waves])
    out = torch.zeros(len(waves), encoder.cfg.embed_dim)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        wave, padding, frames = pad_batch([waves[i] for i in idx], encoder.local_encoder.num_frames)
        x = encode(encoder, wave, padding)
        keep = (~padding).unsqueeze(-1).float()
        out[torch.as_tensor(idx)] = (x * keep).sum(1) / frames[:, None].float()
    return out
