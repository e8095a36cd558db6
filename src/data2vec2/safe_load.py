"""Read a pickled PyTorch file from elsewhere (a fairseq checkpoint) without running its code.

`torch.load` rebuilds objects by calling whatever classes and functions the file names. Here only
an allow-list is ever called: containers, numbers, strings, tensors and their storages, numpy
arrays and scalars. Any other name (a fairseq meter, an `argparse.Namespace`, `os.system` in a
hostile file) becomes an inert `Opaque` placeholder that records what it was called with and never
calls anything. A reader then refuses a placeholder in the parts it uses (`opaque_paths`) and
ignores the rest (optimizer history, metrics).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import DataError

# (module, name) that may be called while unpickling. Python 2 names are mapped first.
ALLOWED = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"), ("builtins", "complex"),
    ("builtins", "str"), ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "bool"),
    ("builtins", "slice"), ("builtins", "range"),
    ("_codecs", "encode"),  # how pickle protocol 2 writes bytes (numpy scalars' data)
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"), ("torch", "device"), ("torch.serialization", "_get_layout"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
}
PYTHON2 = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class Opaque:
    """A stand-in for an object of a class outside the allow-list: it keeps the class's dotted
    name and whatever the file passed to it, and does nothing with them."""

    reference = "?"

    def __new__(cls, *args, **kwargs):  # pickle may create it with __new__ only (NEWOBJ)
        self = super().__new__(cls)
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def append(self, item):  # list-like classes are rebuilt with APPEND(S)
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, value):  # dict-like classes with SETITEM(S)
        self.items.append((key, value))

    def __repr__(self) -> str:
        return f"<not loaded: {self.reference}>"


def _placeholder(module: str, name: str) -> type:
    return type("Opaque", (Opaque,), {"reference": f"{module}.{name}"})


def _allowed_dtype(module: str, name: str) -> bool:
    """torch dtypes (torch.float32 ...) are pickled as module attributes; so are numpy 2's dtype classes."""
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return True
    return module == "numpy.dtypes" and name.endswith("DType")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = PYTHON2.get(module, module)
        if (module, name) in ALLOWED or _allowed_dtype(module, name):
            return super().find_class(module, name)
        if module == "torch" and name.endswith("Storage"):  # legacy storages, handled by torch.load
            return super().find_class(module, name)
        return _placeholder(module, name)


class _PickleModule:
    """What `torch.load(pickle_module=...)` needs: an Unpickler class and `load`."""

    __name__ = "data2vec2.safe_load"
    Unpickler = _Unpickler

    @staticmethod
    def load(file, **kwargs):
        return _Unpickler(file, **kwargs).load()


def load_untrusted(path: str | Path) -> Any:
    """The object in a `torch.save` file, built only from allow-listed classes (see above)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        # weights_only=True would refuse fairseq's side entries outright; here the unpickler is ours,
        # and its find_class returns only allow-listed callables, so nothing else can be called
        return torch.load(path, map_location="cpu", pickle_module=_PickleModule, weights_only=False)
    except Exception as e:  # a truncated zip, a bad pickle opcode, ...: the reason in one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"cannot read {path} as a PyTorch checkpoint (truncated or not a checkpoint?): "
                        f"{first}") from None


def opaque_paths(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, class name) of every placeholder inside `value`, e.g. ("model.encoder", "foo.Bar")."""
    if isinstance(value, Opaque):
        yield path or "(top)", value.reference
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from opaque_paths(key, f"{path}.<key>" if path else "<key>")
            yield from opaque_paths(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple, set, frozenset)):
        for i, item in enumerate(value):
            yield from opaque_paths(item, f"{path}[{i}]")
