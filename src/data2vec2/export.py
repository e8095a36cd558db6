"""Encoder-only export: `model.safetensors` + `config.json`, loadable without the training code.

    encoder = data2vec2.load_encoder("runs/demo/export")
    features = encoder.embed(images, pool="mean")   # (B, D)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig, _update, config_to_dict
from .errors import DataError

FORMAT = "data2vec2-encoder"


def export_encoder(encoder: torch.nn.Module, model_config: ModelConfig, out_dir: str | Path,
                   extra: dict | None = None) -> Path:
    """Write the encoder's weights and its model config into `out_dir` (atomically per file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from . import __version__

    state = {k: v.detach().float().contiguous().cpu() for k, v in encoder.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    os.replace(tmp, out / "model.safetensors")
    meta = {"format": FORMAT, "version": __version__, "model": config_to_dict(model_config), **(extra or {})}
    tmp = out / "config.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / "config.json")
    return out


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load an exported encoder (a folder with model.safetensors and config.json) in eval mode."""
    from .model import build_encoder
    from .config import Config

    folder = Path(path)
    cfg_file, weights = folder / "config.json", folder / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.exists():
            raise DataError(f"{f} not found: expected an exported encoder folder (data2vec2 export)")
    try:
        meta = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{cfg_file} is not valid JSON: {e}") from None
    if isinstance(meta.get("data2vec2"), dict):  # a text encoder exported as a transformers model
        from .modalities.text_hf import load_text_hf

        return load_text_hf(folder)[0].to(device)
    if meta.get("format") != FORMAT:
        raise DataError(f"{cfg_file} is not a data2vec2 encoder config")
    config = Config()
    _update(config.model, meta["model"], "model.")
    encoder = build_encoder(config)
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise DataError(f"cannot read {weights}: {e}") from None
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(f"{weights} does not match its config: missing {missing}, unexpected {unexpected}")
    return encoder.to(device).eval()
