"""The local-encoder collapse of audio-tiny (docs/audio.md): the reference's teacher, which reads the
student's own CNN features (detached), against a teacher with its own EMA copy of the CNN and the
projection (`model.audio.ema_local_encoder=true`, audio-tiny's setting).

Each variant pre-trains audio-tiny on the prepared corpus with its full schedule planned
(train.max_steps of the preset) and is stopped by SIGTERM once it has logged `--updates` updates:
the run saves the update it is in and exits, as any stopped run does. Then `data2vec2 kws` probes
that encoder and a random init of the same architecture on the held-out voices. Written per variant:
the local std (after a LayerNorm of each frame; a collapse makes every frame alike) at the first
and last logged update, the target and prediction stds, the loss, and both probe accuracies.

    data2vec2 prepare audio --hours 2 --cache cache
    python benchmarks/audio_collapse.py --cache cache --updates 300 --out docs/results/audio_collapse.json
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from data2vec2.provenance import auto_precision, results_header

VARIANTS = {
    "shared CNN (the reference), lr 1e-3": ["model.audio.ema_local_encoder=false"],
    "shared CNN, lr 3e-4, 300 warmup updates": ["model.audio.ema_local_encoder=false", "optim.lr=3e-4",
                                                "optim.warmup_steps=300"],
    "own EMA CNN (audio-tiny), lr 1e-3": [],
}


def rows(metrics: Path) -> list[dict]:
    if not metrics.exists():
        return []
    out = []
    for line in metrics.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return out


def pretrain(run: Path, overrides: list[str], updates: int, cache: str) -> list[dict]:
    """Pre-train until `updates` updates are logged, then stop the run as a scheduler would (a run
    that got there before is left as it is)."""
    if any(r["step"] >= updates for r in rows(run / "metrics.jsonl")):
        return rows(run / "metrics.jsonl")
    command = [sys.executable, "-m", "data2vec2", "pretrain", "audio-tiny", "--run-dir", str(run), "--no-progress",
               f"data.cache_dir={cache}", "data.num_workers=0", "train.checkpoint_every=100", *overrides]
    process = subprocess.Popen(command)
    while process.poll() is None:
        if any(r["step"] >= updates for r in rows(run / "metrics.jsonl")):
            process.send_signal(signal.SIGTERM)
            process.wait()
            break
        time.sleep(1)
    if process.returncode not in (0, 128 + signal.SIGTERM):
        raise SystemExit(f"pre-training {run} failed with exit code {process.returncode}")
    return rows(run / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--runs", default="runs/audio_collapse", help="where the runs go (resumed if there)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.updates < 25:
        parser.error("--updates must be at least 25 (audio-tiny logs every 25 updates)")

    results = {"header": results_header(auto_precision()), "updates": args.updates, "variants": []}
    for name, overrides in VARIANTS.items():
        run = Path(args.runs) / name.split(",")[0].replace(" ", "_").replace("(", "").replace(")", "")
        logged = pretrain(run, overrides, args.updates, args.cache)
        kws = run / "kws.json"
        if not kws.exists():
            subprocess.run([sys.executable, "-m", "data2vec2", "kws", str(run), "--cache", args.cache,
                            "--out", str(kws)], check=True)
        probe = json.loads(kws.read_text())
        first, last = logged[0], logged[-1]
        keys = ("step", "loss", "target_std", "pred_std", "local_std")
        results["variants"].append({
            "variant": name, "overrides": overrides, "first": {k: first.get(k) for k in keys},
            "last": {k: last.get(k) for k in keys},
            "kws_test": probe["pretrained"]["accuracy"], "kws_val": probe["pretrained"]["val_accuracy"],
            "random_init_kws_test": probe["random"]["accuracy"], "random_init_kws_val": probe["random"]["val_accuracy"],
        })
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")  # each finished variant is kept
        print(json.dumps(results["variants"][-1]), flush=True)


if __name__ == "__main__":
    main()
