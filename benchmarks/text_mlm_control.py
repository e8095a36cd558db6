"""A control for docs/text.md: pre-train text-tiny's encoder with plain masked language modelling
(BERT's objective, not this library's) on the same corpus, batch and precision, then fine-tune it
and a randomly initialised twin on Rotten Tomatoes with `data2vec2 finetune text-cls-tiny`, for each seed.

    python benchmarks/text_mlm_control.py --cache cache --updates 10000 --seeds 0 1 2 --out mlm.json

MLM is the library's `objective=mlm` (objectives/mlm.py): 15 % of the tokens are chosen (never
<s> or padding); 80 % of those become a mask symbol, 10 % a random token, 10 % stay; a Linear ->
GELU -> LayerNorm head whose output layer is the (tied) token embedding predicts the originals. It
runs through `data2vec2 pretrain` with text-tiny's encoder, data, batch, AdamW and schedule. If
the control does no better than data2vec at the same compute, the objective is not what holds
text-tiny back.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from recorded import TEXT_TINY_AS_RECORDED

from data2vec2 import load_config, pretrain
from data2vec2.provenance import auto_precision, results_header
from data2vec2.finetune import finetune_runs
from data2vec2.modalities import MODALITIES

MLM = ["objective=mlm", "masking.mask_prob=0.15", "masking.num_masks=1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="cache", help="the data cache of 'data2vec2 prepare text'")
    p.add_argument("--updates", type=int, default=10000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--runs", default="runs", help="the pre-training run goes to RUNS/mlm-UPDATES (resumable)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config("text-tiny", [f"data.cache_dir={args.cache}", f"train.max_steps={args.updates}",
                                       "train.log_every=1", *TEXT_TINY_AS_RECORDED, *MLM])
    run = Path(args.runs) / f"mlm-{args.updates}"
    start = time.perf_counter()
    pretrain(config, run)
    seconds = time.perf_counter() - start
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = losses[:100], losses[-100:]
    result = {"header": results_header(auto_precision()),
              "updates": args.updates, "pretrain_seconds": round(seconds, 1), "loss_first_100": sum(first) / len(first),
              "loss_last_100": sum(last) / len(last)}
    result["finetune"] = finetune_runs("text-cls-tiny", [f"finetune.init={run}", f"data.cache_dir={args.cache}",
                                                         f"train.threads={args.threads}"],
                                       Path(args.runs) / f"mlm-{args.updates}-finetune", MODALITIES, compare=True,
                                       seeds=args.seeds, progress=False)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
