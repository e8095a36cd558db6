"""One training update, the same for the loop and for every benchmark:

    one update = A micro-batches on each of W processes (gradient accumulation x DDP or FSDP)
    loss       = (sum over all of them of the masked-token losses) / (the update's masked count)
    then       : clip -> AdamW step -> LR schedule step -> EMA teacher step with tau(update)

The host waits for the device once per update (the loss and the gradient norm: a non-finite one is
refused before the optimizer step); health metrics are computed only when asked for (logging steps).
With torchrun on GPUs the scalar sums of the host (masked counts, losses) go over gloo, the
tensors' over NCCL (train/distributed.py).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from ..errors import TrainingError
from . import distributed
from .setup import Training


class NonFiniteUpdate(TrainingError):
    """A non-finite loss or gradient: the update is refused before the optimizer step."""


@dataclass
class StepResult:
    loss: float  # the update's mean loss over its masked tokens (all processes)
    grad_norm: torch.Tensor  # before clipping (on the CPU)
    tau: float  # the EMA decay used for the teacher after this update
    metrics: dict[str, float] = field(default_factory=dict)  # health metrics, on logging steps only


def train_step(training: Training, micro_batches: list[dict], step: int, with_metrics: bool = False) -> StepResult:
    """Update number `step + 1` from this process's `micro_batches` (collate dicts)."""
    model, student, world = training.model, training.student, training.dist.world_size
    local_masked = torch.tensor(float(sum(int(b["mask"].sum()) for b in micro_batches)))
    update_masked = float(distributed.all_reduce_sum(local_masked))
    loss_total = torch.zeros((), device=training.device)
    metric_sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micro_batches):
        inputs = batch["inputs"].to(training.device, non_blocking=True)
        mask = batch["mask"].to(training.device, non_blocking=True)
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last else training.no_sync():
            with training.autocast():
                out = model(inputs, mask, batch["noise_seed"], update_masked, student=student,
                            with_metrics=with_metrics, masked_per_row=int(batch["mask"][0].sum()))
            # DDP and FSDP average the gradients over the W processes; * W makes them those of the sum
            (out.loss * world if world > 1 else out.loss).backward()
        loss_total += out.loss.detach()
        for name, value in out.metrics.items():
            metric_sums[name] = metric_sums.get(name, 0.0) + value / len(micro_batches)

    clip = training.config.optim.clip_norm
    # the norm before clipping; after DDP's all-reduce it is the same on every process (sharded
    # gradients: a replicated DTensor, whose full value every process has)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.student.parameters(), clip if clip > 0 else float("inf"))
    grad_norm = grad_norm.full_tensor() if isinstance(grad_norm, distributed.DTensor) else grad_norm
    # the update's one wait for the device: this process's loss and the norm, copied together
    local_loss, grad_norm = torch.stack([loss_total, grad_norm.to(loss_total.dtype)]).cpu().unbind()
    loss = float(distributed.all_reduce_sum(local_loss))
    if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
        training.optimizer.zero_grad(set_to_none=True)
        what = f"the loss is {loss}" if not math.isfinite(loss) else \
            f"the gradient norm is {float(grad_norm)} (the loss is {loss:.4g})"
        raise NonFiniteUpdate(f"{what} at update {step + 1}; this update was not applied")
    training.optimizer.step()
    training.scheduler.step()
    training.optimizer.zero_grad(set_to_none=True)
    tau = model.update_teacher(step + 1)
    return StepResult(loss=loss, grad_norm=grad_norm, tau=tau,
                      metrics={name: float(value) for name, value in metric_sums.items()})
