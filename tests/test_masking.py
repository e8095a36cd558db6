import numpy as np
import pytest

from data2vec2.masking import block_mask_1d, block_mask_2d, make_masks, num_masked, random_mask


def _neighbour_fraction(cells: np.ndarray, h: int, w: int) -> float:
    """Fraction of True cells that have a True 4-neighbour."""
    g = cells.reshape(h, w)
    padded = np.pad(g, 1)
    nb = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return float((g & nb).sum() / g.sum())


@pytest.mark.parametrize("prob,adjust,masked", [(0.8, 0.07, 157), (0.75, 0.1, 147)])
def test_inverse_block_exact_counts_vit(prob, adjust, masked):
    masks = block_mask_2d(64, (14, 14), prob, 3, adjust, np.random.default_rng(0))
    assert masks.shape == (64, 196) and masks.dtype == bool
    assert (masks.sum(1) == masked).all()  # as compute_block_mask_2d: 157/196 for ViT-B, 147/196 for ViT-L
    assert num_masked("inverse_block", 196, prob) == masked


def test_inverse_block_vit_huge14_counts():
    masks = block_mask_2d(8, (16, 16), 0.75, 3, 0.1, np.random.default_rng(1))
    assert (masks.sum(1) == 192).all()


def test_inverse_block_keeps_blocks():
    """The kept region is made of 3x3 blocks: almost every kept cell has a kept neighbour, far
    more than for random masking at the same ratio (1 - 0.8^4 = 59% expected)."""
    rng = np.random.default_rng(0)
    block = block_mask_2d(200, (14, 14), 0.8, 3, 0.07, rng)
    rand = random_mask(200, 196, 0.8, rng)
    block_nb = np.mean([_neighbour_fraction(~m, 14, 14) for m in block])
    rand_nb = np.mean([_neighbour_fraction(~m, 14, 14) for m in rand])
    assert block_nb > 0.85 and rand_nb < 0.7


def test_inverse_block_kept_cells_come_from_centred_blocks():
    """With no count correction needed (one centre, target = its 9 cells), the kept cells are
    exactly the 3x3 block around a centre, clamped at the border."""
    # L = 100, rho = 1 - 0.9 (just under 0.1 in floating point) -> 9 kept cells, 1 centre
    masks = block_mask_2d(50, (10, 10), 0.9, 3, 0.0, np.random.default_rng(3))
    for m in masks:
        kept = np.argwhere(~m.reshape(10, 10))
        assert len(kept) == 9
        span = kept.max(0) - kept.min(0)
        # interior centre: a full 3x3 block; border: a clamped block plus random fill-ins
        if (kept.min(0) > 0).all() and (kept.max(0) < 9).all() and (span == 2).all():
            assert set(map(tuple, kept - kept.min(0))) == {(i, j) for i in range(3) for j in range(3)}


def test_block_mask_1d_counts_and_spans():
    masks = block_mask_1d(16, 999, 0.5, 5, 0.05, np.random.default_rng(0))
    assert (masks.sum(1) == 499).all()  # as compute_block_mask_1d: T = 999 -> 499 masked
    # spans: most masked frames sit in runs of length >= 5
    runs = []
    for m in masks:
        edges = np.flatnonzero(np.diff(np.r_[0, m.astype(int), 0]))
        runs += list(edges[1::2] - edges[::2])
    runs = np.array(runs)
    assert (runs[runs >= 5].sum() / runs.sum()) > 0.8


def test_random_mask_counts_and_padding():
    masks = random_mask(8, 512, 0.48, np.random.default_rng(0))
    assert (masks.sum(1) == 246).all()  # mask_prob 0.48 (base_text_only_task.yaml): 246 of 512
    masks = random_mask(8, 20, 0.5, np.random.default_rng(0), valid_length=10)
    assert not masks[:, 10:].any() and (masks.sum(1) == 5).all()


def test_masks_are_a_function_of_the_seed():
    a = make_masks("inverse_block", 4, (7, 7), 0.7, 3, 0.07, np.random.default_rng([1, 2, 3]))
    b = make_masks("inverse_block", 4, (7, 7), 0.7, 3, 0.07, np.random.default_rng([1, 2, 3]))
    c = make_masks("inverse_block", 4, (7, 7), 0.7, 3, 0.07, np.random.default_rng([1, 2, 4]))
    assert (a == b).all() and not (a == c).all()
    assert len({m.tobytes() for m in a}) == 4  # the M clones get independent masks
    with pytest.raises(ValueError, match="unknown mask kind"):
        make_masks("nope", 1, (7, 7), 0.5, 3, 0.0, np.random.default_rng(0))
