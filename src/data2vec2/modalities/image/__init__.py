"""Images: ViT patches with fixed sin-cos positions and a CLS token, inverse block masking, the 2-D
conv decoder; linear-probe, kNN and embedding evaluations; Fashion-MNIST and image folders."""

from __future__ import annotations

from ...export import write_encoder
from ...modality import Modality
from .classification import CLASSIFICATION
from .commands import add_commands
from .data import ImageDataSettings, pretraining_data, synthetic_batch
from .encoder import ImageLocalEncoder, ImageSettings, build_decoder, step_flops
from .fairseq import FAIRSEQ


def check_config(config) -> list[tuple[bool, str, str]]:
    model, settings, data = config.model, config.model.settings, config.data.settings  # the image data keys
    return [
        (settings.patch_size >= 1 and settings.image_size >= settings.patch_size, "model.image.patch_size",
         f"must be in [1, model.image.image_size={settings.image_size}]"),
        (settings.patch_size < 1 or settings.image_size % settings.patch_size == 0, "model.image.image_size",
         "must be a multiple of model.image.patch_size"),
        (model.embed_dim % 4 == 0, "model.embed_dim", "must be divisible by 4 (2-D sin-cos positions)"),
        (data.channels == settings.in_channels, "data.channels", "must equal model.image.in_channels"),
        (len(data.mean) == data.channels == len(data.std), "data.mean",
         "data.mean and data.std need one value per channel"),
        (config.decoder.projection_layers == 1, "decoder.projection_layers",
         "must be 1: the image decoder ends in one Linear"),
        (data.randaugment >= 0 and 0 <= data.randaugment_magnitude <= 30, "data.randaugment",
         "data.randaugment must be >= 0 and data.randaugment_magnitude in [0, 30]"),
        (0.0 <= data.random_erasing <= 1.0 and 0.0 <= data.mix_prob <= 1.0, "data.random_erasing",
         "data.random_erasing and data.mix_prob must be in [0, 1]"),
        (data.mixup >= 0 and data.cutmix >= 0, "data.mixup", "data.mixup and data.cutmix must be >= 0"),
        (0.0 < data.eval_crop_pct <= 1.0, "data.eval_crop_pct", "must be in (0, 1]"),
    ]


def export(encoder, config, out):
    """Our format, with the data keys that feed the encoder: channels and normalisation."""
    data = config.data.settings
    return write_encoder(encoder, config, out, data={"channels": data.channels, "mean": list(data.mean),
                                                    "std": list(data.std)})


IMAGE = Modality(
    name="image",
    model_settings=ImageSettings,
    data_settings=ImageDataSettings,
    local_encoder=ImageLocalEncoder,
    decoder=build_decoder,
    pretraining_data=pretraining_data,
    synthetic_batch=synthetic_batch,
    step_flops=step_flops,
    check_config=check_config,
    export=export,
    read_export=None,
    add_commands=add_commands,
    fairseq=FAIRSEQ,
    tasks={"classification": CLASSIFICATION},
)
