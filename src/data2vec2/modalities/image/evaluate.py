"""Image evaluation over a frozen encoder: features, linear probe and k-nearest-neighbour accuracy."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ...config import Config
from ...errors import DataError
from ...eval.knn import knn_accuracy
from ...eval.probe import linear_probe
from .data import EvalImageDataset, EvalTransform, ImageSource, Subset, open_image_source


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
    images = np.stack([source.get(i) for i in range(len(source))])  # (N, H, W, C) uint8
    labels = torch.tensor([source.label(i) for i in range(len(source))], dtype=torch.long)
    return torch.from_numpy(images.reshape(len(images), -1)).float() / 255.0, labels


def features_for(encoder, config: Config, spec: str, *, pool: str, device: str, progress: bool, bf16: bool,
                 limit: int = 0, seed: int = 0):
    """Features of the images `spec` names; `limit` > 0: of a seeded sample of that many."""
    source = open_image_source(spec, Path(config.data.cache_dir), config.data.settings.channels)
    if limit > 0:
        source = Subset.sample(source, limit, seed)
    image, data = config.model.settings, config.data.settings
    return extract_features(encoder, source, image_size=image.image_size, mean=data.mean, std=data.std, pool=pool,
                            device=device, bf16=bf16, progress=progress, desc=f"features {spec}")


def evaluate_encoder(encoder, config: Config, train_spec: str, test_spec: str, *, pool: str = "mean",
                     knn: bool = True, probe: bool = True, device: str = "cpu", bf16: bool = False,
                     progress: bool = True, seed: int = 0, train_limit: int = 0) -> dict:
    """Linear-probe and kNN accuracy of a frozen encoder (fractions in [0, 1]). `train_limit` > 0:
    the probe and kNN learn from a seeded sample of that many training images (the test set is
    always whole)."""
    train_x, train_y = features_for(encoder, config, train_spec, pool=pool, device=device, progress=progress,
                                    bf16=bf16, limit=train_limit, seed=seed)
    test_x, test_y = features_for(encoder, config, test_spec, pool=pool, device=device, progress=progress, bf16=bf16)
    if (train_y < 0).any() or (test_y < 0).any():
        raise DataError("evaluation needs labelled images: put each class in its own sub-folder")
    result: dict = {"num_train": len(train_y), "num_test": len(test_y), "pool": pool}
    if probe:
        r = linear_probe(train_x, train_y, test_x, test_y, seed=seed)
        result.update(probe_acc=r.test_accuracy, probe_val_acc=r.val_accuracy, probe_weight_decay=r.weight_decay)
    if knn:
        result["knn_acc"] = knn_accuracy(train_x, train_y, test_x, test_y)
    return result
