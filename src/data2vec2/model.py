"""Data2Vec2: the student, the EMA teacher, the contextualised targets and the loss (paper section
3; the reference's `Data2VecMultiModel.forward`, fairseq examples/data2vec/models/data2vec2.py).

One training step on a batch of B samples with M masks each:

    forward_student : local features once per sample (B, T, D); M clones, masked tokens dropped,
                      encoded (B*M, extra + T_keep, D); N(0, 0.01^2) noise at the masked positions,
                      un-shuffled, conv decoder -> predictions (B*M, T, D)
    forward_targets : the EMA teacher on the unmasked sample, once; the FFN outputs of its top-K
                      blocks, each normalised, averaged in fp32, final norm -> (B, T, D)
    forward_loss    : ||prediction - target||^2 * scale over the masked tokens (+ the CLS term),
                      divided by the masked-token count of the whole update
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config, ModelConfig
from .encoder import Encoder, MaskInfo, gather_tokens, init_bert
from .nn.ema import ema_decay, ema_update, make_teacher, sized_to_run

if TYPE_CHECKING:
    from .modality import Modality


def normalize(x: Tensor, kind: str, padding_mask: Tensor | None = None) -> Tensor:
    """x: (B, T, C) in fp32. "instance": per sample and channel over the T tokens (no affine,
    eps 1e-5); "layer": per token over C (no affine, eps 1e-5); "none": unchanged.
    `padding_mask` (B, T), True = padding: instance statistics use only the other tokens (a
    deliberate fix: the reference's `instance_norm` includes padding)."""
    if kind == "instance":
        plain = F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
        if padding_mask is None:
            return plain
        keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        count = keep.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1, 1)
        mean = (x * keep).sum(dim=1, keepdim=True) / count
        var = ((x - mean) ** 2 * keep).sum(dim=1, keepdim=True) / count  # biased, as instance_norm
        # a batch without padding keeps instance_norm's own result; the choice is made on the
        # device, so that the host need not wait to learn whether the batch has padding
        return torch.where(padding_mask.any(), (x - mean) / torch.sqrt(var + 1e-5), plain)
    if kind == "layer":
        return F.layer_norm(x, x.shape[-1:])
    return x


def channel_std(x: Tensor) -> Tensor:
    """Std of each channel over all other axes, averaged over channels (the reference's
    `compute_var`, logged as target_var / pred_var)."""
    x = x.detach().float().reshape(-1, x.shape[-1])
    return x.std(dim=0).mean() if x.shape[0] > 1 else x.new_zeros(())


def mask_noise(num_masked: int, dim: int, std: float, num_masks: int, seeds: Tensor, device: torch.device) -> Tensor:
    """Mask tokens: fresh N(0, std^2) noise, (B*M, num_masked, dim). The noise of sample b depends
    only on its seed `seeds[b]`, so runs agree across world sizes and after a resume."""
    chunks = []
    for seed in seeds.tolist():
        gen = torch.Generator(device=device).manual_seed(int(seed))
        chunks.append(torch.randn(num_masks, num_masked, dim, generator=gen, device=device))
    return torch.cat(chunks) * std


@dataclass
class StudentOutput:
    local_features: Tensor  # (B, T, D), once per sample
    encoded: Tensor  # (B*M, extra + T_keep, D): the encoder's output on the kept tokens
    pred: Tensor  # (B*M, T, D): the decoder's prediction at every position


class Student(nn.Module):
    """Encoder + decoder: the part that is trained (and wrapped in DDP)."""

    def __init__(self, encoder: Encoder, decoder: nn.Module, config: Config):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.num_masks = config.masking.num_masks
        self.noise_std = config.decoder.mask_noise_std
        self.decoder_input_dropout = config.decoder.input_dropout

    def forward(self, inputs: Tensor, mask: Tensor, noise_seeds: Tensor,
                masked_per_row: int | None = None) -> StudentOutput:
        """inputs: (B, ...); mask: (B*M, T) bool, True = masked, the same count in every row
        (`masked_per_row`, if known); noise_seeds: (B,) int64, one per sample."""
        local_features = self.encoder.local_features(inputs)  # (B, T, D)
        padding = self.encoder.local_encoder.padding_mask(inputs)
        info = MaskInfo.from_mask(mask, masked_per_row)
        encoded = self.encoder.forward_masked(local_features, info, self.num_masks, padding).x
        x = F.dropout(encoded, self.decoder_input_dropout, self.training)
        kept = x[:, self.encoder.num_extra_tokens:]  # (B*M, T_keep, D)
        T, D = mask.shape[1], kept.shape[-1]
        noise = mask_noise(T - kept.shape[1], D, self.noise_std, self.num_masks, noise_seeds, kept.device)
        full = torch.cat([kept, noise.to(kept.dtype)], dim=1)  # (B*M, T, D) as [kept..., masked...]
        full = gather_tokens(full, info.ids_restore)  # back to the original token order
        return StudentOutput(local_features=local_features, encoded=encoded, pred=self.decoder(full))


def no_metrics() -> dict[str, Tensor]:
    return {}


@dataclass
class LossOutput:
    """What every objective returns for a batch (pre-training and fine-tuning alike). The trainer
    adds the sums of an update's micro-batches and processes and divides by the added counts."""

    loss_sum: Tensor  # the loss summed over what this batch is scored on (masked tokens, samples, ...)
    count: Tensor | int | float  # how many that is (a host number where the collate knows it)
    # detached health metrics of this batch, computed only when called (on logging steps)
    metrics: Callable[[], dict[str, Tensor]] = no_metrics

    @property
    def loss(self) -> Tensor:
        """This batch's mean loss."""
        return self.loss_sum / self.count


class PretrainingObjective(nn.Module):
    """What the trainer asks of a pre-training objective with a `student` and a `teacher`."""

    student: nn.Module
    teacher: nn.Module

    @property
    def trained(self) -> nn.Module:
        """The module whose parameters the optimizer updates (a teacher follows by EMA, or is empty)."""
        return self.student

    def parts(self) -> dict[str, nn.Module]:
        """What a checkpoint holds, by name."""
        return {"student": self.student, "teacher": self.teacher}


class Data2Vec2(PretrainingObjective):
    def __init__(self, encoder: Encoder, decoder: nn.Module, config: Config, student: type = Student):
        """`student`: the paper's Student, or an ablation's (objectives/data2vec1.py)."""
        super().__init__()
        self.config = config
        self.student = student(encoder, decoder, config)
        # The teacher is an fp32 EMA copy of the encoder. Without `ema_local_encoder` (text, and
        # the reference's audio) it has no copy of the local encoder's shareable parts and encodes
        # the student's local features, detached.
        local = encoder.local_encoder
        shared = () if local.ema_local_encoder else tuple(f"local_encoder.{n}" for n in local.shareable)
        self.teacher = make_teacher(encoder, shared)
        D = config.model.embed_dim
        self.loss_scale = config.loss.scale if config.loss.scale is not None else 1.0 / math.sqrt(D)

    @property
    def encoder(self) -> Encoder:
        return self.student.encoder

    def train(self, mode: bool = True) -> "Data2Vec2":
        super().train(mode)
        self.teacher.eval()  # no dropout, drop-path or layerdrop in the teacher, ever
        return self

    # -- teacher --------------------------------------------------------------------------
    def ema_decay(self, step: int) -> float:
        ema = self.config.ema
        schedule = sized_to_run(ema.decay, ema.end_decay, ema.anneal_steps, self.config.train.max_steps,
                                ema.start_half_life, ema.end_half_life, ema.anneal_fraction)
        return ema_decay(step, *schedule)

    @torch.no_grad()
    def update_teacher(self, step: int) -> float:
        """EMA step after optimizer update number `step` (1-based), with tau(step)."""
        tau = self.ema_decay(step)
        ema_update(self.teacher, self.student.encoder, tau)
        return tau

    @torch.no_grad()
    def forward_targets(self, inputs: Tensor, local_features: Tensor | None = None) -> Tensor:
        """Contextualised targets (B, T, D) in fp32, once per original sample (not per clone).
        `local_features` (B, T, D): the student's, for a teacher that shares the local encoder
        (computed here when not given)."""
        targets = self.config.targets
        padding = self.encoder.local_encoder.padding_mask(inputs)  # (B, T) or None
        if self.encoder.local_encoder.ema_local_encoder:
            out = self.teacher.forward_unmasked(self.teacher.local_features(inputs), padding)
        else:
            if local_features is None:
                local_features = self.encoder.local_features(inputs)
            out = self.teacher.forward_unmasked(local_features.detach(), padding)
        extra = self.teacher.num_extra_tokens
        layers = [normalize(f[:, extra:].float(), targets.layer_norm, padding) for f in out.ffn[-targets.top_k:]]
        y = torch.stack(layers).mean(dim=0)  # (B, T, D)
        return normalize(y, targets.final_norm, padding)

    # -- student --------------------------------------------------------------------------
    def forward_student(self, inputs: Tensor, mask: Tensor, noise_seeds: Tensor,
                        masked_per_row: int | None = None) -> StudentOutput:
        return self.student(inputs, mask, noise_seeds, masked_per_row)

    # -- loss -----------------------------------------------------------------------------
    def elementwise_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """(pred - target)^2 * scale, or smooth L1 * scale with loss.beta > 0, in fp32."""
        pred = pred.float()
        beta = self.config.loss.beta
        if beta > 0:
            err = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
        else:
            err = (pred - target) ** 2
        return err * self.loss_scale

    def forward_loss(self, out: StudentOutput, targets: Tensor, mask: Tensor,
                     num_masked: int | float | None = None) -> LossOutput:
        """The loss summed over the masked tokens of this batch, and their count (`num_masked`:
        that count where the caller knows it on the host; else it is counted on the device)."""
        M = self.config.masking.num_masks
        y_rep = targets.repeat_interleave(M, dim=0)  # (B*M, T, D), the clones' sample-major order
        count = mask.sum() if num_masked is None else num_masked
        # the masked positions' sum, as a product with the mask rather than a gather of them: a
        # gather's size is a count the host would wait for the device to make
        reg = (self.elementwise_loss(out.pred, y_rep) * mask.unsqueeze(-1)).sum()
        loss_sum = reg
        cls = None
        cls_weight = self.config.loss.cls_weight
        if cls_weight > 0 and self.encoder.num_extra_tokens > 0:
            # CLS loss: the student's CLS output of each clone regresses the mean of the sample's
            # final targets over tokens, weighted by cls_weight * (this batch's masked count)
            cls_target = targets.mean(dim=1).repeat_interleave(M, dim=0)  # (B*M, D)
            cls = self.elementwise_loss(out.encoded[:, 0], cls_target).sum()
            loss_sum = loss_sum + cls * cls_weight * count

        def metrics() -> dict[str, Tensor]:
            local = out.local_features.detach().float()
            values = dict(
                reg_loss=reg.detach() / count,
                target_std=channel_std(targets),
                pred_std=channel_std(out.pred[mask]),
                # scale-free: the block after the local encoder normalises its input, so only a
                # loss of variation across tokens is a collapse, not features that merely shrink
                local_std=channel_std(F.layer_norm(local, local.shape[-1:])),
                masked_fraction=torch.as_tensor(count, dtype=torch.float32) / mask.numel(),
            )
            if cls is not None:
                values["cls_loss"] = cls.detach() / mask.shape[0]
            return values
        return LossOutput(loss_sum=loss_sum, count=count, metrics=metrics)

    def forward(self, batch: dict | Tensor, mask: Tensor | None = None, noise_seeds: Tensor | None = None) -> LossOutput:
        """One batch of the collate (data/collate.py): {"inputs", "mask" (B*M, T), "noise_seed" (B,),
        and the host counts "num_masked" and "masked_per_row" where known}: student, targets, loss.
        `model(inputs, mask, noise_seeds)`, the three tensors apart, is the same."""
        if mask is not None:
            batch = {"inputs": batch, "mask": mask, "noise_seed": noise_seeds}
        inputs, mask = batch["inputs"], batch["mask"]
        out = self.forward_student(inputs, mask, batch["noise_seed"], batch.get("masked_per_row"))
        targets = self.forward_targets(inputs, out.local_features)
        return self.forward_loss(out, targets, mask, batch.get("num_masked"))

    def after_update(self, update: int) -> dict[str, float]:
        """After optimizer update number `update` (1-based): the EMA step of the teacher."""
        return {"ema_decay": self.update_teacher(update)}


def build_encoder(model_config: ModelConfig, modality: "Modality") -> Encoder:
    """The encoder of `model_config`: the modality's local encoder, then the shared path. Every
    Linear, Embedding and LayerNorm gets the BERT init, then the local encoder its own."""
    encoder = Encoder(model_config, modality.local_encoder)
    encoder.apply(init_bert)
    encoder.local_encoder.reset_parameters()
    return encoder


def build_model(config: Config, modality: "Modality") -> Data2Vec2:
    return Data2Vec2(build_encoder(config.model, modality), modality.decoder(config), config)


def random_encoder(model_config: ModelConfig, modality: "Modality", seed: int = 0) -> Encoder:
    """A randomly initialised encoder of the same architecture (the baseline of every evaluation)."""
    torch.manual_seed(seed)
    return build_encoder(model_config, modality).eval()
