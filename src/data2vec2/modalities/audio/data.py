"""Audio data: sources (a folder or a TSV manifest), decoding and resampling, and the pre-training
pipeline (1-D masks drawn in the DataLoader workers, batches bucketed by length).

    file (WAV / FLAC / OGG, any rate, any channels) -> mono float32 -> 16 kHz (soxr)
      -> zero mean, unit variance per utterance -> random crop to data.max_samples (seeded)
    collate: crop every sample of the batch to the shortest one (no padding), then draw the 1-D
      block masks for the resulting frame count (so the mask matches the final crop exactly)

A source is a folder (searched recursively) or a TSV manifest: an optional first line naming the
root folder, then one `path[<TAB>num_samples_at_16k[<TAB>...]]` line per file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...config import Config
from ...data.collate import MaskingCollate, Stream, sample_rng
from ...errors import DataError
from ...masking import block_mask_1d, random_mask
from ...modality import PretrainingData
from .encoder import num_frames, step_flops

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


@dataclass
class AudioDataSettings:
    """The audio keys of `data`: samples at 16 kHz; shorter files are dropped (and counted),
    longer ones randomly cropped in pre-training (left out of fine-tuning's training data)."""

    min_samples: int = 32_000
    max_samples: int = 320_000
    # fine-tuning (labelled.py): spans of time frames replaced by noise, spans of channels zeroed
    time_mask_prob: float = 0.0
    time_mask_length: int = 10
    channel_mask_prob: float = 0.0
    channel_mask_length: int = 64
    letters: str = ""  # speech recognition: the CTC letters, in order; "": those of the training transcripts


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a whole file as mono float32 at `sample_rate`; DataError (naming the path) if it
    cannot be read."""
    import soundfile as sf
    import soxr

    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (L, channels)
    except Exception as e:  # missing, truncated, not audio, unsupported codec ...
        raise DataError(f"cannot read audio file {path}: {_reason(e)}") from None
    wave = wave.mean(axis=1)
    if rate != sample_rate:
        wave = soxr.resample(wave, rate, sample_rate, quality="HQ").astype(np.float32)
    if wave.size == 0 or not np.isfinite(wave).all():
        raise DataError(f"cannot read audio file {path}: empty or not finite")
    return wave


def normalize(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the utterance (like a LayerNorm over the whole wave)."""
    return ((wave - wave.mean()) / np.sqrt(wave.var() + 1e-5)).astype(np.float32)


def num_samples_16k(path: str | os.PathLike) -> int:
    """The length a file will have at 16 kHz, from its header only."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:
        raise DataError(f"cannot read audio file {path}: {_reason(e)}") from None
    return int(info.frames * SAMPLE_RATE / info.samplerate)


@dataclass
class AudioSource:
    """Audio files with their lengths in 16 kHz samples (and, optionally, a transcript each)."""

    paths: list[str]
    lengths: list[int]
    texts: list[str] | None = None
    dropped_short: int = 0
    dropped_bad: int = 0
    where: list[str] | None = None  # each file's place for messages: manifest:line (or the path)

    def __len__(self) -> int:
        return len(self.paths)


def list_audio_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"no audio files (.wav, .flac, .ogg) found in {root}")
    return files


def read_manifest(path: Path) -> tuple[list[str], list[int | None], list[str] | None, list[str]]:
    """Paths (resolved against the root line, or the manifest's folder), sizes where given, the
    third column as text where every line has one, and each entry's manifest:line."""
    lines = [(n, ln.rstrip("\n")) for n, ln in enumerate(path.read_text().splitlines(), start=1) if ln.strip()]
    root = path.parent
    if lines and "\t" not in lines[0][1] and Path(lines[0][1]).is_dir():
        root, lines = Path(lines[0][1]), lines[1:]
    paths, sizes, texts, where = [], [], [], []
    for n, ln in lines:
        cols = ln.split("\t")
        paths.append(str(root / cols[0]))
        sizes.append(int(cols[1]) if len(cols) > 1 and cols[1].strip().isdigit() else None)
        texts.append(cols[2] if len(cols) > 2 else None)
        where.append(f"{path}:{n}")
    return paths, sizes, (texts if texts and all(t is not None for t in texts) else None), where


def open_audio_source(spec: str, *, min_samples: int = 1, on_bad_file: str = "skip") -> AudioSource:
    """A folder of audio files or a TSV manifest. Files shorter than `min_samples` (at 16 kHz)
    are dropped and counted; an unreadable header is skipped and counted, or stops (DataError)."""
    p = Path(spec).expanduser()
    if not p.exists():
        raise DataError(f"audio source {p} does not exist (expected a folder of audio files or a .tsv manifest)")
    if p.is_dir():
        paths, sizes, texts = [str(f) for f in list_audio_files(p)], None, None
        where = paths
    else:
        paths, sizes, texts, where = read_manifest(p)
    keep_paths, keep_lengths, keep_texts, keep_where, short, bad = [], [], [], [], 0, 0
    for i, path in enumerate(paths):
        if not os.path.exists(path):
            raise DataError(f"{where[i]}: audio file {path} does not exist")
        try:
            n = sizes[i] if sizes and sizes[i] is not None else num_samples_16k(path)
        except DataError:
            if on_bad_file == "stop":
                raise
            bad += 1
            continue
        if n < min_samples:
            short += 1
            continue
        keep_paths.append(path)
        keep_lengths.append(n)
        keep_where.append(where[i])
        if texts is not None:
            keep_texts.append(texts[i])
    if not keep_paths:
        raise DataError(f"{spec}: no usable audio ({short} shorter than {min_samples} samples, {bad} unreadable)")
    return AudioSource(keep_paths, keep_lengths, keep_texts if texts is not None else None, short, bad, keep_where)


def random_crop(wave: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if len(wave) <= size:
        return wave
    start = int(rng.integers(0, len(wave) - size + 1))
    return wave[start:start + size]


class PretrainAudioDataset(Dataset):
    """Sample i -> {"index", "inputs": float32 (L,)} or {"index", "error"} for an unreadable file."""

    def __init__(self, source: AudioSource, max_samples: int, seed: int):
        self.source, self.max_samples, self.seed = source, max_samples, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        try:
            wave = normalize(load_audio(self.source.paths[i]))
        except DataError as e:
            return {"index": i, "error": str(e)}
        rng = sample_rng(self.seed, self.epoch, i, Stream.CROP)
        return {"index": i, "inputs": torch.from_numpy(random_crop(wave, self.max_samples, rng).copy())}


class AudioMaskingCollate(MaskingCollate):
    """Crops a batch to its shortest sample (no padding), then draws each sample's M masks for the
    resulting frame count: 1-D blocks ("block", the reference) or random frames ("random")."""

    def __init__(self, masking, num_frames, seed: int):
        super().__init__(masking, seed)
        self.num_frames = num_frames

    def inputs_and_masks(self, items: list[dict]) -> tuple[torch.Tensor, list[np.ndarray]]:
        masking = self.masking
        L = min(len(s["inputs"]) for s in items)
        T = self.num_frames(L)
        waves, masks = [], []
        for s in items:
            w = s["inputs"]
            start = int(self.rng(s["index"], Stream.BATCH_CROP).integers(0, len(w) - L + 1))
            waves.append(w[start:start + L])
            rng = self.rng(s["index"], Stream.MASK)
            if masking.kind == "random":
                masks.append(random_mask(masking.num_masks, T, masking.mask_prob, rng))
            else:
                masks.append(block_mask_1d(masking.num_masks, T, masking.mask_prob, masking.mask_length,
                                           masking.mask_prob_adjust, rng))
        return torch.stack(waves), masks  # (B, L)


def pretraining_data(config: Config, progress: bool = True) -> PretrainingData:
    data = config.data
    source = open_audio_source(data.train, min_samples=data.settings.min_samples, on_bad_file=data.on_bad_file)
    if data.limit > 0:
        source.paths, source.lengths = source.paths[:data.limit], source.lengths[:data.limit]
    if source.dropped_short or source.dropped_bad:
        print(f"[data2vec2] {data.train}: dropped {source.dropped_short} files shorter than {data.settings.min_samples} "
              f"samples and {source.dropped_bad} unreadable files", file=sys.stderr)
    lengths = [min(n, data.settings.max_samples) for n in source.lengths]
    # FLOPs at the mean (cropped) length: bucketed batches are cropped to about that on average
    frames = partial(num_frames, config.model.settings.conv_layers)  # a picklable function for the workers
    return PretrainingData(dataset=PretrainAudioDataset(source, data.settings.max_samples, config.train.seed),
                           collate=AudioMaskingCollate(config.masking, frames, config.train.seed),
                           step_flops=step_flops(config, config.train.batch_size, int(np.mean(lengths))),
                           lengths=lengths, skipped_before=source.dropped_bad)


def synthetic_batch(config: Config) -> tuple[dict, int]:
    """train.batch_size random waves of data.max_samples through the real collate (1-D block
    masks, noise seeds), for speed measurements; and the length for step_flops."""
    L = config.data.settings.max_samples
    g = torch.Generator().manual_seed(0)
    items = [{"index": i, "inputs": torch.randn(L, generator=g)} for i in range(config.train.batch_size)]
    frames = partial(num_frames, config.model.settings.conv_layers)
    return AudioMaskingCollate(config.masking, frames, seed=0)(items), L
