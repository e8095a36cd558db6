"""Beam search with a word n-gram model against greedy CTC decoding, on the held-out prompts.

For each fine-tuned CTC checkpoint: a 3-gram model (`data2vec2 ngram`'s) of the transcripts the run
trained on (its validation hold-out left out), the LM weight and word score chosen by WER on that
validation hold-out over a small grid (beam 50), then each test split of the run decoded once
greedily and once with the chosen setting (and once with the reference's defaults, weight 2 and
word score -1). The encoder's log-probabilities are computed once per split, in fp32.

    python benchmarks/ctc_lm.py runs/ctc/random_init/checkpoints/step_000001000.pt \\
        runs/ctc/pretrained/checkpoints/step_000001500.pt --out docs/results/ctc_lm.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
from torchmetrics.functional.text import char_error_rate, word_error_rate

from data2vec2.provenance import results_header
from data2vec2.finetune import training_and_validation
from data2vec2.modalities import MODALITIES
from data2vec2.modalities.audio.ctc import greedy_text
from data2vec2.modalities.audio.lm import BeamSearch, write_arpa
from data2vec2.predict import load_model

WEIGHTS, WORD_SCORES = (0.5, 1.0, 2.0, 3.0), (-1.0, 0.0, 1.0, 2.0)


@torch.no_grad()
def log_probs(model, data) -> tuple[list[torch.Tensor], list[str]]:
    """Each clip's (T, letters) log-probabilities and its transcript, in batches cut in order."""
    size = model.config.train.batch_size
    out, targets = [], []
    for start in range(0, len(data.dataset), size):
        batch = data.collate([data.dataset[i] for i in range(start, min(start + size, len(data.dataset)))])
        scores = model.objective.log_probs(batch)  # (B, T, letters)
        out += [row[:int(n)] for row, n in zip(scores, batch["frames"])]
        targets += batch["target"]
    return out, targets


def rates(outputs: list[str], targets: list[str]) -> dict:
    return {"wer": round(float(word_error_rate(outputs, targets)), 4),
            "cer": round(float(char_error_rate(outputs, targets)), 4)}


def decode(search, scores) -> tuple[list[str], float]:
    start = time.perf_counter()
    outputs = [search(s) for s in scores]
    return outputs, (time.perf_counter() - start) / len(scores)


def evaluate(checkpoint: str, order: int, folder: Path) -> dict:
    model = load_model(checkpoint, MODALITIES)
    config, task = model.config, model.task
    fit = task.data(config, config.data.train, model.labels, False)
    train, valid = training_and_validation(config, task, fit)
    sentences = [fit.dataset.targets[i] for i in train.dataset.indices]
    lm = folder / f"{Path(checkpoint).parent.parent.name}.arpa"
    stats = write_arpa(sentences, order, lm)

    def greedy(scores: torch.Tensor) -> str:
        return greedy_text(scores.argmax(-1).tolist(), model.labels)

    scores, targets = log_probs(model, valid)
    grid = []
    for weight, word in itertools.product(WEIGHTS, WORD_SCORES):
        outputs, _ = decode(BeamSearch(model.labels, lm, beam=50, lm_weight=weight, word_score=word), scores)
        grid.append({"lm_weight": weight, "word_score": word, **rates(outputs, targets)})
        print(json.dumps(grid[-1]), flush=True)
    best = min(grid, key=lambda row: row["wer"])
    row = {"checkpoint": checkpoint, "lm": {**stats, "trained_on": f"{len(sentences)} training transcripts"},
           "valid": {"clips": len(targets), "greedy": rates([greedy(s) for s in scores], targets), "grid": grid,
                     "chosen": {"lm_weight": best["lm_weight"], "word_score": best["word_score"]}}}
    for split in config.finetune.test:
        scores, targets = log_probs(model, task.data(config, split, model.labels, False))
        plain = [greedy(s) for s in scores]
        result = {"clips": len(targets), "greedy": rates(plain, targets)}
        settings = {"chosen": (best["lm_weight"], best["word_score"]), "defaults": (2.0, -1.0)}
        for name, (weight, word) in settings.items():
            outputs, seconds = decode(BeamSearch(model.labels, lm, beam=50, lm_weight=weight, word_score=word), scores)
            result[name] = {"lm_weight": weight, "word_score": word, **rates(outputs, targets),
                            "changed": round(sum(a != b for a, b in zip(outputs, plain)) / len(plain), 4),
                            "seconds_per_clip": round(seconds, 4),
                            "examples": [{"target": t, "greedy": g, "beam": o}
                                         for t, g, o in list(zip(targets, plain, outputs))[:5]]}
        row[split] = result
        print(json.dumps({split: {k: v for k, v in result.items() if k != "examples"}}, default=str), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="fine-tuned CTC checkpoints (or run folders, exports)")
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        results = [evaluate(c, args.order, Path(folder)) for c in args.checkpoints]
    out = {"benchmark": "CTC decoding: greedy vs beam search with a word 3-gram model",
           "header": {**results_header("fp32"), "flashlight_text": version("flashlight-text")}, "beam": 50,
           "results": results}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
