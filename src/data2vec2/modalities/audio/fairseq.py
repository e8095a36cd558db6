"""The reference's audio names and settings (fairseq examples/data2vec/models/modalities/audio.py,
`AudioEncoder`, and wav2vec 2.0's `ConvFeatureExtractionModel` in "layer_norm" mode), for
`data2vec2 import-fairseq`:

    local_encoder.conv_layers.i.0 (Conv1d)        -> feature_extractor.convs.i
    local_encoder.conv_layers.i.2.1 (LayerNorm)   -> feature_extractor.norms.i
    project_features.1 / .2 (LayerNorm, Linear)   -> project_features.0 / .1
    relative_positional_encoder.{j+1}.0 (Conv1d)  -> pos_conv.layers.j.0
    alibi_scale (1, 1, H, 1, 1)                   -> alibi_scale (H,): one learned scale per head
"""

from __future__ import annotations

import ast

from ...errors import ConfigError
from ...fairseq_import import FairseqLayout, Source, require, setting

WHERE = "cfg.model.modalities.audio"


def parse_conv_spec(spec: str) -> list[tuple[int, int, int]]:
    """The reference's `feature_encoder_spec`, e.g. "[(512, 10, 5)] + [(512, 3, 2)] * 4", read
    without eval: lists of (channels, kernel, stride) joined by + and repeated by * only."""

    def value(node):
        if isinstance(node, ast.List):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.Tuple) and len(node.elts) == 3:
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
                return left + right
            if isinstance(node.op, ast.Mult) and isinstance(left, list) and type(right) is int and right <= 64:
                return left * right
        raise ValueError(ast.dump(node)[:80])

    try:
        layers = value(ast.parse(spec, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError) as e:
        raise ConfigError(f"{WHERE}.feature_encoder_spec={spec!r} is not a list of (channels, kernel, stride): "
                          f"{e}") from None
    if not isinstance(layers, list) or not all(isinstance(t, tuple) for t in layers):
        raise ConfigError(f"{WHERE}.feature_encoder_spec={spec!r} is not a list of (channels, kernel, stride)")
    return layers


def overrides(model: dict, mod: dict, shapes: dict) -> list[str]:
    for key, value, why in (
            ("extractor_mode", "layer_norm", "the CNN with a LayerNorm after every conv"),
            ("conv_pos_pre_ln", False, ""), ("num_extra_tokens", 0, ""), ("inverse_mask", False, "block masking"),
            ("mask_prob_min", None, "")):
        require(mod, key, value, WHERE, why)
    alibi = bool(setting(mod, "use_alibi_encoder", WHERE))
    if alibi:
        for key, value in (("learned_alibi", False), ("learned_alibi_scale", True),
                           ("learned_alibi_scale_per_head", True), ("learned_alibi_scale_per_layer", False),
                           ("alibi_max_pos", None), ("num_alibi_heads", model.get("num_heads"))):
            require(mod, key, value, WHERE, "one learned ALiBi scale per head, shared by the layers")
    conv = parse_conv_spec(str(setting(mod, "feature_encoder_spec", WHERE)))
    return [f"model.audio.conv_layers={[list(layer) for layer in conv]}",
            f"model.audio.conv_pos_width={setting(mod, 'conv_pos_width', WHERE)}",
            f"model.audio.conv_pos_depth={setting(mod, 'conv_pos_depth', WHERE)}",
            f"model.audio.conv_pos_groups={setting(mod, 'conv_pos_groups', WHERE)}",
            f"model.audio.alibi={alibi}", f"model.audio.alibi_scale_init={setting(mod, 'alibi_scale', WHERE)}",
            f"model.audio.ema_local_encoder={bool(setting(mod, 'ema_local_encoder', WHERE))}",
            "masking.kind=block", f"masking.mask_length={setting(mod, 'mask_length', WHERE)}",
            f"masking.mask_prob_adjust={setting(mod, 'mask_prob_adjust', WHERE)}"]


def local_names(config) -> dict[str, Source]:
    settings, H = config.model.settings, config.model.num_heads
    names = {}
    for i in range(len(settings.conv_layers)):
        names[f"feature_extractor.convs.{i}.weight"] = Source(f"local_encoder.conv_layers.{i}.0.weight")
        for p in ("weight", "bias"):
            names[f"feature_extractor.norms.{i}.{p}"] = Source(f"local_encoder.conv_layers.{i}.2.1.{p}")
    for p in ("weight", "bias"):
        names[f"project_features.0.{p}"] = Source(f"project_features.1.{p}")
        names[f"project_features.1.{p}"] = Source(f"project_features.2.{p}")
        for j in range(settings.conv_pos_depth):
            names[f"pos_conv.layers.{j}.0.{p}"] = Source(f"relative_positional_encoder.{j + 1}.0.{p}")
    if settings.alibi:
        names["alibi_scale"] = Source("alibi_scale", shape=(1, 1, H, 1, 1))
    return names


FAIRSEQ = FairseqLayout(key="AUDIO", overrides=overrides, local_names=local_names)
