"""The demo: pre-train image-tiny on Fashion-MNIST for a few minutes on a CPU, then compare a
linear probe on the pre-trained encoder, on a randomly initialised one and on raw pixels. The work
is sized to the machine so that pre-training and evaluation end within the budget (demo_plan.py).

    data2vec2 demo --out runs/demo [--budget-minutes 11]
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ...provenance import auto_precision, results_header
from ...config import load_config
from ...eval.knn import knn_accuracy
from ...eval.probe import linear_probe
from ...export import load_encoder_and_config
from ...model import random_encoder
from ...train.logger import read_metrics
from ...train.loop import pretrain
from ...train.setup import pick_dtype
from .data import Subset, open_image_source
from .demo_plan import DemoPlan, make_plan, measure, plan_overrides
from .evaluate import evaluate_encoder, pixel_features
from .fashion_mnist import prepare_fashion_mnist


def plot_loss(metrics_file: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_file)
    health = [r for r in rows if "reg_loss" in r]  # a stop on the time budget logs the loss only
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="total loss")
    ax.plot([r["step"] for r in health], [r["reg_loss"] for r in health], label="regression loss (masked tokens)")
    ax.set_xlabel("update")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("data2vec 2.0 pre-training, image-tiny on Fashion-MNIST")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def run_demo(modality, out: str | Path = "runs/demo", overrides: list[str] | None = None, resume: bool = False,
             progress: bool = True, budget_minutes: float = 11.0) -> dict:
    """`modality`: the image record (the demo pre-trains and evaluates through it)."""
    out = Path(out)
    overrides = list(overrides or [])
    config = load_config("image-tiny", overrides, modalities={modality.name: modality})
    cache = Path(config.data.cache_dir)
    print(f"[demo] preparing Fashion-MNIST into {cache}", flush=True)
    prepare_fashion_mnist(cache, progress=progress)
    # Features in bf16 where the CPU is fast at it (as in training); the probe itself is fp32.
    bf16 = pick_dtype(config.train.precision, torch.device("cpu")) == torch.bfloat16

    run_dir, plan_file = out / "pretrain", out / "plan.json"
    if resume and plan_file.exists():  # an interrupted demo continues with the plan it started with
        plan = DemoPlan(**json.loads(plan_file.read_text()))
        print(f"[demo] resuming with the plan in {plan_file}", flush=True)
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        print(f"[demo] measuring this machine (budget {budget_minutes:g} min for pre-training and evaluation)",
              flush=True)
        plan = make_plan(config, *measure(config, modality, bf16), budget_s=60 * budget_minutes)
        out.mkdir(parents=True, exist_ok=True)
        plan_file.write_text(json.dumps(plan.as_dict(), indent=2))
    print(f"[demo] plan: {plan.why}", flush=True)
    config = load_config("image-tiny", overrides + plan_overrides(plan), modalities={modality.name: modality})

    print(f"[demo] pre-training {config.name} for {config.train.max_steps} updates "
          f"(at most {config.train.time_budget_s:.0f} s)", flush=True)
    t0 = time.perf_counter()
    result = pretrain(config, run_dir, modality, resume=resume, progress=progress)
    pretrain_seconds = time.perf_counter() - t0
    rows = read_metrics(run_dir / "metrics.jsonl")
    images_per_second = sum(r["samples_per_s"] for r in rows) / len(rows)

    encoder, _ = load_encoder_and_config(run_dir, {modality.name: modality})
    export_dir = modality.export(encoder, config, out / "export")  # what `data2vec2 export` writes

    train_spec, test_spec = "fashion-mnist:train", "fashion-mnist:test"
    n, seed = plan.probe_train_images, config.train.seed
    t0 = time.perf_counter()
    print(f"[demo] linear probe + kNN on the pre-trained encoder ({n} training images, all test images)", flush=True)
    pre = evaluate_encoder(encoder, config, train_spec, test_spec, progress=progress, bf16=bf16, train_limit=n,
                           seed=seed)
    print(f"[demo]   pre-trained: probe {pre['probe_acc']:.4f}, kNN {pre['knn_acc']:.4f}", flush=True)
    print("[demo] the same on a randomly initialised encoder", flush=True)
    baseline = random_encoder(config.model, modality, seed=seed)
    rnd = evaluate_encoder(baseline, config, train_spec, test_spec, progress=progress, bf16=bf16, train_limit=n,
                           seed=seed)
    print(f"[demo]   random init: probe {rnd['probe_acc']:.4f}, kNN {rnd['knn_acc']:.4f}", flush=True)
    print("[demo] the same on raw pixels", flush=True)
    px_train = pixel_features(Subset.sample(open_image_source(train_spec, cache, 1), n, seed))
    px_test = pixel_features(open_image_source(test_spec, cache, 1))
    pix = linear_probe(*px_train, *px_test, seed=seed)
    pix_knn = knn_accuracy(*px_train, *px_test)
    print(f"[demo]   raw pixels : probe {pix.test_accuracy:.4f}, kNN {pix_knn:.4f}", flush=True)
    eval_seconds = time.perf_counter() - t0

    plot_loss(run_dir / "metrics.jsonl", out / "loss_curve.png")
    precision = auto_precision() if config.train.precision == "auto" else config.train.precision
    summary = {
        "header": results_header(precision),
        "probe_acc_pretrained": pre["probe_acc"],
        "probe_acc_random": rnd["probe_acc"],
        "probe_acc_pixels": pix.test_accuracy,
        "knn_acc_pretrained": pre["knn_acc"],
        "knn_acc_random": rnd["knn_acc"],
        "knn_acc_pixels": pix_knn,
        "gain_over_random_points": 100 * (pre["probe_acc"] - rnd["probe_acc"]),
        "pretrain_seconds": pretrain_seconds,
        "eval_seconds": eval_seconds,
        "probe_train_images": n,
        "pretrain_updates": result["steps"],
        "images_per_second": images_per_second,
        "mfu": sum(r["mfu"] for r in rows) / len(rows),
        "final_loss": rows[-1]["loss"],
        "stop_reason": result["stop_reason"],
        "preset": config.name,
        "export_dir": str(export_dir),
        "loss_curve": str(out / "loss_curve.png"),
        "plan": plan.as_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n[demo] linear-probe test accuracy on Fashion-MNIST (mean-pooled patch tokens):\n"
          f"         pre-trained {100 * pre['probe_acc']:.2f}%   random init {100 * rnd['probe_acc']:.2f}%   "
          f"raw pixels {100 * pix.test_accuracy:.2f}%\n"
          f"         gain over random init: {summary['gain_over_random_points']:+.2f} points\n"
          f"[demo] pre-training: {result['steps']} updates in {pretrain_seconds:.0f} s, "
          f"{images_per_second:.0f} images/s; evaluation {eval_seconds:.0f} s\n"
          f"[demo] wrote {out / 'summary.json'} and {out / 'loss_curve.png'}",
          flush=True)
    return summary
