"""The public functions: each picks the modality's record from the table and calls the core."""

from __future__ import annotations

from pathlib import Path

from . import config, export, model, objectives
from .config import Config
from .encoder import Encoder
from .modalities import MODALITIES
from .train import loop


def load_config(preset_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A preset name (`data2vec2 presets`) or a YAML file, then `key=value` overrides."""
    return config.load_config(preset_or_path, overrides, modalities=MODALITIES)


def config_from_dict(values: dict, saved: bool = False) -> Config:
    """A config from a nested dict; `saved`: written by a (maybe other) version of this package."""
    return config.config_from_dict(values, MODALITIES, saved=saved)


def build_model(run_config: Config) -> model.Data2Vec2:
    """The model of a config's objective: for data2vec2 (the default) Data2Vec2 (student, decoder,
    EMA teacher); a baseline's of objectives/ otherwise."""
    return objectives.build_model(run_config, MODALITIES[run_config.model.modality])


def pretrain(run_config: Config, run_dir: str | Path, **options) -> dict:
    """Pre-train into `run_dir` (resuming from its last checkpoint); see `train.loop.pretrain`."""
    return loop.pretrain(run_config, run_dir, MODALITIES[run_config.model.modality], **options)


def load_encoder(path: str | Path, device: str = "cpu") -> Encoder:
    """The encoder of an export folder, a run folder or a checkpoint file, in eval mode."""
    return export.load_encoder_and_config(path, MODALITIES)[0].to(device)


def load_model(path: str | Path, device: str = "cpu"):
    """The fine-tuned model (encoder and head, labels, preprocessing) of an export of a fine-tuning
    run, a fine-tuning run folder (its best checkpoint) or checkpoint: `.predict(items)`, `.embed`."""
    from .predict import load_model as load

    model = load(path, MODALITIES)
    model.objective.to(device)
    return model


def load_encoder_and_config(path: str | Path) -> tuple[Encoder, Config]:
    """(encoder, config) of an export folder, a run folder or a checkpoint file."""
    return export.load_encoder_and_config(path, MODALITIES)
