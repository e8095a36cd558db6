"""scripts/gpu_check.sh, the prepared GPU check: its dry run takes the same steps on CPU with the tiny
presets (benchmark, largest batch, pre-training stopped and resumed) and writes the same JSON lines."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run_check(args: list[str], tmp_path: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def docs_files() -> list[str]:
    return sorted(p.name for p in (ROOT / "docs" / "benchmarks").iterdir())


def test_dry_run_writes_every_line(tmp_path):
    before = docs_files()
    out = tmp_path / "x.jsonl"
    proc = run_check(["--dry-run", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({r["run"] for r in rows}) == 1 and all(r["dry_run"] is True for r in rows)
    assert [r["check"] for r in rows] == ["benchmark"] * 3 + ["largest_batch", "waits", "waits", "pretrain",
                                                               "pretrain_fsdp", "summary"]

    bench = {r["preset"]: r for r in rows if r["check"] == "benchmark"}
    assert sorted(bench) == ["audio-tiny", "image-tiny", "text-tiny"]
    for r in bench.values():
        assert r["status"] == "ok" and r["compile"] is False and r["device"] == "cpu"
        assert r["step_s"] > 0 and r["samples_per_s"] == pytest.approx(r["batch"] / r["step_s"], rel=0.02)
        assert r["mfu"] > 0 and r["peak_memory_mb"] > 0 and r["step_gflop"] > 0
    assert bench["image-tiny"]["batch"] == 4 and "train.device=cpu" in bench["image-tiny"]["overrides"]

    (search,) = [r for r in rows if r["check"] == "largest_batch"]
    assert search["status"] == "ok" and search["largest_batch"] == 8 and search["stopped_by"] == "cap"
    # step 1's batch counts as run; the search doubles from there up to its cap in a dry run
    assert [(t["batch"], t["status"]) for t in search["tried"]] == [(4, "ran"), (8, "ran"), (16, "cap")]
    assert search["tried"][0]["note"] == "in step 1" and search["tried"][0]["step_s"] == bench["image-tiny"]["step_s"]
    assert search["peak_memory_mb"] == search["tried"][1]["peak_memory_mb"] > 0

    (pre,) = [r for r in rows if r["check"] == "pretrain"]
    assert pre["status"] == "ok" and pre["problems"] == []
    assert (pre["updates"], pre["stopped_at"], pre["resumed_at"]) == (6, 3, 3)
    assert pre["loss_finite"] is True and pre["loss_falls"] is True and pre["loss_last"] < pre["loss_first"]
    assert len(pre["curve"]) == 6 and pre["loss_first"] == pytest.approx(sum(pre["curve"][:2]) / 2, rel=1e-3)
    assert {"last.pt", "step_000000003.pt", "step_000000006.pt"} <= set(pre["checkpoints"])

    waits = [r for r in rows if r["check"] == "waits"]  # on a CPU: the update runs, no device to wait for
    assert [(r["preset"], r["status"], r["waits"], r["device"]) for r in waits] == [
        ("image-tiny", "ok", None, "cpu"), ("text-tiny", "ok", None, "cpu")]

    (fsdp,) = [r for r in rows if r["check"] == "pretrain_fsdp"]  # sharded checkpoints are folders
    assert fsdp["status"] == "ok" and fsdp["problems"] == [] and "train.fsdp=true" in fsdp["overrides"]
    assert (fsdp["updates"], fsdp["stopped_at"], fsdp["resumed_at"]) == (4, 2, 2) and fsdp["loss_finite"] is True
    assert fsdp["checkpoints"] == ["last", "step_000000002", "step_000000004"]

    (summary,) = [r for r in rows if r["check"] == "summary"]
    assert summary["status"] == "ok" and summary["failed"] == [] and 0 < summary["seconds"] < 120
    assert docs_files() == before  # a dry run never writes into docs/
    assert not list(tmp_path.glob("gpu_check.*"))  # its temporary folder (images, run folder) is removed


def test_a_missing_module_is_named_and_nothing_runs(tmp_path):
    fake = tmp_path / "fake"
    (fake / "yaml").mkdir(parents=True)
    (fake / "yaml" / "__init__.py").write_text("raise ImportError('no yaml here')\n")
    out = tmp_path / "x.jsonl"
    proc = run_check(["--dry-run", "--out", str(out)], tmp_path, PYTHONPATH=str(fake))
    assert proc.returncode == 3
    assert "missing Python module(s): yaml (package pyyaml" in proc.stderr and "installs nothing" in proc.stderr
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU this would run the whole check")
def test_without_a_gpu_the_check_stops_and_writes_nothing(tmp_path):
    before = docs_files()
    proc = run_check([], tmp_path)
    assert proc.returncode == 4 and "sees no CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert docs_files() == before


def test_bad_arguments_are_refused(tmp_path):
    proc = run_check(["--dryrun"], tmp_path)
    assert proc.returncode == 2 and "unknown argument --dryrun" in proc.stderr
