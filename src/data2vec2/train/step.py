"""One training update, the same for the loop and for every benchmark, whatever the objective:

    one update = A micro-batches on each of W processes (gradient accumulation x DDP or FSDP)
    each       : the objective's LossOutput (loss summed over the batch, and its count); backward
    loss       = (sum over all of them of the summed losses) / (the sum of their counts)
    then       : gradients / that count -> clip -> AdamW step -> LR schedule step -> after_update
                 (the EMA teacher's step with tau(update), for data2vec)

The host waits for the device once per update (the loss and the gradient norm: a non-finite one is
refused before the optimizer step); health metrics are computed only when asked for (logging steps).
With torchrun on GPUs the scalar sums of the host (counts, losses) go over gloo, the tensors' over
NCCL (train/distributed.py).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from ..errors import TrainingError
from ..nn.sharded import DTensor
from . import distributed
from .setup import Training


class NonFiniteUpdate(TrainingError):
    """A non-finite loss or gradient: the update is refused before the optimizer step."""


@dataclass
class StepResult:
    loss: float  # the update's mean loss over what it was scored on (all processes)
    grad_norm: torch.Tensor  # before clipping (on the CPU)
    metrics: dict[str, float] = field(default_factory=dict)  # after_update's (ema_decay), and health metrics on logging steps


def on_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on `device` (copied without blocking from pinned memory); the rest as is."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train_step(training: Training, micro_batches: list[dict], step: int, with_metrics: bool = False) -> StepResult:
    """Update number `step + 1` from this process's `micro_batches` (collate dicts)."""
    model, world = training.model, training.dist.world_size
    if hasattr(model, "set_num_updates"):  # a fine-tuning objective (its encoder may be frozen at first)
        model.set_num_updates(step)
    loss_total = torch.zeros((), device=training.device)
    count = 0
    metric_sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else training.no_sync():
            with training.autocast():
                out = training.runner(on_device(batch, training.device))
            if with_metrics:
                for name, value in out.metrics().items():
                    metric_sums[name] = metric_sums.get(name, 0.0) + value / len(micro_batches)
            # DDP and FSDP average the gradients over the W processes; * W makes them those of the sum
            (out.loss_sum * world if world > 1 else out.loss_sum).backward()
        loss_total += out.loss_sum.detach()
        count = count + out.count

    # the gradients of the sum become those of the update's mean loss
    count = distributed.all_reduce_sum(torch.as_tensor(count, dtype=torch.float64))
    count = float(count) if count.device.type == "cpu" else count
    trained = list(model.trained.parameters())
    for p in trained:
        if p.grad is not None:
            p.grad.div_(count)
    clip = training.config.optim.clip_norm
    # the norm before clipping; after DDP's all-reduce it is the same on every process (sharded
    # gradients: a replicated DTensor, whose full value every process has)
    grad_norm = torch.nn.utils.clip_grad_norm_(trained, clip if clip > 0 else float("inf"))
    grad_norm = grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm
    # the update's one wait for the device: this process's summed loss and the norm, copied together
    local_loss, grad_norm = torch.stack([loss_total, grad_norm.to(loss_total.dtype)]).cpu().unbind()
    loss = float(distributed.all_reduce_sum(local_loss)) / float(count)
    if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
        training.optimizer.zero_grad(set_to_none=True)
        what = f"the loss is {loss}" if not math.isfinite(loss) else \
            f"the gradient norm is {float(grad_norm)} (the loss is {loss:.4g})"
        raise NonFiniteUpdate(f"{what} at update {step + 1}; this update was not applied")
    training.optimizer.step()
    training.scheduler.step()
    training.optimizer.zero_grad(set_to_none=True)
    after = model.after_update(training.progress.position(step + 1))
    return StepResult(loss=loss, grad_norm=grad_norm,
                      metrics={**after, **{name: float(value) for name, value in metric_sums.items()}})
