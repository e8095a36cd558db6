"""Tune the image fine-tuning recipe (modalities/image/finetune.py) on a validation split carved from
the training images, never on the test split: each (learning rate, layer decay) of a small grid
fine-tunes each given encoder, and the recipe with the best mean validation accuracy over the
encoders wins. Give one encoder per pre-training objective (and a random init with --random-init),
so that the recipe is not chosen for one objective only.

    python benchmarks/finetune_recipe.py runs/efficiency/image-data2vec2-*/checkpoints/last.pt \
        runs/efficiency/image-mae-*/checkpoints/last.pt runs/efficiency/image-data2vec1-*/checkpoints/last.pt \
        --out docs/results/finetune_recipe.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from data2vec2 import load_encoder_and_config
from data2vec2.benchmark import machine
from data2vec2.modalities import MODALITIES
from data2vec2.modalities.image.data import Subset, open_image_source
from data2vec2.modalities.image.finetune import Recipe, finetune, load_images, split_validation
from data2vec2.model import random_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoders", nargs="+", help="run folders, checkpoints or exports of image encoders")
    parser.add_argument("--random-init", action="store_true", help="also a randomly initialised encoder")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 2e-3, 4e-3])
    parser.add_argument("--layer-decays", nargs="+", type=float, default=[0.65, 0.8])
    parser.add_argument("--updates", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-images", type=int, default=10000, help="from the training split, validation excluded")
    parser.add_argument("--val-images", type=int, default=5000, help="held out from the training split")
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    loaded = {str(path): load_encoder_and_config(path) for path in args.encoders}
    if args.random_init:
        config = next(iter(loaded.values()))[1]
        loaded["random init"] = (random_encoder(config.model, MODALITIES["image"], seed=0), config)
    source = open_image_source("fashion-mnist:train", Path(args.cache), 1)
    fit, val = split_validation(source, args.val_images, seed=0)  # the same split as the efficiency benchmark's
    fit = Subset.sample(fit, args.train_images, 0)
    base = Recipe(updates=args.updates, batch_size=args.batch_size, seed=0)
    rows = []
    for lr, decay in itertools.product(args.lrs, args.layer_decays):
        recipe = replace(base, lr=lr, layer_decay=decay)
        for name, (encoder, config) in loaded.items():
            result = finetune(encoder, load_images(fit, config), {"val": load_images(val, config)}, recipe, 10,
                              progress=False)
            rows.append({"lr": lr, "layer_decay": decay, "encoder": name, "val": result["accuracy"]["val"],
                         "seconds": result["seconds"]})
            print(json.dumps(rows[-1]), flush=True)
    means = {(lr, decay): float(np.mean([r["val"] for r in rows if (r["lr"], r["layer_decay"]) == (lr, decay)]))
             for lr, decay in itertools.product(args.lrs, args.layer_decays)}
    (lr, decay), best = max(means.items(), key=lambda item: item[1])
    result = {"benchmark": "finetune_recipe", "updates": args.updates, "batch_size": args.batch_size,
              "train_images": args.train_images, "val_images": args.val_images, "encoders": list(loaded),
              "rows": rows, "mean_val": [{"lr": k[0], "layer_decay": k[1], "val": v} for k, v in means.items()],
              "chosen": {"lr": lr, "layer_decay": decay, "mean_val": best},
              "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["chosen"]))


if __name__ == "__main__":
    main()
