"""Memory of a fine-tuning run does not grow with the data: `data2vec2 finetune image-cls-tiny` on a
folder of N generated 28 x 28 images in 10 classes, for a few updates, in a process of its own that
reports, when it ends, its peak resident memory (ru_maxrss) and the largest of its DataLoader
workers'; N = 1,000 and 20,000 by default. The images are decoded in the workers, one batch at a
time, never held together.

    python benchmarks/finetune_memory.py --init runs/demo/export --out docs/results/finetune_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from data2vec2.provenance import auto_precision, results_header

RUN = """
import resource, sys
import data2vec2
from data2vec2.finetune import finetune, load_finetune_config
config = load_finetune_config("image-cls-tiny", sys.argv[2:], data2vec2.MODALITIES)
finetune(config, sys.argv[1], data2vec2.MODALITIES["image"], progress=False)
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def write_images(folder: Path, n: int, classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"class{i % classes}" / f"{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="an image-tiny run folder or export")
    parser.add_argument("--sizes", nargs="+", type=int, default=[1000, 20000])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "images"
            write_images(folder, n)
            overrides = [f"finetune.init={args.init}", f"data.train={folder}", f"train.max_steps={args.updates}",
                         "train.time_budget_s=0", f"finetune.eval_every={args.updates}", "finetune.valid_size=200",
                         "finetune.test=[]", "train.batch_size=128"]
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", RUN, str(Path(tmp) / "run"), *overrides], check=True,
                                 capture_output=True, text=True).stdout
            main_kib, worker_kib = map(int, next(ln for ln in out.splitlines() if ln.startswith("RSS")).split()[1:])
            rows.append({"images": n, "peak_rss_mb": round(main_kib / 1024), "worker_peak_rss_mb": round(worker_kib / 1024),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "finetune_memory", "header": results_header(auto_precision()), "updates": args.updates,
              "rows": rows,
              "peak_ratio_largest_to_smallest": round(rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3),
              "worker_peak_ratio": round(rows[-1]["worker_peak_rss_mb"] / rows[0]["worker_peak_rss_mb"], 3)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({"peak_ratio": result["peak_ratio_largest_to_smallest"]}))


if __name__ == "__main__":
    main()
