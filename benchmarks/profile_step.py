"""Where the time of a training update goes: torch.profiler over a few full updates (teacher,
student, decoder, backward, AdamW, EMA) of a preset on random inputs, operators sorted by their own
CPU time.

    python benchmarks/profile_step.py image-tiny --steps 3 train.precision=fp32
"""

from __future__ import annotations

import argparse

from torch.profiler import ProfilerActivity, profile

from data2vec2 import load_config
from data2vec2.modalities import MODALITIES
from data2vec2.train.setup import setup_training
from data2vec2.train.step import train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("overrides", nargs="*")
    args, extra = parser.parse_known_args()  # key=value overrides may follow the options
    config = load_config(args.preset, args.overrides + extra)
    modality = MODALITIES[config.model.modality]
    training = setup_training(config, modality)
    batch, _ = modality.synthetic_batch(config)
    train_step(training, [batch], step=0)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.steps):
            train_step(training, [batch], step=i + 1)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
