"""Fine-tuning: one of the modality's tasks (`finetune.task`) on labelled data, on the same trainer as
pre-training (train/loop.py): torchrun DDP or FSDP, bf16, exact resume, atomic checkpoints, the NaN
guard, SIGTERM, the run lock, the time budget. What is added here, for every task alike:

    config      the task's preset and overrides over the architecture of `finetune.init` (a run
                folder, a checkpoint or an export): its encoder's shape and input settings
    data        the task's training data; validation data (`finetune.valid`, or a seeded hold-out of
                finetune.valid_size training samples); the label set, fixed by the training data
    model       the task's objective around the encoder of `finetune.init` (or a random one); layer
                decay of the learning rate over the encoder's blocks
    validation  every finetune.eval_every updates and at the end, on every process; the best
                checkpoint by the task's metric is kept (checkpoints/best.json names it)
    results     at the end, the best checkpoint scored on the validation and every test split:
                run_dir/results.json (every metric, machine, versions, date, command)
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch
from torch import nn

from .config import Config, _merge, config_from_dict, config_to_dict, preset_values
from .errors import ConfigError, DataError
from .model import build_encoder
from .modality import PretrainingData, TaskData
from .train import distributed
from .train.checkpoint import load_checkpoint, with_current_names
from .train.loop import Job, train
from .train.setup import Training, pick_workers
from .train.step import on_device

if TYPE_CHECKING:
    from .modality import Modality, Task


def load_finetune_config(preset_or_path: str, overrides: list[str] | tuple[str, ...],
                         modalities: Mapping[str, "Modality"]) -> Config:
    """A fine-tuning preset (or YAML file) and `key=value` overrides, over the architecture of
    `finetune.init`: that encoder's `model` section and its modality's data keys (normalisation,
    sample rate, tokenizer, ...) come first, the preset's keys (regularisation: drop path, dropouts)
    and the overrides after them."""
    from .export import load_encoder_and_config

    values, path = preset_values(preset_or_path, overrides)
    init = (values.get("finetune") or {}).get("init") if isinstance(values.get("finetune"), dict) else None
    if init:
        _, init_config = load_encoder_and_config(init, modalities)
        saved = config_to_dict(init_config)
        wanted = (values.get("model") or {}).get("modality")
        if wanted and wanted != init_config.model.modality:
            raise ConfigError(f"finetune.init: {init} is a {init_config.model.modality} encoder; {path.name} fine-tunes "
                              f"{wanted}")
        record = modalities[init_config.model.modality]
        data_keys = {f for f in record.data_settings.__dataclass_fields__}
        base = {"model": saved["model"], "data": {k: v for k, v in saved["data"].items() if k in data_keys}}
        values = _merge(base, values)
    return config_from_dict(values, modalities, source=str(path))


def finetune(config: Config, run_dir: str | Path, modality: "Modality", **options) -> dict:
    """Fine-tune into `run_dir` (resuming from its last checkpoint); `options` as train.loop.train.
    Returns the loop's summary, with "results" (also in run_dir/results.json) when the run ends."""
    from .provenance import source_commit

    task = modality.tasks[config.finetune.task]
    run_dir = Path(run_dir)
    parts: dict = {"commit": source_commit()}  # of the code this invocation runs (the tree may change meanwhile)

    # the training data (read once); its label set is what the head's outputs mean, checked on resume
    train_data = task.data(config, config.data.train, None, True)
    labels = train_data.labels

    def data(progress: bool) -> PretrainingData:
        fit, valid = training_and_validation(config, task, train_data)
        parts.update(valid=valid, labels=labels)
        size = float(np.mean(fit.lengths)) if fit.lengths else 0.0
        return PretrainingData(dataset=fit.dataset, collate=fit.collate, lengths=fit.lengths,
                               step_flops=task.step_flops(config, size))

    def build_model(resuming: bool) -> nn.Module:
        return build_objective(config, modality, task, parts["labels"], resuming)

    def validate(training: Training) -> dict[str, float]:
        return evaluate(training.model, task, parts["valid"], parts["labels"], config, training.device,
                        training.autocast)

    def finish(training: Training, best: dict | None) -> dict:
        return final_results(training, task, parts, best, run_dir)

    metric = chosen_metric(config, task)
    job = Job(data=data, build_model=build_model, validate=validate,
              every=config.finetune.eval_every, metric=metric, higher_is_better=metric not in task.lower_is_better,
              state={"task": {"name": task.name, "labels": labels}}, finish=finish)
    return train(config, run_dir, modality, job, **options)


def finetune_runs(preset: str, overrides: list[str], run_dir: Path, modalities: Mapping[str, "Modality"], *,
                  compare: bool = False, seeds: list[int] | None = None, lrs: list[float] | None = None,
                  resume: bool = True, progress: bool = True) -> dict | None:
    """The fine-tuning of a preset into `run_dir`, or several, side by side:
        compare  the same recipe on the same data from a random encoder of the same architecture
                 (run_dir/pretrained, run_dir/random_init)
        seeds    once per train.seed (which draws the head, the batch order, dropout and the random
                 twin), and with several `lrs` once per learning rate too (run_dir/<init>/lr<lr>-seed<s>);
                 each init's learning rate is chosen on the validation metric's mean over the seeds
    The summary (also run_dir/comparison.json): each init's scores (mean and spread over the seeds),
    and the gain of the pre-trained encoder on each split (positive: better, error rates included).
    None on processes other than the main one."""
    config = load_finetune_config(preset, overrides, modalities)
    if not config.finetune.task:
        raise ConfigError(f"{preset} sets no finetune.task: it is a pre-training preset (data2vec2 pretrain); "
                          f"the fine-tuning presets are listed by data2vec2 presets")
    modality = modalities[config.model.modality]
    inits = {"pretrained": []}
    if compare:
        if not config.finetune.init:
            raise ConfigError("--compare needs finetune.init (--init): the encoder to compare with a random one")
        inits["random_init"] = ["finetune.random_init=true"]
    grid = [(lr, seed) for lr in (lrs or [None]) for seed in (seeds or [None])]
    results: dict[str, list] = {}
    for name, extra in inits.items():
        for lr, seed in grid:
            more = extra + ([f"optim.lr={lr}"] if lr is not None else []) + ([f"train.seed={seed}"] if seed is not None
                                                                             else [])
            folder = run_dir / name if compare else run_dir
            if lrs or seeds:
                folder = folder / "-".join(([f"lr{lr:g}"] if lr is not None else []) + ([f"seed{seed}"] if seed is not
                                                                                         None else []))
            out = finetune(load_finetune_config(preset, overrides + more, modalities), folder, modality,
                           resume=resume, progress=progress)
            results.setdefault(name, []).append({"lr": lr, "seed": seed, "results": out.get("results")})
    if os.environ.get("RANK", "0") != "0" or not all(r["results"] for runs in results.values() for r in runs):
        return None
    first = results["pretrained"][0]["results"]
    metric, sign = first["metric"], 1.0 if first["higher_is_better"] else -1.0
    summary = {"metric": metric, "higher_is_better": first["higher_is_better"], "preset": preset,
               "overrides": list(overrides), "seeds": seeds, "lrs": lrs}
    for name, runs in results.items():
        chosen = max(lrs or [None], key=lambda lr: sign * np.mean(
            [r["results"]["scores"]["valid"][metric] for r in runs if r["lr"] == lr]))
        kept = [r for r in runs if r["lr"] == chosen]
        entry = {"lr": chosen} if lrs else {}
        for split in first["scores"]:
            values = {k: [r["results"]["scores"][split][k] for r in kept] for k in first["scores"][split]}
            entry[split] = {k: float(np.mean(v)) for k, v in values.items()}
            if seeds and len(seeds) > 1:
                entry[split + "_std"] = {k: float(np.std(v, ddof=1)) for k, v in values.items()}
                entry[split + "_runs"] = values[metric]
        summary[name] = entry
    if compare:
        summary["gain"] = {split: sign * (summary["pretrained"][split][metric] - summary["random_init"][split][metric])
                           for split in first["scores"]}
    if compare or seeds or lrs:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "comparison.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def chosen_metric(config: Config, task: "Task") -> str:
    """The validation metric that chooses the best checkpoint: finetune.metric, or the task's."""
    return config.finetune.metric or task.metric


class TaskObjective(nn.Module):
    """What every fine-tuning objective shares: its encoder, frozen (run without gradients, so that
    only the task's head learns) for the first finetune.freeze_steps updates; layer decay of the
    learning rate; the whole objective as the one checkpoint part; nothing to do after an update.
    A task's objective adds forward(batch) -> LossOutput and predict(batch) -> one output per sample."""

    def __init__(self, encoder: nn.Module, config: Config):
        super().__init__()
        self.encoder = encoder
        self.freeze_steps, self.layer_decay = config.finetune.freeze_steps, config.finetune.layer_decay
        self.updates = 0  # updates made so far: the trainer sets it before each one (set_num_updates)

    def set_num_updates(self, updates: int) -> None:
        self.updates = updates

    def encoder_context(self):
        """Where the encoder runs: without gradients while it is frozen (in training)."""
        return torch.no_grad() if self.training and self.updates < self.freeze_steps else contextlib.nullcontext()

    @property
    def trained(self) -> nn.Module:
        return self

    def parts(self) -> dict[str, nn.Module]:
        return {"model": self}

    def after_update(self, update: int) -> dict[str, float]:
        return {}

    def lr_scales(self) -> dict[str, float]:
        return layer_scales(self, self.layer_decay)


def training_and_validation(config: Config, task: "Task", fit: TaskData) -> tuple[TaskData, TaskData]:
    """The data to train on (of `fit`, the training data, augmented) and the validation data."""
    labels = fit.labels
    if config.finetune.valid:
        return fit, task.data(config, config.finetune.valid, labels, False)
    # a seeded hold-out of the training data, read without augmentation
    plain = task.data(config, config.data.train, labels, False)
    n = len(fit.dataset)
    size = config.finetune.valid_size
    if size > n // 5:
        size = max(1, n // 5)
        if os.environ.get("RANK", "0") == "0":
            print(f"[data2vec2] data.train has {n} samples: {size} (a fifth) are held out for validation instead of "
                  f"finetune.valid_size={config.finetune.valid_size} (set it, or finetune.valid)", flush=True)
    if n - size < 1:
        raise DataError(f"data.train={config.data.train}: {n} sample(s), too few to hold some out for validation; "
                        f"give finetune.valid")
    order = np.random.default_rng(config.train.seed).permutation(n)
    held, kept = np.sort(order[:size]), np.sort(order[size:])
    return subset(fit, kept), subset(plain, held)


def subset(data: TaskData, indices) -> TaskData:
    indices = [int(i) for i in indices]
    lengths = [data.lengths[i] for i in indices] if data.lengths is not None else None
    return TaskData(dataset=Indexed(data.dataset, indices), collate=data.collate, labels=data.labels, lengths=lengths)


class Indexed(torch.utils.data.Dataset):
    """Samples `indices` of a dataset, renumbered 0..n-1 (set_epoch passed on)."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[self.indices[i]], "index": i}


def build_objective(config: Config, modality: "Modality", task: "Task", labels: list[str], resuming: bool) -> nn.Module:
    """The task's objective around the encoder of `finetune.init` (its weights, unless
    `finetune.random_init` or a checkpoint of this run will replace them), built with the
    fine-tuning config (its drop path and dropouts)."""
    encoder = build_encoder(config.model, modality)
    if config.finetune.init and not config.finetune.random_init and not resuming:
        from .export import load_encoder_and_config

        pretrained, _ = load_encoder_and_config(config.finetune.init, {modality.name: modality})
        encoder.load_state_dict(with_current_names(pretrained.state_dict(), encoder))
    model = task.build(encoder, config, labels)
    return model


def layer_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """Layer decay (BEiT; the reference's `MaeImageClassificationModel`): with n = the encoder's
    prenet and shared blocks, block i (from 0) learns at lr x layer_decay^(n - i), so the last
    block gets layer_decay^1; every other parameter (local encoder, norms, head) keeps lr."""
    encoder = model.encoder
    blocks = list(encoder.prenet) + list(encoder.blocks)
    n = len(blocks)
    depth = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    return {name: layer_decay ** (n - depth[id(p)]) for name, p in model.named_parameters() if id(p) in depth}


@torch.no_grad()
def evaluate(model: nn.Module, task: "Task", data: TaskData, labels: list[str], config: Config,
             device: torch.device, autocast) -> dict[str, float]:
    """Every metric of the task on `data`, the model in eval mode. The samples are cut, in their
    order, into batches of the micro-batch size the same way whatever the number of processes (a
    padded batch's outputs depend a little on its company: the reference's position convolution
    reads the padding; `data2vec2 predict` batches the same way), and the batches dealt out to the
    processes (padded with repeats so that all run as many, which sharded models need); the outputs
    are gathered and scored once, in the samples' order."""
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) \
        if distributed.is_distributed() else (0, 1)
    n = len(data.dataset)
    batch_size = max(1, config.train.batch_size // (world * config.train.grad_accum))
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    rounds = -(-len(batches) // world)
    mine = [batches[(rank + world * k) % len(batches)] for k in range(rounds)]
    workers = pick_workers(config.data.num_workers)
    loader = torch.utils.data.DataLoader(data.dataset, batch_sampler=mine, collate_fn=data.collate,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    indices, outputs, targets = [], [], []
    try:
        for batch in loader:
            if batch["errors"]:
                raise DataError(batch["errors"][0])
            with autocast():
                out = model.predict(on_device(batch, device))
            indices += batch["index"].tolist()
            outputs += out
            targets += list(batch["target"])
    finally:
        model.train(was_training)
    gathered = distributed.all_gather_objects((indices, outputs, targets))
    by_index = {}
    for part in gathered:
        for i, o, t in zip(*part):
            by_index.setdefault(i, (o, t))
    order = sorted(by_index)
    return task.score([by_index[i][0] for i in order], [by_index[i][1] for i in order], labels)


def final_results(training: Training, task: "Task", parts: dict, best: dict | None, run_dir: Path) -> dict:
    """The best checkpoint (or the last weights, without validation) scored on the validation data
    and on every `finetune.test` split; written to run_dir/results.json by the main process."""
    config = training.config
    if best is not None and best["step"] != training.scheduler.last_epoch:  # (the updates made)
        _load_weights(training, run_dir, best["step"])
    splits = {"valid": parts["valid"]}
    for spec in config.finetune.test:
        splits[spec] = task.data(config, spec, parts["labels"], False)
    scores = {name: evaluate(training.model, task, data, parts["labels"], config, training.device, training.autocast)
              for name, data in splits.items()}
    from .provenance import results_header

    metric = chosen_metric(config, task)
    results = {"task": task.name, "metric": metric, "higher_is_better": metric not in task.lower_is_better,
               "best_step": best["step"] if best else None,
               "scores": scores, "labels": parts["labels"], "init": config.finetune.init,
               "random_init": config.finetune.random_init, "train": config.data.train,
               "processes": training.dist.world_size,
               **results_header(str(training.dtype).replace("torch.", "")), "commit": parts["commit"]}
    if training.dist.is_main:
        tmp = run_dir / ".results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1) + "\n")
        os.replace(tmp, run_dir / "results.json")
        print("[data2vec2] " + "; ".join(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in s.items())
                                         for name, s in scores.items()) + f" (results in {run_dir / 'results.json'})",
              flush=True)
    return results


def _load_weights(training: Training, run_dir: Path, step: int) -> None:
    """The model's weights of the step checkpoint `step` (every process)."""
    folder = run_dir / "checkpoints"
    if training.config.train.fsdp:
        from .train.sharded_checkpoint import load_sharded

        load_sharded(training.model, training.optimizer, folder / f"step_{step:09d}")
        return
    state = load_checkpoint(folder / f"step_{step:09d}.pt")
    for name, part in training.model.parts().items():
        part.load_state_dict(state[name])
