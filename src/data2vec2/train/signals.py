"""SIGINT (Ctrl-C) and SIGTERM (what a cluster scheduler sends before it kills a job) ask the
training loop to stop after the current update, with a checkpoint of it. A second signal stops at
once (KeyboardInterrupt); the newest checkpoint on disk is complete either way."""

from __future__ import annotations

import signal
import threading

import torch

from . import distributed

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """Installs the handlers for its `with` block (main thread only; elsewhere it never asks)."""

    def __init__(self):
        self.received: signal.Signals | None = None
        self.previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def asked(self) -> bool:
        """Whether any process received a signal (every process of a torchrun job agrees). The
        flag is a host tensor (gloo, also beside NCCL): no wait for the device."""
        if not distributed.is_distributed():
            return self.received is not None
        flag = torch.tensor([1.0 if self.received is not None else 0.0])
        return bool(distributed.all_reduce_sum(flag).item() > 0)
