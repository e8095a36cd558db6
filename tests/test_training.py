"""End-to-end training behaviour on real Fashion-MNIST images (tiny slices)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data2vec2 import load_config, pretrain
from data2vec2.errors import DataError
from data2vec2.train.logger import read_metrics


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl")]


def test_loss_falls_on_real_images(tmp_path, small_overrides):
    config = load_config("image-tiny", small_overrides + ["train.max_steps=40", "optim.lr=2e-3",
                                                          "ema.decay=0.99", "ema.end_decay=0.999"])
    pretrain(config, tmp_path / "run", progress=False)
    curve = losses(tmp_path / "run")
    assert len(curve) == 40 and all(np.isfinite(curve))
    assert np.mean(curve[-5:]) < 0.7 * np.mean(curve[:5])
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert {"target_std", "pred_std", "local_std", "ema_decay", "masked_fraction", "samples_per_s", "mfu"} <= rows[-1].keys()
    assert (tmp_path / "run" / "config.yaml").exists()


def test_checkpoints_are_complete_and_pruned(tmp_path, small_overrides):
    config = load_config("image-tiny", small_overrides + ["train.max_steps=4", "train.checkpoint_every=1",
                                                          "train.keep_checkpoints=2"])
    pretrain(config, tmp_path / "run", progress=False)
    folder = tmp_path / "run" / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["last.pt", "step_000000003.pt", "step_000000004.pt"]  # no temporary files left
    state = torch.load(folder / "last.pt", weights_only=True)
    assert {"student", "teacher", "optimizer", "scheduler", "step", "rng", "config", "versions"} <= state.keys()
    assert state["step"] == 4



def test_each_invocation_of_a_run_records_where_it_ran(tmp_path, small_overrides):
    """invocations.jsonl: one line per start or resume, with the standard header (date, command,
    commit, machine, precision, versions) and the update it started from."""
    from data2vec2.provenance import missing_header

    for steps in (2, 3):
        pretrain(load_config("image-tiny", small_overrides + [f"train.max_steps={steps}"]), tmp_path / "run",
                 progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "invocations.jsonl").read_text().splitlines()]
    assert [line["start_step"] for line in lines] == [0, 2]
    assert all(not missing_header(line) and line["precision"] == "float32" and line["processes"] == 1
               for line in lines)


def test_load_encoder_errors(tmp_path):
    import data2vec2

    with pytest.raises(DataError, match="not an exported encoder"):
        data2vec2.load_encoder(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    (tmp_path / "model.safetensors").write_bytes(b"nope")
    with pytest.raises(DataError, match="not valid JSON"):
        data2vec2.load_encoder(tmp_path)


def _image_folder(root: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(d / f"img{i}.png")
    (root / "class0" / "broken.png").write_bytes(b"\x89PNG this is not an image")
    return root


def test_corrupt_image_stops_with_its_path(tmp_path, small_overrides):
    folder = _image_folder(tmp_path / "imgs")
    o = small_overrides + [f"data.train={folder}", "data.limit=0", "data.on_bad_file=stop", "train.max_steps=3"]
    with pytest.raises(DataError, match="broken.png"):
        pretrain(load_config("image-tiny", o), tmp_path / "run", progress=False)


def test_corrupt_image_is_skipped_and_counted(tmp_path, small_overrides):
    folder = _image_folder(tmp_path / "imgs")
    o = small_overrides + [f"data.train={folder}", "data.limit=0", "data.on_bad_file=skip", "train.max_steps=2",
                           "train.batch_size=41", "data.num_workers=2"]
    result = pretrain(load_config("image-tiny", o), tmp_path / "run", progress=False)
    assert result["skipped_files"] == 1  # 2 updates = 2 epochs of 41 images, each meets the broken one: 1 file


def test_cli_reports_errors_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    r = subprocess.run([sys.executable, "-m", "data2vec2", "pretrain", "image-tiny", "--run-dir", str(tmp_path / "r"),
                        "masking.mask_prbo=0.5"], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert "unknown config key 'masking.mask_prbo'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "data2vec2", "pretrain", "image-tiny", "--run-dir", str(tmp_path / "r"),
                        f"data.train={tmp_path / 'missing'}"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_torchrun_two_processes_match_one(tmp_path, small_overrides):
    """DDP over 2 CPU processes (gloo) gives the same losses and weights as 1 process with 2
    accumulation steps at the same global batch. (Not as 1 process with the whole batch in one
    micro-batch: as in the reference, the CLS term is weighted by the masked-token count of each
    process's micro-batch; see `Data2VecMultiModel.forward` and fairseq/trainer.py.)"""
    o = small_overrides + ["train.max_steps=4", "train.batch_size=8"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
            "-m", "data2vec2", "pretrain", "image-tiny", "--no-progress", "--run-dir", str(tmp_path / "ddp")]
    r = subprocess.run(base + o, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    pretrain(load_config("image-tiny", o + ["train.grad_accum=2"]), tmp_path / "single", progress=False)
    np.testing.assert_allclose(losses(tmp_path / "ddp"), losses(tmp_path / "single"), rtol=2e-5)
    a = torch.load(tmp_path / "ddp/checkpoints/last.pt", weights_only=True)["student"]
    b = torch.load(tmp_path / "single/checkpoints/last.pt", weights_only=True)["student"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_torchrun_with_layerdrop(tmp_path, small_overrides):
    """model.layerdrop (audio-base's 0.05) on 2 DDP processes: each skips its own blocks, whose weights
    then get no gradient there; DDP is told so and the run trains."""
    o = small_overrides + ["train.max_steps=3", "train.batch_size=8", "model.layerdrop=0.5", "model.depth=4"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518",
                        "-m", "data2vec2", "pretrain", "image-tiny", "--no-progress", "--run-dir", str(tmp_path / "run")]
                       + o, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(losses(tmp_path / "run")) == 3


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, small_overrides, monkeypatch):
    from data2vec2.errors import TrainingError
    from data2vec2.model import Data2Vec2

    config = load_config("image-tiny", small_overrides + ["train.max_steps=6", "train.checkpoint_every=2"])
    pretrain(config, tmp_path / "run", progress=False, max_steps=2)
    before = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    elementwise_loss = Data2Vec2.elementwise_loss
    monkeypatch.setattr(Data2Vec2, "elementwise_loss", lambda self, p, t: elementwise_loss(self, p, t) * float("nan"))
    with pytest.raises(TrainingError, match="the loss is nan at update 3"):
        pretrain(config, tmp_path / "run", progress=False)
    after = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert after["step"] == 2
    for k in before["student"]:
        torch.testing.assert_close(before["student"][k], after["student"][k])


def test_compiled_blocks_train_like_eager_ones_with_and_without_fsdp(tmp_path, small_overrides):
    """train.compile: every transformer block (student and teacher) through torch.compile, in place;
    the same losses, also under train.fsdp (about 50 s of compilation on 2 cores)."""
    from data2vec2.modalities import MODALITIES
    from data2vec2.nn.blocks import Block
    from data2vec2.train.setup import setup_training

    o = small_overrides + ["train.max_steps=3", "train.batch_size=8", "train.grad_accum=2"]
    pretrain(load_config("image-tiny", o), tmp_path / "eager", progress=False)
    pretrain(load_config("image-tiny", o + ["train.compile=true"]), tmp_path / "compiled", progress=False)
    pretrain(load_config("image-tiny", o + ["train.compile=true", "train.fsdp=true"]), tmp_path / "sharded",
             progress=False)
    np.testing.assert_allclose(losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rtol=1e-4)
    np.testing.assert_allclose(losses(tmp_path / "sharded"), losses(tmp_path / "eager"), rtol=1e-4)
    training = setup_training(load_config("image-tiny", o + ["train.compile=true"]), MODALITIES["image"])
    blocks = [m for m in training.model.modules() if isinstance(m, Block)]
    assert len(blocks) == 2 * (training.config.model.depth + training.config.model.prenet_depth)
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert not any("_orig_mod" in name for name in training.model.state_dict())


def test_cuda_out_of_memory_is_one_line_with_advice(monkeypatch, capsys):
    import data2vec2.api
    from data2vec2.cli import main

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore advice")

    monkeypatch.setattr(data2vec2.api, "pretrain", out_of_memory)
    monkeypatch.setattr(data2vec2, "pretrain", out_of_memory)
    assert main(["pretrain", "image-tiny", "--run-dir", "unused"]) == 3
    err = capsys.readouterr().err
    assert "ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in err
    assert "train.grad_accum" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_gpu_process_groups_carry_host_scalars_too(monkeypatch):
    """On CUDA the group has NCCL for GPU tensors and gloo for the step's host scalars (masked
    counts, the loss), which NCCL alone would refuse at the first update."""
    from data2vec2.train import distributed

    backends = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: backends.append(backend))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", lambda index: None)
    distributed.init_distributed("cuda")
    distributed.init_distributed("cpu")
    assert backends == ["cuda:nccl,cpu:gloo", "gloo"]


def test_data_workers_from_the_cpus(monkeypatch):
    """data.num_workers=-1: the CPUs of this process, shared by the processes of the machine, less one
    for each process itself, at most 8; a count given is kept."""
    from data2vec2.train.setup import pick_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert pick_workers(3) == 3 and pick_workers(0) == 0
    assert pick_workers(-1) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert pick_workers(-1) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert pick_workers(-1) == 0


def test_activation_checkpointing_trains_exactly_like_keeping_the_activations(tmp_path, small_overrides):
    """train.activation_checkpointing: the student's blocks run again in the backward pass, with the same
    dropout and drop-path draws, so losses and weights are those of a run that kept the activations."""
    from data2vec2.modalities import MODALITIES
    from data2vec2.nn.blocks import Block
    from data2vec2.train.setup import setup_training

    o = small_overrides + ["train.max_steps=3", "train.batch_size=8", "model.dropout=0.1", "model.drop_path=0.2"]
    config = load_config("image-tiny", o + ["train.activation_checkpointing=true"])
    pretrain(load_config("image-tiny", o), tmp_path / "kept", progress=False)
    pretrain(config, tmp_path / "recomputed", progress=False)
    np.testing.assert_allclose(losses(tmp_path / "recomputed"), losses(tmp_path / "kept"), rtol=1e-6)
    training = setup_training(config, MODALITIES["image"])
    flags = [m.recompute_in_backward for m in training.model.student.modules() if isinstance(m, Block)]
    assert len(flags) == training.config.model.depth + training.config.model.prenet_depth and all(flags)
    assert not any(m.recompute_in_backward for m in training.model.teacher.modules() if isinstance(m, Block))
    a = torch.load(tmp_path / "kept/checkpoints/last.pt", weights_only=True)["student"]
    b = torch.load(tmp_path / "recomputed/checkpoints/last.pt", weights_only=True)["student"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7)


def test_activation_checkpointing_keeps_only_the_block_inputs():
    from data2vec2.nn.blocks import Block, run_blocks

    blocks = torch.nn.ModuleList(Block(32, 4) for _ in range(3))
    x = torch.randn(2, 10, 32, requires_grad=True)

    def saved_bytes() -> int:
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, ffn = run_blocks(blocks, x)
        (out.sum() + sum(f.sum() for f in ffn)).backward()
        return sum(sizes)

    kept = saved_bytes()
    for block in blocks:
        block.recompute_in_backward = True
    recomputed = saved_bytes()
    assert recomputed < kept / 5  # 3 inputs (B, N, D) against every intermediate of 3 blocks


def test_the_thread_count_follows_the_setting_the_environment_the_resumed_run_then_the_free_cores(monkeypatch):
    import os

    from data2vec2.train.setup import free_cpus, pick_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert pick_threads(3) == 3 and pick_threads(0, resumed=1) == torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert pick_threads(0, resumed=1) == 1  # a resumed run keeps its count: sums stay bitwise equal
    allowed = len(os.sched_getaffinity(0))
    assert 1 <= free_cpus() <= allowed and 1 <= pick_threads(0) <= allowed
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * allowed))  # torchrun: the free cores are shared
    assert pick_threads(0) == 1


def test_a_run_slowed_down_under_a_time_budget_still_ends_its_schedules(tmp_path, small_overrides, monkeypatch):
    """Planned for 1,000 updates, slowed to about 0.25 s an update, with a 4 s budget: the learning
    rate and the EMA follow the fraction of the budget spent and reach their ends when it runs out.
    A resumed run continues the budget (its elapsed seconds are in the checkpoint); once it is spent,
    the same command again makes no update."""
    import time

    from data2vec2.train import loop

    real_step = loop.train_step

    def slow_step(*args, **kwargs):
        time.sleep(0.25)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", slow_step)
    o = small_overrides + ["train.max_steps=1000", "train.time_budget_s=4", "optim.warmup_steps=10",
                           "optim.lr=1e-3", "optim.min_lr=1e-5", "ema.decay=0.9", "ema.end_decay=0.99",
                           "ema.anneal_steps=1000", "train.checkpoint_every=1000"]
    config = load_config("image-tiny", o)
    first = pretrain(config, tmp_path / "run", progress=False, max_steps=3)  # a first invocation, stopped early
    assert first["steps"] == 3
    result = pretrain(config, tmp_path / "run", progress=False)
    assert result["stop_reason"] == "time_budget" and 5 <= result["steps"] <= 30
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    last = rows[-1]
    assert last["elapsed_s"] >= 4 and result["seconds"] < last["elapsed_s"]  # the budget spans both invocations
    assert last["lr"] - 1e-5 < 0.05 * (1e-3 - 1e-5)  # the cosine ran (nearly) to its end, not to step/1000
    assert last["ema_decay"] > 0.99 - 0.1 * (0.99 - 0.9)
    assert rows[2]["lr"] > 0.2 * 1e-3  # while by update 3 it was still warming up or near its peak
    lrs = [r["lr"] for r in rows]
    assert all(b <= a + 1e-12 for a, b in zip(lrs[10:], lrs[11:]))  # decaying, never back up
    again = pretrain(config, tmp_path / "run", progress=False)
    assert again["steps"] == result["steps"] and again["stop_reason"] == "time_budget"
    assert read_metrics(tmp_path / "run" / "metrics.jsonl") == rows
