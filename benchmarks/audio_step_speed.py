"""Time audio pre-training updates on synthetic waves (no data loading): wall and CPU seconds
per update, samples/s and MFU, for each precision asked for, in one run.

    python benchmarks/audio_step_speed.py audio-tiny --precision fp32 bf16 --steps 3 [key=value ...]

MFU = step FLOPs (modalities/audio/encoder.py: step_flops) / seconds / measured matmul FLOP/s. On a
shared machine the wall clock depends on other jobs; "cpu_mfu" divides by the process's CPU
seconds over the threads used instead, which estimates the MFU on an idle machine.
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from timing import time_updates

from data2vec2 import load_config
from data2vec2.modalities import MODALITIES
from data2vec2.modalities.audio.data import AudioMaskingCollate
from data2vec2.modalities.audio.encoder import num_frames


def synthetic_batch(config) -> dict:
    """Random waves of data.max_samples through the audio collate (1-D block masks, noise seeds)."""
    B, L = config.train.batch_size, config.data.max_samples
    g = torch.Generator().manual_seed(0)
    items = [{"index": i, "inputs": torch.randn(L, generator=g)} for i in range(B)]
    return AudioMaskingCollate(config.masking, partial(num_frames, config.model.audio.conv_layers), seed=0)(items)


def time_steps(config, precision: str, steps: int) -> dict:
    B, L = config.train.batch_size, config.data.max_samples
    result = time_updates(config, synthetic_batch(config), precision, steps)
    w, c, peak, threads = result["step_s"], result["cpu_s"], result["peak_flops"], result["threads"]
    flops = MODALITIES["audio"].step_flops(config, B, L)
    return {"precision": result["precision"], "batch": B, "samples": L,
            "frames": num_frames(config.model.audio.conv_layers, L),
            "wall_s_per_step": round(w, 3), "cpu_s_per_step": round(c, 3), "threads": threads,
            "utterances_per_s": round(B / w, 2), "step_gflop": round(flops / 1e9, 1),
            "matmul_peak_gflops": round(peak / 1e9), "mfu": round(flops / w / peak, 4),
            "cpu_mfu": round(flops / (c / threads) / peak, 4)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("preset")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("overrides", nargs="*")
    args, extra = p.parse_known_args()
    args.overrides += extra
    for precision in args.precision:
        config = load_config(args.preset, args.overrides)
        print(json.dumps(time_steps(config, precision, args.steps)), flush=True)


if __name__ == "__main__":
    main()
