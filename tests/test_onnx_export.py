"""`data2vec2 export --format onnx`: the exported graph, run by onnxruntime, gives the PyTorch
encoder's features (fp32, max abs difference <= 1e-4) at other batch sizes and, for audio and
text, other lengths than the one it was traced with."""

import json

import numpy as np
import pytest
import torch
from conftest import settings_of

from data2vec2 import load_config
from data2vec2.cli import main
from data2vec2.modalities import MODALITIES
from data2vec2.model import random_encoder
from data2vec2.onnx_export import example_inputs

ort = pytest.importorskip("onnxruntime")

def test_onnx_features_match_pytorch(tiny, tmp_path):
    config = load_config(*tiny)
    modality = config.model.modality
    encoder = random_encoder(config.model, MODALITIES[modality], seed=1)
    # the modality's own export (image: with its normalisation; text: with its tokenizer)
    MODALITIES[modality].export(encoder, config, tmp_path / "native")
    assert main(["export", str(tmp_path / "native"), "--out", str(tmp_path / "onnx"), "--format", "onnx"]) == 0
    meta = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert meta["format"] == "data2vec2-onnx" and meta["model"]["modality"] == modality

    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    x = example_inputs(config, MODALITIES[modality], batch=3)
    inputs = [x, x[:1]]
    if encoder.local_encoder.variable_length:  # the length is dynamic too
        inputs.append(x[:, : x.shape[1] * 2 // 3].contiguous())
    if hasattr(settings_of(modality), "padded"):  # padding is masked in attention as in PyTorch
        inputs.append(settings_of(modality).padded(x))
    for batch in inputs:
        with torch.no_grad():
            want = encoder(batch).x.numpy()
        got = session.run(["features"], {"inputs": batch.numpy()})[0]
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4, (modality, tuple(batch.shape))
