"""Checkpoints of a sharded run (train.fsdp), in PyTorch Distributed Checkpoint's format: a folder
that every process writes its shards into (checkpoints/step_<update>/, train/checkpoint.py). A run
saved by W processes resumes on any other number: the shards are re-cut on load. Reading one runs
no code from it: its index is unpickled with an allow-list of the format's own records, and its
tensors and other values are read as weights only.

(A module of its own: torch.distributed.checkpoint takes about a second to import.)"""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from ..errors import TrainingError
from .checkpoint import SHARDED_INDEX


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Every process writes its shards of the model (student and teacher) and of AdamW's state
    into the folder `path` (collective: all processes call it)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(path))


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The model and AdamW's state from the sharded checkpoint folder `path`, whatever the number
    of processes that wrote it (collective)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    # a parameter that had no optimizer state when saved (an encoder still frozen: it had no gradient
    # yet) gets none now either, as in the run that goes on without a stop
    saved = set(_SafeReader(path).read_metadata().state_dict_metadata)
    kept = {name: value for name, value in optim_state["state"].items() if f"optimizer.state.{name}.step" in saved}
    stateless = len(kept) < len(optim_state["state"])
    optim_state["state"] = kept
    state = {"model": model_state, "optimizer": optim_state}
    _load(state, path, no_dist=False)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=not stateless))


def load_sharded_weights(state_dict: dict[str, torch.Tensor], path: Path, prefix: str) -> None:
    """Fill the tensors of a plain (unsharded) `state_dict` in place with the model weights
    `prefix` + name of the sharded checkpoint `path`, in this one process (export, evaluation)."""
    with warnings.catch_warnings():  # DCP warns that it reads in one process, which is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        _load({"model": {prefix + name: t for name, t in state_dict.items()}}, path, no_dist=True)


def sharded_shapes(path: Path, prefix: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the model weights under `prefix` in the sharded checkpoint `path`."""
    index = _SafeReader(path).read_metadata().state_dict_metadata
    start = f"model.{prefix}"
    return {k[len(start):]: tuple(v.size) for k, v in index.items() if k.startswith(start) and hasattr(v, "size")}


def check_shards(path: Path) -> None:
    """Every shard file that the index of the sharded checkpoint `path` names is there and holds the
    bytes the index places in it (a file cut short by a full disk or a bad copy fails here, before
    anything is loaded, so that resuming can fall back to an older checkpoint)."""
    index = _SafeReader(path).read_metadata()
    need: dict[str, int] = {}
    for info in index.storage_data.values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(need.items()):
        file = Path(path) / name
        have = file.stat().st_size if file.is_file() else None
        if have is None or have < size:
            raise TrainingError(f"{file} is {'missing' if have is None else f'truncated ({have:,} of {size:,} bytes)'}")


def _load(state: dict, path: Path, no_dist: bool) -> None:
    reader = _SafeReader(path)
    reader.read_metadata()  # a bad index is refused here, in one line, not after DCP's fallback and its log
    try:
        dcp.load(state, storage_reader=reader, planner=_WeightsOnlyPlanner(), no_dist=no_dist)
    except CheckpointException as e:  # each failed process's error, with its traceback
        first = next(iter(e.failures.values()))[0]
        raise TrainingError(f"cannot load the sharded checkpoint {path}: {_first_line(first)}") from None
    except Exception as e:
        raise TrainingError(f"cannot load the sharded checkpoint {path}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


# what the index of a checkpoint (its .metadata) may name: the format's own records and torch's
# sizes, dtypes and layouts; anything else is refused
_INDEX_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "pathlib._local": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},  # Python >= 3.13
}


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name in _INDEX_CLASSES.get(module, ()) or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                         torch.dtype)):
            return super().find_class(module, name)
        raise TrainingError(f"the checkpoint index names {module}.{name}, which a checkpoint never holds; "
                            f"it was not loaded")


class _SafeReader(FileSystemReader):
    """DCP's file reader, but its index is unpickled with the allow-list above, once."""

    def read_metadata(self, *args, **kwargs):
        if kwargs.get("rank") is not None:  # DCP's fallback to a per-process index, which we never write
            raise FileNotFoundError(f"no per-process index in {self.path}")
        if getattr(self, "_metadata", None) is None:
            self._metadata = self._read_index()
        self._metadata.storage_meta.load_id = getattr(self, "load_id", None)
        return self._metadata

    def _read_index(self):
        try:
            with open(Path(self.path) / SHARDED_INDEX, "rb") as f:
                metadata = _IndexUnpickler(f).load()
        except OSError as e:
            raise TrainingError(f"cannot read {Path(self.path) / SHARDED_INDEX}: {e.strerror}") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
            raise TrainingError(f"{Path(self.path) / SHARDED_INDEX} is not a checkpoint index ({e})") from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        return metadata


class _WeightsOnlyPlanner(DefaultLoadPlanner):
    """DCP's load planner, but a stored value that is not a tensor (AdamW's settings) is read as
    weights only: containers and numbers, never code."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        checked = io.BytesIO()
        torch.save(torch.load(value, weights_only=True), checked)
        checked.seek(0)
        super().load_bytes(read_item, checked)
