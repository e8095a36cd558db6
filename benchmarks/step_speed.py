"""Time pre-training updates of a preset on synthetic inputs (no data loading) and print
samples/s and MFU, for each precision asked for, measured in one run.

    python benchmarks/step_speed.py image-tiny --precision fp32 bf16 --steps 5 [key=value ...]
    python benchmarks/step_speed.py image-base train.batch_size=8 --out docs/benchmarks/step_speed.jsonl

Each result line carries the hardware and versions it was measured with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from data2vec2 import load_config
from data2vec2.masking import make_masks, num_masked
from data2vec2 import build_model
from data2vec2.train.flops import image_step_flops, measure_matmul_flops
from data2vec2.train.optim import build_optimizer


def time_steps(config, dtype, steps: int, device) -> dict:
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    opt = build_optimizer(model.student, config.optim, device)
    ic, m = config.model.image, config.masking
    B, grid = config.train.batch_size, ic.image_size // ic.patch_size
    images = torch.randn(B, ic.in_channels, ic.image_size, ic.image_size, device=device)
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(np.concatenate([make_masks(m.kind, m.num_masks, (grid, grid), m.mask_prob, m.mask_length,
                                                       m.mask_prob_adjust, rng) for _ in range(B)])).to(device)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with autocast:
            out = model(images, mask)
        (out["loss_sum"] / out["num_masked"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_teacher(i + 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_time = float(np.median(times[1:]))
    keep = grid * grid - num_masked(m.kind, grid * grid, m.mask_prob)
    flops = image_step_flops(config, B, keep)
    peak = measure_matmul_flops(device, dtype)
    return {"precision": str(dtype).replace("torch.", ""), "step_s": step_time, "samples_per_s": B / step_time,
            "achieved_gflops": flops / step_time / 1e9, "peak_gflops": peak / 1e9, "mfu": flops / step_time / peak}


def hardware(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
        name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
        name += f", {torch.get_num_threads()} threads"
    return {"device": name, "torch": torch.__version__, "python": platform.python_version()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("preset")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="also append the result lines to this JSONL file")
    args, extra = p.parse_known_args()
    args.overrides += extra
    config = load_config(args.preset, args.overrides)
    device = torch.device(args.device)
    for name in args.precision:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        line = json.dumps({"preset": args.preset, "overrides": args.overrides,
                           **time_steps(config, dtype, args.steps, device), **hardware(device)})
        print(line, flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
