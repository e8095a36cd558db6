"""What a modality supplies to the modality-agnostic core: one small record per modality.

The records are listed in one plain table, `data2vec2.modalities.MODALITIES`; that table is the only
place where a modality is chosen by its name. The core (model, encoder, train/, config, export)
takes a record as an argument and calls its functions; it never imports a modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class PretrainingData:
    """What the training loop needs from a modality's data pipeline."""

    dataset: torch.utils.data.Dataset  # items: {"index": i, "inputs": ...} or {"index": i, "error": message}
    collate: Any  # set_epoch(epoch); __call__(items) -> the batch dict of data/collate.py
    step_flops: float  # model FLOPs of one update at the configured global batch
    lengths: list[int] | None = None  # per-sample sizes: batches are then bucketed by length (audio)
    skipped_before: int = 0  # unreadable files skipped while the data was read (data.on_bad_file=skip)


@dataclass
class TaskData:
    """Labelled data of a fine-tuning task, as the training loop and the evaluation read it."""

    dataset: torch.utils.data.Dataset  # items: {"index", "inputs", "target"} or {"index", "error"}
    collate: Any  # set_epoch(epoch); __call__(items) -> {"inputs", "target", "count", "index", "errors", "exhausted"}
    labels: list[str]  # the classes in order (or the CTC vocabulary): what the head's outputs mean
    lengths: list[int] | None = None  # per-sample sizes: batches are then bucketed by length (audio)


@dataclass(frozen=True)
class Task:
    """A fine-tuning task a modality supplies (`finetune.task`); the core runs it (finetune.py)."""

    name: str
    # (config, spec, labels, train) -> TaskData: the data named `spec` (data.train, finetune.valid, a
    # test split); `labels`: those of the training data (None: this is the training data, which
    # defines them); `train`: with augmentation. A bad spec, an unlabelled sample, a label the
    # training data lacks: DataError naming it
    data: Callable[..., TaskData]
    # (encoder, config, labels) -> the objective: forward(batch) -> LossOutput over the batch, and
    # predict(batch) -> one output per sample (CPU); `encoder`, `trained`, parts() as every objective
    build: Callable[..., nn.Module]
    # (outputs, targets, labels) -> {metric: value}: every metric of the task on a split
    score: Callable[..., dict[str, float]]
    metric: str  # the one that chooses the best checkpoint (unless finetune.metric names another)
    metrics: tuple[str, ...]  # every one `score` gives
    # (config, mean sample size: TaskData.lengths' mean, 0 without lengths) -> FLOPs of one update at
    # the configured batch
    step_flops: Callable[[Any, float], float]
    # (config) -> (a training batch of train.batch_size random samples through the task's collate, the
    # labels it uses, the sample size to give step_flops): what `data2vec2 benchmark` times
    synthetic_batch: Callable[[Any], tuple[dict, list[str], float]]
    # (config, items, labels) -> (TaskData of the items, each one's name, whether they carry labels):
    # what `data2vec2 predict` and FinetunedModel.predict read. Items: paths (files, folders, lists,
    # manifests, TSVs) or in-memory samples (arrays, texts); labelled ones get their true targets
    # (scored with `score`), the others placeholders
    inputs: Callable[..., tuple[TaskData, list[str], bool]]
    # (one output of the objective's predict, labels, top) -> the JSON fields of its prediction
    describe: Callable[..., dict]
    data_keys: tuple[str, ...] = ()  # the modality's data keys that prediction reads (an export keeps these)
    # (predict.FinetunedModel, out folder) -> the folder: the model in another library's format
    # (`data2vec2 export --format transformers`; text: RobertaForSequenceClassification); None: none
    export_transformers: Callable[..., Path] | None = None
    lower_is_better: tuple[str, ...] = ()  # the metrics that are better when lower (error rates)


@dataclass(frozen=True)
class Modality:
    name: str
    # the dataclass of `model.<name>` (local-encoder settings) and of the modality's `data.*` keys
    model_settings: type
    data_settings: type
    # (config.model) -> the local encoder: raw input -> (B, T, D) tokens, positions, extra tokens
    local_encoder: Callable[[Any], nn.Module]
    # (config) -> the decoder that fills masked positions back in
    decoder: Callable[[Any], nn.Module]
    # (config, progress=True) -> the dataset, collate and FLOP count of pre-training; `progress`:
    # whether preparing them (tokenising text, say) shows progress bars
    pretraining_data: Callable[..., PretrainingData]
    # (config) -> (a batch of train.batch_size random samples of the preset's size through the real
    # collate, the length to give step_flops): what `data2vec2 benchmark` times
    synthetic_batch: Callable[[Any], tuple[dict, int]]
    # (config, batch, length) -> FLOPs of one update on `batch` samples of `length` (samples or tokens)
    step_flops: Callable[[Any, int, int], float]
    # (config) -> [(ok, key, message)]: range checks of its settings, and settings it would
    # silently ignore, rejected (config.validate raises a ConfigError for the first failing one)
    check_config: Callable[[Any], list[tuple[bool, str, str]]]
    # (encoder, config, out folder) -> the folder: the encoder in this modality's export format
    export: Callable[[nn.Module, Any, Path], Path]
    # (export folder, its config.json) -> (the encoder's state dict, the data keys), for an export
    # format of the modality's own (None: only ours)
    read_export: Callable[[Path, dict], tuple[dict, dict]] | None
    # (argparse sub-parsers, this record) -> None: the modality's own commands (prepare, evaluations)
    add_commands: Callable[[Any, "Modality"], None]
    # the reference's parameter names and settings, for `data2vec2 import-fairseq`
    # (fairseq_import.FairseqLayout; None: not importable)
    fairseq: Any = None
    # its fine-tuning tasks, by the name `finetune.task` gives
    tasks: dict[str, Task] = field(default_factory=dict)
