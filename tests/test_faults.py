"""Faults: a non-finite update is refused and never saved; changed optimizer settings apply on
resume; one process at a time in a run folder."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, SMALL_TEXT, settings_of

import data2vec2
from data2vec2.errors import ConfigError, DataError, TrainingError
from data2vec2.modalities import MODALITIES
from data2vec2.train.logger import read_metrics


def finite(state: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for part in ("student", "teacher") for t in state[part].values()
               if t.is_floating_point())


def test_a_nan_gradient_with_a_finite_loss_is_never_applied_nor_saved(tmp_path, small_overrides, monkeypatch):
    from data2vec2.model import Data2Vec2

    config = data2vec2.load_config("image-tiny", small_overrides + ["train.max_steps=6", "train.checkpoint_every=2"])
    data2vec2.pretrain(config, tmp_path / "run", progress=False, max_steps=2)
    before = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    elementwise_loss = Data2Vec2.elementwise_loss

    def nan_gradient(self, pred, target):  # the value stays finite; d sqrt(x) / dx at 0 is inf, * 0 = NaN
        return elementwise_loss(self, pred, target) + 0 * torch.sqrt((pred * 0).sum())

    monkeypatch.setattr(Data2Vec2, "elementwise_loss", nan_gradient)
    with pytest.raises(TrainingError, match=r"the gradient norm is nan \(the loss is [0-9.]+\) at update 3; this update "
                                            r"was not applied.*newest checkpoint \(update 2\)"):
        data2vec2.pretrain(config, tmp_path / "run", progress=False)
    after = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert after["step"] == 2 and finite(after)
    for name in before["student"]:
        torch.testing.assert_close(before["student"][name], after["student"][name])


def test_a_divergence_names_and_keeps_the_last_checkpoint_before_it_and_rewind_goes_back(tmp_path, small_overrides,
                                                                                        capsys):
    """A learning rate that ramps up to 200: the loss grows far past its running median long before
    the NaN. The message names the update where it left its range and the newest checkpoint written
    before that; that checkpoint survives the rotation (keep_checkpoints=1) with sound weights, and
    `data2vec2 rewind` moves the later ones aside so that a lower learning rate resumes from it."""
    from data2vec2.cli import main

    run = tmp_path / "run"
    config = data2vec2.load_config("image-tiny", small_overrides + [
        "optim.lr=200", "optim.warmup_steps=400", "train.max_steps=400", "train.checkpoint_every=5",
        "train.keep_checkpoints=1"])
    with pytest.raises(TrainingError) as caught:
        data2vec2.pretrain(config, run, progress=False)
    message = str(caught.value)
    found = re.search(r"The loss left its normal range at update (\d+) \((loss|gradient norm) [0-9.e+]+, over 10x its "
                      r"running median [0-9.e+]+\); the newest checkpoint written before that, update (\d+), is kept\. "
                      r"Go back to it and resume with a lower learning rate: data2vec2 rewind (\S+) (\d+), then",
                      message)
    assert found, message
    left, kept = int(found.group(1)), int(found.group(3))
    assert kept < left and kept % 5 == 0 and found.group(4) == str(run) and found.group(5) == str(kept)
    sound = torch.load(run / f"checkpoints/step_{kept:09d}.pt", weights_only=True)
    diverged = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert diverged["step"] > left and finite(sound) and finite(diverged)
    size = lambda state: max(float(t.abs().max()) for t in state["student"].values() if t.is_floating_point())
    assert size(diverged) > 10 * size(sound)

    assert main(["rewind", str(run), "7"]) == 2  # not a step checkpoint: one line listing them
    assert f"has no checkpoint of update 7 (step checkpoints: {kept}, {diverged['step']})" in capsys.readouterr().err
    assert main(["rewind", str(run), str(kept)]) == 0
    assert f"the run resumes at update {kept}" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == [f"step_{kept:09d}.pt"]
    aside = run / "checkpoints" / f"after_{kept:09d}_1"
    assert sorted(p.name for p in aside.iterdir()) == ["last.pt", f"step_{diverged['step']:09d}.pt"]
    lower = data2vec2.load_config("image-tiny", small_overrides + [
        "optim.lr=1e-3", "optim.warmup_steps=400", "train.max_steps=400", "train.checkpoint_every=5",
        "train.keep_checkpoints=1"])
    data2vec2.pretrain(lower, run, progress=False, max_steps=kept + 5)
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, kept + 6)) and all(math.isfinite(r["loss"]) for r in rows)


def test_a_lower_learning_rate_given_on_resume_is_applied(tmp_path, small_overrides, capsys):
    base = small_overrides + ["train.max_steps=6", "train.checkpoint_every=3", "optim.warmup_steps=0"]
    config = data2vec2.load_config("image-tiny", base)
    data2vec2.pretrain(config, tmp_path / "run", progress=False, max_steps=3)
    lower = data2vec2.load_config("image-tiny", base + ["optim.lr=1e-4"])
    data2vec2.pretrain(lower, tmp_path / "run", progress=False)
    assert "optim.lr 0.003 -> 0.0001" in capsys.readouterr().out
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    from data2vec2.train.optim import lr_factor

    for row in rows[3:]:  # the schedule of the new peak lr, at the same steps
        assert row["lr"] == pytest.approx(1e-4 * lr_factor(row["step"], 0, 6, 0.0))
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert all(group["initial_lr"] == 1e-4 for group in state["optimizer"]["param_groups"])


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path, small_overrides):
    from data2vec2.train.checkpoint import RunLock

    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(TrainingError, match=f"{run} is in use by process {os.getpid()}"):
            RunLock(run).__enter__()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
        r = subprocess.run([sys.executable, "-m", "data2vec2", "pretrain", "image-tiny", "--run-dir", str(run),
                            *small_overrides, "train.max_steps=1"], capture_output=True, text=True, env=env)
        assert r.returncode == 2 and f"in use by process {os.getpid()}" in r.stderr, r.stderr[-2000:]
    # released: a lock left by a process that ended is no lock (the OS drops it with the process)
    config = data2vec2.load_config("image-tiny", small_overrides + ["train.max_steps=1"])
    assert data2vec2.pretrain(config, run, progress=False)["steps"] == 1


def test_a_killed_run_whose_workers_still_live_does_not_hold_the_lock(tmp_path):
    """The DataLoader workers of a run killed with SIGKILL live on for a few seconds (until they
    notice); they must not keep the folder locked against the restarted run."""
    code = ("import os, sys, time\nfrom pathlib import Path\nfrom data2vec2.train.checkpoint import RunLock\n"
            "lock = RunLock(Path(sys.argv[1])).__enter__()\npid = os.fork()\nif pid == 0:\n    time.sleep(60)\n"
            "    os._exit(0)\nprint(pid, flush=True)\ntime.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                         env=env)
    child = int(p.stdout.readline())
    try:
        p.send_signal(signal.SIGKILL)
        p.wait()
        from data2vec2.train.checkpoint import RunLock

        with RunLock(tmp_path / "run"):  # the child (a "worker") still lives
            os.kill(child, 0)
    finally:
        os.kill(child, signal.SIGKILL)


# the modalities whose loader meets unreadable files (their testing.py's half_bad_data)
SKIP_CASES = [m for m in MODALITIES if settings_of(m).half_bad_data is not None]


@pytest.mark.parametrize("modality", SKIP_CASES)
def test_skip_mode_replaces_unreadable_samples_and_reports_each_file_once(modality, tmp_path, capfd):
    data = settings_of(modality).half_bad_data(tmp_path / "data")
    # batch 2 from 4 readable + 4 unreadable files: some micro-batches are wholly unreadable
    o = settings_of(modality).SMALL + data + ["data.on_bad_file=skip", "train.batch_size=2", "train.max_steps=8",
                                              "data.num_workers=0"]
    result = data2vec2.pretrain(data2vec2.load_config(f"{modality}-tiny", o), tmp_path / "run", progress=False)
    assert result["steps"] == 8 and result["skipped_files"] == 4
    lines = capfd.readouterr().err.splitlines()
    for i in range(4):
        assert sum(f"bad{i}." in line for line in lines) == 1, lines
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "run" / "metrics.jsonl"))


def test_skip_mode_stops_when_nothing_is_readable(tmp_path):
    data = settings_of("image").half_bad_data(tmp_path / "data")
    for p in (tmp_path / "data").glob("good*"):
        p.write_bytes(b"broken too")
    o = SMALL + data + ["data.on_bad_file=skip", "train.batch_size=2"]
    with pytest.raises(DataError, match="no readable sample is left, all 8 failed to read"):
        data2vec2.pretrain(data2vec2.load_config("image-tiny", o), tmp_path / "run", progress=False)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_update_and_stops_the_workers(signum, tmp_path, small_overrides):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    p = subprocess.Popen([sys.executable, "-m", "data2vec2", "pretrain", "image-tiny", "--run-dir", str(run),
                          "--no-progress", *small_overrides, "train.max_steps=10000", "train.checkpoint_every=10000",
                          "data.num_workers=2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signum)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signum, err[-2000:]
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert f"stopped by {signal.Signals(signum).name} at update {state['step']}" in err and "Traceback" not in err
    assert state["step"] >= 3 and finite(state)
    assert read_metrics(metrics)[-1]["step"] == state["step"]
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid).count(str(run))]
    assert not left, "DataLoader workers outlived the run"


@pytest.mark.parametrize("sharded", [False, True], ids=["unsharded", "sharded"])
def test_sigterm_to_a_torchrun_job_saves_and_resumes(sharded, tmp_path, small_overrides):
    """torchrun (like a scheduler) sends SIGTERM to each process's whole group, DataLoader workers
    included: every process finishes the same update, it is saved (sharded or not), and the same
    command resumes from it."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={29540 + sharded}", "-m", "data2vec2", "pretrain", "image-tiny", "--run-dir", str(run),
               "--no-progress", *small_overrides, "train.batch_size=8", "train.checkpoint_every=10000",
               "data.num_workers=1", f"train.fsdp={sharded}"]
    p = subprocess.Popen(command + ["train.max_steps=10000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, start_new_session=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    stopped = [int(m) for m in re.findall(r"stopped by SIGTERM at update (\d+)", err)]
    assert len(stopped) == 2 and stopped[0] == stopped[1] >= 3, err[-3000:]
    assert "DataLoader worker" not in err
    saved = read_metrics(metrics)[-1]["step"]
    assert saved == stopped[0]
    last = run / "checkpoints" / ("last" if sharded else "last.pt")
    assert last.exists()
    r = subprocess.run(command + [f"train.max_steps={saved + 2}"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and f"resuming at update {saved}" in r.stdout, r.stderr[-3000:]
    assert [row["step"] for row in read_metrics(metrics)][-3:] == [saved, saved + 1, saved + 2]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_a_resumed_run_logs_each_update_once(tmp_path, small_overrides):
    o = small_overrides + ["train.max_steps=4", "train.checkpoint_every=2"]
    config = data2vec2.load_config("image-tiny", o)
    data2vec2.pretrain(config, tmp_path / "run", progress=False, max_steps=2)
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as f:  # a run killed after logging update 3 (not saved) in the middle of a line
        f.write('{"step": 3, "loss": 1.0}\n{"step": 4, "lo')
    data2vec2.pretrain(config, tmp_path / "run", progress=False)
    assert [row["step"] for row in read_metrics(metrics)] == [1, 2, 3, 4]


# -- text data -------------------------------------------------------------------------------


def test_a_text_folder_of_bad_files_is_a_clear_error(tmp_path, tokenizer_file):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "empty.txt").write_text("\n")
    (folder / "binary.txt").write_bytes(b"a\x00b")
    o = SMALL_TEXT + [f"data.train={folder}", f"data.cache_dir={tmp_path / 'cache'}", "data.on_bad_file=skip"]
    for tokenizer in (str(tokenizer_file), ""):  # given, or trained on the data
        config = data2vec2.load_config("text-tiny", o + [f"data.tokenizer={tokenizer}"])
        with pytest.raises(DataError, match=r"no text to read: 0 readable file\(s\) hold no document; skipped 2 bad"):
            data2vec2.pretrain(config, tmp_path / "run", progress=False)


def test_the_tokenizer_command_names_its_own_option(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"a\x00b")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    r = subprocess.run([sys.executable, "-m", "data2vec2", "tokenizer", str(tmp_path / "bad.txt"), "--out",
                        str(tmp_path / "tok.json"), "--on-bad-file", "stop"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "(--on-bad-file=stop; set it to skip" in r.stderr, r.stderr


@pytest.mark.parametrize("damage", ["empty", "torn", "short tokens"])
def test_a_damaged_token_cache_is_rebuilt(damage, real_text, tokenizer_file, tmp_path, capsys):
    from data2vec2.modalities.text.data import open_tokens, tokenize_files

    files = sorted(real_text.glob("*.txt"))
    folder = tokenize_files(files, tokenizer_file, tmp_path, "paragraph", "stop", progress=False)
    tokens = np.array(open_tokens(folder)[0])
    meta = folder / "meta.json"
    if damage == "empty":
        meta.write_text("")
    elif damage == "torn":
        meta.write_text(meta.read_text()[:30])
    else:
        (folder / "tokens.bin").write_bytes((folder / "tokens.bin").read_bytes()[:100])
    assert tokenize_files(files, tokenizer_file, tmp_path, "paragraph", "stop", progress=False) == folder
    assert "rebuilding the token cache" in capsys.readouterr().out
    np.testing.assert_array_equal(open_tokens(folder)[0], tokens)


# -- checkpoints -----------------------------------------------------------------------------


def test_a_kill_between_link_and_rename_leaves_every_step_file_true_to_its_name(tmp_path, small_overrides):
    o = small_overrides + ["train.max_steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=10"]
    config = data2vec2.load_config("image-tiny", o)
    data2vec2.pretrain(config, tmp_path / "run", progress=False, max_steps=2)
    folder = tmp_path / "run" / "checkpoints"
    os.link(folder / "step_000000001.pt", folder / ".last.pt.tmp")  # killed after the link, before the rename
    data2vec2.pretrain(config, tmp_path / "run", progress=False)
    for path in sorted(folder.glob("step_*.pt")):
        assert torch.load(path, weights_only=True)["step"] == int(path.stem[5:]), path.name
    assert torch.load(folder / "last.pt", weights_only=True)["step"] == 4


def test_a_truncated_last_checkpoint_falls_back_to_the_newest_readable_step(tmp_path, small_overrides, capsys):
    o = small_overrides + ["train.max_steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=3"]
    config = data2vec2.load_config("image-tiny", o)
    data2vec2.pretrain(config, tmp_path / "run", progress=False, max_steps=3)
    folder = tmp_path / "run" / "checkpoints"
    for name in ("last.pt", "step_000000003.pt"):  # one inode: a full disk truncated both names
        data = (folder / name).read_bytes()
        (folder / name).unlink()
        (folder / name).write_bytes(data[:len(data) // 2])
    assert data2vec2.pretrain(config, tmp_path / "run", progress=False)["steps"] == 4
    out = capsys.readouterr().out
    assert "cannot load checkpoint" in out and "last.pt" in out and "resuming from" in out
    assert "step_000000002.pt (update 2)" in out
    for name in ("step_000000002.pt", "step_000000003.pt", "step_000000004.pt"):
        (folder / name).write_bytes(b"garbage")
    (folder / "last.pt").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match=r"no readable checkpoint in .*Remove the unreadable files"):
        data2vec2.pretrain(config, tmp_path / "run", progress=False)


# -- exports ---------------------------------------------------------------------------------


def _image_export(tmp_path) -> Path:
    from data2vec2.model import random_encoder

    config = data2vec2.load_config("image-tiny", SMALL)
    record = data2vec2.MODALITIES["image"]
    return record.export(random_encoder(config.model, record, seed=0), config, tmp_path / "export")


@pytest.mark.parametrize("change, message", [
    ({"embed_dim": 65536, "depth": 48}, r"does not match its config: .*wrong shapes"),  # 29 GB asked, none allocated
    ({"num_heads": 5}, r"model.num_heads: must be >= 1 and divide model.embed_dim=32"),
    ({"modality": "video"}, r"holds a model of modality 'video'"),
    ({"depth": "two"}, r"model.depth"),
])
def test_a_crafted_export_config_is_a_data_error_before_anything_is_allocated(change, message, tmp_path):
    out = _image_export(tmp_path)
    meta = json.loads((out / "config.json").read_text())
    meta["model"].update(change)
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=message):
        data2vec2.load_encoder(out)


def test_export_copies_only_a_real_tokenizer(tmp_path, tokenizer_file):
    from data2vec2.model import random_encoder

    record = data2vec2.MODALITIES["text"]
    secret = tmp_path / "secret.txt"
    secret.write_text("not for export\n")
    for tokenizer, message in ((secret, "is not a tokenizers JSON file"), (tmp_path / "none.json", "not found")):
        config = data2vec2.load_config("text-tiny", SMALL_TEXT + [f"data.tokenizer={tokenizer}"])
        with pytest.raises(DataError, match=message):
            record.export(random_encoder(config.model, record, seed=0), config, tmp_path / "export")
        assert not (tmp_path / "export" / "tokenizer.json").exists()
    small_vocab = data2vec2.load_config("text-tiny", SMALL_TEXT + ["model.text.vocab_size=300",
                                                                  f"data.tokenizer={tokenizer_file}"])
    with pytest.raises(DataError, match="more than the model's 300: not this model's tokenizer"):
        record.export(random_encoder(small_vocab.model, record, seed=0), small_vocab, tmp_path / "export")


def test_export_and_embed_refuse_an_existing_out_and_a_wrong_modality(tmp_path):
    out = _image_export(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "data2vec2", *map(str, args)], capture_output=True, text=True,
                           env=env)
        return r.returncode, r.stderr

    code, err = cli("export", out, "--out", out)
    assert code == 2 and "exists and is not empty: pass --overwrite" in err, err
    features = tmp_path / "f.npy"
    features.write_bytes(b"keep me")
    code, err = cli("embed", out, "fashion-mnist:test", "--out", features)
    assert code == 2 and "f.npy exists: pass --overwrite" in err and features.read_bytes() == b"keep me", err
    meta = json.loads((out / "config.json").read_text())
    meta["model"]["modality"] = "audio"
    (out / "config.json").write_text(json.dumps(meta))
    code, err = cli("embed", out, "fashion-mnist:test", "--out", tmp_path / "g.npy")
    assert code == 2 and "holds a model of modality 'audio'; this command takes image" in err, err


def test_embed_makes_the_folder_of_its_out_file(tmp_path, capsys):
    from PIL import Image

    from data2vec2.cli import main

    out = _image_export(tmp_path)
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
    features = tmp_path / "missing" / "dir" / "feats.npy"
    assert main(["embed", str(out), str(tmp_path / "images"), "--out", str(features)]) == 0
    assert np.load(features).shape == (3, 32) and len(Path(f"{features}.paths.txt").read_text().split()) == 3
    (tmp_path / "a_file").write_text("")
    assert main(["embed", str(out), str(tmp_path / "images"), "--out", str(tmp_path / "a_file" / "f.npy")]) == 2
    assert "a_file is a file, not a folder" in capsys.readouterr().err


def test_an_image_over_the_decompression_bomb_limit_is_a_bad_file_not_a_raw_warning(tmp_path, monkeypatch):
    """Pillow warns (once per read, in every DataLoader worker) about an image over its pixel limit:
    here it is an unreadable file, which the bad-file paths report once, naming it."""
    import warnings

    from PIL import Image

    from data2vec2.modalities.image.data import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40 x 40 = 1,600 pixels: a warning, not Pillow's error
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is printed raw
        with pytest.raises(DataError, match=r"cannot read image .*big.png: .*decompression bomb"):
            load_image(tmp_path / "big.png", 1)


def test_a_text_file_skipped_while_reading_is_counted_in_the_summary(real_text, tokenizer_file, tmp_path):
    import shutil

    folder = tmp_path / "texts"
    shutil.copytree(real_text, folder)
    (folder / "binary.txt").write_bytes(b"a\x00b")
    o = SMALL_TEXT + [f"data.train={folder}", f"data.tokenizer={tokenizer_file}", f"data.cache_dir={tmp_path / 'c'}",
                      "data.on_bad_file=skip", "train.max_steps=2"]
    result = data2vec2.pretrain(data2vec2.load_config("text-tiny", o), tmp_path / "run", progress=False)
    assert result["skipped_files"] == 1 and read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["skipped_files"] == 1


def test_a_batch_larger_than_the_data_is_a_config_error(small_overrides, tmp_path):
    config = data2vec2.load_config("image-tiny", small_overrides + ["data.limit=10", "train.batch_size=16"])
    with pytest.raises(ConfigError, match=r"train.batch_size: one update takes 16 samples .*training data has only 10"):
        data2vec2.pretrain(config, tmp_path / "run", progress=False)


def test_yaml_tags_and_pickled_code_are_refused(tmp_path, small_overrides):
    marker = tmp_path / "ran"
    config_file = tmp_path / "evil.yaml"
    config_file.write_text(f"name: evil\nmodel: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        data2vec2.load_config(str(config_file))

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"student": Evil()}, tmp_path / "run" / "checkpoints" / "last.pt")
    config = data2vec2.load_config("image-tiny", small_overrides + ["train.max_steps=1"])
    with pytest.raises(TrainingError, match=r"weights-only loading refused it: .*GLOBAL posix.system"):
        data2vec2.pretrain(config, tmp_path / "run", progress=False)
    with pytest.raises(DataError, match="weights-only loading refused it"):
        data2vec2.load_encoder(tmp_path / "run")
    assert not marker.exists()


def test_the_loss_watch_finds_where_training_left_its_range_and_forgets_a_spike_it_recovered_from():
    from data2vec2.train.health import LossWatch

    watch = LossWatch(window=20, judge_after=5)
    for step in range(1, 31):
        watch.see(step, 5.0 + 0.1 * (step % 3), 1.0)
    assert watch.left_at is None and watch.judged
    watch.see(31, 80.0, 1.0)  # 16x the median loss
    assert watch.left_at == 31 and watch.why.startswith("loss 80, over 10x its running median 5.1")
    watch.see(32, 5.0, 30.0)  # the gradient norm: out of range too, the first update stays named
    assert watch.left_at == 31
    for step in range(33, 52):
        watch.see(step, 5.0, 1.0)
    assert watch.left_at == 31  # 19 updates back in range: not yet
    watch.see(52, 5.0, 1.0)
    assert watch.left_at is None and watch.why == ""
