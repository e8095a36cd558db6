"""How much a busy core slows image-tiny pre-training, for several thread and worker settings.

Each setting runs `data2vec2 pretrain image-tiny` (real data loading) for a few updates twice:
on a quiet machine, and beside one busy single-threaded process (`while True: pass`, what a
compile or a second job looks like). It reports the median seconds per update of each and the
slowdown, measured in one run.

    python benchmarks/busy_core.py --updates 12 --out docs/results/busy_core.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from data2vec2.provenance import results_header

# name -> (environment, overrides)
SETTINGS = {
    "2 threads + 2 workers, OpenMP's default wait": ({"OMP_NUM_THREADS": "2"}, ["data.num_workers=2"]),
    "2 threads + 2 workers, passive wait": ({"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
                                            ["data.num_workers=2"]),
    "1 thread + 2 workers": ({"OMP_NUM_THREADS": "1"}, ["data.num_workers=2"]),
    "1 thread + 1 worker": ({"OMP_NUM_THREADS": "1"}, ["data.num_workers=1"]),
    "train.threads=auto (the default)": ({}, []),
}


def seconds_per_update(env: dict, overrides: list[str], updates: int, cache: str) -> float:
    with tempfile.TemporaryDirectory() as run:
        cmd = [sys.executable, "-m", "data2vec2", "pretrain", "image-tiny", "--run-dir", run, "--no-progress",
               f"data.cache_dir={cache}", f"train.max_steps={updates}", "train.log_every=1", "train.precision=fp32",
               "train.checkpoint_every=100000", *overrides]
        full_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        subprocess.run(cmd, check=True, env={**full_env, **env}, stdout=subprocess.DEVNULL)
        rows = [json.loads(ln) for ln in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(64 / r["samples_per_s"] for r in rows[2:])  # the first updates warm up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out")
    args = parser.parse_args()
    results = {}
    for name in args.settings:
        env, overrides = SETTINGS[name]
        quiet = seconds_per_update(env, overrides, args.updates, args.cache)
        busy_process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            busy = seconds_per_update(env, overrides, args.updates, args.cache)
        finally:
            busy_process.kill()
        results[name] = {"quiet_s_per_update": round(quiet, 3), "busy_s_per_update": round(busy, 3),
                         "slowdown": round(busy / quiet, 2)}
        print(json.dumps({name: results[name]}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"header": results_header("fp32"), "updates": args.updates,
                                               "results": results},
                                             indent=2) + "\n")


if __name__ == "__main__":
    main()
