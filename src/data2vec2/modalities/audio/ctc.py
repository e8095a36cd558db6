"""Speech recognition with CTC on letters, the fine-tuning task `finetune.task: ctc`: the reference's
protocol (fairseq `Wav2VecCtc` / `Wav2VecEncoder` over a data2vec 2.0 encoder, criterion `ctc`,
examples/wav2vec/config/finetuning/*.yaml) on the trainer of pre-training.

    data      TSV manifests of path <TAB> samples <TAB> transcript (labelled.py), bucketed by length
    letters   data.letters, or every character of the training transcripts (sorted), after the
              CTC blank (index 0); a transcript with a character outside them is an error
    model     wave -> CNN (never trained: feature_grad_mult 0) -> projection -> time and channel masks
              (training) -> position convolution -> blocks (layerdrop model.layerdrop) ->
              Linear(D, letters + 1); the whole encoder frozen for the first finetune.freeze_steps
    loss      CTC (zero_infinity), summed over the clips and divided by their number (sentence_avg)
    decoding  greedy (the reference's Viterbi without a language model): the best letter per frame,
              repeats merged, blanks removed, runs of spaces closed up; or, for prediction, beam
              search with a word n-gram model (use_language_model, lm.py)
    metrics   word and character error rates over the split (torchmetrics); the best checkpoint by WER
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import Config
from ...errors import DataError
from ...finetune import TaskObjective
from ...model import LossOutput
from ...modality import Task, TaskData
from ...nn.blocks import blocks_forward_flops
from .encoder import cnn_flops, pos_conv_flops
from .labelled import ClipCollate, LabelledClips, encode_clips, freeze_cnn, open_labelled
from .labelled import prediction_inputs as labelled_inputs

BLANK = "<blank>"  # index 0


class SpeechRecognizer(TaskObjective):
    """The objective: forward(batch) -> the CTC loss summed over the batch's clips; predict -> the
    greedy transcript of each clip."""

    def __init__(self, encoder: nn.Module, letters: list[str], config: Config):
        super().__init__(encoder, config)
        freeze_cnn(encoder)
        self.letters = letters
        self.head = nn.Linear(encoder.cfg.embed_dim, len(letters))
        nn.init.xavier_uniform_(self.head.weight)  # fairseq's Linear
        nn.init.zeros_(self.head.bias)
        self.beam_search = None  # lm.BeamSearch once use_language_model is called; None: greedy decoding

    def use_language_model(self, lm, **options) -> None:
        """Decode predictions by beam search with the word n-gram model `lm` (lm.BeamSearch's options)."""
        from .lm import BeamSearch

        self.beam_search = BeamSearch(self.letters, lm, **options)

    @property
    def decoding(self) -> dict:
        return {"kind": "greedy"} if self.beam_search is None else {"kind": "beam search", **self.beam_search.settings}

    def log_probs(self, batch: dict) -> Tensor:
        x = encode_clips(self.encoder, batch, self.encoder_context())  # (B, T, D)
        return F.log_softmax(self.head(x).float(), dim=-1)  # (B, T, letters)

    def forward(self, batch: dict) -> LossOutput:
        log_probs = self.log_probs(batch)
        loss_sum = F.ctc_loss(log_probs.transpose(0, 1), batch["letters"], batch["frames"], batch["letter_count"],
                              blank=0, reduction="sum", zero_infinity=True)
        return LossOutput(loss_sum=loss_sum, count=batch["count"])

    def scores(self, waves: Tensor) -> Tensor:
        """(B, L) normalised clips of one length -> (B, T, letters) log-probabilities: the ONNX
        export's (greedy decoding: the best letter per frame, repeats merged, blanks dropped)."""
        return self.log_probs({"inputs": waves})

    def predict(self, batch: dict) -> list[str]:
        log_probs = self.log_probs(batch).cpu()  # (B, T, letters)
        if self.beam_search is not None:
            return [self.beam_search(row[:int(n)]) for row, n in zip(log_probs, batch["frames"].cpu())]
        best = log_probs.argmax(-1)  # (B, T)
        return [greedy_text(row[:int(n)].tolist(), self.letters) for row, n in zip(best, batch["frames"].cpu())]


def greedy_text(ids: list[int], letters: list[str]) -> str:
    """The best letter of each frame -> text: repeats merged, blanks dropped, spaces closed up."""
    out, previous = [], None
    for i in ids:
        if i != previous and i != 0:
            out.append(letters[i])
        previous = i
    return " ".join("".join(out).split())


class TranscriptTargets:
    """A batch's targets: the transcripts (scored) and their letter ids (the CTC loss's)."""

    def __init__(self, letters: list[str]):
        self.index = {c: i for i, c in enumerate(letters)}

    def __call__(self, items: list[dict]) -> dict:
        ids = [[self.index[c] for c in s["target"]] for s in items]
        return {"target": [s["target"] for s in items],
                "letters": torch.tensor([i for row in ids for i in row], dtype=torch.long),  # (sum of lengths,)
                "letter_count": torch.tensor([len(row) for row in ids], dtype=torch.long)}  # (B,)


def task_data(config: Config, spec: str, letters: list[str] | None, train: bool) -> TaskData:
    """The clips of the manifest `spec` and their transcripts. The letters: `letters` (those of the
    training data), or, for the training data, data.letters or every character of its transcripts."""
    clips = open_labelled(config, spec, train)
    if letters is None:
        chars = config.data.settings.letters or "".join(sorted(set("".join(clips.labels)) - {"\t"}))
        if len(set(chars)) != len(chars):
            raise DataError(f"data.letters={chars!r}: a letter occurs twice")
        letters = [BLANK] + list(chars)
    known = set(letters[1:])
    for text, where in zip(clips.labels, clips.where):
        unknown = sorted(set(text) - known)
        if unknown:
            raise DataError(f"{where}: the transcript has {''.join(unknown)!r}, not among the letters "
                            f"{''.join(letters[1:])!r} (those of the training transcripts, or data.letters)")
        if not text.strip():
            raise DataError(f"{where}: empty transcript")
    return TaskData(dataset=LabelledClips(clips.source, clips.labels),
                    collate=ClipCollate(config, train, TranscriptTargets(letters)), labels=list(letters),
                    lengths=list(clips.source.lengths))


def score(outputs: list[str], targets: list[str], letters: list[str]) -> dict[str, float]:
    from torchmetrics.functional.text import char_error_rate, word_error_rate

    return {"wer": float(word_error_rate(outputs, targets)), "cer": float(char_error_rate(outputs, targets))}


def step_flops(config: Config, size: float) -> float:
    """An update's FLOPs (train/flops.py's convention) at the mean clip length `size` (samples): the
    CNN forward only (it never learns); the projection, the position convolution and the blocks
    forward and backward; the head aside."""
    model, B = config.model, config.train.batch_size
    cnn, T, channels = cnn_flops(model.settings.conv_layers, B, int(size))
    local = 2 * B * T * channels * model.embed_dim + B * pos_conv_flops(config, T)
    return cnn + 3 * (local + blocks_forward_flops(B, T, model.embed_dim, model.mlp_ratio,
                                                   model.depth + model.prenet_depth))


def synthetic_batch(config: Config) -> tuple[dict, list[str], float]:
    """train.batch_size random clips of data.max_samples with 40-letter transcripts, through the
    training collate (masks included)."""
    L = config.data.settings.max_samples
    g = torch.Generator().manual_seed(0)
    letters = [BLANK] + list(" 'ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    rng = np.random.default_rng(0)
    items = [{"index": i, "inputs": torch.randn(L, generator=g),
              "target": "".join(rng.choice(list("ABCDEFGHIJ "), 40)).strip() or "A"}
             for i in range(config.train.batch_size)]
    return ClipCollate(config, True, TranscriptTargets(letters))(items), letters, float(L)


def prediction_inputs(config: Config, items: list, letters: list[str]) -> tuple[TaskData, list[str], bool]:
    """Clips to transcribe: a manifest with transcripts (scored), or files, folders, lists, waveforms."""
    return labelled_inputs(config, items, letters, task_data, TranscriptTargets(letters), "")


def describe(transcript: str, letters: list[str], top: int) -> dict:
    return {"transcript": transcript}


CTC = Task(name="ctc", data=task_data, build=lambda encoder, config, letters: SpeechRecognizer(encoder, letters, config),
           score=score, metric="wer", metrics=("wer", "cer"), step_flops=step_flops, synthetic_batch=synthetic_batch,
           inputs=prediction_inputs, describe=describe, lower_is_better=("wer", "cer"))
