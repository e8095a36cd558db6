"""Fault injection: kill -9 a pre-training run again and again, resume it each time, and compare
it with the same run left alone.

For each modality, one run goes uninterrupted; another is started with the same command and killed
with SIGKILL K times: at random moments of training and the instant a checkpoint write is in
progress (a temporary checkpoint file exists). After every kill each visible checkpoint file must
load and hold the update its name says; the run is then restarted and resumes. At the end the
per-update losses of metrics.jsonl and the final student and teacher weights must equal those of
the uninterrupted run bit for bit.

    python benchmarks/kill_loop.py --modalities image text audio --kills 12 --out docs/results/kill_loop.json

It runs the tiny presets (dropout and drop path on) on the prepared data (`data2vec2 prepare
fashion-mnist|audio|text --cache cache`), with a smaller batch, a checkpoint every 2 updates and a
metrics row every update. A CPU run of the three takes about 20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from recorded import TEXT_TINY_AS_RECORDED

from data2vec2.provenance import results_header

# Each tiny preset, smaller, with its dropouts on (image-tiny has none: drop path 0.1 is added).
RUNS = {
    "image": ("image-tiny", ["train.batch_size=16", "model.drop_path=0.1", "data.limit=2048",
                             "train.time_budget_s=0"]),
    "text": ("text-tiny", ["train.batch_size=8", "data.limit=4096", *TEXT_TINY_AS_RECORDED]),
    "audio": ("audio-tiny", ["train.batch_size=4", "data.max_samples=16000", "data.limit=512"]),
}
COMMON = ["train.log_every=1", "train.checkpoint_every=2", "train.keep_checkpoints=3", "optim.warmup_steps=5",
          "train.precision=fp32"]


def command(preset: str, overrides: list[str], run: Path, cache: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "data2vec2", "pretrain", preset, "--run-dir", str(run), "--no-progress",
            f"data.cache_dir={cache}", f"train.max_steps={steps}", *COMMON, *overrides]


def data_override(modality: str, cache: Path) -> list[str]:
    """The presets name their data relative to the working folder; point them at --cache."""
    return [f"data.train={cache / 'audio' / 'pretrain.tsv'}"] if modality == "audio" else []


def writing_checkpoint(run: Path, since: float) -> bool:
    """A temporary checkpoint file written by the current process exists."""
    folder = run / "checkpoints"
    try:
        return any(p.name.endswith(".tmp") and p.stat().st_mtime >= since for p in folder.iterdir())
    except OSError:  # no folder yet, or the file was renamed while we looked
        return False


def logged_rows(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def check_visible_checkpoints(run: Path) -> int:
    """Every step_*.pt and last.pt loads, is finite and holds the update its name says."""
    n = 0
    for path in sorted((run / "checkpoints").glob("*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if path.name != "last.pt" and state["step"] != int(path.stem[len("step_"):]):
            raise AssertionError(f"{path} holds update {state['step']}")
        for part in ("student", "teacher"):
            if not all(bool(torch.isfinite(t).all()) for t in state[part].values() if t.is_floating_point()):
                raise AssertionError(f"{path}: non-finite {part} weights")
        n += 1
    return n


def killed_run(cmd: list[str], run: Path, kills: int, rng: random.Random, env: dict) -> dict:
    """Run `cmd` to completion, SIGKILLing it `kills` times: half at a random moment within 3 s of
    an update being logged, half the instant a checkpoint is being written. Returns the counts."""
    done = {"during_training": 0, "checkpoint_write": 0, "checkpoints_checked": 0}
    kinds = (["during_training", "checkpoint_write"] * kills)[:kills]
    rng.shuffle(kinds)
    while True:
        kind = kinds.pop() if kinds else None
        rows, started = logged_rows(run), time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline, fewest = None, rows
        while proc.poll() is None and kind is not None:
            if kind == "during_training":
                now_rows = logged_rows(run)
                fewest = min(fewest, now_rows)  # a resumed run first drops the rows it will repeat
                if deadline is None and now_rows > fewest:  # then an update was made
                    deadline = time.time() + rng.uniform(0.0, 3.0)
                if deadline is not None and time.time() >= deadline:
                    break
            elif writing_checkpoint(run, started):
                break
            time.sleep(0.002)
        if proc.poll() is None and kind is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done[kind] += 1
            done["checkpoints_checked"] += check_visible_checkpoints(run)
            continue
        err = proc.communicate()[1].decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"the run failed (exit {proc.returncode}):\n{err[-3000:]}")
        if kind is not None or kinds:
            raise RuntimeError(f"the run ended with {len(kinds) + 1} kill(s) not made; give more --steps")
        return done


def compare(reference: Path, resumed: Path) -> dict:
    rows = {name: [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
            for name, run in (("reference", reference), ("resumed", resumed))}
    steps = [r["step"] for r in rows["resumed"]]
    if steps != [r["step"] for r in rows["reference"]]:
        raise AssertionError(f"logged updates differ: {steps[:10]}... vs the reference")
    losses = [(a["loss"], b["loss"]) for a, b in zip(rows["reference"], rows["resumed"])]
    a = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    weight_diff = max(float((a[part][k].double() - b[part][k].double()).abs().max())
                      for part in ("student", "teacher") for k in a[part] if a[part][k].is_floating_point())
    return {"updates": len(steps), "losses_equal": sum(x == y for x, y in losses),
            "max_loss_diff": max(abs(x - y) for x, y in losses), "max_weight_diff": weight_diff,
            "weights_bitwise_equal": all(torch.equal(a[p][k], b[p][k]) for p in ("student", "teacher") for k in a[p])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modalities", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--work", default="runs/kill_loop", help="the run folders (replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args()

    cache, work = Path(args.cache).resolve(), Path(args.work)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    rng = random.Random(args.seed)
    results = {}
    for modality in args.modalities:
        preset, overrides = RUNS[modality]
        overrides = overrides + data_override(modality, cache)
        reference, resumed = work / modality / "reference", work / modality / "killed"
        subprocess.run(["rm", "-rf", str(reference), str(resumed)], check=True)
        t0 = time.perf_counter()
        subprocess.run(command(preset, overrides, reference, cache, args.steps), check=True, env=env,
                       stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        kills = killed_run(command(preset, overrides, resumed, cache, args.steps), resumed, args.kills, rng, env)
        results[modality] = {"preset": preset, "overrides": COMMON + overrides, "kills": kills,
                             "uninterrupted_s": seconds, **compare(reference, resumed)}
        print(json.dumps({modality: results[modality]}, indent=2), flush=True)
    report = {"header": results_header("fp32"), "steps": args.steps,
              "seed": args.seed, "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    ok = all(r["losses_equal"] == r["updates"] and r["weights_bitwise_equal"] for r in results.values())
    print("all bitwise equal" if ok else "DIFFERENCES FOUND")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
