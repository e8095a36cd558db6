"""`data2vec2 prepare audio`: the offline speech corpus, built into <cache>/audio from the Debian
packages that scripts/install.sh installs.

    real      : the asterisk prompts of 6 voices (en, es, fr, it x2, ru; 8 kHz telephone prompts,
                CC-BY-SA-3.0 / CC-BY-3.0) and the klettres letter and syllable clips (20 languages,
                GPL-2+), resampled to 16 kHz
    sentences : King James Bible verses (public domain) voiced by espeak-ng (7 English accents x
                voice variants, random speed and pitch) and flite (4 voices, random speed and pitch)
    words     : 20 keywords (10 commands + 10 digits) voiced by many synthetic voices

Evaluation splits hold out whole voices: the synthetic voices in HELD_OUT_* never appear in
pre-training or fine-tuning data, and a quarter of the real English prompts (chosen by a hash of
their name) are only used to score CTC.

Outputs (all under <cache>/audio, paths in the TSVs relative to that folder):
    pretrain.tsv     root line, then  path <TAB> samples            (unlabelled, no test material)
    ctc_train.tsv    path <TAB> samples <TAB> transcript          (synthetic train voices + 3/4 real en)
    ctc_test.tsv     the held-out real English prompts
    ctc_test_synth.tsv  sentences by the held-out synthetic voices
    kws_train.tsv / kws_test.tsv  path <TAB> samples <TAB> word (test = held-out voices)
    corpus.json      what was built: counts, hours, voices, licences
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataError

SR = 16_000
ASTERISK = Path("/usr/share/asterisk/sounds")
ASTERISK_VOICES = {"en_US_f_Allison": "en", "es_MX_f_Allison": "es", "fr_CA_f_June": "fr",
                   "it_IT_m_Carlo": "it", "it_IT_f_Menardi": "it", "ru_RU_f_IvrvoiceRU": "ru"}
ASTERISK_DOC = Path("/usr/share/doc")
KLETTRES = Path("/usr/share/klettres")

ESPEAK_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029"]
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2"]
FLITE_VOICES = ["kal16", "awb", "rms", "slt"]
# whole voices kept out of training for evaluation (KWS and the synthetic CTC test)
HELD_OUT_ACCENTS = {"en-gb-scotland", "en-029"}
HELD_OUT_FLITE = {"slt"}
KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
            "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LICENCES = {
    "asterisk-core-sounds-*": "CC-BY-SA-3.0 (en, es, fr, it, ru core sounds) / CC-BY-3.0",
    "asterisk-prompt-it-menardi-wav": "CC-BY-SA-3.0",
    "klettres-data": "GPL-2+ (mixed)",
    "bible-kjv-text": "public domain (sentences for synthesis)",
    "espeak-ng / flite output": "synthetic speech generated locally",
}


@dataclass
class Item:
    path: str  # relative to <cache>/audio
    samples: int
    source: str
    voice: str
    split: str  # pretrain | ctc_train | ctc_test | ctc_test_synth | kws_train | kws_test
    text: str = ""


def _require(cmd: str) -> None:
    if shutil.which(cmd) is None:
        raise DataError(f"'{cmd}' is not installed: run scripts/install.sh (apt-get install espeak-ng flite)")


def letters(text: str) -> str:
    """Transcript normalisation for the letter vocabulary: upper case, A-Z, apostrophe, spaces."""
    text = re.sub(r"[^A-Z' ]+", " ", text.upper().replace("-", " "))
    return re.sub(r"\s+", " ", text).strip()


def _stable_fraction(name: str) -> float:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _write16k(wave: np.ndarray, rate: int, out: Path) -> int:
    import soundfile as sf
    import soxr

    wave = wave.astype(np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if rate != SR:
        wave = soxr.resample(wave, rate, SR, quality="HQ")
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), np.clip(wave, -1, 1), SR, subtype="PCM_16")
    return len(wave)


def _convert(job: tuple[str, str]) -> int:
    import soundfile as sf

    src, dst = job
    try:
        wave, rate = sf.read(src, dtype="float32")
    except Exception:
        return -1
    return _write16k(wave, rate, Path(dst))


def _synthesize(job: tuple[str, str, dict, str]) -> int:
    """One utterance: engine, text, options, destination -> samples written (-1 on failure)."""
    import soundfile as sf

    engine, text, opt, dst = job
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "x.wav")
        if engine == "espeak-ng":
            cmd = ["espeak-ng", "-v", opt["voice"], "-s", str(opt["speed"]), "-p", str(opt["pitch"]), "-w", wav, text]
        else:
            cmd = ["flite", "-voice", opt["voice"], "--setf", f"duration_stretch={opt['stretch']:.2f}",
                   "--setf", f"int_f0_target_mean={opt['f0']}", "-t", text, "-o", wav]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)
            wave, rate = sf.read(wav, dtype="float32")
        except Exception:
            return -1
    if len(wave) < rate // 10:
        return -1
    return _write16k(wave, rate, Path(dst))


def _asterisk_transcripts(lang: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in ASTERISK_DOC.glob(f"asterisk-core-sounds-{lang}*/core-sounds-{lang}.txt.gz"):
        for line in gzip.open(f, "rt", errors="replace"):
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";"):
                out[name.strip()] = text.strip()
    return out


def kjv_sentences(limit: int, seed: int) -> list[str]:
    """Verses of 5-30 words from the King James Bible (bible-kjv), shuffled."""
    _require("bible")
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    verses = []
    for line in out.splitlines():
        text = line.split(" ", 1)[1] if " " in line else ""
        words = letters(text).split()
        if 5 <= len(words) <= 30:
            verses.append(text.strip())
    random.Random(seed).shuffle(verses)
    return verses[:limit]


def _pool_map(fn, jobs: list, workers: int, desc: str, progress: bool) -> list[int]:
    from tqdm import tqdm

    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(fn, jobs, chunksize=8), total=len(jobs), desc=desc, disable=not progress,
                         dynamic_ncols=True))


def _speaker_options(rng: random.Random, held_out: bool) -> tuple[str, dict]:
    """A random synthetic speaker: (engine, options); `held_out` draws from the evaluation voices."""
    accents = [a for a in ESPEAK_ACCENTS if (a in HELD_OUT_ACCENTS) == held_out]
    flite = [v for v in FLITE_VOICES if (v in HELD_OUT_FLITE) == held_out]
    if rng.random() < 0.7 or not flite:
        voice = f"{rng.choice(accents)}+{rng.choice(ESPEAK_VARIANTS)}"
        return "espeak-ng", {"voice": voice, "speed": rng.randint(120, 200), "pitch": rng.randint(20, 80)}
    return "flite", {"voice": rng.choice(flite), "stretch": rng.uniform(0.85, 1.25), "f0": rng.randint(90, 190)}


def _voice_name(engine: str, opt: dict) -> str:
    return f"{engine}:{opt['voice']}"


def prepare_audio(cache_dir: str | Path, *, hours: float = 1.0, kws_per_word: int = 40, workers: int | None = None,
                   seed: int = 0, real: bool = True, progress: bool = True) -> Path:
    """Build the corpus into <cache_dir>/audio (see the module docstring). `hours`: synthetic
    sentence audio to generate (about 4 s each); `kws_per_word`: train-voice clips per keyword
    (the held-out voices get a quarter as many)."""
    _require("espeak-ng")
    _require("flite")
    root = Path(cache_dir) / "audio"
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or max(1, os.cpu_count() or 1)
    rng = random.Random(seed)
    items: list[Item] = []

    # 1. real recordings -> 16 kHz
    if real:
        jobs, meta = [], []
        for voice, lang in ASTERISK_VOICES.items():
            folder = ASTERISK / voice
            if not folder.is_dir():
                continue
            texts = _asterisk_transcripts(lang) if lang == "en" else {}
            for f in sorted(folder.rglob("*.wav")):
                name = f.relative_to(folder).with_suffix("").as_posix()
                if name.startswith("silence/") or "tone" in name or name.startswith("beep"):
                    continue
                text = texts.get(name, "")
                if text.startswith("["):  # "[this is a simple beep tone]" and the like
                    continue
                rel = f"real/asterisk/{voice}/{name}.wav"
                jobs.append((str(f), str(root / rel)))
                split = "pretrain"
                clean = letters(text)
                if lang == "en" and clean and not re.search(r"[0-9*#]", text):
                    split = "ctc_test" if _stable_fraction(name) < 0.25 else "ctc_train"
                meta.append(Item(rel, 0, "asterisk", voice, split, clean))
        for f in sorted(KLETTRES.rglob("*.ogg")) if KLETTRES.is_dir() else []:
            rel = "real/klettres/" + f.relative_to(KLETTRES).with_suffix(".wav").as_posix()
            jobs.append((str(f), str(root / rel)))
            meta.append(Item(rel, 0, "klettres", "klettres:" + f.relative_to(KLETTRES).parts[0], "pretrain"))
        if not jobs:
            print("[prepare] warning: no real recordings found (install the asterisk-core-sounds-* and klettres-data "
                  "packages: scripts/install.sh)")
        sizes = _pool_map(_convert, jobs, workers, "real recordings", progress)
        for item, n in zip(meta, sizes):
            if n > 0:
                item.samples = n
                items.append(item)

    # 2. synthetic sentences: train voices (pre-training + CTC) and held-out voices (CTC test)
    num_sentences = max(1, int(hours * 3600 / 4.0))
    num_test = max(20, num_sentences // 20)
    sentences = kjv_sentences(num_sentences + num_test, seed)
    jobs, meta = [], []
    for i, text in enumerate(sentences):
        held = i >= num_sentences
        engine, opt = _speaker_options(rng, held)
        rel = f"synth/sentences/{'test' if held else 'train'}/{i:06d}.wav"
        jobs.append((engine, text, opt, str(root / rel)))
        meta.append(Item(rel, 0, engine, _voice_name(engine, opt), "ctc_test_synth" if held else "ctc_train",
                         letters(text)))
    sizes = _pool_map(_synthesize, jobs, workers, "synthetic sentences", progress)
    items += [_with(m, n) for m, n in zip(meta, sizes) if n > 0]

    # 3. keywords: train voices vs held-out voices
    jobs, meta = [], []
    for word in KEYWORDS:
        for j in range(kws_per_word + kws_per_word // 4):
            held = j >= kws_per_word
            engine, opt = _speaker_options(rng, held)
            rel = f"synth/words/{'test' if held else 'train'}/{word}_{j:04d}.wav"
            jobs.append((engine, word, opt, str(root / rel)))
            meta.append(Item(rel, 0, engine, _voice_name(engine, opt), "kws_test" if held else "kws_train", word))
    sizes = _pool_map(_synthesize, jobs, workers, "keywords", progress)
    items += [_with(m, n) for m, n in zip(meta, sizes) if n > 0]

    return _write_manifests(root, items, hours)


def _with(item: Item, samples: int) -> Item:
    item.samples = samples
    return item


def _write_manifests(root: Path, items: list[Item], hours: float) -> Path:
    def write(name: str, rows: list[Item], with_text: bool) -> None:
        lines = [str(root.resolve())]
        lines += [f"{r.path}\t{r.samples}" + (f"\t{r.text}" if with_text else "") for r in rows]
        (root / name).write_text("\n".join(lines) + "\n")

    # pre-training: everything except evaluation material (test prompts, held-out voices, keywords)
    pretrain = [r for r in items if r.split in ("pretrain", "ctc_train")]
    write("pretrain.tsv", pretrain, False)
    for split in ("ctc_train", "ctc_test", "ctc_test_synth", "kws_train", "kws_test"):
        write(f"{split}.tsv", [r for r in items if r.split == split], True)

    def summary(rows: list[Item]) -> dict:
        return {"files": len(rows), "hours": round(sum(r.samples for r in rows) / SR / 3600, 3),
                "voices": sorted({r.voice for r in rows})}

    info = {
        "sample_rate": SR, "requested_synthetic_hours": hours,
        "sources": {s: summary([r for r in items if r.source == s]) for s in sorted({r.source for r in items})},
        "splits": {s: summary([r for r in items if r.split == s]) for s in sorted({r.split for r in items})},
        "pretrain": summary(pretrain),
        "held_out_voices": sorted(HELD_OUT_ACCENTS | {f"flite:{v}" for v in HELD_OUT_FLITE}),
        "licences": LICENCES,
    }
    for part in ("sources", "splits"):
        for v in info[part].values():
            if len(v["voices"]) > 12:
                v["voices"] = f"{len(v['voices'])} voices"
    info["pretrain"]["voices"] = len(info["pretrain"]["voices"])
    (root / "corpus.json").write_text(json.dumps(info, indent=2))
    return root
