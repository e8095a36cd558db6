"""Time speech pre-training updates on synthetic waves (no data loading): wall and CPU seconds
per update, samples/s and MFU, for each precision asked for, in one run.

    python benchmarks/audio_step_speed.py audio-tiny --precision fp32 bf16 --steps 3 [key=value ...]

MFU = step FLOPs (train/flops.py: audio_step_flops) / seconds / measured matmul FLOP/s. On a
shared machine the wall clock depends on other jobs; "cpu_mfu" divides by the process's CPU
seconds over the threads used instead, which estimates the MFU on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np
import torch

from data2vec2 import load_config
from data2vec2.masking import block_mask_1d
from data2vec2 import build_model
from data2vec2.train.flops import audio_step_flops, measure_matmul_flops
from data2vec2.train.optim import build_optimizer


def time_steps(config, dtype, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(config).train()
    opt = build_optimizer(model.student, config.optim, torch.device("cpu"))
    m, B, L = config.masking, config.train.batch_size, config.data.max_samples
    T = model.encoder.num_frames(L)
    wave = torch.randn(B, L)
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(np.concatenate([block_mask_1d(m.num_masks, T, m.mask_prob, m.mask_length,
                                                          m.mask_prob_adjust, rng) for _ in range(B)]))
    autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    wall, cpu = [], []
    for i in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast:
            out = model(wave, mask)
        (out["loss_sum"] / out["num_masked"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first update warms up
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    flops = audio_step_flops(config, B, L, T)
    peak = measure_matmul_flops(torch.device("cpu"), dtype)
    threads = torch.get_num_threads()
    w, c = float(np.median(wall)), float(np.median(cpu))
    return {"precision": str(dtype).replace("torch.", ""), "batch": B, "samples": L, "frames": T,
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
    args = p.parse_args()
    config = load_config(args.preset, args.overrides)
    for prec in args.precision:
        dtype = torch.float32 if prec == "fp32" else torch.bfloat16
        print(json.dumps(time_steps(config, dtype, args.steps)), flush=True)


if __name__ == "__main__":
    main()
