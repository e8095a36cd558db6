"""Image classification, the fine-tuning task `finetune.task: classification`: the reference's
protocol (`MaeImageClassificationModel`, fairseq examples/data2vec/models/mae_image_classification.py,
config/vision/finetuning/mae_imagenet_clean.yaml) on the trainer of pre-training.

    data        a folder whose first-level sub-folders are the classes (any size: decoded and
                augmented in the DataLoader workers), or fashion-mnist:train / fashion-mnist:test
    augment     per image, from its own stream: random resized crop (data.crop_scale), horizontal
                flip, RandAugment (data.randaugment operations of magnitude data.randaugment_magnitude,
                kornia's), normalisation, random erasing (probability data.random_erasing, kornia's:
                the box is filled with 0, the mean; the reference fills it with N(0, 1) pixels); per
                batch: mixup (Beta(data.mixup)) or cutmix (Beta(data.cutmix)) on data.mix_prob of the
                batches, half each, with the batch reversed (timm's batch mode), on label-smoothed targets
    head        mean of the patch tokens (CLS excluded) -> LayerNorm (fc_norm) -> Linear(D, classes),
                the weight N(0, 0.02) truncated, the bias zero
    loss        soft-target cross-entropy (hard targets: cross-entropy with finetune.label_smoothing)
    metrics     top-1 and top-5 accuracy (torchmetrics); the best checkpoint by top-1
    layer decay and drop path: finetune.layer_decay (finetune.py), model.drop_path (the encoder's ramp)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import Config
from ...data.collate import Collate, Stream, sample_rng
from ...encoder import Encoder
from ...errors import DataError
from ...finetune import TaskObjective
from ...nn.blocks import blocks_forward_flops
from ...model import LossOutput
from ...modality import Task, TaskData
from ...predict import describe_classes, expand_paths
from .data import (
    ImageSource,
    Subset,
    convert_channels,
    list_image_files,
    load_image,
    open_source,
    random_resized_crop,
    resize_center_crop,
)


class ImageClassifier(TaskObjective):
    """The objective: forward(batch) -> the loss summed over the batch's images; predict -> logits."""

    def __init__(self, encoder: Encoder, num_classes: int, config: Config):
        super().__init__(encoder, config)
        D = encoder.cfg.embed_dim
        self.fc_norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.label_smoothing = config.finetune.label_smoothing

    def logits(self, images: Tensor) -> Tensor:
        with self.encoder_context():
            x = self.encoder(images).x[:, self.encoder.num_extra_tokens:]  # (B, T, D), patch tokens only
        return self.head(self.fc_norm(x.mean(dim=1)))  # (B, classes)

    def forward(self, batch: dict) -> LossOutput:
        logits = self.logits(batch["inputs"]).float()
        target = batch["target"]
        if target.dtype.is_floating_point:  # mixed, smoothed targets (B, classes)
            loss_sum = torch.sum(-target * F.log_softmax(logits, dim=-1))
        else:
            loss_sum = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing, reduction="sum")
        return LossOutput(loss_sum=loss_sum, count=batch["count"])

    def predict(self, batch: dict) -> list[Tensor]:
        return list(self.logits(batch["inputs"]).float().cpu())

    def scores(self, images: Tensor) -> Tensor:
        """(B, C, S, S) normalised images -> (B, classes) logits: what the ONNX export computes."""
        return self.logits(images).float()


def mix(images: Tensor, targets: Tensor, mixup: float, cutmix: float, mix_prob: float,
        rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Batch mixup or cutmix with the batch reversed (timm's batch mode), every draw from `rng`.
    targets: (B, classes) soft."""
    if rng.random() >= mix_prob or (mixup <= 0 and cutmix <= 0):
        return images, targets
    use_cutmix = cutmix > 0 and (mixup <= 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    other = images.flip(0)
    if use_cutmix:
        H, W = images.shape[-2:]
        cut_h, cut_w = int(H * math.sqrt(1 - lam)), int(W * math.sqrt(1 - lam))
        cy, cx = int(rng.integers(H)), int(rng.integers(W))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, H)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, W)
        images = images.clone()
        images[..., top:bottom, left:right] = other[..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (H * W)  # the area actually pasted
    else:
        images = lam * images + (1 - lam) * other
    return images, lam * targets + (1 - lam) * targets.flip(0)


class Augment:
    """One training image: uint8 (H, W, C) -> float32 (C, S, S), every random choice from `rng`."""

    def __init__(self, config: Config):
        data, size = config.data.settings, config.model.settings.image_size
        self.size, self.scale, self.hflip = size, tuple(data.crop_scale), data.hflip
        self.mean = torch.tensor(data.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(data.std, dtype=torch.float32).view(-1, 1, 1)
        self.randaugment, self.magnitude, self.erasing = data.randaugment, data.randaugment_magnitude, data.random_erasing
        self.ops = None  # kornia's, made in the worker that first needs them

    def _kornia(self):
        if self.ops is None:
            import kornia.augmentation as K
            from kornia.augmentation.auto import RandAugment

            self.ops = (RandAugment(n=self.randaugment, m=self.magnitude) if self.randaugment else None,
                        K.RandomErasing(p=self.erasing) if self.erasing else None)
        return self.ops

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> Tensor:
        out = random_resized_crop(img, self.size, rng, self.scale)
        if self.hflip and rng.random() < 0.5:
            out = out[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).permute(2, 0, 1) / 255.0  # (C, S, S)
        if not (self.randaugment or self.erasing):
            return (x - self.mean) / self.std
        randaugment, erasing = self._kornia()
        with torch.random.fork_rng(devices=[]):  # kornia draws from torch's generator: seeded per image here
            torch.manual_seed(int(rng.integers(2**62)))
            if randaugment is not None:
                rgb = x if x.shape[0] == 3 else x.expand(3, -1, -1)  # kornia's colour operations need RGB
                rgb = randaugment(rgb[None])[0]
                x = rgb if x.shape[0] == 3 else rgb.mean(dim=0, keepdim=True)
            x = (x - self.mean) / self.std
            if erasing is not None:
                x = erasing(x[None])[0]
        return x


class ImagesWithLabels(torch.utils.data.Dataset):
    """{"index", "inputs" (C, S, S), "target"} per image, augmented (training) or resized and
    centre-cropped (evaluation); an unreadable image is {"index", "error"}."""

    def __init__(self, source: ImageSource, targets: np.ndarray, config: Config, train: bool):
        self.source, self.targets = source, targets
        self.augment = Augment(config) if train else None
        data = config.data.settings
        self.size, self.crop_pct = config.model.settings.image_size, data.eval_crop_pct
        self.mean = torch.tensor(data.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(data.std, dtype=torch.float32).view(-1, 1, 1)
        self.seed, self.epoch = config.train.seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        try:
            img = self.source.get(i)
        except DataError as e:
            return {"index": i, "error": str(e)}
        if self.augment is not None:
            x = self.augment(img, sample_rng(self.seed, self.epoch, i, Stream.AUGMENT))
        else:
            out = resize_center_crop(img, self.size, self.crop_pct)
            x = (torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).permute(2, 0, 1) / 255.0 - self.mean) \
                / self.std
        return {"index": i, "inputs": x, "target": int(self.targets[i])}


class ClassificationCollate(Collate):
    """Stacks the images; in training with data.mixup or data.cutmix, mixes the batch (from the
    stream of its first image) on label-smoothed one-hot targets."""

    def __init__(self, config: Config, num_classes: int, train: bool):
        super().__init__(config.train.seed)
        data = config.data.settings
        self.num_classes = num_classes
        self.mixing = train and (data.mixup > 0 or data.cutmix > 0) and data.mix_prob > 0
        self.mixup, self.cutmix, self.mix_prob = data.mixup, data.cutmix, data.mix_prob
        self.smoothing = config.finetune.label_smoothing

    def empty(self) -> dict:
        return {"inputs": torch.empty(0), "target": torch.zeros(0, dtype=torch.long), "count": 0}

    def assemble(self, items: list[dict]) -> dict:
        images = torch.stack([s["inputs"] for s in items])  # (B, C, S, S)
        target = torch.tensor([s["target"] for s in items], dtype=torch.long)
        if self.mixing:
            off = self.smoothing / self.num_classes
            soft = torch.full((len(items), self.num_classes), off).scatter_(1, target[:, None], 1 - self.smoothing + off)
            images, target = mix(images, soft, self.mixup, self.cutmix, self.mix_prob,
                                 self.rng(items[0]["index"], Stream.MIX))
        return {"inputs": images, "target": target, "count": len(items)}


def task_data(config: Config, spec: str, labels: list[str] | None, train: bool) -> TaskData:
    """The labelled images `spec`; their classes are `labels` (those of the training data), found by
    name. The training data (labels None) defines them: its sub-folders, sorted, or Fashion-MNIST's."""
    source = open_source(config, spec)
    if config.data.limit > 0 and spec == config.data.train:
        source = Subset(source, range(min(config.data.limit, len(source))))
    if len(source) == 0:
        raise DataError(f"{spec}: no images")
    names = list(source.class_names)
    raw = np.array([source.label(i) for i in range(len(source))], dtype=np.int64)
    if (raw < 0).any():
        raise DataError(f"{source.path(int(np.argmax(raw < 0)))}: not in a class sub-folder; fine-tuning needs each "
                        f"class in its own sub-folder of {spec}")
    if labels is None:
        labels = names
        if len(labels) < 2:
            raise DataError(f"{spec}: {len(labels)} class ({', '.join(labels)}); classification needs at least two")
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise DataError(f"{spec}: classes {unknown[:5]} do not occur in the training data (classes: "
                        f"{', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})")
    targets = np.array([labels.index(name) for name in names], dtype=np.int64)[raw]
    return TaskData(dataset=ImagesWithLabels(source, targets, config, train),
                    collate=ClassificationCollate(config, len(labels), train), labels=list(labels))


class Items(ImageSource):
    """Images to predict: files or in-memory uint8 arrays (H, W[, C]), each with its name."""

    def __init__(self, items: list[tuple[str, object]], channels: int):
        self.items, self.channels = items, channels

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i: int) -> np.ndarray:
        name, item = self.items[i]
        if isinstance(item, str):  # a path
            return load_image(item, self.channels)
        array = np.asarray(item)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise DataError(f"{name}: expected a uint8 image (H, W[, C]), got {array.dtype} {array.shape}")
        return convert_channels(array[..., None] if array.ndim == 2 else array, self.channels)

    def path(self, i: int) -> str:
        return self.items[i][0]


def prediction_inputs(config: Config, items: list, labels: list[str]) -> tuple[TaskData, list[str], bool]:
    """Images to predict: one labelled set (fashion-mnist:<split>, or a folder whose sub-folders all
    name known classes: scored), or files, folders (recursive), lists of paths and arrays."""
    if len(items) == 1 and isinstance(items[0], str) and (items[0].startswith("fashion-mnist:")
                                                           or _class_folders(Path(items[0]), labels)):
        data = task_data(config, items[0], labels, False)
        source = data.dataset.source
        return data, [source.path(i) for i in range(len(source))], True
    found = expand_paths(items, list_image_files, "image")
    source = Items(found, config.data.settings.channels)
    dataset = ImagesWithLabels(source, np.zeros(len(found), dtype=np.int64), config, train=False)
    return TaskData(dataset=dataset, collate=ClassificationCollate(config, len(labels), train=False),
                    labels=list(labels)), [name for name, _ in found], False


def _class_folders(folder: Path, labels: list[str]) -> bool:
    """Whether `folder` holds only sub-folders, each named after a class of `labels`."""
    if not folder.is_dir():
        return False
    entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
    return bool(entries) and all(e.is_dir() and e.name in labels for e in entries)


def score(outputs: list[Tensor], targets: list, labels: list[str]) -> dict[str, float]:
    from torchmetrics.functional.classification import multiclass_accuracy

    logits = torch.stack(outputs)
    target = torch.as_tensor([int(t) for t in targets])
    k = len(labels)
    result = {"accuracy": float(multiclass_accuracy(logits, target, num_classes=k, average="micro"))}
    if k > 5:
        result["top5"] = float(multiclass_accuracy(logits, target, num_classes=k, top_k=5, average="micro"))
    return result


def step_flops(config: Config, size: float = 0.0) -> float:
    """An update's FLOPs (train/flops.py's convention): the patch embedding and the blocks on whole
    images (CLS included), forward and backward; the head aside."""
    model, settings = config.model, config.model.settings
    B, D = config.train.batch_size, model.embed_dim
    T = (settings.image_size // settings.patch_size) ** 2
    patch = 2 * B * T * D * settings.in_channels * settings.patch_size**2
    return 3 * (patch + blocks_forward_flops(B, 1 + T, D, model.mlp_ratio, model.depth + model.prenet_depth))


def synthetic_batch(config: Config) -> tuple[dict, list[str], float]:
    """train.batch_size random images of the config's size and 10 classes through the training
    collate (mixing included), for speed measurements."""
    settings = config.model.settings
    g = torch.Generator().manual_seed(0)
    items = [{"index": i, "inputs": torch.randn(settings.in_channels, settings.image_size, settings.image_size,
                                                  generator=g), "target": i % 10} for i in range(config.train.batch_size)]
    labels = [str(k) for k in range(10)]
    return ClassificationCollate(config, len(labels), train=True)(items), labels, 0.0


CLASSIFICATION = Task(name="classification", data=task_data, build=lambda encoder, config, labels: ImageClassifier(
    encoder, len(labels), config), score=score, metric="accuracy", metrics=("accuracy", "top5"),
    step_flops=step_flops, synthetic_batch=synthetic_batch, inputs=prediction_inputs, describe=describe_classes,
    data_keys=("channels", "mean", "std", "eval_crop_pct"))
