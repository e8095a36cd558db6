"""Masked language modelling as RoBERTa trains it (Liu et al. 2019; BERT, Devlin et al. 2019), over
the same encoder, data and trainer as data2vec 2.0.

    corrupt : of the tokens the collate masks (masking.mask_prob, the paper's 15 %, one mask per
              sequence), 80 % become the mask symbol, 10 % a random ordinary token, 10 % stay
    encode  : the whole corrupted sequence
    head    : Linear(D, D) -> GELU -> LayerNorm -> the token embedding, tied, as output layer + a bias
    loss    : cross-entropy of the original tokens at the chosen positions

There is no teacher. The random draws of sample b come from its noise seed, so a resumed run and an
uninterrupted one corrupt alike. The modality's local encoder supplies `token_embed` (the tied
table), `mask_token_id` and `first_ordinary_token` (random replacements are drawn from there on).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config
from ..encoder import Encoder
from ..model import LossOutput, StudentOutput
from .teacherless import TeacherlessModel, require_hooks

MASK_SYMBOL, RANDOM_TOKEN = 0.8, 0.1  # of the chosen tokens; the rest stay as they are


def corrupt(tokens: Tensor, chosen: Tensor, seeds: Tensor, mask_id: int, first_ordinary: int, vocab: int) -> Tensor:
    """tokens, chosen: (B, T); seeds: (B,) -> the corrupted tokens (B, T)."""
    out = tokens.clone()
    for b, seed in enumerate(seeds.tolist()):
        gen = torch.Generator().manual_seed(int(seed))
        roll = torch.rand(tokens.shape[1], generator=gen).to(tokens.device)  # (T,)
        random_ids = torch.randint(first_ordinary, vocab, (tokens.shape[1],), generator=gen).to(tokens.device)
        to_mask = chosen[b] & (roll < MASK_SYMBOL)
        to_random = chosen[b] & (roll >= MASK_SYMBOL) & (roll < MASK_SYMBOL + RANDOM_TOKEN)
        out[b] = torch.where(to_mask, mask_id, torch.where(to_random, random_ids, tokens[b]))
    return out


class MLMStudent(nn.Module):
    def __init__(self, encoder: Encoder, config: Config):
        super().__init__()
        local = encoder.local_encoder
        require_hooks(encoder, ("token_embed", "mask_token_id", "first_ordinary_token"), "mlm", "a token vocabulary", config)
        D = config.model.embed_dim
        self.encoder = encoder
        self.transform = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.LayerNorm(D, eps=config.model.norm_eps))
        self.bias = nn.Parameter(torch.zeros(local.token_embed.num_embeddings))
        nn.init.normal_(self.transform[0].weight, std=0.02)
        nn.init.zeros_(self.transform[0].bias)

    def forward(self, tokens: Tensor, mask: Tensor, noise_seeds: Tensor) -> StudentOutput:
        """tokens: (B, T) ids; mask: (B, T) bool, True = chosen; noise_seeds: (B,) the corruption's
        seeds. `pred`: the scores of every vocabulary entry at the chosen positions, (N chosen, V)."""
        local = self.encoder.local_encoder
        corrupted = corrupt(tokens, mask, noise_seeds, local.mask_token_id, local.first_ordinary_token,
                            local.token_embed.num_embeddings)
        encoded = self.encoder(corrupted).x  # (B, T, D)
        features = self.transform(encoded[mask])  # (N chosen, D)
        logits = features @ local.token_embed.weight.to(features.dtype).t() + self.bias  # tied output layer
        return StudentOutput(local_features=encoded, encoded=encoded, pred=logits)


class MLM(TeacherlessModel):
    """The trainer's model for masked language modelling."""

    def __init__(self, encoder: Encoder, config: Config):
        super().__init__(MLMStudent(encoder, config), config, "MLM corrupts each sequence once")

    def forward(self, batch: dict | Tensor, mask: Tensor | None = None, noise_seeds: Tensor | None = None) -> LossOutput:
        """Cross-entropy summed over the chosen tokens, and their count. A collate batch, or
        (tokens, mask, noise_seeds) apart."""
        if mask is not None:
            batch = {"inputs": batch, "mask": mask, "noise_seed": noise_seeds}
        tokens, mask = batch["inputs"], batch["mask"]
        out = self.student(tokens, mask, batch["noise_seed"])
        logits = out.pred.float()  # (N chosen, V)
        loss_sum = F.cross_entropy(logits, tokens[mask], reduction="sum")
        count = batch.get("num_masked", mask.sum())

        def metrics() -> dict[str, Tensor]:
            return {"reg_loss": loss_sum.detach() / max(count, 1),
                    "accuracy": (logits.argmax(-1) == tokens[mask]).float().mean()}
        return LossOutput(loss_sum=loss_sum, count=count, metrics=metrics)
