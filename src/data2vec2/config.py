"""Typed configuration: dataclasses, YAML presets, `key=value` overrides.

A run is described by one `Config`. Presets live in `data2vec2/presets/<name>.yaml`; a YAML file
only lists what differs from the defaults below. Unknown keys and values of the wrong type are
rejected with a `ConfigError` that names the key (for example `masking.mask_prbo`).

The settings of one modality are not fields of this module: each modality record
(`data2vec2.modality.Modality`) brings a dataclass for `model.<modality>` (its local encoder) and
one for its own `data.*` keys. A config holds only the active modality's two, as the explicit fields
`config.model.settings` and `config.data.settings` (`config.data.key(name)` reads a data key by name,
generic or the modality's), and a saved config (run folder, checkpoint, export) holds only those
plus the package version:

    model: {modality: image, embed_dim: ..., image: {image_size: ..., ...}}
    data:  {train: ..., cache_dir: ..., channels: ..., mean: ...}      generic and image keys, flat

A saved config written by another version loads with one warning that names each key this version
does not know; a missing key that changes the mathematics (model, decoder, masking, targets, loss,
ema) is an error, since a default would silently change the model.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import yaml

from . import __version__
from .errors import ConfigError

if TYPE_CHECKING:
    from .modality import Modality

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class ModelConfig:
    """The encoder: local encoder -> context encoder (LayerNorm + prenet blocks) -> shared blocks."""

    modality: str = ""  # a key of the modality table: image | audio | text
    embed_dim: int = 768
    depth: int = 10  # shared blocks; targets come only from these
    prenet_depth: int = 2  # modality-specific blocks in the context encoder
    num_heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    dropout: float = 0.0  # after attention projection (encoder_dropout)
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0  # inside the MLP
    post_mlp_dropout: float = 0.0
    prenet_dropout: float = 0.0  # after the context encoder's LayerNorm
    drop_path: float = 0.0
    layerdrop: float = 0.0
    # the active modality's local-encoder settings (its model_settings dataclass), written and read
    # as `model.<modality>` in YAML and overrides
    settings: Any = None


@dataclass
class DecoderConfig:
    dim: int = 768
    kernel_size: int = 3
    layers: int = 6
    groups: int = 16
    residual: bool = True
    projection_layers: int = 1  # 1: Linear(dim -> D); 2: Linear(dim -> 2 dim) -> GELU -> Linear (text)
    input_dropout: float = 0.0
    mask_noise_std: float = 0.01  # mask tokens are fresh N(0, std^2) noise
    kind: str = "conv"  # conv (the reference) | transformer: an ablation for images (nn/decoders.py)
    num_heads: int = 16  # attention heads of a Transformer decoder (decoder.kind=transformer, objective=mae)


@dataclass
class MaskingConfig:
    kind: str = "inverse_block"  # inverse_block | block | random
    mask_prob: float = 0.8  # the masked fraction, also with inverse block masking
    mask_length: int = 3  # block width b
    mask_prob_adjust: float = 0.07
    num_masks: int = 16  # M, clones per sample (clone_batch)
    # True (the reference): the student encodes only the unmasked tokens. False, an ablation: it
    # encodes every token, the masked ones as one learned mask embedding (data2vec 1.0, BERT)
    drop_masked: bool = True


@dataclass
class TargetConfig:
    top_k: int = 10  # average the FFN outputs of the top K shared blocks
    layer_norm: str = "instance"  # per-layer norm before averaging: instance | layer | none
    final_norm: str = "layer"  # after averaging: layer | instance | none


@dataclass
class LossConfig:
    scale: Optional[float] = None  # None: 1/sqrt(D)
    cls_weight: float = 0.0  # the CLS term, for encoders with a CLS token (every image preset: 0.01)
    beta: float = 0.0  # 0: L2; > 0: smooth L1 with this beta


@dataclass
class EMAConfig:
    decay: float = 0.9998  # tau_0
    end_decay: float = 0.99999  # tau_e
    anneal_steps: int = 100_000  # linear ramp tau_0 -> tau_e over this many updates
    # A teacher sized to the run (each 0: off, the value above as written). A decay from the teacher's
    # half-life h, tau = 0.5 ** (1 / h), with h this fraction of train.max_steps; the ramp ending at
    # anneal_fraction of train.max_steps. The reference's image-base schedule in these units:
    # 0.0092 -> 0.185, annealed over 0.266 of its 375,300 updates (nn/ema.py, sized_to_run).
    start_half_life: float = 0.0
    end_half_life: float = 0.0
    anneal_fraction: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05
    # The reference code (as written) decays every trainable parameter, 1-D ones included. True
    # keeps that; False exempts biases, norms and the CLS token (a deliberate deviation).
    decay_1d_params: bool = True
    # the learning-rate schedule: cosine (pre-training, image fine-tuning: warmup, half cosine to min_lr),
    # linear (GLUE: warmup, straight line to min_lr; fairseq's polynomial_decay of power 1) or tri_stage
    # (speech fine-tuning: warmup from lr/100, hold_steps at lr, exponential decay to min_lr)
    schedule: str = "cosine"
    warmup_steps: int = 50_040
    hold_steps: int = 0  # tri_stage only: updates at the peak between the warmup and the decay
    min_lr: float = 0.0
    clip_norm: float = 4.0  # 0 disables clipping


@dataclass
class DataConfig:
    train: str = ""  # what to pre-train on: a prepared set, a folder, a manifest (see the modality's docs)
    cache_dir: str = "cache"
    on_bad_file: str = "skip"  # skip (count it in the log) | stop
    # DataLoader worker processes per training process; -1: from the CPUs (train/setup.py pick_workers)
    num_workers: int = 2
    limit: int = 0  # use only the first N training samples (0: all)
    # the active modality's own data keys (its data_settings dataclass: data.mean for images, ...),
    # written and read flat in YAML and overrides
    settings: Any = None

    def key(self, name: str) -> Any:
        """A data key's value by its name: a generic key or one of the modality's (`settings`)."""
        if self.settings is not None and name in _field_names(self.settings):
            return getattr(self.settings, name)
        return getattr(self, name)


@dataclass
class GuardConfig:
    """Collapse guards (`Data2VecMultiModel.forward`): stop when a std falls below its floor after `after_steps`."""

    min_target_std: float = 0.0  # 0 disables
    min_pred_std: float = 0.0
    # the local encoder's output, each token LayerNorm-ed first, so a collapse towards one vector
    # for every token is caught, not a mere shrink (fairseq issue 5239; healthy: about 0.4-1)
    min_local_std: float = 0.0
    after_steps: int = 5000


@dataclass
class TrainConfig:
    batch_size: int = 512  # global batch of original samples per update (before cloning)
    grad_accum: int = 1  # micro-batches per update on each process
    max_steps: int = 375_300  # updates; the cosine schedule reaches optim.min_lr here
    # stop (and checkpoint) after this many seconds of training, the run's earlier invocations included;
    # the LR schedule and the EMA then follow the further of update / max_steps and the fraction of the
    # budget spent, so a run slower than planned still ends both when the budget ends. 0: no limit
    time_budget_s: float = 0.0
    precision: str = "auto"  # auto | fp32 | bf16
    # torch.compile each transformer block (student and teacher). Image shapes are fixed; a speech or
    # text length that changes is compiled once more, then with a symbolic length (dynamo's default)
    compile: bool = False
    # recompute each student block in the backward pass instead of keeping its activations: the same
    # result, less memory, one more forward pass of the blocks (large batches, the huge presets)
    activation_checkpointing: bool = False
    # shard the student, the teacher, the gradients and AdamW's state over the processes, block by
    # block (FSDP2), with sharded checkpoints (train/sharding.py); the large and huge presets
    fsdp: bool = False
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 1000  # updates between checkpoints (also written at the end)
    keep_checkpoints: int = 2  # step checkpoints kept besides `last`
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU compute threads per process; 0: OMP_NUM_THREADS if set, else the free cores
    # a file of student and teacher weights to start from (`data2vec2 import-fairseq --run-dir` writes
    # one) with a fresh optimizer and schedule; used only while the run folder has no checkpoint
    init_from: str = ""


@dataclass
class FinetuneConfig:
    """Fine-tuning (`data2vec2 finetune`): one of the modality's tasks on labelled data, on the same
    trainer as pre-training. An empty `task` means the config pre-trains (`objective`)."""

    task: str = ""  # a task of the modality (data2vec2 presets lists them): image classification, ...
    # the encoder to start from: a pre-training run folder, a checkpoint, an export (also what
    # `data2vec2 import-fairseq` writes); its architecture replaces `model`'s. "": `model` as given, random
    init: str = ""
    random_init: bool = False  # the init's architecture with random weights: the baseline of a comparison
    valid: str = ""  # the validation data; "": valid_size samples of data.train held out, drawn with train.seed
    valid_size: int = 5000
    test: tuple[str, ...] = ()  # further data, scored with the best checkpoint when the run ends
    eval_every: int = 500  # updates between validations (and one at the end); the best is kept
    # block i (from 0) of the encoder's n prenet and shared blocks learns at lr x layer_decay^(n - i);
    # the local encoder, the norms and the head at lr (the reference's choice). 1: no decay
    layer_decay: float = 1.0
    label_smoothing: float = 0.0  # classification: the target puts this much mass evenly on every class
    # the encoder is frozen (run without gradients; only the task's head learns) for the first updates
    # (the reference's freeze_finetune_updates, speech)
    freeze_steps: int = 0
    metric: str = ""  # the validation metric that chooses the best checkpoint; "": the task's own


OBJECTIVES = ("data2vec2", "data2vec1", "mae", "mlm")
SCHEDULES = ("cosine", "linear", "tri_stage")
PRE_TRAINING_SECTIONS = ("objective", "decoder", "masking", "targets", "loss", "ema", "guards")


@dataclass
class Config:
    name: str = "custom"
    # what is trained: data2vec2 (the paper), or a baseline over the same encoder, data and trainer
    # (objectives/): data2vec1 (all modalities), mae (images), mlm (text)
    objective: str = "data2vec2"
    model: ModelConfig = field(default_factory=ModelConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    guards: GuardConfig = field(default_factory=GuardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def validate(self, modality: "Modality", sections: tuple[str, ...] | None = None) -> "Config":
        """Range checks that types alone cannot express, the modality's own included. `sections`:
        check only the keys of these sections (an export holds the model and data only)."""
        model, masking, targets = self.model, self.masking, self.targets
        train, data, optim, decoder = self.train, self.data, self.optim, self.decoder
        checks = [
            (self.objective in OBJECTIVES, "objective", f"must be one of {', '.join(OBJECTIVES)}"),
            (model.embed_dim >= 1 and model.depth >= 1 and model.prenet_depth >= 0, "model.embed_dim",
             "model.embed_dim and model.depth must be >= 1, model.prenet_depth >= 0"),
            (model.num_heads >= 1 and model.embed_dim % model.num_heads == 0, "model.num_heads",
             f"must be >= 1 and divide model.embed_dim={model.embed_dim}"),
            (1 <= targets.top_k <= model.depth, "targets.top_k", f"must be in [1, model.depth={model.depth}]"),
            (targets.layer_norm in ("instance", "layer", "none"), "targets.layer_norm",
             "must be instance, layer or none"),
            (targets.final_norm in ("instance", "layer", "none"), "targets.final_norm",
             "must be instance, layer or none"),
            (masking.kind in ("inverse_block", "block", "random"), "masking.kind",
             "must be inverse_block, block or random"),
            (0.0 < masking.mask_prob < 1.0, "masking.mask_prob", "must be in (0, 1)"),
            (masking.num_masks >= 1, "masking.num_masks", "must be >= 1"),
            (masking.mask_length >= 1, "masking.mask_length", "must be >= 1"),
            (masking.kind != "random" or (masking.mask_length, masking.mask_prob_adjust)
             == (MaskingConfig.mask_length, MaskingConfig.mask_prob_adjust), "masking.mask_length",
             "random masking uses neither masking.mask_length nor masking.mask_prob_adjust: leave them out"),
            (decoder.groups >= 1 and decoder.dim % decoder.groups == 0
             and model.embed_dim % decoder.groups == 0, "decoder.groups",
             "must divide decoder.dim and model.embed_dim"),
            (decoder.projection_layers in (1, 2), "decoder.projection_layers", "must be 1 or 2"),
            (decoder.kind in ("conv", "transformer"), "decoder.kind", "must be conv or transformer"),
            (decoder.num_heads >= 1 and decoder.dim % decoder.num_heads == 0, "decoder.num_heads",
             f"must be >= 1 and divide decoder.dim={decoder.dim}"),
            (self.loss.beta >= 0, "loss.beta", "must be >= 0 (0: L2, > 0: smooth L1)"),
            (0.0 <= self.ema.decay <= 1.0 and 0.0 <= self.ema.end_decay <= 1.0, "ema.decay", "must be in [0, 1]"),
            (self.ema.start_half_life >= 0, "ema.start_half_life",
             "must be >= 0 (a fraction of train.max_steps; 0: off)"),
            (self.ema.end_half_life >= 0, "ema.end_half_life", "must be >= 0 (a fraction of train.max_steps; 0: off)"),
            (0.0 <= self.ema.anneal_fraction <= 1.0, "ema.anneal_fraction", "must be in [0, 1] (0: off)"),
            (optim.lr > 0, "optim.lr", "must be > 0"),
            (optim.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0"),
            (optim.schedule in SCHEDULES, "optim.schedule", f"must be one of {', '.join(SCHEDULES)}"),
            (optim.hold_steps >= 0 and (optim.hold_steps == 0 or optim.schedule == "tri_stage"), "optim.hold_steps",
             "must be >= 0, and is read by optim.schedule=tri_stage only"),
            (optim.schedule != "tri_stage" or 0 < optim.min_lr <= optim.lr, "optim.min_lr",
             "tri_stage decays exponentially to optim.min_lr: it must be in (0, optim.lr] (the reference: lr x 0.05)"),
            (train.batch_size >= 1, "train.batch_size", "must be >= 1"),
            (train.grad_accum >= 1, "train.grad_accum", "must be >= 1"),
            (train.max_steps >= 1, "train.max_steps", "must be >= 1"),
            (train.log_every >= 1, "train.log_every", "must be >= 1"),
            (train.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1"),
            (train.keep_checkpoints >= 0, "train.keep_checkpoints", "must be >= 0"),
            (train.threads >= 0, "train.threads", "must be >= 0 (0: the free cores)"),
            (train.precision in ("auto", "fp32", "bf16"), "train.precision", "must be auto, fp32 or bf16"),
            (train.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda"),
            (not train.init_from or self.objective == "data2vec2", "train.init_from",
             "holds a data2vec 2.0 student and teacher: only for objective=data2vec2"),
            (data.on_bad_file in ("skip", "stop"), "data.on_bad_file", "must be skip or stop"),
            (data.num_workers >= -1, "data.num_workers", "must be >= 0, or -1 (from the CPUs)"),
            (data.limit >= 0, "data.limit", "must be >= 0 (0: all)"),
            (not self.finetune.task or self.finetune.task in modality.tasks, "finetune.task",
             f"the {modality.name} tasks are {', '.join(modality.tasks) or 'none yet'}"),
            (self.finetune.valid_size >= 1, "finetune.valid_size", "must be >= 1"),
            (self.finetune.eval_every >= 1, "finetune.eval_every", "must be >= 1"),
            (0.0 < self.finetune.layer_decay <= 1.0, "finetune.layer_decay", "must be in (0, 1]"),
            (0.0 <= self.finetune.label_smoothing < 1.0, "finetune.label_smoothing", "must be in [0, 1)"),
            (self.finetune.freeze_steps >= 0, "finetune.freeze_steps", "must be >= 0"),
            (not self.finetune.metric or self.finetune.task not in modality.tasks
             or self.finetune.metric in modality.tasks[self.finetune.task].metrics, "finetune.metric",
             f"must be one of the task's metrics: "
             f"{', '.join(modality.tasks[self.finetune.task].metrics) if self.finetune.task in modality.tasks else ''}"),
            (not self.finetune.random_init or bool(self.finetune.init), "finetune.random_init",
             "takes the architecture of finetune.init: name one"),
        ]
        # a fine-tuning config trains no decoder and no teacher: those sections are not read
        skipped = PRE_TRAINING_SECTIONS if self.finetune.task else ()
        for ok, key, message in checks + modality.check_config(self):
            if not ok and (sections is None or key.split(".")[0] in sections) and key.split(".")[0] not in skipped:
                raise ConfigError(f"{key}: {message}")
        return self


# ---------------------------------------------------------------------------------------------
# Loading, overriding and saving

# Sections whose every key changes the model's mathematics: a saved config that lacks one of their
# keys cannot be completed with a default (the default may not be what the writer used).
MATHEMATICAL_SECTIONS = ("model", "decoder", "masking", "targets", "loss", "ema")
# Keys of those sections added after configs were first saved. Their defaults are what every earlier
# version did, so a saved config without them still loads, and means what it meant.
LATER_KEYS = ("decoder.num_heads", "decoder.kind", "masking.drop_masked", "ema.start_half_life", "ema.end_half_life",
              "ema.anneal_fraction")


class ConfigWarning(UserWarning):
    """A saved config holds a key this version does not know (written by another version)."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert YAML lists to tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _field_names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj) if f.name != "settings"]


class _Reader:
    """Fills dataclasses from nested dicts. Strict (presets, overrides): an unknown key is an
    error. Saved (run folders, checkpoints, exports): an unknown key is a warning, a missing
    mathematical key an error."""

    def __init__(self, modalities: Mapping[str, "Modality"], modality: str, saved: bool, source: str):
        self.modalities, self.modality, self.saved, self.source = modalities, modality, saved, source
        self.ignored: list[str] = []  # saved mode: "key (why)", reported in one warning

    def unknown(self, key: str, message: str) -> None:
        if not self.saved:
            raise ConfigError(f"{key}: {message}" if "config key" not in message else message)
        self.ignored.append(f"'{key}'" + ("" if "unknown config key" in message else f": {message}"))

    def warn_ignored(self) -> None:
        if self.ignored:
            warnings.warn(f"{self.source} (written by another version?): ignoring " + "; ".join(self.ignored),
                          ConfigWarning, stacklevel=3)

    def other_modality(self, key: str, section: str) -> str | None:
        """The modality whose settings hold `key` in `section` ("model" or "data"), if another."""
        for name, record in self.modalities.items():
            if name == self.modality:
                continue
            if section == "model" and key == name:
                return name
            if section == "data" and key in {f.name for f in dataclasses.fields(record.data_settings)}:
                return name
        return None

    def fill(self, obj: Any, values: Any, prefix: str) -> None:
        if not isinstance(values, dict):
            raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
        hints = typing.get_type_hints(type(obj))
        names = _field_names(obj)
        settings = obj.__dict__.get("settings")
        section = prefix.rstrip(".")
        for key, value in values.items():
            full = f"{prefix}{key}"
            if section == "model" and key == self.modality:
                self.fill(settings, value, full + ".")
                continue
            if section == "data" and key not in names and settings is not None and key in _field_names(settings):
                self.fill(settings, {key: value}, prefix)
                continue
            if key not in names:
                owner = self.other_modality(str(key), section)
                if owner is not None:
                    self.unknown(full, f"a setting of the {owner} modality; this config is {self.modality}")
                    continue
                close = [n for n in names + (_field_names(settings) if settings is not None else [])
                         if n.startswith(str(key)[:3])]
                hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
                self.unknown(full, f"unknown config key '{full}'{hint}")
                continue
            current = getattr(obj, key)
            if dataclasses.is_dataclass(current):
                self.fill(current, value, full + ".")
            else:
                setattr(obj, key, _coerce(value, hints[key], full))

    def check_complete(self, config: "Config", values: dict) -> None:
        """In a saved config, every key of a mathematical section that is present must be there."""
        def walk(obj: Any, given: dict, prefix: str) -> None:
            for name in _field_names(obj):
                if name not in given and f"{prefix}{name}" not in LATER_KEYS:
                    raise ConfigError(f"{self.source}: '{prefix}{name}' is missing; it changes the model's "
                                      f"mathematics, so no default can stand in for it (written by another version?)")
                if name in given and dataclasses.is_dataclass(getattr(obj, name)):
                    walk(getattr(obj, name), given[name], f"{prefix}{name}.")
            settings = obj.__dict__.get("settings")
            if settings is not None and prefix == "model.":
                if self.modality not in given:
                    raise ConfigError(f"{self.source}: 'model.{self.modality}' is missing")
                walk(settings, given[self.modality], f"model.{self.modality}.")

        for section in MATHEMATICAL_SECTIONS:
            if isinstance(values.get(section), dict):
                walk(getattr(config, section), values[section], f"{section}.")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data or {}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_override(item: str) -> dict:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}}, the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' is not of the form key=value (e.g. optim.lr=5e-4)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': the value is not valid YAML: {e}") from None
    nested: dict = {}
    cursor = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def config_from_dict(values: dict, modalities: Mapping[str, "Modality"], *, saved: bool = False,
                     source: str = "config", sections: tuple[str, ...] | None = None) -> Config:
    """A validated `Config` from a nested dict. `saved`: the dict was written by a (maybe other)
    version of this package, so unknown keys are warnings and missing mathematical keys errors.
    `sections`: validate only these (see `Config.validate`)."""
    values = dict(values)
    values.pop("version", None)
    model_values = values.get("model") or {}
    name = model_values.get("modality", ModelConfig.modality) if isinstance(model_values, dict) else None
    if name not in modalities:
        raise ConfigError(f"model.modality: must be one of {', '.join(modalities)}, not {name!r}")
    record = modalities[name]
    config = Config()
    config.model.modality = name
    config.model.settings = record.model_settings()
    config.data.settings = record.data_settings()
    reader = _Reader(modalities, name, saved, source)
    reader.fill(config, values, "")
    reader.warn_ignored()
    if saved:
        reader.check_complete(config, values)
    return config.validate(record, sections)


def preset_values(preset_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, Path]:
    """The nested values of a preset name (e.g. `image-tiny`) or a YAML path with `key=value`
    overrides applied (values parsed as YAML: `optim.lr=3e-4`, `data.hflip=false`), and its path."""
    path = Path(preset_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{preset_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset '{preset_or_path}'; available: {', '.join(preset_names())}")
    elif not path.exists():
        raise ConfigError(f"config file not found: {path}")
    values = _read_yaml(path)
    for item in overrides:
        values = _merge(values, parse_override(item))
    return values, path


def load_config(preset_or_path: str, overrides: list[str] | tuple[str, ...] = (), *,
                modalities: Mapping[str, "Modality"]) -> Config:
    """Build a config from a preset name or a YAML path and `key=value` overrides (preset_values)."""
    values, path = preset_values(preset_or_path, overrides)
    return config_from_dict(values, modalities, source=str(path))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        out = {name: _plain(getattr(value, name)) for name in _field_names(value)}
        settings = value.__dict__.get("settings")
        if settings is not None and isinstance(value, ModelConfig):
            out[value.modality] = _plain(settings)
        elif settings is not None:
            out.update(_plain(settings))
        return out
    if isinstance(value, (tuple, list)):
        return [_plain(x) for x in value]
    return value


def config_to_dict(config: Any) -> dict:
    """Plain nested dict (tuples as lists) for YAML and JSON, holding only the active modality's
    settings; a whole `Config` also gets the package version."""
    out = _plain(config)
    return {"version": __version__, **out} if isinstance(config, Config) else out


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
