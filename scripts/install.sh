#!/usr/bin/env bash
# Installs everything data2vec2 needs on a fresh machine of this project's kind (Debian, CPU,
# Python 3.11): the Fashion-MNIST Debian package, the pinned CPU build of PyTorch, and the package
# itself in editable mode with its test extra. Safe to run again: the system steps are skipped when done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[install] apt-get install dataset-fashion-mnist"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "[install] warning: Fashion-MNIST is not installed; run 'apt-get install dataset-fashion-mnist' as root" >&2
    fi
fi

# Speech (docs/audio.md): real recordings (asterisk prompts in 6 voices, klettres clips), the
# espeak-ng and flite synthesizers, and the KJV bible for the sentences they read.
SPEECH_PKGS="espeak-ng flite bible-kjv bible-kjv-text klettres-data asterisk-prompt-it-menardi-wav"
for lang in en es fr it ru; do SPEECH_PKGS="$SPEECH_PKGS asterisk-core-sounds-$lang asterisk-core-sounds-$lang-wav"; done
missing=""
for pkg in $SPEECH_PKGS; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[install] apt-get install$missing"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "[install] warning: speech packages missing:$missing (run apt-get install as root)" >&2
    fi
fi

# The text corpus (docs/text.md): Debian documentation, a dictionary, the KJV Bible and fortunes.
# python3.11-doc is not installed (that would upgrade the system Python): `data2vec2 prepare text`
# extracts it with apt-get download + dpkg -x into the cache.
if [ ! -f /usr/share/dictd/gcide.dict.dz ] || [ ! -d /usr/share/doc/linux-doc-6.1 ] || ! command -v bible >/dev/null \
        || [ ! -f /usr/share/games/fortunes/fortunes ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[install] apt-get install linux-doc-6.1 dict-gcide bible-kjv bible-kjv-text fortunes fortunes-min"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-doc-6.1 dict-gcide bible-kjv bible-kjv-text \
            fortunes fortunes-min >/dev/null
    else
        echo "[install] warning: the text corpus packages are missing; run as root: apt-get install linux-doc-6.1 dict-gcide bible-kjv bible-kjv-text fortunes fortunes-min" >&2
    fi
fi

PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[install] pip install torch==2.13.0 (CPU build)"
    "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
fi
# Always (re)install this checkout, so that `data2vec2` and its console script point here and any
# dependency added since the last install is present; torch is already satisfied, so nothing
# pulls another build of it.
echo "[install] pip install -e .[dev]"
"$PY" -m pip install -q --disable-pip-version-check -e ".[dev]"
