"""Prediction throughput of fine-tuned models: `data2vec2 predict`'s path (reading, batching, the
model, the output) in fp32 and bf16, and the model's ONNX export on ONNX Runtime over the same
batches (speech: one clip per call, the export takes clips of one length), items per second, in one
run on one machine.

    data2vec2 export runs/ft-cmp/pretrained --out exports/fmnist
    python benchmarks/predict_speed.py exports/fmnist=fashion-mnist:test exports/rt=rotten-tomatoes:test \\
        exports/ctc=cache/audio/ctc_test.tsv --out docs/results/predict_speed.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from data2vec2.provenance import results_header
from data2vec2.modalities import MODALITIES
from data2vec2.onnx_export import export_finetuned_onnx
from data2vec2.predict import load_model, predict


def onnx_speed(model, inputs: str, batch_size: int) -> dict:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        export_finetuned_onnx(model, folder)
        session = ort.InferenceSession(str(Path(folder) / "model.onnx"))
        data, names, _ = model.task.inputs(model.config, [inputs], model.labels)
        speech = model.objective.encoder.local_encoder.variable_length and model.config.model.modality == "audio"
        size = 1 if speech else batch_size
        batches = [data.collate([data.dataset[i] for i in range(s, min(s + size, len(names)))])["inputs"].numpy()
                   for s in range(0, len(names), size)]  # read first: ONNX Runtime alone is timed
        start = time.perf_counter()
        for x in batches:
            session.run(["scores"], {"inputs": x})
        seconds = time.perf_counter() - start
    return {"items": len(names), "seconds": round(seconds, 3), "per_second": round(len(names) / seconds, 1),
            "batch_size": size, "onnxruntime": ort.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", help="EXPORT=INPUTS: a fine-tuned export and a labelled input set")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = []
    for case in args.cases:
        export, inputs = case.split("=", 1)
        model = load_model(export, MODALITIES)
        row = {"export": export, "inputs": inputs, "task": f"{model.config.model.modality} {model.task.name}",
               "batch_size": model.config.train.batch_size}
        for precision in ("fp32", "bf16"):
            summary = predict(model, [inputs], Path(tempfile.mktemp(suffix=".jsonl")), progress=False,
                              precision=precision)
            row[precision] = {k: summary[k] for k in ("predicted", "seconds", "per_second", "precision")}
            row[precision]["scores"] = summary.get("scores")
        row["onnx"] = onnx_speed(model, inputs, model.config.train.batch_size)
        print(json.dumps(row), flush=True)
        results.append(row)
    out = {"benchmark": "predict throughput", "header": results_header("fp32 and bf16 (each row's)"),
           "results": results}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
