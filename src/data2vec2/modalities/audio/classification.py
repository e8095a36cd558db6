"""Utterance classification (keyword spotting, or any labelled audio manifest), the fine-tuning task
`finetune.task: classification`. The reference fine-tunes speech only with CTC; this task is ours,
built from the same parts:

    data     TSV manifests of path <TAB> samples <TAB> class (labelled.py), bucketed by length; the
             classes are those of the training manifest, sorted
    model    the CTC task's encoder path (CNN never trained, time and channel masks in training,
             frozen for the first finetune.freeze_steps) -> mean over the clip's frames (padding
             excluded) -> Linear(D, classes)
    loss     cross-entropy (finetune.label_smoothing), summed over the clips and divided by their number
    metrics  accuracy (torchmetrics); the best checkpoint by accuracy
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import Config
from ...errors import DataError
from ...finetune import TaskObjective
from ...model import LossOutput
from ...modality import Task, TaskData
from .ctc import step_flops
from ...predict import describe_classes
from .labelled import ClipCollate, LabelledClips, encode_clips, freeze_cnn, open_labelled
from .labelled import prediction_inputs as labelled_inputs


class UtteranceClassifier(TaskObjective):
    """The objective: forward(batch) -> the loss summed over the batch's clips; predict -> logits."""

    def __init__(self, encoder: nn.Module, num_classes: int, config: Config):
        super().__init__(encoder, config)
        freeze_cnn(encoder)
        self.head = nn.Linear(encoder.cfg.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.label_smoothing = config.finetune.label_smoothing

    def logits(self, batch: dict) -> Tensor:
        x = encode_clips(self.encoder, batch, self.encoder_context())  # (B, T, D)
        if "padding" not in batch:  # whole clips of one length
            return self.head(x.mean(dim=1)).float()
        keep = (~batch["padding"]).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1)  # (B, D)
        return self.head(pooled).float()

    def scores(self, waves: Tensor) -> Tensor:
        """(B, L) normalised clips of one length -> (B, classes) logits: the ONNX export's."""
        return self.logits({"inputs": waves})

    def forward(self, batch: dict) -> LossOutput:
        loss_sum = F.cross_entropy(self.logits(batch), batch["target"], label_smoothing=self.label_smoothing,
                                   reduction="sum")
        return LossOutput(loss_sum=loss_sum, count=batch["count"])

    def predict(self, batch: dict) -> list[Tensor]:
        return list(self.logits(batch).cpu())


def class_targets(items: list[dict]) -> dict:
    return {"target": torch.tensor([s["target"] for s in items], dtype=torch.long)}


def task_data(config: Config, spec: str, labels: list[str] | None, train: bool) -> TaskData:
    """The clips of the manifest `spec`; their classes are `labels` (those of the training data,
    which defines them when `labels` is None: its label values, sorted)."""
    clips = open_labelled(config, spec, train)
    if labels is None:
        labels = sorted(set(clips.labels))
        if len(labels) < 2:
            raise DataError(f"{spec}: one class ({labels[0]}); classification needs at least two")
    index = {c: i for i, c in enumerate(labels)}
    for label, where in zip(clips.labels, clips.where):
        if label not in index:
            raise DataError(f"{where}: class {label!r} does not occur in the training data (classes: "
                            f"{', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})")
    return TaskData(dataset=LabelledClips(clips.source, [index[c] for c in clips.labels]),
                    collate=ClipCollate(config, train, class_targets), labels=list(labels),
                    lengths=list(clips.source.lengths))


def score(outputs: list[Tensor], targets: list, labels: list[str]) -> dict[str, float]:
    from torchmetrics.functional.classification import multiclass_accuracy

    logits, target = torch.stack(outputs), torch.as_tensor([int(t) for t in targets])
    return {"accuracy": float(multiclass_accuracy(logits, target, num_classes=len(labels), average="micro"))}


def synthetic_batch(config: Config) -> tuple[dict, list[str], float]:
    """train.batch_size random clips of data.max_samples in 10 classes, through the training collate."""
    L = config.data.settings.max_samples
    g = torch.Generator().manual_seed(0)
    items = [{"index": i, "inputs": torch.randn(L, generator=g), "target": i % 10}
             for i in range(config.train.batch_size)]
    return ClipCollate(config, True, class_targets)(items), [str(k) for k in range(10)], float(L)


def prediction_inputs(config: Config, items: list, labels: list[str]) -> tuple[TaskData, list[str], bool]:
    """Clips to classify: a manifest with classes (scored), or files, folders, lists, waveforms."""
    return labelled_inputs(config, items, labels, task_data, class_targets, 0)


CLASSIFICATION = Task(name="classification", data=task_data,
                      build=lambda encoder, config, labels: UtteranceClassifier(encoder, len(labels), config),
                      score=score, metric="accuracy", metrics=("accuracy",), step_flops=step_flops,
                      synthetic_batch=synthetic_batch, inputs=prediction_inputs, describe=describe_classes)
