"""The text modality's small test settings, which the per-modality tests read for every modality
of the table (docs/ARCHITECTURE.md, "Adding a modality", lists them): text-tiny in seconds on a tiny
slice of real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FORTUNES = Path("/usr/share/games/fortunes")

# Dropout on at the reference's 0.1 (the preset pre-trains without it), so that the tests cover the dropout paths.
SMALL = ["model.embed_dim=32", "model.num_heads=2", "model.depth=2", "targets.top_k=2",
         "model.text.vocab_size=512", "model.text.max_positions=32", "decoder.dim=32", "decoder.layers=2",
         "masking.num_masks=2", "train.batch_size=8", "data.num_workers=0", "train.log_every=1",
         "optim.warmup_steps=2", "train.precision=fp32", "guards.after_steps=100000", "model.dropout=0.1",
         "model.attention_dropout=0.1", "model.post_mlp_dropout=0.1", "model.text.embed_dropout=0.1"]


def real_text(folder: Path) -> Path | None:
    """About 24 KB of real English (the Debian fortunes package) in two files under `folder`."""
    sources = [p for p in (FORTUNES / n for n in ("computers", "science", "people", "literature")) if p.exists()]
    if len(sources) < 2:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for p in sources[:2]:
        quotes = [q.strip() for q in p.read_text(errors="replace")[:12000].split("\n%\n") if q.strip()]
        (folder / f"{p.name}.txt").write_text("\n\n".join(quotes[:-1]) + "\n")
    return folder


def tokenizer_for(text: Path, out: Path) -> Path:
    """A 512-token BPE learnt from the files of `text`."""
    from .data import DocumentReport, iter_documents, train_tokenizer

    return train_tokenizer(iter_documents(sorted(text.glob("*.txt")), "paragraph", "stop", DocumentReport()), 512, out)


def small_data(folder: Path) -> list[str] | None:
    """The fortunes text, its tokenizer and a cache, under `folder`."""
    text = real_text(folder / "text")
    if text is None:
        return None
    tokenizer = tokenizer_for(text, folder / "tokenizer.json")
    return [f"data.train={text}", f"data.tokenizer={tokenizer}", f"data.cache_dir={folder / 'cache'}"]


def padded(tokens):
    """(B, T) token ids with the second half of the second row padding (PAD)."""
    from .encoder import PAD

    out = tokens.clone()
    out[1, tokens.shape[1] // 2:] = PAD
    return out


# The step characterization (tests/test_step_characterization.py): cases (name -> overrides over
# text-tiny and the test's shared small blocks) pinned from version 0.1.0, and each case's fixed
# inputs and masks from the test's seeded generators.
STEP_CASES = {"text": ["model.text.vocab_size=64", "model.text.max_positions=16", "model.text.embed_dropout=0",
                       "decoder.dim=32", "decoder.layers=2"]}


def step_batch(config, g, rng) -> tuple:
    """(2, 16) random token ids, the second block 13 tokens long then padding, and (2 * M, 16) masks
    of the same number of valid tokens in each row."""
    import torch

    m = config.masking
    inputs = torch.randint(4, config.model.settings.vocab_size, (2, 16), generator=g)
    inputs[:, 0] = 0  # <s>
    inputs[1, 13:] = 1  # <pad>: the second block is 13 tokens long
    count = 13 - int(13 * (1.0 - m.mask_prob))
    mask = np.zeros((4, 16), dtype=bool)
    for row, valid in enumerate([16, 16, 13, 13]):
        mask[row, rng.permutation(valid)[:count]] = True
    return inputs, mask


# The baselines (objective=...) tests/test_objectives.py pre-trains on this modality besides data2vec 2.0
BASELINES = ("data2vec1", "mlm")


# No unreadable samples at training time: a bad file is skipped (or stops the run) when the corpus is
# tokenized, before the first update (tests/test_text.py), not in the loader (tests/test_faults.py).
half_bad_data = None


# Fine-tuning (tests/test_finetune.py): a small version of each task's tiny preset, task -> (preset,
# overrides), and the labelled data each task trains on.
FINETUNE = {
    "classification": ("text-cls-tiny", [
        "train.batch_size=8", "train.max_steps=6", "train.log_every=1", "train.precision=fp32",
        "train.time_budget_s=0", "optim.warmup_steps=2", "finetune.eval_every=3", "finetune.valid=",
        "finetune.valid_size=16", "finetune.test=[]", "finetune.freeze_steps=2"]),
    "regression": ("text-cls-tiny", [
        "finetune.task=regression", "train.batch_size=8", "train.max_steps=6", "train.log_every=1",
        "train.precision=fp32", "train.time_budget_s=0", "optim.warmup_steps=2", "finetune.eval_every=3",
        "finetune.valid=", "finetune.valid_size=16", "finetune.test=[]"]),
}


def glue_task(text: Path, folder: Path) -> Path:
    """A GLUE-format sentence task from the real text of `text` (small_data's): up to 80 quotes,
    labelled by the file (of two) they come from, shuffled; `folder`/train.tsv."""
    rows = []
    for label, path in enumerate(sorted(text.glob("*.txt"))):
        quotes = [" ".join(q.split())[:200] for q in path.read_text().split("\n\n") if q.strip()]
        rows += [(q.replace("\t", " "), label) for q in quotes[:40]]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{q}\t{y}\n" for q, y in rows))
    return folder / "train.tsv"


def finetune_data(task: str, folder: Path, small: list[str]) -> list[str]:
    """The labelled data of `task`: the GLUE-format task of glue_task; for regression, a number per
    sentence (its length in characters / 100)."""
    glue = glue_task(Path(dict(o.split("=", 1) for o in small)["data.train"]), folder)
    if task != "regression":
        return [f"data.train={glue}"]
    sentences = [line.split("\t")[0] for line in glue.read_text().splitlines()[1:]]
    values = folder / "values.tsv"
    values.write_text("sentence\tlabel\n" + "".join(f"{s}\t{len(s) / 100:.2f}\n" for s in sentences))
    return [f"data.train={values}"]
