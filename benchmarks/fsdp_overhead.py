"""What train.fsdp costs in one process, where it shards nothing (docs/scaling.md): the same preset
trained with and without it in one process, their updates alternating (A, B, A, B, ...) so that
both see the same machine load; the median of the per-pair time ratios is reported.

    python benchmarks/fsdp_overhead.py image-tiny --pairs 20 --out result.json
    python benchmarks/fsdp_overhead.py image-base --pairs 8 train.batch_size=8 --out result.json
(docs/results/fsdp_one_process.json holds both rows)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from data2vec2 import load_config
from data2vec2.provenance import results_header
from data2vec2.modalities import MODALITIES
from data2vec2.train.setup import setup_training
from data2vec2.train.step import train_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset")
    p.add_argument("--pairs", type=int, default=20, help="timed updates of each, after 2 warm-up updates")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_intermixed_args()
    runs = {}
    for fsdp in (False, True):
        config = load_config(args.preset, args.overrides + [f"train.fsdp={fsdp}"])
        modality = MODALITIES[config.model.modality]
        batch, _ = modality.synthetic_batch(config)
        runs[fsdp] = (setup_training(config, modality), batch)
    seconds = {False: [], True: []}
    for i in range(2 + args.pairs):
        for fsdp, (training, batch) in runs.items():
            start = time.perf_counter()
            train_step(training, [batch], step=i)
            if i >= 2:
                seconds[fsdp].append(time.perf_counter() - start)
    ratios = [b / a for a, b in zip(seconds[False], seconds[True])]
    training = runs[True][0]
    row = {"preset": args.preset, "overrides": args.overrides, "batch": training.config.train.batch_size,
           "precision": str(training.dtype).replace("torch.", ""), "device": str(training.device),
           "pairs": args.pairs, "unsharded_step_s": round(float(np.median(seconds[False])), 4),
           "fsdp_step_s": round(float(np.median(seconds[True])), 4),
           "fsdp_over_unsharded": round(float(np.median(ratios)), 3),
           "ratio_quartiles": [round(float(q), 3) for q in np.percentile(ratios, [25, 75])],
           "header": results_header(str(training.dtype).replace("torch.", ""))}
    print(json.dumps({k: v for k, v in row.items() if k != "header"}))
    if args.out:
        args.out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
