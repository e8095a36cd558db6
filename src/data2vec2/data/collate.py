"""Batching for pre-training: masks are drawn here, inside the DataLoader workers.

Every random draw of a sample is seeded by (seed, epoch, sample index), so a sample gets the same
augmentation, masks and mask-token noise in a resumed run, and in a run on any number of
processes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import MaskingConfig
from ..masking import make_masks

MASK_STREAM, NOISE_STREAM = 1, 2  # sub-streams of np.random.default_rng([seed, epoch, index, stream])


class MaskingCollate:
    def __init__(self, masking: MaskingConfig, grid: tuple[int, int], seed: int):
        self.masking, self.grid, self.seed = masking, grid, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, samples: list[dict]) -> dict:
        """samples: dicts with "index" and "image" (C, H, W) or "error" (an unreadable file).

        Returns image (B, C, H, W), mask (B*M, T) bool with rows b*M .. b*M+M-1 for sample b,
        noise_seed (B,), index (B,) and the error messages of the samples left out."""
        good = [s for s in samples if "error" not in s]
        errors = [s["error"] for s in samples if "error" in s]
        m = self.masking
        masks, seeds = [], []
        for s in good:
            key = [self.seed, self.epoch, int(s["index"])]
            rng = np.random.default_rng(key + [MASK_STREAM])
            masks.append(make_masks(m.kind, m.num_masks, self.grid, m.mask_prob, m.mask_length, m.mask_prob_adjust, rng))
            seeds.append(np.random.default_rng(key + [NOISE_STREAM]).integers(2**62))
        T = self.grid[0] * self.grid[1]
        return {
            "image": torch.stack([s["image"] for s in good]) if good else torch.empty(0),
            "mask": torch.from_numpy(np.concatenate(masks)) if masks else torch.zeros(0, T, dtype=torch.bool),
            "noise_seed": torch.tensor(seeds, dtype=torch.int64),
            "index": torch.tensor([int(s["index"]) for s in good], dtype=torch.int64),
            "errors": errors,
        }


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
            raise ValueError(f"{num_samples} samples are fewer than one global batch of {self.global_batch}")

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
