"""Image data: sources (Fashion-MNIST, any folder of images), augmentations, datasets, and the
pre-training pipeline (inverse block masks drawn in the DataLoader workers).

Images travel as numpy arrays ``uint8 (H, W, C)`` until :func:`to_tensor` turns them into
normalised ``float32 (C, H, W)`` tensors. Every random draw comes from a ``np.random.Generator``
passed in by the caller, so an augmentation depends only on the seed it was built from.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ...config import Config
from ...data.collate import MaskingCollate, Stream, sample_rng
from ...errors import ConfigError, DataError
from ...masking import make_masks
from ...modality import PretrainingData
from .encoder import step_flops
from .fashion_mnist import CLASS_NAMES, load_fashion_mnist, prepare_fashion_mnist

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Measured over the 60000 Fashion-MNIST training images (pixels / 255): 0.28604 and 0.35302.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

# Every file extension Pillow has a decoder for (registered_extensions() loads all plugins).
IMAGE_EXTENSIONS = frozenset(
    ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
)

_BICUBIC = Image.Resampling.BICUBIC


@dataclass
class ImageDataSettings:
    """The image keys of `data`: channels and normalisation of the inputs, the augmentation."""

    channels: int = 3
    crop_scale: tuple[float, float] = (0.2, 1.0)
    hflip: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # fine-tuning only (modalities/image/classification.py): RandAugment (operations per image, 0: off,
    # and their magnitude), random erasing (probability), mixup / cutmix (Beta alphas; 0: off) on
    # mix_prob of the batches
    randaugment: int = 0
    randaugment_magnitude: int = 9
    random_erasing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    # evaluation: resize the short side to image_size / eval_crop_pct, then the centre crop (the
    # reference's 224 / 256 for ImageNet; 1: no margin)
    eval_crop_pct: float = 1.0


# ----------------------------------------------------------------------------------------------
# Reading files


def list_image_files(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root`` (recursive, symlinks followed), sorted by relative path.

    Files and folders whose name starts with "." (e.g. macOS ``._x.jpg``) are ignored.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # symlink loop
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(folder, name))
    if not found:
        raise DataError(f"no image files found in {root} "
                        "(looked for .png, .jpg, .jpeg, .bmp, .webp, ... files)")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _reason(e: Exception) -> str:
    if isinstance(e, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot decode"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def load_image(path: str | os.PathLike, channels: int) -> np.ndarray:
    """Fully decode an image file as ``uint8 (H, W, channels)``: 1 = grey ("L"), 3 = "RGB"."""
    if channels not in (1, 3):
        raise ConfigError(f"images must have 1 or 3 channels, not {channels}")
    mode = "L" if channels == 1 else "RGB"
    try:
        with warnings.catch_warnings():  # an image over Pillow's pixel limit is a bad file, reported once
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()  # decode now, so truncated files fail here and not later
                array = np.asarray(im if im.mode == mode else im.convert(mode))
    except Exception as e:  # missing, truncated, not an image, decompression bomb, ...
        raise DataError(f"cannot read image {path}: {_reason(e)}") from e
    return array[:, :, None] if array.ndim == 2 else array  # (H, W, C)


def convert_channels(img: np.ndarray, channels: int | None) -> np.ndarray:
    """Grey (C=1) <-> RGB (C=3) conversion of a uint8 (H, W, C) image, like Pillow's convert."""
    c = img.shape[2]
    if channels is None or channels == c:
        return img
    if c == 1 and channels == 3:
        return np.repeat(img, 3, axis=2)
    if c == 3 and channels == 1:
        return np.asarray(Image.fromarray(np.ascontiguousarray(img)).convert("L"))[:, :, None]
    raise ConfigError(f"cannot convert {c}-channel images to {channels} channels")


# ----------------------------------------------------------------------------------------------
# Sources


class ImageSource:
    """An indexable collection of images, optionally labelled."""

    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 (H, W, C); raises DataError if it cannot be read."""
        raise NotImplementedError

    def label(self, i: int) -> int:
        """Class index of image ``i``, or -1 when the source has no labels."""
        return -1

    def path(self, i: int) -> str:
        """Where image ``i`` comes from, for error messages."""
        return f"image[{i}]"


class ArraySource(ImageSource):
    """Images held in memory: uint8 (N, H, W) or (N, H, W, C), labels int (N,) or None.

    ``channels`` (1 or 3) converts grey <-> RGB on the fly; None keeps the stored channels.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, name: str = "array",
                 class_names: tuple[str, ...] = (), channels: int | None = None):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise DataError(f"{name}: expected uint8 images (N, H, W[, C]), "
                            f"got {images.dtype} {images.shape}")
        self.images = images[..., None] if images.ndim == 3 else images  # (N, H, W, C) view
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (len(images),):
                raise DataError(f"{name}: {len(images)} images but labels of shape {labels.shape}")
        self.labels = labels
        self.name = name
        self.class_names = tuple(class_names)
        self.channels = channels
        c = self.images.shape[3]
        if channels not in (None, c) and {c, channels} != {1, 3}:
            raise ConfigError(f"{name}: cannot convert {c}-channel images to {channels} channels")

    def __len__(self) -> int:
        return len(self.images)

    def get(self, i: int) -> np.ndarray:
        return convert_channels(self.images[i], self.channels)

    def label(self, i: int) -> int:
        return -1 if self.labels is None else int(self.labels[i])

    def path(self, i: int) -> str:
        return f"{self.name}[{i}]"


class FolderSource(ImageSource):
    """Image files under ``root``; images in first-level sub-folders are labelled by folder.

    The label is the index of the sub-folder name in ``class_names`` (sorted); files directly
    in ``root`` get -1. Files are decoded lazily by :meth:`get`.
    """

    def __init__(self, root: str | os.PathLike, channels: int):
        if channels not in (1, 3):
            raise ConfigError(f"images must have 1 or 3 channels, not {channels}")
        self.root = Path(root).expanduser()
        self.channels = channels
        self.files = list_image_files(self.root)
        parts = [p.relative_to(self.root).parts for p in self.files]
        self.class_names = tuple(sorted({q[0] for q in parts if len(q) > 1}))
        index = {name: k for k, name in enumerate(self.class_names)}
        self.labels = np.array([index[q[0]] if len(q) > 1 else -1 for q in parts], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def get(self, i: int) -> np.ndarray:
        return load_image(self.files[i], self.channels)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def path(self, i: int) -> str:
        return str(self.files[i])


def open_image_source(spec: str, cache_dir: str | os.PathLike, channels: int) -> ImageSource:
    """``"fashion-mnist:train"`` / ``"fashion-mnist:test"`` (prepared cache) or a folder path."""
    name, _, split = spec.partition(":")
    if name == "fashion-mnist":
        if not split:
            raise ConfigError("write 'fashion-mnist:train' or 'fashion-mnist:test' "
                              "(or './fashion-mnist' for a folder of that name)")
        images, labels = load_fashion_mnist(cache_dir, split)
        return ArraySource(images, labels, name="fashion-mnist", class_names=CLASS_NAMES,
                           channels=channels)
    return FolderSource(spec, channels)


# ----------------------------------------------------------------------------------------------
# Transforms


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of uint8 (H, W, C) to (height, width, C) with Pillow."""
    if img.shape[:2] == (height, width):
        return img
    if img.shape[2] == 3:
        return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((width, height), _BICUBIC))
    planes = [Image.fromarray(np.ascontiguousarray(img[:, :, k])).resize((width, height), _BICUBIC)
              for k in range(img.shape[2])]
    return np.stack([np.asarray(p) for p in planes], axis=2)


def sample_crop_box(height: int, width: int, rng: np.random.Generator,
                    scale: tuple[float, float] = (0.2, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop box ``(top, left, h, w)`` for an image of ``height x width``.

    Up to 10 tries of an area fraction uniform in ``scale`` and an aspect ratio (w / h)
    log-uniform in ``ratio``; if none fits, a centre crop with the aspect clamped to ``ratio``.
    """
    if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
        raise ConfigError(f"bad crop scale {scale} or ratio {ratio}")
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, max(1, int(round(width / ratio[0])))
    elif in_ratio > ratio[1]:
        w, h = max(1, int(round(height * ratio[1]))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.2, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Random crop (see :func:`sample_crop_box`) resized bicubically: uint8 (size, size, C)."""
    top, left, h, w = sample_crop_box(img.shape[0], img.shape[1], rng, scale, ratio)
    return _resize(img[top:top + h, left:left + w], size, size)


def resize_center_crop(img: np.ndarray, size: int, crop_pct: float = 1.0) -> np.ndarray:
    """Resize the short side to ``size / crop_pct`` (bicubic), then centre crop size x size."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    short = int(math.floor(size / crop_pct))
    if h <= w:
        nh, nw = short, max(short, int(round(w * short / h)))
    else:
        nh, nw = max(short, int(round(h * short / w))), short
    img = _resize(img, nh, nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[top:top + size, left:left + size]


def to_tensor(img: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W), scaled to [0, 1] then ``(x - mean) / std``."""
    c = img.shape[2]
    if len(mean) != c or len(std) != c:
        raise ConfigError(f"{c}-channel images need {c} mean/std values, got {mean} / {std}")
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1).contiguous()
    x.div_(255.0)
    x.sub_(torch.tensor(mean, dtype=torch.float32).view(c, 1, 1))
    x.div_(torch.tensor(std, dtype=torch.float32).view(c, 1, 1))
    return x


def _check_norm(size: int, mean: tuple, std: tuple) -> None:
    if size < 1:
        raise ConfigError(f"image size must be positive, not {size}")
    if len(mean) != len(std) or min(std) <= 0:
        raise ConfigError(f"bad normalisation mean {mean} / std {std}")


class TrainTransform:
    """Pre-training augmentation: random resized crop, horizontal flip (p=0.5), normalise."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 scale: tuple[float, float] = (0.2, 1.0), hflip: bool = True,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        _check_norm(size, mean, std)
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """uint8 (H, W, C) -> float32 (C, size, size)."""
        out = random_resized_crop(img, self.size, rng, self.scale, self.ratio)
        if self.hflip and rng.random() < 0.5:
            out = out[:, ::-1]
        return to_tensor(out, self.mean, self.std)


class EvalTransform:
    """Evaluation transform: resize the short side, centre crop, normalise."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 crop_pct: float = 1.0):
        _check_norm(size, mean, std)
        if not 0 < crop_pct <= 1:
            raise ConfigError(f"crop_pct must be in (0, 1], not {crop_pct}")
        self.size, self.mean, self.std, self.crop_pct = size, tuple(mean), tuple(std), crop_pct

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, C) -> float32 (C, size, size)."""
        return to_tensor(resize_center_crop(img, self.size, self.crop_pct), self.mean, self.std)


# ----------------------------------------------------------------------------------------------
# Datasets


class PretrainImageDataset(Dataset):
    """Augmented images for pre-training; unreadable images come back as error entries.

    Sample ``i`` of epoch ``e`` always uses its own ``Stream.AUGMENT`` generator, so its
    augmentation is the same whichever worker or process loads it. Call :meth:`set_epoch`
    before each epoch (with non-persistent DataLoader workers, which copy the dataset).
    """

    def __init__(self, source: ImageSource, transform: TrainTransform, seed: int):
        if seed < 0:
            raise ConfigError(f"seed must be non-negative, not {seed}")
        self.source, self.transform, self.seed = source, transform, int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        """``{"index": i, "inputs": (C, S, S)}`` or ``{"index": i, "error": message}``."""
        i = int(i)
        rng = sample_rng(self.seed, self.epoch, i, Stream.AUGMENT)
        try:
            img = self.source.get(i)
        except DataError as e:
            return {"index": i, "error": str(e)}
        return {"index": i, "inputs": self.transform(img, rng)}


class EvalImageDataset(Dataset):
    """``(image (C, S, S), label)`` pairs for evaluation; a bad image raises DataError."""

    def __init__(self, source: ImageSource, transform: EvalTransform):
        self.source, self.transform = source, transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = int(i)
        return self.transform(self.source.get(i)), self.source.label(i)


class Subset(ImageSource):
    """The images `indices` of a source: the first n (data.limit), or a seeded sample (`sample`)."""

    def __init__(self, source: ImageSource, indices):
        self.source, self.indices = source, [int(i) for i in indices]
        self.class_names = source.class_names

    @classmethod
    def sample(cls, source: ImageSource, n: int, seed: int) -> "Subset":
        """`n` images drawn without replacement (in their original order); all if n >= len(source)."""
        if n >= len(source):
            return cls(source, range(len(source)))
        return cls(source, np.sort(np.random.default_rng(seed).permutation(len(source))[:n]))

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, i: int):
        return self.source.get(self.indices[i])

    def label(self, i: int) -> int:
        return self.source.label(self.indices[i])

    def path(self, i: int) -> str:
        return self.source.path(self.indices[i])


def split_validation(source: ImageSource, size: int, seed: int) -> tuple[Subset, Subset]:
    """(the rest, `size` images held out) of `source`, drawn with `seed`, each in its original order."""
    order = np.random.default_rng(seed).permutation(len(source))
    return Subset(source, np.sort(order[size:])), Subset(source, np.sort(order[:size]))


def open_source(config: Config, spec: str) -> ImageSource:
    """An image source, preparing Fashion-MNIST into the cache on first use."""
    if spec.startswith("fashion-mnist:"):
        prepare_fashion_mnist(Path(config.data.cache_dir), progress=False)
    return open_image_source(spec, Path(config.data.cache_dir), config.data.settings.channels)


class ImageMaskingCollate(MaskingCollate):
    """Stacks the augmented images and draws each image's M masks on the patch grid."""

    def __init__(self, masking, grid: tuple[int, int], seed: int):
        super().__init__(masking, seed)
        self.grid = grid

    def inputs_and_masks(self, items: list[dict]) -> tuple[torch.Tensor, list[np.ndarray]]:
        masking = self.masking
        masks = [make_masks(masking.kind, masking.num_masks, self.grid, masking.mask_prob, masking.mask_length,
                            masking.mask_prob_adjust, self.rng(s["index"], Stream.MASK)) for s in items]
        return torch.stack([s["inputs"] for s in items]), masks  # (B, C, H, W)


def pretraining_data(config: Config, progress: bool = True) -> PretrainingData:
    data, settings = config.data, config.model.settings
    source = open_source(config, data.train)
    if data.limit > 0:
        source = Subset(source, range(min(data.limit, len(source))))
    keys = data.settings  # the image data keys: mean, std, crop_scale, hflip
    transform = TrainTransform(settings.image_size, keys.mean, keys.std, scale=keys.crop_scale, hflip=keys.hflip)
    grid = settings.image_size // settings.patch_size
    return PretrainingData(dataset=PretrainImageDataset(source, transform, config.train.seed),
                           collate=ImageMaskingCollate(config.masking, (grid, grid), config.train.seed),
                           step_flops=step_flops(config, config.train.batch_size))


def synthetic_batch(config: Config) -> tuple[dict, int]:
    """A batch of train.batch_size random images of the preset's size through the real collate
    (inverse block masks, noise seeds), for speed measurements; and the length for step_flops."""
    settings = config.model.settings
    g = torch.Generator().manual_seed(0)
    items = [{"index": i, "inputs": torch.randn(settings.in_channels, settings.image_size, settings.image_size,
                                                  generator=g)} for i in range(config.train.batch_size)]
    grid = settings.image_size // settings.patch_size
    return ImageMaskingCollate(config.masking, (grid, grid), seed=0)(items), 0
