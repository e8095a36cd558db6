"""Batching, the same for every modality: masks (pre-training) and augmentations are drawn in the
DataLoader workers, and every random draw of a sample comes from its own stream, seeded by (seed,
epoch, sample index, stream). A sample therefore gets the same augmentation, masks and mask-token
noise in a resumed run and in a run on any number of processes.

A pre-training batch is a dict:
    inputs      (B, ...)    the samples, stacked (images), cropped (audio) or padded (text)
    mask        (B*M, T)    bool, True = masked; rows b*M .. b*M+M-1 belong to sample b
    noise_seed  (B,)        int64, seeds the mask-token noise of each sample
    num_masked, masked_per_row   ints: the masked count, in all and per row
    index       (B,)        int64, the samples' dataset indices
    errors      list[str]   messages of the samples that could not be read (left out or replaced)
    exhausted   bool        a sample could not be replaced: no readable sample is left
A fine-tuning batch has "inputs", "target" (the task's) and "count" (what the loss is averaged
over: samples) in place of the mask, noise seeds and counts.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

from ..config import MaskingConfig
from ..errors import ConfigError


class Stream(IntEnum):
    """The random streams of a sample: np.random.default_rng([seed, epoch, index, stream])."""

    AUGMENT = 0  # image crops and flips
    MASK = 1  # the M masks
    NOISE = 2  # the seed of the mask-token noise
    CROP = 3  # audio: the crop of a long file
    BATCH_CROP = 4  # audio: the crop of each sample to the batch's shortest
    REPLACE = 5  # the order in which an unreadable sample's replacements are tried
    MIX = 6  # fine-tuning: mixup / cutmix of a batch (the stream of its first sample)
    CHANNEL_MASK = 7  # speech fine-tuning: the channels masked


def sample_rng(seed: int, epoch: int, index: int, stream: Stream) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, int(index), int(stream)])


class Collate:
    """What every collate shares: it keeps the epoch, leaves unreadable samples out (reporting them),
    gives each sample its streams, and assembles the readable ones with the subclass's `assemble`."""

    def __init__(self, seed: int):
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rng(self, index: int, stream: Stream) -> np.random.Generator:
        return sample_rng(self.seed, self.epoch, index, stream)

    def assemble(self, items: list[dict]) -> dict:
        """Readable samples {"index", "inputs", ...} -> the batch's tensors."""
        raise NotImplementedError

    def empty(self) -> dict:
        """The tensors of a batch without a readable sample."""
        raise NotImplementedError

    def __call__(self, items: list[dict]) -> dict:
        good = [s for s in items if "error" not in s]
        errors = [e for s in items for e in ([s["error"]] if "error" in s else s.get("replaced", []))]
        exhausted = any(s.get("exhausted", False) for s in items)
        batch = self.assemble(good) if good else self.empty()
        return {**batch, "index": torch.tensor([int(s["index"]) for s in good], dtype=torch.int64),
                "errors": errors, "exhausted": exhausted}


class MaskingCollate(Collate):
    """Pre-training: a modality supplies `inputs_and_masks`; the noise seeds and counts are added."""

    def __init__(self, masking: MaskingConfig, seed: int):
        super().__init__(seed)
        self.masking = masking

    def inputs_and_masks(self, items: list[dict]) -> tuple[torch.Tensor, list[np.ndarray]]:
        """items: readable samples {"index", "inputs"} -> (inputs (B, ...), B arrays (M, T) bool)."""
        raise NotImplementedError

    def empty(self) -> dict:
        return {"inputs": torch.empty(0), "mask": torch.zeros(0, 0, dtype=torch.bool), "num_masked": 0,
                "masked_per_row": 0, "noise_seed": torch.zeros(0, dtype=torch.int64)}

    def assemble(self, items: list[dict]) -> dict:
        inputs, masks = self.inputs_and_masks(items)
        mask = np.concatenate(masks)  # (B*M, T)
        seeds = [self.rng(s["index"], Stream.NOISE).integers(2**62) for s in items]
        return {
            "inputs": inputs,
            "mask": torch.from_numpy(mask),
            # counted here, on the host, so that the model and the trainer need not wait for the device
            "num_masked": int(mask.sum()),
            "masked_per_row": int(mask[0].sum()),
            "noise_seed": torch.tensor(seeds, dtype=torch.int64),
        }


class ReplaceUnreadable(torch.utils.data.Dataset):
    """data.on_bad_file=skip: an unreadable sample is replaced by the first readable one in an
    order drawn from its own stream (seed, epoch, index, REPLACE), so every batch stays full (and
    every process's batch in DDP) and a resumed run draws the same replacement. The replacement
    carries the messages of the unreadable files it stands in for under "replaced". When no sample
    is readable, the unreadable item comes back with "exhausted": True.

    Unreadable indices are remembered per process (a worker's copy), only to avoid reading them
    again; the choice does not depend on it."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed = dataset, seed
        self.epoch = 0
        self.unreadable: dict[int, str] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _read(self, i: int) -> dict:
        if i in self.unreadable:
            return {"index": i, "error": self.unreadable[i]}
        item = self.dataset[i]
        if "error" in item:
            self.unreadable[i] = item["error"]
        return item

    def __getitem__(self, i: int) -> dict:
        item = self._read(int(i))
        if "error" not in item:
            return item
        replaced = [item["error"]]
        for j in sample_rng(self.seed, self.epoch, i, Stream.REPLACE).permutation(len(self.dataset)).tolist():
            if j == i:
                continue
            candidate = self._read(j)
            if "error" not in candidate:
                return {**candidate, "replaced": replaced}
            replaced.append(candidate["error"])
        return {**item, "exhausted": True}


class ResumableSampler(torch.utils.data.Sampler):
    """Indices for one process, in micro-batches, from a per-epoch seeded permutation.

    The permutation is cut into chunks of `micro_batch` indices; process r takes chunks r, r+W,
    r+2W, ... So update u (with A accumulation steps) covers exactly the permutation's slice
    [u*A*W*b, (u+1)*A*W*b) whatever W and A are, and a run resumed at update u starts there."""

    def __init__(self, num_samples: int, micro_batch: int, world_size: int, rank: int, accum: int,
                 seed: int, shuffle: bool = True, lengths: list[int] | None = None):
        self.n, self.b, self.world, self.rank, self.accum = num_samples, micro_batch, world_size, rank, accum
        self.seed, self.shuffle = seed, shuffle
        self.lengths = None if lengths is None else torch.as_tensor(lengths, dtype=torch.float64)
        self.epoch, self.start_step = 0, 0
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size: one update takes {self.global_batch} samples ({micro_batch} per "
                              f"micro-batch x {accum} accumulation step(s) x {world_size} process(es)); the "
                              f"training data has only {num_samples}")

    @property
    def global_batch(self) -> int:
        return self.b * self.world * self.accum

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_position(self, epoch: int, start_step: int) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum * self.b

    def _bucketed(self, perm: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Length bucketing (speech): sort the shuffled indices by length, cut the order into
        global batches, shuffle the batches. Every micro-batch then holds similar lengths (the
        collate crops to the shortest) and an update still covers one contiguous slice."""
        order = perm[torch.argsort(self.lengths[perm], stable=True)]
        G = self.global_batch
        full = self.steps_per_epoch * G
        batches = order[:full].view(self.steps_per_epoch, G)  # (steps, G), leftovers dropped
        return torch.cat([batches[torch.randperm(len(batches), generator=g)].reshape(-1), order[full:]])

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g)
            if self.lengths is not None:
                perm = self._bucketed(perm, g)
        else:
            perm = torch.arange(self.n)
        for step in range(self.start_step, self.steps_per_epoch):
            for a in range(self.accum):
                chunk = (step * self.accum + a) * self.world + self.rank
                yield from perm[chunk * self.b:(chunk + 1) * self.b].tolist()
