"""Full fine-tuning of an image encoder for classification: the reference's protocol
(`MaeImageClassificationModel`, fairseq examples/data2vec/models/mae_image_classification.py and
config/vision/finetuning/mae_imagenet_clean.yaml), scaled down for small images on a CPU.

    head        : mean of the patch tokens (CLS excluded) -> LayerNorm (fc_norm) -> Linear(D, classes),
                  the weight N(0, 0.02) truncated, the bias zero
    drop path   : a linear ramp 0 .. drop_path over the shared blocks; the prenet blocks take the
                  ramp's first entries (the reference's quirk)
    layer decay : with n = prenet + shared blocks + 1, block i (from 0) gets lr x decay^(n - 1 - i),
                  so the last block gets decay^1; the patch embedding, CLS, context LayerNorm,
                  fc_norm and head keep lr (the reference's choice)
    augment     : random resized crop (area 35-100 %, aspect 3/4-4/3) and horizontal flip on the
                  batch; mixup (alpha 0.8) or cutmix (alpha 1.0) on 90 % of batches, half each;
                  label smoothing 0.1 and soft-target cross-entropy
    optimizer   : AdamW (0.9, 0.999), weight decay 0.05 except on biases, norms and tokens; linear
                  warmup, then cosine to min_lr, one step per update

RandAugment and random erasing of the reference are left out. The same recipe, in the same run,
also fine-tunes a randomly initialised encoder of the same architecture.

The learning rate and layer decay were chosen on a validation split (benchmarks/finetune_recipe.py,
docs/efficiency.md): lr 2e-3 with decay 0.8 had the best mean over data2vec 2.0, MAE, data2vec 1.0
and random-init encoders of image-tiny. The reference's 0.65 is for 12 blocks (the first gets
0.65^12 = 0.6 % of the lr); image-tiny has 6 (prenet included), where 0.8 gives the first 26 %.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ...encoder import Encoder
from .data import EvalTransform, Subset


@dataclass
class Recipe:
    updates: int = 600
    batch_size: int = 128
    lr: float = 2e-3  # lr and layer_decay: chosen on validation (see above)
    min_lr: float = 1e-6
    warmup_fraction: float = 0.1
    layer_decay: float = 0.8
    weight_decay: float = 0.05
    drop_path: float = 0.1
    mixup: float = 0.8  # Beta(alpha, alpha) for mixup; 0 turns it off
    cutmix: float = 1.0  # Beta(alpha, alpha) for cutmix; 0 turns it off
    mix_prob: float = 0.9
    label_smoothing: float = 0.1
    crop_area: tuple[float, float] = (0.35, 1.0)
    seed: int = 0


class Classifier(nn.Module):
    def __init__(self, encoder: Encoder, num_classes: int):
        super().__init__()
        D = encoder.cfg.embed_dim
        self.encoder = encoder
        self.fc_norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: Tensor) -> Tensor:
        x = self.encoder(images).x[:, self.encoder.num_extra_tokens:]  # (B, T, D), patch tokens only
        return self.head(self.fc_norm(x.mean(dim=1)))  # (B, classes)


def set_drop_path(encoder: Encoder, rate: float) -> None:
    rates = torch.linspace(0, rate, max(len(encoder.blocks), 1)).tolist()
    for i, block in enumerate(encoder.prenet):
        block.drop_path.p = rates[min(i, len(rates) - 1)]
    for i, block in enumerate(encoder.blocks):
        block.drop_path.p = rates[i]


def parameter_groups(model: Classifier, recipe: Recipe) -> list[dict]:
    """AdamW groups with the layer-wise scale `lr_scale` and weight decay only on matrices."""
    encoder = model.encoder
    blocks = list(encoder.prenet) + list(encoder.blocks)
    n = len(blocks) + 1
    depth_of = {id(p): i for i, b in enumerate(blocks) for p in b.parameters()}
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        scale = recipe.layer_decay ** (n - 1 - depth_of[id(p)]) if id(p) in depth_of else 1.0
        decay = 0.0 if p.ndim <= 1 or "token" in name.rsplit(".", 1)[-1] else recipe.weight_decay
        groups.setdefault((scale, decay), []).append(p)
    return [{"params": ps, "lr_scale": s, "weight_decay": d} for (s, d), ps in groups.items()]


def random_resized_crop_flip(images: Tensor, area: tuple[float, float], gen: torch.Generator) -> Tensor:
    """Per image: a crop of a random area fraction and aspect ratio, resized back (bilinear), and a
    horizontal flip with probability 0.5. images: (B, C, H, W)."""
    B = images.shape[0]
    a = torch.empty(B).uniform_(*area, generator=gen)
    log_r = torch.empty(B).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    w = (a * log_r.exp()).sqrt().clamp(max=1.0)  # crop width and height, as fractions of the side
    h = (a / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(B, generator=gen) * 2 - 1) * (1 - w)  # crop centre in [-1, 1] coordinates
    cy = (torch.rand(B, generator=gen) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(B, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def mix(images: Tensor, targets: Tensor, recipe: Recipe, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Batch mixup or cutmix with the batch reversed (timm's batch mode). targets: (B, classes) soft."""
    if torch.rand((), generator=gen) >= recipe.mix_prob or (recipe.mixup <= 0 and recipe.cutmix <= 0):
        return images, targets
    use_cutmix = recipe.cutmix > 0 and (recipe.mixup <= 0 or torch.rand((), generator=gen) < 0.5)
    alpha = recipe.cutmix if use_cutmix else recipe.mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    other = images.flip(0)
    if use_cutmix:
        H, W = images.shape[-2:]
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(H, (), generator=gen)), int(torch.randint(W, (), generator=gen))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        images = images.clone()
        images[..., top:bottom, left:right] = other[..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (H * W)  # the area actually pasted
    else:
        images = lam * images + (1 - lam) * other
    return images, lam * targets + (1 - lam) * targets.flip(0)


def load_images(source, config) -> tuple[Tensor, Tensor]:
    """Every image of `source`, resized and normalised as for evaluation: (N, C, S, S), labels (N,)."""
    transform = EvalTransform(config.model.image.image_size, config.data.mean, config.data.std)
    images = torch.stack([transform(source.get(i)) for i in range(len(source))])
    return images, torch.tensor([source.label(i) for i in range(len(source))], dtype=torch.long)


def split_validation(source, size: int, seed: int):
    """(train part, validation part) of `source`: `size` images drawn with `seed` are held out."""
    order = np.random.default_rng(seed).permutation(len(source))
    return Subset(source, np.sort(order[size:])), Subset(source, np.sort(order[:size]))


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = sum(int((model(images[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(labels), batch_size))
    return correct / max(len(labels), 1)


def finetune(encoder: Encoder, train: tuple[Tensor, Tensor], evals: dict[str, tuple[Tensor, Tensor]],
             recipe: Recipe, num_classes: int, progress: bool = True, desc: str = "finetune") -> dict:
    """Fine-tune a copy of `encoder` on normalised images `train` = (images (N, C, H, W), labels (N,));
    returns the accuracy on each of `evals` at the end, the loss curve and the seconds taken."""
    torch.manual_seed(recipe.seed)
    model = Classifier(copy.deepcopy(encoder), num_classes)
    set_drop_path(model.encoder, recipe.drop_path)
    groups = parameter_groups(model, recipe)
    optimizer = torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.999))
    warmup = int(recipe.warmup_fraction * recipe.updates)
    gen = torch.Generator().manual_seed(recipe.seed)
    images, labels = train
    off = recipe.label_smoothing / num_classes
    losses, start = [], time.perf_counter()
    model.train()
    for step in tqdm(range(recipe.updates), desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
        if step < warmup:
            lr = recipe.lr * (step + 1) / warmup
        else:
            progress_frac = (step - warmup) / max(recipe.updates - warmup, 1)
            lr = recipe.min_lr + (recipe.lr - recipe.min_lr) * 0.5 * (1 + math.cos(math.pi * progress_frac))
        for g in optimizer.param_groups:
            g["lr"] = lr * g["lr_scale"]
        index = torch.randint(len(labels), (recipe.batch_size,), generator=gen)
        x = random_resized_crop_flip(images[index], recipe.crop_area, gen)
        y = torch.full((recipe.batch_size, num_classes), off).scatter_(1, labels[index, None], 1 - recipe.label_smoothing + off)
        x, y = mix(x, y, recipe, gen)
        loss = torch.sum(-y * F.log_softmax(model(x), dim=-1), dim=-1).mean()  # soft-target cross-entropy
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    result = {name: accuracy(model, *data) for name, data in evals.items()}
    return {"accuracy": result, "seconds": round(time.perf_counter() - start, 1),
            "loss_first_50": float(np.mean(losses[:50])), "loss_last_50": float(np.mean(losses[-50:])),
            "recipe": asdict(recipe)}
