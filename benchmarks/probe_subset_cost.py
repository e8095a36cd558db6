"""What a smaller probe training set costs: the demo's linear probe learning from a seeded sample of
the 60,000 Fashion-MNIST training images (10k, 20k, 30k) against all of them, for a pre-trained
encoder and the random-init one, always scored on all 10,000 test images. Features are extracted
once per encoder; the samples are those the demo draws (`Subset.sample`, seed 0).

    python benchmarks/probe_subset_cost.py runs/demo/export --out docs/results/probe_subset_cost.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from data2vec2 import load_encoder_and_config
from data2vec2.provenance import results_header
from data2vec2.eval.probe import linear_probe
from data2vec2.modalities import MODALITIES
from data2vec2.modalities.image.evaluate import features_for
from data2vec2.model import random_encoder

SIZES = (10_000, 20_000, 30_000, 60_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a pre-trained image-tiny: export folder, run folder or checkpoint")
    parser.add_argument("--cache", help="the data cache (default: the model's data.cache_dir)")
    parser.add_argument("--out")
    args = parser.parse_args()
    encoder, config = load_encoder_and_config(args.model)
    if args.cache:
        config.data.cache_dir = args.cache
    encoders = {"pretrained": encoder, "random": random_encoder(config.model, MODALITIES["image"], seed=0)}
    results = {}
    for name, model in encoders.items():
        start = time.perf_counter()
        train_x, train_y = features_for(model, config, "fashion-mnist:train", pool="mean", device="cpu",
                                        progress=True, bf16=False)
        test_x, test_y = features_for(model, config, "fashion-mnist:test", pool="mean", device="cpu",
                                      progress=True, bf16=False)
        results[name] = {"features_s": round(time.perf_counter() - start, 1)}
        for n in SIZES:
            # the demo's sample: Subset.sample draws sorted indices from the same generator
            idx = np.sort(np.random.default_rng(0).permutation(len(train_y))[:n]) if n < len(train_y) else None
            x, y = (train_x, train_y) if idx is None else (train_x[idx], train_y[idx])
            start = time.perf_counter()
            accuracy = linear_probe(x, y, test_x, test_y, seed=0).test_accuracy
            results[name][str(n)] = {"probe_acc": accuracy, "probe_s": round(time.perf_counter() - start, 1)}
            print(json.dumps({name: {n: results[name][str(n)]}}), flush=True)
    for n in SIZES:
        results.setdefault("gain_points", {})[str(n)] = round(
            100 * (results["pretrained"][str(n)]["probe_acc"] - results["random"][str(n)]["probe_acc"]), 2)
    print(json.dumps(results["gain_points"]))
    if args.out:
        Path(args.out).write_text(json.dumps({"header": results_header("fp32"), "model": args.model,
                                               "results": results},
                                             indent=2) + "\n")


if __name__ == "__main__":
    main()
