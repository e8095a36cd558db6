"""Shared fixtures: small real data for each modality, prepared once per session, and a tiny
configuration of each modality's tiny preset that runs its real code paths in seconds."""

import importlib
import os
from pathlib import Path

import numpy as np
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
    """Manifests (path, samples, label) of 24 real English prompts of at most 3 s: "ctc" with their
    transcripts (A-Z, apostrophe, space), "classes" with two classes (alternating)."""
    from data2vec2.modalities.audio.corpus import _asterisk_transcripts, letters
    from data2vec2.modalities.audio.data import num_samples_16k

    texts = _asterisk_transcripts("en")
    rows = []
    for f in sorted(ALLISON.glob("*.wav")) if ALLISON.is_dir() else []:
        text, n = letters(texts.get(f.stem, "")), num_samples_16k(f)
        if text and not texts[f.stem].startswith("[") and n <= 48000:
            rows.append((str(f), n, text))
        if len(rows) == 24:
            break
    if len(rows) < 24:
        pytest.skip("asterisk-core-sounds-en-wav is not installed (scripts/install.sh installs it)")
    folder = tmp_path_factory.mktemp("labelled")
    (folder / "ctc.tsv").write_text("".join(f"{p}\t{n}\t{t}\n" for p, n, t in rows))
    (folder / "classes.tsv").write_text("".join(f"{p}\t{n}\t{'AB'[i % 2]}\n" for i, (p, n, _) in enumerate(rows)))
    return {"ctc": folder / "ctc.tsv", "classes": folder / "classes.tsv"}


@pytest.fixture(scope="session")
def glue_tsv(real_text, tmp_path_factory) -> Path:
    """A GLUE-format sentence task from real text: up to 80 quotes of the fortunes, labelled by the
    file (of two) they come from, shuffled."""
    folder = tmp_path_factory.mktemp("glue")
    rows = []
    for label, path in enumerate(sorted(real_text.glob("*.txt"))):
        quotes = [" ".join(q.split())[:200] for q in path.read_text().split("\n\n") if q.strip()]
        rows += [(q.replace("\t", " "), label) for q in quotes[:40]]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{q}\t{y}\n" for q, y in rows))
    return folder / "train.tsv"


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
