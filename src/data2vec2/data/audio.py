"""Audio sources and the pre-training dataset and collate for speech.

    file (WAV / FLAC / OGG, any rate, any channels) -> mono float32 -> 16 kHz (soxr)
      -> zero mean, unit variance per utterance -> random crop to data.max_samples (seeded)
    collate: crop every sample of the batch to the shortest one (no padding), then draw the 1-D
      block masks for the resulting frame count (so the mask matches the final crop exactly)

A source is a folder (searched recursively) or a TSV manifest: an optional first line naming the
root folder, then one `path[<TAB>num_samples_at_16k[<TAB>...]]` line per file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import MaskingConfig
from ..errors import DataError
from ..masking import block_mask_1d
from .collate import MASK_STREAM, NOISE_STREAM

SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
CROP_STREAM, BATCH_CROP_STREAM = 3, 4


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

    def __len__(self) -> int:
        return len(self.paths)


def list_audio_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"no audio files (.wav, .flac, .ogg) found in {root}")
    return files


def read_manifest(path: Path) -> tuple[list[str], list[int | None], list[str] | None]:
    """Paths (resolved against the root line, or the manifest's folder), sizes where given, and
    the third column as text where every line has one."""
    lines = [ln.rstrip("\n") for ln in path.read_text().splitlines() if ln.strip()]
    root = path.parent
    if lines and "\t" not in lines[0] and Path(lines[0]).is_dir():
        root, lines = Path(lines[0]), lines[1:]
    paths, sizes, texts = [], [], []
    for ln in lines:
        cols = ln.split("\t")
        paths.append(str(root / cols[0]))
        sizes.append(int(cols[1]) if len(cols) > 1 and cols[1].strip().isdigit() else None)
        texts.append(cols[2] if len(cols) > 2 else None)
    return paths, sizes, (texts if texts and all(t is not None for t in texts) else None)


def open_audio_source(spec: str, *, min_samples: int = 1, on_bad_file: str = "skip") -> AudioSource:
    """A folder of audio files or a TSV manifest. Files shorter than `min_samples` (at 16 kHz)
    are dropped and counted; an unreadable header is skipped and counted, or stops (DataError)."""
    p = Path(spec).expanduser()
    if not p.exists():
        raise DataError(f"audio source {p} does not exist (expected a folder of audio files or a .tsv manifest)")
    if p.is_dir():
        paths, sizes, texts = [str(f) for f in list_audio_files(p)], None, None
    else:
        paths, sizes, texts = read_manifest(p)
    keep_paths, keep_lengths, keep_texts, short, bad = [], [], [], 0, 0
    for i, path in enumerate(paths):
        if not os.path.exists(path):
            raise DataError(f"{spec}: audio file {path} does not exist")
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
        if texts is not None:
            keep_texts.append(texts[i])
    if not keep_paths:
        raise DataError(f"{spec}: no usable audio ({short} shorter than {min_samples} samples, {bad} unreadable)")
    return AudioSource(keep_paths, keep_lengths, keep_texts if texts is not None else None, short, bad)


def random_crop(wave: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if len(wave) <= size:
        return wave
    start = int(rng.integers(0, len(wave) - size + 1))
    return wave[start:start + size]


class PretrainAudioDataset(Dataset):
    """Sample i -> {"index", "wave": float32 (L,)} or {"index", "error"} for an unreadable file."""

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
        rng = np.random.default_rng([self.seed, self.epoch, i, CROP_STREAM])
        return {"index": i, "wave": torch.from_numpy(random_crop(wave, self.max_samples, rng).copy())}


class AudioMaskingCollate:
    """Crops a batch to its shortest sample and draws 1-D block masks per sample (in workers),
    seeded by (seed, epoch, index) like the image collate."""

    def __init__(self, masking: MaskingConfig, num_frames, seed: int):
        self.masking, self.num_frames, self.seed = masking, num_frames, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, samples: list[dict]) -> dict:
        """Returns wave (B, L), mask (B*M, T) bool (rows b*M .. b*M+M-1 for sample b),
        noise_seed (B,), index (B,) and the error messages of the samples left out."""
        good = [s for s in samples if "error" not in s]
        errors = [s["error"] for s in samples if "error" in s]
        m = self.masking
        L = min((len(s["wave"]) for s in good), default=0)
        T = self.num_frames(L) if good else 0
        waves, masks, seeds = [], [], []
        for s in good:
            key = [self.seed, self.epoch, int(s["index"])]
            crop_rng = np.random.default_rng(key + [BATCH_CROP_STREAM])
            w = s["wave"]
            start = int(crop_rng.integers(0, len(w) - L + 1))
            waves.append(w[start:start + L])
            rng = np.random.default_rng(key + [MASK_STREAM])
            masks.append(block_mask_1d(m.num_masks, T, m.mask_prob, m.mask_length, m.mask_prob_adjust, rng))
            seeds.append(np.random.default_rng(key + [NOISE_STREAM]).integers(2**62))
        return {
            "wave": torch.stack(waves) if waves else torch.empty(0),
            "mask": torch.from_numpy(np.concatenate(masks)) if masks else torch.zeros(0, T, dtype=torch.bool),
            "noise_seed": torch.tensor(seeds, dtype=torch.int64),
            "index": torch.tensor([int(s["index"]) for s in good], dtype=torch.int64),
            "errors": errors,
        }
