"""Wiring of the image modality for pre-training: source -> augmentation -> masks in workers."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..data.collate import MaskingCollate
from ..data.images import ImageSource, PretrainImageDataset, TrainTransform, open_image_source
from ..masking import num_masked
from ..model import build_model
from ..train.flops import image_step_flops


class FirstN(ImageSource):
    """The first `n` images of a source (data.limit)."""

    def __init__(self, source: ImageSource, n: int):
        self.source, self.n = source, min(n, len(source))
        self.class_names = source.class_names

    def __len__(self) -> int:
        return self.n

    def get(self, i: int):
        return self.source.get(i)

    def label(self, i: int) -> int:
        return self.source.label(i)

    def path(self, i: int) -> str:
        return self.source.path(i)


def open_source(config: Config, spec: str) -> ImageSource:
    """An image source, preparing Fashion-MNIST into the cache on first use."""
    if spec.startswith("fashion-mnist:"):
        from ..data.fashion_mnist import prepare_fashion_mnist

        prepare_fashion_mnist(Path(config.data.cache_dir), progress=False)
    return open_image_source(spec, Path(config.data.cache_dir), config.data.channels)


def build_image_pretraining(config: Config):
    from ..train.loop import PretrainSetup

    d, ic = config.data, config.model.image
    source = open_source(config, d.train)
    if d.limit > 0:
        source = FirstN(source, d.limit)
    transform = TrainTransform(ic.image_size, d.mean, d.std, scale=d.crop_scale, hflip=d.hflip)
    dataset = PretrainImageDataset(source, transform, config.train.seed)
    grid = ic.image_size // ic.patch_size
    collate = MaskingCollate(config.masking, (grid, grid), config.train.seed)
    m = config.masking
    keep = grid * grid - num_masked(m.kind, grid * grid, m.mask_prob)
    flops = image_step_flops(config, config.train.batch_size, keep)
    return PretrainSetup(model=build_model(config), dataset=dataset, collate=collate, input_key="image",
                         step_flops=flops)
