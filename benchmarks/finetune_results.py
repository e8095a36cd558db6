"""Collect a `data2vec2 finetune PRESET --init ... --compare [--seeds ...] --run-dir RUN` comparison into
one results file: the comparison (means, spreads and gains over the seeds), and for every run of the
pre-trained and the random init, every score of the best checkpoint on every split, the best step,
the updates made and their seconds, the median samples/s and MFU of the logged updates, and the
machine, versions, date and command each run recorded in its results.json.

    data2vec2 finetune image-cls-tiny --init runs/demo/export --compare --run-dir runs/ft-cmp
    python benchmarks/finetune_results.py runs/ft-cmp --out docs/results/finetune-image-fashion-mnist.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from data2vec2.provenance import HEADER_KEYS


def summary(run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    steady = train[1:] or train  # (the first logged update includes the start-up)
    config = (run / "config.yaml").read_text()
    return {**results, "updates": train[-1]["step"], "train_seconds": round(train[-1]["elapsed_s"], 1),
            "samples_per_s_median": round(statistics.median(r["samples_per_s"] for r in steady), 1),
            "mfu_median": round(statistics.median(r["mfu"] for r in steady), 4),
            "valid_curve": [{"step": r["step"], **{k[6:]: v for k, v in r.items() if k.startswith("valid_")}}
                            for r in rows if any(k.startswith("valid_") for k in r)],
            "loss_last": train[-1]["loss"], "config_yaml": config}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the --run-dir of a --compare fine-tuning")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    comparison = json.loads((args.run / "comparison.json").read_text())
    runs = {}
    for name in ("pretrained", "random_init"):
        if (args.run / name / "results.json").exists():
            runs[name] = summary(args.run / name)
        else:  # --seeds / --lrs: one folder per run
            runs[name] = {run.name: summary(run) for run in sorted((args.run / name).iterdir())
                          if (run / "results.json").exists()}
    # the header: the machine, code, date and command of the (first) pre-trained init's run
    first = runs["pretrained"] if "date" in runs["pretrained"] else next(iter(runs["pretrained"].values()))
    header = {k: first[k] for k in HEADER_KEYS + ("cpu_flags", "gpu") if k in first}
    out = {"benchmark": "finetune", "header": header, "collected": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "collect_command": shlex.join(["python"] + sys.argv), "comparison": comparison,
           "metric": comparison["metric"],
           "gain": comparison["gain"], **runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({"gain": out["gain"], **{name: comparison[name] for name in runs}}))


if __name__ == "__main__":
    main()
