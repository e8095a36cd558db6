"""A reference point for `probe-text` (docs/text.md): no encoder at all, each snippet a bag of words
(one binary feature per BPE token of the run's tokenizer), the probe's logistic regression
(eval/probe.py, weight decay chosen on a split of the training snippets), trained on Rotten
Tomatoes' training split and scored on dev and test.

    python benchmarks/text_bag_of_words.py runs/text-tiny --cache cache --out bow.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from data2vec2 import load_encoder_and_config
from data2vec2.provenance import results_header
from data2vec2.eval.probe import linear_probe
from data2vec2.modalities.text.data import load_tokenizer
from data2vec2.modalities.text.classification import CLASSIFICATION

WEIGHT_DECAYS = (1e-3, 1e-2, 1e-1, 1.0)  # stronger than the probe's: 8,192 sparse features, 10,217 snippets
EPOCHS, MIN_STEPS = 10, 300  # fewer than the probe's 30 / 1,000: each step is a (1024 x 8192) matmul


def bag_of_words(ids: list[list[int]], vocab_size: int) -> torch.Tensor:
    """(N, V): 1 where token v occurs in snippet n."""
    x = torch.zeros(len(ids), vocab_size)
    for n, tokens in enumerate(ids):
        x[n, torch.as_tensor(tokens, dtype=torch.long)] = 1.0
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a text run: its tokenizer and block length are used")
    p.add_argument("--cache", default="cache")
    p.add_argument("--out", default="")
    args = p.parse_args()
    _, config = load_encoder_and_config(args.run)
    tokenizer = load_tokenizer(config.data.settings.tokenizer)
    config.data.cache_dir = args.cache
    train = CLASSIFICATION.data(config, "rotten-tomatoes:train", None, False)  # (tokenised with the run's BPE)
    tasks = {"train": train, **{s: CLASSIFICATION.data(config, f"rotten-tomatoes:{s}", train.labels, False)
                                for s in ("dev", "test")}}
    x = {s: bag_of_words(t.dataset.ids, tokenizer.get_vocab_size()) for s, t in tasks.items()}
    y = {s: torch.as_tensor(t.dataset.targets) for s, t in tasks.items()}
    result = {"benchmark": "bag-of-words logistic regression on Rotten Tomatoes", "run": args.run,
              "tokenizer": config.data.settings.tokenizer, "features": tokenizer.get_vocab_size()}
    for split in ("dev", "test"):
        fit = linear_probe(x["train"], y["train"], x[split], y[split], weight_decays=WEIGHT_DECAYS,
                           epochs=EPOCHS, min_steps=MIN_STEPS)
        result[split] = fit.test_accuracy
        result[f"{split}_weight_decay"] = fit.weight_decay
    result["header"] = results_header("fp32")
    print(f"bag of words ({result['features']} BPE tokens): dev {result['dev']:.2%}, test {result['test']:.2%}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
