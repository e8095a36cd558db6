"""data2vec 1.0 (Baevski et al., ICML 2022; fairseq examples/data2vec/models/data2vec_audio.py,
data2vec_text.py, data2vec_vision.py) over the same encoder, teacher and targets code as data2vec 2.0.

What differs from data2vec 2.0 (the paper's section 2 lists it):

    student : the WHOLE sequence is encoded; masked tokens are replaced by one learned mask
              embedding (no token dropping); M = 1 mask per sample in the reference
    head    : a regression head (`final_proj` / `regression_head`) instead of the conv decoder:
              Linear(D, D), or with decoder.projection_layers=2 Linear(D, 2D) -> GELU -> Linear(2D, D)
              (v1 text's head_layers=2)
    targets : the EMA teacher on the unmasked sample, the average of its top-K blocks' FFN outputs,
              each normalised (targets.layer_norm), then targets.final_norm: the same code
    loss    : L2 or smooth L1 (loss.beta) x loss.scale over the masked tokens; no CLS term

The reference's settings per modality, for the config (`objective=data2vec1` plus these):
speech spans of 10 (mask_prob 0.65 nominal, about half the frames after overlaps), targets.top_k=8
layer_norm=instance final_norm=none, L2, EMA 0.999 -> 0.9999; text spans of 4 tokens covering
35 %, every chosen token replaced by <mask> (no random or kept tokens), top_k=10 layer_norm=layer
final_norm=none, loss.beta=4 loss.scale=1, a 2-layer head, EMA 0.999 -> 0.9999; images (BEiT
backbone there) top_k=6 layer_norm=none final_norm=layer, loss.beta=2. One simplification, named
in docs/efficiency.md: the image targets are FFN outputs (the v1 vision code averages whole block
outputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..encoder import Encoder
from ..errors import ConfigError
from ..model import Data2Vec2, Student, StudentOutput
from ..nn.decoders import projection


class Data2Vec1Student(nn.Module):
    """Encoder + mask embedding + regression head."""

    def __init__(self, encoder: Encoder, config: Config):
        super().__init__()
        D = config.model.embed_dim
        self.encoder = encoder
        self.num_masks = config.masking.num_masks
        self.mask_embedding = nn.Parameter(torch.empty(D))
        nn.init.trunc_normal_(self.mask_embedding, std=0.02)  # the reference's mask_emb init
        self.head = projection(D, D, config.decoder.projection_layers)  # final_proj / regression_head

    def forward(self, inputs: Tensor, mask: Tensor, noise_seeds: Tensor,
                masked_per_row: int | None = None) -> StudentOutput:
        """inputs: (B, ...); mask: (B*M, T) bool, True = masked; noise_seeds and masked_per_row:
        unused (no noise; every token is encoded)."""
        local_features = self.encoder.local_features(inputs)  # (B, T, D)
        padding = self.encoder.local_encoder.padding_mask(inputs)
        encoded = self.encoder.forward_mask_embedded(local_features, mask, self.num_masks, self.mask_embedding,
                                                     padding).x  # (B*M, extra + T, D)
        pred = self.head(encoded[:, self.encoder.num_extra_tokens:])  # (B*M, T, D)
        return StudentOutput(local_features=local_features, encoded=encoded, pred=pred)


class Data2Vec1(Data2Vec2):
    """The data2vec 2.0 model with the data2vec 1.0 student: teacher, EMA, targets and loss are
    inherited (the CLS term is off: loss.cls_weight must be 0)."""

    def __init__(self, encoder: Encoder, config: Config):
        if config.loss.cls_weight != 0:
            raise ConfigError("loss.cls_weight: data2vec 1.0 has no CLS loss; set loss.cls_weight=0")
        super().__init__(encoder, nn.Identity(), config)
        self.student = Data2Vec1Student(encoder, config)


class MaskEmbeddedStudent(Student):
    """The ablation `masking.drop_masked=false` of data2vec 2.0 (docs/efficiency.md): its student
    (M clones, the conv decoder, the same targets and loss) encoding every token as data2vec 1.0's
    student does, the masked ones replaced by a learned mask embedding, instead of dropping them."""

    def __init__(self, encoder: Encoder, decoder: nn.Module, config: Config):
        super().__init__(encoder, decoder, config)
        self.mask_embedding = nn.Parameter(torch.empty(config.model.embed_dim))
        nn.init.trunc_normal_(self.mask_embedding, std=0.02)

    def forward(self, inputs: Tensor, mask: Tensor, noise_seeds: Tensor,
                masked_per_row: int | None = None) -> StudentOutput:
        """As Student.forward; noise_seeds and masked_per_row unused (nothing is dropped)."""
        local_features = self.encoder.local_features(inputs)  # (B, T, D)
        padding = self.encoder.local_encoder.padding_mask(inputs)
        encoded = self.encoder.forward_mask_embedded(local_features, mask, self.num_masks, self.mask_embedding,
                                                     padding).x  # (B*M, extra + T, D)
        x = F.dropout(encoded, self.decoder_input_dropout, self.training)
        pred = self.decoder(x[:, self.encoder.num_extra_tokens:])  # the decoder sees every position
        return StudentOutput(local_features=local_features, encoded=encoded, pred=pred)
