#!/usr/bin/env bash
# Installs everything data2vec2 needs on a fresh machine of this project's kind (Debian, CPU,
# Python 3.11): the Debian packages that hold the data, the pinned CPU build of PyTorch, and the
# package itself in editable mode with its test extra. Safe to run again: the system steps are skipped when done.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages that hold the data (docs/*.md): Fashion-MNIST (images); real recordings
# (asterisk prompts in 6 voices, klettres clips) and the espeak-ng and flite synthesizers (speech);
# documentation, a dictionary, the KJV Bible and fortunes (text, and sentences for the synthesizers).
# python3.11-doc is not installed (that would upgrade the system Python): `data2vec2 prepare text`
# extracts it into the cache.
PKGS="dataset-fashion-mnist"
PKGS="$PKGS espeak-ng flite klettres-data asterisk-prompt-it-menardi-wav"
for lang in en es fr it ru; do PKGS="$PKGS asterisk-core-sounds-$lang asterisk-core-sounds-$lang-wav"; done
PKGS="$PKGS linux-doc-6.1 dict-gcide bible-kjv bible-kjv-text fortunes fortunes-min"
missing=""
for pkg in $PKGS; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[install] apt-get install$missing"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        echo "[install] warning: data packages missing:$missing (run apt-get install as root)" >&2
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
