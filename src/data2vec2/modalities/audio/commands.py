"""The audio commands: `prepare audio`, `finetune-ctc`, `kws`."""

from __future__ import annotations

from pathlib import Path

from ...eval.compare import add_comparison_options, write_result
from ...export import load_encoder_and_config
from ...model import random_encoder


def _encoders(args, modality) -> dict:
    encoder, config = load_encoder_and_config(args.model, {modality.name: modality})
    return {"pretrained": encoder, "random": random_encoder(config.model, modality, seed=args.seed)}


def _corpus_file(args, name: str) -> str:
    return str(Path(args.cache) / "audio" / name)


def cmd_prepare(args, modality) -> None:
    from .corpus import prepare_audio

    out = prepare_audio(Path(args.cache), hours=args.hours, kws_per_word=args.kws_per_word, workers=args.workers,
                        seed=args.seed)
    print((out / "corpus.json").read_text())
    print(f"audio corpus ready in {out}")


def cmd_finetune_ctc(args, modality) -> None:
    from .ctc import CTCConfig, evaluate_ctc
    from .evaluate import load_clips

    cfg = CTCConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, freeze_steps=args.freeze_steps,
                    seed=args.seed)
    train = load_clips(args.train or _corpus_file(args, "ctc_train.tsv"), max_samples=cfg.max_samples)
    tests = {Path(t).stem: load_clips(t) for t in (args.test or [_corpus_file(args, "ctc_test.tsv"),
                                                               _corpus_file(args, "ctc_test_synth.tsv")])}
    result = {"train_clips": len(train.waves), "config": cfg.__dict__}
    result |= evaluate_ctc(_encoders(args, modality), train, tests, cfg, progress=not args.no_progress)
    write_result(args.out, result)


def cmd_kws(args, modality) -> None:
    from .evaluate import load_clips
    from .kws import evaluate_kws

    train = load_clips(args.train or _corpus_file(args, "kws_train.tsv"))
    test = load_clips(args.test or _corpus_file(args, "kws_test.tsv"))
    write_result(args.out, evaluate_kws(_encoders(args, modality), train, test, seed=args.seed))


def add_commands(sub, prepare, modality) -> None:
    """`sub`: the command line's sub-commands; `prepare`: those of `data2vec2 prepare`."""
    p = prepare.add_parser("audio", help="the offline speech corpus: real recordings + synthesized voices")
    p.add_argument("--cache", default="cache")
    p.add_argument("--hours", type=float, default=1.0, help="hours of synthetic sentences")
    p.add_argument("--kws-per-word", type=int, default=40, help="train-voice clips per keyword")
    p.add_argument("--workers", type=int, default=None, help="synthesis processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_prepare, modality=modality)

    p = sub.add_parser("finetune-ctc", help="audio: CTC fine-tuning on letters, pre-trained vs random init")
    p.add_argument("model", help="an export folder, a run folder or a checkpoint file")
    p.add_argument("--cache", default="cache", help="the prepared corpus (data2vec2 prepare audio)")
    p.add_argument("--train", help="TSV manifest path<TAB>samples<TAB>transcript (default: the corpus's ctc_train.tsv)")
    p.add_argument("--test", action="append", help="test manifest(s) (default: ctc_test.tsv and ctc_test_synth.tsv)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--freeze-steps", type=int, default=200, help="updates with the whole encoder frozen")
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

