"""The `data2vec2` command line.

    data2vec2 demo [--out runs/demo]                       the main job: pre-train, probe, summary
    data2vec2 prepare fashion-mnist [--cache cache]        build the data cache from the Debian package
    data2vec2 prepare speech [--hours 1] [--cache cache]   the offline speech corpus (docs/audio.md)
    data2vec2 prepare text [--cache cache]                 offline English corpus + Rotten Tomatoes
    data2vec2 tokenizer FILES... --out tok.json            train a byte-level BPE (text)
    data2vec2 finetune-text RUN_OR_EXPORT --task rotten-tomatoes   sentence classification, vs random init
    data2vec2 presets                                      list the shipped presets
    data2vec2 pretrain image-tiny --run-dir runs/x [k=v ...]  pre-train (auto-resumes)
    torchrun --nproc_per_node=N -m data2vec2 pretrain ...  the same on N processes (DDP)
    data2vec2 probe RUN_OR_EXPORT [--pool mean|cls]        linear probe on frozen features
    data2vec2 knn RUN_OR_EXPORT                            k-nearest-neighbour accuracy
    data2vec2 finetune-ctc RUN_OR_EXPORT [--steps N]       speech: CTC letters, pre-trained vs random init
    data2vec2 kws RUN_OR_EXPORT                            speech: keyword spotting, pre-trained vs random init
    data2vec2 export RUN --out DIR                         encoder-only model.safetensors + config.json
    data2vec2 embed EXPORT_OR_RUN IMAGES --out feats.npy   features for a folder of images
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import Data2Vec2Error


def _add_comparison_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that compare a pre-trained encoder with a random one."""
    p.add_argument("--seed", type=int, default=0, help="seeds both runs (and the random init)")
    p.add_argument("--out", help="also write the JSON result here")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=5e-4")


def cmd_presets(args) -> None:
    from .config import load_config, preset_names

    for name in preset_names():
        c = load_config(name)
        m = c.model
        print(f"{name:12s} {m.modality}: D={m.embed_dim} blocks={m.prenet_depth}+{m.depth} heads={m.num_heads} "
              f"M={c.masking.num_masks} batch={c.train.batch_size} updates={c.train.max_steps}")


def cmd_prepare(args) -> None:
    if args.dataset == "fashion-mnist":
        from .data.fashion_mnist import prepare_fashion_mnist

        out = prepare_fashion_mnist(Path(args.cache), progress=True)
        print(f"Fashion-MNIST ready in {out}")
    elif args.dataset == "speech":
        from .data.speech_corpus import prepare_speech

        out = prepare_speech(Path(args.cache), hours=args.hours, kws_per_word=args.kws_per_word,
                             workers=args.workers, seed=args.seed)
        print((out / "corpus.json").read_text())
        print(f"speech corpus ready in {out}")
    elif args.dataset == "text":
        from .data.text_corpus import prepare_text

        counts = prepare_text(Path(args.cache), progress=True)
        print(json.dumps(counts, indent=2))
        print(f"text corpus ready in {Path(args.cache) / 'text'}")


def cmd_tokenizer(args) -> None:
    from .data.text import DocumentReport, find_text_files, iter_documents, train_tokenizer

    files = find_text_files(",".join(args.files), Path(args.cache))
    report = DocumentReport()
    out = train_tokenizer(iter_documents(files, args.documents, args.on_bad_file, report), args.vocab_size, Path(args.out))
    for line in report.bad or []:
        print(f"skipped: {line}", file=sys.stderr)
    print(f"trained a {args.vocab_size}-token byte-level BPE on {report.documents} documents from {report.files} "
          f"file(s) -> {out} (use it with data.tokenizer={out})")


def cmd_finetune_text(args) -> None:
    from .eval.text_finetune import Recipe, finetune_compare
    from .modalities.text_hf import is_text_hf_export, load_text_hf

    if Path(args.model).is_dir() and is_text_hf_export(Path(args.model)):
        encoder, config = load_text_hf(args.model)
    else:
        from .eval.image_eval import load_encoder_any

        encoder, config = load_encoder_any(args.model)
    if config.model.modality != "text":
        raise Data2Vec2Error(f"{args.model} is a {config.model.modality} model, not a text model")
    if args.task == "rotten-tomatoes":
        folder = Path(args.cache or config.data.cache_dir) / "text" / "rotten_tomatoes"
        train, dev, test = (str(folder / f"{s}.tsv") for s in ("train", "dev", "test"))
        if not Path(train).exists():
            raise Data2Vec2Error(f"{train} not found: run 'data2vec2 prepare text --cache {folder.parent.parent}'")
    else:
        if not (args.train and args.dev):
            raise Data2Vec2Error("give --task rotten-tomatoes, or --train and --dev TSV files (GLUE format)")
        train, dev, test = args.train, args.dev, args.test
    recipe = Recipe(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length,
                    seed=args.seed, threads=args.threads)
    cols = tuple(args.text_columns.split(",")) if args.text_columns else None
    result = finetune_compare(encoder.train(), config, train, dev, test, text_columns=cols,
                              label_column=args.label_column, recipe=recipe, baseline=not args.no_baseline,
                              progress=not args.no_progress)
    result["model"] = str(args.model)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


def cmd_pretrain(args) -> None:
    from .config import load_config
    from .train.loop import pretrain

    config = load_config(args.preset, args.overrides)
    run = Path(args.run_dir or f"runs/{config.name}")
    result = pretrain(config, run, resume=not args.no_resume, progress=not args.no_progress)
    if "RANK" not in __import__("os").environ or __import__("os").environ.get("RANK") == "0":
        print(json.dumps({k: v for k, v in result.items() if k != "last"} | {"last_loss": result["last"].get("loss")}))


def cmd_eval(args, kind: str) -> None:
    import torch

    from .eval.image_eval import evaluate_encoder, load_encoder_any
    from .train.loop import pick_dtype

    encoder, config = load_encoder_any(args.model)
    if args.cache:
        config.data.cache_dir = args.cache
    bf16 = pick_dtype(args.precision, torch.device("cpu")) == torch.bfloat16
    result = evaluate_encoder(encoder, config, args.train, args.test, pool=args.pool, knn=kind == "knn",
                              probe=kind == "probe", bf16=bf16)
    print(json.dumps(result, indent=2))


def cmd_export(args) -> None:
    from .eval.image_eval import load_encoder_any
    from .export import export_encoder

    encoder, config = load_encoder_any(args.run)
    if config.model.modality == "text":
        from .modalities.text_hf import export_text_hf

        out = export_text_hf(encoder, config.model, config.data.tokenizer, args.out)
        print(f"exported the text encoder to {out} as a transformers RoBERTa model + tokenizer "
              f"(AutoModel.from_pretrained('{out}'), AutoTokenizer.from_pretrained('{out}'))")
        return
    d = config.data
    out = export_encoder(encoder, config.model, args.out,
                         extra={"data": {"channels": d.channels, "mean": list(d.mean), "std": list(d.std)}})
    print(f"exported the encoder to {out} (load it with data2vec2.load_encoder('{out}'))")


def cmd_embed(args) -> None:
    import numpy as np

    from .data.images import open_image_source
    from .eval.features import extract_features
    from .eval.image_eval import load_encoder_any

    encoder, config = load_encoder_any(args.model)
    source = open_image_source(args.images, Path(config.data.cache_dir), config.data.channels)
    feats, _ = extract_features(encoder, source, image_size=config.model.image.image_size, mean=config.data.mean,
                                std=config.data.std, pool=args.pool, progress=True)
    np.save(args.out, feats.numpy())
    paths = [source.path(i) for i in range(len(source))]
    Path(str(args.out) + ".paths.txt").write_text("\n".join(paths) + "\n")
    print(f"wrote {tuple(feats.shape)} features to {args.out} (row order in {args.out}.paths.txt)")


def _speech_encoders(args):
    from .eval.image_eval import load_encoder_any, random_encoder

    encoder, config = load_encoder_any(args.model)
    if config.model.modality != "audio":
        from .errors import ConfigError

        raise ConfigError(f"{args.model} holds a {config.model.modality} encoder; this evaluation needs speech")
    return {"pretrained": encoder, "random": random_encoder(config.model, seed=args.seed)}


def _speech_file(args, name: str) -> str:
    return str(Path(args.cache) / "speech" / name)


def _write_result(args, result: dict) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


def cmd_finetune_ctc(args) -> None:
    from .eval.ctc import CTCConfig, evaluate_ctc
    from .eval.speech import load_clips

    cfg = CTCConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, freeze_steps=args.freeze_steps,
                    seed=args.seed)
    train = load_clips(args.train or _speech_file(args, "ctc_train.tsv"), max_samples=cfg.max_samples)
    tests = {Path(t).stem: load_clips(t) for t in (args.test or [_speech_file(args, "ctc_test.tsv"),
                                                               _speech_file(args, "ctc_test_synth.tsv")])}
    result = {"train_clips": len(train.waves), "config": cfg.__dict__}
    result |= evaluate_ctc(_speech_encoders(args), train, tests, cfg, progress=not args.no_progress)
    _write_result(args, result)


def cmd_kws(args) -> None:
    from .eval.kws import evaluate_kws
    from .eval.speech import load_clips

    train = load_clips(args.train or _speech_file(args, "kws_train.tsv"))
    test = load_clips(args.test or _speech_file(args, "kws_test.tsv"))
    _write_result(args, evaluate_kws(_speech_encoders(args), train, test, seed=args.seed))


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, args.overrides, resume=args.resume, progress=not args.no_progress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="data2vec2", description="data2vec 2.0 self-supervised pre-training",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="pre-train image-tiny on Fashion-MNIST and compare linear probes")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo instead of starting over")
    p.add_argument("--no-progress", action="store_true")
    _add_overrides(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("prepare", help="prepare a data set into the cache")
    p.add_argument("dataset", choices=["fashion-mnist", "speech", "text"])
    p.add_argument("--cache", default="cache")
    p.add_argument("--hours", type=float, default=1.0, help="speech: hours of synthetic sentences")
    p.add_argument("--kws-per-word", type=int, default=40, help="speech: train-voice clips per keyword")
    p.add_argument("--workers", type=int, default=None, help="speech: synthesis processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on text files")
    p.add_argument("files", nargs="+", help="text files, folders, globs, or 'english' (the prepared corpus)")
    p.add_argument("--out", required=True, help="the tokenizer JSON file to write")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--documents", choices=["paragraph", "file"], default="paragraph")
    p.add_argument("--on-bad-file", choices=["skip", "stop"], default="skip")
    p.add_argument("--cache", default="cache")
    p.set_defaults(func=cmd_tokenizer)

    p = sub.add_parser("finetune-text", help="sentence(-pair) classification: pre-trained vs random init")
    p.add_argument("model", help="a text run folder, checkpoint file or transformers export folder")
    p.add_argument("--task", choices=["rotten-tomatoes", "tsv"], default="tsv")
    p.add_argument("--train", help="GLUE-format TSV with a header row")
    p.add_argument("--dev")
    p.add_argument("--test")
    p.add_argument("--text-columns", help="comma-separated, e.g. sentence1,sentence2 (default: GLUE names)")
    p.add_argument("--label-column", help="default: label or gold_label")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-baseline", action="store_true", help="skip the randomly initialised encoder")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--cache", help="the data cache holding text/rotten_tomatoes (default: the run's)")
    _add_comparison_options(p)
    p.set_defaults(func=cmd_finetune_text)

    p = sub.add_parser("pretrain", help="pre-train (resumes automatically from the run folder)")
    p.add_argument("preset", help="a preset name (data2vec2 presets) or a YAML file")
    p.add_argument("--run-dir", help="run folder (default runs/<preset name>)")
    p.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in the run folder")
    p.add_argument("--no-progress", action="store_true")
    _add_overrides(p)
    p.set_defaults(func=cmd_pretrain)

    for kind, help_text in (("probe", "linear probe on frozen features"), ("knn", "k-nearest-neighbour accuracy")):
        p = sub.add_parser(kind, help=help_text)
        p.add_argument("model", help="an export folder, a run folder or a checkpoint file")
        p.add_argument("--train", default="fashion-mnist:train", help="labelled images: fashion-mnist:train or a folder")
        p.add_argument("--test", default="fashion-mnist:test")
        p.add_argument("--pool", choices=["mean", "cls"], default="mean")
        p.add_argument("--cache", help="the data cache (default: the run's data.cache_dir)")
        p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                       help="feature extraction precision (auto: bf16 where the CPU is fast at it)")
        p.set_defaults(func=lambda a, k=kind: cmd_eval(a, k))

    p = sub.add_parser("finetune-ctc", help="speech: CTC fine-tuning on letters, pre-trained vs random init")
    p.add_argument("model", help="an export folder, a run folder or a checkpoint file")
    p.add_argument("--cache", default="cache", help="the prepared corpus (data2vec2 prepare speech)")
    p.add_argument("--train", help="TSV manifest path<TAB>samples<TAB>transcript (default: the corpus's ctc_train.tsv)")
    p.add_argument("--test", action="append", help="test manifest(s) (default: ctc_test.tsv and ctc_test_synth.tsv)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--freeze-steps", type=int, default=200, help="updates with the whole encoder frozen")
    p.add_argument("--no-progress", action="store_true")
    _add_comparison_options(p)
    p.set_defaults(func=cmd_finetune_ctc)

    p = sub.add_parser("kws", help="speech: keyword spotting with a linear head, pre-trained vs random init")
    p.add_argument("model", help="an export folder, a run folder or a checkpoint file")
    p.add_argument("--cache", default="cache")
    p.add_argument("--train", help="TSV manifest path<TAB>samples<TAB>word (default: kws_train.tsv)")
    p.add_argument("--test", help="default: kws_test.tsv (held-out voices)")
    _add_comparison_options(p)
    p.set_defaults(func=cmd_kws)

    p = sub.add_parser("export", help="write the encoder as model.safetensors + config.json (text: a transformers model)")
    p.add_argument("run", help="a run folder or a checkpoint file")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("embed", help="write features for a folder of images (.npy)")
    p.add_argument("model", help="an export folder, a run folder or a checkpoint file")
    p.add_argument("images", help="a folder of images (recursive) or fashion-mnist:test")
    p.add_argument("--out", required=True)
    p.add_argument("--pool", choices=["mean", "cls"], default="mean")
    p.set_defaults(func=cmd_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (argparse only takes them before)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except Data2Vec2Error as e:
        print(f"data2vec2: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("data2vec2: interrupted; the last checkpoint on disk is complete (resume with the same command)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
