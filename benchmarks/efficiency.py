"""Time to accuracy: data2vec 2.0 against MAE and data2vec 1.0 on the same image encoder
(image-tiny), data (Fashion-MNIST), trainer and machine, in one run.

1. Tuning, the same for every objective: each learning rate of the grid pre-trains for
   --tune-minutes; the one whose encoder gives the best linear probe on a validation split (carved
   from the training images) is kept.
2. The comparison: with its learning rate, each objective's update time is measured and its
   schedule sized to end at --budget-minutes of wall clock, with checkpoints at 1/8, 1/4, 1/2 and
   all of it. Every checkpoint gets a linear probe (frozen features; validation and test); the last
   one also a short full fine-tuning (modalities/image/finetune.py; validation and test).
Writes a JSON file (objective, lr, seconds, updates, samples, FLOPs, accuracies, hardware,
versions) and two plots: accuracy against pre-training seconds and against FLOPs. The speed-up is
the time data2vec 2.0 needs to reach the best test probe accuracy each baseline reaches in its
whole budget. The default takes about two hours on 2 AVX2 cores.

    python benchmarks/efficiency.py --out docs/results/efficiency.json
    python benchmarks/efficiency.py --quick --out /tmp/efficiency.json        # every path, minutes
    python benchmarks/efficiency.py --objectives data2vec2 --ablations --out docs/results/ablations.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from data2vec2 import build_model, load_config, load_encoder_and_config, pretrain
from data2vec2.benchmark import machine, time_updates
from data2vec2.eval.probe import linear_probe
from data2vec2.modalities import MODALITIES
from data2vec2.modalities.image.data import Subset, open_image_source
from data2vec2.modalities.image.evaluate import extract_features
from data2vec2.modalities.image.finetune import Recipe, finetune, load_images, split_validation
from data2vec2.train.flops import count_update_flops

# The baselines over image-tiny's encoder. MAE: the paper's masking and a decoder scaled with the
# encoder (ViT-B: 768 wide, decoder 8 x 512; here 192 wide, decoder 2 x 128). data2vec 1.0: the v1
# vision settings (block masking of 60 %, top-6 targets -> here all 5 blocks, final LayerNorm,
# smooth L1 with beta 2), one mask per image, no CLS loss.
OBJECTIVES = {
    "data2vec2": [],
    "mae": ["objective=mae", "masking.kind=random", "masking.mask_prob=0.75", "masking.num_masks=1",
            "decoder.dim=128", "decoder.layers=2", "decoder.num_heads=4"],
    "data2vec1": ["objective=data2vec1", "masking.kind=block", "masking.mask_prob=0.6", "masking.num_masks=1",
                  "loss.cls_weight=0", "loss.beta=2", "targets.layer_norm=none", "targets.final_norm=layer"],
}
# data2vec 2.0 with one part changed (image-tiny: M = 4, inverse block masking, conv decoder, masked
# tokens dropped, top-5 targets), each at the same budget and data2vec 2.0's learning rate
ABLATIONS = {
    "M=1": ["masking.num_masks=1"], "M=2": ["masking.num_masks=2"], "M=8": ["masking.num_masks=8"],
    "random masking": ["masking.kind=random"],
    "Transformer decoder": ["decoder.kind=transformer", "decoder.num_heads=4", "decoder.layers=2"],
    "masked tokens encoded": ["masking.drop_masked=false"],
    "last block's targets": ["targets.top_k=1"],
}
LR_GRID = {"data2vec2": [1e-3, 3e-3], "mae": [1e-3, 3e-3], "data2vec1": [1e-3, 3e-3]}
FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)


def run_objective(name: str, lr: float, minutes: float, args, folder: Path, extra: list[str] | None = None) -> dict:
    """Pre-train objective `name` (or, with `extra`, data2vec 2.0 with those overrides: an ablation)."""
    overrides = (OBJECTIVES[name] if extra is None else extra) + [f"optim.lr={lr}", f"data.cache_dir={args.cache}", "train.precision=fp32",
]
    config = load_config("image-tiny", overrides)
    modality = MODALITIES["image"]
    step_s = time_updates(config, modality, steps=6)["step_s"]  # the median of 6: a host whose speed moves
    budget = minutes * 60
    every = max(1, int(budget / (step_s * 1.05)) // 8)  # 1/8 of the updates; the data loader's share: 5 %
    every = every // 10 * 10 if every >= 10 else every
    updates = 8 * every
    config = load_config("image-tiny", overrides + [
        f"train.max_steps={updates}", f"train.checkpoint_every={every}",
        "train.keep_checkpoints=8", f"train.log_every={10 if every % 10 == 0 else 1}", f"ema.anneal_steps={updates}",
        f"optim.warmup_steps={max(1, updates // 12)}", f"train.time_budget_s={budget * 2}"])  # a safety net only
    model = build_model(config)
    data = modality.pretraining_data(config)
    batch = data.collate([data.dataset[i] for i in range(config.train.batch_size)])
    flops = count_update_flops(model, batch, torch.device("cpu"))
    del model
    label = name if extra is None else "ablation-" + "-".join(o.replace("=", "") for o in extra)
    run = folder / f"{label}-lr{lr:g}-{minutes:g}min"
    start = time.perf_counter()
    pretrain(config, run, progress=not args.no_progress)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in rows}  # step: updates done
    points = []
    for fraction in FRACTIONS:
        step = int(updates * fraction)  # a multiple of `every` and of log_every: a checkpoint and a row exist
        checkpoint = run / "checkpoints" / ("last.pt" if step == updates else f"step_{step:09d}.pt")
        seconds = elapsed[step]
        points.append({"fraction": fraction, "updates": step, "seconds": round(seconds, 1),
                       "samples": step * config.train.batch_size, "flops": step * flops,
                       "checkpoint": str(checkpoint)})
    return {"objective": name, "lr": lr, "step_s_measured": step_s, "flops_per_update": flops,
            "updates": updates, "wall_s": round(wall, 1), "points": points}


def evaluate(points: list[dict], args, splits, test: bool = True, finetune_last: bool = True) -> None:
    fit_source, val_source, test_source = splits
    recipe = Recipe(updates=args.finetune_updates, batch_size=64, seed=0)
    for point in points:
        encoder, config = load_encoder_and_config(point["checkpoint"])
        features = {}
        for split, source in (("fit", fit_source), ("val", val_source), ("test", test_source))[:3 if test else 2]:
            features[split] = extract_features(encoder, source, image_size=28, mean=config.data.mean,
                                               std=config.data.std, progress=False)
        point["probe_val"] = linear_probe(*features["fit"], *features["val"], seed=0).test_accuracy
        if test:
            point["probe_test"] = linear_probe(*features["fit"], *features["test"], seed=0).test_accuracy
        if finetune_last and point is points[-1] and args.finetune_updates > 0:
            train = load_images(Subset.sample(fit_source, args.finetune_images, 0), config)
            evals = {"val": load_images(val_source, config), "test": load_images(test_source, config)}
            result = finetune(encoder, train, evals, recipe, 10, progress=False)
            point.update(finetune_val=result["accuracy"]["val"], finetune_test=result["accuracy"]["test"])
        print(json.dumps({k: v for k, v in point.items() if k != "checkpoint"}), flush=True)


def speedups(best: dict[str, dict], metric: str) -> dict:
    """For each baseline: its best `metric` over its checkpoints, the first time data2vec 2.0
    reaches it (None: never within the budget), and the ratio of the two times."""
    ours = best["data2vec2"]["points"]
    out = {}
    for name, run in best.items():
        if name == "data2vec2" or not any(metric in p for p in run["points"]):
            continue
        target = max((p for p in run["points"] if metric in p), key=lambda p: p[metric])
        reached = next((p for p in ours if metric in p and p[metric] >= target[metric]), None)
        out[name] = {"metric": metric, "baseline_best": target[metric], "baseline_seconds": target["seconds"],
                     "data2vec2_seconds": reached["seconds"] if reached else None,
                     "speedup": round(target["seconds"] / reached["seconds"], 2) if reached else None}
    return out


def plot(best: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for axis, label in (("seconds", "pre-training seconds"), ("flops", "pre-training FLOPs")):
        fig, panes = plt.subplots(1, 2, figsize=(10, 4))
        for pane, metric in zip(panes, ("probe_test", "finetune_test")):
            for name, run in best.items():
                pts = [p for p in run["points"] if metric in p]
                pane.plot([p[axis] for p in pts], [100 * p[metric] for p in pts], marker="o", label=name)
            pane.set_xlabel(label)
            pane.set_ylabel(f"{metric.replace('_', ' ')} accuracy (%)")
            pane.grid(alpha=0.3)
            pane.legend()
        fig.tight_layout()
        fig.savefig(out.with_name(f"{out.stem}_{axis}.png"), dpi=120)
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=20.0, help="pre-training of each objective")
    parser.add_argument("--tune-minutes", type=float, default=5.0, help="pre-training of each lr of the grid")
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    parser.add_argument("--lrs", nargs="+", type=float, help="one grid for every objective (default: LR_GRID)")
    parser.add_argument("--probe-images", type=int, default=10000, help="training images for the probes")
    parser.add_argument("--finetune-images", type=int, default=10000)
    parser.add_argument("--finetune-updates", type=int, default=400, help="batch 64, on the last checkpoint")
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--runs", default="runs/efficiency")
    parser.add_argument("--ablations", nargs="*", choices=list(ABLATIONS),
                        help="also run these data2vec 2.0 ablations (no names: all of them)")
    parser.add_argument("--quick", action="store_true", help="every path in minutes: not for claims")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.quick:
        args.budget_minutes, args.tune_minutes = 0.4, 0.2
        args.probe_images, args.finetune_images, args.finetune_updates = 1000, 1000, 20
    torch.manual_seed(0)
    source = open_image_source("fashion-mnist:train", Path(args.cache), 1)
    fit_all, val = split_validation(source, 1000 if args.quick else 5000, seed=0)
    test = open_image_source("fashion-mnist:test", Path(args.cache), 1)
    if args.quick:
        test = Subset.sample(test, 1000, 0)
    splits = (Subset.sample(fit_all, args.probe_images, 0), val, test)
    folder = Path(args.runs)
    tuning, runs, best = [], [], {}
    for name in args.objectives:
        grid = args.lrs or LR_GRID[name]
        for lr in grid if len(grid) > 1 else []:
            run = run_objective(name, lr, args.tune_minutes, args, folder)
            evaluate(run["points"][-1:], args, splits, test=False, finetune_last=False)
            tuning.append(run)
        chosen = max((r for r in tuning if r["objective"] == name), key=lambda r: r["points"][-1]["probe_val"],
                     default={"lr": grid[0]})["lr"]
        run = run_objective(name, chosen, args.budget_minutes, args, folder)
        evaluate(run["points"], args, splits)
        runs.append(run)
        best[name] = run
    ablations = []
    for label in (list(ABLATIONS) if args.ablations == [] else args.ablations or []):
        lr = best["data2vec2"]["lr"] if "data2vec2" in best else LR_GRID["data2vec2"][0]
        run = run_objective("data2vec2", lr, args.budget_minutes, args, folder, extra=ABLATIONS[label])
        run["ablation"] = label
        evaluate(run["points"], args, splits, finetune_last=False)
        ablations.append(run)
    result = {"benchmark": "efficiency", "budget_minutes": args.budget_minutes, "quick": args.quick,
              "probe_images": args.probe_images, "finetune_images": args.finetune_images,
              "finetune_updates": args.finetune_updates, "tune_minutes": args.tune_minutes,
              "objectives": {name: OBJECTIVES[name] for name in args.objectives}, "lr_grid": LR_GRID,
              "tuning": tuning, "runs": runs, "ablations": ablations, "chosen_lr": {name: run["lr"] for name, run in best.items()},
              "speedup": speedups(best, "probe_test") if "data2vec2" in best else {},
              "finetune_last": {name: {k: run["points"][-1].get(k) for k in ("finetune_val", "finetune_test")}
                                for name, run in best.items()},
              "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(best, out)
    print(json.dumps({"speedup": result["speedup"], "finetune_last": result["finetune_last"]}, indent=1))


if __name__ == "__main__":
    main()
