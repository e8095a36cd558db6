"""Memory of `data2vec2 predict` does not grow with the number of inputs: a fine-tuned image model
predicts a folder of N generated 28 x 28 images (unlabelled: loose files), in a process of its own
that reports, when it ends, its peak resident memory (ru_maxrss) and the largest of its DataLoader
workers'; N = 1,000 and 20,000 by default. Inputs are listed, read and predicted batch by batch, and
each prediction is written as it comes.

    data2vec2 export runs/ft-cmp/pretrained --out exports/fmnist
    python benchmarks/predict_memory.py exports/fmnist --out docs/results/predict_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from data2vec2.provenance import auto_precision, results_header

RUN = """
import resource, sys
from pathlib import Path
import data2vec2
from data2vec2.predict import load_model, predict
summary = predict(load_model(sys.argv[1], data2vec2.MODALITIES), [sys.argv[2]], Path(sys.argv[3]), progress=False,
                  workers=2)
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
      summary["predicted"], summary["per_second"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a fine-tuned image export (data2vec2 export of a fine-tuning run)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"images{n}"
            folder.mkdir()
            rng = np.random.default_rng(0)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
            out = subprocess.run([sys.executable, "-c", RUN, args.model, str(folder), str(Path(tmp) / "p.jsonl")],
                                 capture_output=True, text=True, check=True)
            rss, workers, predicted, rate = out.stdout.split("RSS", 1)[1].split()
            rows.append({"images": n, "predicted": int(predicted), "peak_rss_mb": round(int(rss) / 1024, 1),
                         "worker_peak_rss_mb": round(int(workers) / 1024, 1), "images_per_s": float(rate)})
            print(json.dumps(rows[-1]), flush=True)
    first, last = rows[0]["peak_rss_mb"], rows[-1]["peak_rss_mb"]
    result = {"benchmark": "predict peak memory against the number of inputs",
              "header": results_header(auto_precision()), "model": args.model, "rows": rows, "growth": round(last / first - 1, 4)}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"peak RSS {first} MB for {rows[0]['images']} images, {last} MB for {rows[-1]['images']} "
          f"({result['growth']:+.1%})")


if __name__ == "__main__":
    main()
