"""What train.fsdp leaves on each process of a preset (docs/scaling.md): after one update of one
sample per process (synthetic, on CPU with gloo), the bytes of the student's weights, the teacher's
weights and AdamW's moments that this process holds. Sharded over W processes, each should hold
about 1/W of the whole. Run it with torchrun for W > 1; each run adds its row to --out:

    python benchmarks/fsdp_state.py image-large --out docs/results/fsdp_state.json
    torchrun --nproc_per_node=2 benchmarks/fsdp_state.py image-large --out docs/results/fsdp_state.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

from data2vec2 import load_config
from data2vec2.provenance import results_header
from data2vec2.modalities import MODALITIES
from data2vec2.train import distributed
from data2vec2.train.distributed import local_part
from data2vec2.train.setup import setup_training
from data2vec2.train.step import train_step

MIB = 2**20


def held_bytes(tensors) -> int:
    return sum(local_part(t).numel() * local_part(t).element_size() for t in tensors)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset")
    p.add_argument("--out", type=Path, help="add this run's row to the JSON file here")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = load_config(args.preset, args.overrides + [f"train.batch_size={world}", "train.fsdp=true",
                                                        "train.device=cpu", "train.precision=fp32", "train.threads=1"])
    modality = MODALITIES[config.model.modality]
    training = setup_training(config, modality)
    one = copy.deepcopy(config)
    one.train.batch_size = 1
    batch, _ = modality.synthetic_batch(one)
    start = time.perf_counter()
    train_step(training, [batch], step=0)
    seconds = time.perf_counter() - start
    moments = [t for state in training.optimizer.state.values() for t in state.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0]
    mine = {"student_weights_mib": held_bytes(training.model.student.parameters()) / MIB,
            "teacher_weights_mib": held_bytes(training.model.teacher.parameters()) / MIB,
            "adamw_moments_mib": held_bytes(moments) / MIB}
    mine["total_mib"] = sum(mine.values())
    rows = distributed.all_gather_objects({k: round(v, 1) for k, v in mine.items()})
    if training.dist.is_main:
        full = {k: sum(p.numel() for p in getattr(training.model, part).parameters()) * 4 / MIB
                for k, part in (("student", "student"), ("teacher", "teacher"))}
        row = {"preset": args.preset, "processes": world, "update_s": round(seconds, 1), "per_process": rows,
               "unsharded_total_mib": round(full["student"] * 3 + full["teacher"], 1)}
        print(json.dumps(row))
        if args.out:
            old = json.loads(args.out.read_text()) if args.out.exists() else {"rows": []}
            kept = [r for r in old["rows"] if (r["preset"], r["processes"]) != (args.preset, world)]
            args.out.write_text(json.dumps({"rows": kept + [row], "header": results_header("fp32")}, indent=2) + "\n")
    distributed.barrier()
    distributed.cleanup()


if __name__ == "__main__":
    main()
