"""The audio modality's small test settings, which the per-modality tests read for every modality
of the table (docs/ARCHITECTURE.md, "Adding a modality", lists them): audio-tiny in seconds on a tiny
slice of real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison")  # real English prompts (asterisk-core-sounds-en-wav)

SMALL = ["model.embed_dim=32", "model.num_heads=4", "model.depth=2", "targets.top_k=2",
         "model.audio.conv_layers=[[16,10,5],[16,3,2],[16,3,2],[16,3,2],[16,3,2],[16,2,2],[16,2,2]]",
         "model.audio.conv_pos_groups=4", "model.audio.conv_pos_depth=2", "decoder.dim=16", "decoder.groups=4",
         "decoder.layers=2", "masking.num_masks=2", "train.precision=fp32", "data.num_workers=0",
         "train.log_every=1", "optim.warmup_steps=2", "train.batch_size=4", "data.min_samples=8000",
         "data.max_samples=16000", "guards.after_steps=100000"]


def small_data(folder: Path) -> list[str] | None:
    """A manifest of 24 real English prompts (asterisk-core-sounds-en-wav)."""
    files = sorted(ALLISON.glob("*.wav"))[:24] if ALLISON.is_dir() else []
    if len(files) < 24:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "real.tsv").write_text("\n".join(str(f) for f in files) + "\n")
    return [f"data.train={folder / 'real.tsv'}"]


# The step characterization (tests/test_step_characterization.py): cases (name -> overrides over
# audio-tiny and the test's shared small blocks) pinned from version 0.1.0, and each case's fixed
# inputs and masks from the test's seeded generators.
_STEP_CNN = ["model.audio.conv_layers=[[16,10,5],[16,3,2],[16,3,2]]", "model.audio.conv_pos_width=15",
             "model.audio.conv_pos_depth=3", "model.audio.conv_pos_groups=4"]
_STEP_DECODER = ["decoder.dim=16", "decoder.groups=4", "decoder.layers=2"]
STEP_CASES = {
    "audio": ["model.prenet_depth=1"] + _STEP_CNN + ["model.audio.ema_local_encoder=false"] + _STEP_DECODER,
    "audio-ema-local": _STEP_CNN + ["model.audio.ema_local_encoder=true"] + _STEP_DECODER,
}


def step_batch(config, g, rng) -> tuple:
    """(2, 1600) random waveforms and (2 * M, 79) block masks (79 frames through the small CNN)."""
    import torch

    from ...masking import block_mask_1d

    m = config.masking
    inputs = torch.randn(2, 1600, generator=g)
    return inputs, np.concatenate([block_mask_1d(m.num_masks, 79, m.mask_prob, m.mask_length, m.mask_prob_adjust, rng)
                                   for _ in range(2)])


# The baselines (objective=...) tests/test_objectives.py pre-trains on this modality besides data2vec 2.0
BASELINES = ("data2vec1",)


def half_bad_data(root: Path) -> list[str]:
    """A manifest of 4 readable and 4 unreadable WAV files whose sizes let the unreadable ones through
    to the loader (tests/test_faults.py: data.on_bad_file=skip)."""
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        sf.write(root / f"good{i}.wav", rng.standard_normal(16000).astype(np.float32) * 0.1, 16000)
        (root / f"bad{i}.wav").write_bytes(b"RIFF not audio")
        lines += [f"good{i}.wav\t16000", f"bad{i}.wav\t16000"]
    (root / "train.tsv").write_text("\n".join(lines) + "\n")
    return [f"data.train={root / 'train.tsv'}"]


# Fine-tuning (tests/test_finetune.py): a small version of each task's tiny preset, task -> (preset,
# overrides): the encoder frozen for the first 2 updates, then trained; masks, layerdrop and dropout on.
FINETUNE = {
    "ctc": ("audio-ctc-tiny", [
        "train.batch_size=4", "train.max_steps=6", "train.log_every=1", "train.precision=fp32",
        "train.time_budget_s=0", "optim.warmup_steps=2", "optim.hold_steps=1", "finetune.eval_every=3",
        "finetune.valid_size=4", "finetune.test=[]", "finetune.freeze_steps=2", "data.num_workers=0",
        "data.max_samples=48000", "data.channel_mask_length=4"]),
    "classification": ("audio-cls-tiny", [
        "train.batch_size=4", "train.max_steps=6", "train.log_every=1", "train.precision=fp32",
        "train.time_budget_s=0", "optim.warmup_steps=2", "optim.hold_steps=1", "finetune.eval_every=3",
        "finetune.valid_size=4", "finetune.test=[]", "finetune.freeze_steps=2", "data.num_workers=0",
        "data.channel_mask_length=4"]),
}


def labelled_data(folder: Path) -> dict[str, Path] | None:
    """Manifests (path, samples, label) of 24 real English prompts of at most 3 s under `folder`:
    "ctc" with their transcripts (A-Z, apostrophe, space), "classes" with two classes (alternating)."""
    from .corpus import _asterisk_transcripts, letters
    from .data import num_samples_16k

    texts = _asterisk_transcripts("en")
    rows = []
    for f in sorted(ALLISON.glob("*.wav")) if ALLISON.is_dir() else []:
        text, n = letters(texts.get(f.stem, "")), num_samples_16k(f)
        if text and not texts[f.stem].startswith("[") and n <= 48000:
            rows.append((str(f), n, text))
        if len(rows) == 24:
            break
    if len(rows) < 24:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ctc.tsv").write_text("".join(f"{p}\t{n}\t{t}\n" for p, n, t in rows))
    (folder / "classes.tsv").write_text("".join(f"{p}\t{n}\t{'AB'[i % 2]}\n" for i, (p, n, _) in enumerate(rows)))
    return {"ctc": folder / "ctc.tsv", "classes": folder / "classes.tsv"}


def finetune_data(task: str, folder: Path, small: list[str]) -> list[str] | None:
    """The labelled data of `task` (None when the prompts are not installed)."""
    manifests = labelled_data(folder)
    return None if manifests is None else [f"data.train={manifests['ctc' if task == 'ctc' else 'classes']}"]
