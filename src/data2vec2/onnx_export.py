"""ONNX export (`data2vec2 export RUN --out DIR --format onnx`) of an encoder or of a fine-tuned model.

The graph is the encoder's plain forward on whole, unmasked inputs, (B, ...) -> features
(B, extra + T, D), the same tensor `Encoder.forward(inputs).x` returns: no masking, decoder,
teacher or loss. The batch axis is dynamic; so is the length for modalities whose inputs vary in
length (`LocalEncoder.variable_length`: a waveform's samples, a text's tokens). DIR gets
model.onnx and config.json (our model config, the input's description and the modality's data
keys: the image normalisation, the text tokenizer, ...).

A fine-tuning run exports the whole model instead: inputs -> the task's scores (`scores` of its
objective: logits; CTC: log-probabilities per frame; regression: values), with its labels; audio
takes whole clips of one length (no padding mask).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from . import __version__
from .config import Config, config_to_dict
from .encoder import Encoder
from .errors import ConfigError
from .export import write_json
from .nn.blocks import fused_attention_only

if TYPE_CHECKING:
    from .modality import Modality

FORMAT = "data2vec2-onnx"


class FeatureGraph(nn.Module):
    """What is exported: inputs -> the encoder's last hidden states."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, inputs: Tensor) -> Tensor:
        return self.encoder(inputs).x  # (B, extra + T, D)


class ScoresGraph(nn.Module):
    """What a fine-tuned model exports: inputs -> its task's scores (objective.scores)."""

    def __init__(self, objective: nn.Module):
        super().__init__()
        self.objective = objective

    def forward(self, inputs: Tensor) -> Tensor:
        return self.objective.scores(inputs)


def example_inputs(config: Config, modality: "Modality", batch: int = 2) -> Tensor:
    """`batch` samples of the preset's size through the modality's real collate."""
    inputs, _ = modality.synthetic_batch(replace(config, train=replace(config.train, batch_size=batch)))
    return inputs["inputs"]


def _check_extra() -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError("--format onnx needs the onnx extra: pip install 'data2vec2[onnx]'") from None


def _export(graph: nn.Module, example: Tensor, variable_length: bool, output: str, path: Path) -> None:
    """torch.onnx.export (dynamo) of `graph` with a dynamic batch (and length) to `path`, atomically."""
    dims = {0: torch.export.Dim.AUTO}
    if variable_length:
        dims[1] = torch.export.Dim.AUTO
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # its notes on its own internals (operators of absent libraries)
    try:
        with warnings.catch_warnings(), fused_attention_only(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph.eval(), (example,), dynamo=True, input_names=["inputs"],
                                        output_names=[output], dynamic_shapes={"inputs": dims}, verbose=False)
    finally:
        exporter_log.setLevel(level)
    tmp = path.with_name("." + path.name + ".tmp")
    program.save(str(tmp))
    tmp.replace(path)


def export_finetuned_onnx(model, out_dir: str | Path) -> Path:
    """The whole fine-tuned model (`predict.FinetunedModel`): inputs -> scores (logits; CTC:
    log-probabilities per frame; regression: values), with its labels and preprocessing."""
    _check_extra()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config, objective = model.config, model.objective
    batch, _, _ = model.task.synthetic_batch(replace(config, train=replace(config.train, batch_size=2)))
    example = batch["inputs"]
    variable = objective.encoder.local_encoder.variable_length
    _export(ScoresGraph(objective), example, variable, "scores", out / "model.onnx")
    with torch.no_grad():
        scores = objective.scores(example)
    from .predict import export_data_keys

    data = export_data_keys(config, model.task, out)  # (the tokenizer copied in: the export stands alone)
    write_json(out / "config.json", {
        "format": FORMAT + "-finetuned", "version": __version__, "model": config_to_dict(config.model),
        "task": config.finetune.task, "labels": model.labels, "data": data,
        "inputs": {"name": "inputs", "dtype": str(example.dtype).removeprefix("torch."),
                   "shape": ["batch", "length"] if variable else ["batch"] + list(example.shape[1:])},
        "outputs": {"name": "scores", "shape": ["batch"] + (["frames"] if scores.ndim == 3 else []) + [scores.shape[-1]]}})
    return out


def export_onnx(encoder: Encoder, config: Config, modality: "Modality", out_dir: str | Path) -> Path:
    _check_extra()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    example = example_inputs(config, modality)
    _export(FeatureGraph(encoder), example, encoder.local_encoder.variable_length, "features", out / "model.onnx")
    meta = {"format": FORMAT, "version": __version__, "model": config_to_dict(config.model),
            "inputs": {"name": "inputs", "dtype": str(example.dtype).removeprefix("torch."),
                       "shape": ["batch", "length"] if encoder.local_encoder.variable_length else
                       ["batch"] + list(example.shape[1:])},
            "outputs": {"name": "features", "shape": ["batch", "extra + tokens", config.model.embed_dim],
                        "extra_tokens": encoder.num_extra_tokens},
            "data": config_to_dict(config.data.settings)}  # the modality's data keys: image mean and std, ...
    write_json(out / "config.json", meta)
    return out
