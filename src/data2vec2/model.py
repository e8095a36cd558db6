"""Data2Vec2: the student, the EMA teacher, the contextualised targets and the loss (spec 1-2).

One training step on a batch of B samples with M masks each:

    lf      = student.local_features(x)                    (B, T, D)   once per sample
    student : clone M times, drop masked tokens, encode    (B*M, extra + T_keep, D)
    decoder : kept tokens + N(0, 0.01^2) noise at masked positions, un-shuffled -> conv decoder
    teacher : EMA model on the unmasked sample, once       FFN outputs of the shared blocks
    targets : top-K FFN outputs, per-layer norm, mean (fp32), final norm, repeated M times
    loss    : sum over masked tokens of ||pred - target||^2 * scale (+ CLS term); the caller
              divides by the global number of masked tokens
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config
from .encoder import Encoder, MaskInfo, gather_tokens
from .nn.ema import ema_decay, ema_update, make_teacher


def normalize(x: Tensor, kind: str, padding_mask: Tensor | None = None) -> Tensor:
    """x: (B, T, C) in fp32. "instance": per sample and channel over the T tokens (no affine,
    eps 1e-5); "layer": per token over C (no affine, eps 1e-5); "none": unchanged.
    `padding_mask` (B, T), True = padding: instance statistics use only the other tokens (a
    deliberate fix: the reference includes padding, spec 10 item 18)."""
    if kind == "instance" and padding_mask is not None and bool(padding_mask.any()):
        keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        count = keep.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1, 1)
        mean = (x * keep).sum(dim=1, keepdim=True) / count
        var = ((x - mean) ** 2 * keep).sum(dim=1, keepdim=True) / count  # biased, as instance_norm
        return (x - mean) / torch.sqrt(var + 1e-5)
    if kind == "instance":
        return F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
    if kind == "layer":
        return F.layer_norm(x, x.shape[-1:])
    return x


def channel_std(x: Tensor) -> Tensor:
    """Std of each channel over all other axes, averaged over channels (spec 1.10)."""
    x = x.detach().float().reshape(-1, x.shape[-1])
    return x.std(dim=0).mean() if x.shape[0] > 1 else x.new_zeros(())


def mask_noise(num_rows: int, num_masked: int, dim: int, std: float, num_masks: int,
               seeds: Tensor | None, device: torch.device) -> Tensor:
    """Mask tokens: fresh N(0, std^2) noise, (B*M, num_masked, dim). With per-sample `seeds` (B,)
    the noise of sample b depends only on its seed, so runs agree across world sizes."""
    if seeds is None:
        return torch.randn(num_rows, num_masked, dim, device=device) * std
    chunks = []
    for seed in seeds.tolist():
        gen = torch.Generator(device=device).manual_seed(int(seed))
        chunks.append(torch.randn(num_masks, num_masked, dim, generator=gen, device=device))
    return torch.cat(chunks) * std


@dataclass
class StudentOutput:
    local_features: Tensor  # (B, T, D)
    pred: Tensor  # (B*M, T, D) decoder output at every position
    x: Tensor  # (B*M, extra + T_keep, D) encoder output


class Student(nn.Module):
    """Encoder + decoder: the part that is trained (and wrapped in DDP)."""

    def __init__(self, encoder: Encoder, decoder: nn.Module, config: Config):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.num_masks = config.masking.num_masks
        self.noise_std = config.decoder.mask_noise_std
        self.decoder_input_dropout = config.decoder.input_dropout

    def forward(self, inputs: Tensor, mask: Tensor, noise_seeds: Tensor | None = None) -> StudentOutput:
        """inputs: (B, ...); mask: (B*M, T) bool, True = masked, the same count in every row."""
        info = MaskInfo.from_mask(mask)
        lf = self.encoder.local_features(inputs)  # (B, T, D)
        out = self.encoder.forward_masked(lf, info, self.num_masks, self.encoder.padding_mask(inputs))
        x = F.dropout(out.x, self.decoder_input_dropout, self.training)
        kept = x[:, self.encoder.num_extra_tokens:]  # (B*M, T_keep, D)
        N, T, D = mask.shape[0], mask.shape[1], kept.shape[-1]
        noise = mask_noise(N, T - kept.shape[1], D, self.noise_std, self.num_masks, noise_seeds, kept.device)
        full = torch.cat([kept, noise.to(kept.dtype)], dim=1)  # (B*M, T, D) as [kept..., masked...]
        full = gather_tokens(full, info.ids_restore)  # back to the original token order
        return StudentOutput(local_features=lf, pred=self.decoder(full), x=out.x)


class Data2Vec2(nn.Module):
    def __init__(self, encoder: Encoder, decoder: nn.Module, config: Config):
        super().__init__()
        self.config = config
        self.student = Student(encoder, decoder, config)
        # Images: the teacher is a full EMA copy of the encoder, patch embedding and CLS included.
        # Text and (by default) speech: a copy without the local encoder, fed the student's local
        # features.
        self.teacher = make_teacher(encoder, () if encoder.ema_local_encoder else encoder.local_encoder_modules)
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
        e = self.config.ema
        return ema_decay(step, e.decay, e.end_decay, e.anneal_steps)

    @torch.no_grad()
    def update_teacher(self, step: int) -> float:
        """EMA step after optimizer update number `step` (1-based), with tau(step)."""
        tau = self.ema_decay(step)
        ema_update(self.teacher, self.student.encoder, tau)
        return tau

    @torch.no_grad()
    def targets(self, inputs: Tensor, local_features: Tensor | None = None) -> Tensor:
        """Contextualised targets (B, T, D) in fp32, once per original sample (not per clone).
        `local_features` (B, T, D): the student's, for a teacher that shares the local encoder
        (computed here when not given)."""
        t = self.config.targets
        padding = self.encoder.padding_mask(inputs)  # (B, T) or None
        if self.encoder.ema_local_encoder:
            out = self.teacher(inputs)
        else:
            if local_features is None:
                local_features = self.encoder.local_features(inputs)
            out = self.teacher.forward_local(local_features.detach(), padding)
        extra = self.teacher.num_extra_tokens
        layers = [normalize(f[:, extra:].float(), t.layer_norm, padding) for f in out.ffn[-t.top_k:]]
        y = torch.stack(layers).mean(dim=0)  # (B, T, D)
        return normalize(y, t.final_norm, padding)

    # -- loss -----------------------------------------------------------------------------
    def regression(self, pred: Tensor, target: Tensor) -> Tensor:
        """Elementwise loss * scale, in fp32: L2 or (beta > 0) smooth L1."""
        pred = pred.float()
        beta = self.config.loss.beta
        if beta > 0:
            err = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
        else:
            err = (pred - target) ** 2
        return err * self.loss_scale

    def forward(self, inputs: Tensor, mask: Tensor, noise_seeds: Tensor | None = None,
                student: nn.Module | None = None) -> dict[str, Tensor]:
        """Returns the *summed* loss ("loss_sum"), the local masked-token count ("num_masked")
        and detached health metrics. Pass `student` to run a DDP-wrapped copy of `self.student`."""
        student = student if student is not None else self.student
        M = self.config.masking.num_masks
        out: StudentOutput = student(inputs, mask, noise_seeds)
        y = self.targets(inputs, out.local_features)  # (B, T, D)
        y_rep = y.repeat_interleave(M, dim=0)  # (B*M, T, D), same sample-major order as the clones

        num_masked = mask.sum()
        reg = self.regression(out.pred[mask], y_rep[mask]).sum()
        loss_sum = reg
        metrics = {}
        cls_weight = self.config.loss.cls_weight
        if cls_weight > 0 and self.encoder.num_extra_tokens > 0:
            # CLS loss (spec 1.7): the student's CLS output of each clone regresses the mean of the
            # sample's final targets over tokens, weighted by cls_weight * (local masked count).
            cls_target = y.mean(dim=1).repeat_interleave(M, dim=0)  # (B*M, D)
            cls = self.regression(out.x[:, 0], cls_target).sum()
            loss_sum = loss_sum + cls * cls_weight * num_masked
            metrics["cls_loss"] = cls.detach() / mask.shape[0]
        metrics.update(
            reg_loss=reg.detach() / num_masked,
            target_std=channel_std(y),
            pred_std=channel_std(out.pred[mask]),
            # scale-free: the block after the local encoder normalises its input, so only a loss of
            # variation across tokens is a collapse, not features that merely shrink (spec 10.13)
            local_std=channel_std(F.layer_norm(out.local_features.detach().float(), out.local_features.shape[-1:])),
            masked_fraction=num_masked.detach().float() / mask.numel(),
        )
        return {"loss_sum": loss_sum, "num_masked": num_masked, **metrics}


def build_model(config: Config) -> Data2Vec2:
    if config.model.modality == "image":
        from .modalities.image import build_image_parts

        encoder, decoder = build_image_parts(config)
    elif config.model.modality == "audio":
        from .modalities.audio import build_audio_parts

        encoder, decoder = build_audio_parts(config)
    elif config.model.modality == "text":
        from .modalities.text import build_text_parts

        encoder, decoder = build_text_parts(config)
    else:  # pragma: no cover - validated earlier
        raise ValueError(f"unknown modality {config.model.modality!r}")
    return Data2Vec2(encoder, decoder, config)


def build_encoder(config: Config) -> Encoder:
    if config.model.modality == "image":
        from .modalities.image import ImageEncoder

        return ImageEncoder(config.model)
    if config.model.modality == "audio":
        from .modalities.audio import AudioEncoder

        return AudioEncoder(config.model)
    if config.model.modality == "text":
        from .modalities.text import TextEncoder

        return TextEncoder(config.model)
    raise ValueError(f"unknown modality {config.model.modality!r}")  # pragma: no cover
