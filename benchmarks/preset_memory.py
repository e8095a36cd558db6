"""What each large preset's training state needs in memory before any activation (docs/scaling.md):
the student (fp32 weights, fp32 gradients, AdamW's two fp32 moments: 16 bytes a parameter) and the
EMA teacher (fp32 weights: 4 bytes a parameter). The models are built on the meta device, so nothing
is allocated. Activations come on top and grow with the batch and the number of masks M; measure
them with `data2vec2 benchmark PRESET train.batch_size=N` (peak_memory_mb) on the GPU.

    python benchmarks/preset_memory.py --out docs/results/preset_memory.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from data2vec2 import load_config
from data2vec2.provenance import results_header
from data2vec2.modalities import MODALITIES
from data2vec2.objectives import build_model

PRESETS = ("image-base", "image-large", "image-huge", "audio-base", "audio-large", "text-base", "text-large")
STUDENT_BYTES, TEACHER_BYTES = 4 + 4 + 8, 4  # weight + gradient + AdamW's exp_avg and exp_avg_sq; EMA weight


def preset_state(name: str) -> dict:
    config = load_config(name)
    with torch.device("meta"):
        model = build_model(config, MODALITIES[config.model.modality])
    student = sum(p.numel() for p in model.student.parameters())
    teacher = sum(p.numel() for p in model.teacher.parameters())
    return {"preset": name, "student_params_m": round(student / 1e6, 1), "teacher_params_m": round(teacher / 1e6, 1),
            "state_gib": round((STUDENT_BYTES * student + TEACHER_BYTES * teacher) / 2**30, 2),
            "global_batch": config.train.batch_size, "num_masks": config.masking.num_masks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write the rows and the versions as JSON here")
    args = p.parse_args()
    rows = [preset_state(name) for name in PRESETS]
    for r in rows:
        print(f"{r['preset']:12s} student {r['student_params_m']:6.1f} M  teacher {r['teacher_params_m']:6.1f} M  "
              f"weights + gradients + AdamW + teacher {r['state_gib']:5.2f} GiB")
    if args.out:
        args.out.write_text(json.dumps({"presets": rows, "bytes_per_student_param": STUDENT_BYTES,
                                        "bytes_per_teacher_param": TEACHER_BYTES,
                                        "header": results_header("fp32 (counted, not run)")}, indent=2)
                            + "\n")


if __name__ == "__main__":
    main()
