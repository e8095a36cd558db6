"""scripts/gpu_check.py (and its wrapper gpu_check.sh), the prepared GPU check: its dry run takes the
same steps on CPU with the tiny presets and writes the same files, under $OUT as the GPU machine
gives it, with the Python modules that machine lacks made unimportable."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
FILES = {"gpu-dry-run.jsonl", "gpu_check.log", "gpu_check_steps.log"}


def without_modules(folder: Path, *names: str) -> str:
    """A folder for PYTHONPATH in which importing each of `names` fails."""
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    return str(folder)


def check_env(tmp_path: Path, **env) -> dict:
    # the GPU machine's Python has neither the audio extras nor onnxscript
    blocked = without_modules(tmp_path / "blocked", "soundfile", "soxr", "onnxscript")
    base = {k: v for k, v in os.environ.items() if k != "OUT"}  # $OUT only where a test gives it
    return {**base, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "PYTHONPATH": blocked, **env}


def run_check(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=check_env(tmp_path, **env), capture_output=True,
                          text=True, timeout=600)


def lines(path: Path) -> list[dict]:
    return [json.loads(t) for t in path.read_text().splitlines()]


def docs_files() -> list[str]:
    return sorted(p.name for p in (ROOT / "docs" / "benchmarks").iterdir())


def test_dry_run_writes_every_line_and_log_under_OUT(tmp_path):
    before = docs_files()
    out = tmp_path / "device_out"
    out.mkdir()
    proc = run_check(["--dry-run"], tmp_path, OUT=str(out), DATA2VEC2_COMMIT="abc1234")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert {p.name for p in out.iterdir()} == FILES  # what the device machine sends back: 3 files, no folders

    # the plan (every step with its limit) is printed before anything else, then the machine
    printed = proc.stdout.splitlines()
    assert "dry run on this CPU" in printed[0] and "commit abc1234" in printed[0] and str(out) in printed[0]
    assert "plan: 9 steps" in printed[1]
    steps = ["startup", "bench-image", "bench-audio", "bench-text", "waits", "largest-batch", "pretrain",
             "pretrain-fsdp", "compile-image"]
    assert [ln.split()[2] for ln in printed[2:11]] == steps and all(" s  " in ln for ln in printed[2:11])
    assert "total of the limits: 690 s" in printed[11] and "dev_shm_free_gb" in printed[12]
    assert (out / "gpu_check.log").read_text().splitlines() == printed  # the console, kept

    log = (out / "gpu_check_steps.log").read_text()  # every process's whole output
    for step in steps[1:]:
        assert f"===== {step}" in log
    assert "===== pretrain, first leg" in log and "resuming at update 3" in log and '"compile": true' in log

    rows = lines(out / "gpu-dry-run.jsonl")
    assert [r["check"] for r in rows] == ["environment"] + ["benchmark"] * 3 + [
        "waits", "waits", "largest_batch", "pretrain", "pretrain_fsdp", "benchmark", "summary"]
    assert len({r["run"] for r in rows}) == 1 and all(r["dry_run"] is True and r["commit"] == "abc1234" for r in rows)

    env = rows[0]  # the header: date, machine, versions, command
    assert env["status"] == "ok" and env["torch"] == torch.__version__ and env["cpu_flags"] is not None
    assert env["date"] == env["run"] and "--dry-run" in env["command"] and env["dev_shm_gb"] > 0

    bench = {r["step"]: r for r in rows if r["check"] == "benchmark"}
    assert sorted(bench) == ["bench-audio", "bench-image", "bench-text", "compile-image"]
    for r in bench.values():
        assert r["status"] == "ok" and r["device"] == "cpu"
        assert r["step_s"] > 0 and r["samples_per_s"] == pytest.approx(r["batch"] / r["step_s"], rel=0.02)
        assert r["mfu"] > 0 and r["peak_memory_mb"] > 0 and r["step_gflop"] > 0
    assert [bench[s]["compile"] for s in ("bench-image", "compile-image")] == [False, True]
    assert bench["bench-image"]["batch"] == 4 and "train.device=cpu" in bench["bench-image"]["overrides"]

    (search,) = [r for r in rows if r["check"] == "largest_batch"]  # in one process, doubling up to the cap
    assert search["status"] == "ok" and search["largest_batch"] == 8 and search["stopped_by"] == "cap"
    assert [(t["batch"], t["status"]) for t in search["tried"]] == [(4, "ran"), (8, "ran"), (16, "cap")]
    assert search["peak_memory_mb"] == search["tried"][1]["peak_memory_mb"] > 0

    for check, (updates, stop) in {"pretrain": (6, 3), "pretrain_fsdp": (4, 2)}.items():
        (pre,) = [r for r in rows if r["check"] == check]
        assert pre["status"] == "ok" and pre["problems"] == [], pre
        assert (pre["updates"], pre["stopped_at"], pre["resumed_at"]) == (updates, stop, stop)
        assert pre["loss_finite"] is True and pre["loss_falls"] is True and len(pre["curve"]) == updates
        assert pre["num_workers"] == 2 and "data.num_workers=2" in pre["overrides"]  # the DataLoader's workers ran
    (pre,) = [r for r in rows if r["check"] == "pretrain"]
    assert {"last.pt", "step_000000003.pt", "step_000000006.pt"} <= set(pre["checkpoints"])
    (fsdp,) = [r for r in rows if r["check"] == "pretrain_fsdp"]  # sharded checkpoints are folders
    assert "train.fsdp=true" in fsdp["overrides"] and fsdp["checkpoints"] == ["last", "step_000000002", "step_000000004"]

    waits = [r for r in rows if r["check"] == "waits"]  # on a CPU: the update runs, no device to wait for
    assert [(r["preset"], r["status"], r["waits"], r["device"]) for r in waits] == [
        ("image-tiny", "ok", None, "cpu"), ("text-tiny", "ok", None, "cpu")]

    summary = rows[-1]
    assert summary["status"] == "ok" and summary["failed"] == [] and summary["steps"] == steps
    assert docs_files() == before  # a dry run never writes into docs/
    assert not list(tmp_path.glob("gpu_check.*"))  # its work folder (images, run folders) is removed


def test_only_runs_the_chosen_steps_and_a_rerun_adds_its_lines(tmp_path):
    out = tmp_path / "out"
    proc = run_check(["--dry-run", "--only", "bench-text,pretrain", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "plan: 3 steps" in proc.stdout and "largest-batch" not in proc.stdout
    rows = lines(out / "gpu-dry-run.jsonl")
    assert [(r["check"], r["step"]) for r in rows] == [("environment", "environment"), ("benchmark", "bench-text"),
                                                       ("pretrain", "pretrain"), ("summary", "summary")]
    assert rows[-1]["steps"] == ["startup", "bench-text", "pretrain"]

    proc = run_check(["--dry-run", "--only", "waits", "--out", str(out)], tmp_path)
    assert proc.returncode == 0
    rows = lines(out / "gpu-dry-run.jsonl")
    assert len({r["run"] for r in rows}) == 2 and [r["check"] for r in rows[4:]] == [
        "environment", "waits", "waits", "summary"]


def test_a_step_past_its_limit_is_recorded_and_the_next_step_runs(tmp_path):
    out = tmp_path / "out"
    proc = run_check(["--dry-run", "--only", "bench-text,pretrain,waits", "--step-limit", "1", "--out", str(out)],
                     tmp_path)
    assert proc.returncode == 1
    rows = lines(out / "gpu-dry-run.jsonl")
    bench, wait1, wait2, pre, summary = rows[1:]
    assert bench["status"] == "failed" and bench["reason"] == "timed out after 1 s" and bench["compile"] is False
    assert pre["status"] == "failed" and pre["problems"][:2] == ["first leg: timed out after 1 s",
                                                                 "resumed leg: not run (the first leg failed)"]
    assert [(w["preset"], w["reason"]) for w in (wait1, wait2)] == [("image-tiny", "timed out after 1 s"),
                                                                    ("text-tiny", "timed out after 1 s")]
    assert summary["failed"] == ["bench-text", "waits", "pretrain"] and "FAILED: bench-text, waits, pretrain" in proc.stdout
    assert "bench-text: timed out" in (out / "gpu_check_steps.log").read_text()

    proc = run_check(["--dry-run", "--only", "bench-text", "--deadline", "1", "--out", str(out)], tmp_path)
    assert proc.returncode == 1 and lines(out / "gpu-dry-run.jsonl")[-2]["reason"] == "skipped: the deadline had passed"


def test_sigterm_ends_the_running_step_and_its_processes(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(["bash", str(SCRIPT), "--dry-run", "--only", "compile-image", "--out", str(out)],
                            cwd=ROOT, env=check_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "gpu_check_steps.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "===== compile-image" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert "stopped by SIGTERM" in stderr
    leftover = subprocess.run(["pgrep", "-f", "compile-image.jsonl"], capture_output=True, text=True)
    assert leftover.stdout == ""  # the benchmark's process group was ended with the check
    assert not list(tmp_path.glob("gpu_check.*"))


def test_a_slow_start_gets_its_own_exit_status(tmp_path):
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("import time\ntime.sleep(60)\n")
    out = tmp_path / "out"
    proc = run_check(["--dry-run", "--startup-limit", "2", "--out", str(out)], tmp_path,
                     PYTHONPATH=str(fake))
    assert proc.returncode == 5 and "took over 2 s" in proc.stderr and "--startup-limit 4" in proc.stderr
    (row,) = lines(out / "gpu-unknown.jsonl")
    assert row["check"] == "environment" and row["status"] == "failed" and row["exit"] == 5


def test_a_missing_module_is_named_and_nothing_runs(tmp_path):
    out = tmp_path / "out"
    proc = run_check(["--dry-run", "--out", str(out)], tmp_path,
                     PYTHONPATH=without_modules(tmp_path / "fake", "yaml"))
    assert proc.returncode == 3
    assert "missing Python module(s): yaml (package pyyaml" in proc.stderr and "installs nothing" in proc.stderr
    assert [r["status"] for r in lines(out / "gpu-unknown.jsonl")] == ["failed"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU this would run the whole check")
def test_without_a_gpu_the_check_stops_and_writes_nothing_to_docs(tmp_path):
    before = docs_files()
    proc = run_check(["--out", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 4 and "sees no CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert docs_files() == before


@pytest.mark.parametrize("args, message", [
    (["--dryrun"], "unrecognized arguments: --dryrun"),
    (["--only", "bench-image,nope"], "unknown step nope; the steps: bench-image, bench-audio"),
    (["--deadline", "0"], "--deadline must be at least 1 second"),
    (["--step-limit", "x"], "invalid int value"),
])
def test_bad_arguments_are_refused(tmp_path, args, message):
    proc = run_check(args, tmp_path)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""
