"""Fine-tuning as a training job (finetune.py, train/loop.py, each modality's tasks): every task runs on
the trainer of pre-training, resumes exactly, runs on 2 DDP processes as on 1 with accumulation,
keeps its best checkpoint, writes results.json, starts from every kind of artefact, and answers bad
input with one line. Parametrized over the tasks of the modality table, on tiny real data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import settings_of
from PIL import Image

import data2vec2
from data2vec2.config import config_from_dict, config_to_dict, preset_names
from data2vec2.errors import ConfigError, DataError
from data2vec2.finetune import finetune, layer_scales, load_finetune_config
from data2vec2.modalities import MODALITIES
from data2vec2.train.logger import read_metrics

ROOT = Path(__file__).resolve().parents[1]
# a small version of each task's tiny preset, (modality, task) -> (preset, overrides): each modality
# folder's testing.py (FINETUNE), so a new modality's tasks are tested without an edit here
TASKS = {(name, task): settings for name in MODALITIES for task, settings in settings_of(name).FINETUNE.items()}
# no dropout, drop path or layerdrop: their draws differ between 2 processes and 1
DETERMINISTIC = ["model.drop_path=0", "model.layerdrop=0", "model.dropout=0", "model.attention_dropout=0",
                 "model.activation_dropout=0", "model.post_mlp_dropout=0", "model.prenet_dropout=0"]


@pytest.fixture(scope="session")
def pretrained(small_data, tmp_path_factory):
    """pretrained(modality): a run of a very small <modality>-tiny (3 updates on the modality's small
    real data, its testing.py), pre-trained once a session: the encoder fine-tuning starts from."""
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            runs[name] = tmp_path_factory.mktemp(f"pretrained-{name}") / "run"
            config = data2vec2.load_config(f"{name}-tiny", settings_of(name).SMALL + small_data(name)
                                           + ["train.max_steps=3"])
            data2vec2.pretrain(config, runs[name], progress=False)
        return runs[name]
    return get


@pytest.fixture(scope="session")
def image_init(pretrained) -> Path:
    return pretrained("image")


@pytest.fixture(scope="session")
def audio_init(pretrained) -> Path:
    return pretrained("audio")


@pytest.fixture(scope="session")
def text_init(pretrained) -> Path:
    return pretrained("text")


@pytest.fixture(scope="session")
def task_data(small_data, tmp_path_factory):
    """task_data(modality, task): the data overrides of the task's labelled data (the modality
    folder's testing.finetune_data), written once a session."""
    made: dict = {}

    def get(modality: str, name: str) -> list[str]:
        if (modality, name) not in made:
            folder = tmp_path_factory.mktemp(f"{modality}-{name}")
            made[modality, name] = settings_of(modality).finetune_data(name, folder, small_data(modality))
        if made[modality, name] is None:
            pytest.skip(f"the labelled data of {modality} {name} is not installed (scripts/install.sh installs it)")
        return made[modality, name]
    return get


@pytest.fixture(params=list(TASKS), ids=lambda key: "-".join(key))
def task(request, cache_dir, task_data) -> tuple[str, list[str]]:
    """(preset, overrides) of a tiny fine-tuning of each task, from a tiny pre-trained encoder, on
    tiny real data."""
    modality, name = request.param
    preset, overrides = TASKS[request.param]
    init = request.getfixturevalue("pretrained")(modality)
    return preset, overrides + [f"finetune.init={init}", f"data.cache_dir={cache_dir}"] + task_data(modality, name)


def run(preset: str, overrides: list[str], run_dir: Path, **options) -> dict:
    config = load_finetune_config(preset, overrides, MODALITIES)
    return finetune(config, run_dir, MODALITIES[config.model.modality], progress=False, **options)


def weights(run_dir: Path, name: str = "last.pt") -> dict:
    return torch.load(run_dir / "checkpoints" / name, weights_only=True)["model"]


def test_every_modality_task_is_in_the_test_table():
    assert {(m.name, t) for m in MODALITIES.values() for t in m.tasks} == set(TASKS)


@pytest.mark.parametrize("preset", [n for n in preset_names() if data2vec2.load_config(n).finetune.task])
def test_every_finetuning_preset_names_a_task_of_its_modality_and_reads_back(preset):
    config = data2vec2.load_config(preset)
    assert config.finetune.task in MODALITIES[config.model.modality].tasks
    assert (config.model.modality, config.finetune.task) in TASKS
    saved = config_to_dict(config)
    assert config_to_dict(config_from_dict(saved, MODALITIES, saved=True)) == saved


def test_a_finetuning_keeps_its_best_checkpoint_and_writes_results(task, tmp_path):
    preset, overrides = task
    result = run(preset, overrides, tmp_path / "run")
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in rows
                                                                                  if "loss" in r)
    valid = [r for r in rows if any(k.startswith("valid_") for k in r)]
    assert [r["step"] for r in valid] == [3, 6]
    best = json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())
    metric = best["metric"]
    values = {r["step"]: r[f"valid_{metric}"] for r in valid}
    pick = max if best["higher_is_better"] else min  # (error rates: lower)
    assert best["value"] == pick(values.values()) and values[best["step"]] == best["value"]
    assert (tmp_path / "run" / "checkpoints" / f"step_{best['step']:09d}.pt").exists()  # kept through pruning
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["best_step"] == best["step"] and saved["scores"]["valid"][metric] == pytest.approx(best["value"])
    assert {"date", "command", "torch", "cpu", "threads", "precision", "data2vec2"} <= saved.keys()
    assert result["results"]["scores"] == saved["scores"]


def test_a_resumed_finetuning_equals_an_uninterrupted_one(task, tmp_path):
    preset, overrides = task
    run(preset, overrides, tmp_path / "straight")
    run(preset, overrides, tmp_path / "resumed", max_steps=4)  # stops after update 4 (a checkpoint at 3 and 4)
    run(preset, overrides, tmp_path / "resumed")
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl") if "loss" in r]
              for d in (tmp_path / "straight", tmp_path / "resumed")]
    assert losses[0] == losses[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_ddp_processes_equal_one_with_accumulation(task, tmp_path):
    preset, overrides = task
    overrides = overrides + ["train.max_steps=3"] + DETERMINISTIC \
        + (["model.text.embed_dropout=0"] if preset.startswith("text") else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29521",
                        "-m", "data2vec2", "finetune", preset, "--no-progress", "--run-dir", str(tmp_path / "ddp")]
                       + overrides, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run(preset, overrides + ["train.grad_accum=2"], tmp_path / "single")
    ddp, single = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("ddp", "single"))
    np.testing.assert_allclose([x["loss"] for x in ddp if "loss" in x], [x["loss"] for x in single if "loss" in x],
                               rtol=2e-5)
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "single")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    scores = [json.loads((tmp_path / d / "results.json").read_text())["scores"] for d in ("ddp", "single")]
    assert scores[0]["valid"] == pytest.approx(scores[1]["valid"], abs=1e-6)  # the split is shared out and gathered


def test_a_frozen_encoder_stays_as_loaded_while_the_head_learns(task, tmp_path):
    """finetune.freeze_steps: the first updates train the head only (the encoder runs without
    gradients and gets no optimizer state); the next ones train the encoder too."""
    preset, overrides = task
    init = next(o.split("=", 1)[1] for o in overrides if o.startswith("finetune.init="))
    loaded = data2vec2.load_encoder(init).state_dict()
    run(preset, overrides + ["finetune.freeze_steps=2", "finetune.eval_every=2", "train.max_steps=3"],
        tmp_path / "run", max_steps=2)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    after = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    assert all(torch.equal(after[k], loaded[k]) for k in loaded)
    head = [k for k in state["model"] if not k.startswith("encoder.")]
    first = torch.load(tmp_path / "run" / "checkpoints" / "step_000000002.pt", weights_only=True)
    assert head and len(first["optimizer"]["state"]) == len(head)  # AdamW's state: the head's parameters only
    run(preset, overrides + ["finetune.freeze_steps=2", "finetune.eval_every=2", "train.max_steps=3"],
        tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    after = {k[len("encoder."):]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    assert not all(torch.equal(after[k], loaded[k]) for k in loaded)


def test_initialisation_from_a_run_a_checkpoint_an_export_or_none(task, tmp_path):
    preset, overrides = task
    init = next(o.split("=", 1)[1] for o in overrides if o.startswith("finetune.init="))
    encoder, _ = data2vec2.load_encoder_and_config(init)
    data2vec2.MODALITIES[_.model.modality].export(encoder, _, tmp_path / "export")
    expected = encoder.state_dict()
    for name, source in {"run": init, "checkpoint": f"{init}/checkpoints/last.pt", "export": tmp_path / "export"}.items():
        config = load_finetune_config(preset, overrides + [f"finetune.init={source}"], MODALITIES)
        from data2vec2.finetune import build_objective

        modality = MODALITIES[config.model.modality]
        model = build_objective(config, modality, modality.tasks[config.finetune.task], ["a", "b", "c"], False)
        got = model.encoder.state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected), name
    config = load_finetune_config(preset, overrides + ["finetune.random_init=true"], MODALITIES)
    modality = MODALITIES[config.model.modality]
    model = build_objective(config, modality, modality.tasks[config.finetune.task], ["a", "b"], False)
    assert not all(torch.equal(model.encoder.state_dict()[k], expected[k]) for k in expected)
    with pytest.raises(Exception, match="not an exported encoder|no such|not found"):
        load_finetune_config(preset, overrides + [f"finetune.init={tmp_path / 'missing'}"], MODALITIES)


def test_layer_decay_scales_each_block_and_keeps_the_rest(image_init, cache_dir):
    config = load_finetune_config("image-cls-tiny", [f"finetune.init={image_init}", f"data.cache_dir={cache_dir}",
                                                     "finetune.layer_decay=0.5"], MODALITIES)
    from data2vec2.finetune import build_objective

    modality = MODALITIES["image"]
    model = build_objective(config, modality, modality.tasks["classification"], list("abc"), False)
    scales = layer_scales(model, 0.5)
    # 1 prenet + 2 shared blocks: block i of n = 3 learns at 0.5^(3 - i)
    assert scales["encoder.prenet.0.mlp.fc1.weight"] == 0.5**3
    assert scales["encoder.blocks.0.attn.qkv.weight"] == 0.5**2
    assert scales["encoder.blocks.1.norm2.weight"] == 0.5**1
    for name in ("encoder.local_encoder.patch_embed.weight", "encoder.local_encoder.cls_token", "fc_norm.weight",
                 "head.weight"):
        assert name not in scales
    from data2vec2.train.optim import param_groups

    groups = param_groups(model, config.optim, model.lr_scales())
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    lr = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr[id(model.encoder.blocks[0].attn.qkv.weight)] == pytest.approx(config.optim.lr * 0.25)
    assert lr[id(model.head.weight)] == config.optim.lr


def test_mixed_targets_stay_distributions_and_match_the_pasted_area():
    from data2vec2.modalities.image.classification import mix

    rng = np.random.default_rng(0)
    images = torch.randn(8, 1, 28, 28)
    targets = torch.nn.functional.one_hot(torch.arange(8) % 10, 10).float()
    for _ in range(20):
        x, y = mix(images, targets, mixup=0.0, cutmix=1.0, mix_prob=1.0, rng=rng)  # cutmix only
        assert torch.allclose(y.sum(-1), torch.ones(8))
        from_self = float((x == images).float().mean())  # the pixels not pasted from the reversed batch
        assert y[0, 0] == pytest.approx(from_self, abs=1e-6)
    x, y = mix(images, targets, mixup=0.8, cutmix=0.0, mix_prob=1.0, rng=rng)  # mixup only
    lam = float(y[0, 0])
    torch.testing.assert_close(x, lam * images + (1 - lam) * images.flip(0))


def test_the_augmentation_is_seeded_per_image(image_init, cache_dir):
    """The same image of the same epoch gets the same crop, RandAugment and erasing in any worker."""
    from data2vec2.modalities.image.classification import task_data

    config = load_finetune_config("image-cls-tiny", [f"data.cache_dir={cache_dir}", "data.limit=50",
                                                     f"finetune.init={image_init}"], MODALITIES)
    data = task_data(config, config.data.train, None, True)
    a, b = data.dataset[7]["inputs"], data.dataset[7]["inputs"]
    assert torch.equal(a, b) and a.shape == (1, 28, 28)
    data.dataset.set_epoch(1)
    assert not torch.equal(data.dataset[7]["inputs"], a)


def write_folder(root: Path, classes: dict[str, int], unlabelled: int = 0) -> Path:
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / name / f"{i}.png")
    for i in range(unlabelled):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / f"loose{i}.png")
    return root


IMAGE_FOLDER = ["data.limit=0", "finetune.valid_size=5000"]


def test_bad_input_gets_one_line_naming_it(image_init, cache_dir, tmp_path):
    base = TASKS[("image", "classification")][1] + [f"finetune.init={image_init}", f"data.cache_dir={cache_dir}"]
    one = write_folder(tmp_path / "one", {"shirt": 10})
    with pytest.raises(DataError, match="1 class .*needs at least two"):
        run("image-cls-tiny", base + IMAGE_FOLDER + [f"data.train={one}"], tmp_path / "r1")
    loose = write_folder(tmp_path / "loose", {"a": 5, "b": 5}, unlabelled=1)
    with pytest.raises(DataError, match="loose0.png: not in a class sub-folder"):
        run("image-cls-tiny", base + IMAGE_FOLDER + [f"data.train={loose}"], tmp_path / "r2")
    train = write_folder(tmp_path / "train", {"a": 20, "b": 20})
    valid = write_folder(tmp_path / "valid", {"a": 3, "c": 3})
    with pytest.raises(DataError, match=r"classes \['c'\] do not occur in the training data"):
        run("image-cls-tiny", base + IMAGE_FOLDER + [f"data.train={train}", f"finetune.valid={valid}"], tmp_path / "r3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files found in .*empty"):
        run("image-cls-tiny", base + IMAGE_FOLDER + [f"data.train={tmp_path / 'empty'}"], tmp_path / "r4")
    # a resumed run never changes its label set
    run("image-cls-tiny", base + IMAGE_FOLDER + [f"data.train={train}", "train.max_steps=2"], tmp_path / "r5",
        max_steps=1)
    more = write_folder(tmp_path / "more", {"a": 20, "b": 20, "c": 20})
    with pytest.raises(ConfigError, match="trained with another task"):
        run("image-cls-tiny", base + IMAGE_FOLDER + [f"data.train={more}", "train.max_steps=2"], tmp_path / "r5")


def test_bad_speech_and_text_input_gets_one_line_naming_it(audio_init, text_init, labelled_audio, glue_tsv, cache_dir,
                                                           tmp_path):
    ctc = TASKS[("audio", "ctc")][1] + [f"finetune.init={audio_init}", f"data.cache_dir={cache_dir}"]
    rows = labelled_audio["ctc"].read_text().splitlines()
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(rows[:16]) + "\n")
    path, samples, _ = rows[16].split("\t")
    odd = tmp_path / "odd.tsv"
    odd.write_text(f"{path}\t{samples}\tHELLO W0RLD\n")
    with pytest.raises(DataError, match=r"odd.tsv:1: the transcript has '0', not among the letters"):
        run("audio-ctc-tiny", ctc + [f"data.train={train}", f"finetune.valid={odd}"], tmp_path / "a1")
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(DataError, match="empty.tsv: no usable audio"):
        run("audio-ctc-tiny", ctc + [f"data.train={tmp_path / 'empty.tsv'}"], tmp_path / "a2")
    unlabelled = tmp_path / "unlabelled.tsv"
    unlabelled.write_text(f"{path}\t{samples}\n")
    with pytest.raises(DataError, match="unlabelled.tsv: every line needs a third column"):
        run("audio-ctc-tiny", ctc + [f"data.train={unlabelled}"], tmp_path / "a3")
    missing = tmp_path / "missing.tsv"
    missing.write_text("\n".join(rows[:16]) + f"\n{tmp_path / 'gone.wav'}\t16000\tGONE\n")
    with pytest.raises(DataError, match=r"missing.tsv:17: audio file .*gone.wav does not exist"):
        run("audio-ctc-tiny", ctc + [f"data.train={missing}"], tmp_path / "a4")
    # an unreadable file: skipped and reported (data.on_bad_file=skip) or the run stops, naming it
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEfmt not really")
    broken = tmp_path / "broken.tsv"
    broken.write_text("\n".join(rows[:16]) + f"\n{tmp_path / 'broken.wav'}\t16000\tBROKEN\n")
    every = [f"data.train={broken}", f"finetune.valid={train}", "train.batch_size=17", "train.max_steps=1"]
    result = run("audio-ctc-tiny", ctc + every, tmp_path / "a5")
    assert result["skipped_files"] == 1 and result["steps"] == 1
    with pytest.raises(DataError, match="broken.wav.*data.on_bad_file=stop"):
        run("audio-ctc-tiny", ctc + every + ["data.on_bad_file=stop"], tmp_path / "a6")
    # text: a missing label column, a label the training data lacks, a regression label that is no number
    text = TASKS[("text", "classification")][1] + [f"finetune.init={text_init}", f"data.cache_dir={cache_dir}",
                                                   f"data.train={glue_tsv}"]
    (tmp_path / "nolabel.tsv").write_text("sentence\tscore\nfine\t1\n")
    with pytest.raises(DataError, match=r"nolabel.tsv: no label column .*set data.label_column"):
        run("text-cls-tiny", text + [f"finetune.valid={tmp_path / 'nolabel.tsv'}"], tmp_path / "t1")
    (tmp_path / "seven.tsv").write_text("sentence\tlabel\nfine\t7\n")
    with pytest.raises(DataError, match="seven.tsv:2: label '7' does not occur in the training data"):
        run("text-cls-tiny", text + [f"finetune.valid={tmp_path / 'seven.tsv'}"], tmp_path / "t2")
    (tmp_path / "words.tsv").write_text("sentence\tlabel\nfine\tgood\n")
    with pytest.raises(DataError, match="words.tsv:2: label 'good' is not a number"):
        run("text-cls-tiny", text + ["finetune.task=regression", f"data.train={tmp_path / 'words.tsv'}"], tmp_path / "t3")
    with pytest.raises(ConfigError, match="finetune.metric: must be one of the task's metrics: accuracy, f1, mcc"):
        run("text-cls-tiny", text + ["finetune.metric=wer"], tmp_path / "t4")


def test_a_small_folder_holds_out_a_fifth_for_validation(image_init, cache_dir, tmp_path, capsys):
    base = TASKS[("image", "classification")][1] + [f"finetune.init={image_init}", f"data.cache_dir={cache_dir}"]
    folder = write_folder(tmp_path / "small", {"a": 48, "b": 48})
    result = run("image-cls-tiny", base + IMAGE_FOLDER + [f"data.train={folder}", "train.max_steps=3"], tmp_path / "r")
    assert "19 (a fifth) are held out" in capsys.readouterr().out
    assert set(result["results"]["scores"]["valid"]) == {"accuracy"}  # 2 classes: no top-5


def test_the_command_line_compares_with_a_random_init_and_refuses_a_pretraining_preset(image_init, cache_dir,
                                                                                        tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    o = TASKS[("image", "classification")][1] + [f"data.cache_dir={cache_dir}"]
    r = subprocess.run([sys.executable, "-m", "data2vec2", "finetune", "image-cls-tiny", "--init", str(image_init),
                        "--compare", "--no-progress", "--run-dir", str(tmp_path / "cmp")] + o,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert summary["metric"] == "accuracy" and summary["higher_is_better"]
    assert set(summary) == {"metric", "higher_is_better", "preset", "overrides", "seeds", "lrs", "pretrained",
                            "random_init", "gain"}
    assert summary["gain"]["valid"] == pytest.approx(summary["pretrained"]["valid"]["accuracy"]
                                                     - summary["random_init"]["valid"]["accuracy"])
    assert (tmp_path / "cmp" / "random_init" / "results.json").exists()
    r = subprocess.run([sys.executable, "-m", "data2vec2", "finetune", "image-tiny", "--run-dir", str(tmp_path / "x")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "is a pre-training preset" in r.stderr and "Traceback" not in r.stderr


def test_seeds_and_learning_rates_choose_each_inits_lr_on_validation(text_init, glue_tsv, cache_dir, tmp_path):
    """--seeds / --lrs: one run per (lr, seed) and init; each init's lr chosen by its mean validation
    metric over the seeds; the test split only reported, with its mean and spread."""
    from data2vec2.finetune import finetune_runs

    overrides = TASKS[("text", "classification")][1] + [f"finetune.init={text_init}", f"data.train={glue_tsv}",
                                                        f"data.cache_dir={cache_dir}", "train.max_steps=3",
                                                        f"finetune.test=[{glue_tsv}]"]
    summary = finetune_runs("text-cls-tiny", overrides, tmp_path / "grid", MODALITIES, compare=True, seeds=[3, 4],
                            lrs=[1e-9, 3e-3], progress=False)
    for name in ("pretrained", "random_init"):
        results = {(lr, seed): json.loads((tmp_path / "grid" / name / f"lr{lr:g}-seed{seed}" / "results.json")
                                          .read_text())["scores"] for lr in (1e-9, 3e-3) for seed in (3, 4)}
        means = {lr: np.mean([results[lr, s]["valid"]["accuracy"] for s in (3, 4)]) for lr in (1e-9, 3e-3)}
        chosen = summary[name]["lr"]
        assert means[chosen] == max(means.values())
        test = [results[chosen, s][str(glue_tsv)]["accuracy"] for s in (3, 4)]
        assert summary[name][str(glue_tsv)]["accuracy"] == pytest.approx(np.mean(test))
        assert summary[name][f"{glue_tsv}_std"]["accuracy"] == pytest.approx(np.std(test, ddof=1))
        assert summary[name][f"{glue_tsv}_runs"] == test
    assert summary["gain"]["valid"] == pytest.approx(summary["pretrained"]["valid"]["accuracy"]
                                                     - summary["random_init"]["valid"]["accuracy"])
    config = data2vec2.load_config(str(tmp_path / "grid" / "random_init" / "lr0.003-seed4" / "config.yaml"))
    assert config.train.seed == 4 and config.optim.lr == 3e-3 and config.finetune.random_init


def test_the_speech_and_text_commands_run_the_tasks(audio_init, text_init, labelled_audio, glue_tsv, tmp_path, capsys):
    """finetune-ctc and finetune-text: the task's job on both inits, their summary as before."""
    from data2vec2.cli import main

    assert main(["finetune-ctc", str(audio_init), "--train", str(labelled_audio["ctc"]), "--test",
                 str(labelled_audio["ctc"]), "--steps", "2", "--batch-size", "4", "--freeze-steps", "1",
                 "--run-dir", str(tmp_path / "ctc"), "--no-progress", "--out", str(tmp_path / "ctc.json")]) == 0
    ctc = json.loads((tmp_path / "ctc.json").read_text())
    assert ctc["metric"] == "cer" and not ctc["higher_is_better"] and ctc["model"] == str(audio_init)  # (tiny: CER)
    assert set(ctc["pretrained"][str(labelled_audio["ctc"])]) == {"wer", "cer"}
    config = data2vec2.load_config(str(tmp_path / "ctc" / "random_init" / "config.yaml"))
    assert (config.train.max_steps, config.finetune.freeze_steps, config.train.batch_size) == (2, 1, 4)
    assert main(["finetune-text", str(text_init), "--train", str(glue_tsv), "--dev", str(glue_tsv), "--epochs", "1",
                 "--batch-size", "16", "--seeds", "0", "1", "--run-dir", str(tmp_path / "text"), "--no-progress",
                 "--out", str(tmp_path / "text.json")]) == 0
    text = json.loads((tmp_path / "text.json").read_text())
    assert text["seeds"] == [0, 1] and len(text["random_init"]["valid_runs"]) == 2
    config = data2vec2.load_config(str(tmp_path / "text" / "pretrained" / "seed1" / "config.yaml"))
    n = len(glue_tsv.read_text().splitlines()) - 1
    assert config.train.max_steps == -(-n // 16) and config.finetune.task == "classification"
    capsys.readouterr()


def test_benchmark_times_a_finetuning_update(task, tmp_path):
    """`data2vec2 benchmark` of a fine-tuning preset times the task's update (the init's architecture)."""
    preset, overrides = task
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "data2vec2", "benchmark", preset, "--steps", "2", "--precision", "fp32",
                        "--out", str(tmp_path / "speed.jsonl")] + overrides + ["train.batch_size=8"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (line,) = [json.loads(t) for t in (tmp_path / "speed.jsonl").read_text().splitlines()]
    assert line["preset"] == preset and line["batch"] == 8 and line["step_s"] > 0 and line["mfu"] > 0
    assert line["step_gflop"] > 0 and line["commit"]


def test_a_sharded_finetuning_resumes_and_scores_its_best_checkpoint(task, tmp_path):
    """train.fsdp (one process): sharded step checkpoints, a resume, and the final scores taken with
    the weights of the best (sharded) checkpoint, not the last."""
    from data2vec2.train import distributed

    preset, overrides = task
    overrides = overrides + ["train.fsdp=true"]
    try:
        run(preset, overrides, tmp_path / "run", max_steps=2)  # (audio, text: saved with the encoder still frozen)
        result = run(preset, overrides, tmp_path / "run")
    finally:
        distributed.cleanup()
    best = result["best"]
    assert {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()} >= {"last", "best.json",
                                                                              f"step_{best['step']:09d}"}
    assert result["results"]["scores"]["valid"] == pytest.approx(best["scores"], abs=1e-6)



def test_predict_scores_a_labelled_split_as_the_finetuning_did(task, request, tmp_path, capsys):
    """fine-tune -> export -> predict: the export's predictions on a labelled split score what the
    run's results.json says of that split; the run folder and the export predict alike, in the
    Python API too; a fine-tuned export is refused by the encoder loader and an encoder by predict."""
    from data2vec2.cli import main
    from data2vec2.predict import load_model

    modality, name = request.node.callspec.params["task"]
    preset, overrides = task
    split = next((o.split("=", 1)[1] for o in overrides if o.startswith("data.train=")), "")
    if modality == "image":  # a small folder of class folders, its classes those of the training folder
        split = str(write_folder(tmp_path / "images", {"a": 12, "b": 12}))
        overrides = overrides + IMAGE_FOLDER + [f"data.train={split}", "finetune.valid_size=8"]
    results = run(preset, overrides + [f"finetune.test={json.dumps([split])}"], tmp_path / "run")["results"]
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", str(tmp_path / "export"), split, "--out", str(out), "--no-progress",
                 "--precision", "fp32"]) == 0  # (as the run's train.precision)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(load_model(tmp_path / "export", MODALITIES).task.inputs(
        load_model(tmp_path / "export", MODALITIES).config, [split], results["labels"])[1])
    printed = capsys.readouterr().err
    expected = results["scores"][split]
    for metric, value in expected.items():  # the same numbers, printed with 4 decimals
        assert f"{metric} {value:.4f}" in printed, (metric, printed)
    field = {"ctc": "transcript", "regression": "score"}.get(name, "label")
    assert all(field in line and line["input"] for line in lines)
    model, from_run = load_model(tmp_path / "export", MODALITIES), load_model(tmp_path / "run", MODALITIES)
    inputs = [lines[0]["input"].rsplit(":", 1)[0]] if modality == "text" else [lines[0]["input"], lines[1]["input"]]
    assert model.predict(inputs) == from_run.predict(inputs)
    with pytest.raises(DataError, match="a fine-tuned model .*not an exported encoder"):
        data2vec2.load_encoder(tmp_path / "export")
    init = next(o.split("=", 1)[1] for o in overrides if o.startswith("finetune.init="))
    with pytest.raises(DataError, match="not a fine-tuned model|a pre-training checkpoint"):
        load_model(init, MODALITIES)
    if modality == "image":  # unlabelled files, one unreadable: stop naming it, or skip and count it
        (tmp_path / "broken.png").write_bytes(b"not a png")
        files = [lines[0]["input"], lines[1]["input"], str(tmp_path / "broken.png")]
        capsys.readouterr()
        assert main(["predict", str(tmp_path / "export"), *files, "--no-progress", "--out", str(out)]) == 2
        assert "broken.png" in capsys.readouterr().err
        assert main(["predict", str(tmp_path / "export"), *files, "--on-bad-file", "skip", "--no-progress",
                     "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert "skipped: " in err and "predicted 2, skipped 1" in err and "accuracy" not in err
        assert [json.loads(line)["input"] for line in out.read_text().splitlines()] == files[:2]


def test_speech_predictions_decode_with_a_word_language_model(audio_init, labelled_audio, cache_dir, tmp_path, capsys):
    """predict --lm with `data2vec2 ngram`'s model of the training transcripts: every transcript is
    made of the model's words, the summary names the decoding; --lm on a classifier and --lexicon
    without --lm: one-line errors."""
    from data2vec2.cli import main
    from data2vec2.predict import load_model

    tiny = ["train.max_steps=2", "finetune.eval_every=2", f"finetune.init={audio_init}", f"data.cache_dir={cache_dir}"]
    manifest = labelled_audio["ctc"]
    run(TASKS[("audio", "ctc")][0], TASKS[("audio", "ctc")][1] + tiny + [f"data.train={manifest}"], tmp_path / "ctc")
    assert main(["ngram", str(manifest), "--order", "2", "--out", str(tmp_path / "lm.arpa")]) == 0
    out, summary = tmp_path / "p.jsonl", tmp_path / "summary.json"
    assert main(["predict", str(tmp_path / "ctc"), str(manifest), "--lm", str(tmp_path / "lm.arpa"),
                 "--word-score", "5", "--out", str(out), "--summary", str(summary), "--no-progress"]) == 0
    words = {w for line in manifest.read_text().splitlines() for w in line.split("\t")[2].split()}
    transcripts = [json.loads(line)["transcript"] for line in out.read_text().splitlines()]
    assert len(transcripts) == 24 and any(transcripts) and all(set(t.split()) <= words for t in transcripts)
    decoding = json.loads(summary.read_text())["decoding"]
    assert decoding["kind"] == "beam search" and decoding["words"] == len(words) and decoding["word_score"] == 5
    assert load_model(tmp_path / "ctc", MODALITIES).objective.decoding == {"kind": "greedy"}
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "ctc"), str(manifest), "--lexicon", str(tmp_path / "lm.arpa")]) == 2
    assert "--lexicon goes with --lm" in capsys.readouterr().err
    run(TASKS[("audio", "classification")][0], TASKS[("audio", "classification")][1] + tiny +
        [f"data.train={labelled_audio['classes']}"], tmp_path / "cls")
    assert main(["predict", str(tmp_path / "cls"), str(labelled_audio["classes"]),
                 "--lm", str(tmp_path / "lm.arpa")]) == 2
    assert "task (audio classification) does not decode with a language model" in capsys.readouterr().err


def test_a_finetuned_model_exports_to_onnx_with_the_same_scores(task, tmp_path):
    """--format onnx of a fine-tuning run: onnxruntime gives the model's scores (logits, CTC
    log-probabilities, values) at another batch size and, for speech and text, another length."""
    ort = pytest.importorskip("onnxruntime")
    from data2vec2.cli import main
    from data2vec2.predict import load_model

    preset, overrides = task
    run(preset, overrides + ["train.max_steps=2", "finetune.eval_every=2"], tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "onnx"), "--format", "onnx"]) == 0
    meta = json.loads((tmp_path / "onnx" / "config.json").read_text())
    model = load_model(tmp_path / "run", MODALITIES)
    assert meta["format"] == "data2vec2-onnx-finetuned" and meta["labels"] == model.labels
    for key in model.task.data_keys:  # a file a data key names (the tokenizer) travels with the export
        value = model.config.data.key(key)
        if isinstance(value, str) and value and Path(value).is_file():
            assert meta["data"][key] == Path(value).name and (tmp_path / "onnx" / meta["data"][key]).is_file()
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    x = model.task.synthetic_batch(model.config)[0]["inputs"][:3]
    for batch in ([x, x[:1]] + ([x[:, : x.shape[1] * 2 // 3].contiguous()] if x.ndim == 2 else [])):
        with torch.no_grad():
            want = model.objective.scores(batch).numpy()
        got = session.run(["scores"], {"inputs": batch.numpy()})[0]
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4, tuple(batch.shape)


@pytest.mark.parametrize("name", ["classification", "regression"])
def test_a_text_model_exports_as_roberta_for_sequence_classification(name, text_init, glue_tsv, cache_dir, tmp_path):
    """--format transformers: AutoModelForSequenceClassification and AutoTokenizer load the folder
    and give the fine-tuned model's logits (padded batch included), with its labels."""
    transformers = pytest.importorskip("transformers")
    from data2vec2.cli import main
    from data2vec2.predict import load_model

    key = ("text", name)
    preset, overrides = TASKS[key]
    overrides = overrides + [f"finetune.init={text_init}", f"data.cache_dir={cache_dir}", "train.max_steps=2",
                             "finetune.eval_every=2", f"data.train={glue_tsv}"]
    if name == "regression":
        values = tmp_path / "values.tsv"
        rows = [line.split("\t")[0] for line in glue_tsv.read_text().splitlines()[1:]]
        values.write_text("sentence\tlabel\n" + "".join(f"{r}\t{len(r) / 100:.2f}\n" for r in rows))
        overrides.append(f"data.train={values}")
    run(preset, overrides, tmp_path / "run")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--format", "transformers"]) == 0
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "run", MODALITIES)
    texts = ["The computer is down again.", "Science is what we understand well enough to explain to a computer."]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**batch).logits
        mine = model.objective.scores(batch["input_ids"])
    assert (theirs - mine).abs().max() <= 1e-4
    if name == "classification":
        assert [hf.config.id2label[i] for i in range(len(model.labels))] == model.labels
    else:
        assert hf.config.problem_type == "regression" and hf.config.num_labels == 1
