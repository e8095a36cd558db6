"""Wiring of the text modality for pre-training: text files -> tokenizer -> token cache -> blocks
-> random masks drawn in the DataLoader workers (spec 5.3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Config, MaskingConfig
from ..data.collate import MASK_STREAM, NOISE_STREAM
from ..data.text import PAD, TokenBlocks, ensure_tokenizer, find_text_files, load_tokenizer, open_tokens, tokenize_files
from ..errors import ConfigError, DataError
from ..model import build_model
from .text import text_step_flops


def text_masks(num_masks: int, valid_lengths: list[int], length: int, mask_prob: float,
               rngs: list[np.random.Generator]) -> np.ndarray:
    """Random (MAE-style) masks for a batch, (B*M, length) bool, rows b*M .. b*M+M-1 for sample b.

    Only the first `valid_lengths[b]` positions of sample b may be masked: padding never enters
    the loss (a deliberate fix; the reference masks padding too, spec 5.3). Every row masks the
    same count, floor-rounded from the shortest sample: n - int(n (1 - R)) for n = min(valid)."""
    n = min(valid_lengths)
    count = n - int(n * (1.0 - mask_prob))
    masks = np.zeros((len(valid_lengths) * num_masks, length), dtype=bool)
    for b, (valid, rng) in enumerate(zip(valid_lengths, rngs)):
        for m in range(num_masks):
            masks[b * num_masks + m, rng.permutation(valid)[:count]] = True
    return masks


class TextMaskingCollate:
    """Pads token blocks on the right with <pad> and draws each sample's M masks from
    np.random.default_rng([seed, epoch, index, MASK_STREAM]), as the image collate does."""

    def __init__(self, masking: MaskingConfig, seed: int):
        if masking.kind != "random":
            raise ConfigError(f"masking.kind={masking.kind!r}: text uses random masking (spec 5.3)")
        self.masking, self.seed = masking, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, samples: list[dict]) -> dict:
        """samples: dicts with "index" and "tokens" (T_b,). Returns tokens (B, T) with <pad> on the
        right, mask (B*M, T), noise_seed (B,), index (B,) and errors (always empty here: bad files
        are dealt with when the token cache is built)."""
        T = max(len(s["tokens"]) for s in samples)
        tokens = torch.full((len(samples), T), PAD, dtype=torch.long)
        rngs, seeds = [], []
        for b, s in enumerate(samples):
            tokens[b, :len(s["tokens"])] = s["tokens"]
            key = [self.seed, self.epoch, int(s["index"])]
            rngs.append(np.random.default_rng(key + [MASK_STREAM]))
            seeds.append(np.random.default_rng(key + [NOISE_STREAM]).integers(2**62))
        valid = [int((tokens[b] != PAD).sum()) for b in range(len(samples))]
        m = self.masking
        mask = text_masks(m.num_masks, valid, T, m.mask_prob, rngs)
        return {"tokens": tokens, "mask": torch.from_numpy(mask), "noise_seed": torch.tensor(seeds, dtype=torch.int64),
                "index": torch.tensor([int(s["index"]) for s in samples], dtype=torch.int64), "errors": []}


def prepare_token_cache(config: Config, progress: bool = True) -> tuple[Path, Path]:
    """(tokenizer file, token cache folder) for data.train, building what is missing. The resolved
    tokenizer path is written back into config.data.tokenizer so runs and exports find it."""
    d, tc = config.data, config.model.text
    cache = Path(d.cache_dir)
    files = find_text_files(d.train, cache)
    tokenizer = ensure_tokenizer(d.tokenizer, files, tc.vocab_size, cache, d.documents, d.on_bad_file).resolve()
    size = load_tokenizer(tokenizer).get_vocab_size()
    if size > tc.vocab_size:
        raise ConfigError(f"model.text.vocab_size={tc.vocab_size} is smaller than the tokenizer's {size} tokens ({tokenizer})")
    config.data.tokenizer = str(tokenizer)
    folder = tokenize_files(files, tokenizer, cache, d.documents, d.on_bad_file, progress=progress)
    return tokenizer, folder


def build_text_pretraining(config: Config):
    from ..train.loop import PretrainSetup

    _, folder = prepare_token_cache(config)
    _, meta = open_tokens(folder)
    if meta["bad_files"] and config.data.on_bad_file == "stop":
        raise DataError(f"{meta['bad_files'][0]} (data.on_bad_file=stop; set it to skip to go on)")
    if meta["bad_files"]:
        print(f"[data2vec2] skipped {len(meta['bad_files'])} bad file(s) (data.on_bad_file=skip):", flush=True)
        for line in meta["bad_files"][:20]:
            print(f"  {line}", flush=True)
    L = config.model.text.max_positions
    dataset = TokenBlocks(folder, L, config.data.limit)
    print(f"[data2vec2] text: {meta['tokens']:,} tokens from {meta['documents']:,} documents in {meta['files']} "
          f"file(s) -> {len(dataset):,} blocks of {L}", flush=True)
    m = config.masking
    keep = L - (L - int(L * (1.0 - m.mask_prob)))
    flops = text_step_flops(config, config.train.batch_size, L, keep)
    return PretrainSetup(model=build_model(config), dataset=dataset, collate=TextMaskingCollate(m, config.train.seed),
                         input_key="tokens", step_flops=flops)
