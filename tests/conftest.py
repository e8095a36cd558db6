"""Shared fixtures: small real data for each modality, prepared once per session, and a tiny
configuration of each modality's tiny preset that runs its real code paths in seconds."""

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
ALLISON = Path("/usr/share/asterisk/sounds/en_US_f_Allison")  # real English prompts (asterisk-core-sounds-en-wav)
FORTUNES = Path("/usr/share/games/fortunes")

# A very small image-tiny for fast tests: same code paths, tiny sizes.
SMALL = [
    "model.embed_dim=32", "model.num_heads=2", "model.depth=2", "model.prenet_depth=1", "targets.top_k=2",
    "decoder.dim=32", "decoder.groups=4", "decoder.layers=2", "masking.num_masks=2", "train.batch_size=16",
    "data.limit=256", "data.num_workers=0", "train.log_every=1", "train.precision=fp32", "optim.warmup_steps=2",
]
# The same for audio-tiny and text-tiny. Their dropouts are on: audio-tiny's as in its preset, text-tiny's
# at the reference's 0.1 (the preset pre-trains without dropout), so that the tests cover the dropout paths.
SMALL_AUDIO = ["model.embed_dim=32", "model.num_heads=4", "model.depth=2", "targets.top_k=2",
               "model.audio.conv_layers=[[16,10,5],[16,3,2],[16,3,2],[16,3,2],[16,3,2],[16,2,2],[16,2,2]]",
               "model.audio.conv_pos_groups=4", "model.audio.conv_pos_depth=2", "decoder.dim=16", "decoder.groups=4",
               "decoder.layers=2", "masking.num_masks=2", "train.precision=fp32", "data.num_workers=0",
               "train.log_every=1", "optim.warmup_steps=2", "train.batch_size=4", "data.max_samples=16000",
               "guards.after_steps=100000"]
SMALL_TEXT = ["model.embed_dim=32", "model.num_heads=2", "model.depth=2", "targets.top_k=2",
              "model.text.vocab_size=512", "model.text.max_positions=32", "decoder.dim=32", "decoder.layers=2", "masking.num_masks=2",
              "train.batch_size=8", "data.num_workers=0", "train.log_every=1", "optim.warmup_steps=2",
              "train.precision=fp32", "guards.after_steps=100000", "model.dropout=0.1", "model.attention_dropout=0.1",
              "model.post_mlp_dropout=0.1", "model.text.embed_dropout=0.1"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST prepared once into a temporary cache (skips if the Debian package is absent)."""
    if not FASHION.exists():
        pytest.skip("dataset-fashion-mnist is not installed (scripts/install.sh installs it)")
    from data2vec2.modalities.image.fashion_mnist import prepare_fashion_mnist

    cache = tmp_path_factory.mktemp("cache")
    prepare_fashion_mnist(cache, progress=False)
    return cache


@pytest.fixture
def small_overrides(cache_dir) -> list[str]:
    return SMALL + [f"data.cache_dir={cache_dir}"]


@pytest.fixture(scope="session")
def audio_manifest(tmp_path_factory) -> Path:
    """A manifest of 24 real English prompts (skips if the Debian package is absent)."""
    files = sorted(ALLISON.glob("*.wav"))[:24] if ALLISON.is_dir() else []
    if len(files) < 24:
        pytest.skip("asterisk-core-sounds-en-wav is not installed (scripts/install.sh installs it)")
    manifest = tmp_path_factory.mktemp("audio") / "real.tsv"
    manifest.write_text("\n".join(str(f) for f in files) + "\n")
    return manifest


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
def real_text(tmp_path_factory) -> Path:
    """About 24 KB of real English (the Debian fortunes package) in two files."""
    sources = [FORTUNES / n for n in ("computers", "science", "people", "literature")]
    sources = [p for p in sources if p.exists()]
    if len(sources) < 2:
        pytest.skip("the Debian fortunes package is not installed (scripts/install.sh installs it)")
    folder = tmp_path_factory.mktemp("text")
    for p in sources[:2]:
        quotes = [q.strip() for q in p.read_text(errors="replace")[:12000].split("\n%\n") if q.strip()]
        (folder / f"{p.name}.txt").write_text("\n\n".join(quotes[:-1]) + "\n")
    return folder


@pytest.fixture(scope="session")
def tokenizer_file(real_text, tmp_path_factory) -> Path:
    from data2vec2.modalities.text.data import DocumentReport, iter_documents, train_tokenizer

    files = sorted(real_text.glob("*.txt"))
    return train_tokenizer(iter_documents(files, "paragraph", "stop", DocumentReport()), 512,
                           tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(params=["image", "audio", "text"])
def tiny(request, tmp_path_factory) -> tuple[str, list[str]]:
    """(preset, overrides) of a tiny version of each modality's tiny preset, on real data."""
    if request.param == "image":
        cache = request.getfixturevalue("cache_dir")
        return "image-tiny", SMALL + [f"data.cache_dir={cache}"]
    if request.param == "audio":
        manifest = request.getfixturevalue("audio_manifest")
        return "audio-tiny", SMALL_AUDIO + [f"data.train={manifest}"]
    text, tokenizer = request.getfixturevalue("real_text"), request.getfixturevalue("tokenizer_file")
    cache = tmp_path_factory.mktemp("text-cache")
    return "text-tiny", SMALL_TEXT + [f"data.train={text}", f"data.tokenizer={tokenizer}", f"data.cache_dir={cache}"]
