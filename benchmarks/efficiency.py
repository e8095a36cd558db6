"""Time to accuracy: data2vec 2.0 against other objectives on the same encoder, data, trainer and
machine, in one run. Images (the default): data2vec 2.0, MAE and data2vec 1.0 on image-tiny and
Fashion-MNIST. Side tables: text (data2vec 2.0, data2vec 1.0, MLM on text-tiny; Rotten Tomatoes)
and speech (data2vec 2.0, data2vec 1.0 on audio-tiny; keyword spotting).

1. Tuning, the same for every objective: each learning rate of the modality's grid pre-trains for
   --tune-minutes; the one whose encoder gives the best linear probe on a validation split (carved
   from the training data) is kept.
2. The comparison: with its learning rate, each objective's update time is measured and its
   schedule sized to end at --budget-minutes of wall clock, with checkpoints at 1/8, 1/4, 1/2 and
   all of it. Every checkpoint gets a linear probe (frozen features; validation and test); the last
   one also a short full fine-tuning (images: `data2vec2 finetune image-cls-tiny`; text: Rotten Tomatoes
   with `data2vec2 finetune text-cls-tiny`; speech: none, the probe only).
Writes a JSON file (objective, lr, seconds, updates, samples, FLOPs, accuracies, hardware,
versions) and two plots: accuracy against pre-training seconds and against FLOPs. The speed-up is
the time data2vec 2.0 needs to reach the best test probe accuracy each baseline reaches in its
whole budget. The image default takes about two hours on 2 AVX2 cores, text and speech about one
hour each.

    python benchmarks/efficiency.py --out docs/results/efficiency.json
    python benchmarks/efficiency.py --modality text --out docs/results/efficiency_text.json
    python benchmarks/efficiency.py --modality audio --out docs/results/efficiency_audio.json
    python benchmarks/efficiency.py --quick --out /tmp/efficiency.json        # every path, minutes
    python benchmarks/efficiency.py --objectives data2vec2 --ablations --out docs/results/ablations.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from recorded import TEXT_TINY_AS_RECORDED

from data2vec2 import build_model, load_config, load_encoder_and_config, pretrain
from data2vec2.benchmark import time_updates
from data2vec2.provenance import results_header
from data2vec2.eval.probe import linear_probe
from data2vec2.modalities import MODALITIES
from data2vec2.train.flops import count_update_flops

PRESETS = {"image": "image-tiny", "text": "text-tiny", "audio": "audio-tiny"}
AS_RECORDED = {"text": TEXT_TINY_AS_RECORDED}  # presets that changed after docs/efficiency.md's results
# Each baseline with the settings that belong to it, over the preset's encoder (docs/efficiency.md).
# Images. MAE: the paper's masking and a decoder scaled with the encoder (ViT-B: 768 wide, decoder
# 8 x 512; here 192 wide, decoder 2 x 128). data2vec 1.0: the v1 vision settings (block masking of
# 60 %, top-6 targets -> here all 5 blocks, final LayerNorm, smooth L1 with beta 2), no CLS loss.
# Text. data2vec 1.0: v1 text (spans of 4 tokens covering 35 %, LayerNorm per target block, smooth
# L1 with beta 4, scale 1, the 2-layer head of text-tiny's decoder.projection_layers). MLM:
# RoBERTa's 15 %, 80/10/10. Speech. data2vec 1.0: v1 speech (spans of 10 frames, about half of them
# masked; instance-normalised targets and L2 as data2vec 2.0). data2vec 1.0 has one mask per sample.
OBJECTIVES = {
    "image": {
        "data2vec2": [],
        "mae": ["objective=mae", "masking.kind=random", "masking.mask_prob=0.75", "masking.num_masks=1",
                "decoder.dim=128", "decoder.layers=2", "decoder.num_heads=4"],
        "data2vec1": ["objective=data2vec1", "masking.kind=block", "masking.mask_prob=0.6", "masking.num_masks=1",
                      "loss.cls_weight=0", "loss.beta=2", "targets.layer_norm=none", "targets.final_norm=layer"],
    },
    "text": {
        "data2vec2": [],
        "data2vec1": ["objective=data2vec1", "masking.kind=block", "masking.mask_prob=0.35", "masking.mask_length=4",
                      "masking.num_masks=1", "targets.layer_norm=layer", "targets.final_norm=none", "loss.beta=4",
                      "loss.scale=1"],
        "mlm": ["objective=mlm", "masking.mask_prob=0.15", "masking.num_masks=1"],
    },
    "audio": {
        "data2vec2": [],
        "data2vec1": ["objective=data2vec1", "masking.kind=block", "masking.mask_prob=0.5", "masking.mask_length=10",
                      "masking.num_masks=1"],
    },
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
LR_GRID = {"image": [1e-3, 3e-3], "text": [1e-3, 2e-3], "audio": [1e-3, 2e-3]}  # the same for every objective
MINUTES = {"image": (20.0, 5.0), "text": (10.0, 3.0), "audio": (10.0, 3.0)}  # (budget, each lr of the grid)
FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 1.0)


def run_objective(modality_name: str, name: str, lr: float, minutes: float, args, folder: Path,
                  extra: list[str] | None = None, more: tuple[str, ...] = (), fractions: tuple = FRACTIONS,
                  precision: str = "fp32", tag: str = "", step_s: float | None = None) -> dict:
    """Pre-train objective `name` (or, with `extra`, data2vec 2.0 with those overrides: an ablation;
    `more`: overrides after the objective's own) for `minutes`, with a checkpoint at each of
    `fractions` of the updates, planned from the update time measured at the start (or `step_s`,
    another run's: the same updates). A run folder that holds its plan (plan.json: the update time
    and the minutes) resumes with that plan."""
    overrides = (AS_RECORDED.get(modality_name, []) + (OBJECTIVES[modality_name][name] if extra is None else extra)
                 + list(more) + [f"optim.lr={lr}", f"data.cache_dir={args.cache}", f"train.precision={precision}"])
    preset = PRESETS[modality_name]
    label = name if extra is None else "ablation-" + "-".join(o.replace("=", "") for o in extra)
    run = folder / f"{modality_name}-{label}-lr{lr:g}-{minutes:g}min{tag}"
    config = load_config(preset, overrides)
    modality = MODALITIES[modality_name]
    parts = round(1 / min(fractions))  # checkpoints: every 1/parts of the updates
    budget = minutes * 60
    if (run / "plan.json").exists():
        step_s = json.loads((run / "plan.json").read_text())["step_s"]
    else:
        if step_s is None:
            # The faster of two medians of 6 updates: a shared host that slows down for a few seconds
            # only inflates a measurement, and an inflated one would end the run well before its budget.
            step_s = min(time_updates(config, modality, steps=6)["step_s"] for _ in range(2))
        run.mkdir(parents=True, exist_ok=True)
        (run / "plan.json").write_text(json.dumps({"step_s": step_s, "minutes": minutes}) + "\n")
    every = max(1, int(budget / (step_s * 1.05)) // parts)  # 1/parts of the updates; the data loader's share: 5 %
    every = every // 10 * 10 if every >= 100 else every  # round numbers only where that costs < 10 %
    updates = parts * every
    config = load_config(preset, overrides + [
        f"train.max_steps={updates}", f"train.checkpoint_every={every}",
        f"train.keep_checkpoints={parts}", f"train.log_every={10 if every % 10 == 0 else 1}",
        f"ema.anneal_steps={updates}",  # (ema.anneal_fraction in `more`, if given, takes its place)
        f"optim.warmup_steps={max(1, updates // 12)}", f"train.time_budget_s={budget * 2}"])  # a safety net only
    data = modality.pretraining_data(config)
    batch = data.collate([data.dataset[i] for i in range(config.train.batch_size)])
    flops = count_update_flops(build_model(config), batch, torch.device("cpu"))
    start = time.perf_counter()
    pretrain(config, run, progress=not args.no_progress)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in rows}  # step: updates done
    points = []
    for fraction in fractions:
        step = int(updates * fraction)  # a multiple of `every` and of log_every: a checkpoint and a row exist
        checkpoint = run / "checkpoints" / ("last.pt" if step == updates else f"step_{step:09d}.pt")
        points.append({"fraction": fraction, "updates": step, "seconds": round(elapsed[step], 1),
                       "samples": step * config.train.batch_size, "flops": step * flops,
                       "checkpoint": str(checkpoint)})
    return {"objective": name, "lr": lr, "step_s_measured": step_s, "flops_per_update": flops,
            "updates": updates, "budget_s": budget, "wall_s": round(wall, 1),
            "budget_used": round(points[-1]["seconds"] / budget, 3), "points": points}


class ImageTasks:
    """Fashion-MNIST: a validation split of 5,000 training images, the probe learning from
    --probe-images others, the test split; fine-tuning from --finetune-images."""

    def __init__(self, args):
        from data2vec2.modalities.image.data import Subset, open_image_source, split_validation

        source = open_image_source("fashion-mnist:train", Path(args.cache), 1)
        fit_all, self.val = split_validation(source, 1000 if args.quick else 5000, seed=0)
        self.test = open_image_source("fashion-mnist:test", Path(args.cache), 1)
        if args.quick:
            self.test = Subset.sample(self.test, 1000, 0)
        self.fit = Subset.sample(fit_all, args.probe_images, 0)
        self.finetune_images, self.val_images = args.finetune_images, len(self.val)
        self.finetune_updates = args.finetune_updates
        self.cache, self.quick = args.cache, args.quick

    def probe(self, encoder, config, test: bool) -> dict:
        from data2vec2.modalities.image.evaluate import extract_features

        def features(source):
            image, data = config.model.settings, config.data.settings
            return extract_features(encoder, source, image_size=image.image_size, mean=data.mean, std=data.std,
                                    progress=False)

        fit, val = features(self.fit), features(self.val)
        out = {"probe_val": linear_probe(*fit, *val, seed=0).test_accuracy}
        if test:
            out["probe_test"] = linear_probe(*fit, *features(self.test), seed=0).test_accuracy
        return out

    def finetune(self, checkpoint: str, encoder, config) -> dict:
        """`data2vec2 finetune image-cls-tiny` from the checkpoint: --finetune-updates of 64 images
        from the first --finetune-images + the validation images of the training split, of which
        the validation images are held out (the recipe's own seeded hold-out); the best checkpoint
        by validation accuracy is scored on the test split."""
        import tempfile

        from data2vec2.finetune import finetune, load_finetune_config
        from data2vec2.modalities import MODALITIES

        if self.finetune_updates <= 0:
            return {}
        overrides = [f"finetune.init={checkpoint}", f"data.cache_dir={self.cache}", "train.batch_size=64",
                     f"train.max_steps={self.finetune_updates}", "train.time_budget_s=0",
                     f"data.limit={self.finetune_images + self.val_images}", f"finetune.valid_size={self.val_images}",
                     f"finetune.eval_every={self.finetune_updates}", f"optim.warmup_steps={self.finetune_updates // 10}"]
        if self.quick:
            overrides.append("finetune.test=[]")
        ft_config = load_finetune_config("image-cls-tiny", overrides, MODALITIES)
        with tempfile.TemporaryDirectory() as run:
            scores = finetune(ft_config, run, MODALITIES["image"], progress=False)["results"]["scores"]
        return {"finetune_val": scores["valid"]["accuracy"],
                **({"finetune_test": scores["fashion-mnist:test"]["accuracy"]} if not self.quick else {})}


class TextTasks:
    """Rotten Tomatoes (the splits of 'data2vec2 prepare text', read by the text classification
    task): the probe on mean-pooled frozen features, and `data2vec2 finetune text-cls-tiny` (the dev
    split is the validation split; --quick: 500 training sentences, 1 epoch)."""

    def __init__(self, args):
        self.cache, self.quick = args.cache, args.quick
        self.data = None

    def _data(self, config):
        from data2vec2.modalities.text.classification import CLASSIFICATION

        if self.data is None:  # every run shares the cache's tokenizer
            config.data.cache_dir = self.cache
            train = CLASSIFICATION.data(config, "rotten-tomatoes:train", None, False)
            self.data = {"train": train, **{name: CLASSIFICATION.data(config, f"rotten-tomatoes:{name}", train.labels,
                                                                      False) for name in ("dev", "test")}}
            if self.quick:
                for d in self.data.values():
                    d.dataset.ids, d.dataset.targets = d.dataset.ids[:500], d.dataset.targets[:500]
        return self.data

    def probe(self, encoder, config, test: bool) -> dict:
        from data2vec2.modalities.text.probe import sentence_features

        data = self._data(config)
        x = {name: sentence_features(encoder, d.dataset.ids) for name, d in data.items()}
        y = {name: torch.as_tensor(d.dataset.targets) for name, d in data.items()}
        out = {"probe_val": linear_probe(x["train"], y["train"], x["dev"], y["dev"], seed=0).test_accuracy}
        if test:
            out["probe_test"] = linear_probe(x["train"], y["train"], x["test"], y["test"], seed=0).test_accuracy
        return out

    def finetune(self, checkpoint: str, encoder, config) -> dict:
        import tempfile

        from data2vec2.finetune import finetune, load_finetune_config
        from data2vec2.modalities import MODALITIES

        overrides = [f"finetune.init={checkpoint}", f"data.cache_dir={self.cache}", "train.time_budget_s=0"]
        if self.quick:
            overrides += ["data.limit=500", "train.max_steps=16", "optim.warmup_steps=1", "finetune.eval_every=16"]
        ft_config = load_finetune_config("text-cls-tiny", overrides, MODALITIES)
        with tempfile.TemporaryDirectory() as run:
            scores = finetune(ft_config, run, MODALITIES["text"], progress=False)["results"]["scores"]
        return {"finetune_val": scores["valid"]["accuracy"], "finetune_test": scores["rotten-tomatoes:test"]["accuracy"]}


class AudioTasks:
    """Keyword spotting (the kws_train / kws_test manifests of 'data2vec2 prepare audio', read by the
    utterance classification task): the probe on mean-pooled frozen features; words of held-out
    voices are the test split, and the probe's own held-out tenth of the training clips the
    validation split. No fine-tuning."""

    def __init__(self, args):
        self.train = str(Path(args.cache) / "audio" / "kws_train.tsv")
        self.test = str(Path(args.cache) / "audio" / "kws_test.tsv")

    def probe(self, encoder, config, test: bool) -> dict:
        from data2vec2.modalities.audio.kws import evaluate_kws

        result = evaluate_kws({"pretrained": encoder}, config, self.train, self.test)["pretrained"]
        return {"probe_val": result["val_accuracy"], **({"probe_test": result["accuracy"]} if test else {})}

    def finetune(self, checkpoint: str, encoder, config) -> dict:
        return {}


TASKS = {"image": ImageTasks, "text": TextTasks, "audio": AudioTasks}


def evaluate(points: list[dict], tasks, test: bool = True, finetune_last: bool = True) -> None:
    for point in points:
        encoder, config = load_encoder_and_config(point["checkpoint"])
        point.update(tasks.probe(encoder, config, test))
        if finetune_last and point is points[-1]:
            point.update(tasks.finetune(point["checkpoint"], encoder, config))
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


def plot(best: dict[str, dict], out: Path, ablations: list[dict] = ()) -> None:
    """Accuracy against seconds and against FLOPs: a line per objective (and per ablation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for axis, label in (("seconds", "pre-training seconds"), ("flops", "pre-training FLOPs")):
        fig, panes = plt.subplots(1, 2, figsize=(10, 4))
        for pane, metric in zip(panes, ("probe_test", "finetune_test")):
            lines = list(best.items()) + [(run["ablation"], run) for run in ablations]
            for name, run in lines:
                pts = [p for p in run["points"] if metric in p]
                if pts:
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
    parser.add_argument("--modality", default="image", choices=list(PRESETS))
    parser.add_argument("--budget-minutes", type=float, help="pre-training of each objective (images 20, others 10)")
    parser.add_argument("--tune-minutes", type=float, help="pre-training of each lr of the grid (images 5, others 3)")
    parser.add_argument("--objectives", nargs="+", help="some of the modality's (default: all of them)")
    parser.add_argument("--lrs", nargs="+", type=float, help="one grid for every objective (default: LR_GRID)")
    parser.add_argument("--probe-images", type=int, default=10000, help="images: training images for the probes")
    parser.add_argument("--finetune-images", type=int, default=10000, help="images: training images for fine-tuning")
    parser.add_argument("--finetune-updates", type=int, default=400, help="images: batch 64, on the last checkpoint")
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--runs", default="runs/efficiency")
    parser.add_argument("--ablations", nargs="*", choices=list(ABLATIONS),
                        help="images: also run these data2vec 2.0 ablations (no names: all of them)")
    parser.add_argument("--quick", action="store_true", help="every path in minutes: not for claims")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    modality, objectives = args.modality, OBJECTIVES[args.modality]
    args.objectives = args.objectives or list(objectives)
    unknown = sorted(set(args.objectives) - set(objectives))
    if unknown:
        parser.error(f"--objectives {unknown}: {modality} has {list(objectives)}")
    if args.ablations is not None and modality != "image":
        parser.error("--ablations: images only")
    budget, tune = MINUTES[modality]
    args.budget_minutes = args.budget_minutes or budget
    args.tune_minutes = args.tune_minutes or tune
    if args.quick:
        args.budget_minutes, args.tune_minutes = 0.4, 0.2
        args.probe_images, args.finetune_images, args.finetune_updates = 1000, 1000, 20
    torch.manual_seed(0)
    tasks = TASKS[modality](args)
    grid = args.lrs or LR_GRID[modality]
    folder = Path(args.runs)
    tuning, runs, best = [], [], {}
    for name in args.objectives:
        for lr in grid if len(grid) > 1 else []:
            run = run_objective(modality, name, lr, args.tune_minutes, args, folder)
            evaluate(run["points"][-1:], tasks, test=False, finetune_last=False)
            tuning.append(run)
        chosen = max((r for r in tuning if r["objective"] == name), key=lambda r: r["points"][-1]["probe_val"],
                     default={"lr": grid[0]})["lr"]
        run = run_objective(modality, name, chosen, args.budget_minutes, args, folder)
        evaluate(run["points"], tasks)
        runs.append(run)
        best[name] = run
    ablations = []
    for label in (list(ABLATIONS) if args.ablations == [] else args.ablations or []):
        lr = best["data2vec2"]["lr"] if "data2vec2" in best else grid[0]
        run = run_objective(modality, "data2vec2", lr, args.budget_minutes, args, folder, extra=ABLATIONS[label])
        run["ablation"] = label
        evaluate(run["points"], tasks, finetune_last=False)
        ablations.append(run)
    result = {"benchmark": "efficiency", "modality": modality, "preset": PRESETS[modality],
              "budget_minutes": args.budget_minutes, "quick": args.quick, "tune_minutes": args.tune_minutes,
              **({"probe_images": args.probe_images, "finetune_images": args.finetune_images,
                  "finetune_updates": args.finetune_updates} if modality == "image" else {}),
              "objectives": {name: objectives[name] for name in args.objectives}, "lr_grid": grid,
              "tuning": tuning, "runs": runs, "ablations": ablations, "chosen_lr": {name: run["lr"] for name, run in best.items()},
              "speedup": speedups(best, "probe_test") if "data2vec2" in best else {},
              "finetune_last": {name: {k: run["points"][-1].get(k) for k in ("finetune_val", "finetune_test")}
                                for name, run in best.items()},
              "header": results_header("fp32")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(best, out, ablations)
    print(json.dumps({"speedup": result["speedup"], "finetune_last": result["finetune_last"]}, indent=1))


if __name__ == "__main__":
    main()
