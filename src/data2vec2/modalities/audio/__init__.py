"""Audio: the raw 16 kHz waveform through the wav2vec 2.0 CNN, ALiBi, 1-D block masking; CTC speech
recognition and utterance classification (keyword spotting); the offline speech corpus."""

from __future__ import annotations

from ...export import write_encoder
from ...modality import Modality
from .classification import CLASSIFICATION
from .commands import add_commands
from .ctc import CTC
from .data import AudioDataSettings, pretraining_data, synthetic_batch
from .encoder import AudioLocalEncoder, AudioSettings, build_decoder, step_flops
from .fairseq import FAIRSEQ


def check_config(config) -> list[tuple[bool, str, str]]:
    model, settings, masking = config.model, config.model.settings, config.masking
    data = config.data.settings  # the audio data keys
    return [
        (config.decoder.kind == "conv", "decoder.kind", "only images have a Transformer-decoder ablation"),
        (len(settings.conv_layers) >= 1, "model.audio.conv_layers", "needs >= 1 layer"),
        (all(min(layer) >= 1 for layer in settings.conv_layers), "model.audio.conv_layers",
         "every (channels, kernel, stride) must be >= 1"),
        (settings.conv_pos_depth >= 1 and settings.conv_pos_width >= 1, "model.audio.conv_pos_depth",
         "conv_pos_depth and conv_pos_width must be >= 1"),
        (settings.conv_pos_groups >= 1 and model.embed_dim % settings.conv_pos_groups == 0,
         "model.audio.conv_pos_groups", "must divide model.embed_dim"),
        (masking.kind in ("block", "random"), "masking.kind",
         f"audio masks frames with 'block' (the reference) or 'random', not {masking.kind!r}"),
        (config.loss.cls_weight == 0, "loss.cls_weight", "must be 0: an audio encoder has no CLS token"),
        (0 < data.min_samples <= data.max_samples, "data.min_samples", "must be in (0, data.max_samples]"),
        (0.0 <= data.time_mask_prob < 1.0 and 0.0 <= data.channel_mask_prob < 1.0, "data.time_mask_prob",
         "data.time_mask_prob and data.channel_mask_prob must be in [0, 1)"),
        (data.time_mask_length >= 1 and (data.channel_mask_prob == 0 or 1 <= data.channel_mask_length <= model.embed_dim),
         "data.time_mask_length",
         f"data.time_mask_length must be >= 1, data.channel_mask_length in [1, model.embed_dim={model.embed_dim}]"),
        (not (data.time_mask_prob or data.channel_mask_prob or data.letters) or bool(config.finetune.task),
         "data.time_mask_prob", "data.time_mask_prob, data.channel_mask_prob and data.letters are fine-tuning "
         "settings; pre-training masks with masking.*"),
    ]


AUDIO = Modality(
    name="audio",
    model_settings=AudioSettings,
    data_settings=AudioDataSettings,
    local_encoder=AudioLocalEncoder,
    decoder=build_decoder,
    pretraining_data=pretraining_data,
    synthetic_batch=synthetic_batch,
    step_flops=step_flops,
    check_config=check_config,
    export=write_encoder,  # our format; an audio encoder needs no data keys to be fed
    read_export=None,
    add_commands=add_commands,
    fairseq=FAIRSEQ,
    tasks={"ctc": CTC, "classification": CLASSIFICATION},
)
