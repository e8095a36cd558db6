"""The training loop of every run, pre-training and fine-tuning alike: data in, updates
(train/step.py), logs, checkpoints and validations out. It knows nothing of modalities or tasks: a
`Job` supplies the data, the objective and how the run is judged."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from tqdm import tqdm

from .. import __version__
from ..config import Config, config_from_dict, config_to_dict, save_config
from ..data.collate import ReplaceUnreadable, ResumableSampler
from ..errors import ConfigError, DataError, Interrupted, TrainingError
from ..provenance import results_header
from . import distributed
from .checkpoint import (
    RunLock,
    load_resume_state,
    non_finite_anywhere,
    remove_partial_files,
    save_checkpoint,
    save_sharded_checkpoint,
)
from .flops import count_update_flops, measure_matmul_flops
from .health import LossWatch
from .logger import MetricsLogger
from .setup import Training, pick_workers, setup_training
from .signals import StopRequests
from .step import NonFiniteUpdate, train_step

if TYPE_CHECKING:
    from ..modality import Modality, PretrainingData

# what a resumed run must share with the run that wrote its checkpoint
RESUME_MUST_MATCH = ("model", "masking", "train.batch_size", "train.fsdp", "finetune.task")


@dataclass
class Job:
    """What a run trains and how it is judged; the loop knows nothing else of it."""

    data: Callable[[bool], "PretrainingData"]  # (show progress bars) -> dataset, collate, step_flops, lengths
    # (resuming: a checkpoint will replace its weights) -> the objective (None: the config's pre-training one)
    build_model: Callable[[bool], torch.nn.Module] | None = None
    flops_by_hand: bool = True  # data().step_flops counts an update; False: count it on the first batch
    # every `every` updates and at the end: scores on the validation data; the checkpoint whose
    # `metric` is best (higher or lower) is kept, named in checkpoints/best.json
    validate: Callable[[Training], dict[str, float]] | None = None
    every: int = 0
    metric: str = ""
    higher_is_better: bool = True
    state: dict = field(default_factory=dict)  # saved with every checkpoint; a resumed run must hold the same
    finish: Callable[[Training, dict | None], dict] | None = None  # at the end, with the best: the run's results


def _batches(loader, sampler: ResumableSampler, collate, dataset, start_step: int):
    """Yields batches forever, continuing the epoch/position of update `start_step`."""
    epoch, step_in_epoch = divmod(start_step, sampler.steps_per_epoch)
    while True:
        sampler.set_position(epoch, step_in_epoch)
        collate.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        yield from loader
        epoch, step_in_epoch = epoch + 1, 0


def _leave_stops_to_training(worker_id: int) -> None:
    """A DataLoader worker ignores SIGINT and SIGTERM: the training process finishes its update,
    saves it and then ends the workers. (torchrun, a scheduler or Ctrl-C signal the whole process
    group, workers included; a worker that died of it would end the run before the save.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _check_resumable(config: Config, saved: dict, run_dir: Path, modality: "Modality") -> None:
    saved_config = config_from_dict(saved, {modality.name: modality}, saved=True, source=str(run_dir))
    a_all, b_all = config_to_dict(saved_config), config_to_dict(config)
    for key in RESUME_MUST_MATCH:
        a, b = a_all, b_all
        for part in key.split("."):
            a, b = a[part], b[part]
        if a != b:
            raise ConfigError(f"{key} differs from the checkpoint in {run_dir}; use a new run folder or --no-resume")


def pretrain(config: Config, run_dir: str | Path, modality: "Modality", **options) -> dict:
    """Pre-train into `run_dir` (see `train`)."""
    job = Job(data=lambda progress: modality.pretraining_data(config, progress=progress),
              # data2vec 2.0's FLOPs are counted by hand per modality; a baseline's or an ablation's on a batch
              flops_by_hand=(config.objective == "data2vec2" and config.decoder.kind == "conv"
                             and config.masking.drop_masked))
    return train(config, run_dir, modality, job, **options)


def train(config: Config, run_dir: str | Path, modality: "Modality", job: Job, *, resume: bool = True,
          progress: bool = True, max_steps: int | None = None) -> dict:
    """Train `job` into `run_dir`; resumes automatically from run_dir/checkpoints/last(.pt). One
    process (of torchrun's: rank 0) locks the folder for the run's life.

    `max_steps` stops this invocation early (for tests); the schedule still follows the config.
    Returns a summary dict (steps, seconds, stop reason, the last logged metrics, the best
    validation and the job's results, ...)."""
    run_dir = Path(run_dir)
    main = os.environ.get("RANK", "0") == "0"
    with RunLock(run_dir) if main else contextlib.nullcontext():
        if main:
            remove_partial_files(run_dir / "checkpoints")  # of a save that was killed
        return _train(config, run_dir, modality, job, resume=resume, progress=progress, max_steps=max_steps)


def _record_invocation(run_dir: Path, training: Training, step: int) -> None:
    """One line of run_dir/invocations.jsonl per start or resume: the standard header (date,
    command, commit, machine, precision, versions), the update it starts from, the processes."""
    line = {**results_header(str(training.dtype).replace("torch.", "")), "start_step": step,
            "processes": training.dist.world_size, "device": str(training.device)}
    with open(run_dir / "invocations.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def _train(config: Config, run_dir: Path, modality: "Modality", job: Job, *, resume: bool, progress: bool,
           max_steps: int | None) -> dict:
    train = config.train
    if not config.data.train:
        raise ConfigError("data.train: name the training data (a prepared set, a folder or a manifest)")
    state = load_resume_state(run_dir, check_shards=_check_shards) if resume else None
    if state is not None:
        _check_resumable(config, state["config"], run_dir, modality)
        for key, value in job.state.items():
            if key in state and state[key] != value:
                raise ConfigError(f"the run in {run_dir} was trained with another {key} ({_short(state[key])}, now "
                                  f"{_short(value)}); use a new run folder or --no-resume")

    data = job.data(progress and os.environ.get("RANK", "0") == "0")
    dataset = ReplaceUnreadable(data.dataset, train.seed) if config.data.on_bad_file == "skip" else data.dataset
    training = setup_training(config, modality, state, build_model=job.build_model)
    step = int(state["step"]) if state is not None else 0
    saved_step = step
    info = training.dist
    sampler = ResumableSampler(len(dataset), training.micro_batch, info.world_size, info.rank, train.grad_accum,
                               train.seed, lengths=data.lengths)
    workers = pick_workers(config.data.num_workers)
    # The loader's own generator: starting an epoch (iter(loader) draws the workers' base seed) must
    # not draw from the global generator, whose state a resumed run restores for dropout. Every
    # random draw of a sample comes from its own stream anyway (data/collate.py).
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=training.micro_batch, sampler=sampler, collate_fn=data.collate,
        num_workers=workers, pin_memory=training.device.type == "cuda", drop_last=False,
        persistent_workers=False, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_leave_stops_to_training,
        generator=torch.Generator().manual_seed(train.seed))
    batches = _batches(loader, sampler, data.collate, dataset, step)

    total_steps = train.max_steps if max_steps is None else min(train.max_steps, max_steps)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        _record_invocation(run_dir, training, step)
    logger = MetricsLogger(run_dir, start_step=step, enabled=info.is_main)
    with torch.random.fork_rng(devices=[training.device] if training.device.type == "cuda" else []):
        # the random test matrices must not come from the training stream (resume equality)
        peak = measure_matmul_flops(training.device, training.dtype) if info.is_main else 0.0
    step_flops = data.step_flops
    if not job.flops_by_hand and info.is_main:
        first = data.collate([dataset[i] for i in range(min(training.micro_batch, len(dataset)))])
        step_flops = count_update_flops(training.model, first, training.device) * train.batch_size / training.micro_batch
    if info.is_main:
        params = sum(p.numel() for p in training.model.encoder.parameters())
        print(f"[data2vec2] {config.name}: encoder {params / 1e6:.2f}M params, {len(data.dataset)} samples, "
              f"{sampler.steps_per_epoch} updates/epoch, device {training.device}"
              + (f" ({torch.get_num_threads()} threads)" if training.device.type == "cpu" else "") + ", "
              f"{str(training.dtype).replace('torch.', '')}, {info.world_size} process(es), "
              f"matmul peak {peak / 1e9:.0f} GFLOP/s" + (f", resuming at update {step}" if step else ""), flush=True)
    best = _read_best(run_dir) if state is not None else None  # the best validation so far

    bar = tqdm(total=total_steps, initial=step, disable=not (progress and info.is_main),
               desc="finetune" if job.validate is not None else "pretrain",
               dynamic_ncols=True, file=sys.stdout)
    skipped: set[str] = set()  # the messages of the unreadable files met so far, each printed once
    watch, saved_in_range = LossWatch(), None  # the newest checkpoint written before the loss left its range
    first_step, start_time = step, time.perf_counter()
    elapsed_before = training.progress.elapsed_s  # training seconds of the run's earlier invocations
    elapsed, last_update_s = elapsed_before, 0.0
    window_time, window_samples, window_steps = start_time, 0, 0
    last: dict = {}
    stop_reason = "max_steps"
    out_of_time = train.time_budget_s > 0 and elapsed_before >= train.time_budget_s  # (rerun after its end)
    if out_of_time:
        stop_reason = "time_budget"
        if info.is_main:
            print(f"[data2vec2] the run has used its time budget ({elapsed_before:.0f} s of "
                  f"train.time_budget_s={train.time_budget_s:g}) at update {step}: no update to make", flush=True)
    # a signal ends the loop after the current update (saved); the workers end with the loop
    with StopRequests() as stop, contextlib.closing(batches), bar, logger:
        while step < total_steps and not out_of_time:
            if stop.asked():
                _stop(training, step, saved_step, run_dir, stop.received or signal.SIGTERM)
            micro_batches = [next(batches) for _ in range(train.grad_accum)]
            _report_unreadable(micro_batches, config, len(dataset), skipped, info.is_main)
            log_step = (step + 1) % train.log_every == 0 or step + 1 == total_steps
            training.progress.elapsed_s = elapsed + last_update_s  # where this update will end, about
            try:
                result = train_step(training, micro_batches, step, with_metrics=log_step)
            except NonFiniteUpdate as e:
                raise TrainingError(f"{e}. Nothing was saved for it. "
                                    + _recovery(watch, saved_step, saved_in_range, run_dir)) from None
            step += 1
            watch.see(step, result.loss, float(result.grad_norm))

            window_samples += train.batch_size
            window_steps += 1
            # the run's training seconds; under a time budget the same on every process (the slowest's),
            # so that the budget and the schedules that follow it (train/optim.py Progress) see one clock
            previous, elapsed = elapsed, elapsed_before + time.perf_counter() - start_time
            if train.time_budget_s > 0:
                elapsed = distributed.all_reduce_max(elapsed)
            last_update_s = elapsed - previous
            training.progress.elapsed_s = elapsed
            out_of_time = train.time_budget_s > 0 and elapsed >= train.time_budget_s
            if train.time_budget_s > 0:  # the bar ends where the budget ends, if that comes first
                per_update = (elapsed - elapsed_before) / (step - first_step)
                bar.total = min(total_steps, step + int(max(train.time_budget_s - elapsed, 0) / per_update))
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.4f}")
            if log_step or out_of_time:
                now = time.perf_counter()
                rate = window_samples / max(now - window_time, 1e-9)
                last = {"loss": result.loss, "lr": training.scheduler.get_last_lr()[0],
                        "grad_norm": float(result.grad_norm), "samples_per_s": rate,
                        "mfu": step_flops * (window_steps / max(now - window_time, 1e-9)) / peak if peak else 0.0,
                        "skipped_files": data.skipped_before + len(skipped), "epoch": step // sampler.steps_per_epoch,
                        "elapsed_s": elapsed,
                        **result.metrics}
                logger.log(step, last)
                window_time, window_samples, window_steps = now, 0, 0
                _check_collapse(config, step, result.metrics)
            end = step == train.max_steps or out_of_time
            validate = job.validate is not None and (step % job.every == 0 or end)
            if step % train.checkpoint_every == 0 or step == total_steps or out_of_time or validate:
                keep = tuple(s for s in (best and best["step"], watch.left_at and saved_in_range) if s)
                _save(training, step, run_dir, job.state, keep_also=keep)
                saved_step = step
                saved_in_range = step if watch.left_at is None else saved_in_range  # (frozen while out of range)
            if validate:
                best = _validate(training, job, step, run_dir, best, logger, bar)
            if out_of_time:
                stop_reason = "time_budget"
                break

    seconds = time.perf_counter() - start_time
    distributed.barrier()
    result = {"steps": step, "seconds": seconds, "stop_reason": stop_reason, "last": last, "best": best,
              "skipped_files": data.skipped_before + len(skipped), "run_dir": str(run_dir)}
    if job.finish is not None and (step == train.max_steps or stop_reason == "time_budget"):
        result["results"] = job.finish(training, best)
    return result


def _check_shards(folder: Path) -> None:
    from .sharded_checkpoint import check_shards  # (a second to import: only for sharded runs)

    check_shards(folder)


def _recovery(watch: LossWatch, saved_step: int, saved_in_range: int | None, run_dir: Path) -> str:
    """What to do after a non-finite update: which checkpoint to go back to."""
    if watch.left_at is not None and saved_in_range:
        return (f"The loss left its normal range at update {watch.left_at} ({watch.why}); the newest checkpoint "
                f"written before that, update {saved_in_range}, is kept. Go back to it and resume with a lower "
                f"learning rate: data2vec2 rewind {run_dir} {saved_in_range}, then the same command with a lower "
                f"optim.lr (it is applied on resume).")
    if watch.left_at is not None:
        return (f"The loss left its normal range at update {watch.left_at} ({watch.why}), before any checkpoint "
                f"of this invocation; start again with a lower optim.lr (--no-resume).")
    if not saved_step:
        return "No checkpoint was written yet: start again with a lower optim.lr or train.precision=fp32."
    if not watch.judged:
        return (f"Too few updates in this invocation to tell whether the newest checkpoint (update {saved_step}) "
                f"was written before the loss diverged (recent losses: {watch.recent()}): resume with a lower "
                f"optim.lr (it is applied on resume), or go back to an earlier step checkpoint with data2vec2 "
                f"rewind {run_dir} STEP, or start again with --no-resume.")
    return (f"The loss stayed in its normal range until then (recent losses: {watch.recent()}), so the newest "
            f"checkpoint (update {saved_step}) should be sound: resume with a lower optim.lr (it is applied on "
            f"resume) or train.precision=fp32.")


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


BEST_FILE = "best.json"  # checkpoints/best.json: {"step", "metric", "higher_is_better", "value", "scores"}


def _read_best(run_dir: Path) -> dict | None:
    path = run_dir / "checkpoints" / BEST_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, json.JSONDecodeError):
        return None


def _validate(training: Training, job: Job, step: int, run_dir: Path, best: dict | None, logger: MetricsLogger,
              bar) -> dict | None:
    """Score the validation data at update `step` (every process takes part), log it, and name this
    update's checkpoint the best when its metric beats the best so far. The training's random
    streams are left as they were, so that a resumed run validates and trains the same."""
    with torch.random.fork_rng(devices=[training.device] if training.device.type == "cuda" else []):
        scores = job.validate(training)
    training.model.train()
    logger.log(step, {f"valid_{k}": v for k, v in scores.items()})
    if job.metric not in scores:
        raise ConfigError(f"the validation metric {job.metric!r} (finetune.metric) is not scored on this data; "
                          f"it gives {', '.join(scores)}")
    value = scores[job.metric]
    better = best is None or (value > best["value"] if job.higher_is_better else value < best["value"])
    if training.dist.is_main:
        bar.write(f"[data2vec2] update {step}: valid " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
                  + (" (best so far)" if better else f" (best: {best['value']:.4f} at update {best['step']})"),
                  file=sys.stdout)
    if not better:
        return best
    best = {"step": step, "metric": job.metric, "higher_is_better": job.higher_is_better, "value": value,
            "scores": scores}
    if training.dist.is_main:
        path = run_dir / "checkpoints" / BEST_FILE
        tmp = path.with_name(f".{BEST_FILE}.tmp")
        tmp.write_text(json.dumps(best) + "\n")
        os.replace(tmp, path)
    return best


def _report_unreadable(micro_batches: list[dict], config: Config, num_samples: int, skipped: set[str],
                       is_main: bool) -> None:
    """Stop on an unreadable file (data.on_bad_file=stop) or when none is readable; otherwise print
    each unreadable file once and remember it in `skipped`."""
    for b in micro_batches:
        if b["errors"] and config.data.on_bad_file == "stop":
            raise DataError(b["errors"][0] + " (data.on_bad_file=stop; set it to skip to go on)")
        if b["exhausted"]:
            raise DataError(f"data.train={config.data.train}: no readable sample is left, all {num_samples} "
                            f"failed to read (first: {b['errors'][0]})")
        for message in b["errors"]:
            if message not in skipped:
                skipped.add(message)
                if is_main:
                    tqdm.write(f"[data2vec2] skipped: {message}", file=sys.stderr)


def _stop(training: Training, step: int, saved_step: int, run_dir: Path, received: signal.Signals) -> None:
    """A signal asked to stop: save update `step` (unless it is saved already) and raise Interrupted."""
    if step != saved_step:
        _save(training, step, run_dir)
    last = "last" if training.config.train.fsdp else "last.pt"
    where = f"{run_dir / 'checkpoints' / last} holds it" if step else "no update was made"
    raise Interrupted(f"stopped by {received.name} at update {step}; {where} (resume with the same command)",
                      int(received))


def _check_collapse(config: Config, step: int, metrics: dict) -> None:
    guards = config.guards
    if step < guards.after_steps:
        return
    if guards.min_target_std > 0 and metrics.get("target_std", 1.0) < guards.min_target_std:
        raise TrainingError(f"target std {metrics['target_std']:.4f} < guards.min_target_std={guards.min_target_std} "
                            f"at update {step}: the teacher has collapsed")
    if guards.min_pred_std > 0 and metrics.get("pred_std", 1.0) < guards.min_pred_std:
        raise TrainingError(f"prediction std {metrics['pred_std']:.4f} < guards.min_pred_std={guards.min_pred_std} "
                            f"at update {step}: the student has collapsed")
    if guards.min_local_std > 0 and metrics.get("local_std", 1.0) < guards.min_local_std:
        raise TrainingError(f"local-encoder std {metrics['local_std']:.4f} < guards.min_local_std="
                            f"{guards.min_local_std} at update {step}: the local encoder has collapsed")


def _save(training: Training, step: int, run_dir: Path, extra: dict | None = None,
          keep_also: tuple[int, ...] = ()) -> None:
    """A checkpoint of update `step` (with `extra`, the job's state); refused (nothing written) if
    any weight is not finite. The step checkpoints `keep_also` (the best, the last before a
    divergence) are kept beside the newest."""
    parts = training.model.parts()
    for name, part in parts.items():
        bad = non_finite_anywhere(part.state_dict())
        if bad:
            raise TrainingError(f"update {step}: {len(bad)} {name} tensors are not finite ({bad[0]}, ...); "
                                f"no checkpoint was written, the newest one on disk is unchanged")
    state = {
        "scheduler": training.scheduler.state_dict(),
        "step": step,
        "elapsed_s": training.progress.elapsed_s,
        "rng": distributed.all_gather_objects(torch.get_rng_state()),
        "threads": torch.get_num_threads(),
        "config": config_to_dict(training.config),
        "versions": {"data2vec2": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
        "parts": list(parts),
        **(extra or {}),
    }
    folder, keep = run_dir / "checkpoints", training.config.train.keep_checkpoints
    if training.config.train.fsdp:
        from .sharded_checkpoint import save_sharded  # (a second to import: only for sharded runs)

        save_sharded_checkpoint(lambda path: save_sharded(training.model, training.optimizer, path), state, folder,
                                step, keep, training.dist.is_main, keep_also=keep_also)
        return
    if training.dist.is_main:
        state.update({name: part.state_dict() for name, part in parts.items()},
                     optimizer=training.optimizer.state_dict())
        save_checkpoint(state, folder, step, keep, keep_also=keep_also)
    distributed.barrier()
