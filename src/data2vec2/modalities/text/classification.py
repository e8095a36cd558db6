"""Sentence and sentence-pair classification and regression, the fine-tuning tasks
`finetune.task: classification | regression`: the reference's GLUE protocol
(`data2vec_text_classification` with fairseq's sentence_prediction task and criterion, fairseq
examples/data2vec/config/v2/text_finetuning/*.yaml) on the trainer of pre-training.

    data     a GLUE-format TSV (a header row, tab-separated, unquoted) or rotten-tomatoes:train|dev|test
             (`data2vec2 prepare text`); the text columns are data.text_columns (default: the first
             GLUE pair or single column found: sentence1,sentence2 / question1,question2 /
             question,sentence / premise,hypothesis / sentence / text), the label data.label_column
             (default: label or gold_label)
    tokens   <s> A </s> or <s> A </s></s> B </s> with the encoder's BPE, truncated to
             model.text.max_positions; batches bucketed by length, padded
    head     RoBERTa's on the first token <s>: Linear(D, D) -> tanh -> Linear(D, C) (the reference's
             pooler dropout is 0); C = the classes, or 1 for regression
    loss     cross-entropy (classification) or squared error (regression), summed over the sentences
             and divided by their count
    metrics  classification: accuracy, F1 (two classes: of the second class; more: the classes' mean),
             Matthews correlation, acc_and_f1 (their mean); regression: Pearson, Spearman and
             pearson_and_spearman (their mean); torchmetrics computes them
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import Config
from ...data.collate import Collate
from ...errors import DataError
from ...finetune import TaskObjective
from ...model import LossOutput
from ...modality import Task, TaskData
from ...predict import describe_classes
from ...nn.blocks import blocks_forward_flops
from .data import load_tokenizer
from .hf import export_classifier_hf
from .encoder import PAD

# GLUE column names, tried in this order when data.text_columns is not given
KNOWN_TEXT_COLUMNS = [("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
                      ("premise", "hypothesis"), ("sentence",), ("text",)]
KNOWN_LABEL_COLUMNS = ["label", "gold_label"]
PREPARED = "rotten-tomatoes"  # rotten-tomatoes:<split>: the TSVs of `data2vec2 prepare text`


@dataclass
class TsvRows:
    texts: list[tuple[str, ...]]  # one or two texts per example
    labels: list[str]
    path: Path
    columns: tuple[str, ...]
    label_column: str


def task_file(config: Config, spec: str) -> Path:
    """The TSV `spec` names: a path, or rotten-tomatoes:<train|dev|test> in data.cache_dir."""
    if spec.startswith(PREPARED + ":"):
        split = spec.split(":", 1)[1]
        if split not in ("train", "dev", "test"):
            raise DataError(f"{spec}: the Rotten Tomatoes splits are train, dev and test")
        path = Path(config.data.cache_dir) / "text" / "rotten_tomatoes" / f"{split}.tsv"
        if not path.exists():
            raise DataError(f"{path} not found: run 'data2vec2 prepare text --cache {config.data.cache_dir}'")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"{spec}: no such task file (a GLUE-format TSV, or {PREPARED}:train|dev|test)")
    return path


def read_tsv(path: Path, text_columns: tuple[str, ...] = (), label_column: str = "") -> TsvRows:
    """A GLUE-format TSV: a header row, then one example per line, tab-separated, unquoted."""
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the task file ({e})") from None
    if not rows:
        raise DataError(f"{path}: empty task file (a header row and examples expected)")
    header = rows[0]
    if not text_columns:
        text_columns = next((c for c in KNOWN_TEXT_COLUMNS if all(n in header for n in c)), ())
        if not text_columns:
            raise DataError(f"{path}: no known text column in the header {header}; set data.text_columns")
    if not label_column:
        label_column = next((c for c in KNOWN_LABEL_COLUMNS if c in header), "")
        if not label_column:
            raise DataError(f"{path}: no label column ('label' or 'gold_label') in the header {header}; set "
                            f"data.label_column")
    for name in (*text_columns, label_column):
        if name not in header:
            raise DataError(f"{path}: no column '{name}'; the header has {header}")
    idx, li = [header.index(c) for c in text_columns], header.index(label_column)
    texts, labels = [], []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{n}: {len(row)} fields, the header has {len(header)}")
        if not row[li].strip():
            raise DataError(f"{path}:{n}: no label in column '{label_column}'")
        texts.append(tuple(row[i] for i in idx))
        labels.append(row[li].strip())
    if not texts:
        raise DataError(f"{path}: no examples after the header")
    return TsvRows(texts, labels, path, tuple(text_columns), label_column)


def tokenize(config: Config, rows: TsvRows) -> list[np.ndarray]:
    """Each example's ids: <s> A </s> (</s> B </s>), truncated to model.text.max_positions."""
    if not config.data.settings.tokenizer:
        raise DataError("the encoder has no tokenizer (data.tokenizer)")
    tokenizer = load_tokenizer(config.data.settings.tokenizer)
    tokenizer.enable_truncation(config.model.settings.max_positions)
    pairs = len(rows.texts[0]) == 2
    encodings = tokenizer.encode_batch([t if pairs else t[0] for t in rows.texts])
    return [np.asarray(e.ids, dtype=np.int32) for e in encodings]


class Sentences(torch.utils.data.Dataset):
    """{"index", "inputs": ids (T,), "target"} per example (tokenised once, when the data is opened)."""

    def __init__(self, ids: list[np.ndarray], targets: np.ndarray):
        self.ids, self.targets = ids, targets

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        return {"index": i, "inputs": torch.from_numpy(self.ids[i].astype(np.int64)), "target": self.targets[i].item()}


def is_regression(config: Config, spec: str) -> bool:
    """Whether the labels of `spec` are numbers, not all whole: a regression task (STS-B)."""
    data = config.data.settings
    labels = read_tsv(task_file(config, spec), tuple(data.text_columns), data.label_column).labels
    if not all(_is_number(v) for v in labels):
        return False
    return any(float(v) != int(float(v)) for v in labels)


def pad_batch(ids: list) -> Tensor:
    """Token sequences -> (B, T) padded with <pad> to the longest."""
    T = max(len(x) for x in ids)
    tokens = torch.full((len(ids), T), PAD, dtype=torch.long)
    for b, x in enumerate(ids):
        tokens[b, :len(x)] = torch.as_tensor(x, dtype=torch.long)
    return tokens


class SentenceCollate(Collate):
    """Pads the ids with <pad> to the longest of the batch: inputs (B, T); targets (B,)."""

    def __init__(self, seed: int, regression: bool):
        super().__init__(seed)
        self.dtype = torch.float32 if regression else torch.long

    def empty(self) -> dict:
        return {"inputs": torch.zeros(0, 1, dtype=torch.long), "target": torch.zeros(0, dtype=self.dtype), "count": 0}

    def assemble(self, items: list[dict]) -> dict:
        return {"inputs": pad_batch([s["inputs"] for s in items]),  # (B, T)
                "target": torch.tensor([s["target"] for s in items], dtype=self.dtype), "count": len(items)}


class SentenceClassifier(TaskObjective):
    """The objective: forward(batch) -> the loss summed over the batch's examples; predict -> the
    logits (classification) or the value (regression) of each."""

    def __init__(self, encoder: nn.Module, num_outputs: int, config: Config, regression: bool):
        super().__init__(encoder, config)
        D = encoder.cfg.embed_dim
        self.dense, self.out = nn.Linear(D, D), nn.Linear(D, num_outputs)
        for linear in (self.dense, self.out):  # BERT's init, as the encoder's
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        self.regression = regression

    def outputs(self, tokens: Tensor) -> Tensor:
        with self.encoder_context():
            first = self.encoder(tokens).x[:, 0]  # (B, D): the <s> token
        return self.out(torch.tanh(self.dense(first))).float()  # (B, C)

    def forward(self, batch: dict) -> LossOutput:
        out, target = self.outputs(batch["inputs"]), batch["target"]
        if self.regression:
            loss_sum = F.mse_loss(out[:, 0], target, reduction="sum")
        else:
            loss_sum = F.cross_entropy(out, target, reduction="sum")
        return LossOutput(loss_sum=loss_sum, count=batch["count"])

    def predict(self, batch: dict) -> list[Tensor]:
        out = self.outputs(batch["inputs"]).cpu()
        return list(out[:, 0] if self.regression else out)

    def scores(self, tokens: Tensor) -> Tensor:
        """(B, T) token ids (<pad> masked) -> (B, C) logits, or (B, 1) values: the ONNX export's."""
        return self.outputs(tokens)


def task_data(config: Config, spec: str, labels: list[str] | None, train: bool, regression: bool) -> TaskData:
    """The examples of `spec`. Classification: their classes are `labels` (those of the training
    data, which defines them when `labels` is None: its label values, sorted); regression: the labels
    are numbers and `labels` is [the label column]."""
    data = config.data.settings
    rows = read_tsv(task_file(config, spec), tuple(data.text_columns), data.label_column)
    if regression:
        try:
            targets = np.array([float(v) for v in rows.labels], dtype=np.float32)
        except ValueError:
            bad = next(n for n, v in enumerate(rows.labels, start=2) if not _is_number(v))
            raise DataError(f"{rows.path}:{bad}: label {rows.labels[bad - 2]!r} is not a number (finetune.task="
                            f"regression)") from None
        names = labels or [rows.label_column]
    else:
        names = labels if labels is not None else sorted(set(rows.labels))
        if labels is None and len(names) < 2:
            raise DataError(f"{rows.path}: one label value ({names[0]}); classification needs at least two")
        index = {c: i for i, c in enumerate(names)}
        unknown = [(n, v) for n, v in enumerate(rows.labels, start=2) if v not in index]
        if unknown:
            n, v = unknown[0]
            raise DataError(f"{rows.path}:{n}: label {v!r} does not occur in the training data (labels: "
                            f"{', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
        targets = np.array([index[v] for v in rows.labels], dtype=np.int64)
    ids = tokenize(config, rows)
    if config.data.limit > 0 and spec == config.data.train:
        ids, targets = ids[:config.data.limit], targets[:config.data.limit]
    return TaskData(dataset=Sentences(ids, targets), collate=SentenceCollate(config.train.seed, regression),
                    labels=list(names), lengths=[len(x) for x in ids])


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def score_classification(outputs: list[Tensor], targets: list, labels: list[str]) -> dict[str, float]:
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score, \
        multiclass_matthews_corrcoef

    logits, target, k = torch.stack(outputs), torch.as_tensor([int(t) for t in targets]), len(labels)
    accuracy = float(multiclass_accuracy(logits, target, num_classes=k, average="micro"))
    if k == 2:  # the F1 of the positive (second) class, as GLUE's MRPC and QQP report it
        f1 = float(multiclass_f1_score(logits, target, num_classes=2, average="none")[1])
    else:
        f1 = float(multiclass_f1_score(logits, target, num_classes=k, average="macro"))
    mcc = float(multiclass_matthews_corrcoef(logits, target, num_classes=k))
    return {"accuracy": accuracy, "f1": f1, "mcc": mcc, "acc_and_f1": (accuracy + f1) / 2}


def score_regression(outputs: list[Tensor], targets: list, labels: list[str]) -> dict[str, float]:
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

    pred, gold = torch.stack(outputs).double(), torch.as_tensor([float(t) for t in targets], dtype=torch.float64)
    pearson, spearman = float(pearson_corrcoef(pred, gold)), float(spearman_corrcoef(pred, gold))
    return {"pearson": pearson, "spearman": spearman, "pearson_and_spearman": (pearson + spearman) / 2}


def step_flops(config: Config, size: float) -> float:
    """An update's FLOPs (train/flops.py's convention) at the mean sequence length `size`: the
    blocks forward and backward; embeddings and the head aside."""
    model = config.model
    T = size or min(128, model.settings.max_positions)
    return 3 * blocks_forward_flops(config.train.batch_size, T, model.embed_dim, model.mlp_ratio, model.depth)


def synthetic_batch(config: Config, regression: bool) -> tuple[dict, list[str], float]:
    """train.batch_size random sequences of min(128, max_positions) tokens, two classes (or values)."""
    settings = config.model.settings
    T = min(128, settings.max_positions)
    g = torch.Generator().manual_seed(0)
    items = [{"index": i, "inputs": torch.randint(4, settings.vocab_size, (T,), generator=g),
              "target": float(i % 5) if regression else i % 2} for i in range(config.train.batch_size)]
    labels = ["label"] if regression else ["0", "1"]
    return SentenceCollate(config.train.seed, regression)(items), labels, float(T)


def prediction_inputs(config: Config, items: list, labels: list[str], regression: bool
                      ) -> tuple[TaskData, list[str], bool]:
    """Examples to predict: a GLUE-format TSV with the training's columns (with its label column:
    scored; also rotten-tomatoes:<split>) or a text file of one example per line (a pair:
    tab-separated); in Python, the texts themselves (strings, or pairs)."""
    if len(items) == 1 and isinstance(items[0], str) and items[0].startswith(PREPARED + ":"):
        items = [str(task_file(config, items[0]))]
    if items and all(isinstance(t, (str, Path)) and Path(t).is_file() for t in items):
        if len(items) == 1 and str(items[0]).endswith(".tsv"):
            path = Path(items[0])
            with open(path, encoding="utf-8", errors="replace") as f:
                header = f.readline().rstrip("\n").split("\t")
            label = config.data.settings.label_column or next((c for c in KNOWN_LABEL_COLUMNS if c in header), "")
            if label in header:
                data = task_data(config, str(path), None if regression else labels, False, regression)
                return data, [f"{path}:{n}" for n in range(2, len(data.dataset) + 2)], True
            texts = read_tsv_texts(path, tuple(config.data.settings.text_columns))
            names = [f"{path}:{n}" for n in range(2, len(texts) + 2)]
        else:
            texts, names = [], []
            for item in items:
                for n, line in enumerate(Path(item).read_text(encoding="utf-8").splitlines(), start=1):
                    if line.strip():
                        texts.append(tuple(line.split("\t")[:2]))
                        names.append(f"{item}:{n}")
    else:
        texts = [(t,) if isinstance(t, str) else tuple(t) for t in items]
        names = [f"item[{n}]" for n in range(len(texts))]
    if not texts or len({len(t) for t in texts}) != 1:
        raise DataError("give examples of one kind: single sentences, or sentence pairs")
    rows = TsvRows(texts, ["0"] * len(texts), Path("inputs"), (), "")
    ids = tokenize(config, rows)
    targets = np.zeros(len(ids), dtype=np.float32 if regression else np.int64)
    return TaskData(dataset=Sentences(ids, targets), collate=SentenceCollate(config.train.seed, regression),
                    labels=list(labels)), names, False


def read_tsv_texts(path: Path, text_columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The text columns of a GLUE-format TSV without a label column."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header = rows[0] if rows else []
    columns = text_columns or next((c for c in KNOWN_TEXT_COLUMNS if all(n in header for n in c)), ())
    if not columns or any(c not in header for c in columns):
        raise DataError(f"{path}: no text column {list(columns) or '(GLUE names)'} in the header {header}; set "
                        f"data.text_columns")
    idx = [header.index(c) for c in columns]
    return [tuple(row[i] for i in idx) for row in rows[1:] if len(row) == len(header)]


def describe_score(value: Tensor, labels: list[str], top: int) -> dict:
    return {"score": round(float(value), 6)}


CLASSIFICATION = Task(
    name="classification",
    data=lambda config, spec, labels, train: task_data(config, spec, labels, train, regression=False),
    build=lambda encoder, config, labels: SentenceClassifier(encoder, len(labels), config, regression=False),
    score=score_classification, metric="accuracy", metrics=("accuracy", "f1", "mcc", "acc_and_f1"),
    step_flops=step_flops, synthetic_batch=lambda config: synthetic_batch(config, regression=False),
    inputs=lambda config, items, labels: prediction_inputs(config, items, labels, regression=False),
    describe=describe_classes,
    data_keys=("tokenizer", "text_columns", "label_column"), export_transformers=export_classifier_hf)

REGRESSION = Task(
    name="regression",
    data=lambda config, spec, labels, train: task_data(config, spec, labels, train, regression=True),
    build=lambda encoder, config, labels: SentenceClassifier(encoder, 1, config, regression=True),
    score=score_regression, metric="pearson", metrics=("pearson", "spearman", "pearson_and_spearman"),
    step_flops=step_flops, synthetic_batch=lambda config: synthetic_batch(config, regression=True),
    inputs=lambda config, items, labels: prediction_inputs(config, items, labels, regression=True),
    describe=describe_score,
    data_keys=("tokenizer", "text_columns", "label_column"), export_transformers=export_classifier_hf)
