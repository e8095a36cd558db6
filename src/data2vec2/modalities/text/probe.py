"""A frozen-feature probe for sentence classification: each sentence's encoder output, mean-pooled
over its tokens (padding excluded), and a logistic-regression head (eval/probe.py) trained on the
training TSV and scored on the dev and test TSVs. Cheap enough to run on every checkpoint."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...config import Config
from ...errors import DataError
from ...eval.probe import linear_probe
from .data import load_tokenizer
from .finetune import class_index, encode, pad_batch, read_tsv


@torch.no_grad()
def sentence_features(encoder: nn.Module, ids: list[list[int]], batch_size: int = 256) -> Tensor:
    """(N, D) mean-pooled features of N token sequences, batched by length."""
    encoder.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(ids), encoder.cfg.embed_dim)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        out[torch.as_tensor(idx)] = encoder.embed(pad_batch([ids[i] for i in idx]), pool="mean").float()
    return out


def probe_task(encoder: nn.Module, config: Config, train_tsv: str, dev_tsv: str, test_tsv: str | None = None, *,
               text_columns: tuple[str, ...] | None = None, label_column: str | None = None, seed: int = 0) -> dict:
    """Accuracy of a linear head on frozen features: {"dev": ..., "test": ...} (test if given)."""
    if not config.data.tokenizer:
        raise DataError("the model has no tokenizer (config data.tokenizer)")
    tokenizer = load_tokenizer(config.data.tokenizer)
    train = read_tsv(train_tsv, text_columns, label_column)
    tasks = {name: read_tsv(path, train.columns, train.label_column)
             for name, path in (("dev", dev_tsv), ("test", test_tsv)) if path}
    index = class_index(train, tasks)
    max_length = config.model.text.max_positions

    def features_and_labels(task) -> tuple[Tensor, Tensor]:
        x = sentence_features(encoder, encode(tokenizer, task.texts, max_length))
        return x, torch.tensor([index[label] for label in task.labels])

    train_x, train_y = features_and_labels(train)
    out = {"classes": len(index), "num_train": len(train_y)}
    for name, task in tasks.items():
        out[name] = linear_probe(train_x, train_y, *features_and_labels(task), seed=seed).test_accuracy
    return out
