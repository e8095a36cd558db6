"""Text data: reading text files into documents, a byte-level BPE tokenizer, a memory-mapped token
cache, the pre-training blocks and their random masks (drawn in the DataLoader workers).

    files -> documents (a whole file, or each blank-line-separated paragraph)
          -> BPE ids + </s> per document, concatenated into one stream   tokens.bin (uint16/uint32)
          -> block i = [<s>] + stream[i (L-1) : (i+1) (L-1)]              L = model.text.max_positions

Blocks cross document boundaries (fairseq `sample_break_mode: none`); the incomplete tail of the
stream is dropped, so pre-training blocks carry no padding.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ...config import Config
from ...data.collate import MaskingCollate, Stream
from ...errors import ConfigError, DataError
from ...export import write_json
from ...masking import block_mask_1d, num_masked
from ...modality import PretrainingData
from .encoder import BOS, EOS, PAD, SPECIAL_TOKENS, step_flops


@dataclass
class TextDataSettings:
    """The text keys of `data`."""

    tokenizer: str = ""  # a byte-level BPE tokenizer file (tokenizer.json); "": train one on data.train
    documents: str = "paragraph"  # a document is a blank-line-separated paragraph | a whole file
    # fine-tuning (text/classification.py): the TSV columns of the text(s) and of the label;
    # (), "": the GLUE names
    text_columns: tuple[str, ...] = ()
    label_column: str = ""
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")


class BadFile(DataError):
    """A text file that is empty, binary or not valid UTF-8."""


def read_text_file(path: Path) -> str:
    """The file's text; raises BadFile (with the path) for empty, binary or non-UTF-8 files."""
    data = path.read_bytes()
    if not data.strip():
        raise BadFile(f"{path}: empty file")
    if b"\x00" in data[:65536]:
        raise BadFile(f"{path}: binary file (contains NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadFile(f"{path}: not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r})") from None


def split_documents(text: str, mode: str) -> list[str]:
    """mode "file": the whole text is one document; "paragraph": blank lines separate documents."""
    if mode == "file":
        return [text.strip()] if text.strip() else []
    return [p.strip() for p in PARAGRAPH_BREAK.split(text) if p.strip()]


PREPARED = {"english": "", "reviews": "--reviews "}  # corpus name -> the `prepare text` option that builds it


def find_text_files(spec: str, cache_dir: Path) -> list[Path]:
    """Files named by `spec`: comma-separated files, folders (searched recursively) or globs.
    "english" and "reviews" are the corpora built by `data2vec2 prepare text [--reviews]` in the cache."""
    files: list[Path] = []
    for part in [s.strip() for s in spec.split(",") if s.strip()]:
        if part in PREPARED:
            folder = cache_dir / "text" / part
            found = sorted(folder.glob("*.txt"))
            if not found:
                raise DataError(f"{folder} holds no corpus: run 'data2vec2 prepare text {PREPARED[part]}"
                                f"--cache {cache_dir}' first")
            files += found
        elif Path(part).is_dir():
            files += sorted(p for p in Path(part).rglob("*") if p.is_file() and not p.name.startswith("."))
        elif Path(part).is_file():
            files.append(Path(part))
        else:
            matches = sorted(Path(p) for p in glob.glob(part, recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"{part}: no such text file, folder or glob match")
            files += matches
    if not files:
        raise DataError(f"data.train={spec!r} names no text files")
    return files


@dataclass
class DocumentReport:
    files: int = 0
    documents: int = 0
    bad: list[str] | None = None


def iter_documents(files: Iterable[Path], mode: str, on_bad_file: str, report: DocumentReport,
                   option: str = "data.on_bad_file") -> Iterator[str]:
    """Documents of all files in order. A bad file stops (on_bad_file="stop") or is skipped and
    recorded in `report.bad` with its path and reason; if no file is readable, DataError at the
    end. `option` is the setting's name for messages (the tokenizer command's is --on-bad-file)."""
    report.bad = report.bad if report.bad is not None else []
    for path in files:
        try:
            text = read_text_file(path)
        except BadFile as e:
            if on_bad_file == "stop":
                raise DataError(f"{e} ({option}=stop; set it to skip to go on)") from None
            report.bad.append(str(e))
            continue
        report.files += 1
        for doc in split_documents(text, mode):
            report.documents += 1
            yield doc
    if report.documents == 0:
        detail = f"; skipped {len(report.bad)} bad file(s), first: {report.bad[0]}" if report.bad else ""
        raise DataError(f"no text to read: {report.files} readable file(s) hold no document{detail}")


# ---------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(documents: Iterable[str], vocab_size: int, out: Path, min_frequency: int = 2) -> Path:
    """Train a byte-level BPE (GPT-2 / RoBERTa style) with <s>=0, <pad>=1, </s>=2, <unk>=3 and
    save it as a `tokenizers` JSON file whose post-processor adds <s> ... </s> (pairs:
    <s> A </s></s> B </s>), as RoBERTa does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(documents, trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", EOS), ("<s>", BOS), trim_offsets=False,
                                                      add_prefix_space=False)
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:  # pragma: no cover - the trainer puts them first
            raise DataError(f"tokenizer training put {name} at {tok.token_to_id(name)}, expected {i}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tok.save(str(tmp))
    os.replace(tmp, out)
    return out


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.exists():
        raise DataError(f"tokenizer file not found: {path}")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise DataError(f"{path} is not a tokenizers JSON file: {e}") from None
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:
            raise DataError(f"{path}: {name} must have id {i} (RoBERTa layout), it has {tok.token_to_id(name)}")
    return tok


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _files_key(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def ensure_tokenizer(spec: str, files: list[Path], vocab_size: int, cache_dir: Path, mode: str,
                     on_bad_file: str) -> Path:
    """`spec` if given; otherwise a tokenizer trained on `files` once and kept in the cache."""
    if spec:
        return Path(spec)
    out = cache_dir / "text" / f"tokenizer-{vocab_size}-{_files_key(files)}.json"
    if not out.exists():
        report = DocumentReport()
        print(f"[data2vec2] training a {vocab_size}-token byte-level BPE on {len(files)} file(s) -> {out}", flush=True)
        train_tokenizer(iter_documents(files, mode, on_bad_file, report), vocab_size, out)
    return out


# ---------------------------------------------------------------------------------------------
# Token cache


def tokenize_files(files: list[Path], tokenizer_path: Path, cache_dir: Path, mode: str, on_bad_file: str,
                   progress: bool = True) -> Path:
    """Tokenise `files` once into `<cache>/text/tokens-<key>/tokens.bin` (+ meta.json) and return
    that folder. Each document contributes its BPE ids followed by </s>. Both files are written to
    temporary names and renamed, meta.json last; a folder whose meta.json is missing, torn or does
    not match tokens.bin is built again."""
    from tqdm import tqdm

    key = hashlib.sha256(f"{_files_key(files)}|{file_digest(tokenizer_path)}|{mode}".encode()).hexdigest()[:16]
    folder = cache_dir / "text" / f"tokens-{key}"
    problem = _token_cache_problem(folder)
    if problem is None:
        return folder
    if (folder / "meta.json").exists():
        print(f"[data2vec2] rebuilding the token cache {folder}: {problem}", flush=True)
    tok = load_tokenizer(tokenizer_path)
    dtype = np.uint16 if tok.get_vocab_size() <= 65535 else np.uint32
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tokens.bin.{os.getpid()}.tmp"
    report, total = DocumentReport(), 0
    bar = tqdm(files, desc="tokenise", unit="file", disable=not progress, dynamic_ncols=True)
    with open(tmp, "wb") as out:
        batch: list[str] = []

        def flush() -> int:
            n = 0
            for enc in tok.encode_batch(batch, add_special_tokens=False):
                ids = np.asarray(enc.ids + [EOS], dtype=dtype)
                out.write(ids.tobytes())
                n += len(ids)
            batch.clear()
            return n

        for doc in iter_documents(bar, mode, on_bad_file, report):
            batch.append(doc)
            if len(batch) >= 2048:
                total += flush()
                bar.set_postfix(tokens=total)
        total += flush()
    bar.close()
    os.replace(tmp, folder / "tokens.bin")
    meta = {"tokens": total, "documents": report.documents, "files": report.files, "bad_files": report.bad,
            "dtype": np.dtype(dtype).name, "tokenizer": str(tokenizer_path), "mode": mode}
    write_json(folder / "meta.json", meta)  # last: it marks the cache complete
    return folder


def _token_cache_problem(folder: Path) -> str | None:
    """None if folder holds a complete token cache, else what is wrong with it."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        size = (folder / "tokens.bin").stat().st_size
        expected = int(meta["tokens"]) * np.dtype(meta["dtype"]).itemsize
    except FileNotFoundError as e:
        return f"{Path(e.filename).name} is missing"
    except (ValueError, KeyError, TypeError) as e:  # torn or foreign JSON
        return f"meta.json is unreadable ({type(e).__name__}: {e})"
    if size != expected:
        return f"tokens.bin has {size} bytes, meta.json says {expected}"
    return None


def open_tokens(folder: Path) -> tuple[np.memmap, dict]:
    meta = json.loads((folder / "meta.json").read_text())
    return np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["tokens"],)), meta


class TokenBlocks(torch.utils.data.Dataset):
    """Pre-training blocks of `length` tokens: <s> followed by the next length - 1 stream tokens.
    The memory map is opened lazily so DataLoader workers do not copy it."""

    def __init__(self, folder: Path, length: int, limit: int = 0):
        self.folder, self.length = Path(folder), length
        self._tokens: np.memmap | None = None
        n = json.loads((self.folder / "meta.json").read_text())["tokens"] // (length - 1)
        self.n = min(n, limit) if limit > 0 else n
        if self.n == 0:
            raise DataError(f"{folder}: too few tokens for one block of {length}")

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        pass

    def block(self, i: int) -> torch.Tensor:
        if self._tokens is None:
            self._tokens, _ = open_tokens(self.folder)
        step = self.length - 1
        body = torch.from_numpy(self._tokens[i * step:(i + 1) * step].astype(np.int64))
        return torch.cat([torch.tensor([BOS]), body])  # (length,)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "inputs": self.block(i)}


def text_masks(num_masks: int, valid_lengths: list[int], length: int, mask_prob: float,
               rngs: list[np.random.Generator], kind: str = "random", span: int = 1,
               adjust: float = 0.0) -> np.ndarray:
    """Masks for a batch, (B*M, length) bool, rows b*M .. b*M+M-1 for sample b: "random" (MAE-style,
    data2vec 2.0's) or "block", spans of `span` tokens (data2vec 1.0 text's mask_multiple_length).

    Only the first `valid_lengths[b]` positions of sample b may be masked: padding never enters
    the loss (a deliberate fix; the reference's `random_masking` masks padding too). Every row masks
    the same count, that of the shortest sample."""
    count = num_masked(kind, min(valid_lengths), mask_prob)
    masks = np.zeros((len(valid_lengths) * num_masks, length), dtype=bool)
    for b, (valid, rng) in enumerate(zip(valid_lengths, rngs)):
        rows = slice(b * num_masks, (b + 1) * num_masks)
        if kind == "block":
            masks[rows, :valid] = block_mask_1d(num_masks, valid, mask_prob, span, adjust, rng, count=count)
            continue
        for m in range(num_masks):
            masks[b * num_masks + m, rng.permutation(valid)[:count]] = True
    return masks


class TextMaskingCollate(MaskingCollate):
    """Pads token blocks on the right with <pad> and draws each sample's M random masks over its
    non-padding tokens. (Bad files are dealt with when the token cache is built.)"""

    def inputs_and_masks(self, items: list[dict]) -> tuple[torch.Tensor, list[np.ndarray]]:
        T = max(len(s["inputs"]) for s in items)
        tokens = torch.full((len(items), T), PAD, dtype=torch.long)  # (B, T)
        for b, s in enumerate(items):
            tokens[b, :len(s["inputs"])] = s["inputs"]
        valid = [int((tokens[b] != PAD).sum()) for b in range(len(items))]
        rngs = [self.rng(s["index"], Stream.MASK) for s in items]
        masking = self.masking
        masks = text_masks(masking.num_masks, valid, T, masking.mask_prob, rngs, masking.kind, masking.mask_length,
                           masking.mask_prob_adjust)  # (B*M, T)
        return tokens, list(masks.reshape(len(items), masking.num_masks, T))


def prepare_token_cache(config: Config, progress: bool = True) -> tuple[Path, Path]:
    """(tokenizer file, token cache folder) for data.train, building what is missing. The resolved
    tokenizer path is written back into data.tokenizer (config.data.settings) so runs and exports find it."""
    data, settings = config.data, config.model.settings
    cache = Path(data.cache_dir)
    files = find_text_files(data.train, cache)
    tokenizer = ensure_tokenizer(data.settings.tokenizer, files, settings.vocab_size, cache, data.settings.documents,
                                 data.on_bad_file).resolve()
    size = load_tokenizer(tokenizer).get_vocab_size()
    if size > settings.vocab_size:
        raise ConfigError(f"model.text.vocab_size={settings.vocab_size} is smaller than the tokenizer's {size} tokens "
                          f"({tokenizer})")
    config.data.settings.tokenizer = str(tokenizer)
    folder = tokenize_files(files, tokenizer, cache, data.settings.documents, data.on_bad_file, progress=progress)
    return tokenizer, folder


def pretraining_data(config: Config, progress: bool = True) -> PretrainingData:
    _, folder = prepare_token_cache(config, progress=progress)
    _, meta = open_tokens(folder)
    if meta["bad_files"] and config.data.on_bad_file == "stop":
        raise DataError(f"{meta['bad_files'][0]} (data.on_bad_file=stop; set it to skip to go on)")
    if meta["bad_files"]:
        print(f"[data2vec2] skipped {len(meta['bad_files'])} bad file(s) (data.on_bad_file=skip):", flush=True)
        for line in meta["bad_files"][:20]:
            print(f"  {line}", flush=True)
    L = config.model.settings.max_positions
    dataset = TokenBlocks(folder, L, config.data.limit)
    print(f"[data2vec2] text: {meta['tokens']:,} tokens from {meta['documents']:,} documents in {meta['files']} "
          f"file(s) -> {len(dataset):,} blocks of {L}", flush=True)
    return PretrainingData(dataset=dataset, collate=TextMaskingCollate(config.masking, config.train.seed),
                           step_flops=step_flops(config, config.train.batch_size, L),
                           skipped_before=len(meta["bad_files"]))


def synthetic_batch(config: Config) -> tuple[dict, int]:
    """train.batch_size blocks of random token ids (<s> first, full length, no padding) through
    the real collate, for speed measurements; and the length for step_flops."""
    L, vocab = config.model.settings.max_positions, config.model.settings.vocab_size
    g = torch.Generator().manual_seed(0)
    items = [{"index": i, "inputs": torch.cat([torch.tensor([BOS]), torch.randint(4, vocab, (L - 1,), generator=g)])}
             for i in range(config.train.batch_size)]
    return TextMaskingCollate(config.masking, seed=0)(items), L
