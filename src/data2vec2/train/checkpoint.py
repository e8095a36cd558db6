"""Training checkpoints: complete resume state, written atomically, loaded without unpickling code.

Layout of a run folder:
    config.yaml            the resolved config
    checkpoints/last.pt    the newest checkpoint
    checkpoints/step_000001000.pt ...   the `keep` newest step checkpoints
"""

from __future__ import annotations

import os
import re
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

import torch

from ..errors import TrainingError

STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def save_checkpoint(state: dict, folder: Path, step: int, keep: int) -> Path:
    """Write `state` as step_<step>.pt and last.pt; each file is written to a temporary name and
    renamed, so a file on disk is always complete. Older step files beyond `keep` are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step_{step:09d}.pt"
    tmp = folder / f".{target.name}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, target)
    tmp_last = folder / ".last.pt.tmp"
    try:
        os.link(target, tmp_last)  # a hard link: last.pt costs no extra space
    except OSError:
        torch.save(state, tmp_last)
    os.replace(tmp_last, folder / "last.pt")
    steps = sorted(p for p in folder.glob("step_*.pt") if STEP_FILE.search(p.name))
    for old in steps[:-keep] if keep > 0 else steps:
        if old != target:
            old.unlink()
    return target


def find_checkpoint(run_dir: Path) -> Path | None:
    last = run_dir / "checkpoints" / "last.pt"
    return last if last.exists() else None


def load_checkpoint(path: Path) -> dict:
    """Load with `weights_only=True`: tensors and plain containers only, never arbitrary objects."""
    if not path.exists():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"cannot load checkpoint {path}: {e}") from None


def with_current_names(state: dict, module: torch.nn.Module) -> dict:
    """`state` with the parameter names `module` expects. Version 0.1.0 kept the local encoder's
    parts (patch_embed, feature_extractor, token_embed, ...) directly in the encoder; they now sit
    under `local_encoder.`, so 0.1.0 checkpoints and exports load as they are."""
    expected = set(module.state_dict())
    renamed = {}
    for key, value in state.items():
        candidates = [key, f"local_encoder.{key}"]
        if key.startswith("encoder."):
            candidates.append(f"encoder.local_encoder.{key[len('encoder.'):]}")
        renamed[next((c for c in candidates if c in expected), key)] = value
    return renamed


class RunLock:
    """An OS file lock on <run folder>/.lock while a process trains in it, so that a second process
    on the same folder stops with a message instead of interleaving logs and checkpoints. The OS
    releases the lock when the process ends, however it ends: a killed run leaves no stale lock."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.file = None

    def __enter__(self) -> "RunLock":
        if fcntl is None:  # no POSIX locks on this platform: run unlocked
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise TrainingError(f"{self.path.parent} is in use by process {holder}; wait for it to end, or "
                                f"use another --run-dir") from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None
