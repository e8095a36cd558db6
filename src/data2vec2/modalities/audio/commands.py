"""The audio commands: `prepare audio`, `finetune-ctc`, `kws`, `ngram`."""

from __future__ import annotations

import json
from pathlib import Path

from ...eval.compare import add_comparison_options, write_result
from ...export import load_encoder_and_config
from ...model import random_encoder
from ...options import integer, number


def _corpus_file(args, name: str) -> str:
    return str(Path(args.cache) / "audio" / name)


def cmd_prepare(args, modality) -> None:
    from .corpus import prepare_audio

    out = prepare_audio(Path(args.cache), hours=args.hours, kws_per_word=args.kws_per_word, workers=args.workers,
                        seed=args.seed)
    print((out / "corpus.json").read_text())
    print(f"audio corpus ready in {out}")


def cmd_finetune_ctc(args, modality) -> None:
    """`data2vec2 finetune audio-ctc-tiny --compare` on the prepared corpus (or --train / --test),
    with the tri-stage phases (10 % / 40 % / 50 %) of --steps."""
    from ...finetune import finetune_runs
    from ...modalities import MODALITIES

    tests = args.test or [_corpus_file(args, "ctc_test.tsv"), _corpus_file(args, "ctc_test_synth.tsv")]
    overrides = [f"finetune.init={args.model}", f"data.train={args.train or _corpus_file(args, 'ctc_train.tsv')}",
                 f"finetune.test={json.dumps(tests)}", f"train.max_steps={args.steps}",
                 f"optim.warmup_steps={int(0.1 * args.steps)}", f"optim.hold_steps={int(0.4 * args.steps)}",
                 f"train.batch_size={args.batch_size}", f"optim.lr={args.lr}", f"optim.min_lr={0.05 * args.lr}",
                 f"finetune.freeze_steps={args.freeze_steps}", f"train.seed={args.seed}"]
    run = Path(args.run_dir or f"runs/finetune-ctc/{Path(args.model).name}")
    summary = finetune_runs("audio-ctc-tiny", overrides, run, MODALITIES, compare=True,
                            progress=not args.no_progress)
    write_result(args.out, {"model": str(args.model), **summary})


def cmd_kws(args, modality) -> None:
    from .kws import evaluate_kws

    encoder, config = load_encoder_and_config(args.model, {modality.name: modality})
    encoders = {"pretrained": encoder, "random": random_encoder(config.model, modality, seed=args.seed)}
    train = args.train or _corpus_file(args, "kws_train.tsv")
    test = args.test or _corpus_file(args, "kws_test.tsv")
    write_result(args.out, evaluate_kws(encoders, config, train, test, seed=args.seed))


def cmd_ngram(args, modality) -> None:
    from .lm import read_sentences, write_arpa

    stats = write_arpa(read_sentences(args.inputs), args.order, Path(args.out))
    print(f"wrote {args.out}: an interpolated Kneser-Ney {stats['order']}-gram model of {stats['sentences']} "
          f"sentences ({', '.join(f'{n} {k + 1}-grams' for k, n in enumerate(stats['ngrams']))}; "
          f"data2vec2 predict MODEL CLIPS --lm {args.out})")


def add_commands(sub, prepare, modality) -> None:
    """`sub`: the command line's sub-commands; `prepare`: those of `data2vec2 prepare`."""
    p = prepare.add_parser("audio", help="the offline speech corpus: real recordings + synthesized voices")
    p.add_argument("--cache", default="cache")
    p.add_argument("--hours", type=number(above=0), default=1.0, help="hours of synthetic sentences")
    p.add_argument("--kws-per-word", type=integer(1), default=40, help="train-voice clips per keyword")
    p.add_argument("--workers", type=integer(1), default=None, help="synthesis processes (default: all cores)")
    p.add_argument("--seed", type=integer(0), default=0)
    p.set_defaults(func=cmd_prepare, modality=modality)

    p = sub.add_parser("finetune-ctc", help="audio: CTC fine-tuning on letters, pre-trained vs random init "
                                            "(data2vec2 finetune audio-ctc-tiny --compare)")
    p.add_argument("model", help="an export folder, a run folder or a checkpoint file")
    p.add_argument("--cache", default="cache", help="the prepared corpus (data2vec2 prepare audio)")
    p.add_argument("--train", help="TSV manifest path<TAB>samples<TAB>transcript (default: the corpus's ctc_train.tsv)")
    p.add_argument("--test", action="append", help="test manifest(s) (default: ctc_test.tsv and ctc_test_synth.tsv)")
    p.add_argument("--steps", type=integer(1), default=1500)
    p.add_argument("--batch-size", type=integer(1), default=8)
    p.add_argument("--lr", type=number(above=0), default=5e-4)
    p.add_argument("--freeze-steps", type=integer(0), default=200, help="updates with the whole encoder frozen")
    p.add_argument("--run-dir", help="the runs' folder (default runs/finetune-ctc/<model folder name>)")
    p.add_argument("--no-progress", action="store_true")
    add_comparison_options(p)
    p.set_defaults(func=cmd_finetune_ctc, modality=modality)

    p = sub.add_parser("kws", help="audio: keyword spotting with a linear head, pre-trained vs random init")
    p.add_argument("model", help="an export folder, a run folder or a checkpoint file")
    p.add_argument("--cache", default="cache")
    p.add_argument("--train", help="TSV manifest path<TAB>samples<TAB>word (default: kws_train.tsv)")
    p.add_argument("--test", help="default: kws_test.tsv (held-out voices)")
    add_comparison_options(p)
    p.set_defaults(func=cmd_kws, modality=modality)

    p = sub.add_parser("ngram", help="speech: write a word n-gram language model (ARPA) of transcripts, for "
                                     "predict --lm")
    p.add_argument("inputs", nargs="+", help="TSV manifests with transcripts, or text files (one sentence per line)")
    p.add_argument("--order", type=integer(1), default=3, help="the n of the n-grams")
    p.add_argument("--out", required=True, help="the .arpa file to write")
    p.set_defaults(func=cmd_ngram, modality=modality)
