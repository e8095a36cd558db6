#!/usr/bin/env python3
"""The project's one prepared GPU check, for a machine with one NVIDIA GPU and its own PyTorch
(CUDA). It installs nothing and needs no internet and no prepared data: it runs the package from
this source tree (PYTHONPATH=src), so the package need not be installed there; it needs torch,
numpy, pyyaml, pillow, tqdm and safetensors, and names any that is missing.

    python3 scripts/gpu_check.py [options]        (or: bash scripts/gpu_check.sh [options])

    --dry-run          the same steps on this CPU with the tiny presets (about 2 minutes on 2 cores)
    --out DIR          where everything it writes goes (default: $OUT when that is set, else
                       runs/gpu_check, or runs/gpu_check_dry for a dry run)
    --only STEPS       comma-separated step names (below); the start-up step always runs
    --deadline S       no step runs past S seconds after the start (default 500; dry run 900)
    --step-limit S     the time limit of each chosen step, instead of its own (for a rerun)
    --startup-limit S  the time limit of the start-up step (default 60)
    --work DIR         images, run folders and checkpoints (default: a new folder under $TMPDIR,
                       removed at the end)
    --keep-work        do not remove that folder
    environment: DATA2VEC2_COMMIT (the commit to record where the tree has no .git),
                 PYTHON (the Python that runs the steps; default: the one running this)

It prints its plan (every step with its time limit) before anything else, then the machine (disk,
/dev/shm, memory, CPUs; GPU, driver, torch, CUDA, cuDNN and NCCL versions), then runs the steps in
that order, each in a process of its own under its limit; a step that fails or runs out of time is
written down as such and the others still run. In --out it writes three files:
    gpu-<GPU name>.jsonl   one JSON line per result (gpu-dry-run.jsonl for a dry run): the first,
                           check "environment", is the header (date, machine, versions, commit,
                           command); each has check, step, status (ok | failed, with its reason),
                           run (this check's start time), dry_run and commit; the last is a summary
    gpu_check.log          what was printed on the console
    gpu_check_steps.log    the whole output of every process each step ran, in order
Exit status: 0 when every chosen step passed, 1 when one failed (its line says why), 2 for a bad
argument, 3 when a Python module is missing, 4 when no CUDA GPU is visible, 5 when the start-up
step (first import of torch, first CUDA context) failed or ran out of time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXIT_FAILED, EXIT_USAGE, EXIT_MODULE, EXIT_NO_GPU, EXIT_STARTUP = 1, 2, 3, 4, 5
TIMED_OUT = 124
STARTUP_LIMIT = 60  # the first `import torch` and CUDA context of a fresh machine
MODULES = {"torch": "torch", "numpy": "numpy", "yaml": "pyyaml", "PIL": "pillow", "tqdm": "tqdm",
           "safetensors": "safetensors"}  # import name -> package name


@dataclass(frozen=True)
class Step:
    name: str
    kind: str  # benchmark | waits | largest_batch | pretrain
    limit: int  # seconds
    what: str  # its line in the plan
    settings: dict = field(default_factory=dict)


# Per-GPU batches: each preset's global batch (what one update sees) split over one node of 8 GPUs,
# the setup docs/image.md runs image-base on (torchrun --nproc_per_node=8):
# - image-base: 512 images / 8 = 64 per GPU (x 16 masked clones: 1,024 student samples per GPU).
# - audio-base: 64 utterances / 8 = 8 per GPU, as the reference's 8 GPUs; the reference batches by
#   length, 1.0M samples (62.5 s of 16 kHz audio) per GPU: here 8 crops of 125,000 samples.
# - text-base: 64 blocks of 512 tokens / 8 = 8 blocks per GPU (the reference: 4 per GPU on 16 GPUs).
# The pre-training steps check training, not speed. image-base at batch 32: the preset's peak LR,
# 1e-3 for 512 images, scaled by sqrt(32 / 512) (Adam) to 2.5e-4, warmup 10 % of the 150 updates.
# image-large (sharded by its preset) at batch 16: 4e-4 scaled by sqrt(16 / 512) to 7e-5. Its
# checkpoints (student, teacher, AdamW) are 4.7 GB each, two kept: hence the free disk it asks for.
# Limits: 60 (start-up) + 40 + 35 + 30 + 30 + 40 + 75 + 80 + 90 = 480 s under a deadline of 500 s.
GPU_STEPS = [
    Step("bench-image", "benchmark", 40, "image-base, 64 images, bf16, eager: step time, samples/s, MFU, memory",
         {"preset": "image-base", "overrides": ["train.batch_size=64"], "compile": "off"}),
    Step("bench-audio", "benchmark", 35, "audio-base, 8 crops of 125,000 samples, bf16, eager",
         {"preset": "audio-base", "overrides": ["train.batch_size=8", "data.max_samples=125000"], "compile": "off"}),
    Step("bench-text", "benchmark", 30, "text-base, 8 blocks of 512 tokens, bf16, eager",
         {"preset": "text-base", "overrides": ["train.batch_size=8"], "compile": "off"}),
    Step("waits", "waits", 30, "where the host waits for the GPU in one update of image-base and text-base",
         {"presets": ["image-base", "text-base"], "overrides": ["train.batch_size=8"]}),
    Step("largest-batch", "largest_batch", 40, "the largest image-base batch: doubling from 64 until out of memory",
         {"preset": "image-base", "first": 64, "cap": 4096}),
    Step("pretrain", "pretrain", 75, "image-base on 320 generated images: 100 updates, stop, resume to 150",
         {"preset": "image-base", "stop": 100, "total": 150, "legs": (45, 30), "images": (320, 224), "workers": 8,
          "disk_gb": 5, "overrides": ["train.batch_size=32", "optim.lr=2.5e-4", "optim.warmup_steps=15",
                                      "train.checkpoint_every=100", "train.log_every=1"]}),
    Step("pretrain-fsdp", "pretrain", 80, "image-large sharded (FSDP) on the one GPU: 10 updates, stop, resume to 20",
         {"preset": "image-large", "stop": 10, "total": 20, "legs": (45, 35), "images": (320, 224), "workers": 8,
          "disk_gb": 12, "overrides": ["train.fsdp=true", "train.batch_size=16", "optim.lr=7e-5",
                                       "optim.warmup_steps=4", "train.checkpoint_every=10", "train.log_every=1"]}),
    Step("compile-image", "benchmark", 90, "image-base as bench-image, each block compiled (torch.compile)",
         {"preset": "image-base", "overrides": ["train.batch_size=64"], "compile": "on"}),
]
# The same steps on a CPU with the tiny presets, small batches and few updates: a rehearsal of the
# check itself (its processes, limits, files, DataLoader workers, sharded checkpoints, compile).
DRY_STEPS = [
    Step("bench-image", "benchmark", 60, "image-tiny, 4 images, eager",
         {"preset": "image-tiny", "overrides": ["train.batch_size=4"], "compile": "off"}),
    Step("bench-audio", "benchmark", 60, "audio-tiny, 2 crops of 16,000 samples, eager",
         {"preset": "audio-tiny", "overrides": ["train.batch_size=2", "data.max_samples=16000"], "compile": "off"}),
    Step("bench-text", "benchmark", 60, "text-tiny, 4 blocks, eager",
         {"preset": "text-tiny", "overrides": ["train.batch_size=4"], "compile": "off"}),
    Step("waits", "waits", 60, "one update of image-tiny and text-tiny (a CPU has no device to wait for)",
         {"presets": ["image-tiny", "text-tiny"], "overrides": ["train.batch_size=2"]}),
    Step("largest-batch", "largest_batch", 60, "image-tiny batches from 4, doubling up to 8",
         {"preset": "image-tiny", "first": 4, "cap": 8}),
    Step("pretrain", "pretrain", 90, "image-tiny on 32 generated images: 3 updates, stop, resume to 6",
         {"preset": "image-tiny", "stop": 3, "total": 6, "legs": (50, 40), "images": (32, 32), "workers": 2,
          "disk_gb": 0, "overrides": ["train.batch_size=8", "optim.warmup_steps=2", "train.checkpoint_every=3",
                                      "train.log_every=1"]}),
    Step("pretrain-fsdp", "pretrain", 90, "image-tiny sharded (FSDP, one process): 2 updates, stop, resume to 4",
         {"preset": "image-tiny", "stop": 2, "total": 4, "legs": (50, 40), "images": (32, 32), "workers": 2,
          "disk_gb": 0, "overrides": ["train.fsdp=true", "train.batch_size=8", "optim.warmup_steps=1",
                                      "train.checkpoint_every=2", "train.log_every=1"]}),
    Step("compile-image", "benchmark", 150, "image-tiny as bench-image, each block compiled",
         {"preset": "image-tiny", "overrides": ["train.batch_size=4"], "compile": "on"}),
]
STEP_NAMES = [s.name for s in GPU_STEPS]


class Usage(Exception):
    """A bad argument: exit 2."""


class Stop(Exception):
    """SIGTERM or SIGINT to the check: the current step is ended and the check stops."""


# ------------------------------------------------------------------------------------------------
# The check: plan, environment, steps, summary (this process never imports torch)

class Check:
    def __init__(self, args: argparse.Namespace):
        self.dry_run = args.dry_run
        self.python = os.environ.get("PYTHON") or sys.executable
        self.device = "cpu" if self.dry_run else "cuda"
        self.precision = "auto" if self.dry_run else "bf16"
        self.bench_steps = 2 if self.dry_run else 5
        steps = DRY_STEPS if self.dry_run else GPU_STEPS
        self.steps = [s for s in steps if not args.only or s.name in args.only]
        self.step_limit = args.step_limit
        self.startup_limit = args.startup_limit
        self.deadline = args.deadline or (900 if self.dry_run else 500)
        self.out = Path(args.out or os.environ.get("OUT") or ("runs/gpu_check_dry" if self.dry_run else "runs/gpu_check"))
        self.out = self.out if self.out.is_absolute() else Path.cwd() / self.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.console = self.out / "gpu_check.log"
        self.steps_log = self.out / "gpu_check_steps.log"
        self.results: Path | None = None  # named once the GPU is known
        self.keep_work = args.keep_work or bool(args.work)
        if args.work:
            self.work = Path(args.work).resolve()
            self.work.mkdir(parents=True, exist_ok=True)
        else:
            self.work = Path(tempfile.mkdtemp(prefix="gpu_check.", dir=os.environ.get("TMPDIR")))
        self.start = time.monotonic()
        self.run_id = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.commit = commit()
        self.command = " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                              os.environ.get("PYTHONPATH")])),
                    "PYTHONUNBUFFERED": "1", "NCCL_DEBUG": os.environ.get("NCCL_DEBUG", "WARN")}
        self.process: subprocess.Popen | None = None
        self.failed: list[str] = []
        self.pending: list[dict] = []  # lines written before the results file is named

    # --- output -----------------------------------------------------------------------------------
    def say(self, text: str, err: bool = False) -> None:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
        with open(self.console, "a") as f:
            f.write(text + "\n")

    def record(self, step: str, row: dict) -> dict:
        """Append one result line (and show its short form)."""
        row = {"check": step.replace("-", "_"), "step": step, **row, "run": self.run_id, "dry_run": self.dry_run,
               "commit": self.commit}
        if self.results is None:
            self.pending.append(row)
        else:
            with open(self.results, "a") as f:
                f.write(json.dumps(row) + "\n")
        hidden = ("run", "commit", "dry_run", "overrides", "cpu_flags", "tried", "curve", "where", "command")
        self.say("[gpu_check]   " + json.dumps({k: v for k, v in row.items() if k not in hidden}))
        if row.get("status") == "failed" and step not in self.failed:
            self.failed.append(step)
        return row

    def name_results(self, slug: str) -> None:
        self.results = self.out / f"gpu-{slug}.jsonl"
        rows, self.pending = self.pending, []
        with open(self.results, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

    # --- processes ----------------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - (time.monotonic() - self.start)

    def limit(self, step: Step) -> int:
        """The step's limit (or --step-limit), or what is left before the deadline if that is less."""
        return int(max(1, min(self.step_limit or step.limit, self.left())))

    def run(self, label: str, cmd: list[str], limit: float) -> tuple[int, float, str]:
        """Run `cmd` in a process group of its own for at most `limit` seconds, its output appended
        to the steps log. (exit status or TIMED_OUT, seconds, its output)."""
        shown = " ".join(str(c) for c in cmd).replace(str(self.work), "<work>")
        with open(self.steps_log, "ab") as log:
            log.write(f"\n===== {label}: {shown} (limit {limit:.0f} s)\n".encode())
            log.flush()
            begin = log.tell()
            t0 = time.monotonic()
            self.process = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=ROOT, env=self.env, start_new_session=True)
            try:
                rc = self.process.wait(timeout=max(limit, 0.1))
            except subprocess.TimeoutExpired:
                self.end_process()
                rc = TIMED_OUT
            except BaseException:  # the check itself was stopped (Stop): its step goes with it
                self.end_process()
                raise
            finally:
                self.process = None
            seconds = time.monotonic() - t0
            log.write(f"===== {label}: {'timed out' if rc == TIMED_OUT else f'exit {rc}'} after {seconds:.1f} s\n"
                      .encode())
        with open(self.steps_log, "rb") as log:
            log.seek(begin)
            output = log.read().decode(errors="replace")
        return rc, seconds, output.rsplit("\n=====", 1)[0]

    def end_process(self) -> None:
        """SIGTERM to the running process's group (compile workers, DataLoader workers), then SIGKILL."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def internal(self, name: str, **kwargs) -> list[str]:
        """The command that runs one of this file's in-process helpers (below) in a new process."""
        return [self.python, str(Path(__file__).resolve()), "_" + name, json.dumps(kwargs)]

    def reason(self, rc: int, limit: float, output: str) -> str:
        if rc == TIMED_OUT:
            return f"timed out after {limit:.0f} s" if limit > 0 else "skipped: the deadline had passed"
        return f"exit {rc}: {last_line(output)}"

    def show_tail(self, output: str) -> None:
        for line in output.strip().splitlines()[-20:]:
            self.say("    " + line, err=True)

    # --- the check ------------------------------------------------------------------------------------
    def plan(self) -> None:
        mode = "dry run on this CPU" if self.dry_run else "GPU"
        self.say(f"[gpu_check] {mode}, run {self.run_id}, commit {self.commit}; files in {self.out}")
        self.say(f"[gpu_check] plan: {len(self.steps) + 1} steps, no step past {self.deadline} s from the start")
        rows = [("startup", self.startup_limit, "modules, the first CUDA context and matmul, what the machine is")]
        rows += [(s.name, self.step_limit or s.limit, s.what) for s in self.steps]
        for i, (name, limit, what) in enumerate(rows, 1):
            self.say(f"[gpu_check]   {i}. {name:14s} {limit:4d} s  {what}")
        total = sum(limit for _, limit, _ in rows)
        note = "" if total <= self.deadline else " (over the deadline: the last steps get what is left)"
        self.say(f"[gpu_check]   total of the limits: {total} s{note}")
        if self.commit == "unknown":
            self.say("[gpu_check] the commit is unknown (no git here): set DATA2VEC2_COMMIT=<commit> to record it")

    def startup(self) -> dict:
        """Disk, memory, CPUs (here), then the start-up step: modules, the GPU's first use, versions."""
        facts = machine_here(self.work, self.out)
        self.say("[gpu_check] machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
        facts_file = self.work / "startup.json"
        rc, seconds, output = self.run("startup", self.internal("startup", dry_run=self.dry_run, out=str(facts_file)),
                                       self.startup_limit)
        if rc != 0:
            if rc == TIMED_OUT:
                message = (f"gpu_check: the start-up step (import torch and data2vec2, the first CUDA context) took "
                           f"over {self.startup_limit} s; rerun with --startup-limit {2 * self.startup_limit}")
            else:
                message = output.strip() or f"gpu_check: the start-up step failed (exit {rc})"
            code = rc if rc in (EXIT_MODULE, EXIT_NO_GPU) else EXIT_STARTUP
            self.name_results("unknown")
            self.record("environment", {**facts, "command": self.command, "status": "failed",
                                        "reason": last_line(message), "exit": code})
            self.say(message, err=True)
            raise SystemExit(code)
        facts.update(json.loads(facts_file.read_text()))
        self.name_results("dry-run" if self.dry_run else slug(facts.get("gpu", "unknown")))
        self.say(f"[gpu_check] writing {self.results}")
        self.record("environment", {"date": self.run_id, **facts, "command": self.command,
                                    "startup_s": round(seconds, 1), "status": "ok"})
        return facts

    def run_steps(self, facts: dict) -> None:
        for number, step in enumerate(self.steps, 2):
            limit = self.limit(step)
            self.say(f"[gpu_check] {number}. {step.name} (limit {limit} s): {step.what}")
            if self.left() < 5:
                self.record(step.name, {"status": "failed", "reason": "skipped: the deadline had passed"})
                continue
            getattr(self, "step_" + step.kind)(step, limit, facts)

    def summary(self) -> int:
        elapsed = round(time.monotonic() - self.start, 1)
        status = "ok" if not self.failed else "failed"
        self.record("summary", {"seconds": elapsed, "steps": ["startup"] + [s.name for s in self.steps],
                                "failed": self.failed, "status": status})
        verdict = "every step passed" if not self.failed else "FAILED: " + ", ".join(self.failed)
        self.say(f"[gpu_check] done in {elapsed:.0f} s; {verdict}. Results {self.results}; console {self.console}; "
                 f"every step's output {self.steps_log}")
        return 0 if not self.failed else EXIT_FAILED

    # --- the kinds of step --------------------------------------------------------------------------
    def step_benchmark(self, step: Step, limit: int, facts: dict) -> None:
        s, lines = step.settings, self.work / f"{step.name}.jsonl"
        cmd = [self.python, "-m", "data2vec2", "benchmark", s["preset"], "--precision", self.precision,
               "--compile", s["compile"], "--steps", str(self.bench_steps), "--out", str(lines),
               *s["overrides"], f"train.device={self.device}"]
        rc, seconds, output = self.run(step.name, cmd, limit)
        rows = read_jsonl(lines)
        for row in rows:
            self.record(step.name, {"check": "benchmark", **row, "seconds": round(seconds, 1), "status": "ok"})
        if not rows:
            self.record(step.name, {"check": "benchmark", "preset": s["preset"], "compile": s["compile"] == "on",
                                    "overrides": s["overrides"], "seconds": round(seconds, 1), "status": "failed",
                                    "reason": self.reason(rc, limit, output)})
            self.show_tail(output)

    def step_waits(self, step: Step, limit: int, facts: dict) -> None:
        s, lines = step.settings, self.work / f"{step.name}.jsonl"
        overrides = s["overrides"] + [f"train.device={self.device}", f"train.precision={self.precision}"]
        rc, seconds, output = self.run(step.name, self.internal("waits", presets=s["presets"], overrides=overrides,
                                                                 out=str(lines)), limit)
        rows = {r["preset"]: r for r in read_jsonl(lines)}
        for preset in s["presets"]:
            row = rows.get(preset) or {"preset": preset, "status": "failed", "reason": self.reason(rc, limit, output)}
            self.record(step.name, {**row, "overrides": overrides})
        if rc != 0:
            self.show_tail(output)

    def step_largest_batch(self, step: Step, limit: int, facts: dict) -> None:
        s, lines = step.settings, self.work / f"{step.name}.jsonl"
        overrides = [f"train.device={self.device}", f"train.precision={self.precision}"]
        rc, seconds, output = self.run(step.name, self.internal(
            "largest_batch", preset=s["preset"], overrides=overrides, first=s["first"], cap=s["cap"],
            seconds=limit - 8, out=str(lines)), limit)  # 8 s for the process's start and end
        tried = read_jsonl(lines)
        if rc != 0 and (not tried or tried[-1]["status"] == "ran"):
            tried.append({"batch": 2 * tried[-1]["batch"] if tried else s["first"],
                          "status": "time" if rc == TIMED_OUT else "error", "note": self.reason(rc, limit, output)})
        ran = [t for t in tried if t["status"] == "ran"]
        largest = max(ran, key=lambda t: t["batch"]) if ran else {}
        self.record(step.name, {"preset": s["preset"], "precision": self.precision, "compile": False,
                                "largest_batch": largest.get("batch", 0), "step_s": largest.get("step_s"),
                                "peak_memory_mb": largest.get("peak_memory_mb"),
                                "stopped_by": tried[-1]["status"] if tried else "nothing tried", "tried": tried,
                                "seconds": round(seconds, 1), "status": "ok" if ran else "failed",
                                **({} if ran else {"reason": tried[-1].get("note", "") if tried else "no trial"})})
        if not ran:
            self.show_tail(output)

    def step_pretrain(self, step: Step, limit: int, facts: dict) -> None:
        """`stop` updates of a run whose schedule is `total` long (the Python API's max_steps: the
        command line has no stop at a given update), then `data2vec2 pretrain` on the same folder
        resumes from its checkpoint to `total`; the line reads metrics.jsonl, checkpoints and logs."""
        s = step.settings
        run_dir = self.work / f"{step.name}-run"
        free_gb = shutil.disk_usage(self.work).free / 2**30
        workers = s["workers"]
        shm = shutil.disk_usage("/dev/shm").free / 2**30 if Path("/dev/shm").is_dir() else None
        if shm is not None and shm < 1 and workers > 2:  # each worker's batches pass through /dev/shm
            workers = 2
        row = {"preset": s["preset"], "precision": self.precision, "images": s["images"][0],
               "image_size": s["images"][1], "num_workers": workers}
        if free_gb < s["disk_gb"]:
            self.record(step.name, {**row, "status": "failed", "reason": f"needs {s['disk_gb']} GB of free disk in "
                                                                         f"{self.work}, {free_gb:.1f} GB there"})
            return
        overrides = [f"data.train={self.work / 'images'}", f"train.max_steps={s['total']}",
                     f"data.cache_dir={self.work / 'cache'}", *s["overrides"], f"data.num_workers={workers}",
                     f"train.precision={self.precision}", "train.time_budget_s=0", f"train.device={self.device}"]
        t0 = time.monotonic()
        leg1_limit = limit * s["legs"][0] / sum(s["legs"])
        rc1, _, out1 = self.run(f"{step.name}, first leg", self.internal(
            "pretrain_leg", preset=s["preset"], run_dir=str(run_dir), stop=s["stop"], overrides=overrides,
            images=[str(self.work / "images"), *s["images"]]), leg1_limit)
        rc2, out2 = "skipped", ""
        if rc1 == 0:
            leg2_limit = limit - (time.monotonic() - t0)
            rc2, _, out2 = self.run(f"{step.name}, resumed leg", [self.python, "-m", "data2vec2", "pretrain", s["preset"],
                                                                  "--run-dir", str(run_dir), "--no-progress",
                                                                  *overrides], leg2_limit)
        problems = []
        for leg, rc, output, leg_limit in (("first leg", rc1, out1, leg1_limit),
                                           ("resumed leg", rc2, out2, limit - leg1_limit)):
            if rc == "skipped":
                problems.append(f"{leg}: not run (the first leg failed)")
            elif rc != 0:
                problems.append(f"{leg}: {self.reason(rc, leg_limit, output)}")
        result = examine_run(run_dir, s["stop"], s["total"], out2)
        problems += result.pop("problems")
        shown = [o.replace(str(self.work), "<work>") for o in overrides]
        self.record(step.name, {**row, **result, "overrides": shown, "seconds": round(time.monotonic() - t0, 1),
                                "status": "failed" if problems else "ok", "problems": problems})
        if problems:
            self.show_tail(out1 if rc1 != 0 else out2)


# ------------------------------------------------------------------------------------------------
# Pure helpers of the check (no torch)

def commit() -> str:
    if os.environ.get("DATA2VEC2_COMMIT"):
        return os.environ["DATA2VEC2_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine_here(work: Path, out: Path) -> dict:
    """What decides whether the steps fit, read without torch: free disk, /dev/shm, memory, CPUs."""
    def gb(n: float) -> float:
        return round(n / 2**30, 1)

    facts = {"work_dir_free_gb": gb(shutil.disk_usage(work).free), "out_free_gb": gb(shutil.disk_usage(out).free)}
    if Path("/dev/shm").is_dir():
        shm = shutil.disk_usage("/dev/shm")
        facts.update(dev_shm_gb=gb(shm.total), dev_shm_free_gb=gb(shm.free))
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = {ln.split(":")[0]: int(ln.split()[1]) for ln in meminfo.read_text().splitlines() if ln.endswith("kB")}
        facts.update(memory_gb=gb(kib.get("MemTotal", 0) * 1024), memory_free_gb=gb(kib.get("MemAvailable", 0) * 1024))
    facts["cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return facts


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]", "", name.lower().replace(" ", "-")) or "unknown"


def last_line(text: str) -> str:
    lines = [t for t in text.splitlines() if t.strip() and not t.startswith("=====")]
    return lines[-1].strip()[-300:] if lines else ""


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a file of lines; none if it is missing; a line torn by a kill is skipped."""
    rows = []
    for text in (path.read_text(errors="replace").splitlines() if path.exists() else []):
        try:
            rows.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict)]


def examine_run(run_dir: Path, stop: int, total: int, resumed_log: str) -> dict:
    """From a run folder stopped at `stop` and resumed to `total`: updates logged, loss finite and
    falling (the mean of the last fifth below that of the first), where the resumed run started, the
    checkpoints; `problems` lists what is wrong."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    steps, losses = [r.get("step") for r in rows], [r.get("loss") for r in rows]
    ok = [isinstance(x, (int, float)) and math.isfinite(x) for x in losses]
    finite = bool(losses) and all(ok)
    k = max(2, len(losses) // 5)
    first = last = None
    if finite and len(losses) >= 2 * k:
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    falls = first is not None and last < first
    m = re.search(r"resuming at update (\d+)", resumed_log)
    resumed = int(m.group(1)) if m else None
    folder = run_dir / "checkpoints"  # files (step_*.pt, last.pt) or, under FSDP, folders (step_*, last)
    checkpoints = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    suffix = "" if "last" in checkpoints else ".pt"
    problems = []
    if steps != list(range(1, total + 1)):
        problems.append(f"metrics.jsonl logs {len(steps)} updates ({steps[:2]}...{steps[-2:]}), not 1..{total}")
    if not finite:
        bad = [r.get("step") for r, good in zip(rows, ok) if not good]
        problems.append(f"loss not finite at updates {bad[:10]}" if bad else "no loss logged")
    elif first is not None and not falls:
        problems.append(f"the loss did not fall: mean of the first {k} updates {first}, of the last {k} {last}")
    if resumed != stop:
        problems.append(f"the second run resumed at update {resumed}, not {stop}")
    if f"step_{total:09d}{suffix}" not in checkpoints or f"last{suffix}" not in checkpoints:
        problems.append(f"checkpoints {checkpoints}: no last{suffix} and step_{total:09d}{suffix}")
    timed = [r for r in rows[len(rows) // 2:] if isinstance(r.get("samples_per_s"), (int, float))]

    def median(xs, digits):
        return round(sorted(xs)[len(xs) // 2], digits) if xs else None
    return {"updates": len(losses), "stopped_at": stop, "resumed_at": resumed,
            "loss_first": None if first is None else round(first, 5), "loss_last": None if last is None else round(last, 5),
            "loss_falls": falls, "loss_finite": finite,
            "samples_per_s": median([r["samples_per_s"] for r in timed], 2),
            "mfu": median([r.get("mfu", 0.0) for r in timed], 4), "checkpoints": checkpoints,
            "curve": [round(x, 5) if isinstance(x, float) else x for x in losses], "problems": problems}


# ------------------------------------------------------------------------------------------------
# In-process helpers, each run by the check in a process of its own (`gpu_check.py _NAME JSON`)

def _startup(dry_run: bool, out: str) -> None:
    """Every module the steps import; then torch's first CUDA context, cuBLAS's first bf16 matmul
    (so that no step pays for them) and the versions. Exit 3: a module is missing; 4: no GPU."""
    import importlib
    import platform

    missing = []
    for name, package in MODULES.items():
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} (package {package}: {e})")
    if missing:
        print("gpu_check: missing Python module(s): " + "; ".join(missing) + ". This check installs nothing: install "
              "them into this Python, or point PYTHON=... at a Python that has them.", file=sys.stderr)
        sys.exit(EXIT_MODULE)
    try:
        from data2vec2.cli import build_parser

        build_parser()  # imports every modality, as `data2vec2 benchmark` does
    except ImportError as e:
        print(f"gpu_check: importing data2vec2 from src/ failed: {e}", file=sys.stderr)
        sys.exit(EXIT_MODULE)
    import torch

    from data2vec2 import __version__
    from data2vec2.provenance import machine
    from data2vec2.train.flops import measure_matmul_flops

    facts = {**machine(), "python": platform.python_version(), "data2vec2": __version__,
             "torch_cuda": torch.version.cuda}
    if not dry_run:
        if not torch.cuda.is_available():
            print(f"gpu_check: torch {torch.__version__} sees no CUDA GPU (torch.version.cuda={torch.version.cuda}); "
                  "run this on the GPU machine, or with --dry-run to check the script on a CPU", file=sys.stderr)
            sys.exit(EXIT_NO_GPU)
        t0 = time.perf_counter()
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                     cudnn=torch.backends.cudnn.version(), nccl=".".join(map(str, torch.cuda.nccl.version())),
                     driver=nvidia_driver(), first_context_s=round(time.perf_counter() - t0, 2))
        facts["bf16_matmul_tflops"] = round(measure_matmul_flops(torch.device("cuda"), torch.bfloat16, seconds=1.0)
                                            / 1e12, 1)
    Path(out).write_text(json.dumps(facts))
    print(json.dumps(facts))


def nvidia_driver() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


def _append(out: str, row: dict) -> None:
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def _waits(presets: list[str], overrides: list[str], out: str) -> None:
    """Where the host waits for the GPU in one update that is not a logging step (torch.cuda's sync
    debug mode warns at each), after a warm-up update, with a pinned batch as the DataLoader gives.
    On a CPU there is no device to wait for: the update only runs."""
    import gc
    import warnings

    import torch

    import data2vec2
    from data2vec2.modalities import MODALITIES
    from data2vec2.train.setup import setup_training
    from data2vec2.train.step import train_step

    for preset in presets:
        try:
            config = data2vec2.load_config(preset, overrides)
            modality = MODALITIES[config.model.modality]
            training = setup_training(config, modality)
            batch, _ = modality.synthetic_batch(config)
            cuda = training.device.type == "cuda"
            if cuda:
                batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            train_step(training, [batch], step=0)
            row = {"preset": preset, "device": str(training.device)}
            if not cuda:
                train_step(training, [batch], step=1)
                _append(out, {**row, "waits": None, "where": [], "status": "ok"})
                continue
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    train_step(training, [batch], step=1)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            where = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
            _append(out, {**row, "waits": len(where), "where": where, "status": "ok"})
        except Exception as e:  # noqa: BLE001 - the next preset still runs; the line says why
            _append(out, {"preset": preset, "status": "failed", "reason": f"{type(e).__name__}: {last_line(str(e))}"})
        training = batch = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _largest_batch(preset: str, overrides: list[str], first: int, cap: int, seconds: float, out: str) -> None:
    """Doubling the batch from `first` in this one process (the model built once) until CUDA runs out
    of memory, `cap` is passed, or too little of `seconds` is left for the next trial. Each trial:
    one warm-up and two timed updates; a line per trial."""
    import gc
    import resource

    import torch

    import data2vec2
    from data2vec2.modalities import MODALITIES
    from data2vec2.train.setup import setup_training
    from data2vec2.train.step import train_step

    end = time.monotonic() + seconds
    config = data2vec2.load_config(preset, overrides + [f"train.batch_size={first}"])
    modality = MODALITIES[config.model.modality]
    training = setup_training(config, modality)
    cuda = training.device.type == "cuda"
    batch_size, last_trial = first, 0.0
    while True:
        if batch_size > cap:
            _append(out, {"batch": batch_size, "status": "cap", "note": f"not tried: over the cap of {cap}"})
            return
        if time.monotonic() + 2.5 * last_trial > end:  # the next trial has twice the work
            _append(out, {"batch": batch_size, "status": "time", "note": f"not tried: too little of {seconds:.0f} s left"})
            return
        t0 = time.monotonic()
        batch, _ = modality.synthetic_batch(data2vec2.load_config(preset, overrides + [f"train.batch_size={batch_size}"]))
        failure = None
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times = []
            for i in range(3):
                t = time.perf_counter()
                train_step(training, [batch], step=i)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        except torch.cuda.OutOfMemoryError as e:
            failure = {"status": "out_of_memory", "note": last_line(str(e).splitlines()[0] if str(e) else "")}
        except Exception as e:  # noqa: BLE001 - reported as the trial's result
            failure = {"status": "error", "note": f"{type(e).__name__}: {last_line(str(e))}"}
        if failure:
            training.optimizer.zero_grad(set_to_none=True)
            batch = None
            gc.collect()
            _append(out, {"batch": batch_size, **failure})
            return
        step_s = sorted(times[1:])[0]
        memory = (torch.cuda.max_memory_allocated() if cuda
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        _append(out, {"batch": batch_size, "status": "ran", "step_s": round(step_s, 4),
                      "samples_per_s": round(batch_size / step_s, 2), "peak_memory_mb": round(memory / 2**20)})
        last_trial, batch_size = time.monotonic() - t0, 2 * batch_size


def _pretrain_leg(preset: str, run_dir: str, stop: int, overrides: list[str], images: list) -> None:
    """The first leg of a pre-training step: its images if not there yet, then `stop` updates."""
    import data2vec2
    from data2vec2.train import distributed

    make_images(Path(images[0]), int(images[1]), int(images[2]))
    config = data2vec2.load_config(preset, overrides)
    try:
        result = data2vec2.pretrain(config, run_dir, progress=False, max_steps=stop)
    finally:
        distributed.cleanup()  # FSDP's process group of one: left open, a process may hang at exit
    print(json.dumps({k: v for k, v in result.items() if k != "last"}))


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """n smooth RGB images: a linear gradient in a random direction under 2-5 soft-edged ellipses
    (written to a temporary folder renamed when complete; nothing is done if `folder` exists)."""
    import numpy as np
    from PIL import Image

    if folder.is_dir():
        return
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    for i in range(n):
        angle = rng.uniform(0, 2 * math.pi)
        t = math.cos(angle) * xx + math.sin(angle) * yy
        t = (t - t.min()) / (t.max() - t.min())
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = c0 + t[..., None] * (c1 - c0)
        for _ in range(int(rng.integers(2, 6))):
            cx, cy = rng.uniform(0, 1, 2)
            rx, ry = rng.uniform(0.08, 0.35, 2)
            d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
            alpha = (1 / (1 + np.exp(np.clip((d - 1) * 6, -30, 30))))[..., None]
            img = img * (1 - alpha) + alpha * rng.uniform(0, 255, 3)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(partial / f"img{i:04d}.png", compress_level=1)
    partial.rename(folder)
    print(f"[gpu_check] {n} images of {size} x {size} in {folder}", flush=True)


HELPERS = {"_startup": _startup, "_waits": _waits, "_largest_batch": _largest_batch, "_pretrain_leg": _pretrain_leg}


# ------------------------------------------------------------------------------------------------

def parse(argv: list[str]) -> argparse.Namespace:
    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise Usage(message)

    p = Parser(prog="gpu_check", add_help=False)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--out")
    p.add_argument("--only", type=lambda v: [s.strip() for s in v.split(",") if s.strip()])
    p.add_argument("--deadline", type=int)
    p.add_argument("--step-limit", type=int)
    p.add_argument("--startup-limit", type=int, default=STARTUP_LIMIT)
    p.add_argument("--work")
    p.add_argument("--keep-work", action="store_true")
    args = p.parse_args(argv)
    unknown = [s for s in args.only or [] if s not in STEP_NAMES]
    if unknown or args.only == []:
        raise Usage(f"--only: unknown step {', '.join(unknown) or '(none given)'}; the steps: {', '.join(STEP_NAMES)}")
    for name in ("deadline", "step_limit", "startup_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise Usage(f"--{name.replace('_', '-')} must be at least 1 second, not {value}")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] and argv[0] in HELPERS:  # a step's process
        HELPERS[argv[0]](**json.loads(argv[1]))
        return 0
    try:
        args = parse(argv)
    except Usage as e:
        print(f"gpu_check: {e} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    if args.help:
        print(__doc__)
        return 0
    check = Check(args)

    def stop(signum, _frame):
        raise Stop(signal.Signals(signum).name)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        check.plan()
        facts = check.startup()
        check.run_steps(facts)
        return check.summary()
    except Stop as e:
        check.end_process()
        check.say(f"[gpu_check] stopped by {e} after {time.monotonic() - check.start:.0f} s; the lines so far are in "
                  f"{check.results or check.out}", err=True)
        return 128 + getattr(signal, str(e)).value
    finally:
        if not check.keep_work:
            shutil.rmtree(check.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
