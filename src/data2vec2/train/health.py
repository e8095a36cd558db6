"""Whether training is still in its normal range. A divergence shows in the loss or the gradient
norm before it shows as a NaN: each update's values are compared with the running medians of the
updates before it, so that when a NaN stops the run, the message can name the last checkpoint
written before the loss left its range (the loop keeps that checkpoint; `data2vec2 rewind` goes
back to it)."""

from __future__ import annotations

import statistics
from collections import deque


class LossWatch:
    """`see` each update's loss and gradient norm; `left_at` is the first update whose loss or
    gradient norm was over `factor` times the running median of the `window` updates before it
    (judged once `judge_after` updates have been seen), or None: never, or back in range for
    `window` updates in a row since (a spike the run recovered from)."""

    def __init__(self, window: int = 100, factor: float = 10.0, judge_after: int = 10):
        self.losses: deque[float] = deque(maxlen=window)
        self.grad_norms: deque[float] = deque(maxlen=window)
        self.window, self.factor, self.judge_after = window, factor, judge_after
        self.left_at: int | None = None
        self.why = ""
        self.in_range = 0  # updates in range in a row since left_at

    def see(self, step: int, loss: float, grad_norm: float) -> None:
        if len(self.losses) >= self.judge_after:
            out = next(((name, value, median) for name, value, history in (
                ("loss", loss, self.losses), ("gradient norm", grad_norm, self.grad_norms))
                for median in [statistics.median(history)] if value > self.factor * median), None)
            if out is not None and self.left_at is None:
                self.left_at, self.in_range = step, 0
                self.why = f"{out[0]} {out[1]:.4g}, over {self.factor:g}x its running median {out[2]:.4g}"
            elif self.left_at is not None:
                self.in_range = 0 if out is not None else self.in_range + 1
                if self.in_range >= self.window:
                    self.left_at, self.why = None, ""
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)

    @property
    def judged(self) -> bool:
        return len(self.losses) >= self.judge_after

    def recent(self, n: int = 5) -> str:
        return ", ".join(f"{v:.4g}" for v in list(self.losses)[-n:])
