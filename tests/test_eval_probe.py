"""Tests for the linear-probe and weighted-kNN evaluation protocols."""

import math

import pytest
import torch

from data2vec2.eval.knn import knn_accuracy, knn_predict
from data2vec2.eval.probe import ProbeResult, linear_probe

# Fewer optimisation steps than the defaults, to keep the tests fast.
FAST = dict(epochs=20, batch_size=128, min_steps=100)


def blobs(n_per_class, num_classes, dim, sep, seed):
    """Gaussian blobs with class means ``sep`` apart along distinct axes."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    means = torch.zeros(num_classes, dim)
    means[torch.arange(num_classes), torch.arange(num_classes)] = sep
    x = means[y] + torch.randn(len(y), dim, generator=g)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


# ----------------------------------------------------------------------------- linear probe


def test_probe_separable_blobs():
    xtr, ytr = blobs(200, 3, 16, sep=6.0, seed=0)
    xte, yte = blobs(100, 3, 16, sep=6.0, seed=1)
    wds = (0.0, 1e-3, 1e-1)
    # Default optimisation settings except fewer steps; scale and offset must not matter.
    res = linear_probe(xtr * 50 + 7, ytr, xte * 50 + 7, yte, weight_decays=wds, min_steps=300)
    assert isinstance(res, ProbeResult)
    assert res.test_accuracy > 0.95
    assert res.val_accuracy > 0.95
    assert res.weight_decay in wds
    assert res.epochs == 300  # 600 samples = 1 batch per epoch, raised to min_steps
    assert res.num_features == 16


def test_probe_epochs_not_raised_when_enough_steps():
    xtr, ytr = blobs(100, 2, 16, sep=6.0, seed=0)
    res = linear_probe(xtr, ytr, xtr, ytr, weight_decays=(0.0,), epochs=3, batch_size=20, min_steps=0)
    assert res.epochs == 3
    assert res.test_accuracy > 0.95


def test_probe_random_labels_is_chance():
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(400, 16, generator=g), torch.randn(2000, 16, generator=g)
    ytr, yte = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    res = linear_probe(xtr, ytr, xte, yte, weight_decays=(0.0, 1e-2), **FAST)
    assert abs(res.test_accuracy - 0.25) < 0.05


def test_probe_deterministic_and_test_split_not_used_for_selection():
    xtr, ytr = blobs(100, 4, 24, sep=1.5, seed=2)
    xte, yte = blobs(50, 4, 24, sep=1.5, seed=3)
    kw = dict(seed=5, weight_decays=(0.0, 1e-2), **FAST)
    a = linear_probe(xtr, ytr, xte, yte, **kw)
    b = linear_probe(xtr, ytr, xte, yte, **kw)
    assert a == b
    # Scrambling the test labels changes nothing but the reported test accuracy.
    c = linear_probe(xtr, ytr, xte, yte[torch.randperm(len(yte))], **kw)
    assert (c.val_accuracy, c.weight_decay) == (a.val_accuracy, a.weight_decay)


def test_probe_handles_constant_features():
    xtr, ytr = blobs(100, 2, 16, sep=6.0, seed=4)
    xte, yte = blobs(50, 2, 16, sep=6.0, seed=5)
    xtr[:, -3:] = 0.0  # constant in train (e.g. image border pixels), not in test
    res = linear_probe(xtr, ytr, xte, yte, weight_decays=(0.0,), **FAST)
    assert res.test_accuracy > 0.95


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x, y, tx, ty: (x[:-1], y, tx, ty), "mismatched lengths"),
        (lambda x, y, tx, ty: (x, y, tx, ty[:-1]), "mismatched lengths"),
        (lambda x, y, tx, ty: (x, torch.zeros_like(y), tx, ty), "at least 2 classes"),
        (lambda x, y, tx, ty: (x.index_fill(0, torch.tensor([3]), math.nan), y, tx, ty), "NaN"),
        (lambda x, y, tx, ty: (x, y, tx.index_fill(0, torch.tensor([0]), math.nan), ty), "NaN"),
        (lambda x, y, tx, ty: (x, y, tx[:, :-1], ty), "feature sizes"),
        (lambda x, y, tx, ty: (x, y.float(), tx, ty), "integer"),
    ],
)
def test_probe_bad_inputs(make, match):
    x, y = blobs(20, 2, 16, sep=3.0, seed=0)
    with pytest.raises(ValueError, match=match):
        linear_probe(*make(x, y, x.clone(), y.clone()), epochs=1)


def test_probe_bad_val_fraction():
    x, y = blobs(20, 2, 16, sep=3.0, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(x, y, x, y, val_fraction=1.0, epochs=1)


# ----------------------------------------------------------------------------- kNN


def unit(deg):
    """2-D unit vectors at the given angles in degrees."""
    rad = torch.tensor(deg, dtype=torch.float32) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_knn_hand_made_case():
    # Train points at 0 deg (class 0) and 40, 45 deg (class 1); norms must not matter.
    train_x = unit([0.0, 40.0, 45.0]) * torch.tensor([[3.0], [0.5], [10.0]])
    train_y = torch.tensor([0, 1, 1])
    test_x = unit([5.0, 43.0, 30.0])
    # k=1: nearest neighbour at 0, 45 and 40 deg.
    assert knn_predict(train_x, train_y, test_x, k=1).tolist() == [0, 1, 1]
    # k=3, sharp temperature: the very close 0-deg point outweighs the two far ones at 5 deg,
    # since exp(cos5/.07) ~ e^14.2 > exp(cos35/.07) + exp(cos40/.07) ~ e^11.7 + e^10.9.
    assert knn_predict(train_x, train_y, test_x, k=3).tolist() == [0, 1, 1]
    # k=3, flat temperature: plain majority vote -> class 1 everywhere.
    assert knn_predict(train_x, train_y, test_x, k=3, temperature=100.0).tolist() == [1, 1, 1]
    # At 30 deg: sim to 0 deg is cos30=.866, to 40 and 45 deg cos10 and cos15 -> class 1.
    assert knn_accuracy(train_x, train_y, test_x, torch.tensor([0, 1, 0]), k=1) == pytest.approx(2 / 3)
    # k larger than the training set is clamped.
    assert knn_predict(train_x, train_y, test_x, k=50, temperature=100.0).tolist() == [1, 1, 1]


def test_knn_one_dimensional_points():
    # In 1-D, L2 normalisation keeps only the sign: cosine similarity is +-1.
    train_x = torch.tensor([[-3.0], [-1.0], [2.0], [5.0]])
    train_y = torch.tensor([0, 0, 1, 1])
    test_x = torch.tensor([[4.0], [-0.1], [0.3]])
    assert knn_predict(train_x, train_y, test_x, k=1).tolist() == [1, 0, 1]
    assert knn_predict(train_x, train_y, test_x, k=3).tolist() == [1, 0, 1]


def test_knn_well_separated_clusters():
    xtr, ytr = blobs(100, 5, 32, sep=10.0, seed=0)
    xte, yte = blobs(50, 5, 32, sep=10.0, seed=1)
    assert knn_accuracy(xtr, ytr, xte, yte) == 1.0


def test_knn_chunking_invariant():
    xtr, ytr = blobs(60, 4, 16, sep=1.0, seed=0)
    xte, _ = blobs(30, 4, 16, sep=1.0, seed=1)
    full = knn_predict(xtr, ytr, xte, k=7, batch_size=1024)
    assert torch.equal(full, knn_predict(xtr, ytr, xte, k=7, batch_size=7))


def test_knn_random_labels_is_chance():
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(2000, 32, generator=g), torch.randn(2000, 32, generator=g)
    ytr, yte = torch.randint(0, 5, (2000,), generator=g), torch.randint(0, 5, (2000,), generator=g)
    assert abs(knn_accuracy(xtr, ytr, xte, yte) - 0.2) < 0.05


def test_knn_bad_inputs():
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="mismatched lengths"):
        knn_accuracy(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="mismatched lengths"):
        knn_accuracy(x, y, x, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        knn_accuracy(x.index_fill(0, torch.tensor([0]), math.nan), y, x, y)
    with pytest.raises(ValueError, match="test_x must be"):
        knn_accuracy(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy(x, y, x, y, temperature=0.0)
