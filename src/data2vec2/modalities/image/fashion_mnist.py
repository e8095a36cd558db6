"""Fashion-MNIST: read the IDX files of the Debian package and cache them as ``.npz`` files.

The Debian package ``dataset-fashion-mnist`` (MIT licence) installs the four original files
``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` in :data:`FASHION_MNIST_DIR`.
:func:`prepare_fashion_mnist` converts them once into ``CACHE/fashion-mnist/{train,test}.npz``
(``images`` uint8 (N, 28, 28), ``labels`` int64 (N,)), which :func:`load_fashion_mnist` reads.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Our split name -> file name prefix of the original release.
SPLITS = {"train": "train", "test": "t10k"}

# IDX type code (third byte of the magic number) -> element type (IDX data is big-endian).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into an array with native byte order.

    Layout: magic ``00 00 TYPE NDIM``, then NDIM big-endian uint32 sizes, then the data.
    Raises :class:`DataError` naming ``path`` if it is missing, truncated or corrupt.
    """
    path = Path(path)

    def fail(reason: str) -> DataError:
        return DataError(f"cannot read IDX file {path}: {reason}")

    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        if compressed:
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise fail("file not found") from None
    except (OSError, EOFError, zlib.error) as e:  # bad or truncated gzip stream, I/O error
        raise fail(str(e) or type(e).__name__) from e

    if len(data) < 4:
        raise fail("file is truncated (no header)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise fail(f"bad magic number {data[:4].hex()} (not an IDX file)")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise fail("file is truncated (incomplete header)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header < expected:
        raise fail(f"file is truncated ({len(data) - header} of {expected} data bytes)")
    if len(data) - header > expected:
        raise fail(f"{len(data) - header - expected} unexpected bytes after the data")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def _check_arrays(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    """Raise DataError unless ``images`` is uint8 (N, 28, 28) and ``labels`` (N,) in [0, 10)."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{where}: expected uint8 images of shape (N, 28, 28), got "
                        f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{where}: expected {len(images)} labels, got shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(f"{where}: labels outside 0..{len(CLASS_NAMES) - 1}")


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load and check one cached split; DataError on any problem."""
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except Exception as e:  # zip, pickle, key and I/O errors all mean "corrupt"
        raise DataError(f"cannot read {path}: {str(e) or type(e).__name__}") from e
    if labels.dtype != np.int64:
        raise DataError(f"{path}: expected int64 labels, got {labels.dtype}")
    _check_arrays(images, labels, str(path))
    return images, labels


def _write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` via a temporary file in the same folder and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_fashion_mnist(
    cache_dir: str | os.PathLike,
    source_dir: str | os.PathLike = FASHION_MNIST_DIR,
    progress: bool = True,
) -> Path:
    """Convert the IDX files in ``source_dir`` to ``cache_dir/fashion-mnist/{train,test}.npz``.

    A split whose ``.npz`` file already exists and loads correctly is skipped. Files are written
    atomically, so an interrupted run never leaves a half-written cache. Returns the folder.
    """
    out = Path(cache_dir).expanduser() / "fashion-mnist"
    todo = []
    for split in SPLITS:
        try:
            _read_npz(out / f"{split}.npz")
            if progress:
                print(f"[prepare] {out / f'{split}.npz'} already prepared", flush=True)
        except DataError:
            todo.append(split)
    if not todo:
        return out

    source_dir = Path(source_dir)
    needed = [source_dir / f"{SPLITS[s]}-{kind}-ubyte.gz"
              for s in todo for kind in ("images-idx3", "labels-idx1")]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST is not installed: {', '.join(missing)} not found in {source_dir}; "
            "install it with 'apt-get install dataset-fashion-mnist' (as root)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create cache folder {out}: {e}") from e

    for split in todo:
        prefix = source_dir / SPLITS[split]
        images = read_idx(f"{prefix}-images-idx3-ubyte.gz")  # uint8 (N, 28, 28)
        labels = read_idx(f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)  # (N,)
        _check_arrays(images, labels, f"Fashion-MNIST {split} files in {source_dir}")
        target = out / f"{split}.npz"
        try:
            _write_npz_atomic(target, images=images, labels=labels)
        except OSError as e:
            raise DataError(f"cannot write {target}: {e}") from e
        if progress:
            print(f"[prepare] wrote {target} ({len(images)} images)", flush=True)
    return out


def load_fashion_mnist(cache_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a prepared split: images uint8 (N, 28, 28) and labels int64 (N,)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown Fashion-MNIST split {split!r}; choose one of {list(SPLITS)}")
    path = Path(cache_dir).expanduser() / "fashion-mnist" / f"{split}.npz"
    if not path.is_file():
        raise DataError(f"Fashion-MNIST is not prepared in {cache_dir} ({path} is missing); "
                        f"run 'data2vec2 prepare fashion-mnist --cache {cache_dir}'")
    try:
        return _read_npz(path)
    except DataError as e:
        raise DataError(f"{e}; run 'data2vec2 prepare fashion-mnist --cache {cache_dir}' "
                        "again to rebuild it") from e
