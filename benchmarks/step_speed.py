"""Time pre-training updates of a preset on synthetic inputs (no data loading) and print
samples/s and MFU, for each precision asked for, measured in one run.

    python benchmarks/step_speed.py image-tiny --precision fp32 bf16 --steps 5 [key=value ...]
    python benchmarks/step_speed.py image-base train.batch_size=8 --out docs/benchmarks/step_speed.jsonl

Each result line carries the hardware and versions it was measured with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from timing import hardware, time_updates

from data2vec2 import load_config
from data2vec2.modalities import MODALITIES
from data2vec2.modalities.image.data import ImageMaskingCollate


def synthetic_batch(config) -> dict:
    """A batch of random images through the image collate (inverse block masks, noise seeds)."""
    settings, B = config.model.image, config.train.batch_size
    grid = settings.image_size // settings.patch_size
    g = torch.Generator().manual_seed(0)
    items = [{"index": i, "inputs": torch.randn(settings.in_channels, settings.image_size, settings.image_size,
                                                  generator=g)} for i in range(B)]
    return ImageMaskingCollate(config.masking, (grid, grid), seed=0)(items)


def time_steps(config, precision: str, steps: int) -> dict:
    result = time_updates(config, synthetic_batch(config), precision, steps)
    B, step_s, peak = config.train.batch_size, result["step_s"], result.pop("peak_flops")
    flops = MODALITIES["image"].step_flops(config, B, 0)
    return {"precision": result["precision"], "step_s": step_s, "samples_per_s": B / step_s,
            "achieved_gflops": flops / step_s / 1e9, "peak_gflops": peak / 1e9, "mfu": flops / step_s / peak}


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
    for name in args.precision:
        config = load_config(args.preset, args.overrides + [f"train.device={args.device}"])
        line = json.dumps({"preset": args.preset, "overrides": args.overrides,
                           **time_steps(config, name, args.steps), **hardware(torch.device(args.device))})
        print(line, flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
