"""MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022) over the same
encoder, data and trainer as data2vec 2.0.

    encoder : the visible patches only (masked tokens dropped, as data2vec 2.0's student), random
              masking of masking.mask_prob (the paper: 0.75), one mask per sample
    decoder : Linear(D -> d) -> [visible tokens + one learned mask token at every masked position]
              in the original order + fixed sin-cos positions -> decoder.layers pre-LN Transformer
              blocks of width d = decoder.dim (decoder.num_heads heads) -> LayerNorm -> Linear(d ->
              pixels of a patch); the paper's ViT-B decoder is 8 blocks of 512
    target  : each patch's pixels, normalised by the patch's own mean and variance (`norm_pix_loss`)
    loss    : mean squared error per patch, averaged over the masked patches

There is no teacher; the encoder's CLS token is kept in the encoder and left out of the decoder.
The modality's local encoder supplies `patch_values(inputs)` (B, T, patch_dim) and
`position_table(dim)` (T, dim).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..encoder import Encoder, MaskInfo, gather_tokens
from ..model import LossOutput, StudentOutput, channel_std
from .teacherless import TeacherlessModel, require_hooks


def normalized_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """(B, T, P) -> each patch minus its mean, over sqrt(its unbiased variance + eps)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


class MAEStudent(nn.Module):
    def __init__(self, encoder: Encoder, config: Config):
        super().__init__()
        local = encoder.local_encoder
        require_hooks(encoder, ("patch_values", "patch_dim", "position_table"), "mae", "patches of pixels", config)
        D, d = config.model.embed_dim, config.decoder.dim
        self.encoder = encoder
        self.embed = nn.Linear(D, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_buffer("positions", local.position_table(d).unsqueeze(0), persistent=False)  # (1, T, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, config.decoder.num_heads, dim_feedforward=4 * d, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(config.decoder.layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, local.patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in [self.embed, self.head, *self.blocks]:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, inputs: Tensor, mask: Tensor, noise_seeds: Tensor,
                masked_per_row: int | None = None) -> StudentOutput:
        """inputs: (B, C, H, W); mask: (B, T) bool, True = masked (`masked_per_row` in each row, if
        known); noise_seeds: unused."""
        info = MaskInfo.from_mask(mask, masked_per_row)
        local_features = self.encoder.local_features(inputs)  # (B, T, D)
        encoded = self.encoder.forward_masked(local_features, info, 1).x  # (B, extra + T_keep, D)
        kept = self.embed(encoded[:, self.encoder.num_extra_tokens:])  # (B, T_keep, d)
        B, T = mask.shape
        masked = self.mask_token.to(kept.dtype).expand(B, T - kept.shape[1], -1)  # (B, T - T_keep, d)
        x = gather_tokens(torch.cat([kept, masked], dim=1), info.ids_restore)  # (B, T, d), original order
        x = x + self.positions.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return StudentOutput(local_features=local_features, encoded=encoded, pred=self.head(self.norm(x)))


class MAE(TeacherlessModel):
    """The trainer's model for MAE."""

    def __init__(self, encoder: Encoder, config: Config):
        super().__init__(MAEStudent(encoder, config), config, "MAE encodes one masked view per image")

    def forward(self, batch: dict | Tensor, mask: Tensor | None = None, noise_seeds: Tensor | None = None) -> LossOutput:
        """The per-patch MSE summed over the masked patches, and their count. A collate batch, or
        (inputs, mask, noise_seeds) apart."""
        if mask is not None:
            batch = {"inputs": batch, "mask": mask, "noise_seed": noise_seeds}
        inputs, mask = batch["inputs"], batch["mask"]
        out = self.student(inputs, mask, batch["noise_seed"], batch.get("masked_per_row"))
        target = normalized_patches(self.encoder.local_encoder.patch_values(inputs).float())  # (B, T, P)
        count = batch.get("num_masked", mask.sum())
        per_patch = F.mse_loss(out.pred.float(), target, reduction="none").mean(dim=-1)  # (B, T)
        # the masked patches' sum as a product with the mask (a gather's size would make the host wait)
        loss_sum = (per_patch * mask).sum()

        def metrics() -> dict[str, Tensor]:
            return {"reg_loss": loss_sum.detach() / count, "pred_std": channel_std(out.pred[mask]),
                    "target_std": channel_std(target[mask])}
        return LossOutput(loss_sum=loss_sum, count=count, metrics=metrics)
