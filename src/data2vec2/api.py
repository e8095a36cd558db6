"""The public functions: each picks the modality's record from the table and calls the core."""

from __future__ import annotations

from pathlib import Path

from . import config as _config
from .config import Config
from .export import load_encoder_and_config as _load_encoder_and_config
from .modalities import MODALITIES
from .model import build_model as _build_model
from .train import loop as _loop


def load_config(preset_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A preset name (`data2vec2 presets`) or a YAML file, then `key=value` overrides."""
    return _config.load_config(preset_or_path, overrides, modalities=MODALITIES)


def config_from_dict(values: dict, saved: bool = False) -> Config:
    """A config from a nested dict; `saved`: written by a (maybe other) version of this package."""
    return _config.config_from_dict(values, MODALITIES, saved=saved)


def build_model(config: Config):
    """The Data2Vec2 model (student, decoder, EMA teacher) of a config."""
    return _build_model(config, MODALITIES[config.model.modality])


def pretrain(config: Config, run_dir: str | Path, **options) -> dict:
    """Pre-train into `run_dir` (resuming from its last checkpoint); see `train.loop.pretrain`."""
    return _loop.pretrain(config, run_dir, MODALITIES[config.model.modality], **options)


def load_encoder(path: str | Path, device: str = "cpu"):
    """The encoder of an export folder, a run folder or a checkpoint file, in eval mode."""
    return _load_encoder_and_config(path, MODALITIES)[0].to(device)


def load_encoder_and_config(path: str | Path):
    """(encoder, config) of an export folder, a run folder or a checkpoint file."""
    return _load_encoder_and_config(path, MODALITIES)

