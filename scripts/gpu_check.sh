#!/usr/bin/env bash
# The project's one prepared GPU check: one command, run from the repository root on a machine
# with one NVIDIA GPU and its own PyTorch (CUDA). It installs nothing and needs no internet and no
# prepared data: it runs the package from this source tree (PYTHONPATH=src), so the package need
# not be installed there; it needs torch, numpy, pyyaml, pillow, tqdm and safetensors (what
# `import data2vec2` and `data2vec2 benchmark` import) and says which is missing if one is.
#
#   bash scripts/gpu_check.sh                 # on the GPU machine: at most 8 minutes on an H100/H200
#   bash scripts/gpu_check.sh --dry-run       # the same steps on CPU with the tiny presets (< 1 minute)
#   options: --out FILE (where the JSON lines go); PYTHON=/path/to/python (default python3)
#
# Steps (each under a time limit; a failed or timed-out step is recorded as a JSON line and the
# check goes on, so one failure does not lose the other numbers):
#   1. `data2vec2 benchmark` of image-base, audio-base and text-base at a per-GPU batch of their
#      pre-training (below), bf16, --compile off on: step time, samples/s, MFU, peak memory.
#   2. The largest image-base batch that fits in GPU memory: doubling until CUDA runs out of memory.
#   3. Where the host waits for the GPU in one update of image-base and text-base: torch.cuda's sync
#      debug mode names each wait (file:line).
#   4. A 150-update image-base pre-training on generated images: 100 updates (with checkpoints),
#      stopped, then resumed by `data2vec2 pretrain` to 150; from metrics.jsonl, the loss must fall
#      and stay finite, and the resumed run must continue at update 100.
#   5. The same for image-large with FSDP (train.fsdp, its preset's default) on this one GPU: 20
#      updates, stopped at 10, resumed from the sharded (DCP) checkpoint: the code path, not a speed-up.
#
# Output: JSON lines appended to docs/benchmarks/gpu-<GPU name, lower case, spaces -> dashes>.jsonl
# (or --out FILE; a dry run writes to runs/gpu_check_dry/gpu-dry-run.jsonl unless --out is given,
# never into docs/). Every line has "check" (benchmark | benchmark_failed | largest_batch | waits |
# pretrain | pretrain_fsdp | summary), "run" (the UTC start time of this check, shared by its
# lines), "dry_run", "commit" and "status" (ok | failed). Exit status: 0 when every step passed, 1
# when one failed (its line says why), 2 for a bad argument, 3 when a Python module is missing, 4
# when no CUDA GPU is visible.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) [ $# -ge 2 ] || { echo "gpu_check: --out needs a file" >&2; exit 2; }; OUT=$2; shift ;;
        --out=*) OUT=${1#--out=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$OUT" ] && [ "${OUT#/}" = "$OUT" ]; then OUT="$PWD/$OUT"; fi  # relative to the caller's folder
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

PYTHON=${PYTHON:-python3}
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
for tool in timeout "$PYTHON"; do
    command -v "$tool" >/dev/null || { echo "gpu_check: '$tool' not found" >&2; exit 3; }
done

START=$(date +%s)
RUN_ID=$(date -u +%Y-%m-%dT%H:%M:%SZ)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ------------------------------------------------------------------------------------------------
# Settings of the two modes. In the GPU mode each step has a time limit (seconds) and no step may run
# past DEADLINE, 470 s (its limit shrinks to what is left): the check ends within 8 min.
if [ "$DRY_RUN" = 1 ]; then
    DEADLINE=300
    PRECISION=auto         # bf16 where this CPU is fast at it, fp32 elsewhere (keeps the dry run short)
    COMPILES="off"         # torch.compile takes minutes on a CPU
    BENCH_STEPS=2
    DEVICE=train.device=cpu
    # preset | overrides | time limit
    BENCH=("image-tiny|train.batch_size=4|60"
           "audio-tiny|train.batch_size=2 data.max_samples=16000|60"
           "text-tiny|train.batch_size=4|60")
    SEARCH_PRESET=image-tiny; SEARCH_KNOWN=4; SEARCH_CAP=8; SEARCH_LIMIT=60
    IMAGES=32; IMAGE_SIZE=32
    PRETRAIN_PRESET=image-tiny; PRETRAIN_STOP=3; PRETRAIN_TOTAL=6
    PRETRAIN_OVERRIDES="train.batch_size=8 optim.warmup_steps=2 train.checkpoint_every=3 train.log_every=1
                        data.num_workers=0 train.precision=$PRECISION train.time_budget_s=0"
    FSDP_PRESET=image-tiny; FSDP_STOP=2; FSDP_TOTAL=4
    FSDP_OVERRIDES="train.fsdp=true train.batch_size=8 optim.warmup_steps=1 train.checkpoint_every=2 train.log_every=1
                    data.num_workers=0 train.precision=$PRECISION train.time_budget_s=0"
    LIMIT_CHECK=60; LIMIT_IMAGES=30; LIMIT_LEG1=60; LIMIT_LEG2=60; LIMIT_FSDP1=60; LIMIT_FSDP2=60
    WAITS_PRESETS="image-tiny text-tiny"; WAITS_OVERRIDES="train.batch_size=2"; LIMIT_WAITS=60
else
    DEADLINE=470
    PRECISION=bf16
    COMPILES="off on"
    BENCH_STEPS=5
    DEVICE=train.device=cuda
    # Per-GPU batches: each preset's global batch (what one update sees) split over one node of 8 GPUs,
    # the setup docs/image.md runs image-base on (torchrun --nproc_per_node=8):
    # - image-base: 512 images / 8 = 64 per GPU (x 16 masked clones: 1,024 student samples per GPU); also
    #   the micro-batch of docs/image.md's 4 GPUs x 2 accumulation steps. The reference YAML ran 16 per GPU
    #   on 16 GPUs (256 in all; the preset's 512 follows the paper's update counts, docs/image.md).
    # - audio-base: 64 utterances / 8 = 8 per GPU, the reference's 8 GPUs too. The reference batches by
    #   length, 1.0M samples (62.5 s of 16 kHz audio) per GPU: here 8 crops of 125,000 samples (7.8 s).
    # - text-base: 64 blocks of 512 tokens / 8 = 8 blocks per GPU (the reference: 4 per GPU on 16 GPUs).
    BENCH=("image-base|train.batch_size=64|85"
           "audio-base|train.batch_size=8 data.max_samples=125000|70"
           "text-base|train.batch_size=8|45")
    # step 2 doubles from step 1's image-base batch (SEARCH_KNOWN, which ran there)
    SEARCH_PRESET=image-base; SEARCH_KNOWN=64; SEARCH_CAP=4096; SEARCH_LIMIT=35
    IMAGES=320; IMAGE_SIZE=224  # 10 batches of 32 per epoch, at the preset's 224 x 224
    PRETRAIN_PRESET=image-base; PRETRAIN_STOP=100; PRETRAIN_TOTAL=150
    # A check of training, not of speed: batch 32 (half of step 1's) so that both legs fit their time
    # limits. The preset's peak LR, 1e-3, is for 512 images; at 32 it is scaled by sqrt(32 / 512) (Adam)
    # to 2.5e-4, with a warmup of 10 % of the 150 updates instead of the preset's 50,040.
    PRETRAIN_OVERRIDES="train.batch_size=32 optim.lr=2.5e-4 optim.warmup_steps=15 train.checkpoint_every=50
                        train.log_every=1 data.num_workers=8 train.precision=$PRECISION"
    # image-large (FSDP by its preset) at batch 16: its peak LR, 4e-4 for 512 images, scaled by sqrt(16 / 512)
    FSDP_PRESET=image-large; FSDP_STOP=10; FSDP_TOTAL=20
    FSDP_OVERRIDES="train.fsdp=true train.batch_size=16 optim.lr=7e-5 optim.warmup_steps=4 train.checkpoint_every=10
                    train.log_every=1 data.num_workers=8 train.precision=$PRECISION"
    # step 5's legs build a 300M-parameter student and teacher and write (then read) 4.7 GB of shards
    LIMIT_CHECK=15; LIMIT_IMAGES=10; LIMIT_LEG1=50; LIMIT_LEG2=30; LIMIT_FSDP1=50; LIMIT_FSDP2=45
    WAITS_PRESETS="image-base text-base"; WAITS_OVERRIDES="train.batch_size=8"; LIMIT_WAITS=17
    # the limits: 15 (modules) + 85 + 70 + 45 (step 1) + 35 (step 2) + 2 x 17 (step 3) + 10 + 50 + 30 (step 4)
    # + 50 + 45 (step 5) = 469 < DEADLINE
fi

# ------------------------------------------------------------------------------------------------
# A helper in Python that writes the JSON lines (json only; `images` uses numpy and Pillow).
# Its fields: key=text, key:=JSON or key+=text (appended to a list).
cat >"$WORK/helper.py" <<'PY'
import json
import math
import re
import sys
from pathlib import Path


def fields(args):
    """key=text, key:=JSON, key+=text (appended to the list `key`)."""
    out = {}
    for a in args:
        key, _, text = a.partition("=")
        if key.endswith(":"):
            out[key[:-1]] = json.loads(text)
        elif key.endswith("+"):
            out.setdefault(key[:-1], []).append(text)
        else:
            out[key] = text
    return out


def append(out, row):
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    shown = {k: v for k, v in row.items() if k not in ("run", "commit", "overrides", "cpu_flags", "tried", "curve")}
    print("[gpu_check] " + json.dumps(shown), flush=True)


def jsonl(path):
    """The JSON objects of a file of lines; none if it is missing; a line torn by a kill is skipped."""
    path, rows = Path(path), []
    for t in (path.read_text(errors="replace").splitlines() if path.exists() else []):
        try:
            rows.append(json.loads(t))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict)]


def line(out, *args):
    """line OUT [--from FILE] FIELD ...: one line of the fields, or each line of FILE with them."""
    args = list(args)
    if args[:1] == ["--from"]:
        extra = fields(args[2:])
        for row in jsonl(args[1]):
            append(out, {**extra, **row})
    else:
        append(out, fields(args))


def last_line(log):
    lines = [t for t in Path(log).read_text(errors="replace").splitlines() if t.strip()] if Path(log).exists() else []
    return lines[-1][-300:] if lines else ""


def images(folder, n, size, seed=0):
    """n smooth RGB images: a linear gradient in a random direction under 2-5 soft-edged ellipses."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n, size = int(n), int(size)
    rng = np.random.default_rng(int(seed))
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    for i in range(n):
        angle = rng.uniform(0, 2 * math.pi)
        t = math.cos(angle) * xx + math.sin(angle) * yy
        t = (t - t.min()) / (t.max() - t.min())
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = c0 + t[..., None] * (c1 - c0)
        for _ in range(int(rng.integers(2, 6))):
            cx, cy = rng.uniform(0, 1, 2)
            rx, ry = rng.uniform(0.08, 0.35, 2)
            d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
            alpha = (1 / (1 + np.exp(np.clip((d - 1) * 6, -30, 30))))[..., None]
            img = img * (1 - alpha) + alpha * rng.uniform(0, 255, 3)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"img{i:04d}.png", compress_level=1)
    print(f"[gpu_check] {n} images of {size} x {size} in {folder}", flush=True)


def search(out, trials_file, *args):
    """The largest_batch line from the trials of the search (batch, status, note, benchmark file)."""
    tried, largest, row = [], 0, {}
    for t in Path(trials_file).read_text().splitlines():
        batch, status, note, result = t.split("\t")
        entry = {"batch": int(batch), "status": status, **({"note": note} if note else {})}
        if status == "ran":
            largest = max(largest, int(batch))
            rows = [r for r in jsonl(result) if r.get("compile") is False]  # step 1 also ran compiled
            if rows:
                row = rows[-1]
                entry.update({k: row[k] for k in ("step_s", "samples_per_s", "peak_memory_mb") if k in row})
        tried.append(entry)
    fit = [e for e in tried if e["batch"] == largest]
    append(out, {**fields(args), "largest_batch": largest,
                 "peak_memory_mb": fit[0].get("peak_memory_mb") if fit else None,
                 "stopped_by": tried[-1]["status"] if tried else "nothing tried", "gpu": row.get("gpu"),
                 "device": row.get("device"), "tried": tried, "status": "ok" if largest > 0 else "failed"})


def pretrain(out, run_dir, stop, total, leg1_rc, leg2_rc, leg1_log, leg2_log, *args):
    """The pretrain line: from metrics.jsonl, the checkpoints and the logs of the two legs."""
    run_dir, stop, total = Path(run_dir), int(stop), int(total)
    problems = []
    for leg, rc, log in (("first leg", leg1_rc, leg1_log), ("resumed leg", leg2_rc, leg2_log)):
        if rc in ("124", "137"):
            problems.append(f"{leg}: timed out")
        elif rc != "0":
            why = "not run (the first leg failed)" if rc == "skipped" else f"exit {rc}: {last_line(log)}"
            problems.append(f"{leg}: {why}")
    rows = jsonl(run_dir / "metrics.jsonl")
    steps = [r.get("step") for r in rows]
    losses = [r.get("loss") for r in rows]
    ok = [isinstance(x, (int, float)) and math.isfinite(x) for x in losses]
    finite = bool(losses) and all(ok)
    k = max(2, len(losses) // 5)  # compare the means of the first and the last fifth
    first = last = None
    if finite and len(losses) >= 2 * k:
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    falls = first is not None and last < first
    log2 = Path(leg2_log).read_text(errors="replace") if Path(leg2_log).exists() else ""
    m = re.search(r"resuming at update (\d+)", log2)
    resumed = int(m.group(1)) if m else None
    folder = run_dir / "checkpoints"  # files (step_*.pt, last.pt) or, under FSDP, folders (step_*, last)
    checkpoints = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    suffix = "" if "last" in checkpoints else ".pt"
    if steps != list(range(1, total + 1)):
        problems.append(f"metrics.jsonl logs {len(steps)} updates ({steps[:2]}...{steps[-2:]}), not 1..{total}")
    if not finite:
        bad = [r.get("step") for r, good in zip(rows, ok) if not good]
        problems.append(f"loss not finite at updates {bad[:10]}" if bad else "no loss logged")
    elif first is not None and not falls:
        problems.append(f"the loss did not fall: mean of the first {k} updates {first}, of the last {k} {last}")
    if resumed != stop:
        problems.append(f"the second run resumed at update {resumed}, not {stop}")
    if f"step_{total:09d}{suffix}" not in checkpoints or f"last{suffix}" not in checkpoints:
        problems.append(f"checkpoints {checkpoints}: no last{suffix} and step_{total:09d}{suffix}")
    timed = [r for r in rows[len(rows) // 2:] if isinstance(r.get("samples_per_s"), (int, float))]

    def median(xs):
        return sorted(xs)[len(xs) // 2] if xs else None
    append(out, {**fields(args), "updates": len(losses), "stopped_at": stop, "resumed_at": resumed,
                 "loss_first": first, "loss_last": last, "loss_falls": falls, "loss_finite": finite,
                 "samples_per_s": median([r["samples_per_s"] for r in timed]),
                 "mfu": median([r.get("mfu", 0.0) for r in timed]), "checkpoints": checkpoints,
                 "curve": [round(x, 5) if isinstance(x, float) else x for x in losses],
                 "status": "ok" if not problems else "failed", "problems": problems})


def waits(out, preset, overrides, *args):
    """The waits line: where the host waits for the GPU in one update that is not a logging step
    (torch.cuda's sync debug mode warns at each), after a warm-up update, with a pinned batch as the
    DataLoader gives. On a CPU there is no device to wait for: the update only runs."""
    import warnings

    import torch

    import data2vec2
    from data2vec2.modalities import MODALITIES
    from data2vec2.train.setup import setup_training
    from data2vec2.train.step import train_step

    config = data2vec2.load_config(preset, overrides.split())
    modality = MODALITIES[config.model.modality]
    training = setup_training(config, modality)
    batch, _ = modality.synthetic_batch(config)
    cuda = training.device.type == "cuda"
    if cuda:
        batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    train_step(training, [batch], step=0)
    row = {**fields(args), "preset": preset, "overrides": overrides, "device": str(training.device)}
    if not cuda:
        train_step(training, [batch], step=1)
        append(out, {**row, "waits": None, "where": [], "status": "ok"})
        return
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(training, [batch], step=1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    append(out, {**row, "waits": len(where), "where": where, "status": "ok"})


if __name__ == "__main__":
    {"line": line, "images": images, "search": search, "pretrain": pretrain, "waits": waits}[sys.argv[1]](
        *sys.argv[2:])
PY
HELPER=("$PYTHON" "$WORK/helper.py")
D2V=("$PYTHON" -m data2vec2)

# ------------------------------------------------------------------------------------------------
# The modules the package needs, and the GPU.
rc=0
timeout -k 3 "$LIMIT_CHECK" "$PYTHON" - "$DRY_RUN" >"$WORK/check.out" 2>"$WORK/check.err" <<'PY' || rc=$?
import importlib
import re
import sys

pip_names = {"yaml": "pyyaml", "PIL": "pillow"}
missing = []
for name in ("torch", "numpy", "yaml", "PIL", "tqdm", "safetensors"):
    try:
        importlib.import_module(name)
    except ImportError as e:
        missing.append(f"{name} (package {pip_names.get(name, name)}: {e})")
if missing:
    print("gpu_check: missing Python module(s): " + "; ".join(missing) + ". This check installs nothing: "
          "install them into this Python, or point PYTHON=... at a Python that has them.", file=sys.stderr)
    sys.exit(3)
try:
    from data2vec2.cli import build_parser

    build_parser()  # imports every modality, as `data2vec2 benchmark` does
except ImportError as e:
    print(f"gpu_check: importing data2vec2 from src/ failed: {e}", file=sys.stderr)
    sys.exit(3)
import torch

if sys.argv[1] == "1":
    print("dry-run", torch.__version__)
elif not torch.cuda.is_available():
    print(f"gpu_check: torch {torch.__version__} sees no CUDA GPU (torch.version.cuda={torch.version.cuda}); "
          "run this on the GPU machine, or with --dry-run to check the script on a CPU", file=sys.stderr)
    sys.exit(4)
else:
    name = torch.cuda.get_device_name()
    print(re.sub(r"[^a-z0-9._-]", "", name.lower().replace(" ", "-")), torch.__version__)
PY
if [ "$rc" != 0 ]; then
    cat "$WORK/check.err" >&2
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "gpu_check: importing torch and data2vec2 took over $LIMIT_CHECK s" >&2
    exit "$rc"
fi
read -r GPU_SLUG TORCH_VERSION <"$WORK/check.out"
if [ -z "$OUT" ]; then
    if [ "$DRY_RUN" = 1 ]; then OUT="$ROOT/runs/gpu_check_dry/gpu-dry-run.jsonl"
    else OUT="$ROOT/docs/benchmarks/gpu-$GPU_SLUG.jsonl"; fi
fi
mkdir -p "$(dirname "$OUT")"
COMMON=("run=$RUN_ID" "dry_run:=$([ "$DRY_RUN" = 1 ] && echo true || echo false)" "commit=$COMMIT")
echo "[gpu_check] $([ "$DRY_RUN" = 1 ] && echo "dry run on CPU" || echo "GPU $GPU_SLUG"), torch $TORCH_VERSION;" \
     "writing $OUT"

FAILED=()
# limit CAP: CAP seconds, or what is left before DEADLINE if that is less (0: less than 10 s left)
limit() {
    local left=$((DEADLINE - ($(date +%s) - START)))
    if [ "$left" -lt 10 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
# run_limited SECONDS LOG CMD...: CMD under a time limit, its output in LOG; returns its status
run_limited() {
    local seconds=$1 log=$2
    shift 2
    if [ "$seconds" = 0 ]; then echo "skipped: the check's time was up" >"$log"; return 124; fi
    timeout -k 3 "$seconds" "$@" >"$log" 2>&1
}
# reason RC LOG SECONDS: one line on why a step failed
reason() {
    case "$1" in
        124|137) if [ "$3" = 0 ]; then echo "skipped: the check's time was up"; else echo "timed out after $3 s"; fi ;;
        *) echo "exit $1: $(grep -v '^[[:space:]]*$' "$2" | tail -n 1 | cut -c1-300)" ;;
    esac
}
last_ok() { tail -n 1 "$OUT" | grep -q '"status": "ok"'; }

# ------------------------------------------------------------------------------------------------
# 1. Step time, samples/s, MFU and peak memory of the base presets.
for spec in "${BENCH[@]}"; do
    IFS='|' read -r preset overrides cap <<<"$spec"
    seconds=$(limit "$cap")
    echo "[gpu_check] 1. benchmark $preset ($overrides; $PRECISION; compile $COMPILES; limit $seconds s)"
    rc=0
    # shellcheck disable=SC2086  # $COMPILES and $overrides are lists of words
    run_limited "$seconds" "$WORK/bench-$preset.log" "${D2V[@]}" benchmark "$preset" --precision "$PRECISION" \
        --compile $COMPILES --steps "$BENCH_STEPS" --out "$WORK/bench-$preset.jsonl" $overrides "$DEVICE" || rc=$?
    "${HELPER[@]}" line "$OUT" --from "$WORK/bench-$preset.jsonl" check=benchmark "${COMMON[@]}" status=ok \
        || FAILED+=("benchmark $preset: its lines could not be recorded")
    if [ "$rc" != 0 ]; then
        # the settings that wrote no line (the benchmark writes each line as soon as it is measured)
        for c in $COMPILES; do
            flag=$([ "$c" = on ] && echo true || echo false)
            if ! grep -q "\"compile\": $flag" "$WORK/bench-$preset.jsonl" 2>/dev/null; then
                "${HELPER[@]}" line "$OUT" check=benchmark_failed "${COMMON[@]}" "preset=$preset" "compile:=$flag" \
                    "overrides=$overrides" status=failed "reason=$(reason "$rc" "$WORK/bench-$preset.log" "$seconds")"
                FAILED+=("benchmark $preset compile $c")
            fi
        done
        tail -n 20 "$WORK/bench-$preset.log" >&2
    fi
done

# ------------------------------------------------------------------------------------------------
# 2. The largest image batch that fits: from step 1's batch (if it ran there), double the batch
# until CUDA is out of memory (or the search's time is out, or SEARCH_CAP is passed).
echo "[gpu_check] 2. largest $SEARCH_PRESET batch (doubling from $SEARCH_KNOWN, up to $SEARCH_CAP)"
search_end=$(( $(date +%s) + $(limit "$SEARCH_LIMIT") ))
: >"$WORK/trials.tsv"
if grep -q '"compile": false' "$WORK/bench-$SEARCH_PRESET.jsonl" 2>/dev/null; then
    printf '%s\tran\tin step 1\t%s\n' "$SEARCH_KNOWN" "$WORK/bench-$SEARCH_PRESET.jsonl" >>"$WORK/trials.tsv"
fi
batch=$((SEARCH_KNOWN * 2))
OOM="out of memory|OutOfMemoryError|ALLOC_FAILED"
while [ "$batch" -le "$SEARCH_CAP" ]; do
    left=$((search_end - $(date +%s)))
    if [ "$left" -lt 10 ]; then
        printf '%s\ttime\tnot tried: the search has %s s\t\n' "$batch" "$SEARCH_LIMIT" >>"$WORK/trials.tsv"
        break
    fi
    rc=0
    run_limited "$left" "$WORK/search-$batch.log" "${D2V[@]}" benchmark "$SEARCH_PRESET" --precision "$PRECISION" \
        --compile off --steps 2 --out "$WORK/search-$batch.jsonl" "train.batch_size=$batch" "$DEVICE" || rc=$?
    if [ "$rc" = 0 ]; then
        printf '%s\tran\t\t%s\n' "$batch" "$WORK/search-$batch.jsonl" >>"$WORK/trials.tsv"
    elif grep -qiE "$OOM" "$WORK/search-$batch.log"; then
        printf '%s\tout_of_memory\t%s\t\n' "$batch" \
            "$(grep -iE -m1 "$OOM" "$WORK/search-$batch.log" | cut -c1-200 | tr '\t' ' ')" >>"$WORK/trials.tsv"
        break
    else
        printf '%s\t%s\t%s\t\n' "$batch" "$(case $rc in 124|137) echo time ;; *) echo error ;; esac)" \
            "$(reason "$rc" "$WORK/search-$batch.log" "$left" | tr '\t' ' ')" >>"$WORK/trials.tsv"
        break
    fi
    batch=$((batch * 2))
done
if [ "$batch" -gt "$SEARCH_CAP" ]; then
    printf '%s\tcap\tnot tried: over SEARCH_CAP=%s\t\n' "$batch" "$SEARCH_CAP" >>"$WORK/trials.tsv"
fi
if ! "${HELPER[@]}" search "$OUT" "$WORK/trials.tsv" check=largest_batch "${COMMON[@]}" "preset=$SEARCH_PRESET" \
        "precision=$PRECISION" "compile:=false" || ! last_ok; then
    FAILED+=("largest batch")
fi

# ------------------------------------------------------------------------------------------------
# 3. Where the host waits for the GPU in one update of image-base and text-base.
echo "[gpu_check] 3. host waits for the device in one update of $WAITS_PRESETS"
for preset in $WAITS_PRESETS; do
    rc=0
    run_limited "$(limit "$LIMIT_WAITS")" "$WORK/waits-$preset.log" "${HELPER[@]}" waits "$OUT" "$preset" \
        "$WAITS_OVERRIDES $DEVICE train.precision=$PRECISION" check=waits "${COMMON[@]}" || rc=$?
    if [ "$rc" != 0 ]; then
        "${HELPER[@]}" line "$OUT" check=waits "${COMMON[@]}" "preset=$preset" status=failed \
            "reason=$(reason "$rc" "$WORK/waits-$preset.log" "$LIMIT_WAITS")"
        FAILED+=("waits $preset")
    fi
done

# ------------------------------------------------------------------------------------------------
# 4 and 5. Pre-training on generated images, stopped and resumed.
# pretrain_and_resume CHECK PRESET STOP TOTAL LIMIT1 LIMIT2 OVERRIDE...: STOP updates (checkpoints on
# the way) of a run whose schedule is TOTAL updates long, stopped there; then `data2vec2 pretrain` on
# the same run folder resumes from its checkpoint to TOTAL; the helper writes the line CHECK. The
# first leg stops through the Python API's max_steps: the command line has no stop at a given update
# (a signal would land at no fixed update).
pretrain_and_resume() {
    local check=$1 preset=$2 stop=$3 total=$4 limit1=$5 limit2=$6
    shift 6
    local run_dir="$WORK/$check-run" leg1=$IMAGES_RC leg2=0
    local overrides=("data.train=$WORK/images" "train.max_steps=$total" "data.cache_dir=$WORK/cache" "$@" "$DEVICE")
    cp "$WORK/images.log" "$WORK/$check-leg1.log"
    if [ "$leg1" = 0 ]; then
        run_limited "$(limit "$limit1")" "$WORK/$check-leg1.log" "$PYTHON" -c '
import json, sys
import data2vec2
preset, run, stop = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = data2vec2.pretrain(data2vec2.load_config(preset, sys.argv[4:]), run, progress=False, max_steps=stop)
print(json.dumps({k: v for k, v in result.items() if k != "last"}))' \
            "$preset" "$run_dir" "$stop" "${overrides[@]}" || leg1=$?
    fi
    if [ "$leg1" = 0 ]; then
        run_limited "$(limit "$limit2")" "$WORK/$check-leg2.log" "${D2V[@]}" pretrain "$preset" --run-dir "$run_dir" \
            --no-progress "${overrides[@]}" || leg2=$?
    else
        echo "not run: the first leg failed" >"$WORK/$check-leg2.log"
        leg2=skipped
    fi
    if ! "${HELPER[@]}" pretrain "$OUT" "$run_dir" "$stop" "$total" "$leg1" "$leg2" "$WORK/$check-leg1.log" \
            "$WORK/$check-leg2.log" "check=$check" "${COMMON[@]}" "preset=$preset" "precision=$PRECISION" \
            "images:=$IMAGES" "image_size:=$IMAGE_SIZE" "overrides=${overrides[*]//$WORK/<tmp>}" || ! last_ok; then
        FAILED+=("$check")
        tail -n 20 "$WORK/$check-leg1.log" "$WORK/$check-leg2.log" >&2 || true
    fi
}

IMAGES_RC=0
run_limited "$(limit "$LIMIT_IMAGES")" "$WORK/images.log" "${HELPER[@]}" images "$WORK/images" "$IMAGES" \
    "$IMAGE_SIZE" 0 || IMAGES_RC=$?
echo "[gpu_check] 4. $PRETRAIN_PRESET pre-training, $PRETRAIN_TOTAL updates: stop at $PRETRAIN_STOP, resume"
# shellcheck disable=SC2086  # the overrides are a list of words
pretrain_and_resume pretrain "$PRETRAIN_PRESET" "$PRETRAIN_STOP" "$PRETRAIN_TOTAL" "$LIMIT_LEG1" "$LIMIT_LEG2" \
    $PRETRAIN_OVERRIDES
echo "[gpu_check] 5. $FSDP_PRESET pre-training with FSDP, $FSDP_TOTAL updates: stop at $FSDP_STOP, resume"
# shellcheck disable=SC2086
pretrain_and_resume pretrain_fsdp "$FSDP_PRESET" "$FSDP_STOP" "$FSDP_TOTAL" "$LIMIT_FSDP1" "$LIMIT_FSDP2" \
    $FSDP_OVERRIDES

# ------------------------------------------------------------------------------------------------
elapsed=$(($(date +%s) - START))
failed_args=("failed:=[]")
for f in "${FAILED[@]+"${FAILED[@]}"}"; do failed_args+=("failed+=$f"); done
"${HELPER[@]}" line "$OUT" check=summary "${COMMON[@]}" "seconds:=$elapsed" "${failed_args[@]}" \
    "torch=$TORCH_VERSION" "gpu=$GPU_SLUG" "status=$([ ${#FAILED[@]} = 0 ] && echo ok || echo failed)"
if [ ${#FAILED[@]} = 0 ]; then verdict="every step passed"; else verdict="FAILED: $(IFS=,; echo "${FAILED[*]}")"; fi
echo "[gpu_check] done in $elapsed s; $verdict; lines in $OUT"
[ ${#FAILED[@]} = 0 ]
