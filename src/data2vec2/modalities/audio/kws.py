"""Keyword spotting with frozen features (`data2vec2 kws`): each clip's encoder output, mean-pooled
over its frames, and a linear head (multinomial logistic regression, eval/probe.py); the clips and
their classes are read by the utterance-classification task (classification.py), so any labelled
manifest works. Fine-tuning the whole encoder instead: `data2vec2 finetune audio-cls-tiny`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...config import Config
from ...errors import DataError
from ...eval.probe import linear_probe
from ...modality import TaskData
from .classification import CLASSIFICATION
from .labelled import encode_clips


@torch.no_grad()
def pooled_features(encoder: nn.Module, data: TaskData, batch_size: int = 32) -> Tensor:
    """(N, D): the mean over each clip's frames (padding excluded) of the unmasked encoder output;
    clips batched by length."""
    encoder.eval()
    n = len(data.dataset)
    order = sorted(range(n), key=lambda i: data.lengths[i])
    out = torch.zeros(n, encoder.cfg.embed_dim)
    for s in range(0, n, batch_size):
        batch = data.collate([data.dataset[i] for i in order[s:s + batch_size]])
        if batch["errors"]:
            raise DataError(batch["errors"][0])
        x = encode_clips(encoder, batch, torch.no_grad())  # (B, T, D)
        keep = (~batch["padding"]).unsqueeze(-1).float()  # (B, T, 1)
        out[batch["index"]] = (x.float() * keep).sum(1) / keep.sum(1)
    return out


def evaluate_kws(encoders: dict, config: Config, train: str, test: str, seed: int = 0) -> dict:
    """Accuracy of a linear head on each encoder's frozen features ({"pretrained": enc, ...}) of the
    manifests `train` and `test`."""
    fit = CLASSIFICATION.data(config, train, None, False)
    held = CLASSIFICATION.data(config, test, fit.labels, False)
    train_y, test_y = (torch.as_tensor(d.dataset.targets) for d in (fit, held))
    result = {"classes": len(fit.labels), "num_train": len(train_y), "num_test": len(test_y)}
    for name, encoder in encoders.items():
        r = linear_probe(pooled_features(encoder, fit), train_y, pooled_features(encoder, held), test_y, seed=seed)
        result[name] = {"accuracy": r.test_accuracy, "val_accuracy": r.val_accuracy}
    return result
