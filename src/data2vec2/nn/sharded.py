"""Tensors that FSDP may have sharded (DTensor) read as the part this process holds."""

from __future__ import annotations

import torch

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch < 2.5: no sharded parameters (and no train.fsdp)
    DTensor = ()


def local_part(t: torch.Tensor) -> torch.Tensor:
    """The part of a sharded (FSDP) tensor this process holds; any other tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t
