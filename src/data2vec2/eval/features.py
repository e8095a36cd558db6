"""Frozen features of an image encoder, for the linear probe, kNN and `embed`."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..data.images import EvalImageDataset, EvalTransform, ImageSource


@torch.no_grad()
def extract_features(encoder: nn.Module, source: ImageSource, *, image_size: int, mean, std, pool: str = "mean",
                     batch_size: int = 512, device: str | torch.device = "cpu", bf16: bool = False,
                     num_workers: int = 0, progress: bool = False, desc: str = "features") -> tuple[Tensor, Tensor]:
    """Returns (features (N, D) float32, labels (N,) int64) for every image of `source`."""
    dataset = EvalImageDataset(source, EvalTransform(image_size, mean, std))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    encoder = encoder.to(device).eval()
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    feats, labels = [], []
    for images, y in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        with autocast:
            f = encoder.embed(images.to(device), pool=pool)
        feats.append(f.float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels).long()


def pixel_features(source: ImageSource) -> tuple[Tensor, Tensor]:
    """Raw pixels as features (N, H*W*C) scaled to [0, 1]: the reference point for probes."""
    import numpy as np

    images = np.stack([source.get(i) for i in range(len(source))])  # (N, H, W, C) uint8
    labels = torch.tensor([source.label(i) for i in range(len(source))], dtype=torch.long)
    return torch.from_numpy(images.reshape(len(images), -1)).float() / 255.0, labels
