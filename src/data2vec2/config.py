"""Typed configuration: dataclasses, YAML presets, `key=value` overrides.

A run is described by one `Config`. Presets live in `data2vec2/presets/<name>.yaml`; a YAML file
only lists what differs from the defaults below. Unknown keys and values of the wrong type are
rejected with a `ConfigError` that names the key (for example `masking.mask_prbo`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class ImageConfig:
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3


@dataclass
class AudioConfig:
    """The speech local encoder (spec 3.3): the wav2vec 2.0 CNN, then LayerNorm + Linear to D;
    a convolutional relative-position encoder; ALiBi attention bias."""

    # (channels, kernel, stride) of each conv layer; the base CNN is 512 x [(10,5), (3,2) x4, (2,2) x2]
    conv_layers: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    conv_pos_width: int = 95  # total width; each of the conv_pos_depth layers has kernel width // depth
    conv_pos_depth: int = 5
    conv_pos_groups: int = 16
    alibi: bool = True
    alibi_scale_init: float = 1.0
    # False (the reference): the teacher is fed the student's CNN + projection output. True: the
    # teacher keeps its own EMA copy of them (audio-tiny: the shared CNN collapsed, docs/audio.md)
    ema_local_encoder: bool = False


@dataclass
class TextConfig:
    """Byte-level BPE tokens (spec 3.4): <s>=0, <pad>=1, </s>=2, <unk>=3 (RoBERTa's layout)."""

    vocab_size: int = 50_265
    max_positions: int = 512  # tokens per sequence, <s> included; the table has 2 more rows
    embed_dropout: float = 0.1  # after the embedding LayerNorm; the teacher sees it too (spec 2)


@dataclass
class ModelConfig:
    """The encoder: local encoder -> context encoder (LayerNorm + prenet blocks) -> shared blocks."""

    modality: str = "image"
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
    image: ImageConfig = field(default_factory=ImageConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)


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


@dataclass
class MaskingConfig:
    kind: str = "inverse_block"  # inverse_block | block | random
    mask_prob: float = 0.8  # the masked fraction, also with inverse block masking
    mask_length: int = 3  # block width b
    mask_prob_adjust: float = 0.07
    num_masks: int = 16  # M, clones per sample (clone_batch)


@dataclass
class TargetConfig:
    top_k: int = 10  # average the FFN outputs of the top K shared blocks
    layer_norm: str = "instance"  # per-layer norm before averaging: instance | layer | none
    final_norm: str = "layer"  # after averaging: layer | instance | none


@dataclass
class LossConfig:
    scale: Optional[float] = None  # None: 1/sqrt(D)
    cls_weight: float = 0.01  # images only; 0 disables the CLS loss
    beta: float = 0.0  # 0: L2; > 0: smooth L1 with this beta


@dataclass
class EMAConfig:
    decay: float = 0.9998  # tau_0
    end_decay: float = 0.99999  # tau_e
    anneal_steps: int = 100_000  # linear ramp tau_0 -> tau_e over this many updates


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05
    # The reference code (as written) decays every trainable parameter, 1-D ones included. True
    # keeps that; False exempts biases, norms and the CLS token (a deliberate deviation).
    decay_1d_params: bool = True
    warmup_steps: int = 50_040
    min_lr: float = 0.0
    clip_norm: float = 4.0  # 0 disables clipping


@dataclass
class DataConfig:
    train: str = "fashion-mnist:train"  # "fashion-mnist:train" or a folder of images
    cache_dir: str = "cache"
    channels: int = 3
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    on_bad_file: str = "skip"  # skip (count it in the log) | stop
    num_workers: int = 2
    limit: int = 0  # use only the first N training images (0: all)
    # speech: samples at 16 kHz; shorter files are dropped (and counted), longer ones randomly cropped
    min_samples: int = 32_000
    max_samples: int = 320_000
    # text: a byte-level BPE tokenizer file (tokenizer.json); "" trains one on data.train into the cache
    tokenizer: str = ""
    documents: str = "paragraph"  # text: a document is a blank-line-separated paragraph | a whole file


@dataclass
class GuardConfig:
    """Collapse guards (spec 1.10): stop when a std falls below its floor after `after_steps`."""

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
    time_budget_s: float = 0.0  # stop (and checkpoint) after this many seconds; 0: no limit
    precision: str = "auto"  # auto | fp32 | bf16
    compile: bool = False  # torch.compile the student encoder
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 1000  # updates between checkpoints (also written at the end)
    keep_checkpoints: int = 2  # step checkpoints kept besides `last`
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class Config:
    name: str = "custom"
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

    def validate(self) -> "Config":
        """Range checks that types alone cannot express."""
        m, d, k = self.model, self.masking, self.targets
        checks = [
            (m.modality in ("image", "audio", "text"), "model.modality", "must be image, audio or text"),
            (m.embed_dim % m.num_heads == 0, "model.embed_dim", "must be divisible by model.num_heads"),
            (1 <= k.top_k <= m.depth, "targets.top_k", f"must be in [1, model.depth={m.depth}]"),
            (k.layer_norm in ("instance", "layer", "none"), "targets.layer_norm", "must be instance, layer or none"),
            (k.final_norm in ("instance", "layer", "none"), "targets.final_norm", "must be instance, layer or none"),
            (d.kind in ("inverse_block", "block", "random"), "masking.kind", "must be inverse_block, block or random"),
            (0.0 < d.mask_prob < 1.0, "masking.mask_prob", "must be in (0, 1)"),
            (d.num_masks >= 1, "masking.num_masks", "must be >= 1"),
            (d.mask_length >= 1, "masking.mask_length", "must be >= 1"),
            (m.modality != "image" or m.image.image_size % m.image.patch_size == 0, "model.image.image_size",
             "must be a multiple of patch_size"),
            (self.decoder.dim % self.decoder.groups == 0 and m.embed_dim % self.decoder.groups == 0,
             "decoder.groups", "must divide decoder.dim and model.embed_dim"),
            (0.0 <= self.ema.decay <= 1.0 and 0.0 <= self.ema.end_decay <= 1.0, "ema.decay", "must be in [0, 1]"),
            (self.train.batch_size >= 1, "train.batch_size", "must be >= 1"),
            (self.train.grad_accum >= 1, "train.grad_accum", "must be >= 1"),
            (self.train.precision in ("auto", "fp32", "bf16"), "train.precision", "must be auto, fp32 or bf16"),
            (self.train.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda"),
            (self.data.on_bad_file in ("skip", "stop"), "data.on_bad_file", "must be skip or stop"),
            (m.modality != "image" or len(self.data.mean) == self.data.channels == len(self.data.std), "data.mean",
             "data.mean and data.std need one value per channel"),
            (m.modality != "image" or self.data.channels == m.image.in_channels, "data.channels",
             "must equal model.image.in_channels"),
            (m.modality != "audio" or len(m.audio.conv_layers) >= 1, "model.audio.conv_layers", "needs >= 1 layer"),
            (m.modality != "audio" or m.embed_dim % m.audio.conv_pos_groups == 0, "model.audio.conv_pos_groups",
             "must divide model.embed_dim"),
            (0 < self.data.min_samples <= self.data.max_samples, "data.min_samples",
             "must be in (0, data.max_samples]"),
            (self.decoder.projection_layers in (1, 2), "decoder.projection_layers", "must be 1 or 2"),
            (m.modality != "text" or m.prenet_depth == 0, "model.prenet_depth", "must be 0 for text (spec 3.4)"),
            (m.modality != "text" or m.text.vocab_size > 4, "model.text.vocab_size", "must exceed the 4 special tokens"),
            (self.data.documents in ("paragraph", "file"), "data.documents", "must be paragraph or file"),
            (self.optim.lr > 0, "optim.lr", "must be > 0"),
            (self.train.max_steps >= 1, "train.max_steps", "must be >= 1"),
        ]
        for ok, key, message in checks:
            if not ok:
                raise ConfigError(f"{key}: {message}")
        return self


# ---------------------------------------------------------------------------------------------
# Loading, overriding and saving


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


def _update(obj: Any, values: dict, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = [n for n in names if n.startswith(str(key)[:3])]
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _update(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return data or {}


def load_config(preset_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a config from a preset name (e.g. `image-tiny`) or a YAML path, then apply
    `key=value` overrides (values parsed as YAML: `optim.lr=3e-4`, `data.hflip=false`)."""
    path = Path(preset_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{preset_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset '{preset_or_path}'; available: {', '.join(preset_names())}")
    elif not path.exists():
        raise ConfigError(f"config file not found: {path}")
    config = Config()
    _update(config, _read_yaml(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        value = yaml.safe_load(raw) if raw != "" else ""
        nested: dict = {}
        cursor = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        _update(config, nested)
    return config.validate()


def config_from_dict(values: dict) -> Config:
    config = Config()
    _update(config, values)
    return config.validate()


def config_to_dict(config: Any) -> dict:
    """Plain nested dict (tuples as lists) suitable for YAML and JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
