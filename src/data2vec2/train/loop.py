"""The pre-training loop. It knows nothing of modalities: it gets a model, a dataset and a
collate function from `build_pretraining` and runs updates.

    one update = A micro-batches on each of W processes (gradient accumulation x DDP)
    loss       = sum over all of them of the summed masked-token losses / global masked count
    then       : clip -> AdamW step -> LR schedule step -> EMA teacher step with tau(update)
"""

from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from .. import __version__
from ..config import Config, config_from_dict, config_to_dict, save_config
from ..errors import ConfigError, DataError, TrainingError
from ..model import Data2Vec2, build_model
from . import distributed as dist_utils
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .flops import measure_matmul_flops
from .logger import MetricsLogger
from .optim import build_optimizer, build_scheduler


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """bf16 autocast where the device supports it: CUDA with bf16, or a CPU whose matmuls are
    faster in bf16 (AMX / AVX512-BF16); fp32 otherwise."""
    if precision == "fp32":
        return torch.float32
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    else:
        ok = torch.backends.mkldnn.is_available() and _cpu_has_fast_bf16()
    if precision == "bf16" and not ok:
        print("[data2vec2] warning: bf16 is not supported well on this device; running bf16 anyway", file=sys.stderr)
        return torch.bfloat16
    return torch.bfloat16 if ok else torch.float32


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@dataclass
class PretrainSetup:
    """What a modality hands to the loop."""

    model: Data2Vec2
    dataset: torch.utils.data.Dataset
    collate: object  # has set_epoch(epoch) and __call__(samples) -> batch dict
    input_key: str  # the batch entry the model takes ("image", ...)
    step_flops: float  # model FLOPs of one update at the configured global batch
    lengths: list[int] | None = None  # per-sample sizes: batches are then bucketed by length (speech)


def build_pretraining(config: Config) -> PretrainSetup:
    if config.model.modality == "image":
        from ..modalities.image_data import build_image_pretraining

        return build_image_pretraining(config)
    if config.model.modality == "audio":
        from ..modalities.audio_data import build_audio_pretraining

        return build_audio_pretraining(config)
    if config.model.modality == "text":
        from ..modalities.text_data import build_text_pretraining

        return build_text_pretraining(config)
    raise ConfigError(f"model.modality: unknown modality {config.model.modality!r}")  # pragma: no cover


def _batch_iterator(loader, sampler, collate, dataset, steps_per_epoch: int, start_step: int):
    """Yields (epoch, batch) forever, continuing the epoch/position of `start_step`."""
    epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
    while True:
        sampler.set_position(epoch, step_in_epoch)
        collate.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for batch in loader:
            yield epoch, batch
        epoch, step_in_epoch = epoch + 1, 0


def pretrain(config: Config, run_dir: str | Path, *, resume: bool = True, progress: bool = True,
             max_steps: int | None = None) -> dict:
    """Pre-train into `run_dir`; resumes automatically from run_dir/checkpoints/last.pt.

    `max_steps` stops this invocation early (for tests); the schedule still follows the config.
    Returns a summary dict (steps, seconds, samples/s, last loss, ...)."""
    run_dir = Path(run_dir)
    tc = config.train
    device = pick_device(tc.device)
    info = dist_utils.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    dtype = pick_dtype(tc.precision, device)
    world, rank = info.world_size, info.rank
    if tc.batch_size % (world * tc.grad_accum):
        raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by processes x grad_accum = {world * tc.grad_accum}")
    micro_batch = tc.batch_size // (world * tc.grad_accum)

    checkpoint = find_checkpoint(run_dir) if resume else None
    state = load_checkpoint(checkpoint) if checkpoint else None
    if state is not None:
        saved = config_from_dict(state["config"])
        for key in ("model", "masking", "train.batch_size"):
            a, b = config_to_dict(saved), config_to_dict(config)
            for part in key.split("."):
                a, b = a[part], b[part]
            if a != b:
                raise ConfigError(f"{key} differs from the checkpoint in {run_dir}; use a new run folder or --no-resume")

    torch.manual_seed(tc.seed)  # the same initial weights on every process
    setup = build_pretraining(config)
    model = setup.model.to(device)
    optimizer = build_optimizer(model.student, config.optim, device)
    scheduler = build_scheduler(optimizer, config.optim, tc.max_steps)
    step = 0
    if state is not None:
        model.student.load_state_dict(state["student"])
        model.teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        rng = state["rng"]
        torch.set_rng_state(rng[rank % len(rng)])
    else:
        torch.manual_seed(tc.seed + rank)

    student = model.student
    if tc.compile:
        student = torch.compile(student)
    if world > 1:
        student = DDP(student, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()

    from .. import data  # noqa: F401  (keeps the import graph simple for workers)
    from ..data.collate import ResumableSampler

    sampler = ResumableSampler(len(setup.dataset), micro_batch, world, rank, tc.grad_accum, tc.seed,
                               lengths=setup.lengths)
    steps_per_epoch = sampler.steps_per_epoch
    loader = torch.utils.data.DataLoader(
        setup.dataset, batch_size=micro_batch, sampler=sampler, collate_fn=setup.collate,
        num_workers=config.data.num_workers, pin_memory=device.type == "cuda", drop_last=False,
        persistent_workers=False, prefetch_factor=4 if config.data.num_workers > 0 else None)
    batches = _batch_iterator(loader, sampler, setup.collate, setup.dataset, steps_per_epoch, step)

    total_steps = tc.max_steps if max_steps is None else min(tc.max_steps, max_steps)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    logger = MetricsLogger(run_dir, enabled=info.is_main)
    peak = measure_matmul_flops(device, dtype) if info.is_main else 0.0
    if info.is_main:
        params = sum(p.numel() for p in model.encoder.parameters())
        print(f"[data2vec2] {config.name}: encoder {params / 1e6:.2f}M params, {len(setup.dataset)} samples, "
              f"{steps_per_epoch} updates/epoch, device {device}, {str(dtype).replace('torch.', '')}, "
              f"{world} process(es), matmul peak {peak / 1e9:.0f} GFLOP/s"
              + (f", resuming at update {step}" if step else ""), flush=True)

    bar = tqdm(total=total_steps, initial=step, disable=not (progress and info.is_main), desc="pretrain",
               dynamic_ncols=True, file=sys.stdout)
    skipped_files = 0
    start_time = time.perf_counter()
    window_time, window_samples, window_steps = start_time, 0, 0
    last: dict = {}
    stop_reason = "max_steps"
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    while step < total_steps:
        micro = [next(batches)[1] for _ in range(tc.grad_accum)]
        for b in micro:
            if b["errors"]:
                if config.data.on_bad_file == "stop":
                    raise DataError(b["errors"][0] + " (data.on_bad_file=stop; set it to skip to go on)")
                skipped_files += len(b["errors"])
        local_masked = torch.tensor(float(sum(int(b["mask"].sum()) for b in micro)))
        global_masked = float(dist_utils.all_reduce_sum(local_masked))
        loss_total = torch.zeros((), device=device)
        sums: dict[str, float] = {}
        for i, b in enumerate(micro):
            inputs = b[setup.input_key].to(device, non_blocking=True)
            mask = b["mask"].to(device, non_blocking=True)
            sync = contextlib.nullcontext() if (world == 1 or i == len(micro) - 1) else student.no_sync()
            with sync:
                with autocast:
                    out = model(inputs, mask, b["noise_seed"], student=student)
                # DDP averages gradients over W processes; * W / global count makes the update
                # the gradient of (sum of all masked-token losses) / (global masked count).
                loss = out["loss_sum"] * (world / global_masked)
                loss.backward()
            loss_total += out["loss_sum"].detach()
            for k, v in out.items():
                if k not in ("loss_sum", "num_masked"):
                    sums[k] = sums.get(k, 0.0) + float(v) / len(micro)

        loss_value = float(dist_utils.all_reduce_sum(loss_total.cpu())) / global_masked
        if not math.isfinite(loss_value):
            raise TrainingError(f"the loss is {loss_value} at update {step + 1}; nothing was saved for this "
                                f"update (the last checkpoint is intact). Lower optim.lr or use train.precision=fp32.")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.student.parameters(),
                                                   config.optim.clip_norm if config.optim.clip_norm > 0 else float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tau = model.update_teacher(step)

        window_samples += tc.batch_size
        window_steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        elapsed = time.perf_counter() - start_time
        out_of_time = tc.time_budget_s > 0 and elapsed >= tc.time_budget_s
        if step % tc.log_every == 0 or step == total_steps or out_of_time:
            now = time.perf_counter()
            rate = window_samples / max(now - window_time, 1e-9)
            last = {"loss": loss_value, "lr": scheduler.get_last_lr()[0], "ema_decay": tau,
                    "grad_norm": float(grad_norm), "samples_per_s": rate,
                    "mfu": setup.step_flops * (window_steps / max(now - window_time, 1e-9)) / peak if peak else 0.0,
                    "skipped_files": skipped_files, "epoch": step // steps_per_epoch, "elapsed_s": elapsed, **sums}
            logger.log(step, last)
            window_time, window_samples, window_steps = now, 0, 0
            _check_collapse(config, step, sums)
        if step % tc.checkpoint_every == 0 or step == total_steps or out_of_time:
            _save(model, optimizer, scheduler, config, step, run_dir, tc.keep_checkpoints, info)
        if out_of_time:
            stop_reason = "time_budget"
            break

    bar.close()
    logger.close()
    seconds = time.perf_counter() - start_time
    dist_utils.barrier()
    return {"steps": step, "seconds": seconds, "stop_reason": stop_reason, "last": last,
            "skipped_files": skipped_files, "run_dir": str(run_dir)}


def _check_collapse(config: Config, step: int, metrics: dict) -> None:
    g = config.guards
    if step < g.after_steps:
        return
    if g.min_target_std > 0 and metrics.get("target_std", 1.0) < g.min_target_std:
        raise TrainingError(f"target std {metrics['target_std']:.4f} < guards.min_target_std={g.min_target_std} "
                            f"at update {step}: the teacher has collapsed")
    if g.min_pred_std > 0 and metrics.get("pred_std", 1.0) < g.min_pred_std:
        raise TrainingError(f"prediction std {metrics['pred_std']:.4f} < guards.min_pred_std={g.min_pred_std} "
                            f"at update {step}: the student has collapsed")
    if g.min_local_std > 0 and metrics.get("local_std", 1.0) < g.min_local_std:
        raise TrainingError(f"local-encoder std {metrics['local_std']:.4f} < guards.min_local_std={g.min_local_std} "
                            f"at update {step}: the local encoder has collapsed")


def _save(model: Data2Vec2, optimizer, scheduler, config: Config, step: int, run_dir: Path, keep: int, info) -> None:
    rng_states = dist_utils.all_gather_objects(torch.get_rng_state())
    if info.is_main:
        state = {
            "student": model.student.state_dict(),
            "teacher": model.teacher.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "rng": rng_states,
            "config": config_to_dict(config),
            "versions": {"data2vec2": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
        }
        save_checkpoint(state, run_dir / "checkpoints", step, keep)
    dist_utils.barrier()
