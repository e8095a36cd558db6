"""Import a data2vec 2.0 pre-training checkpoint of the reference implementation (fairseq
examples/data2vec, `Data2VecMultiModel`) without fairseq, Hydra or OmegaConf.

What such a file holds (fairseq/checkpoint_utils.py): a pickled dict with
    cfg                 the run's config as plain containers; cfg["model"] describes the model
    model               the student's state dict, and under "_ema" the EMA teacher's
    optimizer_history, extra_state, last_optimizer_state, ...   not read here

The file is read with an allow-list unpickler (safe_load.py): no code in it runs. Our config is
built from cfg["model"] (every setting that changes the model is read or required to have the one
value we implement; a missing or unsupported one is an error naming it), then every tensor is
filled by an explicit table from the reference's name to ours, each shape checked. A modality
supplies its part of the table and of the config (`FairseqLayout`, modalities/*/fairseq.py); the
shared blocks, the context encoder and the conv decoder are the same for every modality and are
listed here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from .config import Config, config_to_dict, load_config, save_config
from .errors import ConfigError, DataError
from .model import Data2Vec2, build_model
from .safe_load import load_untrusted, opaque_paths

if TYPE_CHECKING:
    from .modality import Modality

BLOCK_PARAMS = ("attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm1.weight",
                "norm1.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "norm2.weight",
                "norm2.bias")  # the same names in the reference's AltBlock and in ours


@dataclass(frozen=True)
class Source:
    """Where a tensor of ours comes from: the reference's name (relative to the modality's
    `modality_encoders.<KEY>.` unless `shared`), and its shape there when that differs from ours
    (the tensor is then reshaped, same elements, same order)."""

    name: str
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class FairseqLayout:
    """What a modality supplies to import the reference's checkpoints (modalities/*/fairseq.py)."""

    key: str  # the modality's name in the reference: "IMAGE" -> modality_encoders.IMAGE.*
    # (cfg["model"], its modalities[<name>] section, tensor shapes of the student) -> our overrides
    # for model.<modality>.* and the modality's masking ("key=value" strings)
    overrides: Callable[[dict, dict, dict], list[str]]
    # (config) -> {our name under encoder.local_encoder.: Source relative to modality_encoders.<KEY>.}
    local_names: Callable[[Config], dict[str, Source]]
    # the teacher's keys for shared blocks start at "0." instead of "blocks.0." (text)
    teacher_blocks_bare: bool = False


def mapping(value: Any, where: str) -> dict:
    """`value`, a section of settings, or an error naming it (a damaged config)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} is {type(value).__name__ if value is not None else 'None'}, not a section of "
                          f"settings: the checkpoint's config is damaged")
    return value


def setting(section: dict, key: str, where: str) -> Any:
    """`section[key]`, or an error naming the key (a default could silently change the model)."""
    if key not in mapping(section, where):
        raise ConfigError(f"{where}.{key} is missing from the checkpoint's config; it changes the model, so no "
                          f"default can stand in for it")
    return section[key]


def require(section: dict, key: str, expected: Any, where: str, why: str = "") -> None:
    """The setting must have the one value this package implements."""
    value = setting(section, key, where)
    if value != expected:
        raise ConfigError(f"{where}.{key}={value!r} is not supported (only {expected!r}){': ' + why if why else ''}")


def shared_overrides(model: dict, mod: dict) -> list[str]:
    """Our settings of the shared encoder, decoder, targets, loss, EMA and masks from cfg["model"]
    (`model`) and its modality section (`mod`)."""
    m, s = "cfg.model", "cfg.model.modalities.<modality>"
    for key, value, why in (
            ("layer_norm_first", False, "the blocks are post-LN"),
            ("end_of_block_targets", False, "targets are the FFN outputs"),
            ("batch_norm_target_layer", False, ""), ("instance_norm_targets", False, ""),
            ("start_drop_path_rate", 0.0, "drop path rises from 0"), ("dropout_input", 0.0, ""),
            ("recon_loss", 0.0, "no pixel reconstruction term"), ("d2v_loss", 1.0, ""),
            ("norm_affine", True, "LayerNorms with weight and bias"), ("decoder_group", False, ""),
            ("shared_decoder", None, "each modality has its own decoder")):
        require(model, key, value, m, why)
    for key, value, why in (
            ("add_masks", False, ""), ("remove_masks", False, ""), ("keep_masked_pct", 0, ""),
            ("mask_dropout", 0.0, ""), ("mask_channel_prob", 0.0, ""), ("encoder_zero_mask", True, ""),
            ("local_grad_mult", 1.0, ""), ("prenet_layerdrop", 0.0, "the prenet has no layerdrop")):
        require(mod, key, value, s, why)
    # our prenet block i takes the drop-path rate of shared block i (a linear ramp from 0 over the
    # shared blocks); the reference ramps its own (start -> end over the prenet): they must agree
    depth, prenet = setting(model, "depth", m), setting(mod, "prenet_depth", s)
    end = setting(model, "end_drop_path_rate", m)
    ours = [end * min(i, depth - 1) / max(depth - 1, 1) for i in range(prenet)]
    start_mod, end_mod = setting(mod, "start_drop_path_rate", s), setting(mod, "end_drop_path_rate", s)
    theirs = [start_mod + (end_mod - start_mod) * i / max(prenet - 1, 1) for i in range(prenet)]
    if any(abs(a - b) > 1e-9 for a, b in zip(ours, theirs)):
        raise ConfigError(f"{s}.start_drop_path_rate={start_mod} / end_drop_path_rate={end_mod}: the prenet's "
                          f"drop-path rates {theirs} differ from ours {ours} (those of the first shared blocks)")
    decoder = setting(mod, "decoder", s)
    d = f"{s}.decoder"
    for key, value in (("add_positions_masked", False), ("add_positions_all", False), ("projection_ratio", 2.0)):
        require(decoder, key, value, d)
    layer_norm = ("layer" if setting(model, "layer_norm_target_layer", m) else
                  "instance" if setting(model, "instance_norm_target_layer", m) else "none")
    final_norm = "layer" if setting(model, "layer_norm_targets", m) else "none"
    if setting(model, "layer_norm_target_layer", m) and setting(model, "instance_norm_target_layer", m):
        raise ConfigError(f"{m}: layer_norm_target_layer and instance_norm_target_layer are both set")
    scale = setting(model, "loss_scale", m)
    return [
        f"model.embed_dim={setting(model, 'embed_dim', m)}", f"model.depth={setting(model, 'depth', m)}",
        f"model.prenet_depth={setting(mod, 'prenet_depth', s)}", f"model.num_heads={setting(model, 'num_heads', m)}",
        f"model.mlp_ratio={setting(model, 'mlp_ratio', m)}", f"model.norm_eps={setting(model, 'norm_eps', m)}",
        f"model.dropout={setting(model, 'encoder_dropout', m)}",
        f"model.attention_dropout={setting(model, 'attention_dropout', m)}",
        f"model.activation_dropout={setting(model, 'activation_dropout', m)}",
        f"model.post_mlp_dropout={setting(model, 'post_mlp_drop', m)}",
        f"model.prenet_dropout={setting(mod, 'prenet_dropout', s)}",
        f"model.drop_path={setting(model, 'end_drop_path_rate', m)}",
        f"model.layerdrop={setting(model, 'layerdrop', m)}",
        f"decoder.dim={setting(decoder, 'decoder_dim', d)}",
        f"decoder.kernel_size={setting(decoder, 'decoder_kernel', d)}",
        f"decoder.layers={setting(decoder, 'decoder_layers', d)}",
        f"decoder.groups={setting(decoder, 'decoder_groups', d)}",
        f"decoder.residual={setting(decoder, 'decoder_residual', d)}",
        f"decoder.projection_layers={setting(decoder, 'projection_layers', d)}",
        f"decoder.input_dropout={setting(decoder, 'input_dropout', d)}",
        f"decoder.mask_noise_std={setting(mod, 'mask_noise_std', s)}", "decoder.kind=conv",
        f"masking.mask_prob={setting(mod, 'mask_prob', s)}", f"masking.num_masks={setting(model, 'clone_batch', m)}",
        f"targets.top_k={setting(model, 'average_top_k_layers', m)}", f"targets.layer_norm={layer_norm}",
        f"targets.final_norm={final_norm}",
        f"loss.scale={'null' if scale is None else scale}", f"loss.beta={setting(model, 'loss_beta', m)}",
        f"loss.cls_weight={setting(model, 'cls_loss', m)}",
        f"ema.decay={setting(model, 'ema_decay', m)}", f"ema.end_decay={setting(model, 'ema_end_decay', m)}",
        f"ema.anneal_steps={setting(model, 'ema_anneal_end_step', m)}",
        # the reference's collapse guards compare standard deviations, despite their names
        f"guards.min_target_std={setting(model, 'min_target_var', m)}",
        f"guards.min_pred_std={setting(model, 'min_pred_var', m)}",
    ]


def student_table(config: Config, layout: FairseqLayout) -> dict[str, str | Source]:
    """Our student's name -> the reference's full name (or a Source with its full name)."""
    mod = f"modality_encoders.{layout.key}."
    table: dict[str, str | Source] = {}
    for i in range(config.model.depth):
        table.update({f"encoder.blocks.{i}.{p}": f"blocks.{i}.{p}" for p in BLOCK_PARAMS})
    for i in range(config.model.prenet_depth):
        table.update({f"encoder.prenet.{i}.{p}": f"{mod}context_encoder.blocks.{i}.{p}" for p in BLOCK_PARAMS})
    for p in ("weight", "bias"):
        table[f"encoder.context_norm.{p}"] = f"{mod}context_encoder.norm.{p}"
    for ours, source in layout.local_names(config).items():
        table[f"encoder.local_encoder.{ours}"] = Source(mod + source.name, source.shape)
    for i in range(config.decoder.layers):  # Decoder1d/2d: blocks[i] = (conv, [SamePad,] ...), proj
        for p in ("weight", "bias"):
            table[f"decoder.layers.{i}.0.{p}"] = f"{mod}decoder.blocks.{i}.0.{p}"
    proj = ["proj."] if config.decoder.projection_layers == 1 else ["proj.0.", "proj.2."]  # Linear | Linear GELU Linear
    for part in proj:
        for p in ("weight", "bias"):
            table[f"decoder.{part}{p}"] = f"{mod}decoder.{part}{p}"
    return table


def teacher_table(teacher_names: list[str], table: dict[str, str | Source],
                  layout: FairseqLayout) -> dict[str, str | Source]:
    """Our teacher's names -> the reference's names under "_ema": the student's encoder entries
    that the teacher keeps (not the shared local-encoder parts, never the decoder)."""
    out = {}
    for name in teacher_names:
        source = table[f"encoder.{name}"]
        if layout.teacher_blocks_bare and name.startswith("blocks."):
            source = source[len("blocks."):]
        out[name] = source
    return out


def gather(expected: Mapping[str, torch.Tensor], table: Mapping[str, str | Source], given: dict[str, Any],
           what: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """For each of our tensors (`expected`: a state dict, maybe on the meta device) the file's
    tensor that the table names, shape-checked and reshaped to ours. Returns (our state dict, the
    names of `given` used); raises naming every tensor it could not fill."""
    unlisted = sorted(set(expected) - set(table))
    if unlisted:  # a gap in our own table, not in the file
        raise AssertionError(f"no source listed for {unlisted[:5]}")
    missing, wrong, used, out = [], [], set(), {}
    for ours, ref in expected.items():
        source = table[ours] if isinstance(table[ours], Source) else Source(table[ours])
        tensor = given.get(source.name)
        if not isinstance(tensor, torch.Tensor):
            missing.append(source.name)
            continue
        shape = source.shape or tuple(ref.shape)
        if tuple(tensor.shape) != tuple(shape):
            wrong.append(f"{source.name} {tuple(tensor.shape)}, expected {tuple(shape)}")
            continue
        out[ours] = tensor.reshape(ref.shape)
        used.add(source.name)
    if missing or wrong:
        raise DataError(f"{what}: missing {missing[:6]}{' ...' if len(missing) > 6 else ''}; wrong shapes "
                        f"{wrong[:6]}{' ...' if len(wrong) > 6 else ''} (the shapes follow the checkpoint's cfg)")
    return out, used


@dataclass
class Imported:
    model: Data2Vec2  # student (encoder + decoder) and teacher, filled from the file
    config: Config
    unused: dict[str, list[str]]  # "model" / "_ema": keys of the file that were not used
    notes: list[str]  # what the user should know (a teacher part taken from the student, ...)

    def report(self) -> str:
        lines = [f"imported a {self.config.model.modality} model: D={self.config.model.embed_dim}, "
                 f"{self.config.model.prenet_depth}+{self.config.model.depth} blocks"]
        for part, keys in self.unused.items():
            if keys:
                lines.append(f"not used from {part}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
        return "\n".join(lines + self.notes)


def read_fairseq_checkpoint(path: str | Path) -> tuple[dict, dict, dict]:
    """(cfg["model"], the student's tensors, the teacher's tensors) of a reference checkpoint."""
    state = load_untrusted(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise DataError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    if not isinstance(state.get("cfg"), dict) or not isinstance(state["cfg"].get("model"), dict):
        hint = " (an old checkpoint with 'args' instead of 'cfg'?)" if "args" in state else ""
        raise DataError(f"{path}: no cfg['model'] entry{hint}: not a data2vec 2.0 checkpoint")
    for part in ("model", "cfg"):
        for where, name in opaque_paths(state[part], part):
            raise DataError(f"{path}: {where} is an object of class {name}, which is not loaded (only tensors and "
                            f"plain values are); refusing to import a {part} entry that holds one")
    model = dict(state["model"])
    teacher = model.pop("_ema", None)
    if not isinstance(teacher, dict) or not teacher:
        raise DataError(f"{path}: no EMA teacher (model['_ema']): not a data2vec 2.0 pre-training checkpoint "
                        f"(a fine-tuned one?)")
    return state["cfg"]["model"], model, teacher


def layout_of(cfg_model: dict, modalities: Mapping[str, "Modality"]) -> tuple["Modality", FairseqLayout]:
    supported = setting(cfg_model, "supported_modality", "cfg.model")
    for record in modalities.values():
        if record.fairseq is not None and record.fairseq.key == str(supported).upper():
            return record, record.fairseq
    raise ConfigError(f"cfg.model.supported_modality={supported!r}: this package imports "
                      f"{', '.join(r.fairseq.key for r in modalities.values() if r.fairseq)}")


def import_fairseq(path: str | Path, modalities: Mapping[str, "Modality"], overrides: list[str] = (),
                   allow_unused: bool = False) -> Imported:
    """Our model (student, decoder and teacher) and config from a reference checkpoint. The
    config's training settings (optimizer, batch, data) are those of our `<modality>-base` preset;
    `overrides` (key=value) apply last. A tensor of the file that the table does not use is an
    error (it would be dropped) unless `allow_unused`; it is then listed in the report."""
    cfg_model, student, teacher = read_fairseq_checkpoint(path)
    record, layout = layout_of(cfg_model, modalities)
    mod_cfg = mapping(setting(setting(cfg_model, "modalities", "cfg.model"), record.name, "cfg.model.modalities"),
                      f"cfg.model.modalities.{record.name}")
    shapes = {k: tuple(v.shape) for k, v in student.items() if isinstance(v, torch.Tensor)}
    try:
        mapped = shared_overrides(cfg_model, mod_cfg) + layout.overrides(cfg_model, mod_cfg, shapes)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:  # a value of the wrong type
        raise ConfigError(f"{path}: a setting of cfg.model has an unexpected type or value ({type(e).__name__}: "
                          f"{e}); the checkpoint's config is damaged") from None
    config = load_config(f"{record.name}-base", mapped + list(overrides), modalities=modalities)
    config.name = f"{record.name}-fairseq"
    with torch.device("meta"):  # every shape is checked before anything is allocated
        skeleton = build_model(config, record)
    table = student_table(config, layout)
    student_state, used = gather(skeleton.student.state_dict(), table, student, f"{path}: the student (model)")
    teacher_state, used_teacher = gather(skeleton.teacher.state_dict(),
                                         teacher_table(list(skeleton.teacher.state_dict()), table, layout), teacher,
                                         f"{path}: the teacher (model['_ema'])")
    for part, given, names in (("the student (model)", student, used), ("the teacher (model['_ema'])", teacher,
                                                                        used_teacher)):
        bad = [n for n in sorted(names) if given[n].is_floating_point() and not torch.isfinite(given[n]).all()]
        if bad:
            raise DataError(f"{path}: {part} holds NaN or infinite values in {len(bad)} tensor(s) ({bad[0]}"
                            f"{', ...' if len(bad) > 1 else ''}); refusing to import weights that cannot train")
    model = build_model(config, record)
    model.student.load_state_dict(student_state)
    model.teacher.load_state_dict(teacher_state)
    notes = []
    local = model.encoder.local_encoder
    if not local.ema_local_encoder and local.shareable:
        notes.append(f"the teacher has no copy of {', '.join(local.shareable)}: an exported teacher takes them "
                     f"from the student, as the reference's teacher does during training")
    unused = {"model": sorted(k for k in student if k not in used),
              "_ema": sorted(k for k in teacher if k not in used_teacher)}
    if any(unused.values()) and not allow_unused:
        listed = "; ".join(f"{part}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                           for part, keys in unused.items() if keys)
        raise DataError(f"{path} holds tensors this import does not map and would drop ({listed}); pass "
                        f"--allow-unused to import the rest anyway")
    return Imported(model=model, config=config, unused=unused, notes=notes)


def encoder_state(model: Data2Vec2, weights: str) -> dict[str, torch.Tensor]:
    """The state dict of an encoder: the student's, or ("teacher") the teacher's, with the parts
    the teacher shares with the student (audio's CNN, text's embeddings) taken from the student."""
    state = dict(model.encoder.state_dict())
    if weights == "teacher":
        state.update(model.teacher.state_dict())
    elif weights != "student":
        raise ConfigError(f"--weights {weights!r}: choose student or teacher")
    return state


def write_run(imported: Imported, run_dir: Path, source: str) -> Path:
    """A run folder that `data2vec2 pretrain RUN/config.yaml --run-dir RUN` continues from: the
    imported student and teacher in RUN/imported.pt, and the config with train.init_from naming
    it. The optimizer and the schedule start afresh; the EMA starts from the imported teacher."""
    if any((run_dir / "checkpoints").glob("*.pt")):  # pretrain would resume those, not start from the import
        raise DataError(f"{run_dir} already holds checkpoints of a run: choose a new --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = run_dir / "imported.pt"
    config = imported.config
    config.train.init_from = str(weights.resolve())  # absolute: pretrain may run from another folder
    tmp = run_dir / ".imported.pt.tmp"
    torch.save({"student": imported.model.student.state_dict(), "teacher": imported.model.teacher.state_dict(),
                "config": config_to_dict(config), "source": source}, tmp)
    os.replace(tmp, weights)
    save_config(config, run_dir / "config.yaml")
    return run_dir / "config.yaml"
