"""Labelled speech for the fine-tuning tasks (ctc.py, classification.py): a TSV manifest whose third
column is each file's label (a transcript, or a class), its clips padded into batches, and the
fine-tuning masks of the reference (fairseq Wav2VecEncoder with apply_mask; data2vec 2.0's
`apply_mask` with encoder_zero_mask=false):

    manifest   [root folder]  then per line: path <TAB> samples at 16 kHz <TAB> label
    batch      clips bucketed by length (the trainer's sampler), zero-padded to the longest:
               inputs (B, L), padding (B, T) True = a padded frame, frames (B,)
    masks      training only, drawn per clip from its own stream: spans of data.time_mask_length
               frames (about data.time_mask_prob of them) replaced by N(0, 0.01^2) noise, and spans
               of data.channel_mask_length channels (about data.channel_mask_prob) zeroed in every frame
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ...config import Config
from ...data.collate import Collate, Stream
from ...errors import DataError
from .data import AudioSource, load_audio, normalize, open_audio_source, read_manifest
from .encoder import num_frames

MASK_NOISE_STD = 0.01  # the reference's mask_noise_std


@dataclass
class LabelledSource:
    source: AudioSource
    labels: list[str]  # the manifest's third column, one per clip
    where: list[str]  # each clip's manifest:line (for errors)


def open_labelled(config: Config, spec: str, train: bool) -> LabelledSource:
    """The clips of the manifest `spec` with their labels; training clips shorter than
    data.min_samples or longer than data.max_samples are left out (and counted), as the reference
    skips them."""
    data = config.data
    source = open_audio_source(spec, min_samples=data.settings.min_samples if train else 1,
                               on_bad_file=data.on_bad_file)
    if source.texts is None:
        raise DataError(f"{spec}: every line needs a third column, the label (path <TAB> samples <TAB> label)")
    keep = [i for i, n in enumerate(source.lengths) if not train or n <= data.settings.max_samples]
    too_long = len(source.paths) - len(keep)
    if train and data.limit > 0:
        keep = keep[:data.limit]
    if not keep:
        raise DataError(f"{spec}: no clip between data.min_samples={data.settings.min_samples} and "
                        f"data.max_samples={data.settings.max_samples} samples")
    if (source.dropped_short or too_long or source.dropped_bad) and os.environ.get("RANK", "0") == "0":
        print(f"[data2vec2] {spec}: left out {source.dropped_short} clips shorter than data.min_samples, {too_long} "
              f"longer than data.max_samples and {source.dropped_bad} unreadable", file=sys.stderr, flush=True)
    picked = AudioSource([source.paths[i] for i in keep], [source.lengths[i] for i in keep])
    return LabelledSource(picked, [source.texts[i].strip() for i in keep], [source.where[i] for i in keep])


class LabelledClips(torch.utils.data.Dataset):
    """{"index", "inputs": float32 (L,), "target": the label's value} per clip (decoded in the
    DataLoader workers); an unreadable file is {"index", "error"}."""

    def __init__(self, source: AudioSource, targets: list):
        self.source, self.targets = source, targets

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        try:
            wave = normalize(load_audio(self.source.paths[i]))
        except DataError as e:
            return {"index": i, "error": str(e)}
        return {"index": i, "inputs": torch.from_numpy(wave), "target": self.targets[i]}


class Waves(torch.utils.data.Dataset):
    """Clips to predict: files (decoded in the DataLoader workers) or in-memory 16 kHz waveforms,
    each with the same placeholder target; {"index", "error"} for an unreadable file."""

    def __init__(self, items: list[tuple[str, object]], placeholder):
        self.items, self.placeholder = items, placeholder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        name, item = self.items[i]
        try:
            wave = load_audio(item) if isinstance(item, str) else np.asarray(item, dtype=np.float32).reshape(-1)
        except DataError as e:
            return {"index": i, "error": str(e)}
        if wave.size < 400:
            return {"index": i, "error": f"{name}: {wave.size} samples, shorter than one frame (400 at 16 kHz)"}
        return {"index": i, "inputs": torch.from_numpy(normalize(wave)), "target": self.placeholder}


def prediction_inputs(config: Config, items: list, labels: list[str], task_data, targets, placeholder):
    """Clips to predict: one labelled manifest (a third column: scored, read by `task_data`), or
    audio files, folders (recursive), lists of paths, unlabelled manifests and waveforms."""
    from ...modality import TaskData
    from ...predict import expand_paths
    from .data import list_audio_files

    if len(items) == 1 and isinstance(items[0], str) and items[0].endswith(".tsv"):
        if not Path(items[0]).is_file():
            raise DataError(f"{items[0]}: no such manifest")
        paths, _, texts, _ = read_manifest(Path(items[0]))  # (only the listing: no audio file is opened)
        if texts is not None:
            data = task_data(config, items[0], labels, False)
            return data, list(data.dataset.source.paths), True
        found = [(p, p) for p in paths]
    else:
        found = expand_paths(items, list_audio_files, "audio")
    return TaskData(dataset=Waves(found, placeholder), collate=ClipCollate(config, False, targets),
                    labels=list(labels)), [name for name, _ in found], False


def span_mask(length: int, prob: float, span: int, rng: np.random.Generator) -> np.ndarray:
    """wav2vec 2.0's span masking of one row: floor(prob * length / span + U(0, 1)) spans (at least
    one) of `span` positions, their starts drawn without replacement; (length,) bool."""
    mask = np.zeros(length, dtype=bool)
    if length <= span:
        return mask
    n = min(max(1, int(prob * length / span + rng.random())), length - span)
    starts = rng.choice(length - span, size=n, replace=False)
    mask[(starts[:, None] + np.arange(span)[None]).ravel()] = True
    return mask


class ClipCollate(Collate):
    """Zero-pads a batch of clips; in training draws each clip's time and channel masks and the seed
    of its mask noise. `targets(items)` -> the batch's target entries."""

    def __init__(self, config: Config, train: bool, targets):
        super().__init__(config.train.seed)
        data = config.data.settings
        self.num_frames = partial(num_frames, config.model.settings.conv_layers)
        self.dim = config.model.embed_dim
        self.time = (data.time_mask_prob, data.time_mask_length) if train and data.time_mask_prob > 0 else None
        self.channel = (data.channel_mask_prob, data.channel_mask_length) \
            if train and data.channel_mask_prob > 0 else None
        self.targets = targets

    def empty(self) -> dict:
        return {"inputs": torch.zeros(0, 1), "padding": torch.zeros(0, 1, dtype=torch.bool),
                "frames": torch.zeros(0, dtype=torch.long), "count": 0, **self.targets([])}

    def assemble(self, items: list[dict]) -> dict:
        L = max(len(s["inputs"]) for s in items)
        waves = torch.zeros(len(items), L)  # (B, L)
        for b, s in enumerate(items):
            waves[b, :len(s["inputs"])] = s["inputs"]
        frames = torch.tensor([self.num_frames(len(s["inputs"])) for s in items])  # (B,)
        T = self.num_frames(L)
        batch = {"inputs": waves, "padding": torch.arange(T)[None, :] >= frames[:, None],  # (B, T)
                 "frames": frames, "count": len(items), **self.targets(items)}
        if self.time is not None:
            masks = [span_mask(int(n), *self.time, self.rng(s["index"], Stream.MASK)) for s, n in zip(items, frames)]
            batch["time_mask"] = torch.from_numpy(np.stack([np.pad(m, (0, T - len(m))) for m in masks]))  # (B, T)
            batch["noise_seed"] = torch.tensor([self.rng(s["index"], Stream.NOISE).integers(2**62) for s in items])
        if self.channel is not None:
            batch["channel_mask"] = torch.from_numpy(np.stack(
                [span_mask(self.dim, *self.channel, self.rng(s["index"], Stream.CHANNEL_MASK)) for s in items]))
        return batch


def freeze_cnn(encoder: nn.Module) -> None:
    """The CNN never learns in fine-tuning (the reference's feature_grad_mult 0)."""
    encoder.local_encoder.feature_extractor.requires_grad_(False)


def encode_clips(encoder: nn.Module, batch: dict, frozen_context) -> Tensor:
    """The encoder's output (B, T, D) on a padded batch of clips, its fine-tuning masks applied; all
    but the CNN (freeze_cnn) run in `frozen_context` (without gradients while the task freezes the
    encoder)."""
    local = encoder.local_encoder
    features = local.feature_extractor(batch["inputs"]).transpose(1, 2)  # (B, T, C)
    with frozen_context:
        x = local.project_features(features)  # (B, T, D)
        if "time_mask" in batch:
            mask = batch["time_mask"]  # (B, T)
            noise = torch.zeros_like(x)
            for b, seed in enumerate(batch["noise_seed"].tolist()):
                gen = torch.Generator(device=x.device).manual_seed(int(seed))
                n = int(mask[b].sum())
                noise[b, mask[b]] = torch.randn(n, x.shape[-1], generator=gen, device=x.device).to(x.dtype) \
                    * MASK_NOISE_STD
            x = torch.where(mask.unsqueeze(-1), noise, x)
        if "channel_mask" in batch:
            x = x.masked_fill(batch["channel_mask"].unsqueeze(1), 0.0)  # (B, 1, D) over every frame
        padding = batch.get("padding")  # (None: whole clips of one length, as the ONNX export takes)
        if padding is not None:
            x = x.masked_fill(padding.unsqueeze(-1), 0.0)
            padding = padding if padding.any() else None
        return encoder.forward_unmasked(x, padding).x
