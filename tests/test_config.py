"""Configs: one modality's settings only, saved configs that outlive versions, no dead switches."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import yaml

import data2vec2
from data2vec2.config import ConfigWarning, config_to_dict
from data2vec2.errors import ConfigError


def saved(preset: str, *overrides: str) -> dict:
    return config_to_dict(data2vec2.load_config(preset, list(overrides)))


def test_saved_config_holds_the_version_and_only_the_active_modality():
    values = saved("audio-tiny")
    assert values["version"] == data2vec2.__version__
    assert "audio" in values["model"] and "image" not in values["model"] and "text" not in values["model"]
    assert "min_samples" in values["data"] and "mean" not in values["data"] and "tokenizer" not in values["data"]
    image = saved("image-tiny")
    assert image["data"]["mean"] == [0.286] and "min_samples" not in image["data"]


def test_another_modalitys_setting_is_rejected_with_a_message():
    with pytest.raises(ConfigError, match="model.audio.*audio modality; this config is image"):
        data2vec2.load_config("image-tiny", ["model.audio.alibi=false"])
    with pytest.raises(ConfigError, match="data.tokenizer.*text modality; this config is image"):
        data2vec2.load_config("image-tiny", ["data.tokenizer=tok.json"])
    with pytest.raises(ConfigError, match="model.modality: must be one of image, audio, text"):
        data2vec2.load_config("image-tiny", ["model.modality=video"])


def test_unknown_key_in_a_saved_config_is_a_warning_naming_it():
    values = saved("image-tiny")
    values["model"]["image"]["patch_dropout"] = 0.1  # written by a newer version
    values["optim"]["lookahead"] = True
    with pytest.warns(ConfigWarning) as record:
        config = data2vec2.config_from_dict(values, saved=True)
    messages = " ".join(str(w.message) for w in record)
    assert "model.image.patch_dropout" in messages and "optim.lookahead" in messages
    assert config_to_dict(config) == saved("image-tiny")
    with pytest.raises(ConfigError, match="unknown config key 'model.image.patch_dropout'"):  # not in a preset
        data2vec2.config_from_dict(values)


def test_a_saved_config_of_version_0_1_with_every_modality_loads_with_warnings():
    """0.1.0 saved every modality's settings and every data key; the others are now ignored."""
    values = saved("text-tiny", "data.tokenizer=tok.json")
    values["version"] = "0.1.0"
    values["model"]["image"] = {"image_size": 224, "patch_size": 16, "in_channels": 3}
    values["model"]["audio"] = {"alibi": True}
    values["data"] |= {"channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3, "min_samples": 1, "max_samples": 2}
    with pytest.warns(ConfigWarning, match="'model.image': a setting of the image modality; this config is text"):
        config = data2vec2.config_from_dict(values, saved=True)
    assert config.model.settings.vocab_size == 8192 and config.data.settings.tokenizer == "tok.json"


def test_a_missing_key_that_changes_the_mathematics_is_an_error():
    for section, key in (("targets", "top_k"), ("decoder", "kernel_size"), ("ema", "end_decay")):
        values = saved("image-tiny")
        del values[section][key]
        with pytest.raises(ConfigError, match=f"'{section}.{key}' is missing; it changes the model's mathematics"):
            data2vec2.config_from_dict(values, saved=True)
    values = saved("audio-tiny")
    del values["model"]["audio"]["ema_local_encoder"]
    with pytest.raises(ConfigError, match="'model.audio.ema_local_encoder' is missing"):
        data2vec2.config_from_dict(values, saved=True)
    values = saved("image-tiny")  # a missing training setting takes its default
    del values["optim"]["clip_norm"], values["train"]["log_every"]
    assert data2vec2.config_from_dict(values, saved=True).optim.clip_norm == 4.0


def test_an_export_config_with_an_unknown_key_loads(tmp_path):
    from data2vec2.modalities import MODALITIES

    config = data2vec2.load_config("audio-tiny", ["model.embed_dim=32", "model.num_heads=4", "model.depth=1",
                                                  "targets.top_k=1", "decoder.dim=16", "decoder.groups=4",
                                                  "model.audio.conv_pos_groups=4"])
    encoder = data2vec2.build_model(config).encoder
    out = MODALITIES["audio"].export(encoder, config, tmp_path / "export")
    meta = json.loads((out / "config.json").read_text())
    assert set(meta) == {"format", "version", "model"}  # an audio export carries no image normalisation
    meta["model"]["audio"]["renamed_in_a_later_version"] = 1
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.warns(ConfigWarning, match="model.audio.renamed_in_a_later_version"):
        loaded = data2vec2.load_encoder(out)
    wave = torch.randn(1, 8000)
    torch.testing.assert_close(loaded(wave).x, encoder.eval()(wave).x)


def test_settings_a_modality_would_ignore_are_rejected():
    with pytest.raises(ConfigError, match="random masking uses neither masking.mask_length"):
        data2vec2.load_config("text-tiny", ["masking.mask_length=5"])
    with pytest.raises(ConfigError, match="masking.kind: text masks random tokens or spans"):
        data2vec2.load_config("text-tiny", ["masking.kind=inverse_block", "masking.mask_length=5"])
    with pytest.raises(ConfigError, match="masking.kind: audio masks frames with 'block'"):
        data2vec2.load_config("audio-tiny", ["masking.kind=inverse_block"])
    with pytest.raises(ConfigError, match="loss.cls_weight: must be 0"):
        data2vec2.load_config("audio-tiny", ["loss.cls_weight=0.01"])
    with pytest.raises(ConfigError, match="decoder.projection_layers: must be 1"):
        data2vec2.load_config("image-tiny", ["decoder.projection_layers=2"])
    with pytest.raises(ConfigError, match="must be 0: the text context encoder is empty"):
        data2vec2.load_config("text-tiny", ["model.prenet_depth=1"])


def test_audio_honours_random_masking():
    from functools import partial

    from data2vec2.modalities.audio.data import AudioMaskingCollate
    from data2vec2.modalities.audio.encoder import num_frames

    config = data2vec2.load_config("audio-tiny", ["masking.kind=random", "masking.mask_length=3",
                                                  "masking.mask_prob_adjust=0.07"])
    collate = AudioMaskingCollate(config.masking, partial(num_frames, config.model.settings.conv_layers), seed=0)
    batch = collate([{"index": i, "inputs": torch.randn(16000)} for i in range(4)])
    T = batch["mask"].shape[1]
    assert (batch["mask"].sum(1) == T - int(T * 0.5)).all()
    runs = []  # random frames: runs of masked frames are short, unlike 5-frame blocks
    for row in batch["mask"].int():
        edges = torch.diff(torch.cat([torch.zeros(1, dtype=torch.int), row, torch.zeros(1, dtype=torch.int)]))
        starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
        runs += (ends - starts).tolist()
    assert sum(runs) / len(runs) < 3


@pytest.mark.parametrize("key,value,message", [
    ("model.num_heads", 0, "model.num_heads: must be >= 1 and divide"),
    ("model.num_heads", 5, "model.num_heads: must be >= 1 and divide"),
    ("train.checkpoint_every", 0, "train.checkpoint_every: must be >= 1"),
    ("train.log_every", 0, "train.log_every: must be >= 1"),
    ("optim.warmup_steps", -5, "optim.warmup_steps: must be >= 0"),
    ("train.keep_checkpoints", -1, "train.keep_checkpoints: must be >= 0"),
    ("data.num_workers", -2, "data.num_workers: must be >= 0, or -1"),
    ("model.image.patch_size", 0, "model.image.patch_size: must be in"),
    ("loss.beta", -1, "loss.beta: must be >= 0"),
])
def test_bad_values_are_one_line_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        data2vec2.load_config("image-tiny", [f"{key}={value}"])


def test_an_override_without_equals_is_named():
    with pytest.raises(ConfigError, match="override 'optim.lr' is not of the form key=value"):
        data2vec2.load_config("image-tiny", ["optim.lr"])


def test_an_override_without_equals_on_the_command_line_is_named_alone(capsys):
    """Wherever it stands among the options, the one word that is not key=value is named (not
    every override, as argparse's "unrecognized arguments" did); an unknown option is named alone."""
    from data2vec2.cli import main

    for argv in (["pretrain", "image-tiny", "--run-dir", "x", "train.max_steps=2", "train.max_steps"],
                 ["pretrain", "image-tiny", "train.max_steps=2", "--run-dir", "x", "train.max_steps"],
                 ["benchmark", "image-tiny", "--steps", "1", "train.max_steps"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "data2vec2: error: 'train.max_steps' is not an override: write key=value, e.g. train.max_steps=VALUE")
    with pytest.raises(SystemExit):
        main(["pretrain", "image-tiny", "--bogus", "train.max_steps=2"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == "data2vec2: error: unrecognized arguments: --bogus"


def test_loss_beta_gives_the_smooth_l1_loss():
    """loss.beta > 0: smooth L1 (Huber / beta) on each element instead of the squared error, as the
    reference's `loss_beta`; 0 (every preset): L2."""
    config = data2vec2.load_config("image-tiny", ["loss.beta=0.5"])
    model = data2vec2.build_model(config)
    pred, target = torch.tensor([[0.1, -2.0, 0.4]]), torch.tensor([[0.0, 0.0, 0.0]])
    scale = 1 / math.sqrt(config.model.embed_dim)
    # |d| < beta: 0.5 d^2 / beta; otherwise |d| - 0.5 beta
    expected = torch.tensor([[0.5 * 0.01 / 0.5, 2.0 - 0.25, 0.5 * 0.16 / 0.5]]) * scale
    torch.testing.assert_close(model.elementwise_loss(pred, target), expected)
    l2 = data2vec2.build_model(data2vec2.load_config("image-tiny"))
    torch.testing.assert_close(l2.elementwise_loss(pred, target), torch.tensor([[0.01, 4.0, 0.16]]) * scale)


def test_the_run_folder_config_reads_back(tmp_path, small_overrides):
    config = data2vec2.load_config("image-tiny", small_overrides + ["train.max_steps=1"])
    data2vec2.pretrain(config, tmp_path / "run", progress=False)
    values = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert values["version"] == data2vec2.__version__ and list(values["model"]).count("image") == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a file of this version
        assert config_to_dict(data2vec2.config_from_dict(values, saved=True)) == config_to_dict(config)


def test_a_checkpoint_of_version_0_1_loads_with_its_old_parameter_names(tmp_path):
    """0.1.0 kept the local encoder's parts at the top of the encoder (encoder.patch_embed...); its
    checkpoints (here the pinned initial weights of the characterization test) still load."""
    from safetensors.torch import load_file
    from test_step_characterization import CASES, NO_DROPOUT, REFERENCE

    pinned = load_file(str(REFERENCE))
    student = {k[len("image:initial/student/"):]: v for k, v in pinned.items() if k.startswith("image:initial/student/")}
    assert "encoder.patch_embed.weight" in student  # the 0.1.0 name
    modality, overrides = CASES["image"]
    values = config_to_dict(data2vec2.load_config(f"{modality}-tiny", overrides + NO_DROPOUT))
    values["version"] = "0.1.0"
    values["model"]["audio"] = {"alibi": True}  # 0.1.0 saved every modality's settings
    torch.save({"student": student, "config": values}, tmp_path / "step_000000001.pt")
    with pytest.warns(ConfigWarning, match="'model.audio'"):
        encoder, _ = data2vec2.load_encoder_and_config(tmp_path / "step_000000001.pt")
    torch.testing.assert_close(encoder.local_encoder.patch_embed.weight, student["encoder.patch_embed.weight"])
    torch.testing.assert_close(encoder.blocks[0].attn.qkv.weight, student["encoder.blocks.0.attn.qkv.weight"])
