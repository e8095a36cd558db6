"""train.fsdp: FSDP2 over CPU processes (gloo) and sharded (DCP) checkpoints, on real Fashion-MNIST images."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data2vec2 import load_config, pretrain
from data2vec2.errors import TrainingError
from data2vec2.train.logger import read_metrics

try:
    from torch.distributed.fsdp import fully_shard  # noqa: F401
except ImportError:
    pytest.skip("this torch has no FSDP2 (fully_shard)", allow_module_level=True)


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl")]


def torchrun(run_dir: Path, overrides: list[str], port: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               "-m", "data2vec2", "pretrain", "image-tiny", "--no-progress", "--run-dir", str(run_dir)]
    r = subprocess.run(command + overrides, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def student_weights(run: Path) -> dict[str, torch.Tensor]:
    """The student of a run's last checkpoint, sharded or not, as full tensors."""
    from data2vec2.train.sharded_checkpoint import load_sharded_weights, sharded_shapes

    last = run / "checkpoints" / "last"
    if not last.exists():
        return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["student"]
    weights = {name: torch.empty(shape) for name, shape in sharded_shapes(last, "student.").items()}
    load_sharded_weights(weights, last, "student.")
    return weights


def assert_same_students(a: Path, b: Path) -> None:
    wa, wb = student_weights(a), student_weights(b)
    assert sorted(wa) == sorted(wb) and len(wa) > 20
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_fsdp_on_two_processes_matches_one_and_resumes_on_another_count(tmp_path, small_overrides):
    """FSDP over 2 processes gives the losses and weights of 1 unsharded process with 2 accumulation
    steps (as DDP does); its sharded checkpoint of update 2 resumes on 1 process, and one written by
    1 process resumes on 2, each ending where the uninterrupted runs end."""
    o = small_overrides + ["train.max_steps=4", "train.batch_size=8", "train.checkpoint_every=2",
                           "train.keep_checkpoints=2"]
    torchrun(tmp_path / "fsdp2", o + ["train.fsdp=true"], port=29527)
    pretrain(load_config("image-tiny", o + ["train.grad_accum=2"]), tmp_path / "single", progress=False)
    np.testing.assert_allclose(losses(tmp_path / "fsdp2"), losses(tmp_path / "single"), rtol=2e-5)
    assert_same_students(tmp_path / "fsdp2", tmp_path / "single")
    checkpoints = tmp_path / "fsdp2" / "checkpoints"
    assert os.readlink(checkpoints / "last") == "step_000000004"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last", "step_000000002", "step_000000004"]
    assert {p.name for p in (checkpoints / "last").iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp",
                                                                  "state.pt"}

    # 2 -> 1: the 2-process run as it was after update 2, resumed by one process
    resumed = tmp_path / "resumed_on_1"
    shutil.copytree(tmp_path / "fsdp2", resumed, symlinks=True)
    shutil.rmtree(resumed / "checkpoints" / "step_000000004")
    (resumed / "checkpoints" / "last").unlink()
    pretrain(load_config("image-tiny", o + ["train.fsdp=true", "train.grad_accum=2"]), resumed, progress=False)
    np.testing.assert_allclose(losses(resumed), losses(tmp_path / "fsdp2"), rtol=2e-5)
    assert_same_students(resumed, tmp_path / "fsdp2")

    # 1 -> 2: one process stops after update 2, two processes finish the run
    moved = tmp_path / "resumed_on_2"
    pretrain(load_config("image-tiny", o + ["train.fsdp=true", "train.grad_accum=2"]), moved, progress=False,
             max_steps=2)
    torchrun(moved, o + ["train.fsdp=true"], port=29528)
    np.testing.assert_allclose(losses(moved), losses(tmp_path / "single"), rtol=2e-5)
    assert_same_students(moved, tmp_path / "single")


def test_sharded_training_in_one_process_matches_unsharded(tmp_path, small_overrides):
    """train.fsdp in a single process (a process group of one): the same losses and weights as
    without it, with activation checkpointing; its run folder exports and resumes."""
    from data2vec2.api import load_encoder

    o = small_overrides + ["train.max_steps=3", "train.batch_size=8", "train.grad_accum=2",
                           "train.activation_checkpointing=true"]
    pretrain(load_config("image-tiny", o), tmp_path / "plain", progress=False)
    sharded = load_config("image-tiny", o + ["train.fsdp=true"])
    pretrain(sharded, tmp_path / "sharded", progress=False, max_steps=2)
    pretrain(sharded, tmp_path / "sharded", progress=False)
    np.testing.assert_allclose(losses(tmp_path / "sharded"), losses(tmp_path / "plain"), rtol=1e-5)
    assert_same_students(tmp_path / "sharded", tmp_path / "plain")
    a, b = load_encoder(tmp_path / "sharded"), load_encoder(tmp_path / "plain")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)
    with pytest.raises(Exception, match="train.fsdp differs"):
        pretrain(load_config("image-tiny", o + ["train.max_steps=4"]), tmp_path / "sharded", progress=False)


def test_a_crafted_sharded_checkpoint_index_runs_no_code(tmp_path, small_overrides, caplog):
    """The index of a sharded checkpoint is unpickled with an allow-list: a file that names any
    other callable is refused before anything is called."""
    import pickle

    o = small_overrides + ["train.max_steps=1", "train.batch_size=8", "train.fsdp=true"]
    pretrain(load_config("image-tiny", o), tmp_path / "run", progress=False)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    index = tmp_path / "run" / "checkpoints" / "last" / ".metadata"
    index.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(TrainingError, match="names posix.system|names os.system"):
        pretrain(load_config("image-tiny", o + ["train.max_steps=2"]), tmp_path / "run", progress=False)
    assert not marker.exists()
    assert "metadata" not in caplog.text  # refused before DCP's loader, which would log its fallback's tracebacks
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}  # the command prints one line only
    r = subprocess.run([sys.executable, "-m", "data2vec2", "pretrain", "image-tiny", "--run-dir", str(tmp_path / "run"),
                        *o, "train.max_steps=2"], capture_output=True, text=True, env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "the checkpoint index names posix.system" in lines[0], r.stderr
    assert not marker.exists()


def test_a_truncated_shard_file_falls_back_to_the_newest_complete_sharded_checkpoint(tmp_path, small_overrides,
                                                                                       capsys):
    """As a truncated last.pt does: the shard files are checked against their index before anything
    loads, and resuming falls back to the newest complete step folder, naming both."""
    o = small_overrides + ["train.max_steps=3", "train.batch_size=8", "train.fsdp=true", "train.checkpoint_every=1",
                           "train.keep_checkpoints=3"]
    pretrain(load_config("image-tiny", o), tmp_path / "run", progress=False, max_steps=2)
    folder = tmp_path / "run" / "checkpoints"
    shard = next((folder / "step_000000002").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:1000])
    assert pretrain(load_config("image-tiny", o), tmp_path / "run", progress=False)["steps"] == 3
    out = capsys.readouterr().out
    assert f"{shard.name} is truncated (1,000 of" in out and "step_000000001 (update 1)" in out, out
