"""Tune the image fine-tuning recipe (`data2vec2 finetune image-cls-tiny`, modalities/image/classification.py)
on a validation split carved from the training images, never on the test split: each (learning rate,
layer decay) of a small grid fine-tunes each given encoder, and the recipe with the best mean
validation accuracy over the encoders wins. Give one encoder per pre-training objective (and a
random init with --random-init), so that the recipe is not chosen for one objective only.

    python benchmarks/finetune_recipe.py runs/efficiency/image-data2vec2-*/checkpoints/last.pt \
        runs/efficiency/image-mae-*/checkpoints/last.pt runs/efficiency/image-data2vec1-*/checkpoints/last.pt \
        --out docs/results/finetune_recipe.json

The results recorded in docs/results/finetune_recipe.json before 2026-12-06 came from the earlier
in-memory fine-tuning loop (commit 7ff63f4, 400 updates on 10,000 images held in memory, crops and
mixing on the batch); this script now runs the fine-tuning job itself.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from data2vec2.provenance import results_header
from data2vec2.finetune import finetune, load_finetune_config
from data2vec2.modalities import MODALITIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoders", nargs="+", help="run folders, checkpoints or exports of image encoders")
    parser.add_argument("--random-init", action="store_true", help="also a random encoder of the first's architecture")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 2e-3, 4e-3])
    parser.add_argument("--layer-decays", nargs="+", type=float, default=[0.65, 0.8])
    parser.add_argument("--updates", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=10000, help="from the training split, validation excluded")
    parser.add_argument("--val-images", type=int, default=5000, help="held out from the training split")
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    inits = {path: [f"finetune.init={path}"] for path in args.encoders}
    if args.random_init:
        inits["random init"] = [f"finetune.init={args.encoders[0]}", "finetune.random_init=true"]
    rows = []
    for lr, decay in itertools.product(args.lrs, args.layer_decays):
        for name, init in inits.items():
            overrides = init + [f"data.cache_dir={args.cache}", f"optim.lr={lr}", f"finetune.layer_decay={decay}",
                                f"train.batch_size={args.batch_size}", f"train.max_steps={args.updates}",
                                "train.time_budget_s=0", f"optim.warmup_steps={args.updates // 10}",
                                f"data.limit={args.train_images + args.val_images}",
                                f"finetune.valid_size={args.val_images}", f"finetune.eval_every={args.updates}",
                                "finetune.test=[]"]
            config = load_finetune_config("image-cls-tiny", overrides, MODALITIES)
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as run:
                result = finetune(config, run, MODALITIES["image"], progress=False)["results"]
            rows.append({"lr": lr, "layer_decay": decay, "encoder": name,
                         "val": result["scores"]["valid"]["accuracy"], "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)
    means = {(lr, decay): float(np.mean([r["val"] for r in rows if (r["lr"], r["layer_decay"]) == (lr, decay)]))
             for lr, decay in itertools.product(args.lrs, args.layer_decays)}
    (lr, decay), best = max(means.items(), key=lambda item: item[1])
    result = {"benchmark": "finetune_recipe", "updates": args.updates, "batch_size": args.batch_size,
              "train_images": args.train_images, "val_images": args.val_images, "encoders": list(inits),
              "rows": rows, "mean_val": [{"lr": k[0], "layer_decay": k[1], "val": v} for k, v in means.items()],
              "chosen": {"lr": lr, "layer_decay": decay, "mean_val": best},
              "header": results_header("fp32")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["chosen"]))


if __name__ == "__main__":
    main()
