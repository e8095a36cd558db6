import os
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

# A very small image-tiny for fast tests: same code paths, tiny sizes.
SMALL = [
    "model.embed_dim=32", "model.num_heads=2", "model.depth=2", "model.prenet_depth=1", "targets.top_k=2",
    "decoder.dim=32", "decoder.groups=4", "decoder.layers=2", "masking.num_masks=2", "train.batch_size=16",
    "data.limit=256", "data.num_workers=0", "train.log_every=1", "train.precision=fp32", "optim.warmup_steps=2",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST prepared once into a temporary cache (skips if the Debian package is absent)."""
    if not FASHION.exists():
        pytest.skip("dataset-fashion-mnist is not installed (scripts/install.sh installs it)")
    from data2vec2.modalities.image.fashion_mnist import prepare_fashion_mnist

    cache = tmp_path_factory.mktemp("cache")
    prepare_fashion_mnist(cache, progress=False)
    return cache


@pytest.fixture
def small_overrides(cache_dir) -> list[str]:
    return SMALL + [f"data.cache_dir={cache_dir}"]


os.environ.setdefault("OMP_NUM_THREADS", "2")
