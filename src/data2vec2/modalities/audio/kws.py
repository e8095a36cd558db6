"""Keyword spotting (utterance classification): the mean-pooled output of a frozen encoder and a
linear head (multinomial logistic regression, eval/probe.py), trained on synthetic spoken words
of some voices and scored on words spoken by held-out voices."""

from __future__ import annotations

import torch

from ...eval.probe import linear_probe
from .evaluate import LabelledClips, pooled_features


def evaluate_kws(encoders: dict, train: LabelledClips, test: LabelledClips, seed: int = 0) -> dict:
    """Accuracy of a linear head on each encoder's frozen features ({"pretrained": enc, ...})."""
    words = sorted(set(train.labels))
    index = {w: i for i, w in enumerate(words)}
    train_y = torch.tensor([index[w] for w in train.labels])
    test_y = torch.tensor([index[w] for w in test.labels])
    result = {"classes": len(words), "num_train": len(train_y), "num_test": len(test_y)}
    for name, encoder in encoders.items():
        train_x = pooled_features(encoder, train.waves)
        test_x = pooled_features(encoder, test.waves)
        r = linear_probe(train_x, train_y, test_x, test_y, seed=seed)
        result[name] = {"accuracy": r.test_accuracy, "val_accuracy": r.val_accuracy}
    return result
