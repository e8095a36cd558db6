"""The image modality's small test settings, which the per-modality tests read for every modality
of the table (docs/ARCHITECTURE.md, "Adding a modality", lists them): image-tiny in seconds on a tiny
slice of real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

SMALL = [
    "model.embed_dim=32", "model.num_heads=2", "model.depth=2", "model.prenet_depth=1", "targets.top_k=2",
    "decoder.dim=32", "decoder.groups=4", "decoder.layers=2", "masking.num_masks=2", "train.batch_size=16",
    "data.limit=256", "data.num_workers=0", "train.log_every=1", "train.precision=fp32", "optim.warmup_steps=2",
]


def small_data(folder: Path) -> list[str] | None:
    """Fashion-MNIST prepared into the cache `folder` (dataset-fashion-mnist)."""
    if not FASHION.exists():
        return None
    from .fashion_mnist import prepare_fashion_mnist

    prepare_fashion_mnist(folder, progress=False)
    return ["data.train=fashion-mnist:train", f"data.cache_dir={folder}"]


# The step characterization (tests/test_step_characterization.py): cases (name -> overrides over
# image-tiny and the test's shared small blocks) pinned from version 0.1.0, and each case's fixed
# inputs and masks from the test's seeded generators.
STEP_CASES = {"image": ["model.prenet_depth=1", "decoder.dim=32", "decoder.groups=4", "decoder.layers=2"]}


def step_batch(config, g, rng) -> tuple:
    """(2, C, H, W) random images and (2 * M, patches) masks of the configured kind."""
    import torch

    from ...masking import make_masks

    m, ic = config.masking, config.model.settings
    inputs = torch.randn(2, ic.in_channels, ic.image_size, ic.image_size, generator=g)
    grid = ic.image_size // ic.patch_size
    return inputs, np.concatenate([make_masks(m.kind, m.num_masks, (grid, grid), m.mask_prob, m.mask_length,
                                              m.mask_prob_adjust, rng) for _ in range(2)])


# The baselines (objective=...) tests/test_objectives.py pre-trains on this modality besides data2vec 2.0
BASELINES = ("data2vec1", "mae")


def half_bad_data(root: Path) -> list[str]:
    """4 readable and 4 unreadable PNG files in `root` (tests/test_faults.py: data.on_bad_file=skip)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / f"good{i}.png")
        (root / f"bad{i}.png").write_bytes(b"\x89PNG not an image")
    return [f"data.train={root}", "data.limit=0"]


# Fine-tuning (tests/test_finetune.py): a small version of each task's tiny preset (every augmentation
# on), task -> (preset, overrides), and the labelled data each task trains on.
FINETUNE = {"classification": ("image-cls-tiny", [
    "train.batch_size=16", "train.max_steps=6", "train.log_every=1", "train.precision=fp32",
    "train.time_budget_s=0", "optim.warmup_steps=2", "finetune.eval_every=3", "finetune.valid_size=40",
    "finetune.test=[]", "data.limit=200", "data.num_workers=0", "data.randaugment=2", "data.random_erasing=0.5",
    "data.mixup=0.8", "data.cutmix=1.0", "data.mix_prob=0.9"])}


def finetune_data(task: str, folder: Path, small: list[str]) -> list[str]:
    """The labelled data of `task`: Fashion-MNIST's labels, in the cache that `small` (small_data's
    overrides) names, which the fine-tuning reads through its data.cache_dir."""
    return []
