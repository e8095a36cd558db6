"""Sentence(-pair) classification and regression fine-tuning (`Data2VecTextClassificationModel`), GLUE-style.

    head   : RoBERTa's, on the <s> token: dropout -> Linear(D, D) -> tanh -> dropout -> Linear(D, C)
    encoder: keeps its pre-training dropouts; no masking
    optim  : AdamW (0.9, 0.98), eps 1e-6, weight decay 0.1; linear warmup over 6% of the updates,
             then linear decay to 0
    metrics: accuracy, F1 (two classes), Matthews correlation; Pearson and Spearman for regression

`finetune_compare` runs the same recipe (same seed, same batches) on the pre-trained encoder and on
a randomly initialised one, and reports both. `finetune_seeds` runs a small learning-rate grid over
several seeds for each of them, chooses each one's learning rate on dev, and reports the mean and
spread over the seeds.
"""

from __future__ import annotations

import copy
import csv
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...config import Config
from ...errors import DataError
from .data import load_tokenizer
from .encoder import PAD

# GLUE column names, tried in this order when --text-columns is not given
KNOWN_TEXT_COLUMNS = [("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
                      ("premise", "hypothesis"), ("sentence",), ("text",)]
KNOWN_LABEL_COLUMNS = ["label", "gold_label"]


@dataclass
class TsvTask:
    texts: list[tuple[str, ...]]
    labels: list[str]
    columns: tuple[str, ...]
    label_column: str


def read_tsv(path: str | Path, text_columns: tuple[str, ...] | None = None, label_column: str | None = None) -> TsvTask:
    """A GLUE-format TSV: a header row, tab-separated, no quoting."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such task file")
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise DataError(f"{path}: empty task file")
    header = rows[0]
    if text_columns is None:
        text_columns = next((c for c in KNOWN_TEXT_COLUMNS if all(n in header for n in c)), None)
        if text_columns is None:
            raise DataError(f"{path}: no known text column in the header {header}; pass --text-columns")
    if label_column is None:
        label_column = next((c for c in KNOWN_LABEL_COLUMNS if c in header), None)
        if label_column is None:
            raise DataError(f"{path}: no label column ('label' or 'gold_label') in the header {header}; pass --label-column")
    for name in (*text_columns, label_column):
        if name not in header:
            raise DataError(f"{path}: unknown column '{name}'; the header has {header}")
    idx = [header.index(c) for c in text_columns]
    li = header.index(label_column)
    texts, labels = [], []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{n}: {len(row)} fields, the header has {len(header)}")
        texts.append(tuple(row[i] for i in idx))
        labels.append(row[li])
    if not texts:
        raise DataError(f"{path}: no examples after the header")
    return TsvTask(texts, labels, tuple(text_columns), label_column)


def class_index(train: TsvTask, others: dict[str, TsvTask]) -> dict[str, int]:
    """Each class of the training file -> its index (sorted); a label of another split that the
    training file lacks is a DataError."""
    classes = sorted(set(train.labels))
    index = {c: i for i, c in enumerate(classes)}
    for name, task in others.items():
        unknown = sorted(set(task.labels) - set(index))
        if unknown:
            raise DataError(f"{name} labels {unknown[:5]} do not occur in the training file (labels {classes[:10]})")
    return index


def _is_regression(labels: list[str]) -> bool:
    try:
        values = [float(x) for x in labels]
    except ValueError:
        return False
    return any(v != int(v) for v in values)


class ClassificationHead(nn.Module):
    def __init__(self, dim: int, num_outputs: int, dropout: float = 0.0):
        super().__init__()
        self.dense, self.out, self.dropout = nn.Linear(dim, dim), nn.Linear(dim, num_outputs), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(torch.tanh(self.dense(self.dropout(x)))))


class SentenceClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_outputs: int, pooler_dropout: float = 0.0):
        super().__init__()
        self.encoder = encoder
        self.head = ClassificationHead(encoder.cfg.embed_dim, num_outputs, pooler_dropout)
        for linear in (self.head.dense, self.head.out):  # BERT init, as the encoder's
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(tokens).x[:, 0])  # the <s> token


def encode(tokenizer, texts: list[tuple[str, ...]], max_length: int) -> list[list[int]]:
    """<s> A </s> or <s> A </s></s> B </s>, truncated to max_length tokens."""
    tokenizer.enable_truncation(max_length)
    if len(texts[0]) == 1:
        encs = tokenizer.encode_batch([t[0] for t in texts])
    else:
        encs = tokenizer.encode_batch([(t[0], t[1]) for t in texts])
    return [e.ids for e in encs]


def pad_batch(seqs: list[list[int]]) -> torch.Tensor:
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s)
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (for Spearman's correlation)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def metrics(pred: np.ndarray, gold: np.ndarray, regression: bool, num_classes: int) -> dict:
    if regression:
        return {"pearson": float(np.corrcoef(pred, gold)[0, 1]),
                "spearman": float(np.corrcoef(_ranks(pred), _ranks(gold))[0, 1])}
    out = {"accuracy": float((pred == gold).mean())}
    if num_classes == 2:
        tp = float(((pred == 1) & (gold == 1)).sum())
        fp, fn = float(((pred == 1) & (gold == 0)).sum()), float(((pred == 0) & (gold == 1)).sum())
        out["f1"] = 2 * tp / max(2 * tp + fp + fn, 1.0)
    # Matthews correlation, multi-class form (Gorodkin): equals the binary MCC for two classes
    C = np.zeros((num_classes, num_classes))
    np.add.at(C, (gold, pred), 1)
    t, p, c, s = C.sum(1), C.sum(0), np.trace(C), C.sum()
    denom = math.sqrt(max(s * s - (p * p).sum(), 0) * max(s * s - (t * t).sum(), 0))
    out["mcc"] = float((c * s - (t * p).sum()) / denom) if denom > 0 else 0.0
    return out


@dataclass
class Recipe:
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 32
    weight_decay: float = 0.1
    warmup: float = 0.06
    max_length: int = 128
    pooler_dropout: float = 0.0
    seed: int = 0
    threads: int = 0


@dataclass
class Split:
    ids: list[list[int]]
    y: np.ndarray
    name: str = ""


def _predict(model: SentenceClassifier, split: Split, batch_size: int, regression: bool) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(split.ids), batch_size):
            logits = model(pad_batch(split.ids[i:i + batch_size]))
            out.append(logits[:, 0] if regression else logits.argmax(-1))
    return torch.cat(out).numpy()


def finetune(encoder: nn.Module, train: Split, evals: list[Split], *, num_outputs: int, regression: bool,
             recipe: Recipe, progress: bool = True, desc: str = "finetune") -> dict:
    from tqdm import tqdm

    torch.manual_seed(recipe.seed)
    model = SentenceClassifier(encoder, num_outputs, recipe.pooler_dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(train.ids) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    warmup = max(1, int(recipe.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(total - warmup, 1)))
    gen = np.random.default_rng(recipe.seed)
    bar = tqdm(total=total, desc=desc, disable=not progress, dynamic_ncols=True, file=sys.stdout)
    history, start = [], time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        order = gen.permutation(len(train.ids))
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            tokens = pad_batch([train.ids[j] for j in idx])
            logits = model(tokens)
            if regression:
                loss = F.mse_loss(logits[:, 0], torch.tensor(train.y[idx], dtype=torch.float32))
            else:
                loss = F.cross_entropy(logits, torch.tensor(train.y[idx], dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        row = {"epoch": epoch + 1}
        for split in evals:
            row[split.name] = metrics(_predict(model, split, 128, regression), split.y, regression, num_outputs)
        history.append(row)
    bar.close()
    return {"final": history[-1], "history": history, "seconds": time.perf_counter() - start, "updates": total}


@dataclass
class TaskData:
    train: Split
    evals: list[Split]  # dev, then test if given
    num_outputs: int
    regression: bool
    info: dict


def load_task(config: Config, train_tsv: str, dev_tsv: str, test_tsv: str | None, text_columns: tuple[str, ...] | None,
              label_column: str | None, max_length: int) -> TaskData:
    """The TSVs tokenised with the model's tokenizer, labels as class indices (or floats)."""
    if not config.data.tokenizer:
        raise DataError("the model has no tokenizer (config data.tokenizer)")
    tok = load_tokenizer(config.data.tokenizer)
    max_len = min(max_length, config.model.text.max_positions)
    train = read_tsv(train_tsv, text_columns, label_column)
    columns, label_col = train.columns, train.label_column
    others = [("dev", dev_tsv)] + ([("test", test_tsv)] if test_tsv else [])
    tasks = {name: read_tsv(p, columns, label_col) for name, p in others}
    regression = _is_regression(train.labels)
    classes = sorted(set(train.labels))
    if regression:
        to_y = lambda labels: np.array([float(x) for x in labels], dtype=np.float32)  # noqa: E731
        num_outputs = 1
    else:
        index = class_index(train, tasks)
        to_y = lambda labels: np.array([index[x] for x in labels], dtype=np.int64)  # noqa: E731
        num_outputs = len(classes)
    train_split = Split(encode(tok, train.texts, max_len), to_y(train.labels), "train")
    evals = [Split(encode(tok, t.texts, max_len), to_y(t.labels), name) for name, t in tasks.items()]
    info = {"train": str(train_tsv), "dev": str(dev_tsv), "test": test_tsv, "columns": list(columns),
            "label_column": label_col, "regression": regression, "classes": None if regression else classes,
            "num_train": len(train_split.ids), **{f"num_{s.name}": len(s.ids) for s in evals}}
    return TaskData(train_split, evals, num_outputs, regression, info)


def finetune_compare(encoder: nn.Module, config: Config, train_tsv: str, dev_tsv: str, test_tsv: str | None = None, *,
                     text_columns: tuple[str, ...] | None = None, label_column: str | None = None,
                     recipe: Recipe | None = None, baseline: nn.Module | None = None, progress: bool = True) -> dict:
    """Fine-tune `encoder` (and `baseline`, its randomly initialised twin, with the same recipe) on a
    TSV task."""
    recipe = recipe or Recipe()
    if recipe.threads > 0:
        torch.set_num_threads(recipe.threads)
    task = load_task(config, train_tsv, dev_tsv, test_tsv, text_columns, label_column, recipe.max_length)
    result = {"task": task.info, "recipe": recipe.__dict__}
    runs = [("pretrained", encoder)]
    if baseline is not None:
        runs.append(("random_init", baseline))
    for name, enc in runs:
        result[name] = finetune(copy.deepcopy(enc), task.train, task.evals, num_outputs=task.num_outputs,
                                regression=task.regression, recipe=recipe, progress=progress, desc=name)
    return result


def score(metrics: dict) -> float:
    """The number a learning rate is chosen by: accuracy, or Pearson's r for regression."""
    return metrics["accuracy"] if "accuracy" in metrics else metrics["pearson"]


def finetune_seeds(encoder: nn.Module, config: Config, train_tsv: str, dev_tsv: str, test_tsv: str | None = None, *,
                   lrs: list[float], seeds: list[int], random_init: Callable[[int], nn.Module] | None = None,
                   text_columns: tuple[str, ...] | None = None, label_column: str | None = None,
                   recipe: Recipe | None = None, progress: bool = True) -> dict:
    """Fine-tune `encoder` (and, with `random_init`, a random encoder built from each seed) once per
    learning rate of `lrs` and seed of `seeds`. For each encoder on its own, the learning rate with the
    best mean dev score over the seeds is chosen; its mean and spread over the seeds are reported, on
    dev and test. Test never chooses anything."""
    recipe = recipe or Recipe()
    if recipe.threads > 0:
        torch.set_num_threads(recipe.threads)
    task = load_task(config, train_tsv, dev_tsv, test_tsv, text_columns, label_column, recipe.max_length)
    result = {"task": task.info, "recipe": {k: v for k, v in recipe.__dict__.items() if k not in ("lr", "seed")},
              "lrs": list(lrs), "seeds": list(seeds)}
    builders = {"pretrained": lambda seed: encoder}
    if random_init is not None:
        builders["random_init"] = random_init
    for name, build in builders.items():
        runs = []
        for lr in lrs:
            for seed in seeds:
                out = finetune(copy.deepcopy(build(seed)), task.train, task.evals, num_outputs=task.num_outputs,
                               regression=task.regression, recipe=replace(recipe, lr=lr, seed=seed),
                               progress=progress, desc=f"{name} lr {lr:g} seed {seed}")
                runs.append({"lr": lr, "seed": seed, "final": out["final"], "seconds": round(out["seconds"], 1)})
        dev_mean = {lr: float(np.mean([score(r["final"]["dev"]) for r in runs if r["lr"] == lr])) for lr in lrs}
        chosen = max(lrs, key=lambda lr: (dev_mean[lr], -lrs.index(lr)))  # ties: the earlier one
        summary = {"chosen_lr": chosen, "dev_mean_by_lr": {f"{lr:g}": v for lr, v in dev_mean.items()}}
        for split in [s.name for s in task.evals]:
            values = [score(r["final"][split]) for r in runs if r["lr"] == chosen]
            summary[split] = values
            summary[f"{split}_mean"] = float(np.mean(values))
            summary[f"{split}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        result[name] = {**summary, "runs": runs}
    return result
