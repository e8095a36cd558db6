"""FLOP counts of a training step and the machine's measured matmul rate, for MFU.

MFU = (model FLOPs per step x steps per second) / (measured dense matmul FLOP/s in the training
precision). Counted: every matmul and convolution (2 FLOPs per multiply-add) of the teacher's
forward pass, and of the student's and decoder's forward and backward passes (backward = 2x
forward). Elementwise work, norms and softmax are not counted.
"""

from __future__ import annotations

import time

import torch


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 0, seconds: float = 0.5) -> float:
    """Dense matmul throughput (FLOP/s) of this machine in `dtype`, measured now. On a GPU the
    matrices are 8192 x 8192 and the host waits once per 10 products (a 2048 x 2048 product takes
    about 20 us on an H100: a wait after each would measure the launch, not the tensor cores)."""
    cuda = device.type == "cuda"
    size = size or (8192 if cuda else 2048)
    per_wait = 10 if cuda else 1
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)  # warm up
    if cuda:
        torch.cuda.synchronize(device)
    n, start = 0, time.perf_counter()
    while True:
        for _ in range(per_wait):
            torch.mm(a, b)
        n += per_wait
        if cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 3:
            return 2 * size**3 * n / elapsed


def _grouped_conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                                 transposed, _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:
    """A convolution's backward: the gradient of the input and that of the weight each cost what the
    forward costs. PyTorch's own formula counts the weight gradient as if groups were 1 (8x too
    much for the image decoder's convolutions)."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_update_flops(model: torch.nn.Module, batch: dict, device: torch.device) -> float:
    """The matmul and convolution FLOPs of one forward and backward pass of `model` (any objective)
    on a collate `batch`, counted by PyTorch's FlopCounterMode (2 FLOPs per multiply-add, the same
    convention as the hand counts above). The random streams are left as they were and the
    gradients are cleared, so the training run is not changed by the count."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {torch.ops.aten.convolution_backward: _grouped_conv_backward_flops}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            out = model({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            out.loss.backward()
    for p in model.parameters():
        p.grad = None
    return float(counter.get_total_flops())
