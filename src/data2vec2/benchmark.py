"""`data2vec2 benchmark PRESET`: the speed of full training updates (teacher, student, decoder,
backward, AdamW, EMA: train/step.py) on a batch of random inputs of the preset's size, without data
loading, for each precision and compile setting asked for, measured in one run.

MFU = the update's model FLOPs (the modality's step_flops, train/flops.py) per second over the
dense matmul rate of this machine in the same precision. The matmul rate is measured right after
every timed update and each update is divided by its own neighbour, so that contention from other
processes on a shared machine slows both sides of the ratio alike; the median ratio is reported.
"""

from __future__ import annotations

import copy
import resource
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from .model import build_encoder
from .train.flops import measure_matmul_flops
from .train.setup import setup_training
from .train.step import train_step

if TYPE_CHECKING:
    from .config import Config
    from .modality import Modality


def time_updates(config: "Config", modality: "Modality", steps: int, warmup: int = 1) -> dict:
    """Median wall and CPU seconds of `steps` updates after `warmup` ones, with the precision and
    compile setting of config.train: of pre-training, or of the fine-tuning task the config names
    (its objective around the config's encoder, on a batch of the task's synthetic samples)."""
    if config.finetune.task:  # (a random encoder of the config's architecture: the weights do not change the time)
        task = modality.tasks[config.finetune.task]
        config = copy.deepcopy(config)
        config.finetune.freeze_steps = 0  # an update of the whole model, as after the frozen start
        batch, labels, size = task.synthetic_batch(config)
        training = setup_training(config, modality, build_model=lambda resuming: task.build(
            build_encoder(config.model, modality), config, labels))
        flops = task.step_flops(config, size)
    else:
        training = setup_training(config, modality)
        batch, length = modality.synthetic_batch(config)
        flops = modality.step_flops(config, config.train.batch_size, length)
    if training.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(training.device)
    wall, cpu, peaks = [], [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(training, [batch], step=i)
        if training.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            peaks.append(measure_matmul_flops(training.device, training.dtype, seconds=0.3))
    step_s, peak = float(np.median(wall)), float(np.median(peaks))
    mfu = float(np.median([flops / (w * p) for w, p in zip(wall, peaks)]))
    if training.device.type == "cuda":
        memory_mb = torch.cuda.max_memory_allocated(training.device) / 2**20
    else:
        memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS (KiB)
    return {
        "precision": str(training.dtype).replace("torch.", ""), "compile": config.train.compile,
        "batch": config.train.batch_size, "step_s": round(step_s, 4), "cpu_s": round(float(np.median(cpu)), 4),
        "samples_per_s": round(config.train.batch_size / step_s, 2), "step_gflop": round(flops / 1e9, 2),
        "achieved_gflops": round(flops / step_s / 1e9, 1), "matmul_peak_gflops": round(peak / 1e9, 1),
        "mfu": round(mfu, 4), "peak_memory_mb": round(memory_mb),
        "device": str(training.device),
    }
