"""What the step-speed benchmarks share: full training updates (train/step.py: student, decoder,
teacher, optimizer, EMA) on one synthetic batch, timed, and the hardware they ran on."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import torch

from data2vec2.modalities import MODALITIES
from data2vec2.train.flops import measure_matmul_flops
from data2vec2.train.setup import setup_training
from data2vec2.train.step import train_step


def time_updates(config, batch: dict, precision: str, steps: int) -> dict:
    """Median wall and CPU seconds of `steps` updates on `batch` (a collate dict), after one warm-up."""
    config.train.precision = precision
    training = setup_training(config, MODALITIES[config.model.modality])
    wall, cpu = [], []
    for i in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(training, [batch], step=i)
        if training.device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first update warms up
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    peak = measure_matmul_flops(training.device, training.dtype)
    return {"precision": str(training.dtype).replace("torch.", ""), "step_s": float(np.median(wall)),
            "cpu_s": float(np.median(cpu)), "threads": torch.get_num_threads(), "peak_flops": peak}


def hardware(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
        name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
        name += f", {torch.get_num_threads()} threads"
    return {"device": name, "torch": torch.__version__, "python": platform.python_version()}
