"""Decoding CTC output with a word n-gram language model, and a small n-gram model to decode with.

    data2vec2 ngram cache/audio/ctc_train.tsv --order 3 --out lm.arpa     # an ARPA model of the transcripts
    data2vec2 predict exports/ctc clips/ --lm lm.arpa --beam 50           # beam search with it

The search is flashlight-text's lexicon decoder (the reference's `decoding.type=kenlm`: fairseq
examples/speech_recognition/new/decoders/flashlight_decoder.py, with its defaults beam 50, beam
threshold 50, LM weight 2, word score -1, unknown words never proposed), through KenLM, which reads
ARPA and binary files. Every hypothesis is a sequence of lexicon words, each spelled by the model's
letters, the space between words being the decoder's silence token; the score of a hypothesis is
the sum of the frames' CTC log-probabilities + lm_weight * its LM log-probability + word_score
per word. The lexicon is a word list (`--lexicon`, one word per line, or flashlight's format: the word
then its spelling), or by default the words of the ARPA file's unigrams.

The n-gram model written by `write_arpa` is interpolated Kneser-Ney (Chen and Goodman 1998) with
one discount per order, D = n1 / (n1 + 2 n2) from the counts of counts, stored as ARPA back-off
weights; it stands in for KenLM's `lmplz`, which the kenlm package does not install.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from torch import Tensor

from ...errors import DataError
from .data import read_manifest

BEGIN, END, UNKNOWN = "<s>", "</s>", "<unk>"


def read_sentences(paths: Iterable[str | Path]) -> list[str]:
    """Sentences from TSV manifests (the transcript column: path, samples, transcript) or text files
    (one sentence per line), whitespace closed up."""
    paths, out = [Path(p) for p in paths], []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such manifest or text file")
        if path.suffix == ".tsv":
            lines = read_manifest(path)[2]
            if lines is None:
                raise DataError(f"{path}: a manifest without transcripts (path<TAB>samples<TAB>transcript)")
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
        out += [" ".join(line.split()) for line in lines if line.strip()]
    if not out:
        raise DataError(f"no sentences in {', '.join(map(str, paths))}")
    return out


def write_arpa(sentences: list[str], order: int, out: Path) -> dict:
    """An interpolated Kneser-Ney n-gram model of `sentences` (words split on spaces) as an ARPA
    file. Returns the number of n-grams of each order and the discounts."""
    if order < 1:
        raise DataError(f"--order {order}: must be >= 1")
    counts: list[Counter] = [Counter() for _ in range(order + 1)]  # counts[n][(w1..wn)]: the raw counts
    for sentence in sentences:
        words = [BEGIN] + sentence.split() + [END]
        for n in range(1, order + 1):
            for i in range(len(words) - n + 1):
                counts[n][tuple(words[i:i + n])] += 1
    counts[1].pop((BEGIN,), None)
    # The adjusted counts of Kneser-Ney: the raw count for the highest order and for n-grams that start
    # a sentence; otherwise the number of different words seen before the n-gram.
    adjusted: list[Counter] = [Counter() for _ in range(order + 1)]
    adjusted[order] = Counter(counts[order])
    for n in range(order, 1, -1):
        for gram in counts[n]:
            adjusted[n - 1][gram[1:]] += 1  # one more word before gram[1:]
    for n in range(1, order):
        for gram, c in counts[n].items():
            if gram[0] == BEGIN:
                adjusted[n][gram] = c
    discounts = [0.0] * (order + 1)
    for n in range(1, order + 1):
        of = Counter(adjusted[n].values())
        discounts[n] = of[1] / (of[1] + 2 * of[2]) if of[1] and of[2] else 0.5
    vocab = sorted({g[0] for g in adjusted[1]} | {UNKNOWN})  # the words predicted: with </s>, without <s>
    prob: list[dict] = [{} for _ in range(order + 1)]
    backoff: list[dict] = [{} for _ in range(order + 1)]
    for n in range(1, order + 1):
        totals, types = defaultdict(float), Counter()
        for gram, c in adjusted[n].items():
            totals[gram[:-1]] += c
            types[gram[:-1]] += 1
        gamma = {h: discounts[n] * types[h] / totals[h] for h in totals}  # the mass left to the lower order
        for h, g in gamma.items():
            backoff[n - 1][h] = g
        grams = list(adjusted[n].items()) + ([((UNKNOWN,), 0)] if n == 1 else [])
        for gram, c in grams:
            lower = 1.0 / len(vocab) if n == 1 else prob[n - 1][gram[1:]]
            prob[n][gram] = max(c - discounts[n], 0.0) / totals[gram[:-1]] + gamma[gram[:-1]] * lower
    prob[1][(BEGIN,)] = None  # (listed, never predicted: ARPA's -99)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\\data\\\n" + "".join(f"ngram {n}={len(prob[n])}\n" for n in range(1, order + 1)) + "\n")
        for n in range(1, order + 1):
            f.write(f"\\{n}-grams:\n")
            for gram in sorted(prob[n]):
                p = prob[n][gram]
                line = f"{-99.0 if p is None else math.log10(p):.6f}\t{' '.join(gram)}"
                if n < order and gram in backoff[n]:
                    line += f"\t{math.log10(backoff[n][gram]):.6f}"
                f.write(line + "\n")
            f.write("\n")
        f.write("\\end\\\n")
    tmp.replace(out)
    return {"order": order, "sentences": len(sentences), "ngrams": [len(prob[n]) for n in range(1, order + 1)],
            "discounts": [round(d, 4) for d in discounts[1:]]}


def arpa_words(path: Path) -> list[str]:
    """The words of an ARPA file's unigrams (<s>, </s> and <unk> aside)."""
    words, inside = [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if inside:
                    break
                inside = line == "\\1-grams:"
                continue
            if inside and line:
                fields = line.split("\t") if "\t" in line else line.split()
                if len(fields) >= 2 and fields[1] not in (BEGIN, END, UNKNOWN):
                    words.append(fields[1])
    return words


def is_arpa(path: Path) -> bool:
    """Whether a language model file is ARPA text (it opens with \\data\\), not a KenLM binary."""
    with open(path, "rb") as f:
        return f.read(64).lstrip().startswith(b"\\data\\")


def lexicon_words(path: Path) -> list[str]:
    """A lexicon's words: the first field of each line (a word list, or flashlight's lexicon: the
    word, then its spelling)."""
    if not path.is_file():
        raise DataError(f"--lexicon {path}: no such file")
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@contextlib.contextmanager
def quiet_stderr():
    """The process's standard error (file descriptor 2: C++ libraries write there) sent to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class BeamSearch:
    """(T, letters) log-probabilities of one clip -> its transcript: flashlight-text's lexicon beam
    search with a KenLM word model. letters[0] is the CTC blank, " " the space between words."""

    def __init__(self, letters: list[str], lm: str | Path, lexicon: str | Path | None = None, beam: int = 50,
                 lm_weight: float = 2.0, word_score: float = -1.0, beam_threshold: float = 50.0):
        try:
            from flashlight.lib.text.decoder import (CriterionType, LexiconDecoder, LexiconDecoderOptions,
                                                     SmearingMode, Trie)
            from flashlight.lib.text.decoder.kenlm import KenLM
            from flashlight.lib.text.dictionary import Dictionary
        except ImportError:
            raise DataError("--lm needs flashlight-text (the CTC beam search with KenLM): "
                            "pip install 'data2vec2[lm]' (or pip install flashlight-text)") from None
        lm = Path(lm)
        if not lm.is_file():
            raise DataError(f"--lm {lm}: no such language model file (ARPA or KenLM binary)")
        if " " not in letters:
            raise DataError("the model's letters have no space: a word language model needs the space between words")
        if beam < 1:
            raise DataError(f"--beam {beam}: must be >= 1")
        if lexicon is not None:
            words = lexicon_words(Path(lexicon))
        elif is_arpa(lm):
            words = arpa_words(lm)
        else:
            raise DataError(f"--lm {lm}: a binary KenLM file; give --lexicon (its words, one per line)")
        known = set(letters[1:]) - {" "}
        spelled = sorted({w for w in words if set(w) <= known})
        if not spelled:
            raise DataError(f"no word of the lexicon ({len(words)} words) is spelled with the model's letters "
                            f"{''.join(letters[1:])!r} (letter case matters)")
        self.letters, self.space = letters, letters.index(" ")
        self.words = Dictionary()
        for w in [UNKNOWN] + spelled:
            self.words.add_entry(w)
        try:
            with quiet_stderr():  # (KenLM draws a progress bar of stars while it reads an ARPA file)
                self.lm = KenLM(str(lm), self.words)
        except Exception as e:  # KenLM reports a bad file as a RuntimeError with its parser's message
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"--lm {lm}: KenLM cannot read it ({reason})") from None
        index = {c: i for i, c in enumerate(letters)}
        self.trie = Trie(len(letters), self.space)
        start = self.lm.start(False)
        for w in spelled:
            i = self.words.get_index(w)
            _, score = self.lm.score(start, i)
            self.trie.insert([index[c] for c in w], i, score)  # (the word's letters; the space is the silence)
        self.trie.smear(SmearingMode.MAX)
        options = LexiconDecoderOptions(beam_size=beam, beam_size_token=len(letters), beam_threshold=beam_threshold,
                                        lm_weight=lm_weight, word_score=word_score, unk_score=-math.inf,
                                        sil_score=0.0, log_add=False, criterion_type=CriterionType.CTC)
        self.decoder = LexiconDecoder(options, self.trie, self.lm, self.space, 0, self.words.get_index(UNKNOWN), [],
                                      False)
        self.settings = {"lm": str(lm), "lexicon": str(lexicon) if lexicon else None, "words": len(spelled),
                         "words_left_out": len(set(words)) - len(spelled),
                         "beam": beam, "lm_weight": lm_weight, "word_score": word_score,
                         "beam_threshold": beam_threshold}

    def __call__(self, log_probs: Tensor) -> str:
        emissions = log_probs.detach().float().cpu().contiguous()  # (T, letters)
        T, V = emissions.shape
        best = self.decoder.decode(emissions.data_ptr(), T, V)
        if not best:
            return ""
        return " ".join(self.words.get_entry(i) for i in best[0].words if i >= 0)
