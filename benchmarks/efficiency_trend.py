"""Does MAE's lead shrink with compute? data2vec 2.0 against MAE on image-tiny and Fashion-MNIST, one
long run per objective with checkpoints at 1/16, 1/8, 1/4, 1/2 and all of it, and evaluations that
discriminate more than one linear probe (docs/efficiency.md, "The trend with budget").

1. Tuning, the same effort for both: data2vec 2.0's teacher (the EMA schedule: the preset's, or
   sized to the run with ema.start_half_life / end_half_life / anneal_fraction) and MAE's mask
   ratio, --tune-minutes each, at the learning rate the default run chose for each (3e-3, 1e-3);
   the setting with the best linear probe on the validation split (5,000 training images held out)
   is kept.
2. The trend: each objective pre-trains for --budget-minutes with its setting. Every checkpoint
   gets, on frozen features: the linear probe from all 55,000 other training images (validation and
   test), low-label probes from 1 % and 10 % of them (--draws random draws each: mean and spread),
   and kNN (k = 20, cosine, temperature 0.07). Raw pixels and a random init get the same, once.
3. Fine-tuning (the default --phase all): `data2vec2 finetune image-cls-tiny` of each last
   checkpoint and of the random init for --finetune-minutes (the preset's recipe and schedule,
   sized to the time budget).
With --control, data2vec 2.0 also pre-trains once more with the preset's teacher instead of the
tuned one, for exactly as many updates as its long run (the same plan, data order and schedule;
only the EMA differs), evaluated the same way: what the teacher's sizing changed, apart from the
budget.
At each checkpoint of one objective the file gives the seconds and FLOPs the other needs to reach
its accuracy (interpolated linearly between the other's checkpoints; None: never in its budget).

Resumable: every finished piece (a tuning run, a checkpoint's evaluation, a fine-tuning) is written
to --out at once, and a rerun of the same command skips it; a run killed mid-way resumes its
pre-training exactly (its plan is kept in the run folder). Two processes may share --out, one per
objective (--objectives data2vec2 on one core, --objectives mae on the other): each merges what the
other wrote before it writes.

    python benchmarks/efficiency_trend.py --out docs/results/efficiency_trend.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from efficiency import run_objective
from finetune_results import summary

from data2vec2 import load_config, load_encoder_and_config
from data2vec2.eval.knn import knn_accuracy
from data2vec2.eval.probe import linear_probe
from data2vec2.model import random_encoder
from data2vec2.modalities import MODALITIES
from data2vec2.provenance import auto_precision, results_header

TREND = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
CONTROL = "data2vec 2.0, preset teacher"  # --control: the long run's name
LABELS = {"data2vec2": "data2vec 2.0, teacher sized to the run", "mae": "MAE"}  # the plots' legends
LR = {"data2vec2": 3e-3, "mae": 1e-3}  # the default run's tuned learning rates (results/efficiency.json)
# The same number of tuning runs for each objective: name -> the overrides of one setting
GRIDS = {
    "data2vec2": {
        "EMA 0.999 -> 0.9999 over the run (the preset)": [],
        "sized as the reference's image-base: half-life 0.0092 -> 0.185 of the run, annealed over 0.266":
            ["ema.start_half_life=0.0092", "ema.end_half_life=0.185", "ema.anneal_fraction=0.266"],
        "between the two: half-life 0.1 -> 1 of the run, annealed over all of it":
            ["ema.start_half_life=0.1", "ema.end_half_life=1", "ema.anneal_fraction=1"],
    },
    "mae": {
        "mask ratio 0.6": ["masking.mask_prob=0.6"],
        "mask ratio 0.75 (the paper's)": ["masking.mask_prob=0.75"],
        "mask ratio 0.9": ["masking.mask_prob=0.9"],
    },
}


class Features:
    """Fashion-MNIST's training images less a validation split of 5,000, the validation split and
    the test split; the frozen features of an encoder on each, and every evaluation on them."""

    def __init__(self, cache: str, draws: int, quick: bool = False):
        from data2vec2.modalities.image.data import Subset, open_image_source, split_validation

        source = open_image_source("fashion-mnist:train", Path(cache), 1)
        self.fit, self.val = split_validation(source, 500 if quick else 5000, seed=0)
        self.test = open_image_source("fashion-mnist:test", Path(cache), 1)
        if quick:
            self.fit, self.test = Subset.sample(self.fit, 10000, 0), Subset.sample(self.test, 1000, 0)
        self.draws = draws

    def of(self, encoder, config, splits=("fit", "val", "test"), bf16: bool = False) -> dict:
        from data2vec2.modalities.image.evaluate import extract_features

        image, data = config.model.settings, config.data.settings
        return {name: extract_features(encoder, getattr(self, name), image_size=image.image_size, mean=data.mean,
                                       std=data.std, bf16=bf16, progress=False) for name in splits}

    def pixels(self) -> dict:
        from data2vec2.modalities.image.evaluate import pixel_features

        return {name: pixel_features(getattr(self, name)) for name in ("fit", "val", "test")}

    def validation(self, feats: dict) -> dict:
        """The tuning score: the linear probe from the fitting images, on the validation split."""
        return {"probe_val": linear_probe(*feats["fit"], *feats["val"], seed=0).test_accuracy}

    def evaluate(self, feats: dict) -> dict:
        (fx, fy), test = feats["fit"], feats["test"]
        out = {"probe_val": linear_probe(fx, fy, *feats["val"], seed=0).test_accuracy,
               "probe_test": linear_probe(fx, fy, *test, seed=0).test_accuracy,
               "knn_test": knn_accuracy(fx, fy, *test, k=20, temperature=0.07)}
        for share in (0.01, 0.1):
            accs = []
            for draw in range(self.draws):
                rows = torch.from_numpy(np.random.default_rng(draw).permutation(len(fy))[:round(share * len(fy))])
                accs.append(linear_probe(fx[rows], fy[rows], *test, seed=draw).test_accuracy)
            key = f"probe_test_{share:g}".replace("0.", "")  # probe_test_01, probe_test_1
            out[key], out[key + "_std"], out[key + "_draws"] = float(np.mean(accs)), float(np.std(accs, ddof=1)), accs
        return {k: (float(v) if isinstance(v, (float, torch.Tensor)) else v) for k, v in out.items()}


def evaluated(run: dict) -> int:
    return sum("probe_test" in p for p in run["points"])


def reach(run: dict, metric: str, value: float) -> dict | None:
    """The seconds and FLOPs at which `run` first reaches `value` of `metric`, interpolated linearly
    between its checkpoints (from the start: 0 s and 0 FLOPs at the random init's accuracy is not
    assumed, so before its first checkpoint only the first checkpoint counts)."""
    points = [p for p in run["points"] if metric in p]
    for i, p in enumerate(points):
        if p[metric] >= value:
            if i == 0:
                return {"seconds": p["seconds"], "flops": p["flops"], "interpolated": False}
            q = points[i - 1]
            t = (value - q[metric]) / (p[metric] - q[metric])
            return {"seconds": round(q["seconds"] + t * (p["seconds"] - q["seconds"]), 1),
                    "flops": q["flops"] + t * (p["flops"] - q["flops"]), "interpolated": True}
    return None


def ratios(runs: dict, metric: str) -> list[dict]:
    """At each checkpoint of each objective: what the other needs to reach its accuracy, and the
    ratio (the other's seconds or FLOPs over this one's; > 1: this one is ahead there)."""
    out = []
    for name, run in runs.items():
        for other_name, other in runs.items():
            if other_name == name:
                continue
            for p in run["points"]:
                if metric not in p:
                    continue
                hit = reach(other, metric, p[metric])
                out.append({"objective": name, "other": other_name, "metric": metric, "fraction": p["fraction"],
                            "updates": p["updates"], "accuracy": p[metric], "seconds": p["seconds"],
                            "flops": p["flops"], "other_seconds": hit and hit["seconds"],
                            "other_flops": hit and hit["flops"], "interpolated": hit and hit["interpolated"],
                            "time_ratio": hit and round(hit["seconds"] / p["seconds"], 2),
                            "flops_ratio": hit and round(hit["flops"] / p["flops"], 2)})
    return out


def plot(state: dict, out: Path) -> None:
    """Accuracy against pre-training seconds and against FLOPs (one file each): the probe from all
    labels, from 1 % of them and kNN, a line per objective, the reference rows dashed."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("probe_test", "linear probe, all labels"), ("probe_test_01", "linear probe, 1 % of labels"),
               ("knn_test", "kNN"))
    for axis, label in (("seconds", "pre-training seconds"), ("flops", "pre-training FLOPs")):
        fig, panes = plt.subplots(1, len(metrics), figsize=(13, 4))
        for pane, (metric, title) in zip(panes, metrics):
            for name, run in state["runs"].items():
                points = [p for p in run["points"] if metric in p]
                if points:
                    pane.plot([p[axis] for p in points], [100 * p[metric] for p in points], marker="o",
                              label=LABELS.get(name, name))
            for name, ref in state["references"].items():
                pane.axhline(100 * ref[metric], linestyle="--", color="grey" if name == "raw pixels" else "black",
                             linewidth=1, label=name)
            pane.set_xscale("log")
            pane.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            pane.set_xlabel(label)
            pane.set_ylabel("test accuracy (%)")
            pane.set_title(title)
            pane.grid(alpha=0.3)
            pane.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out.with_name(f"{out.stem}_{axis}.png"), dpi=110)
        plt.close(fig)


def finetune_run(init: str, random_init: bool, minutes: float, cache: str, folder: Path, quick: bool) -> dict:
    """`data2vec2 finetune image-cls-tiny` (its recipe) from `init` (`random_init`: its architecture
    with random weights), for `minutes`; its best checkpoint by validation accuracy scored on the
    test split."""
    from data2vec2.finetune import finetune, load_finetune_config

    overrides = [f"data.cache_dir={cache}", f"train.time_budget_s={minutes * 60:.0f}", f"finetune.init={init}",
                 f"finetune.random_init={str(random_init).lower()}"]
    if quick:
        overrides += ["train.max_steps=20", "data.limit=1000", "finetune.valid_size=200", "finetune.eval_every=10"]
    config = load_finetune_config("image-cls-tiny", overrides, MODALITIES)
    finetune(config, folder, MODALITIES["image"], progress=False)
    return {"finetune_minutes": minutes, **finetuned(folder)}


def finetuned(folder: Path) -> dict:
    """A fine-tuning's outcome, from its run folder: the best checkpoint's validation and test
    accuracy, the updates made in how many seconds, and validation accuracy along the way."""
    run = summary(folder)
    return {"finetune_val": run["scores"]["valid"]["accuracy"],
            "finetune_test": run["scores"]["fashion-mnist:test"]["accuracy"], "best_step": run["best_step"],
            "updates": run["updates"], "train_seconds": run["train_seconds"],
            "samples_per_s": run["samples_per_s_median"],
            "valid_curve": [{"step": v["step"], "accuracy": v["accuracy"]} for v in run["valid_curve"]],
            "run": str(folder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="each objective's long run")
    parser.add_argument("--tune-minutes", type=float, default=4.0, help="each setting of the tuning grids")
    parser.add_argument("--finetune-minutes", type=float, default=20.0)
    parser.add_argument("--draws", type=int, default=3, help="draws of each low-label probe")
    parser.add_argument("--phase", choices=["tune", "trend", "all"], default="all",
                        help="tune: the grids; trend: the grids, then the long runs and their evaluations")
    parser.add_argument("--objectives", nargs="+", choices=list(GRIDS), default=list(GRIDS))
    parser.add_argument("--control", action="store_true",
                        help="also data2vec 2.0's long run again with the preset's teacher (the same updates)")
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--runs", default="runs/trend")
    parser.add_argument("--quick", action="store_true", help="every path in minutes: not for claims")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    for option in ("budget_minutes", "tune_minutes", "finetune_minutes", "draws"):
        if getattr(args, option) <= 0:
            parser.error(f"--{option.replace('_', '-')} must be > 0")
    if args.control and "data2vec2" not in args.objectives:
        parser.error("--control is data2vec 2.0's: give --objectives data2vec2")
    if args.quick:
        args.budget_minutes, args.tune_minutes, args.finetune_minutes = 0.5, 0.2, 0.2
    out, folder = Path(args.out), Path(args.runs)
    state = json.loads(out.read_text()) if out.exists() else {}
    state.setdefault("benchmark", "efficiency_trend")
    state.update({"budget_minutes": args.budget_minutes, "tune_minutes": args.tune_minutes, "quick": args.quick,
                  "lr": LR, "grids": GRIDS, "fractions": list(TREND)})
    for key in ("tuning", "runs", "references", "finetune"):
        state.setdefault(key, {})
    precision = auto_precision()
    command = results_header(precision)["command"]  # every command that wrote to the file, in order
    state["commands"] = [*[c for c in state.get("commands", []) if c != command], command]
    bf16 = precision == "bf16"  # the features in the precision the runs trained in

    def save() -> None:
        """Write the state, merged with what another process (--objectives of the other one, on
        another core) wrote to the same file meanwhile: the pieces this one lacks, and of a run both
        hold, the one with more checkpoints evaluated."""
        if out.exists():
            disk = json.loads(out.read_text())
            for key in ("tuning", "runs", "references", "finetune"):
                for name, value in disk.get(key, {}).items():
                    if name not in state[key] or (key == "runs" and evaluated(value) > evaluated(state[key][name])):
                        state[key][name] = value
            state["commands"] = [*[c for c in disk.get("commands", []) if c not in state["commands"]],
                                 *state["commands"]]
        state["header"] = results_header(precision)
        state["ratios"] = {m: ratios(state["runs"], m) for m in ("probe_test", "probe_test_01", "probe_test_1",
                                                                  "knn_test")} if len(state["runs"]) > 1 else {}
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, out)
        if any("probe_test" in p for run in state["runs"].values() for p in run["points"]):
            plot(state, out)

    torch.manual_seed(0)
    features = Features(args.cache, args.draws, args.quick)
    for name in args.objectives:  # 1. the tuning grids
        for setting, overrides in GRIDS[name].items():
            key = f"{name}: {setting}"
            if key in state["tuning"]:
                continue
            run = run_objective("image", name, LR[name], args.tune_minutes, args, folder, more=tuple(overrides),
                                fractions=(1.0,), precision="auto", tag=f"-tune{list(GRIDS[name]).index(setting)}")
            encoder, config = load_encoder_and_config(run["points"][-1]["checkpoint"])
            run["points"][-1].update(features.validation(features.of(encoder, config, ("fit", "val"), bf16)))
            state["tuning"][key] = {"objective": name, "setting": setting, "overrides": overrides, **run}
            print(json.dumps({"tuned": key, "probe_val": run["points"][-1]["probe_val"]}), flush=True)
            save()
    if args.phase == "tune":
        return

    def evaluate_run(name: str) -> None:
        """Every checkpoint of long run `name` not yet evaluated."""
        for point in state["runs"][name]["points"]:
            if "probe_test" not in point:
                start = time.perf_counter()
                encoder, config = load_encoder_and_config(point["checkpoint"])
                point.update(features.evaluate(features.of(encoder, config, bf16=bf16)))
                point["eval_seconds"] = round(time.perf_counter() - start, 1)
                shown = {k: v for k, v in point.items() if "draws" not in k}
                print(json.dumps({"objective": name, **shown}), flush=True)
                save()

    for name in args.objectives:  # 2. the long runs, each checkpoint evaluated
        tuned = [t for t in state["tuning"].values() if t["objective"] == name]
        chosen = max(tuned, key=lambda t: t["points"][-1]["probe_val"])
        run = state["runs"].get(name)
        if run is None or run.get("setting") != chosen["setting"]:
            run = run_objective("image", name, LR[name], args.budget_minutes, args, folder,
                                more=tuple(chosen["overrides"]), fractions=TREND, precision="auto", tag="-trend")
            run.update({"setting": chosen["setting"], "overrides": chosen["overrides"]})
            state["runs"][name] = run
            save()
        evaluate_run(name)
    if args.control and CONTROL not in state["runs"]:  # the preset's teacher, as many updates as the tuned one
        setting, overrides = next(iter(GRIDS["data2vec2"].items()))
        run = run_objective("image", "data2vec2", LR["data2vec2"], args.budget_minutes, args, folder,
                            more=tuple(overrides), fractions=TREND, precision="auto", tag="-control",
                            step_s=state["runs"]["data2vec2"]["step_s_measured"])
        run.update({"setting": setting, "overrides": overrides})
        state["runs"][CONTROL] = run
        save()
    if CONTROL in state["runs"] and "data2vec2" in args.objectives:
        evaluate_run(CONTROL)
    save()  # (takes in what another process wrote meanwhile)
    ours = "data2vec2" in args.objectives  # the reference rows and the random init's fine-tuning: one process's
    if ours and "raw pixels" not in state["references"]:  # the reference rows, once
        state["references"]["raw pixels"] = features.evaluate(features.pixels())
        save()
    if ours and "random init" not in state["references"]:
        config = load_config("image-tiny", [f"data.cache_dir={args.cache}"])
        encoder = random_encoder(config.model, MODALITIES["image"], seed=0)
        state["references"]["random init"] = features.evaluate(features.of(encoder, config, bf16=bf16))
        save()
    if args.phase == "trend":
        return
    for name in [*args.objectives, "random init"]:  # 3. fine-tuning at the last checkpoint, a fixed budget
        save()
        if name in state["finetune"] or (name == "random init" and not ours):
            continue
        source = state["runs"]["data2vec2" if name == "random init" else name]["points"][-1]["checkpoint"]
        state["finetune"][name] = finetune_run(source, name == "random init", args.finetune_minutes, args.cache,
                                               folder / f"finetune-{name.replace(' ', '-')}", args.quick)
        save()


if __name__ == "__main__":
    main()
