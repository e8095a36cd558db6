"""Collect text-tiny's results into one JSON (docs/results/text-tiny.json) from the outputs of the
commands docs/text.md runs: a `pretrain` run folder, `probe-text --out` and `finetune-text --out`.

    python benchmarks/text_tiny.py runs/text-tiny --probe probe.json --finetune finetune.json \\
        --pretrain-log pretrain.log --out docs/results/text-tiny.json

It checks that both evaluations were made on that run, reads the pre-training's updates, seconds,
precision and throughput from the run's own metrics and (with --pretrain-log, the pre-training's
printed output) the precision that `auto` chose and the matmul rate measured at start-up, and adds
this machine's CPU flags (run it on the machine that pre-trained)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import yaml

from data2vec2.provenance import results_header
from data2vec2.train.logger import read_metrics


def pretraining_summary(run: Path) -> dict:
    """The run's updates, seconds and throughput from metrics.jsonl; its data, precision and
    overrides of the preset from config.yaml."""
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "step" in r and "elapsed_s" in r]
    if not rows:
        raise SystemExit(f"{run}/metrics.jsonl holds no logged updates")
    config = yaml.safe_load((run / "config.yaml").read_text())
    last = rows[-1]
    batch, block = config["train"]["batch_size"], config["model"]["text"]["max_positions"]
    return {
        "run": str(run), "updates": last["step"], "seconds": round(last["elapsed_s"], 1),
        "tokens_seen": last["step"] * batch * block, "batch_size": batch, "block_length": block,
        "precision": config["train"]["precision"], "data_train": config["data"]["train"],
        "mean_blocks_per_s": round(sum(r["samples_per_s"] for r in rows) / len(rows), 1),
        "mean_mfu": round(sum(r["mfu"] for r in rows) / len(rows), 4),
        "last_loss": round(last["loss"], 3), "config": config,
    }


def precision_line(log: Path) -> dict:
    """What `pretrain` printed at start-up: the precision it chose and the measured matmul rate."""
    found = re.search(r"(bfloat16|float32), .*matmul peak ([\d.]+) GFLOP/s", log.read_text())
    if not found:
        raise SystemExit(f"{log} has no start-up line with the precision and the matmul peak")
    return {"precision_used": found.group(1), "matmul_peak_gflops": float(found.group(2))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the pre-training run folder")
    p.add_argument("--probe", type=Path, required=True, help="the JSON of 'probe-text RUN --out'")
    p.add_argument("--finetune", type=Path, help="the JSON of 'finetune-text RUN --seeds ... --out'")
    p.add_argument("--pretrain-log", type=Path, help="the pre-training's printed output")
    p.add_argument("--note", default="", help="conditions the files do not record (e.g. environment variables)")
    p.add_argument("--out", type=Path, default=Path("docs/results/text-tiny.json"))
    args = p.parse_args()
    results = {"probe": json.loads(args.probe.read_text())}
    if args.finetune:
        results["finetune"] = json.loads(args.finetune.read_text())
    for name, result in results.items():
        if Path(result["model"]).resolve() != args.run.resolve():
            raise SystemExit(f"the {name} JSON evaluated {result['model']}, not {args.run}")
    probe = results["probe"]
    split = "test" if "test" in probe["pretrained"] else "dev"
    out = {
        "benchmark": "text-tiny: frozen probe and fine-tuning on Rotten Tomatoes, pre-trained vs random init",
        "split": split, "note": args.note,
        "probe_features": probe["features"],
        "probe_pretrained": probe["pretrained"][split], "probe_random": probe["random_init"][split],
        "probe_dev": {name: probe[name]["dev"] for name in ("pretrained", "random_init")},
    }
    out["probe_gain"] = out["probe_pretrained"] - out["probe_random"]
    line = (f"probe ({split}): pre-trained {out['probe_pretrained']:.2%}, random {out['probe_random']:.2%} "
            f"({out['probe_gain'] * 100:+.1f} points)")
    if "finetune" in results:
        finetune, metric = results["finetune"], results["finetune"]["metric"]
        # finetune-text's summary: "valid" (dev) and the test split under its name
        key = "valid" if split == "dev" else next(k for k in finetune["pretrained"] if k not in ("valid", "lr")
                                                  and not k.endswith(("_std", "_runs")))
        out.update({
            "finetune_pretrained_mean": finetune["pretrained"][key][metric],
            "finetune_random_mean": finetune["random_init"][key][metric],
            "finetune_pretrained_std": finetune["pretrained"].get(f"{key}_std", {}).get(metric, 0.0),
            "finetune_random_std": finetune["random_init"].get(f"{key}_std", {}).get(metric, 0.0),
            "finetune_chosen_lr": {name: finetune[name].get("lr") for name in ("pretrained", "random_init")},
            "finetune_dev_mean": {name: finetune[name]["valid"][metric] for name in ("pretrained", "random_init")},
            "seeds": finetune["seeds"], "lrs": finetune["lrs"],
        })
        out["finetune_gain"] = out["finetune_pretrained_mean"] - out["finetune_random_mean"]
        line += (f"; fine-tuned mean over seeds {out['seeds']}: {out['finetune_pretrained_mean']:.2%} vs "
                 f"{out['finetune_random_mean']:.2%} ({out['finetune_gain'] * 100:+.1f})")
    out["pretraining"] = pretraining_summary(args.run)
    if args.pretrain_log:
        out["pretraining"].update(precision_line(args.pretrain_log))
    out["pretraining_seconds"] = out["pretraining"]["seconds"]
    out.update(results)
    out["header"] = results_header(out["pretraining"].get("precision_used") or out["pretraining"]["precision"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{line}; pre-training {out['pretraining_seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
