"""The demo sized to the machine. Before it chooses any work, the demo measures how fast this
machine trains image-tiny (a few real updates on random images) and encodes images for the
probes, then chooses how many updates to pre-train and from how many training images the probes
learn, so that pre-training and evaluation together end within the budget:

- evaluation gets what it needs for the largest probe training set whose cost fits in
  EVAL_SHARE of the budget (the 10,000 test images are always all used);
- pre-training gets the rest. When the preset's updates do not fit, the schedule is shortened to
  the updates that do (warm-up and EMA annealing scaled with it), so that the learning rate still
  decays to its end instead of being cut off at its peak by the time cap.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from ...benchmark import time_updates
from ...config import Config
from ...model import random_encoder

PROBE_TRAIN_SIZES = (60_000, 30_000, 20_000, 10_000)  # training images the probes learn from
TEST_IMAGES = 10_000
EVAL_SHARE = 0.3  # of the budget, at most, for evaluation (unless even the smallest set needs more)
FIXED_S = 25.0  # pre-training start-up, export, pixel features, plot
ENCODE_OVERHEAD = 1.3  # feature extraction through the DataLoader vs. the timed forward pass (AVX2: 204 vs 271 images/s)
PROBE_FIT_S = 2.5e-3  # seconds per probe optimisation step (batch 1024), measured on AVX2 (probe_subset_cost.py)
LOOP_OVERHEAD = 1.1  # an update in the real loop (data loading beside it) vs. on a ready batch (AVX2: 1.05)


@dataclass
class DemoPlan:
    budget_s: float
    step_s: float  # one update, measured on a ready batch
    encode_s_per_image: float  # feature extraction, measured
    updates: int
    warmup_steps: int
    anneal_steps: int
    pretrain_budget_s: float
    probe_train_images: int
    eval_estimate_s: float
    why: str

    def as_dict(self) -> dict:
        return asdict(self)


def measure(config: Config, modality, bf16_features: bool) -> tuple[float, float]:
    """(seconds per update, seconds per encoded image) on this machine, now."""
    step_s = time_updates(config, modality, steps=2, warmup=1)["step_s"]
    encoder = random_encoder(config.model, modality, seed=0).eval()
    settings = config.model.settings
    images = torch.randn(256, settings.in_channels, settings.image_size, settings.image_size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_features)
    with torch.no_grad(), autocast:
        encoder.embed(images)  # warm-up
        start = time.perf_counter()
        encoder.embed(images)
    return step_s, (time.perf_counter() - start) / len(images)


def probe_steps(train_images: int) -> int:
    """Optimisation steps of one linear_probe call (eval/probe.py defaults: 4 candidate fits on
    90 % of the training set and a refit on all of it, each >= 30 epochs and >= 1,000 steps)."""
    fit = max(30 * math.ceil(0.9 * train_images / 1024), 1000)
    refit = max(30 * math.ceil(train_images / 1024), 1000)
    return 4 * fit + refit


def eval_seconds(train_images: int, encode_s: float) -> float:
    """Two encoders' features of the probe set and the test set, and three probes (with pixels)."""
    return 2 * (train_images + TEST_IMAGES) * encode_s * ENCODE_OVERHEAD + 3 * probe_steps(train_images) * PROBE_FIT_S


def make_plan(config: Config, step_s: float, encode_s: float, budget_s: float) -> DemoPlan:
    train = config.train
    sizes = [n for n in PROBE_TRAIN_SIZES if eval_seconds(n, encode_s) <= EVAL_SHARE * budget_s]
    probe_n = sizes[0] if sizes else PROBE_TRAIN_SIZES[-1]
    eval_s = eval_seconds(probe_n, encode_s)
    pretrain_s = max(budget_s - eval_s - FIXED_S, 60.0)
    fit = int(pretrain_s / (LOOP_OVERHEAD * step_s))
    updates = max(min(train.max_steps, fit), 1)
    scale = updates / train.max_steps
    warmup = max(1, round(config.optim.warmup_steps * scale)) if config.optim.warmup_steps else 0
    anneal = max(1, round(config.ema.anneal_steps * scale)) if config.ema.anneal_steps else 0
    if updates == train.max_steps:
        why = (f"all {updates} updates of the preset fit in {pretrain_s:.0f} s at {step_s:.2f} s each; "
               f"the probes learn from {probe_n} training images")
    else:
        why = (f"{train.max_steps} updates at {step_s:.2f} s each would take {train.max_steps * step_s:.0f} s; "
               f"{updates} fit in the {pretrain_s:.0f} s left after evaluation, so the schedule is shortened to "
               f"{updates} (warm-up {warmup}, EMA annealing {anneal}); the probes learn from {probe_n} "
               f"training images, encoding {1 / encode_s:.0f} images/s")
    return DemoPlan(budget_s=budget_s, step_s=step_s, encode_s_per_image=encode_s, updates=updates,
                    warmup_steps=warmup, anneal_steps=anneal, pretrain_budget_s=pretrain_s,
                    probe_train_images=probe_n, eval_estimate_s=eval_s, why=why)


def plan_overrides(plan: DemoPlan) -> list[str]:
    """The config overrides that carry out the plan (the time cap stays as a safety net)."""
    return [f"train.max_steps={plan.updates}", f"optim.warmup_steps={plan.warmup_steps}",
            f"ema.anneal_steps={plan.anneal_steps}", f"train.time_budget_s={plan.pretrain_budget_s:.0f}"]
