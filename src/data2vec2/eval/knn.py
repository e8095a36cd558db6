"""Weighted k-nearest-neighbour classifier on frozen features (DINO protocol).

Features are L2-normalised, neighbours are found by cosine similarity, and each of
the ``k`` neighbours votes for its label with weight ``exp(sim / temperature)``.
Test features are processed in chunks of ``batch_size`` so the similarity matrix
held in memory is at most ``batch_size x N_train``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from .probe import check_features

__all__ = ["knn_predict", "knn_accuracy"]


@torch.no_grad()
def knn_predict(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, *, k: int = 20,
    temperature: float = 0.07, batch_size: int = 1024, num_classes: int | None = None,
) -> Tensor:
    """Predict a label for every row of ``test_x``; ties go to the smallest label.

    ``k`` is clamped to the number of training samples.
    """
    check_features(train_x, train_y, "train")
    if test_x.dim() != 2 or test_x.shape[1] != train_x.shape[1]:
        raise ValueError(f"test_x must be (M, {train_x.shape[1]}), got {tuple(test_x.shape)}")
    if not torch.isfinite(test_x).all():
        raise ValueError("test_x contains NaN or infinite values")
    if k < 1 or temperature <= 0 or batch_size < 1:
        raise ValueError("k and batch_size must be >= 1 and temperature > 0")
    k = min(k, train_x.shape[0])
    num_classes = num_classes or int(train_y.max()) + 1
    train = F.normalize(train_x.detach().float(), dim=1)
    train_y = train_y.detach().to(train.device, torch.long)
    preds = []
    for i in range(0, test_x.shape[0], batch_size):
        query = F.normalize(test_x[i : i + batch_size].detach().float().to(train.device), dim=1)
        sim, idx = (query @ train.T).topk(k, dim=1)
        votes = torch.zeros(query.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, train_y[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def knn_accuracy(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, *, k: int = 20,
    temperature: float = 0.07, batch_size: int = 1024,
) -> float:
    """Fraction of ``test_x`` whose weighted-kNN prediction equals ``test_y``."""
    check_features(test_x, test_y, "test")
    pred = knn_predict(train_x, train_y, test_x, k=k, temperature=temperature, batch_size=batch_size)
    return (pred.cpu() == test_y.cpu()).float().mean().item()
