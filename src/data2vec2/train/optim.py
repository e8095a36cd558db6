"""AdamW and the learning-rate schedules (fairseq/optim/adam.py; fairseq/optim/lr_scheduler/: cosine_lr_scheduler.py,
polynomial_decay_schedule.py, tri_stage_lr_scheduler.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig
from ..errors import ConfigError


def param_groups(model: nn.Module, cfg: OptimConfig, lr_scales: dict[str, float] | None = None) -> list[dict]:
    """By default every trainable parameter is decayed, as the reference code effectively does
    (its 1-D exemption is never applied: fairseq/optim/composite.py). With `decay_1d_params: false`, biases, norm
    gains and other 1-D (or 0-D) parameters and the CLS token get no weight decay. `lr_scales`:
    parameter name -> the factor of its learning rate (fine-tuning's layer decay; 1 if absent)."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = not cfg.decay_1d_params and (p.ndim <= 1 or name.endswith(".bias") or "cls_token" in name)
        scale = (lr_scales or {}).get(name, 1.0)
        groups.setdefault((scale, 0.0 if exempt else cfg.weight_decay), []).append(p)
    ordered = sorted(groups.items(), key=lambda kv: (-kv[0][0], -kv[0][1]))  # decayed first, then by scale
    return [{"params": ps, "weight_decay": decay, "lr": cfg.lr * scale, "lr_scale": scale}
            for (scale, decay), ps in ordered]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device,
                    lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer:
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, cfg, lr_scales), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             fused=fused)


TRI_STAGE_START = 0.01  # tri_stage warms up from lr x this (the reference's init_lr_scale)


def lr_factor(step: int, warmup: int, max_steps: int, min_ratio: float, schedule: str = "cosine",
              hold: int = 0) -> float:
    """The learning rate after `step` updates, as a fraction of the peak:
        cosine     linear warmup from 0 over `warmup` updates, then a half cosine down to `min_ratio`
                   at `max_steps`
        linear     linear warmup from 0, then a straight line down to `min_ratio` at `max_steps`
        tri_stage  linear warmup from TRI_STAGE_START, `hold` updates at 1, then exponential decay to
                   `min_ratio` at `max_steps`
    and `min_ratio` after `max_steps`."""
    if schedule == "tri_stage":
        if step < warmup:
            return TRI_STAGE_START + (1.0 - TRI_STAGE_START) * step / warmup
        if step < warmup + hold:
            return 1.0
        progress = min(1.0, (step - warmup - hold) / max(1, max_steps - warmup - hold))
        return math.exp(math.log(min_ratio) * progress)
    if step < warmup:
        return step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Progress:
    """Where the schedules (learning rate, EMA) stand after an update. Without a time budget:
    at that update. With `train.time_budget_s`: at that update, or at the same fraction of
    `max_steps` as the fraction of the budget spent, whichever is further, so that a run slower
    than planned still ends its schedules when its budget ends (and a run on pace is unchanged)."""

    def __init__(self, max_steps: int = 0, budget_s: float = 0.0, elapsed_s: float = 0.0):
        self.max_steps, self.budget_s = max_steps, budget_s
        self.elapsed_s = elapsed_s  # training seconds so far, earlier invocations of the run included

    def position(self, update: int) -> int:
        if self.budget_s <= 0:
            return update
        return max(update, min(self.max_steps, int(self.elapsed_s / self.budget_s * self.max_steps)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int,
                    start_step: int = 0, progress: Progress | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """`cfg.schedule` on the peak `cfg.lr`, positioned after `start_step` updates (a resume), at
    `progress`'s position of each update."""
    min_ratio = cfg.min_lr / cfg.lr
    position = progress.position if progress is not None else (lambda step: step)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(position(step), cfg.warmup_steps, max_steps, min_ratio, cfg.schedule,
                                          cfg.hold_steps),
        last_epoch=start_step - 1)


def apply_optim_config(optimizer: torch.optim.Optimizer, model: nn.Module, cfg: OptimConfig,
                       lr_scales: dict[str, float] | None = None) -> None:
    """Set the hyper-parameters of a restored optimizer from `cfg` (its moments stay): what a resume
    with changed optim.* settings does. The schedule is rebuilt from `cfg` by `build_scheduler`."""
    groups = param_groups(model, cfg, lr_scales)
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise ConfigError("optim.decay_1d_params (or finetune.layer_decay) differs from the checkpoint's: the "
                          "parameter groups would change; use a new run folder or --no-resume")
    for group, new in zip(optimizer.param_groups, groups):
        group.update(initial_lr=new["lr"], lr_scale=new["lr_scale"], betas=cfg.betas, eps=cfg.eps,
                     weight_decay=new["weight_decay"])
