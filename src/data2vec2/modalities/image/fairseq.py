"""The reference's image names and settings (fairseq examples/data2vec/models/modalities/images.py,
`ImageEncoder`), for `data2vec2 import-fairseq`:

    local_encoder.proj (Conv2d)             -> patch_embed
    extra_tokens (1, 1, D)                  -> cls_token
    fixed_positional_encoder.positions      -> pos_embed (the fixed 2-D sin-cos table, copied as stored)
"""

from __future__ import annotations

from ...fairseq_import import FairseqLayout, Source, require, setting

WHERE = "cfg.model.modalities.image"


def overrides(model: dict, mod: dict, shapes: dict) -> list[str]:
    for key, value, why in (
            ("num_extra_tokens", 1, "one CLS token"), ("fixed_positions", True, "fixed sin-cos positions"),
            ("use_alibi_encoder", False, ""), ("transformer_decoder", False, "the conv decoder"),
            ("enc_dec_transformer", False, ""), ("inverse_mask", True, "inverse block masking"),
            ("mask_prob_min", None, ""), ("in_chans", 3, "RGB with ImageNet normalisation"),
            ("embed_dim", model.get("embed_dim"), "the patch embedding has the model's width")):
        require(mod, key, value, WHERE, why)
    return [f"model.image.image_size={setting(mod, 'input_size', WHERE)}",
            f"model.image.patch_size={setting(mod, 'patch_size', WHERE)}", "model.image.in_channels=3",
            "masking.kind=inverse_block", f"masking.mask_length={setting(mod, 'mask_length', WHERE)}",
            f"masking.mask_prob_adjust={setting(mod, 'mask_prob_adjust', WHERE)}",
            # the reference's image pre-training normalises with the ImageNet mean and std
            "data.channels=3", "data.mean=[0.485, 0.456, 0.406]", "data.std=[0.229, 0.224, 0.225]"]


def local_names(config) -> dict[str, Source]:
    return {"patch_embed.weight": Source("local_encoder.proj.weight"),
            "patch_embed.bias": Source("local_encoder.proj.bias"),
            "cls_token": Source("extra_tokens"),
            "pos_embed": Source("fixed_positional_encoder.positions")}


FAIRSEQ = FairseqLayout(key="IMAGE", overrides=overrides, local_names=local_names)
