"""Encoder-only export (`model.safetensors` + `config.json`) and the one loader for every artefact.

    encoder = data2vec2.load_encoder("runs/demo/export")   # an export, a run folder or a checkpoint
    features = encoder.embed(images)                         # (B, D)

An export's config.json holds the format, the package version, the model config (only the active
modality's settings) and the data keys the modality needs to feed the encoder (image
normalisation). A modality may export in a format of its own (text: a `transformers` RoBERTa
folder); its config.json then holds the same under a "data2vec2" entry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from . import __version__
from .config import Config, config_from_dict, config_to_dict
from .encoder import Encoder
from .errors import ConfigError, DataError, TrainingError
from .model import build_encoder
from .train.checkpoint import SHARDED_INDEX, STATE_FILE, load_checkpoint, with_current_names

if TYPE_CHECKING:
    from .modality import Modality

FORMAT = "data2vec2-encoder"


def check_out(path: Path, overwrite: bool, folder: bool) -> None:
    """Refuse to write over an existing output (a file, or a folder that is not empty) unless
    --overwrite is given; refuse a file where a folder is wanted and the reverse."""
    if not path.exists():
        return
    if folder != path.is_dir():
        raise DataError(f"--out {path} is a {'file' if folder else 'folder'}; a {'folder' if folder else 'file'} "
                        f"is written there")
    if not overwrite and (not folder or any(path.iterdir())):
        raise DataError(f"--out {path} exists{' and is not empty' if folder else ''}: pass --overwrite to replace "
                        f"it, or choose another path")


def write_json(path: Path, values: dict) -> None:
    """Write JSON atomically (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(values, indent=2))
    os.replace(tmp, path)


def write_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def write_encoder(encoder: torch.nn.Module, config: Config, out_dir: str | Path, data: dict | None = None) -> Path:
    """Our export format: the encoder's weights and its model config (plus `data`, the data keys
    needed to feed it) in `out_dir`, each file written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(encoder.state_dict(), out / "model.safetensors", {"format": FORMAT})
    meta = {"format": FORMAT, "version": __version__, "model": config_to_dict(config.model)}
    if data:
        meta["data"] = data
    write_json(out / "config.json", meta)
    return out


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    return meta


def _modality_of(values: dict, source: Path, modalities: Mapping[str, "Modality"]) -> "Modality":
    name = (values.get("model") or {}).get("modality") if isinstance(values.get("model"), dict) else None
    if name not in modalities:
        known = ", ".join(modalities)
        raise DataError(f"{source}: holds a model of modality {name!r}; this command takes {known}")
    return modalities[name]


def _saved_config(values: dict, modalities: Mapping[str, "Modality"], source: Path, **options) -> Config:
    try:
        return config_from_dict(values, modalities, saved=True, source=str(source), **options)
    except ConfigError as e:
        raise DataError(f"{source}: {e}") from None


def _encoder_for(config: Config, record: "Modality", shapes: dict[str, tuple[int, ...]], source: Path) -> Encoder:
    """The encoder that `config` describes, built only after its parameter names and shapes are
    checked against the stored ones (`shapes`): a built skeleton on the meta device allocates
    nothing, so a crafted config cannot ask for memory the stored weights do not justify."""
    with torch.device("meta"):
        skeleton = build_encoder(config.model, record)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    given = with_current_names(shapes, skeleton)
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [f"{k} {tuple(given[k])} != {v}" for k, v in expected.items() if k in given and tuple(given[k]) != v]
    if missing or unexpected or wrong:
        more = " ..." if max(len(missing), len(unexpected), len(wrong)) > 5 else ""
        raise DataError(f"{source} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                        f"wrong shapes {wrong[:5]}{more}")
    return build_encoder(config.model, record)


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, from its header only."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise DataError(f"cannot read {path}: {e}") from None


def _load_export(folder: Path, modalities: Mapping[str, "Modality"]) -> tuple[Encoder, Config]:
    cfg_file, weights = folder / "config.json", folder / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.exists():
            raise DataError(f"{f} not found: expected an exported encoder folder (data2vec2 export)")
    meta = _read_json(cfg_file)
    if meta.get("format") == "data2vec2-finetuned":
        raise DataError(f"{folder}: a fine-tuned model (encoder and head), not an exported encoder; use it with "
                        f"data2vec2 predict or data2vec2.load_model")
    info = meta["data2vec2"] if isinstance(meta.get("data2vec2"), dict) else meta  # a foreign format
    if info.get("format") is None or not isinstance(info.get("model"), dict):
        raise DataError(f"{cfg_file} is not a data2vec2 export config")
    record = _modality_of(info, cfg_file, modalities)
    if info.get("format") == FORMAT:
        state, shapes, data = None, _stored_shapes(weights), meta.get("data", {})
    elif record.read_export is not None:
        state, data = record.read_export(folder, meta)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    else:
        raise DataError(f"{cfg_file}: unknown export format {info.get('format')!r}")
    config = _saved_config({"model": info["model"], "data": data if isinstance(data, dict) else {}}, modalities,
                           cfg_file, sections=("model", "data"))
    encoder = _encoder_for(config, record, shapes, weights)
    if state is None:  # read only once the config is known to fit the file
        try:
            state = load_file(str(weights))
        except Exception as e:  # safetensors raises its own error types
            raise DataError(f"cannot read {weights}: {e}") from None
    encoder.load_state_dict(with_current_names(state, encoder))
    return encoder.eval(), config


def _load_checkpoint(path: Path, modalities: Mapping[str, "Modality"]) -> tuple[Encoder, Config]:
    try:
        state = load_checkpoint(path)
    except TrainingError as e:  # here the checkpoint is input data
        raise DataError(str(e)) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "task" in state:
        raise DataError(f"{path}: a fine-tuning checkpoint (encoder and head), not a pre-training one; use it with "
                        f"data2vec2 predict or export")
    if not isinstance(state, dict) or not isinstance(state.get("student"), dict):
        raise DataError(f"{path} is not a data2vec2 training checkpoint")
    record = _modality_of(state.get("config", {}), path, modalities)
    config = _saved_config(state["config"], modalities, path)
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state["student"].items() if k.startswith(prefix)}
    encoder = _encoder_for(config, record, {k: tuple(v.shape) for k, v in weights.items()}, path)
    encoder.load_state_dict(with_current_names(weights, encoder))
    return encoder.eval(), config


def _load_sharded_checkpoint(folder: Path, modalities: Mapping[str, "Modality"]) -> tuple[Encoder, Config]:
    """The student encoder of a sharded (train.fsdp) checkpoint folder, gathered in this process."""
    from .train.sharded_checkpoint import load_sharded_weights, sharded_shapes

    try:
        state = load_checkpoint(folder / STATE_FILE)
        shapes = sharded_shapes(folder, "student.encoder.")
    except TrainingError as e:  # here the checkpoint is input data
        raise DataError(str(e)) from None
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
        raise DataError(f"{folder} is not a data2vec2 training checkpoint")
    record = _modality_of(state["config"], folder, modalities)
    config = _saved_config(state["config"], modalities, folder)
    encoder = _encoder_for(config, record, shapes, folder)
    weights = encoder.state_dict()
    try:
        load_sharded_weights(weights, folder, "student.encoder.")
    except TrainingError as e:
        raise DataError(str(e)) from None
    return encoder.eval(), config


def load_encoder_and_config(path: str | Path, modalities: Mapping[str, "Modality"]) -> tuple[Encoder, Config]:
    """The encoder (eval mode) and config of an export folder, a run folder (its last checkpoint),
    a checkpoint file or a sharded checkpoint folder. Training checkpoints give the *student*
    encoder, as fine-tuning in the reference does. `modalities`: the records it may be (a command
    that needs one modality passes only that one, and any other is an error naming both)."""
    path = Path(path)
    if (path / "config.json").exists():
        return _load_export(path, modalities)
    if (path / SHARDED_INDEX).exists():
        return _load_sharded_checkpoint(path, modalities)
    if path.is_dir() and not (path / "checkpoints" / "last.pt").exists() and (path / "checkpoints" / "last").is_dir():
        return _load_sharded_checkpoint(path / "checkpoints" / "last", modalities)
    checkpoint = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not checkpoint.exists():
        raise DataError(f"{path}: not an exported encoder (config.json), a run folder or a checkpoint file")
    return _load_checkpoint(checkpoint, modalities)
