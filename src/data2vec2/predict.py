"""A fine-tuned model you can use: its export, the one loader, and prediction.

    data2vec2 export runs/ft --out exports/ft          # the best checkpoint: encoder + head, labels, preprocessing
    data2vec2 predict exports/ft photos/ --out predictions.jsonl
    data2vec2 predict exports/ctc clips/ --lm lm.arpa              # speech: beam search with a word LM
    model = data2vec2.load_model("exports/ft"); model.predict(["a.png", "b.png"])

An export of a fine-tuning run (`FORMAT`) holds what prediction needs and nothing that training
needs: `model.safetensors` (the task's objective: encoder and head, the weights of the run's best
checkpoint), `config.json` (the format, the model config, the modality's data keys: the
preprocessing, the task, its labels in order) and the files a data key names (text: the
tokenizer). The task of the modality (`modality.Task`) reads the inputs, batches them and turns
each output into a prediction; labelled inputs are also scored, with the fine-tuning's own metrics.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from . import __version__
from .config import Config, config_to_dict
from .errors import DataError, TrainingError
from .export import _saved_config, write_json, write_safetensors
from .model import build_encoder
from .train.checkpoint import load_checkpoint

if TYPE_CHECKING:
    from .modality import Modality, Task

FORMAT = "data2vec2-finetuned"


class FinetunedModel:
    """A fine-tuned objective (eval mode) with its config, task and labels.

        predictions = model.predict(items)     # images / waveforms / texts, or paths: one dict each
        features = model.embed(inputs)         # the encoder's pooled features, as Encoder.embed
    """

    def __init__(self, objective: nn.Module, config: Config, modality: "Modality", labels: list[str]):
        self.objective, self.config, self.modality, self.labels = objective.eval(), config, modality, labels
        self.task: "Task" = modality.tasks[config.finetune.task]

    @property
    def encoder(self) -> nn.Module:
        return self.objective.encoder

    def embed(self, inputs: torch.Tensor, pool: str | None = None) -> torch.Tensor:
        return self.encoder.embed(inputs, pool)

    def use_language_model(self, lm: str | Path, **options) -> "FinetunedModel":
        """Decode with the language model file `lm` from now on (speech recognition: a word n-gram
        model, beam search; options: lexicon, beam, lm_weight, word_score)."""
        if not hasattr(self.objective, "use_language_model"):
            raise DataError(f"--lm: this model's task ({self.config.model.modality} {self.task.name}) does not "
                            f"decode with a language model")
        self.objective.use_language_model(lm, **options)
        return self

    def predict(self, items: list, batch_size: int | None = None, top: int = 5) -> list[dict]:
        """One prediction per item (in order): label and probability (and the `top` most likely),
        a transcript, or a score. Items: what the task's `inputs` reads (paths, arrays, texts)."""
        data, names, _ = self.task.inputs(self.config, list(items), self.labels)
        return [p for p, _, _ in self.stream(data, names, batch_size, top)]

    @torch.no_grad()
    def stream(self, data, names: list[str], batch_size: int | None = None, top: int = 5, *,
               device: torch.device | None = None, autocast=None, workers: int = 0
               ) -> Iterator[tuple[dict | None, Any, Any]]:
        """(prediction, output, target) per sample in order, batch by batch; (None, error, None)
        for an unreadable sample. Batches are cut in the samples' order, `batch_size` each (the
        run's train.batch_size by default: a padded speech batch's outputs depend a little on its
        company, and the fine-tuning's evaluation batches so)."""
        from .train.step import on_device

        device = device or next(self.objective.parameters()).device
        size = batch_size or self.config.train.batch_size
        batches = [list(range(i, min(i + size, len(data.dataset)))) for i in range(0, len(data.dataset), size)]
        loader = torch.utils.data.DataLoader(data.dataset, batch_sampler=batches, collate_fn=_Each(data.collate),
                                             num_workers=workers)
        for items, batch in loader:
            errors = {s["index"]: s["error"] for s in items if "error" in s}
            outputs, targets = [], []
            if batch is not None:
                with autocast() if autocast is not None else contextlib.nullcontext():
                    outputs = self.objective.predict(on_device(batch, device))
                targets = list(batch["target"])
            done = iter(zip(outputs, targets))
            for s in items:
                if s["index"] in errors:
                    yield None, errors[s["index"]], None
                    continue
                output, target = next(done)
                yield {"input": names[s["index"]], **self.task.describe(output, self.labels, top)}, output, target


def describe_classes(logits: torch.Tensor, labels: list[str], top: int) -> dict:
    """A classifier's prediction: the most likely label, its probability, the `top` most likely."""
    probs = torch.softmax(logits.float(), dim=-1)
    p, i = probs.topk(min(top, len(labels)))
    return {"label": labels[int(i[0])], "probability": round(float(p[0]), 6),
            "top": [[labels[int(j)], round(float(q), 6)] for q, j in zip(p, i)]}


def expand_paths(items: list, find: Callable[[Path], list[Path]], kind: str) -> list[tuple[str, Any]]:
    """(name, path (a string) or in-memory sample) per input: a folder gives its files (`find`, recursive), a
    .txt or .lst file one path per line (relative to its folder), any other path itself, an
    in-memory sample itself (named item[i])."""
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, (str, Path)):
            out.append((f"item[{n}]", item))
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            out += [(name, name) for name in map(str, find(path))]  # (one string per file: lists can be long)
        elif path.suffix.lower() in (".txt", ".lst") and path.is_file():
            for k, line in enumerate(path.read_text().splitlines(), start=1):
                if line.strip():
                    listed = (path.parent / line.strip()).expanduser()
                    if not listed.exists():
                        raise DataError(f"{path}:{k}: {kind} file {listed} does not exist")
                    out.append((str(listed), str(listed)))
        elif path.exists():
            out.append((str(path), str(path)))
        else:
            raise DataError(f"{item}: no such {kind} file or folder")
    if not out:
        raise DataError(f"no {kind} inputs in {', '.join(map(str, items))}")
    return out


class _Each:
    """A collate that keeps the items (to know which were unreadable) beside the batch of the
    readable ones (None when there are none)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items: list[dict]) -> tuple[list[dict], dict | None]:
        good = [s for s in items if "error" not in s]
        light = [{"index": s["index"], **({"error": s["error"]} if "error" in s else {})} for s in items]
        return light, (self.collate(good) if good else None)


def export_data_keys(config: Config, task: "Task", out: Path) -> dict:
    """The data keys prediction reads (Task.data_keys) for an export's config.json; the files they
    name (the tokenizer) are copied into `out`, the key then naming the copy."""
    data = {}
    for key in task.data_keys:
        value = config.data.key(key)
        if isinstance(value, str) and value and Path(value).is_file():
            shutil.copyfile(value, out / Path(value).name)
            value = Path(value).name
        data[key] = list(value) if isinstance(value, tuple) else value
    return data


def write_model(model: nn.Module, config: Config, task: "Task", labels: list[str], out: Path, source: str) -> Path:
    """The export of a fine-tuned objective: model.safetensors, config.json (with the data keys that
    prediction reads) and the files those keys name."""
    out.mkdir(parents=True, exist_ok=True)
    data = export_data_keys(config, task, out)
    write_safetensors(model.state_dict(), out / "model.safetensors", {"format": FORMAT})
    write_json(out / "config.json", {
        "format": FORMAT, "version": __version__, "model": config_to_dict(config.model), "data": data,
        "finetune": {"task": config.finetune.task, "metric": config.finetune.metric}, "labels": list(labels),
        "train": {"batch_size": config.train.batch_size}, "source": source})
    return out


def is_finetuned(path: str | Path) -> bool:
    """Whether `path` is a fine-tuned export, a fine-tuning run folder or one of its checkpoints
    (judged from its config, without loading weights)."""
    path = Path(path)
    if (path / "config.json").exists():
        try:
            return json.loads((path / "config.json").read_text()).get("format") == FORMAT
        except (OSError, json.JSONDecodeError):
            return False
    config_file = path / "config.yaml" if path.is_dir() else path.parent.parent / "config.yaml"
    try:
        import yaml

        saved = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
    except (OSError, yaml.YAMLError):
        return False
    return bool(((saved or {}).get("finetune") or {}).get("task"))


def load_model(path: str | Path, modalities: Mapping[str, "Modality"]) -> FinetunedModel:
    """The fine-tuned model of an export (`data2vec2 export` of a fine-tuning run), a fine-tuning
    run folder (its best checkpoint, else its last) or a fine-tuning checkpoint file."""
    path = Path(path)
    if (path / "config.json").exists():
        return _load_export(path, modalities)
    if path.is_dir():
        best = path / "checkpoints" / "best.json"
        step = json.loads(best.read_text())["step"] if best.exists() else None
        checkpoint = path / "checkpoints" / (f"step_{step:09d}.pt" if step is not None else "last.pt")
        if step is not None and not checkpoint.exists():
            checkpoint = path / "checkpoints" / "last.pt"
    else:
        checkpoint = path
    if not checkpoint.exists():
        if (checkpoint.parent / checkpoint.stem).is_dir():
            raise DataError(f"{checkpoint.parent / checkpoint.stem}: a sharded (train.fsdp) checkpoint; load_model and "
                            f"export read unsharded ones (resume the run without train.fsdp to write one)")
        raise DataError(f"{path}: not a fine-tuned export (config.json), a fine-tuning run folder or checkpoint")
    try:
        state = load_checkpoint(checkpoint)
    except TrainingError as e:
        raise DataError(str(e)) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "task" not in state:
        what = "a pre-training checkpoint (data2vec2 load_encoder reads it)" if "student" in (state or {}) else \
            "not a fine-tuning checkpoint"
        raise DataError(f"{checkpoint}: {what}; load_model and predict need a fine-tuned model")
    config = _saved_config(state["config"], modalities, checkpoint)
    return _assemble(config, modalities, state["task"]["labels"], state["model"], checkpoint)


def _assemble(config: Config, modalities: Mapping[str, "Modality"], labels: list[str], state: dict,
              source: Path) -> FinetunedModel:
    modality = modalities[config.model.modality]
    task = modality.tasks[config.finetune.task]
    objective = task.build(build_encoder(config.model, modality), config, labels)
    expected = {k: tuple(v.shape) for k, v in objective.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    if expected != given:
        diff = sorted(set(expected.items()) ^ set(given.items()))[:4]
        raise DataError(f"{source} does not match its config (first differences: {diff})")
    objective.load_state_dict(state)
    return FinetunedModel(objective, config, modality, list(labels))


def _load_export(folder: Path, modalities: Mapping[str, "Modality"]) -> FinetunedModel:
    from .export import _read_json

    meta = _read_json(folder / "config.json")
    if meta.get("format") != FORMAT:
        raise DataError(f"{folder}: an exported encoder, not a fine-tuned model (data2vec2 load_encoder reads it; "
                        f"load_model and predict need the export of a fine-tuning run)")
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise DataError(f"{weights} not found: expected a fine-tuned export folder (data2vec2 export)")
    data = dict(meta.get("data") or {})
    for key, value in data.items():  # files the export carries (the tokenizer): relative to it
        if isinstance(value, str) and value and (folder / value).is_file():
            data[key] = str(folder / value)
    values = {"model": meta.get("model"), "data": data, "finetune": meta.get("finetune"),
              "train": meta.get("train") or {}}
    config = _saved_config(values, modalities, folder / "config.json")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise DataError(f"cannot read {weights}: {e}") from None
    return _assemble(config, modalities, list(meta.get("labels") or []), state, weights)


def predict(model: FinetunedModel, inputs: list[str], out: Path | None, *, batch_size: int | None = None,
            top: int = 5, on_bad_file: str = "stop", progress: bool = True, device: str = "cpu",
            precision: str = "auto", workers: int = 0) -> dict:
    """Predictions for `inputs` (files, folders, lists, manifests, TSVs: the task's `inputs`), one JSON
    line each in their order, written to `out` (or printed). Labelled inputs are scored as the
    fine-tuning scores them. Returns the summary: counts, seconds, the scores."""
    from tqdm import tqdm

    from .train.setup import pick_device, pick_dtype

    dev = pick_device(device)
    dtype = pick_dtype(precision, dev)
    model.objective.to(dev)
    data, names, labelled = model.task.inputs(model.config, inputs, model.labels)

    def autocast():
        return torch.autocast(dev.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()

    sink = open(out, "w") if out is not None else sys.stdout
    outputs, targets, done, skipped, start = [], [], 0, [], time.perf_counter()
    try:
        bar = tqdm(total=len(names), desc="predict", disable=not progress or out is None, file=sys.stderr,
                   dynamic_ncols=True)
        for prediction, output, target in model.stream(data, names, batch_size, top, device=dev, autocast=autocast,
                                                       workers=workers):
            bar.update(1)
            if prediction is None:
                if on_bad_file == "stop":
                    raise DataError(f"{output} (--on-bad-file stop; give --on-bad-file skip to go on without it)")
                skipped.append(output)
                print(f"[data2vec2] skipped: {output}", file=sys.stderr, flush=True)
                continue
            sink.write(json.dumps(prediction) + "\n")
            done += 1
            if labelled:
                outputs.append(output)
                targets.append(target)
        bar.close()
    finally:
        if out is not None:
            sink.close()
    seconds = time.perf_counter() - start
    summary = {"predicted": done, "skipped": len(skipped), "seconds": round(seconds, 3),
               "per_second": round(done / seconds, 2) if seconds > 0 else None,
               "precision": str(dtype).replace("torch.", ""), "device": str(dev)}
    if hasattr(model.objective, "decoding"):
        summary["decoding"] = model.objective.decoding
    if labelled and outputs:
        summary["scores"] = model.task.score(outputs, targets, model.labels)
    return summary
