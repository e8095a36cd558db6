"""Mask generators (fairseq/data/data_utils.py `compute_block_mask_2d`/`_1d`). Convention everywhere: True = masked.

Every generator returns a bool array of shape (num_masks, T) in which **every row has exactly the
same number of masked tokens**: the student drops masked tokens physically and stacks the rows, so
the counts must agree. Randomness comes from a `np.random.Generator` supplied by the caller, so a
mask is a pure function of its seed (the collate function seeds it per (seed, epoch, sample)).
"""

from __future__ import annotations

import numpy as np


def _force_count(marked: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Make one row hold exactly `target` marked cells by un-marking random marked cells or
    marking random unmarked ones (uniformly, not necessarily adjacent, as in `compute_block_mask_2d`)."""
    count = int(marked.sum())
    if count > target:
        drop = rng.choice(np.flatnonzero(marked), count - target, replace=False)
        marked[drop] = False
    elif count < target:
        add = rng.choice(np.flatnonzero(~marked), target - count, replace=False)
        marked[add] = True
    return marked


def block_mask_2d(
    num_masks: int,
    grid: tuple[int, int],
    mask_prob: float,
    block: int,
    adjust: float,
    rng: np.random.Generator,
    inverse: bool = True,
) -> np.ndarray:
    """(Inverse) block masking on an h x w patch grid (`compute_block_mask_2d`). Returns (num_masks, h*w) bool.

    With `inverse`, `mask_prob` is still the fraction that ends up masked; the b x b blocks are
    drawn for the *kept* region instead. Centres are drawn with replacement, each marks the cells
    at offsets -b//2 .. b-1-b//2 around it clamped to the grid, then the count is forced to
    floor(L * rho), rho being the marked fraction. ViT-B: 5 kept blocks, 39 kept, 157 masked.
    """
    h, w = grid
    length = h * w
    rho = 1.0 - mask_prob if inverse else mask_prob
    num_centres = int(length * (rho + adjust) / block**2)
    masked = num_masked("inverse_block" if inverse else "block", length, mask_prob)
    target = length - masked if inverse else masked  # cells to mark: kept ones when inverse
    offsets = np.arange(block) - block // 2  # -1, 0, 1 for block = 3

    masks = np.zeros((num_masks, length), dtype=bool)
    for row in range(num_masks):
        centres = rng.integers(0, length, size=num_centres)
        cy, cx = np.divmod(centres, w)  # (num_centres,)
        ys = np.clip(cy[:, None, None] + offsets[None, :, None], 0, h - 1)  # (n, b, 1)
        xs = np.clip(cx[:, None, None] + offsets[None, None, :], 0, w - 1)  # (n, 1, b)
        marked = np.zeros(length, dtype=bool)
        marked[(ys * w + xs).ravel()] = True
        marked = _force_count(marked, target, rng)
        masks[row] = ~marked if inverse else marked
    return masks


def block_mask_1d(
    num_masks: int,
    length: int,
    mask_prob: float,
    block: int,
    adjust: float,
    rng: np.random.Generator,
    count: int | None = None,
) -> np.ndarray:
    """Block masking on a sequence (`compute_block_mask_1d`): floor(T (R + A) / b) centres with replacement, each
    marking b frames around it (clamped), then exactly floor(T R) masked, or `count` when given.
    Returns (num_masks, T)."""
    num_centres = int(length * (mask_prob + adjust) / block)
    target = num_masked("block", length, mask_prob) if count is None else count
    offsets = np.arange(block) - block // 2
    masks = np.zeros((num_masks, length), dtype=bool)
    for row in range(num_masks):
        centres = rng.integers(0, length, size=num_centres)
        marked = np.zeros(length, dtype=bool)
        marked[np.clip(centres[:, None] + offsets[None, :], 0, length - 1).ravel()] = True
        masks[row] = _force_count(marked, target, rng)
    return masks


def random_mask(num_masks: int, length: int, mask_prob: float, rng: np.random.Generator,
                valid_length: int | None = None) -> np.ndarray:
    """MAE-style random masking: per row, keep the first floor(T (1 - R)) of a random permutation.

    With `valid_length`, only the first `valid_length` positions may be masked (padding is never
    masked) and the count is floor(valid_length * R) per row."""
    n = length if valid_length is None else valid_length
    count = num_masked("random", n, mask_prob)
    masks = np.zeros((num_masks, length), dtype=bool)
    for row in range(num_masks):
        masks[row, rng.permutation(n)[:count]] = True
    return masks


def make_masks(kind: str, num_masks: int, grid: tuple[int, int], mask_prob: float, block: int,
               adjust: float, rng: np.random.Generator) -> np.ndarray:
    """Masks for a 2-D token grid by name: "inverse_block" (the paper's), "block", "random"."""
    if kind == "inverse_block":
        return block_mask_2d(num_masks, grid, mask_prob, block, adjust, rng, inverse=True)
    if kind == "block":
        return block_mask_2d(num_masks, grid, mask_prob, block, adjust, rng, inverse=False)
    if kind == "random":
        return random_mask(num_masks, grid[0] * grid[1], mask_prob, rng)
    raise ValueError(f"unknown mask kind {kind!r}: expected inverse_block, block or random")


def num_masked(kind: str, length: int, mask_prob: float) -> int:
    """The masked count of every row for `length` tokens: the one definition that the generators
    above, the collates and the FLOP counts use. Block masking rounds the masked count down,
    floor(T R); inverse block and random masking round the kept count down, T - floor(T (1 - R))."""
    if kind == "block":
        return int(length * mask_prob)
    if kind in ("inverse_block", "random"):
        return length - int(length * (1.0 - mask_prob))
    raise ValueError(f"unknown mask kind {kind!r}: expected inverse_block, block or random")


__all__ = ["block_mask_2d", "block_mask_1d", "random_mask", "make_masks", "num_masked"]
