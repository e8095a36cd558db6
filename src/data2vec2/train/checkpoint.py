"""Training checkpoints: complete resume state, written atomically, loaded without unpickling code.

Layout of a run folder:
    config.yaml            the resolved config
    checkpoints/last.pt    the newest checkpoint
    checkpoints/step_000001000.pt ...   the `keep` newest step checkpoints

A sharded run (train.fsdp) writes folders instead, one file of shards per process (train/sharding.py):
    checkpoints/last -> step_000001000     a symbolic link to the newest
    checkpoints/step_000001000/            .metadata, __<rank>_0.distcp ..., state.pt (step, RNG, config)
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

import torch

from ..errors import TrainingError
from ..nn.sharded import local_part
from .distributed import all_gather_objects, barrier

STEP_FILE = re.compile(r"step_(\d+)(\.pt)?$")  # a file, or a sharded checkpoint's folder
STATE_FILE = "state.pt"  # in a sharded checkpoint's folder: all but the model and optimizer
SHARDED_INDEX = ".metadata"  # in a sharded checkpoint's folder: where each tensor's shards are


def save_checkpoint(state: dict, folder: Path, step: int, keep: int, keep_also: tuple[int, ...] = ()) -> Path:
    """Write `state` as step_<step>.pt and last.pt. Each name only ever appears by a rename of a
    complete, synced file: step_<step>.pt from a fresh temporary file, last.pt from a fresh hard
    link to it (a copy where links are not supported). A kill at any point leaves every visible
    file complete, with the content its name says. Step files beyond the `keep` newest are removed,
    but for those of the updates `keep_also` (the best of a fine-tuning run, the last before a
    divergence)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step_{step:09d}.pt"
    tmp = folder / f".{target.name}.tmp"
    _write(state, tmp)
    os.replace(tmp, target)
    tmp_last = folder / ".last.pt.tmp"
    tmp_last.unlink(missing_ok=True)  # a link left by a killed save would let the copy below overwrite a step file
    try:
        os.link(target, tmp_last)  # a hard link: last.pt costs no extra space
    except OSError:
        _write(state, tmp_last)
    os.replace(tmp_last, folder / "last.pt")
    _remove_old(folder, target, keep, keep_also)
    return target


def save_sharded_checkpoint(write_shards: Callable[[Path], None], state: dict, folder: Path, step: int, keep: int,
                            is_main: bool, keep_also: tuple[int, ...] = ()) -> Path:
    """The sharded counterpart of `save_checkpoint`, called by every process: all write their
    shards (`write_shards(path)`) into a fresh temporary folder, the main process adds `state` and
    renames the folder to step_<step>, then points `last` at it with a fresh symbolic link renamed
    over the old one. A kill at any point leaves every visible name complete."""
    target = folder / f"step_{step:09d}"
    tmp = folder / f".{target.name}.tmp"
    if is_main:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    write_shards(tmp)  # the shard files are synced before the metadata file is written
    barrier()
    if is_main:
        _write(state, tmp / STATE_FILE)
        if target.exists():  # an older save of this update, which `last` no longer names
            shutil.rmtree(target)
        os.replace(tmp, target)
        tmp_last = folder / ".last.tmp"
        tmp_last.unlink(missing_ok=True)
        os.symlink(target.name, tmp_last)
        os.replace(tmp_last, folder / "last")
        _remove_old(folder, target, keep, keep_also)
    barrier()
    return target


def _remove_old(folder: Path, newest: Path, keep: int, keep_also: tuple[int, ...] = ()) -> None:
    """Step checkpoints (of the newest's kind) beyond the `keep` newest, but for the updates `keep_also`."""
    steps = sorted(p for p in folder.glob("step_*") if STEP_FILE.search(p.name) and p.is_dir() == newest.is_dir()
                   and int(STEP_FILE.search(p.name).group(1)) not in keep_also)
    for old in steps[:-keep] if keep > 0 else steps:
        if old != newest and old.is_dir():
            shutil.rmtree(old)
        elif old != newest:
            old.unlink()


def rewind(run_dir: Path, step: int) -> str:
    """Go back to the step checkpoint of update `step`: last.pt (or `last`) and every step checkpoint
    after it are moved aside into checkpoints/after_<step>_<n>/, so that the run resumes from it
    (and its metrics.jsonl rows after it are dropped then). Nothing is deleted. Returns what was done."""
    folder = run_dir / "checkpoints"
    steps = {int(STEP_FILE.search(p.name).group(1)): p for p in folder.glob("step_*") if STEP_FILE.search(p.name)}
    if step not in steps:
        have = ", ".join(str(s) for s in sorted(steps)) or "none"
        raise TrainingError(f"{folder} has no checkpoint of update {step} (step checkpoints: {have})")
    later = sorted(p for s, p in steps.items() if s > step)
    last = [p for p in (folder / "last.pt", folder / "last") if p.exists() or p.is_symlink()]
    n = 1
    while (folder / f"after_{step:09d}_{n}").exists():
        n += 1
    aside = folder / f"after_{step:09d}_{n}"
    aside.mkdir()
    for path in last:
        if path.is_symlink():  # a sharded run's `last` names a folder by a relative link: dropped, not moved
            path.unlink()
        else:
            os.replace(path, aside / path.name)
    for path in later:
        os.replace(path, aside / path.name)
    return (f"moved {len(later)} later step checkpoint(s) and {'last' if last else 'no last'} to {aside}; "
            f"the run resumes at update {step} ({steps[step].name})")


def _write(state: dict, path: Path) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def remove_partial_files(folder: Path) -> None:
    """Temporary files and folders of a save that was killed (only the run's lock holder may call this)."""
    for path in folder.glob(".*.tmp") if folder.is_dir() else []:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


RESUME_KEYS = ("optimizer", "scheduler", "step", "rng", "config")  # + the model's parts (PRE_TRAINING_PARTS before 0.3)
SHARDED_RESUME_KEYS = ("scheduler", "step", "rng", "config")  # + the model and optimizer shards
PRE_TRAINING_PARTS = ["student", "teacher"]


def load_resume_state(run_dir: Path, check_shards: Callable[[Path], None] | None = None) -> dict | None:
    """The newest complete checkpoint of a run folder: last.pt, or when that cannot be read (a
    file truncated by a full disk, say), the newest readable step file, with a message. None if
    the folder has no checkpoint; TrainingError naming the files if none can be read.
    `check_shards(folder)` raises TrainingError for a sharded checkpoint whose shards are incomplete."""
    folder = run_dir / "checkpoints"
    steps = sorted((p for p in folder.glob("step_*") if STEP_FILE.search(p.name)), reverse=True)
    candidates = [p for p in [folder / "last.pt", folder / "last"] if p.exists()] + steps
    candidates = list({p.resolve(): p for p in reversed(candidates)}.values())[::-1]  # `last` is a link to a step
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            state = _load_sharded_state(path, check_shards) if path.is_dir() else load_checkpoint(path)
            _check_resume_state(state, path)
        except TrainingError as e:
            problems.append(str(e))
            continue
        if problems:
            print(f"[data2vec2] {problems[0]}; resuming from {path} (update {state['step']})", flush=True)
        return state
    raise TrainingError(f"no readable checkpoint in {folder}: " + "; ".join(problems) +
                        ". Remove the unreadable files, or start again with --no-resume")


def _load_sharded_state(path: Path, check_shards: Callable[[Path], None] | None = None) -> dict:
    """A sharded checkpoint's state.pt, with "sharded": its folder (the shards load in setup)."""
    if not (path / SHARDED_INDEX).is_file() or not (path / STATE_FILE).is_file():
        raise TrainingError(f"{path} is not a complete sharded checkpoint (no {SHARDED_INDEX} or {STATE_FILE} in it)")
    state = load_checkpoint(path / STATE_FILE)
    if check_shards is not None:
        check_shards(path)
    if isinstance(state, dict):
        state["sharded"] = str(path.resolve())
    return state


def load_checkpoint(path: Path) -> dict:
    """Load with `weights_only=True`: tensors and plain containers only, never arbitrary objects."""
    if not path.exists():
        raise TrainingError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"cannot load checkpoint {path}: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    """One short line: torch.load's refusals run to a page of advice."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        # the useful line is the one that is neither torch's advice nor its pointer to the docs
        useful = [ln for ln in lines[1:] if not ln.startswith(("Please file", "Check the documentation"))]
        return f"not a complete file of tensors (weights-only loading refused it: {(useful or ['?'])[0][:200]})"
    return (lines[0] if lines else type(e).__name__)[:200]


def non_finite(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of `state_dict` holding a NaN or an infinity (of a
    sharded tensor: in this process's part)."""
    return [name for name, t in state_dict.items() if isinstance(t, torch.Tensor) and t.is_floating_point()
            and not bool(torch.isfinite(local_part(t)).all())]


def non_finite_anywhere(state_dict: dict) -> list[str]:
    """`non_finite` over every process of a (sharded) model: each checks its own parts, and all
    get the same sorted list (collective: every process calls it)."""
    return sorted(set().union(*all_gather_objects(non_finite(state_dict))))


def _check_resume_state(state, path: Path) -> None:
    """Every key there; the weights finite (a sharded checkpoint's are checked once loaded)."""
    sharded = isinstance(state, dict) and "sharded" in state
    parts = state.get("parts", PRE_TRAINING_PARTS) if isinstance(state, dict) else []
    keys = SHARDED_RESUME_KEYS if sharded else RESUME_KEYS + tuple(parts)
    if not isinstance(state, dict) or any(k not in state for k in keys):
        raise TrainingError(f"{path} is not a data2vec2 training checkpoint")
    for part in () if sharded else parts:
        bad = non_finite(state[part])
        if bad:
            raise TrainingError(f"{path}: {part} tensor {bad[0]} is not finite")


def with_current_names(state: dict, module: torch.nn.Module) -> dict:
    """`state` with the parameter names `module` expects. Version 0.1.0 kept the local encoder's
    parts (patch_embed, feature_extractor, token_embed, ...) directly in the encoder; they now sit
    under `local_encoder.`, so 0.1.0 checkpoints and exports load as they are."""
    expected = set(module.state_dict())
    renamed = {}
    for key, value in state.items():
        candidates = [key, f"local_encoder.{key}"]
        if key.startswith("encoder."):
            candidates.append(f"encoder.local_encoder.{key[len('encoder.'):]}")
        renamed[next((c for c in candidates if c in expected), key)] = value
    return renamed


class RunLock:
    """An OS lock on <run folder>/.lock while a process trains in it, so that a second process on
    the same folder stops with a message instead of interleaving logs and checkpoints.

    A POSIX record lock (lockf): it belongs to the process, so the OS drops it the moment the
    process ends, however it ends, even while its DataLoader workers (forked children, which do not
    inherit such locks) are still winding down. A killed run leaves no stale lock. Record locks do
    not exclude the process that holds them, so a second lock of the same folder in one process is
    refused here."""

    held: set[str] = set()  # the folders this process has locked

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.file = None

    def __enter__(self) -> "RunLock":
        if fcntl is None:  # no POSIX locks on this platform: run unlocked
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in RunLock.held:  # (opening and closing the file again would drop this process's lock)
            raise self._in_use(os.getpid())
        file = open(self.path, "a+")
        try:
            fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise self._in_use(holder) from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file, self.key = file, key
        RunLock.held.add(key)
        return self

    def _in_use(self, holder) -> TrainingError:
        return TrainingError(f"{self.path.parent} is in use by process {holder}; wait for it to end, or use "
                             f"another --run-dir")

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            fcntl.lockf(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None
            RunLock.held.discard(self.key)
