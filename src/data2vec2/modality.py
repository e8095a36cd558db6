"""What a modality supplies to the modality-agnostic core: one small record per modality.

The records are listed in one plain table, `data2vec2.modalities.MODALITIES`; that table is the only
place where a modality is chosen by its name. The core (model, encoder, train/, config, export)
takes a record as an argument and calls its functions; it never imports a modality.
"""

from __future__ import annotations

from dataclasses import dataclass
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
