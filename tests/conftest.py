"""Shared fixtures: small real data for each modality, prepared once per session, and a tiny
configuration of each modality's tiny preset that runs its real code paths in seconds."""

import importlib
import os
from pathlib import Path

import pytest

from data2vec2.modalities import MODALITIES

os.environ.setdefault("OMP_NUM_THREADS", "2")

def settings_of(modality: str):
    """A modality's small test settings: modalities/<name>/testing.py (docs/ARCHITECTURE.md lists them)."""
    return importlib.import_module(f"data2vec2.modalities.{modality}.testing")


def value_of(overrides: list[str], key: str) -> str:
    """The value that `key=value` sets in `overrides`."""
    return dict(o.split("=", 1) for o in overrides)[key]


# The small versions of image-tiny, audio-tiny and text-tiny, for the tests of one modality
SMALL = settings_of("image").SMALL
SMALL_AUDIO = settings_of("audio").SMALL
SMALL_TEXT = settings_of("text").SMALL
ALLISON = settings_of("audio").ALLISON


@pytest.fixture(scope="session")
def cache_dir(small_data) -> Path:
    """Fashion-MNIST prepared once into a temporary cache (skips if the Debian package is absent)."""
    return Path(value_of(small_data("image"), "data.cache_dir"))


@pytest.fixture
def small_overrides(cache_dir) -> list[str]:
    return SMALL + [f"data.cache_dir={cache_dir}"]


@pytest.fixture(scope="session")
def audio_manifest(small_data) -> Path:
    """A manifest of 24 real English prompts (skips if the Debian package is absent)."""
    return Path(value_of(small_data("audio"), "data.train"))


@pytest.fixture(scope="session")
def labelled_audio(tmp_path_factory) -> dict[str, Path]:
    """Manifests of 24 real English prompts: "ctc" with their transcripts, "classes" with two classes
    (modalities/audio/testing.py)."""
    manifests = settings_of("audio").labelled_data(tmp_path_factory.mktemp("labelled"))
    if manifests is None:
        pytest.skip("asterisk-core-sounds-en-wav is not installed (scripts/install.sh installs it)")
    return manifests


@pytest.fixture(scope="session")
def glue_tsv(real_text, tmp_path_factory) -> Path:
    """A GLUE-format sentence task from real text (modalities/text/testing.py)."""
    return settings_of("text").glue_task(real_text, tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="session")
def real_text(small_data) -> Path:
    """About 24 KB of real English (the Debian fortunes package) in two files."""
    return Path(value_of(small_data("text"), "data.train"))


@pytest.fixture(scope="session")
def tokenizer_file(small_data) -> Path:
    """A 512-token BPE of real_text."""
    return Path(value_of(small_data("text"), "data.tokenizer"))


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """small_data(name): the data overrides of the modality's testing.py, prepared once a session
    (skips the test when its Debian package is not installed)."""
    prepared: dict[str, list[str] | None] = {}

    def get(name: str) -> list[str]:
        if name not in prepared:
            prepared[name] = settings_of(name).small_data(tmp_path_factory.mktemp(f"{name}-data"))
        if prepared[name] is None:
            pytest.skip(f"the data of {name}'s tests is not installed (scripts/install.sh installs it)")
        return prepared[name]
    return get


@pytest.fixture(params=list(MODALITIES))
def tiny(request, small_data) -> tuple[str, list[str]]:
    """(preset, overrides) of a small version of each modality's tiny preset, on real data (the
    modality folder's testing.py)."""
    return f"{request.param}-tiny", settings_of(request.param).SMALL + small_data(request.param)
