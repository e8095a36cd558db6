"""Everything a training run needs before its first update: device, precision, processes, the
model with its compiled blocks, the DDP-wrapped (or FSDP-sharded) student, the optimizer and its
schedule. Nothing here knows the modality: its record builds the parts."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config, config_to_dict
from ..errors import ConfigError, TrainingError
from ..model import Data2Vec2
from ..nn.blocks import Block
from ..objectives import build_model as build_objective
from . import distributed
from .checkpoint import load_checkpoint, non_finite, non_finite_anywhere, with_current_names
from .optim import Progress, apply_optim_config, build_optimizer, build_scheduler
from .sharding import gradients_kept_local, shard_model

if TYPE_CHECKING:
    from ..modality import Modality


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: CPUs whose bf16 matmuls are faster than fp32 (elsewhere bf16 is emulated)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def free_cpus(interval_s: float = 0.25) -> int:
    """How many of the CPUs this process may run on other processes leave mostly idle now
    (sampled from /proc/stat over `interval_s`); at least 1. Where /proc/stat is missing: all."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))

    def sample() -> dict[int, tuple[int, int]]:  # cpu -> (idle ticks, all ticks)
        ticks = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                v = [int(x) for x in values]
                ticks[int(name[3:])] = (v[3] + v[4], sum(v[:8]))  # idle + iowait; user .. steal
        return ticks

    try:
        before = sample()
        time.sleep(interval_s)
        after = sample()
    except OSError:
        return len(allowed)
    free = 0
    for cpu in allowed:
        idle, total = (after[cpu][k] - before[cpu][k] for k in (0, 1)) if cpu in after and cpu in before else (1, 1)
        free += idle >= 0.5 * max(total, 1)
    return max(free, 1)


def pick_threads(requested: int, resumed: int | None = None) -> int:
    """CPU compute threads of this process: `requested` (train.threads) if > 0; else
    OMP_NUM_THREADS if set; else those of the run being resumed (the thread count can change the
    last bits of a sum, and a resumed run must equal an uninterrupted one); else the CPUs other
    processes leave free, shared among the processes of this machine. Two threads sharing a core
    with another busy process wait for each other at every parallel region; one thread on the
    free core is then much faster (docs/image.md)."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    if resumed:
        return resumed
    return max(1, free_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def pick_workers(requested: int) -> int:
    """DataLoader worker processes of this process: `requested` (data.num_workers) if >= 0; for -1
    the CPUs this process may run on, shared among the training processes of this machine, less one
    for the process itself, at most 8 (image decoding keeps up with one GPU at about that)."""
    if requested >= 0:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(8, cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1))


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed tensors' memory for the next ones instead of handing it
    back to the system. By default a buffer above its (adaptive) mmap threshold is a fresh mapping
    that page-faults on first touch; a CPU update allocates and frees the same activations every
    time, and those page faults cost about 10 % of an image-tiny fp32 update on 2 AVX2 cores
    (docs/image.md, "Where an fp32 update goes"). The threshold's largest allowed value is 32 MiB
    on 64-bit glibc. The price: the process's resident memory stays at its peak. False where libc
    is not glibc."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """bf16 autocast where the device supports it: CUDA with bf16, or a CPU whose matmuls are
    faster in bf16 (AMX / AVX512-BF16); fp32 otherwise."""
    if precision == "fp32":
        return torch.float32
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    else:
        ok = torch.backends.mkldnn.is_available() and cpu_has_fast_bf16()
    if precision == "bf16" and not ok:
        print("[data2vec2] warning: bf16 is not supported well on this device; running bf16 anyway", file=sys.stderr)
        return torch.bfloat16
    return torch.bfloat16 if ok else torch.float32


@dataclass
class Training:
    config: Config
    # the objective (objectives/build_model: Data2Vec2 by default): forward(batch) -> LossOutput,
    # `trained` (what the optimizer updates), parts() (what a checkpoint holds), after_update(update)
    model: "Data2Vec2 | torch.nn.Module"
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    dtype: torch.dtype
    dist: distributed.DistInfo
    ddp: torch.nn.Module | None = None  # the model in DDP when several processes train it without FSDP
    progress: Progress = field(default_factory=Progress)  # where the schedules stand (train/optim.py)

    @property
    def runner(self) -> torch.nn.Module:
        """What a step calls with a batch: the model, or its DDP wrapper (FSDP shards in place)."""
        return self.ddp if self.ddp is not None else self.model

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def no_sync(self):
        """For the micro-batches of an update before its last: gradients stay on this process."""
        if self.config.train.fsdp:
            return gradients_kept_local(self.model.trained)
        if self.ddp is not None:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    @property
    def micro_batch(self) -> int:
        train = self.config.train
        return train.batch_size // (self.dist.world_size * train.grad_accum)


def setup_training(config: Config, modality: "Modality", state: dict | None = None,
                   build_model: Callable[[bool], torch.nn.Module] | None = None) -> Training:
    """The model (`build_model(resuming)`, by default the config's pre-training objective, initialised from
    `train.seed`, the same on every process), AdamW and its schedule, restored from a checkpoint
    `state` when given; then the RNG of this process is set (restored, or seeded with seed + rank)
    and the model wrapped."""
    train = config.train
    device = pick_device(train.device)
    info = distributed.init_distributed(device.type, group_of_one=train.fsdp)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    dtype = pick_dtype(train.precision, device)
    if device.type == "cuda" and dtype == torch.bfloat16:
        # what bf16 autocast leaves in fp32 runs on TF32 tensor cores (10-bit mantissa inputs, fp32
        # sums); train.precision=fp32 stays fp32 throughout
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if train.batch_size % (info.world_size * train.grad_accum):
        raise ConfigError(f"train.batch_size={train.batch_size} must be divisible by processes x grad_accum = "
                          f"{info.world_size * train.grad_accum}")
    if train.fsdp and info.world_size > 1 and config.model.layerdrop > 0:
        raise ConfigError(f"train.fsdp with {info.world_size} processes needs model.layerdrop=0: each process would "
                          f"skip other blocks and wait for the others at the ones it skipped")
    if device.type == "cpu":
        torch.set_num_threads(pick_threads(train.threads, state.get("threads") if state else None))
        keep_freed_memory()
    torch.manual_seed(train.seed)  # the same initial weights on every process
    model = (build_model(state is not None) if build_model is not None else build_objective(config, modality)).to(device)
    sharded_state = state is not None and "sharded" in state
    if state is not None and not sharded_state:
        for name, part in model.parts().items():
            part.load_state_dict(with_current_names(state[name], part))
    elif state is None and train.init_from:
        load_initial_weights(model, Path(train.init_from), info.is_main)
    if train.activation_checkpointing:
        for block in (m for m in model.trained.modules() if isinstance(m, Block)):
            block.recompute_in_backward = True
    if train.compile:
        # each transformer block, the student's and the teacher's (almost all of the FLOPs), compiled
        # in place: parameter names stay, and FSDP's per-block hooks stay on the blocks
        for block in (m for part in model.parts().values() for m in part.modules() if isinstance(m, Block)):
            block.compile()
    if train.fsdp:
        shard_model(model, dtype)
    # of the sharded weights under FSDP; an objective may scale each parameter's learning rate (layer decay)
    lr_scales = model.lr_scales() if hasattr(model, "lr_scales") else None
    optimizer = build_optimizer(model.trained, config.optim, device, lr_scales)
    start_step = 0
    if state is not None:
        if sharded_state:
            from .sharded_checkpoint import load_sharded  # (a second to import: only for sharded runs)

            load_sharded(model, optimizer, Path(state["sharded"]))
            for name, part in model.parts().items():  # each process checks its shards
                bad = non_finite_anywhere(part.state_dict())
                if bad:
                    raise TrainingError(f"{state['sharded']}: {name} tensor {bad[0]} is not finite")
        else:
            optimizer.load_state_dict(state["optimizer"])
        # The optimizer keeps its moments; its settings and the schedule come from the config, so a
        # resume with a changed optim.* (say a lower lr after a NaN) applies it from the saved step.
        apply_optim_config(optimizer, model.trained, config.optim, lr_scales)
        start_step = int(state["step"])
        if info.is_main:
            _report_optim_changes(state.get("config", {}).get("optim", {}), config, start_step)
        rng = state["rng"]
        torch.set_rng_state(rng[info.rank % len(rng)])
    else:
        torch.manual_seed(train.seed + info.rank)
    progress = Progress(train.max_steps, train.time_budget_s, float(state.get("elapsed_s", 0.0)) if state else 0.0)
    scheduler = build_scheduler(optimizer, config.optim, train.max_steps, start_step=start_step, progress=progress)
    ddp = None
    if info.world_size > 1 and not train.fsdp:
        # the whole model: DDP reduces the gradients of what requires them (a teacher has none); a
        # block skipped by layerdrop (on some processes only), or an encoder frozen for the first
        # fine-tuning updates, leaves its weights without gradients
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=config.model.layerdrop > 0 or config.finetune.freeze_steps > 0)
    model.train()
    return Training(config=config, model=model, optimizer=optimizer, scheduler=scheduler, device=device,
                    dtype=dtype, dist=info, ddp=ddp, progress=progress)


def load_initial_weights(model: Data2Vec2, path: Path, report: bool) -> None:
    """Student (encoder + decoder) and teacher from `train.init_from`, every tensor name and shape
    checked against the config's model."""
    try:
        state = load_checkpoint(path)
    except TrainingError as e:
        raise ConfigError(f"train.init_from: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(state.get(k), dict) for k in ("student", "teacher")):
        raise ConfigError(f"train.init_from: {path} holds no student and teacher weights")
    for part, module in (("student", model.student), ("teacher", model.teacher)):
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        given = {k: tuple(v.shape) for k, v in state[part].items()}
        if expected != given:
            diff = sorted(set(expected.items()) ^ set(given.items()))[:4]
            raise ConfigError(f"train.init_from: the {part} in {path} does not fit this config's model "
                              f"(first differences: {diff})")
        bad = non_finite(state[part])
        if bad:
            raise ConfigError(f"train.init_from: {part} tensor {bad[0]} in {path} is not finite")
        module.load_state_dict(state[part])
    if report:
        print(f"[data2vec2] starting from the student and teacher in {path}; the optimizer and the learning-rate "
              f"schedule start afresh (warmup included), the EMA from that teacher", flush=True)


def _report_optim_changes(saved: dict, config: Config, step: int) -> None:
    current = config_to_dict(config.optim)
    changed = [f"optim.{k} {saved.get(k)} -> {v}" for k, v in current.items() if saved.get(k) != v]
    if changed:
        print(f"[data2vec2] resuming at update {step} with changed settings, applied from here: "
              + ", ".join(changed), flush=True)
