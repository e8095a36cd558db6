"""Image fine-tuning (modalities/image/finetune.py): layer-wise LR decay and weight-decay groups,
the drop-path ramp, mixup/cutmix targets, and a short fine-tuning on real images that learns."""

import math

import pytest
import torch
from conftest import SMALL

import data2vec2
from data2vec2.modalities import MODALITIES
from data2vec2.modalities.image.data import Subset, open_image_source
from data2vec2.modalities.image.finetune import (
    Classifier,
    Recipe,
    finetune,
    load_images,
    mix,
    parameter_groups,
    random_resized_crop_flip,
    set_drop_path,
    split_validation,
)
from data2vec2.model import random_encoder


def small_classifier():
    config = data2vec2.load_config("image-tiny", SMALL)
    return Classifier(random_encoder(config.model, MODALITIES["image"]), 10), config


def test_layer_decay_and_weight_decay_groups():
    model, _ = small_classifier()
    recipe = Recipe(layer_decay=0.5, weight_decay=0.05)
    scale, decay = {}, {}
    for group in parameter_groups(model, recipe):
        for p in group["params"]:
            scale[id(p)], decay[id(p)] = group["lr_scale"], group["weight_decay"]
    named = dict(model.named_parameters())
    assert len(scale) == len(named)  # every parameter in exactly one group
    enc = model.encoder  # 1 prenet + 2 shared blocks: n = 4, block i gets 0.5^(3 - i)
    assert scale[id(enc.prenet[0].mlp.fc1.weight)] == 0.5**3
    assert scale[id(enc.blocks[0].attn.qkv.weight)] == 0.5**2
    assert scale[id(enc.blocks[1].norm2.weight)] == 0.5**1
    for name in ("encoder.local_encoder.patch_embed.weight", "encoder.local_encoder.cls_token", "fc_norm.weight",
                 "head.weight", "head.bias"):
        assert scale[id(named[name])] == 1.0, name
    assert decay[id(named["head.weight"])] == 0.05 and decay[id(named["encoder.blocks.0.mlp.fc1.weight"])] == 0.05
    for name in ("head.bias", "fc_norm.weight", "encoder.local_encoder.cls_token", "encoder.blocks.0.norm1.bias"):
        assert decay[id(named[name])] == 0.0, name


def test_drop_path_ramp_restarts_for_the_prenet():
    model, _ = small_classifier()
    set_drop_path(model.encoder, 0.2)
    assert [b.drop_path.p for b in model.encoder.blocks] == pytest.approx([0.0, 0.2])
    assert model.encoder.prenet[0].drop_path.p == 0.0


def test_mixed_targets_stay_distributions_and_match_the_pasted_area():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(8, 1, 28, 28)
    targets = torch.nn.functional.one_hot(torch.arange(8) % 10, 10).float()
    for _ in range(20):
        x, y = mix(images, targets, Recipe(mix_prob=1.0, mixup=0.0, cutmix=1.0), gen)  # cutmix only
        assert torch.allclose(y.sum(-1), torch.ones(8))
        from_self = float((x == images).float().mean())  # the pixels not pasted from the reversed batch
        assert y[0, 0] == pytest.approx(from_self, abs=1e-6)
    x, y = mix(images, targets, Recipe(mix_prob=1.0, mixup=0.8, cutmix=0.0), gen)  # mixup only
    lam = float(y[0, 0])
    torch.testing.assert_close(x, lam * images + (1 - lam) * images.flip(0))
    crops = random_resized_crop_flip(images, (0.35, 1.0), gen)
    assert crops.shape == images.shape and bool(torch.isfinite(crops).all())


def test_a_short_finetuning_on_real_images_learns(cache_dir):
    config = data2vec2.load_config("image-tiny", SMALL + [f"data.cache_dir={cache_dir}"])
    source = open_image_source("fashion-mnist:train", cache_dir, 1)
    fit, val = split_validation(Subset(source, range(3000)), 500, seed=0)
    assert len(fit) == 2500 and len(val) == 500 and not set(fit.indices) & set(val.indices)
    train, evals = load_images(fit, config), {"val": load_images(val, config)}
    encoder = random_encoder(config.model, MODALITIES["image"])
    # mixing and small crops slow the first hundred updates down; without them a random init learns fast
    recipe = Recipe(updates=120, batch_size=64, mix_prob=0.0, crop_area=(1.0, 1.0), layer_decay=1.0)
    result = finetune(encoder, train, evals, recipe, 10, progress=False)
    assert result["loss_last_50"] < result["loss_first_50"] - 0.2 and result["loss_first_50"] < math.log(10) + 0.3
    assert result["accuracy"]["val"] > 0.3  # 10 classes: chance is 0.1
