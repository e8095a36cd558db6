"""Metrics: a JSONL file (one object per logged step), TensorBoard, and a progress bar."""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLogger:
    """Appends to run_dir/metrics.jsonl from update `start_step` on: rows of later updates (logged
    by a run that stopped before its next checkpoint) are dropped first, so that a resumed run
    leaves one row per update; TensorBoard drops them too (purge_step)."""

    def __init__(self, run_dir: Path, start_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        path = run_dir / "metrics.jsonl"
        _truncate(path, start_step)
        self.file = open(path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)
        except ImportError:  # tensorboard is a dependency, but never fail a run for its sake
            self.writer = None

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, step)

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _truncate(path: Path, start_step: int) -> None:
    """Keep the rows of updates <= start_step (and no torn last line); replaced atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= start_step:
            keep.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
