"""`data2vec2 import-fairseq`: fake checkpoints in the reference's layout (fairseq
examples/data2vec, `Data2VecMultiModel`), written here with random tensors, a realistic cfg and the
side entries fairseq stores; every imported tensor is checked by name and value against the entry
it came from, through rules written here independently of the package's table."""

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import settings_of

from data2vec2 import load_config, load_encoder, pretrain
from data2vec2.cli import main
from data2vec2.errors import ConfigError, DataError
from data2vec2.fairseq_import import import_fairseq
from data2vec2.modalities import MODALITIES

D, H = 32, 2
BLOCK = {"attn.qkv.weight": (3 * D, D), "attn.qkv.bias": (3 * D,), "attn.proj.weight": (D, D), "attn.proj.bias": (D,),
         "norm1.weight": (D,), "norm1.bias": (D,), "mlp.fc1.weight": (4 * D, D), "mlp.fc1.bias": (4 * D,),
         "mlp.fc2.weight": (D, 4 * D), "mlp.fc2.bias": (D,), "norm2.weight": (D,), "norm2.bias": (D,)}


class Meter:
    """Stands for a fairseq class (a meter in extra_state): pickled by reference, never loaded."""

    def __init__(self):
        self.avg = 1.0


def model_cfg(modality: str, **mod) -> dict:
    """cfg["model"] as the reference stores it (the keys of Data2VecMultiConfig)."""
    decoder = {"decoder_dim": 16, "decoder_groups": 4, "decoder_kernel": 3, "decoder_layers": 2, "input_dropout": 0.0,
               "add_positions_masked": False, "add_positions_all": False, "decoder_residual": True,
               "projection_layers": 1, "projection_ratio": 2.0}
    decoder.update(mod.pop("decoder", {}))
    section = {"type": modality.upper(), "prenet_depth": 0, "prenet_layerdrop": 0.0, "prenet_dropout": 0.0,
               "start_drop_path_rate": 0, "end_drop_path_rate": 0, "num_extra_tokens": 0, "init_extra_token_zero": True,
               "mask_noise_std": 0.01, "mask_prob_min": None, "mask_prob": 0.6, "inverse_mask": False,
               "mask_prob_adjust": 0.05, "keep_masked_pct": 0, "mask_length": 5, "add_masks": False,
               "remove_masks": False, "mask_dropout": 0.0, "encoder_zero_mask": True, "mask_channel_prob": 0.0,
               "mask_channel_length": 64, "ema_local_encoder": False, "local_grad_mult": 1.0,
               "use_alibi_encoder": False, "alibi_scale": 1.0, "learned_alibi": False, "alibi_max_pos": None,
               "learned_alibi_scale": False, "learned_alibi_scale_per_head": False,
               "learned_alibi_scale_per_layer": False, "num_alibi_heads": H, "model_depth": 2, "decoder": decoder}
    section.update(mod)
    return {"loss_beta": 0.0, "loss_scale": None, "depth": 2, "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.1,
            "num_heads": H, "norm_eps": 1e-5, "norm_affine": True, "encoder_dropout": 0.1, "post_mlp_drop": 0.1,
            "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.0, "layerdrop": 0.0,
            "embed_dim": D, "mlp_ratio": 4.0, "layer_norm_first": False, "average_top_k_layers": 2,
            "end_of_block_targets": False, "clone_batch": 2, "layer_norm_target_layer": False,
            "batch_norm_target_layer": False, "instance_norm_target_layer": True, "instance_norm_targets": False,
            "layer_norm_targets": modality == "image", "ema_decay": 0.999, "ema_same_dtype": True, "log_norms": True,
            "ema_end_decay": 0.9999, "ema_anneal_end_step": 1000, "ema_encoder_only": modality == "text",
            "max_update": 1000, "shared_decoder": None, "min_target_var": 0.1, "min_pred_var": 0.01,
            "supported_modality": modality.upper(), "mae_init": False, "seed": 1, "skip_ema": False,
            "cls_loss": 0.01 if modality == "image" else 0.0, "recon_loss": 0.0, "d2v_loss": 1.0,
            "decoder_group": False, "modalities": {modality: section}}


def decoder_shapes(prefix: str, layers: int, dim: int, groups: int, kernel: tuple, proj: list) -> dict:
    shapes = {}
    for i in range(layers):
        shapes[f"{prefix}decoder.blocks.{i}.0.weight"] = (dim, (D if i == 0 else dim) // groups) + kernel
        shapes[f"{prefix}decoder.blocks.{i}.0.bias"] = (dim,)
    for name, (out, inp) in proj:
        shapes[f"{prefix}decoder.{name}.weight"], shapes[f"{prefix}decoder.{name}.bias"] = (out, inp), (out,)
    return shapes


def reference_layout(modality: str) -> tuple[dict, dict, dict]:
    """(cfg["model"], student shapes, teacher shapes) of a small reference model of `modality`."""
    blocks = {f"blocks.{i}.{n}": s for i in range(2) for n, s in BLOCK.items()}
    if modality == "image":
        cfg = model_cfg("image", prenet_depth=1, num_extra_tokens=1, inverse_mask=True, mask_length=3,
                        mask_prob=0.8, mask_prob_adjust=0.07, ema_local_encoder=True, input_size=32, in_chans=3,
                        patch_size=8, embed_dim=D, alibi_dims=2, alibi_distance="manhattan", fixed_positions=True,
                        transformer_decoder=False, enc_dec_transformer=False)
        m = "modality_encoders.IMAGE."
        encoder = {**blocks, **{f"{m}context_encoder.blocks.0.{n}": s for n, s in BLOCK.items()},
                   f"{m}context_encoder.norm.weight": (D,), f"{m}context_encoder.norm.bias": (D,),
                   f"{m}local_encoder.proj.weight": (D, 3, 8, 8), f"{m}local_encoder.proj.bias": (D,),
                   f"{m}extra_tokens": (1, 1, D), f"{m}fixed_positional_encoder.positions": (1, 16, D)}
        student = {**encoder, **decoder_shapes(m, 2, 16, 4, (3, 3), [("proj", (D, 16))])}
        return cfg, student, dict(encoder)
    if modality == "audio":
        cfg = model_cfg("audio", use_alibi_encoder=True, learned_alibi_scale=True, learned_alibi_scale_per_head=True,
                        extractor_mode="layer_norm", conv_pos_width=12, conv_pos_groups=4, conv_pos_depth=2,
                        conv_pos_pre_ln=False, decoder={"decoder_kernel": 5},
                        feature_encoder_spec="[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16,2,2)] * 2")
        m = "modality_encoders.AUDIO."
        local = {}
        for i, (k, c_in) in enumerate([(10, 1), (3, 16), (3, 16), (3, 16), (3, 16), (2, 16), (2, 16)]):
            local[f"{m}local_encoder.conv_layers.{i}.0.weight"] = (16, c_in, k)
            for p in ("weight", "bias"):
                local[f"{m}local_encoder.conv_layers.{i}.2.1.{p}"] = (16,)
        local.update({f"{m}project_features.1.weight": (16,), f"{m}project_features.1.bias": (16,),
                      f"{m}project_features.2.weight": (D, 16), f"{m}project_features.2.bias": (D,)})
        shared = {**blocks, f"{m}alibi_scale": (1, 1, H, 1, 1), f"{m}context_encoder.norm.weight": (D,),
                  f"{m}context_encoder.norm.bias": (D,)}
        for j in (1, 2):  # relative_positional_encoder[0] is a transpose
            shared[f"{m}relative_positional_encoder.{j}.0.weight"] = (D, D // 4, 6)
            shared[f"{m}relative_positional_encoder.{j}.0.bias"] = (D,)
        student = {**shared, **local, **decoder_shapes(m, 2, 16, 4, (5,), [("proj", (D, 16))])}
        return cfg, student, shared
    assert modality == "text", f"no small reference model of {modality}: write its layout here"
    cfg = model_cfg("text", mask_length=1, mask_prob=0.48, mask_prob_adjust=0.0, max_source_positions=32,
                    learned_pos=True, dropout=0.1, no_scale_embedding=True, layernorm_embedding=True,
                    no_token_positional_embeddings=False,
                    decoder={"decoder_groups": 1, "decoder_kernel": 9, "decoder_residual": False,
                             "projection_layers": 2})
    cfg["loss_scale"] = 1.0
    m = "modality_encoders.TEXT."
    student = {**blocks, f"{m}local_encoder.embed_tokens.weight": (512, D),
               f"{m}local_encoder.embed_positions.weight": (34, D),
               f"{m}local_encoder.layernorm_embedding.weight": (D,), f"{m}local_encoder.layernorm_embedding.bias": (D,),
               **decoder_shapes(m, 2, 16, 1, (9,), [("proj.0", (32, 16)), ("proj.2", (D, 32))])}
    return cfg, student, {f"{i}.{n}": s for i in range(2) for n, s in BLOCK.items()}


def write_fake(path: Path, modality: str, edit=None) -> dict:
    """A reference checkpoint of `modality` with random tensors; `edit(state)` changes it first."""
    cfg, student_shapes, teacher_shapes = reference_layout(modality)
    gen = torch.Generator().manual_seed(0)
    model = {k: torch.randn(s, generator=gen) for k, s in student_shapes.items()}
    model["_ema"] = {k: torch.randn(s, generator=gen) for k, s in teacher_shapes.items()}
    state = {"args": None, "cfg": {"_name": None, "common": {"fp16": True, "seed": 1}, "model": cfg,
                                   "task": {"_name": "mae_image_pretraining" if modality == "image" else modality}},
             "model": model, "criterion": None,
             "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "FairseqAdam",
                                    "lr_scheduler_state": {"best": None}, "num_updates": 400000}],
             "task_state": {}, "extra_state": {"epoch": 3, "best": np.float64(0.25), "counts": np.arange(4),
                                              "metrics": {"train": [("loss", Meter(), 0)]},
                                              "train_iterator": {"epoch": 3, "iterations_in_epoch": 7}},
             "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}}
    if edit:
        edit(state)
    torch.save(state, path)
    return state


def reference_name(ours: str, modality: str, teacher: bool) -> str:
    """Our parameter name -> the reference's (written from the reference's module structure)."""
    m = f"modality_encoders.{modality.upper()}."
    rules = [
        (r"^blocks\.(.*)$", r"\1" if teacher and modality == "text" else r"blocks.\1"),
        (r"^prenet\.(.*)$", m + r"context_encoder.blocks.\1"),
        (r"^context_norm\.(.*)$", m + r"context_encoder.norm.\1"),
        (r"^local_encoder\.patch_embed\.(.*)$", m + r"local_encoder.proj.\1"),
        (r"^local_encoder\.cls_token$", m + "extra_tokens"),
        (r"^local_encoder\.pos_embed$", m + "fixed_positional_encoder.positions"),
        (r"^local_encoder\.feature_extractor\.convs\.(\d+)\.weight$", m + r"local_encoder.conv_layers.\1.0.weight"),
        (r"^local_encoder\.feature_extractor\.norms\.(\d+)\.(.*)$", m + r"local_encoder.conv_layers.\1.2.1.\2"),
        (r"^local_encoder\.project_features\.0\.(.*)$", m + r"project_features.1.\1"),
        (r"^local_encoder\.project_features\.1\.(.*)$", m + r"project_features.2.\1"),
        (r"^local_encoder\.alibi_scale$", m + "alibi_scale"),
        (r"^local_encoder\.token_embed\.(.*)$", m + r"local_encoder.embed_tokens.\1"),
        (r"^local_encoder\.pos_embed\.(.*)$", m + r"local_encoder.embed_positions.\1"),
        (r"^local_encoder\.embed_norm\.(.*)$", m + r"local_encoder.layernorm_embedding.\1"),
        (r"^decoder\.layers\.(\d+)\.0\.(.*)$", m + r"decoder.blocks.\1.0.\2"),
        (r"^decoder\.proj\.(.*)$", m + r"decoder.proj.\1"),
    ]
    match = re.match(r"^local_encoder\.pos_conv\.layers\.(\d+)\.0\.(.*)$", ours)
    if match:  # the reference's Sequential starts with a transpose
        return f"{m}relative_positional_encoder.{int(match.group(1)) + 1}.0.{match.group(2)}"
    for pattern, replacement in rules:
        if re.match(pattern, ours):
            return re.sub(pattern, replacement, ours)
    raise AssertionError(f"no rule for {ours}")


@pytest.mark.parametrize("modality", list(MODALITIES))
def test_every_tensor_comes_from_its_reference_entry(modality, tmp_path):
    state = write_fake(tmp_path / "checkpoint.pt", modality)
    imported = import_fairseq(tmp_path / "checkpoint.pt", MODALITIES)
    student, teacher = state["model"], state["model"]["_ema"]
    checked = 0
    for name, value in imported.model.student.state_dict().items():
        ours = name[len("encoder."):] if name.startswith("encoder.") else name
        source = student[reference_name(ours, modality, teacher=False)]
        assert torch.equal(value, source.reshape(value.shape)), name
        checked += 1
    for name, value in imported.model.teacher.state_dict().items():
        source = teacher[reference_name(name, modality, teacher=True)]
        assert torch.equal(value, source.reshape(value.shape)), name
        checked += 1
    assert checked == len(student) - 1 + len(teacher)  # every tensor of the file, each used once
    assert imported.unused == {"model": [], "_ema": []}

    # the config is what the shapes and the cfg say
    config = imported.config
    model = config.model
    assert (model.modality, model.embed_dim, model.depth, model.num_heads) == (modality, D, 2, H)
    assert (config.decoder.dim, config.decoder.layers, config.masking.num_masks, config.targets.top_k) == (16, 2, 2, 2)
    assert (model.dropout, model.drop_path, config.ema.decay, config.ema.anneal_steps) == (0.1, 0.1, 0.999, 1000)
    if modality == "image":
        image = config.model.settings
        assert (config.model.prenet_depth, image.image_size, image.patch_size) == (1, 32, 8)
        assert (config.masking.kind, config.targets.final_norm) == ("inverse_block", "layer")
        assert config.loss.cls_weight == 0.01
    if modality == "audio":
        audio = config.model.settings
        assert audio.conv_layers == ((16, 10, 5),) + ((16, 3, 2),) * 4 + ((16, 2, 2),) * 2
        assert (audio.conv_pos_depth, audio.alibi, config.masking.kind) == (2, True, "block")
    if modality == "text":
        assert (model.settings.vocab_size, model.settings.max_positions, config.masking.kind) == (512, 32, "random")
        assert (config.decoder.residual, config.decoder.projection_layers, config.loss.scale) == (False, 2, 1.0)


def test_teacher_export_takes_shared_parts_from_the_student(tmp_path, capsys):
    state = write_fake(tmp_path / "audio.pt", "audio")
    assert main(["import-fairseq", str(tmp_path / "audio.pt"), "--out", str(tmp_path / "teacher")]) == 0
    assert "takes them from the student" in capsys.readouterr().out
    encoder = load_encoder(tmp_path / "teacher").state_dict()
    m = "modality_encoders.AUDIO."
    assert torch.equal(encoder["blocks.1.mlp.fc1.weight"], state["model"]["_ema"]["blocks.1.mlp.fc1.weight"])
    assert torch.equal(encoder["local_encoder.pos_conv.layers.0.0.weight"],
                       state["model"]["_ema"][f"{m}relative_positional_encoder.1.0.weight"])
    assert torch.equal(encoder["local_encoder.feature_extractor.convs.0.weight"],
                       state["model"][f"{m}local_encoder.conv_layers.0.0.weight"])  # the student's: no EMA copy
    assert main(["import-fairseq", str(tmp_path / "audio.pt"), "--out", str(tmp_path / "student"),
                 "--weights", "student"]) == 0
    student = load_encoder(tmp_path / "student").state_dict()
    assert torch.equal(student["blocks.1.mlp.fc1.weight"], state["model"]["blocks.1.mlp.fc1.weight"])


@pytest.mark.parametrize("modality", list(MODALITIES))
def test_continued_pretraining_starts_from_the_imported_weights(modality, tmp_path, small_data):
    write_fake(tmp_path / "checkpoint.pt", modality)
    # the modality's small real data (its testing.py); the tokenizer goes to import-fairseq instead
    data = [o for o in small_data(modality) if not o.startswith("data.tokenizer=")]
    data += [o for o in settings_of(modality).SMALL if o.startswith("data.")]  # (its small data settings)
    run = tmp_path / "run"
    args = ["import-fairseq", str(tmp_path / "checkpoint.pt"), "--run-dir", str(run)]
    args += [f"--tokenizer={o.split('=', 1)[1]}" for o in small_data(modality) if o.startswith("data.tokenizer=")]
    assert main(args) == 0
    imported = torch.load(run / "imported.pt", weights_only=True)
    config = load_config(str(run / "config.yaml"), data + [
        "train.batch_size=4", "train.max_steps=2", "train.precision=fp32", "data.num_workers=0", "train.log_every=1",
        "optim.lr=1e-9", "optim.warmup_steps=1", "guards.after_steps=100000"])
    result = pretrain(config, run, progress=False)
    assert result["steps"] == 2 and np.isfinite(result["last"]["loss"])
    after = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for name, value in imported["student"].items():  # lr 1e-9: two updates leave the student as it was
        torch.testing.assert_close(after["student"][name], value, atol=1e-6, rtol=0, msg=name)
    # the EMA starts from the imported teacher: after updates 1 and 2 (tau ramps 0.999 -> 0.9999 over 1,000)
    tau = [0.9999 - (0.9999 - 0.999) * (1 - t / 1000) for t in (1, 2)]
    for name, teacher in imported["teacher"].items():
        student = imported["student"][f"encoder.{name}"]
        for t in tau:  # the fixed positions (a buffer) are copied from the student, not averaged
            teacher = student if name == "local_encoder.pos_embed" else t * teacher + (1 - t) * student
        torch.testing.assert_close(after["teacher"][name], teacher, atol=1e-5, rtol=0, msg=name)


def test_refusals(tmp_path):
    def check(edit, error, message):
        write_fake(tmp_path / "bad.pt", "image", edit)
        with pytest.raises(error, match=message):
            import_fairseq(tmp_path / "bad.pt", MODALITIES)

    ema = lambda state: state["model"]["_ema"]  # noqa: E731
    check(lambda s: s["model"].update({"modality_encoders.IMAGE.extra.weight": torch.zeros(2)}), DataError,
          "does not map and would drop.*extra.weight")
    check(lambda s: ema(s).update({"blocks.0.norm1.weight": torch.zeros(D + 1)}), DataError,
          r"_ema.*blocks.0.norm1.weight \(33,\), expected \(32,\)")
    check(lambda s: s["model"].pop("blocks.1.mlp.fc2.bias"), DataError, r"missing \['blocks.1.mlp.fc2.bias'\]")
    check(lambda s: s["model"].update({"blocks.0.attn.proj.bias": argparse.Namespace(x=1)}), DataError,
          "model.blocks.0.attn.proj.bias is an object of class argparse.Namespace")
    check(lambda s: s["cfg"]["model"].pop("average_top_k_layers"), ConfigError,
          "cfg.model.average_top_k_layers is missing")
    check(lambda s: s["cfg"]["model"].update({"layer_norm_first": True}), ConfigError,
          "cfg.model.layer_norm_first=True is not supported")
    check(lambda s: s["cfg"]["model"]["modalities"]["image"].update({"transformer_decoder": True}), ConfigError,
          "transformer_decoder=True is not supported")
    check(lambda s: s["model"].pop("_ema"), DataError, "no EMA teacher")
    # a damaged cfg: a section of another type, a setting of another type (one line naming it)
    check(lambda s: s["cfg"]["model"].update({"modalities": None}), ConfigError,
          "cfg.model.modalities is None, not a section of settings: the checkpoint's config is damaged")
    check(lambda s: s["cfg"]["model"]["modalities"].update({"image": [1, 2]}), ConfigError,
          "cfg.model.modalities.image is list, not a section of settings")
    check(lambda s: s["cfg"]["model"].update({"embed_dim": "wide"}), ConfigError, "embed_dim")
    # weights that cannot train are refused at import, naming a tensor, before anything is written
    check(lambda s: s["model"]["blocks.0.mlp.fc1.weight"].view(-1).__setitem__(3, float("nan")), DataError,
          r"the student \(model\) holds NaN or infinite values in 1 tensor\(s\) \(blocks.0.mlp.fc1.weight\)")
    check(lambda s: ema(s)["blocks.1.attn.qkv.weight"].view(-1).__setitem__(0, float("inf")), DataError,
          r"the teacher \(model\['_ema'\]\) holds NaN or infinite values")

    write_fake(tmp_path / "good.pt", "image")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or not a checkpoint"):
        import_fairseq(tmp_path / "truncated.pt", MODALITIES)
    assert main(["import-fairseq", str(tmp_path / "truncated.pt"), "--out", str(tmp_path / "x")]) == 2
