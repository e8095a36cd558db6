"""The reference's text names and settings (fairseq examples/data2vec/models/modalities/text.py,
`TextEncoder` with a `TextLocalEncoder`), for `data2vec2 import-fairseq`:

    local_encoder.embed_tokens / embed_positions / layernorm_embedding -> token_embed / pos_embed / embed_norm

The text teacher keeps the shared blocks only, stored under "0.", "1.", ... instead of "blocks.0.".
"""

from __future__ import annotations

from ...errors import ConfigError
from ...fairseq_import import FairseqLayout, Source, require, setting

WHERE = "cfg.model.modalities.text"
TOKENS = "modality_encoders.TEXT.local_encoder.embed_tokens.weight"


def overrides(model: dict, mod: dict, shapes: dict) -> list[str]:
    for key, value, why in (
            ("learned_pos", True, "learned positions"), ("no_scale_embedding", True, "unscaled embeddings"),
            ("layernorm_embedding", True, ""), ("no_token_positional_embeddings", False, ""),
            ("num_extra_tokens", 0, ""), ("inverse_mask", False, ""), ("mask_prob_min", None, "")):
        require(mod, key, value, WHERE, why)
    if TOKENS not in shapes:
        raise ConfigError(f"the checkpoint has no {TOKENS}: the vocabulary size is unknown")
    length = setting(mod, "mask_length", WHERE)
    if length == 1:
        require(mod, "mask_prob_adjust", 0.0, WHERE, "random masking of single tokens")
    masks = (["masking.kind=random"] if length == 1 else
             ["masking.kind=block", f"masking.mask_length={length}",
              f"masking.mask_prob_adjust={setting(mod, 'mask_prob_adjust', WHERE)}"])
    return [f"model.text.vocab_size={shapes[TOKENS][0]}",
            f"model.text.max_positions={setting(mod, 'max_source_positions', WHERE)}",
            f"model.text.embed_dropout={setting(mod, 'dropout', WHERE)}"] + masks


def local_names(config) -> dict[str, Source]:
    return {"token_embed.weight": Source("local_encoder.embed_tokens.weight"),
            "pos_embed.weight": Source("local_encoder.embed_positions.weight"),
            "embed_norm.weight": Source("local_encoder.layernorm_embedding.weight"),
            "embed_norm.bias": Source("local_encoder.layernorm_embedding.bias")}


FAIRSEQ = FairseqLayout(key="TEXT", overrides=overrides, local_names=local_names, teacher_blocks_bare=True)
