"""The allow-list unpickler: tensors and plain values load; no other code in a file ever runs."""

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from data2vec2.errors import DataError
from data2vec2.safe_load import Opaque, load_untrusted, opaque_paths


class Hostile:
    """Unpickling this (with plain pickle) would run a shell command."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return os.system, (f"touch {self.flag}",)


class Exec:
    def __reduce__(self):
        return exec, ("import pathlib; pathlib.Path('EXEC_RAN').write_text('x')",)


def test_tensors_containers_and_numpy_load(tmp_path):
    value = {"w": torch.arange(6.0).reshape(2, 3), "p": torch.nn.Parameter(torch.ones(2)), "half": torch.ones(2).half(),
             "od": OrderedDict(a=1), "t": (1, 2.5, "x", None, True), "s": {3}, "b": b"\x00\xff",
             "np": np.arange(3), "f": np.float32(1.5), "dtype": torch.bfloat16, "size": torch.Size([2, 3])}
    torch.save(value, tmp_path / "ok.pt")
    loaded = load_untrusted(tmp_path / "ok.pt")
    assert torch.equal(loaded["w"], value["w"]) and torch.equal(loaded["p"], value["p"])
    assert loaded["half"].dtype == torch.float16 and loaded["od"] == {"a": 1} and loaded["t"] == value["t"]
    assert loaded["s"] == {3} and loaded["b"] == b"\x00\xff" and loaded["dtype"] is torch.bfloat16
    assert np.array_equal(loaded["np"], np.arange(3)) and loaded["f"] == np.float32(1.5)
    assert loaded["size"] == torch.Size([2, 3])
    assert list(opaque_paths(loaded)) == []


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_hostile_reduce_runs_nothing(tmp_path, protocol, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flag = tmp_path / "pwned"
    torch.save({"model": {"w": torch.ones(1)}, "extra": [Hostile(flag), Exec()]}, tmp_path / "bad.pt",
               pickle_protocol=protocol)
    loaded = load_untrusted(tmp_path / "bad.pt")
    assert not flag.exists() and not (tmp_path / "EXEC_RAN").exists()
    placeholders = dict(opaque_paths(loaded))
    assert placeholders["extra[0]"] in ("posix.system", "os.system", "nt.system")
    assert placeholders["extra[1]"] == "builtins.exec"
    assert isinstance(loaded["extra"][0], Opaque) and torch.equal(loaded["model"]["w"], torch.ones(1))


def test_a_foreign_class_becomes_an_inert_placeholder(tmp_path):
    torch.save({"ns": __import__("argparse").Namespace(lr=0.1)}, tmp_path / "ns.pt")
    loaded = load_untrusted(tmp_path / "ns.pt")
    assert list(opaque_paths(loaded)) == [("ns", "argparse.Namespace")]
    assert "not loaded: argparse.Namespace" in repr(loaded["ns"])


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_untrusted(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match="cannot read .*junk.pt"):
        load_untrusted(tmp_path / "junk.pt")
