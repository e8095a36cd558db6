"""Wiring of the speech modality for pre-training: audio source -> crops -> 1-D masks in workers,
batches bucketed by length."""

from __future__ import annotations

import sys

import numpy as np

from ..config import Config
from ..data.audio import AudioMaskingCollate, PretrainAudioDataset, open_audio_source
from ..model import build_model
from ..train.flops import audio_step_flops


def build_audio_pretraining(config: Config):
    from ..train.loop import PretrainSetup

    d = config.data
    source = open_audio_source(d.train, min_samples=d.min_samples, on_bad_file=d.on_bad_file)
    if d.limit > 0:
        source.paths, source.lengths = source.paths[:d.limit], source.lengths[:d.limit]
    if source.dropped_short or source.dropped_bad:
        print(f"[data2vec2] {d.train}: dropped {source.dropped_short} files shorter than {d.min_samples} samples "
              f"and {source.dropped_bad} unreadable files", file=sys.stderr)
    model = build_model(config)
    dataset = PretrainAudioDataset(source, d.max_samples, config.train.seed)
    collate = AudioMaskingCollate(config.masking, model.encoder.num_frames, config.train.seed)
    lengths = [min(n, d.max_samples) for n in source.lengths]
    # FLOPs at the mean (cropped) length: bucketed batches are cropped to about that on average
    frames = model.encoder.num_frames(int(np.mean(lengths)))
    flops = audio_step_flops(config, config.train.batch_size, int(np.mean(lengths)), frames)
    return PretrainSetup(model=model, dataset=dataset, collate=collate, input_key="wave", step_flops=flops,
                         lengths=lengths)
