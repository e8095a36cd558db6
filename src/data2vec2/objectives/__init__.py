"""What is trained: data2vec 2.0 (model.py) or a baseline over the same encoder, data, trainer,
checkpoints and evaluations, so that a comparison measures the objectives and nothing else
(`objective` in the config; docs/efficiency.md):

    data2vec2  the paper (model.py)
    data2vec1  data2vec 1.0: the whole sequence with a mask embedding, a linear head (data2vec1.py);
               its way of encoding with data2vec 2.0's decoder is the ablation masking.drop_masked=false
    mae        MAE: pixels of the masked patches through a Transformer decoder (mae.py)
    mlm        masked language modelling, RoBERTa-style (mlm.py)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..config import Config
from ..model import Data2Vec2, build_encoder
from ..model import build_model as build_data2vec2
from .data2vec1 import Data2Vec1, MaskEmbeddedStudent
from .mae import MAE
from .mlm import MLM

if TYPE_CHECKING:
    from ..modality import Modality


def build_model(config: Config, modality: "Modality") -> nn.Module:
    """The trained model of `config.objective`: `student` (optimised and saved, `student.encoder`
    is what is exported), `teacher` (saved), `update_teacher(update)`, and `forward` -> LossOutput."""
    if config.objective == "data2vec1":
        return Data2Vec1(build_encoder(config.model, modality), config)
    if config.objective == "mae":
        return MAE(build_encoder(config.model, modality), config)
    if config.objective == "mlm":
        return MLM(build_encoder(config.model, modality), config)
    if not config.masking.drop_masked:  # the ablation that encodes the masked tokens
        return Data2Vec2(build_encoder(config.model, modality), modality.decoder(config), config,
                         student=MaskEmbeddedStudent)
    return build_data2vec2(config, modality)
