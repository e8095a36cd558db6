"""Faults: a non-finite update is refused and never saved; changed optimizer settings apply on
resume; one process at a time in a run folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data2vec2
from data2vec2.errors import TrainingError
from data2vec2.train.logger import read_metrics


def finite(state: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for part in ("student", "teacher") for t in state[part].values()
               if t.is_floating_point())


def test_a_nan_gradient_with_a_finite_loss_is_never_applied_nor_saved(tmp_path, small_overrides, monkeypatch):
    from data2vec2.model import Data2Vec2

    config = data2vec2.load_config("image-tiny", small_overrides + ["train.max_steps=6", "train.checkpoint_every=2"])
    data2vec2.pretrain(config, tmp_path / "run", progress=False, max_steps=2)
    before = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    elementwise_loss = Data2Vec2.elementwise_loss

    def nan_gradient(self, pred, target):  # the value stays finite; d sqrt(x) / dx at 0 is inf, * 0 = NaN
        return elementwise_loss(self, pred, target) + 0 * torch.sqrt((pred * 0).sum())

    monkeypatch.setattr(Data2Vec2, "elementwise_loss", nan_gradient)
    with pytest.raises(TrainingError, match=r"the gradient norm is nan \(the loss is [0-9.]+\) at update 3; this update "
                                            r"was not applied.*newest checkpoint on disk \(update 2\)"):
        data2vec2.pretrain(config, tmp_path / "run", progress=False)
    after = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert after["step"] == 2 and finite(after)
    for name in before["student"]:
        torch.testing.assert_close(before["student"][name], after["student"][name])


def test_a_lower_learning_rate_given_on_resume_is_applied(tmp_path, small_overrides, capsys):
    base = small_overrides + ["train.max_steps=6", "train.checkpoint_every=3", "optim.warmup_steps=0"]
    config = data2vec2.load_config("image-tiny", base)
    data2vec2.pretrain(config, tmp_path / "run", progress=False, max_steps=3)
    lower = data2vec2.load_config("image-tiny", base + ["optim.lr=1e-4"])
    data2vec2.pretrain(lower, tmp_path / "run", progress=False)
    assert "optim.lr 0.003 -> 0.0001" in capsys.readouterr().out
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    from data2vec2.train.optim import lr_factor

    for row in rows[3:]:  # the schedule of the new peak lr, at the same steps
        assert row["lr"] == pytest.approx(1e-4 * lr_factor(row["step"], 0, 6, 0.0))
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert all(group["initial_lr"] == 1e-4 for group in state["optimizer"]["param_groups"])


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path, small_overrides):
    from data2vec2.train.checkpoint import RunLock

    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(TrainingError, match=f"{run} is in use by process {os.getpid()}"):
            RunLock(run).__enter__()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
        r = subprocess.run([sys.executable, "-m", "data2vec2", "pretrain", "image-tiny", "--run-dir", str(run),
                            *small_overrides, "train.max_steps=1"], capture_output=True, text=True, env=env)
        assert r.returncode == 2 and f"in use by process {os.getpid()}" in r.stderr, r.stderr[-2000:]
    # released: a lock left by a killed process is no lock (the OS drops it with the process)
    config = data2vec2.load_config("image-tiny", small_overrides + ["train.max_steps=1"])
    assert data2vec2.pretrain(config, run, progress=False)["steps"] == 1
