"""A frozen-feature probe for sentence classification, the text counterpart of the image linear
probe: each sentence's block outputs, mean-pooled over its tokens (padding excluded), and a
logistic-regression head (eval/probe.py) trained on the training TSV.

Which features: the output of one block, the mean of all blocks' outputs, or all blocks' outputs
side by side (L * D features). The candidate is
chosen on the dev TSV, by the mean dev accuracy of all the encoders compared (the pre-trained one
and its random init get the same choice); the test TSV is scored only with the chosen features."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...config import Config
from ...eval.probe import linear_probe
from .classification import CLASSIFICATION, pad_batch


@torch.no_grad()
def block_features(encoder: nn.Module, ids: list, batch_size: int = 256) -> Tensor:
    """(L, N, D): the output of each of the L blocks for N token sequences, mean-pooled over each
    sequence's tokens; batched by length."""
    encoder.eval()
    outputs: list[Tensor] = []
    hooks = [block.register_forward_hook(lambda module, args, out: outputs.append(out[0]))
             for block in encoder.blocks]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(encoder.blocks), len(ids), encoder.cfg.embed_dim)
    try:
        for s in range(0, len(order), batch_size):
            idx = torch.as_tensor(order[s:s + batch_size])
            tokens = pad_batch([ids[i] for i in idx])  # (B, T)
            outputs.clear()
            encoder(tokens)
            keep = (~encoder.local_encoder.padding_mask(tokens)).unsqueeze(-1).float()  # (B, T, 1)
            for layer, x in enumerate(outputs):
                x = x[:, encoder.num_extra_tokens:].float()  # (B, T, D)
                out[layer, idx] = (x * keep).sum(1) / keep.sum(1).clamp(min=1)
    finally:
        for hook in hooks:
            hook.remove()
    return out


def sentence_features(encoder: nn.Module, ids: list[list[int]], batch_size: int = 256) -> Tensor:
    """(N, D) mean-pooled outputs of the last block."""
    return block_features(encoder, ids, batch_size)[-1]


def candidates(features: Tensor) -> dict[str, Tensor]:
    """(L, N, D) -> {"block 1": (N, D), ..., "block L": ..., "mean of blocks": (N, D),
    "all blocks": (N, L * D)}."""
    out = {f"block {i + 1}": x for i, x in enumerate(features)}
    if len(features) > 1:
        out["mean of blocks"] = features.mean(0)
        out["all blocks"] = features.transpose(0, 1).flatten(1)  # (N, L, D) -> (N, L * D)
    return out


def probe_task(encoders: dict[str, nn.Module], config: Config, train: str, dev: str, test: str | None = None, *,
               seed: int = 0) -> dict:
    """Each encoder's probe accuracy with every candidate's features on dev, the candidate with the
    best mean dev accuracy over the encoders, and (with a test split) each encoder's test accuracy
    with it. The splits (TSV files or rotten-tomatoes:<split>) are read and tokenised by the
    classification task (text/classification.py; its columns: data.text_columns, data.label_column)."""
    fit = CLASSIFICATION.data(config, train, None, False)
    splits = {"train": fit}
    splits.update({name: CLASSIFICATION.data(config, spec, fit.labels, False)
                   for name, spec in (("dev", dev), ("test", test)) if spec})
    ids = {name: data.dataset.ids for name, data in splits.items()}
    labels = {name: torch.as_tensor(data.dataset.targets) for name, data in splits.items()}
    result: dict = {"classes": len(fit.labels), "num_train": len(ids["train"]), "dev_by_features": {}}
    features = {}
    for name, encoder in encoders.items():
        features[name] = {split: candidates(block_features(encoder, x)) for split, x in ids.items()}
        result["dev_by_features"][name] = {
            c: linear_probe(features[name]["train"][c], labels["train"], features[name]["dev"][c], labels["dev"],
                            seed=seed).test_accuracy
            for c in features[name]["train"]}
    names = list(features[next(iter(encoders))]["train"])
    mean_dev = {c: sum(result["dev_by_features"][e][c] for e in encoders) / len(encoders) for c in names}
    chosen = max(names, key=lambda c: (mean_dev[c], -names.index(c)))  # ties: the earlier candidate
    result["features"] = chosen
    for name in encoders:
        result[name] = {"dev": result["dev_by_features"][name][chosen]}
        if "test" in splits:
            result[name]["test"] = linear_probe(features[name]["train"][chosen], labels["train"],
                                                features[name]["test"][chosen], labels["test"],
                                                seed=seed).test_accuracy
    return result
