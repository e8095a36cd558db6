"""The EMA teacher (fairseq/modules/ema_module.py `EMAModule`): an exponential moving average of the student, in fp32.

    tau(t) = tau_e - (tau_e - tau_0) * (1 - t / n)   for t < n   (a linear ramp tau_0 -> tau_e)
    tau(t) = tau_e                                    for t >= n
    p_teacher <- tau * p_teacher + (1 - tau) * p_student,  skipped entirely when tau = 1.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .sharded import local_part


def ema_decay(step: int, decay: float, end_decay: float, anneal_steps: int) -> float:
    """tau after `step` optimizer updates."""
    if decay == end_decay or step >= anneal_steps:
        return end_decay
    return end_decay - (end_decay - decay) * (1.0 - step / anneal_steps)


def sized_to_run(decay: float, end_decay: float, anneal_steps: int, run_steps: int, start_half_life: float = 0.0,
                 end_half_life: float = 0.0, anneal_fraction: float = 0.0) -> tuple[float, float, int]:
    """(tau_0, tau_e, n) with each setting given relative to a run of `run_steps` updates in place of
    its absolute value: a decay from the teacher's half-life h = fraction x run_steps updates (after h
    updates at tau = 0.5 ** (1 / h) half of the teacher is still what it was), the ramp's end at
    anneal_fraction x run_steps. A fraction of 0 keeps the absolute value."""
    if start_half_life > 0:
        decay = 0.5 ** (1.0 / max(start_half_life * run_steps, 1e-9))
    if end_half_life > 0:
        end_decay = 0.5 ** (1.0 / max(end_half_life * run_steps, 1e-9))
    if anneal_fraction > 0:
        anneal_steps = max(1, round(anneal_fraction * run_steps))
    return decay, end_decay, anneal_steps


def make_teacher(student_part: nn.Module, leave_out: tuple[str, ...] = ()) -> nn.Module:
    """An fp32 copy of `student_part` that never receives gradients and always runs in eval mode.
    The submodules named in `leave_out` are not copied (the teacher shares the student's)."""
    teacher = copy.deepcopy(student_part).float()
    for name in leave_out:  # dotted paths, e.g. "local_encoder.feature_extractor"
        parent, _, child = name.rpartition(".")
        setattr(teacher.get_submodule(parent) if parent else teacher, child, None)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, tau: float) -> None:
    """One EMA step. Parameters the teacher lacks (decoder, shared parts) are skipped; parameters
    frozen in the student and all buffers are copied. Sharded (train.fsdp) student and teacher
    parameters are split the same way, so each process averages the parts it holds."""
    if tau >= 1.0:
        return
    student_params = dict(student.named_parameters())
    lerp_t, lerp_s = [], []
    for name, p_t in teacher.named_parameters():
        p_s = student_params[name]
        t, s = local_part(p_t), local_part(p_s.detach())
        if p_s.requires_grad:
            lerp_t.append(t)
            lerp_s.append(s.to(t.dtype))
        else:
            t.copy_(s)
    if lerp_t:
        torch._foreach_lerp_(lerp_t, lerp_s, 1.0 - tau)
    student_buffers = dict(student.named_buffers())
    for name, b_t in teacher.named_buffers():
        b_t.copy_(student_buffers[name])
