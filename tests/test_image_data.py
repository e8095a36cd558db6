"""Tests for Fashion-MNIST preparation, image sources, transforms and image datasets."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data2vec2.errors import ConfigError, Data2Vec2Error, DataError
from data2vec2.modalities.image import fashion_mnist as fm
from data2vec2.modalities.image.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGE_EXTENSIONS,
    ArraySource,
    EvalImageDataset,
    EvalTransform,
    FolderSource,
    PretrainImageDataset,
    TrainTransform,
    list_image_files,
    load_image,
    open_image_source,
    random_resized_crop,
    resize_center_crop,
    sample_crop_box,
    to_tensor,
)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array in the IDX format, written out independently of the reader."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_gz(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


def make_fake_source(folder: Path, n_train: int = 12, n_test: int = 5) -> tuple:
    """A fake Fashion-MNIST install in the real IDX gzip format."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_gz(folder / f"{prefix}-images-idx3-ubyte.gz", idx_bytes(images))
        write_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", idx_bytes(labels))
        arrays[prefix] = (images, labels)
    return arrays


# ---------------------------------------------------------------------------------------------
# IDX and Fashion-MNIST


def test_errors_hierarchy():
    assert issubclass(ConfigError, Data2Vec2Error) and issubclass(DataError, Data2Vec2Error)


def test_read_idx_round_trip(tmp_path):
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    out = fm.read_idx(write_gz(tmp_path / "a.gz", idx_bytes(a)))
    assert out.dtype == np.uint8 and out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, a)
    # Big-endian multi-byte types, uncompressed file.
    b = np.array([[1, -2, 70000]], dtype=np.int32)
    (tmp_path / "b.idx").write_bytes(idx_bytes(b))
    out = fm.read_idx(tmp_path / "b.idx")
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, b)


def test_read_idx_bad_files_name_the_path(tmp_path):
    data = idx_bytes(np.zeros((10, 28, 28), dtype=np.uint8))
    cases = {
        "short.gz": gzip.compress(data[:-100]),  # valid gzip, truncated IDX data
        "cut.gz": gzip.compress(data)[:40],  # truncated gzip stream
        "magic.gz": gzip.compress(b"\x01\x02" + data[2:]),
        "header.gz": gzip.compress(data[:6]),
        "extra.gz": gzip.compress(data + b"\x00"),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError, match="cannot read IDX file") as info:
            fm.read_idx(path)
        assert str(path) in str(info.value)
    with pytest.raises(DataError, match="not found"):
        fm.read_idx(tmp_path / "missing.gz")


def test_prepare_and_load_fashion_mnist(tmp_path, capsys):
    arrays = make_fake_source(tmp_path / "src")
    cache = tmp_path / "cache"
    out = fm.prepare_fashion_mnist(cache, source_dir=tmp_path / "src", progress=False)
    assert out == cache / "fashion-mnist"
    assert sorted(p.name for p in out.iterdir()) == ["test.npz", "train.npz"]  # no temp files
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = fm.load_fashion_mnist(cache, split)
        assert images.dtype == np.uint8 and images.shape == arrays[prefix][0].shape
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images, arrays[prefix][0])
        np.testing.assert_array_equal(labels, arrays[prefix][1])

    # A second run skips both files; a corrupt one is rebuilt.
    mtime = (out / "test.npz").stat().st_mtime_ns
    (out / "train.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="prepare fashion-mnist"):
        fm.load_fashion_mnist(cache, "train")
    fm.prepare_fashion_mnist(cache, source_dir=tmp_path / "src", progress=True)
    assert "already prepared" in capsys.readouterr().out
    assert (out / "test.npz").stat().st_mtime_ns == mtime
    assert len(fm.load_fashion_mnist(cache, "train")[0]) == 12


def test_prepare_missing_source_and_unprepared_cache(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fm.prepare_fashion_mnist(tmp_path / "cache", source_dir=tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"data2vec2 prepare fashion-mnist --cache"):
        fm.load_fashion_mnist(tmp_path / "cache", "train")
    with pytest.raises(ConfigError):
        fm.load_fashion_mnist(tmp_path / "cache", "validation")


def test_prepare_rejects_bad_source_shapes(tmp_path):
    make_fake_source(tmp_path / "src")
    write_gz(tmp_path / "src" / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="labels"):
        fm.prepare_fashion_mnist(tmp_path / "cache", source_dir=tmp_path / "src", progress=False)


@pytest.mark.skipif(not fm.FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_train_files():
    with gzip.open(fm.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz") as f:
        magic, n, h, w = struct.unpack(">4I", f.read(16))  # header only, to stay fast
    assert (magic, n, h, w) == (0x0803, 60000, 28, 28)
    labels = fm.read_idx(fm.FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,)
    assert np.bincount(labels).tolist() == [6000] * 10
    assert len(fm.CLASS_NAMES) == 10


def test_open_fashion_mnist_source(tmp_path):
    arrays = make_fake_source(tmp_path / "src")
    fm.prepare_fashion_mnist(tmp_path / "cache", source_dir=tmp_path / "src", progress=False)
    source = open_image_source("fashion-mnist:test", tmp_path / "cache", channels=3)
    assert len(source) == 5 and source.class_names == fm.CLASS_NAMES
    img = source.get(2)
    assert img.shape == (28, 28, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[:, :, 1], arrays["t10k"][0][2])
    assert source.label(2) == 2 and source.path(2) == "fashion-mnist[2]"
    grey = open_image_source("fashion-mnist:train", tmp_path / "cache", channels=1)
    assert grey.get(0).shape == (28, 28, 1)
    with pytest.raises(ConfigError):
        open_image_source("fashion-mnist", tmp_path / "cache", channels=1)


# ---------------------------------------------------------------------------------------------
# Folders and image files


def noise(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)
    return img[:, :, 0] if c == 1 else img


@pytest.fixture
def image_folder(tmp_path) -> Path:
    root = tmp_path / "images"
    for sub in ("cat/sub", "dog", ".hidden"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(noise(20, 30, 3, 1)).save(root / "cat" / "a.png")
    Image.fromarray(noise(16, 16, 3, 2)).save(root / "cat" / "sub" / "b.JPG", quality=90)
    Image.fromarray(noise(12, 10, 1, 3)).save(root / "dog" / "c.png")  # grey
    Image.fromarray(noise(8, 8, 3, 4)).save(root / "dog" / "d.bmp")
    Image.fromarray(noise(9, 9, 3, 5)).save(root / "top.png")
    Image.fromarray(noise(9, 9, 3, 6)).save(root / ".hidden" / "x.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_image_extensions():
    assert {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"} <= IMAGE_EXTENSIONS
    assert ".txt" not in IMAGE_EXTENSIONS


def test_list_image_files(image_folder, tmp_path):
    rel = [p.relative_to(image_folder).as_posix() for p in list_image_files(image_folder)]
    assert rel == ["cat/a.png", "cat/sub/b.JPG", "dog/c.png", "dog/d.bmp", "top.png"]
    with pytest.raises(DataError, match="does not exist"):
        list_image_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        list_image_files(tmp_path / "empty")


def test_folder_source(image_folder):
    source = FolderSource(image_folder, channels=3)
    assert len(source) == 5 and source.class_names == ("cat", "dog")
    assert [source.label(i) for i in range(5)] == [0, 0, 1, 1, -1]
    a = source.get(0)
    assert a.shape == (20, 30, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, noise(20, 30, 3, 1))  # PNG is lossless
    assert source.get(1).shape == (16, 16, 3)  # JPEG
    assert source.get(2).shape == (12, 10, 3)  # grey file read as RGB
    assert source.path(2).endswith("c.png")
    grey = FolderSource(image_folder, channels=1)
    np.testing.assert_array_equal(grey.get(2)[:, :, 0], noise(12, 10, 1, 3))
    assert grey.get(3).shape == (8, 8, 1)  # colour file read as grey


def test_unlabelled_folder(tmp_path):
    Image.fromarray(noise(5, 5, 3)).save(tmp_path / "x.png")
    source = FolderSource(tmp_path, channels=3)
    assert source.class_names == () and source.label(0) == -1


def test_bad_images_raise_data_error_with_path(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    good = tmp_path / "good.png"
    Image.fromarray(noise(64, 64, 3)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (corrupt, truncated, tmp_path / "missing.png"):
        with pytest.raises(DataError) as info:
            load_image(path, channels=3)
        assert str(info.value).startswith(f"cannot read image {path}: ")
    with pytest.raises(ConfigError):
        load_image(good, channels=2)


# ---------------------------------------------------------------------------------------------
# Transforms


def test_random_resized_crop_shape_and_determinism():
    img = noise(40, 50, 3)
    out = random_resized_crop(img, 16, np.random.default_rng(7))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, random_resized_crop(img, 16, np.random.default_rng(7)))
    assert not np.array_equal(out, random_resized_crop(img, 16, np.random.default_rng(8)))
    assert random_resized_crop(noise(40, 50, 1)[:, :, None], 12, np.random.default_rng(0)).shape \
        == (12, 12, 1)


def test_crop_box_area_and_ratio_bounds():
    height, width = 600, 800
    for seed in range(300):
        top, left, h, w = sample_crop_box(height, width, np.random.default_rng(seed), (0.2, 0.6))
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        assert 0.2 - 0.005 <= h * w / (height * width) <= 0.6 + 0.005
        assert 3 / 4 - 0.01 <= w / h <= 4 / 3 + 0.01
    # Impossible aspect ratios fall back to a centre crop clamped to the ratio range.
    assert sample_crop_box(10, 100, np.random.default_rng(0), (0.9, 1.0), (1.0, 2.0)) == \
        (0, 40, 10, 20)


def test_crop_takes_pixels_from_the_box():
    # Pixel values encode coordinates; with a fixed area and a square aspect the crop needs no
    # resizing, so the output must be exactly the image inside the sampled box.
    ys, xs = np.mgrid[0:50, 0:60]
    img = np.stack([ys, xs, (ys + xs) % 256], axis=2).astype(np.uint8)
    for seed in range(5):
        top, left, h, w = sample_crop_box(50, 60, np.random.default_rng(seed), (0.3, 0.3), (1, 1))
        assert h == w == 30
        out = random_resized_crop(img, 30, np.random.default_rng(seed), (0.3, 0.3), (1, 1))
        np.testing.assert_array_equal(out, img[top:top + 30, left:left + 30])


def test_train_transform_flip():
    img = noise(8, 8, 1)[:, :, None]
    t = TrainTransform(8, (0.0,), (1.0,), scale=(1.0, 1.0))
    base = to_tensor(img, (0.0,), (1.0,))
    flipped = to_tensor(np.ascontiguousarray(img[:, ::-1]), (0.0,), (1.0,))
    seen = set()
    for seed in range(20):
        out = t(img, np.random.default_rng(seed))
        assert out.shape == (1, 8, 8)
        if torch.equal(out, base):
            seen.add("same")
        elif torch.equal(out, flipped):
            seen.add("flipped")
        else:
            pytest.fail("output is neither the image nor its mirror")
    assert seen == {"same", "flipped"}
    no_flip = TrainTransform(8, (0.0,), (1.0,), scale=(1.0, 1.0), hflip=False)
    assert all(torch.equal(no_flip(img, np.random.default_rng(s)), base) for s in range(10))


def test_to_tensor_normalisation():
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 0, 255, 51
    mean, std = (0.5, 0.25, 0.1), (0.5, 0.25, 0.2)
    x = to_tensor(img, mean, std)
    assert x.dtype == torch.float32 and x.shape == (3, 2, 3)
    expected = [(0 - 0.5) / 0.5, (1 - 0.25) / 0.25, (0.2 - 0.1) / 0.2]
    for c in range(3):
        torch.testing.assert_close(x[c], torch.full((2, 3), expected[c]))
    with pytest.raises(ConfigError):
        to_tensor(img, (0.5,), (0.5,))
    assert FASHION_MNIST_MEAN == (0.2860,) and FASHION_MNIST_STD == (0.3530,)


def test_resize_center_crop_and_eval_transform():
    img = noise(40, 60, 3)
    assert resize_center_crop(img, 40).shape == (40, 40, 3)
    np.testing.assert_array_equal(resize_center_crop(img, 40), img[:, 10:50])  # no resize needed
    assert resize_center_crop(img, 16).shape == (16, 16, 3)
    square = noise(16, 16, 3)
    assert resize_center_crop(square, 16) is square
    x = EvalTransform(16, (0.5,) * 3, (0.5,) * 3)(img)
    assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1


# ---------------------------------------------------------------------------------------------
# Datasets


def test_pretrain_dataset_reproducible_and_reports_bad_images(image_folder):
    (image_folder / "dog" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    source = FolderSource(image_folder, channels=3)
    ds = PretrainImageDataset(source, TrainTransform(8, (0.5,) * 3, (0.5,) * 3), seed=3)
    assert len(ds) == 6
    bad = [i for i in range(len(ds)) if source.path(i).endswith("bad.png")][0]
    entry = ds[bad]
    assert entry["index"] == bad and "inputs" not in entry
    assert entry["error"].startswith(f"cannot read image {source.path(bad)}: ")

    first = ds[0]
    assert first["index"] == 0 and first["inputs"].shape == (3, 8, 8)
    assert torch.equal(first["inputs"], ds[0]["inputs"])  # same seed, epoch, index
    other = PretrainImageDataset(source, ds.transform, seed=3)
    assert torch.equal(other[0]["inputs"], first["inputs"])  # independent of the dataset object
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["inputs"], first["inputs"])


def test_eval_dataset(image_folder):
    source = FolderSource(image_folder, channels=1)
    ds = EvalImageDataset(source, EvalTransform(8, (0.5,), (0.5,)))
    x, y = ds[2]
    assert x.shape == (1, 8, 8) and y == 1
    (image_folder / "dog" / "d.bmp").write_bytes(b"BM broken")
    with pytest.raises(DataError, match="d.bmp"):
        ds[3]


def test_array_source():
    images = np.zeros((4, 6, 6), dtype=np.uint8)
    source = ArraySource(images, labels=[0, 1, 2, 3], name="toy")
    assert len(source) == 4 and source.get(1).shape == (6, 6, 1)
    assert source.label(3) == 3 and source.path(2) == "toy[2]"
    assert ArraySource(images).label(0) == -1
    assert ArraySource(images, channels=3).get(0).shape == (6, 6, 3)
    with pytest.raises(DataError):
        ArraySource(images.astype(np.float32))
    with pytest.raises(DataError):
        ArraySource(images, labels=[0, 1])
