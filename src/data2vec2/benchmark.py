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
import platform
import resource
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import __version__
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


def source_commit() -> str:
    """The git commit of this source tree (with "-dirty" for uncommitted changes to tracked files),
    `DATA2VEC2_COMMIT` where it is set, or "unknown" (an installed package, no git)."""
    import os
    import subprocess

    if os.environ.get("DATA2VEC2_COMMIT"):
        return os.environ["DATA2VEC2_COMMIT"]
    here = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> dict:
    """The CPU (or GPU), its features that decide fp32/bf16 speed, threads, versions and commit."""
    info = {"torch": torch.__version__, "python": platform.python_version(), "data2vec2": __version__,
            "threads": torch.get_num_threads(), "commit": source_commit()}
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = cpuinfo.splitlines()
    info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")),
                       platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# The header of every results file (docs/results/*.json under "header"; each line of a JSON-lines
# file at its top level): what ran, when, on which machine, in which precision, with which code.
HEADER_KEYS = ("date", "command", "commit", "cpu", "threads", "precision", "torch", "python", "data2vec2")


def results_header(precision: str, command: list[str] | None = None) -> dict:
    """The standard header: the date (UTC), the exact command (this process's by default), the
    machine() facts (CPU and its flags, or the GPU; threads; versions; commit) and the precision
    ("fp32", "bf16", or what the file's rows say when they differ)."""
    if command is None:
        argv = list(sys.argv)
        if argv and argv[0].endswith(".py") and not argv[0].endswith("__main__.py"):
            argv = ["python", str(Path(argv[0]).relative_to(Path.cwd())) if Path(argv[0]).is_absolute()
                    and Path(argv[0]).is_relative_to(Path.cwd()) else argv[0]] + argv[1:]
        elif argv:
            argv = ["data2vec2"] + argv[1:]  # (the console script, or python -m data2vec2: its __main__.py)
        command = argv
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": shlex.join(command), **machine(),
            "precision": precision, "numpy": np.__version__}


def auto_precision() -> str:
    """What train.precision=auto (and predict --precision auto) runs in on this machine's CPU."""
    from .train.setup import pick_dtype

    return "bf16" if pick_dtype("auto", torch.device("cpu")) == torch.bfloat16 else "fp32"


def missing_header(header: dict) -> list[str]:
    """The header keys `header` lacks or leaves empty (a CPU's flags or a GPU's name included)."""
    missing = [k for k in HEADER_KEYS if header.get(k) in (None, "", [])]
    if not header.get("cpu_flags") and not header.get("gpu"):
        missing.append("cpu_flags or gpu")
    return missing
