"""The word n-gram model (`data2vec2 ngram`) and CTC beam search with it (`predict --lm`)."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.text import word_error_rate

from data2vec2.errors import DataError
from data2vec2.modalities.audio.ctc import BLANK, greedy_text
from data2vec2.modalities.audio.lm import UNKNOWN, BeamSearch, arpa_words, read_sentences, write_arpa

LETTERS = [BLANK] + list(" 'ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    """The transcripts of the real English prompts (asterisk-core-sounds-en), letters only."""
    from data2vec2.modalities.audio.corpus import _asterisk_transcripts, letters

    texts = sorted({letters(t) for t in _asterisk_transcripts("en").values() if not t.startswith("[")} - {""})
    if len(texts) < 300:
        pytest.skip("asterisk-core-sounds-en is not installed (scripts/install.sh installs it)")
    return texts


def arpa_sections(path: Path) -> tuple[dict[int, int], dict[int, list[str]]]:
    text = path.read_text()
    declared = {int(n): int(c) for n, c in re.findall(r"ngram (\d+)=(\d+)", text)}
    listed = {int(n): [ln for ln in body.strip().splitlines()]
              for n, body in re.findall(r"\\(\d+)-grams:\n(.*?)\n\n", text, flags=re.S)}
    return declared, listed


def test_the_ngram_model_is_a_distribution_after_every_context(prompts, tmp_path):
    """write_arpa: the header counts what is listed; through KenLM (flashlight-text), the next-word
    probabilities after a seen, an unseen and an empty context sum to 1."""
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    stats = write_arpa(prompts, 3, tmp_path / "lm.arpa")
    declared, listed = arpa_sections(tmp_path / "lm.arpa")
    assert declared == {n: len(listed[n]) for n in (1, 2, 3)} and stats["ngrams"] == [declared[n] for n in (1, 2, 3)]
    assert all(0 < d < 1 for d in stats["discounts"]) and stats["sentences"] == len(prompts)
    words = arpa_words(tmp_path / "lm.arpa")
    assert set(words) == {w for s in prompts for w in s.split()}
    vocab = Dictionary()
    for w in [UNKNOWN, "</s>"] + words:
        vocab.add_entry(w)
    lm = KenLM(str(tmp_path / "lm.arpa"), vocab)
    for context in ([], ["PLEASE", "ENTER"], ["THE"], ["POUND", "PLEASE"], ["NOT-A-WORD"]):
        state = lm.start(False)
        for w in context:
            state, _ = lm.score(state, vocab.get_index(w) if w in words else 0)
        total = sum(10 ** lm.score(state, vocab.get_index(w))[1] for w in [UNKNOWN] + words)
        assert total + 10 ** lm.finish(state)[1] == pytest.approx(1.0, abs=1e-5), context


def emissions(sentence: str, confuse_every: int, rng: np.random.Generator) -> torch.Tensor:
    """(T, letters) log-probabilities of an acoustic model that hears `sentence` but mistakes every
    `confuse_every`-th letter for another one (more likely than the right one): a frame per letter,
    a blank frame between repeated letters."""
    index = {c: i for i, c in enumerate(LETTERS)}
    frames, k = [], 0
    for n, c in enumerate(sentence):
        if n and c == sentence[n - 1]:
            frames.append(torch.full((len(LETTERS),), 0.01).index_fill_(0, torch.tensor([0]), 0.9))
        p = torch.full((len(LETTERS),), 0.01)
        if c != " " and k % confuse_every == confuse_every - 1:
            wrong = rng.choice([i for i in range(3, len(LETTERS)) if i != index[c]])
            p[wrong], p[index[c]] = 0.5, 0.35
        else:
            p[index[c]] = 0.85
        k += c != " "
        frames.append(p)
    return torch.stack(frames).div(torch.stack(frames).sum(-1, keepdim=True)).log()


def test_beam_search_with_the_model_of_the_training_prompts_corrects_held_out_ones(prompts, tmp_path):
    """An acoustic model that mistakes one letter in four: greedy decoding keeps the mistakes, beam
    search with a 3-gram model of the other prompts puts words back (held-out prompts whose words it
    knows): lower WER, and at the settings of the reference (weight 2, word score -1) too."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(prompts))
    train = [prompts[i] for i in order[: len(prompts) * 4 // 5]]
    known = {w for s in train for w in s.split()}
    held = [prompts[i] for i in order[len(prompts) * 4 // 5:] if set(prompts[i].split()) <= known
            and prompts[i] not in train][:40]
    assert len(held) >= 20
    write_arpa(train, 3, tmp_path / "lm.arpa")
    heard = [emissions(s, 4, rng) for s in held]
    greedy = [greedy_text(e.argmax(-1).tolist(), LETTERS) for e in heard]
    for options in ({}, {"lm_weight": 1.0, "word_score": 0.0, "beam": 20}):
        search = BeamSearch(LETTERS, tmp_path / "lm.arpa", **options)
        beam = [search(e) for e in heard]
        assert float(word_error_rate(beam, held)) < 0.5 * float(word_error_rate(greedy, held)), (beam[:3], held[:3])
        assert sum(b != g for b, g in zip(beam, greedy)) >= len(held) // 2
    assert search.settings["words"] == len(known)


def test_language_model_input_gets_one_line_errors(prompts, tmp_path):
    """A missing or unreadable model, a binary one without a word list, a lexicon of none of the
    model's letters, a model without a space: DataError naming the problem."""
    write_arpa(prompts[:50], 2, tmp_path / "lm.arpa")
    with pytest.raises(DataError, match="no such language model file"):
        BeamSearch(LETTERS, tmp_path / "missing.arpa")
    (tmp_path / "lm.bin").write_bytes(b"mmap lm http://kheafield.com/code" + bytes(64))
    with pytest.raises(DataError, match="a binary KenLM file; give --lexicon"):
        BeamSearch(LETTERS, tmp_path / "lm.bin")
    (tmp_path / "broken.arpa").write_text("\\data\\\nngram 1=5\n\n\\1-grams:\n-1.0\tA\n")
    with pytest.raises(DataError, match="KenLM cannot read it"):
        BeamSearch(LETTERS, tmp_path / "broken.arpa")
    (tmp_path / "lower.txt").write_text("hello\nworld\n")
    with pytest.raises(DataError, match=r"no word of the lexicon .*\(letter case matters\)"):
        BeamSearch(LETTERS, tmp_path / "lm.arpa", lexicon=tmp_path / "lower.txt")
    with pytest.raises(DataError, match="no space"):
        BeamSearch([BLANK] + list("ABC"), tmp_path / "lm.arpa")
    with pytest.raises(DataError, match="--beam 0"):
        BeamSearch(LETTERS, tmp_path / "lm.arpa", beam=0)
    (tmp_path / "words.txt").write_text("PLEASE P L E A S E |\nENTER\n")  # flashlight's format, or a word a line
    assert BeamSearch(LETTERS, tmp_path / "lm.arpa", lexicon=tmp_path / "words.txt").settings["words"] == 2
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="no sentences"):
        read_sentences([tmp_path / "empty.txt"])
    assert math.isfinite(write_arpa(["A B", "B A"], 1, tmp_path / "one.arpa")["discounts"][0])
