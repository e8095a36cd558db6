"""Image evaluation over a frozen encoder: linear probe and k-nearest-neighbour accuracy."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import Config, ModelConfig, config_from_dict
from ..data.images import open_image_source
from ..errors import DataError
from ..export import load_encoder
from ..model import build_encoder
from ..train.checkpoint import load_checkpoint
from .features import extract_features
from .knn import knn_accuracy
from .probe import linear_probe


def load_encoder_any(path: str | Path) -> tuple[torch.nn.Module, Config]:
    """An encoder from an export folder, a run folder (its last checkpoint) or a checkpoint file.
    Training checkpoints give the *student* encoder, as fine-tuning in the reference does."""
    path = Path(path)
    if (path / "config.json").exists():
        import json

        encoder = load_encoder(path)
        config = Config()
        from ..config import _update

        _update(config.model, json.loads((path / "config.json").read_text())["model"], "model.")
        data = json.loads((path / "config.json").read_text()).get("data", {})
        if data:
            _update(config.data, data, "data.")
        return encoder, config
    ckpt = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not ckpt.exists():
        raise DataError(f"{path}: not an exported encoder (config.json), a run folder or a checkpoint file")
    state = load_checkpoint(ckpt)
    config = config_from_dict(state["config"])
    encoder = build_encoder(config)
    prefix = "encoder."
    encoder.load_state_dict({k[len(prefix):]: v for k, v in state["student"].items() if k.startswith(prefix)})
    return encoder.eval(), config


def features_for(encoder, config: Config, spec: str, *, pool: str, device: str, progress: bool, bf16: bool):
    source = open_image_source(spec, Path(config.data.cache_dir), config.data.channels)
    return extract_features(encoder, source, image_size=config.model.image.image_size, mean=config.data.mean,
                            std=config.data.std, pool=pool, device=device, bf16=bf16, progress=progress,
                            desc=f"features {spec}")


def evaluate_encoder(encoder, config: Config, train_spec: str, test_spec: str, *, pool: str = "mean",
                     knn: bool = True, probe: bool = True, device: str = "cpu", bf16: bool = False,
                     progress: bool = True, seed: int = 0) -> dict:
    """Linear-probe and kNN accuracy of a frozen encoder (fractions in [0, 1])."""
    train_x, train_y = features_for(encoder, config, train_spec, pool=pool, device=device, progress=progress, bf16=bf16)
    test_x, test_y = features_for(encoder, config, test_spec, pool=pool, device=device, progress=progress, bf16=bf16)
    if (train_y < 0).any() or (test_y < 0).any():
        raise DataError("evaluation needs labelled images: put each class in its own sub-folder")
    result: dict = {"num_train": len(train_y), "num_test": len(test_y), "pool": pool}
    if probe:
        r = linear_probe(train_x, train_y, test_x, test_y, seed=seed)
        result.update(probe_acc=r.test_accuracy, probe_val_acc=r.val_accuracy, probe_weight_decay=r.weight_decay)
    if knn:
        result["knn_acc"] = knn_accuracy(train_x, train_y, test_x, test_y)
    return result


def random_encoder(model_config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised encoder of the same architecture (the baseline)."""
    config = Config()
    config.model = model_config
    torch.manual_seed(seed)
    return build_encoder(config).eval()
