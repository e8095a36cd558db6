"""One test body for every modality and every shipped preset: it builds with the documented size, a
training step runs and learns, the targets ignore the student's masks, a run saves, exports and
loads back to the same encoder, and a resumed run reproduces an uninterrupted one exactly."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import data2vec2
from data2vec2.config import config_from_dict, config_to_dict, preset_names
from data2vec2.masking import num_masked
from data2vec2.modalities import MODALITIES
from data2vec2.model import build_encoder
from data2vec2.train.logger import read_metrics
from data2vec2.train.setup import setup_training
from data2vec2.train.step import train_step

# (encoder, decoder) parameters of each preset. Base sizes as published: ViT-B 85.6M, the wav2vec 2.0
# base encoder 93.2M, RoBERTa-base 124.1M (with its 28.9M-parameter text decoder).
PARAMETERS = {
    "image-tiny": (2_673_024, 162_048), "image-base": (85_647_360, 2_585_856),
    "image-large": (303_099_904, 5_967_872), "image-huge": (630_435_840, 6_639_872),
    "audio-tiny": (2_221_060, 39_168), "audio-base": (93_163_532, 619_776), "audio-large": (313_275_408, 1_908_736),
    "text-tiny": (1_850_368, 361_088), "text-base": (124_054_272, 28_907_520), "text-large": (354_309_120, 31_070_464),
}


PRE_TRAINING_PRESETS = [name for name in preset_names() if not data2vec2.load_config(name).finetune.task]


def test_every_shipped_preset_is_covered():
    assert sorted(PARAMETERS) == PRE_TRAINING_PRESETS  # (the fine-tuning presets: test_finetune.py)


@pytest.mark.parametrize("preset", [pytest.param(name, marks=pytest.mark.slow) if name.endswith(("-large", "-huge"))
                                    else name for name in PRE_TRAINING_PRESETS])
def test_preset_builds_with_its_size_and_saves_only_its_modality(preset):
    config = data2vec2.load_config(preset)
    record = MODALITIES[config.model.modality]
    torch.manual_seed(0)
    encoder, decoder = build_encoder(config.model, record), record.decoder(config)
    counts = (sum(p.numel() for p in encoder.parameters()), sum(p.numel() for p in decoder.parameters()))
    assert counts == PARAMETERS[preset]
    saved = config_to_dict(config)
    assert saved["version"] == data2vec2.__version__
    assert [name for name in MODALITIES if name in saved["model"]] == [config.model.modality]
    assert config_to_dict(config_from_dict(saved, MODALITIES, saved=True)) == saved  # a saved config reads back


def _batch(config, record) -> dict:
    """The first micro-batch of the modality's real pre-training data, through its collate."""
    data = record.pretraining_data(config)
    return data.collate([data.dataset[i] for i in range(config.train.batch_size)])


def test_a_training_step_runs_and_moves_student_and_teacher(tiny):
    preset, overrides = tiny
    config = data2vec2.load_config(preset, overrides + ["optim.warmup_steps=0"])
    record = MODALITIES[config.model.modality]
    batch = _batch(config, record)
    B, T = batch["inputs"].shape[0], batch["mask"].shape[1]
    M = config.masking.num_masks
    assert batch["mask"].shape == (B * M, T) and batch["noise_seed"].shape == (B,) and not batch["errors"]
    counts = batch["mask"].sum(1)
    assert (counts == counts[0]).all()  # every clone masks the same number of tokens
    if config.masking.kind != "random" or record.local_encoder(config.model).padding_mask(batch["inputs"]) is None:
        assert int(counts[0]) == num_masked(config.masking.kind, T, config.masking.mask_prob)

    training = setup_training(config, record)
    student = copy.deepcopy(training.model.student.state_dict())
    teacher = copy.deepcopy(training.model.teacher.state_dict())
    result = train_step(training, [batch], step=0, with_metrics=True)
    assert np.isfinite(result.loss) and result.loss > 0 and float(result.grad_norm) > 0
    assert {"reg_loss", "target_std", "pred_std", "local_std", "masked_fraction"} <= result.metrics.keys()
    assert result.metrics["masked_fraction"] == pytest.approx(float(counts[0]) / T)
    for name, p in training.model.student.named_parameters():
        assert not torch.equal(p, student[name]), f"{name} was not updated"
    moved = [name for name, t in training.model.teacher.state_dict().items() if not torch.equal(t, teacher[name])]
    assert moved and all(n in student or f"encoder.{n}" in student for n in moved)


def test_targets_do_not_depend_on_the_student_masks(tiny):
    preset, overrides = tiny
    config = data2vec2.load_config(preset, overrides)
    record = MODALITIES[config.model.modality]
    model = data2vec2.build_model(config).train()
    first = _batch(config, record)
    second = dict(first, mask=first["mask"].roll(3, dims=1))  # other masks (same counts), same inputs
    assert not torch.equal(first["mask"], second["mask"])
    torch.manual_seed(0)
    local = model.encoder.local_features(first["inputs"])  # the student's, as the teacher may share it
    targets = model.forward_targets(first["inputs"], local)
    model(first["inputs"], first["mask"], first["noise_seed"])
    model(second["inputs"], second["mask"], second["noise_seed"])
    torch.testing.assert_close(model.forward_targets(first["inputs"], local), targets, rtol=0, atol=0)
    assert targets.shape == (first["inputs"].shape[0], first["mask"].shape[1], config.model.embed_dim)
    assert targets.dtype == torch.float32


def test_save_export_load_round_trip(tiny, tmp_path):
    preset, overrides = tiny
    config = data2vec2.load_config(preset, overrides + ["train.max_steps=2"])
    record = MODALITIES[config.model.modality]
    data2vec2.pretrain(config, tmp_path / "run", progress=False)
    encoder, loaded_config = data2vec2.load_encoder_and_config(tmp_path / "run")
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    for name, value in encoder.state_dict().items():  # a run folder gives the student's encoder
        torch.testing.assert_close(value, state["student"][f"encoder.{name}"])
    out = record.export(encoder, loaded_config, tmp_path / "export")
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    exported = data2vec2.load_encoder(out)
    _, exported_config = data2vec2.load_encoder_and_config(out)
    assert config_to_dict(exported_config.model) == config_to_dict(config.model)
    inputs = _batch(config, record)["inputs"]
    with torch.no_grad():
        torch.testing.assert_close(exported(inputs).x, encoder(inputs).x)
        for pool in ("mean", "cls") if encoder.local_encoder.has_cls else ("mean",):
            torch.testing.assert_close(exported.embed(inputs, pool), encoder.embed(inputs, pool))


def test_resume_reproduces_an_uninterrupted_run(tiny, tmp_path):
    """With the presets' dropouts on, and a DataLoader worker: the same losses and weights, bit for bit."""
    preset, overrides = tiny
    config = data2vec2.load_config(preset, overrides + ["train.max_steps=6", "train.checkpoint_every=3",
                                                       "data.num_workers=1"])
    data2vec2.pretrain(config, tmp_path / "straight", progress=False)
    data2vec2.pretrain(config, tmp_path / "resumed", progress=False, max_steps=3)  # "interrupted" after 3 updates
    result = data2vec2.pretrain(config, tmp_path / "resumed", progress=False)
    assert result["steps"] == 6
    losses = {run: [r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl")] for run in ("straight", "resumed")}
    assert len(losses["straight"]) == 6 and losses["resumed"] == losses["straight"]
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)
    for part in ("student", "teacher"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name}"


def test_sharded_training_matches_unsharded_in_every_modality(tiny, tmp_path):
    """train.fsdp in one process, stopped after 2 updates and resumed from its sharded checkpoint:
    the losses and the student encoder of the unsharded run (dropouts on)."""
    preset, overrides = tiny
    o = overrides + ["train.max_steps=4", "train.checkpoint_every=2"]
    data2vec2.pretrain(data2vec2.load_config(preset, o), tmp_path / "plain", progress=False)
    sharded = data2vec2.load_config(preset, o + ["train.fsdp=true"])
    data2vec2.pretrain(sharded, tmp_path / "sharded", progress=False, max_steps=2)
    data2vec2.pretrain(sharded, tmp_path / "sharded", progress=False)
    losses = {run: [r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl")] for run in ("plain", "sharded")}
    np.testing.assert_allclose(losses["sharded"], losses["plain"], rtol=1e-5)
    a, b = data2vec2.load_encoder(tmp_path / "sharded"), data2vec2.load_encoder(tmp_path / "plain")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def test_the_benchmark_command_times_every_modality(tiny, tmp_path, capsys):
    from data2vec2.cli import main

    preset, overrides = tiny
    out = tmp_path / "speed.jsonl"
    assert main(["benchmark", preset, "--precision", "fp32", "--steps", "1", "--out", str(out), *overrides]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == line
    config = data2vec2.load_config(preset, overrides)
    assert line["precision"] == "float32" and line["batch"] == config.train.batch_size and not line["compile"]
    assert line["step_s"] > 0 and 0 < line["mfu"] < 1.5 and line["peak_memory_mb"] > 0
    assert line["samples_per_s"] == pytest.approx(line["batch"] / line["step_s"], rel=1e-2)
    assert {"cpu", "cpu_flags", "torch", "data2vec2"} <= set(line)
