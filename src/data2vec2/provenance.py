"""Where a number comes from: the machine, the versions, the code and the command, as the standard
header of every results file (docs/results/*.json under "header"; each line of a JSON-lines file at
its top level) and of every training invocation (a run folder's invocations.jsonl)."""

from __future__ import annotations

import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__


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


# what ran, when, on which machine, in which precision, with which code
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
