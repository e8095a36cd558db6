"""Text: byte-level BPE tokens, RoBERTa-layout embeddings, random (or span) masking that never
selects padding; sentence(-pair) classification and regression (GLUE); the `transformers` export; an
offline English corpus."""

from __future__ import annotations

from ...modality import Modality
from .classification import CLASSIFICATION, REGRESSION
from .commands import add_commands
from .data import TextDataSettings, pretraining_data, synthetic_batch
from .encoder import TextLocalEncoder, TextSettings, build_decoder, step_flops
from .fairseq import FAIRSEQ
from .hf import export_text_hf, read_text_hf


def check_config(config) -> list[tuple[bool, str, str]]:
    model, settings = config.model, config.model.settings
    return [
        (config.decoder.kind == "conv", "decoder.kind", "only images have a Transformer-decoder ablation"),
        (settings.vocab_size > 4, "model.text.vocab_size", "must exceed the 4 special tokens"),
        (settings.max_positions >= 2, "model.text.max_positions", "must be >= 2 (<s> and a token)"),
        (model.prenet_depth == 0, "model.prenet_depth", "must be 0: the text context encoder is empty"),
        (config.masking.kind in ("random", "block"), "masking.kind",
         f"text masks random tokens or spans (block) of non-padding tokens, not {config.masking.kind!r}"),
        (config.loss.cls_weight == 0, "loss.cls_weight", "must be 0: the text encoder has no extra CLS token"),
        (config.data.settings.documents in ("paragraph", "file"), "data.documents", "must be paragraph or file"),
        (len(config.data.settings.text_columns) in (0, 1, 2), "data.text_columns", "names one text column or a pair"),
    ]


TEXT = Modality(
    name="text",
    model_settings=TextSettings,
    data_settings=TextDataSettings,
    local_encoder=TextLocalEncoder,
    decoder=build_decoder,
    pretraining_data=pretraining_data,
    synthetic_batch=synthetic_batch,
    step_flops=step_flops,
    check_config=check_config,
    export=export_text_hf,
    read_export=read_text_hf,
    add_commands=add_commands,
    fairseq=FAIRSEQ,
    tasks={"classification": CLASSIFICATION, "regression": REGRESSION},
)
