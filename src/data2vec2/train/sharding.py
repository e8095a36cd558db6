"""Fully sharded data parallel training (`train.fsdp`, PyTorch's FSDP2 `fully_shard`) and its
checkpoints (PyTorch Distributed Checkpoint), for the large and huge presets.

Each transformer block of the student is one FSDP unit and the rest of the student (local encoder,
decoder, extra tokens, norms) the root unit. A process keeps 1/W of every weight, of its gradient
and of its AdamW moments, and gathers a unit's weights just before the unit runs.

The EMA teacher is sharded the same way, unit for unit, rather than kept whole on every process:
each process then holds the same slice of a teacher weight as of the student's, so the EMA step
needs no communication (nn/ema.py), and the teacher's memory falls with W like the student's. The
price is one all-gather of the teacher's weights per micro-batch, beside the student's two
all-gathers and one reduce-scatter.

Under bf16 the gathered weights are bf16 and gradients are reduced in fp32; the sharded weights,
AdamW and the teacher's EMA stay fp32, and autocast still decides each operation's precision.

Checkpoints of a sharded run: train/sharded_checkpoint.py."""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.blocks import Block


def shard_model(model: nn.Module, dtype: torch.dtype) -> None:
    """Shard each part of `model` with weights (model.parts(): the student and the teacher) in
    place, each block its own unit."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
    except ImportError:
        raise ConfigError(f"train.fsdp needs torch >= 2.6 (fully_shard); this is torch {torch.__version__}") from None
    # FSDP warns about every block because its outputs are views (of the linear layers' 2-D
    # products); it matters only for in-place changes to them, which nothing here makes
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    bf16 = dtype == torch.bfloat16
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                  reduce_dtype=torch.float32 if bf16 else None,
                                  cast_forward_inputs=False)  # the residual stream stays fp32, as under plain autocast
    for part in model.parts().values():
        if next(part.parameters(), None) is None:  # an objective without a teacher
            continue
        for block in (m for m in part.modules() if isinstance(m, Block)):
            fully_shard(block, mp_policy=policy)
        if part is model.trained:
            fully_shard(part, mp_policy=policy)
            if hasattr(part, "predict"):  # a fine-tuned model is also run by predict (evaluation)
                register_fsdp_forward_method(part, "predict")
            continue
        # a part that is not trained (the teacher): its root weights are freed after every use
        # too, since its EMA step must see shards; it is run by these methods, not by forward
        fully_shard(part, mp_policy=policy, reshard_after_forward=True)
        for method in ("local_features", "forward_unmasked"):
            if hasattr(part, method):
                register_fsdp_forward_method(part, method)


@contextlib.contextmanager
def gradients_kept_local(student: nn.Module):
    """Gradient accumulation: the micro-batches before the last add to this process's unreduced
    gradients; the last one reduces (and shards) their sum."""
    student.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        student.set_requires_gradient_sync(True)
