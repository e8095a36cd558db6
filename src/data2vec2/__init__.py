"""data2vec 2.0: efficient self-supervised pre-training of Transformers (Baevski et al., 2022).

    import data2vec2
    config = data2vec2.load_config("image-tiny", ["train.max_steps=100"])
    data2vec2.pretrain(config, "runs/tiny")
    encoder = data2vec2.load_encoder("runs/tiny")        # a run folder, a checkpoint or an export
    model = data2vec2.load_model("exports/ft")           # a fine-tuned model: model.predict(items)
"""

__version__ = "0.2.0"

from .api import (  # noqa: E402
    MODALITIES,
    build_model,
    config_from_dict,
    load_config,
    load_encoder,
    load_encoder_and_config,
    load_model,
    pretrain,
)
from .config import Config  # noqa: E402

__all__ = ["Config", "MODALITIES", "load_config", "config_from_dict", "build_model", "pretrain", "load_encoder",
           "load_encoder_and_config", "load_model", "__version__"]
