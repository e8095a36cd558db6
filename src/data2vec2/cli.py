"""The `data2vec2` command line. It parses and calls; each modality adds its own commands (its
record's `add_commands`).

    data2vec2 demo [--out runs/demo]                       the main job: pre-train, probe, summary
    data2vec2 presets                                      list the shipped presets
    data2vec2 prepare fashion-mnist|audio|text [--cache cache]   build a data set into the cache
    data2vec2 pretrain image-tiny --run-dir runs/x [k=v ...]  pre-train (auto-resumes)
    data2vec2 finetune image-cls-tiny --init runs/x [--compare]  fine-tune a task (auto-resumes)
    data2vec2 rewind RUN STEP                              go back to a step checkpoint (after a divergence)
    torchrun --nproc_per_node=N -m data2vec2 pretrain ...  the same on N processes (DDP)
    data2vec2 export RUN --out DIR                         the encoder in its modality's export format
    data2vec2 import-fairseq CKPT --out DIR [--run-dir RUN]   a reference checkpoint: export / continue
    data2vec2 benchmark PRESET [--precision fp32 bf16]     speed of training updates: step time, MFU
    data2vec2 probe | knn | embed RUN_OR_EXPORT ...        image evaluations
    data2vec2 finetune-ctc | kws RUN_OR_EXPORT ...         audio evaluations, pre-trained vs random init
    data2vec2 tokenizer ... | finetune-text | probe-text RUN_OR_EXPORT  text: BPE, classification, probe
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import ConfigError, Data2Vec2Error, DataError, Interrupted, TrainingError
from .options import integer, number

PRECISIONS = ("auto", "fp32", "bf16")


def cmd_presets(args) -> None:
    from . import load_config
    from .config import preset_names

    for name in preset_names():
        config = load_config(name)
        model, train = config.model, config.train
        if config.finetune.task:
            print(f"{name:16s} {model.modality} {config.finetune.task} (fine-tuning: data2vec2 finetune {name} --init ...): "
                  f"batch={train.batch_size} updates={train.max_steps} lr={config.optim.lr:g}")
            continue
        print(f"{name:16s} {model.modality}: D={model.embed_dim} blocks={model.prenet_depth}+{model.depth} "
              f"heads={model.num_heads} M={config.masking.num_masks} batch={train.batch_size} "
              f"updates={train.max_steps}")


def cmd_pretrain(args) -> None:
    from . import load_config, pretrain
    from .train import distributed

    config = load_config(args.preset, args.overrides)
    run = Path(args.run_dir or f"runs/{config.name}")
    try:
        result = pretrain(config, run, resume=not args.no_resume, progress=not args.no_progress)
    finally:
        distributed.cleanup()  # the process group (torchrun's, or train.fsdp's group of one)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps({k: v for k, v in result.items() if k != "last"} | {"last_loss": result["last"].get("loss")}))


def cmd_rewind(args) -> None:
    from .train.checkpoint import RunLock, rewind

    run = Path(args.run)
    if not (run / "checkpoints").is_dir():
        raise TrainingError(f"{run} is not a run folder (no checkpoints/ in it)")
    with RunLock(run):  # not while a process trains in it
        print(f"[data2vec2] {rewind(run, args.step)}")


def cmd_finetune(args) -> None:
    from .finetune import finetune_runs
    from .modalities import MODALITIES
    from .train import distributed

    overrides = list(args.overrides) + ([f"finetune.init={args.init}"] if args.init else [])
    run = Path(args.run_dir or f"runs/{Path(args.preset).stem}")
    try:
        summary = finetune_runs(args.preset, overrides, run, MODALITIES, compare=args.compare, seeds=args.seeds,
                                lrs=args.lrs, resume=not args.no_resume, progress=not args.no_progress)
    finally:
        distributed.cleanup()
    if summary is not None:
        print(json.dumps(summary))


def cmd_export(args) -> None:
    from . import load_encoder_and_config
    from .export import check_out
    from .modalities import MODALITIES
    from .predict import is_finetuned, load_model, write_model

    if is_finetuned(args.run):  # the whole model (its best checkpoint), in the format asked for
        model = load_model(Path(args.run), MODALITIES)
        if args.format == "transformers" and model.task.export_transformers is None:
            raise ConfigError(f"--format transformers: a {model.config.model.modality} {model.task.name} model has "
                              f"no transformers format (text classifiers do)")
        check_out(Path(args.out), args.overwrite, folder=True)
        if args.format == "onnx":
            from .onnx_export import export_finetuned_onnx

            out = export_finetuned_onnx(model, Path(args.out))
            print(f"exported the fine-tuned model to {out / 'model.onnx'} (input 'inputs', output 'scores'; the labels "
                  f"and the input's shape and dtype are in {out / 'config.json'})")
        elif args.format == "transformers":
            out = model.task.export_transformers(model, Path(args.out))
            print(f"exported the fine-tuned model to {out} (transformers: AutoModelForSequenceClassification."
                  f"from_pretrained('{out}'))")
        else:
            out = write_model(model.objective, model.config, model.task, model.labels, Path(args.out), str(args.run))
            print(f"exported the fine-tuned model to {out} (data2vec2 predict {out} INPUTS..., or "
                  f"data2vec2.load_model('{out}'))")
        return
    if args.format == "transformers":
        raise ConfigError("--format transformers exports fine-tuned text models; a text encoder's native export is "
                          "already a transformers RobertaModel")
    check_out(Path(args.out), args.overwrite, folder=True)
    encoder, config = load_encoder_and_config(args.run)
    record = MODALITIES[config.model.modality]
    if args.format == "onnx":
        from .onnx_export import export_onnx

        out = export_onnx(encoder, config, record, Path(args.out))
        print(f"exported the {config.model.modality} encoder to {out / 'model.onnx'} (input 'inputs', output "
              f"'features'; the input's shape and dtype are in {out / 'config.json'})")
        return
    out = record.export(encoder, config, Path(args.out))
    print(f"exported the {config.model.modality} encoder to {out} (load it with data2vec2.load_encoder('{out}'))")


def cmd_predict(args) -> None:
    from .modalities import MODALITIES
    from .predict import load_model, predict

    model = load_model(args.model, MODALITIES)
    if args.lm:
        model.use_language_model(args.lm, lexicon=args.lexicon, beam=args.beam, lm_weight=args.lm_weight,
                                 word_score=args.word_score)
    elif args.lexicon:
        raise DataError("--lexicon goes with --lm (the language model whose words it lists)")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    summary = predict(model, args.inputs, out, batch_size=args.batch_size, top=args.top, on_bad_file=args.on_bad_file,
                      progress=not args.no_progress, device=args.device, precision=args.precision,
                      workers=args.workers)
    sys.stdout.flush()
    scores = "; " + ", ".join(f"{k} {v:.4f}" for k, v in summary["scores"].items()) if "scores" in summary else ""
    print(f"[data2vec2] predicted {summary['predicted']}, skipped {summary['skipped']} in {summary['seconds']:.1f} s "
          f"({summary['per_second']} per second){scores}" + (f" -> {out}" if out else ""), file=sys.stderr)
    if args.summary:  # the numbers with what produced them
        from .provenance import results_header

        record = {"header": results_header(summary["precision"]), "model": str(args.model), "inputs": list(args.inputs),
                  **summary, "batch_size": args.batch_size}
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(json.dumps(record, indent=1) + "\n")


def cmd_import_fairseq(args) -> None:
    import copy

    from .export import check_out
    from .fairseq_import import encoder_state, import_fairseq, write_run
    from .modalities import MODALITIES

    if not args.out and not args.run_dir:
        raise ConfigError("import-fairseq: give --out (an encoder export), --run-dir (a run to continue) or both")
    if args.out:
        check_out(Path(args.out), args.overwrite, folder=True)
    if args.run_dir:
        check_out(Path(args.run_dir), args.overwrite, folder=True)
    overrides = [f"data.tokenizer={args.tokenizer}"] if args.tokenizer else []
    imported = import_fairseq(args.checkpoint, MODALITIES, overrides + list(args.overrides), args.allow_unused)
    print(imported.report())
    config = imported.config
    if args.out:
        encoder = copy.deepcopy(imported.model.encoder)
        encoder.load_state_dict(encoder_state(imported.model, args.weights))
        out = MODALITIES[config.model.modality].export(encoder, config, Path(args.out))
        print(f"exported the {args.weights}'s encoder to {out} (load it with data2vec2.load_encoder('{out}'))")
    if args.run_dir:
        config_file = write_run(imported, Path(args.run_dir), str(args.checkpoint))
        print(f"wrote {config_file}; continue pre-training on your data with\n"
              f"  data2vec2 pretrain {config_file} --run-dir {args.run_dir} data.train=...\n"
              f"(a fresh optimizer and learning-rate schedule, warmup included; the EMA starts from the "
              f"imported teacher; the batch and schedule are those of our {config.model.modality}-base preset: "
              f"override train.* and optim.* to suit)")


def cmd_benchmark(args) -> None:
    from .benchmark import time_updates
    from .provenance import results_header
    from .finetune import load_finetune_config
    from .modalities import MODALITIES

    # `--precision fp32 key=value`: nargs="+" takes the overrides that follow; give them back
    overrides = list(args.overrides) + [v for v in args.precision + args.compile if "=" in v]
    precisions, compiles = ([v for v in values if "=" not in v] for values in (args.precision, args.compile))
    for name, values, allowed in (("--precision", precisions, PRECISIONS), ("--compile", compiles, ("off", "on"))):
        if not values or any(v not in allowed for v in values):
            raise ConfigError(f"{name}: choose from {', '.join(allowed)}, not {' '.join(values) or 'nothing'}")
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():  # checked before the work, not after it
        raise DataError(f"--out {out} is a folder: give the JSON-lines file to append to, e.g. {out / 'speed.jsonl'}")
    if out is not None and out.parent.exists() and not out.parent.is_dir():
        raise DataError(f"--out {out}: {out.parent} is a file, not a folder")
    for precision in precisions:
        for compiled in compiles:
            settings = [f"train.precision={precision}", f"train.compile={compiled == 'on'}"]
            # (a fine-tuning preset takes the architecture of finetune.init, if given)
            config = load_finetune_config(args.preset, overrides + settings, MODALITIES)
            result = time_updates(config, MODALITIES[config.model.modality], args.steps,
                                  warmup=3 if compiled == "on" else 1)
            line = json.dumps({"preset": config.name, "overrides": overrides, **result,
                               **results_header(result["precision"])})
            print(line, flush=True)
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                with open(out, "a") as f:
                    f.write(line + "\n")


def build_parser() -> argparse.ArgumentParser:
    from .modalities import MODALITIES

    parser = argparse.ArgumentParser(prog="data2vec2", description="data2vec 2.0 self-supervised pre-training",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("prepare", help="prepare a data set into the cache")
    prepare = p.add_subparsers(dest="dataset", required=True)

    p = sub.add_parser("pretrain", help="pre-train (resumes automatically from the run folder)")
    p.add_argument("preset", help="a preset name (data2vec2 presets) or a YAML file")
    p.add_argument("--run-dir", help="run folder (default runs/<preset name>)")
    p.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in the run folder")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=5e-4")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("rewind", help="go back to a step checkpoint of a run (after a divergence): the checkpoints "
                                      "after it are moved aside, and the next pretrain or finetune of the run "
                                      "resumes from it")
    p.add_argument("run", help="the run folder")
    p.add_argument("step", type=integer(1), help="the update of the step checkpoint to go back to")
    p.set_defaults(func=cmd_rewind)

    p = sub.add_parser("finetune", help="fine-tune on a labelled task (a fine-tuning preset): validation, the best "
                                        "checkpoint, results.json; resumes like pretrain")
    p.add_argument("preset", help="a fine-tuning preset (data2vec2 presets: image-cls-tiny, ...) or a YAML file")
    p.add_argument("--init", help="the encoder to start from: a run folder, a checkpoint or an export "
                                  "(finetune.init; its architecture is used)")
    p.add_argument("--run-dir", help="run folder (default runs/<preset name>)")
    p.add_argument("--compare", action="store_true",
                   help="also fine-tune a random encoder of the same architecture with the same recipe: "
                        "RUN_DIR/pretrained, RUN_DIR/random_init and RUN_DIR/comparison.json")
    p.add_argument("--seeds", nargs="+", type=integer(0),
                   help="fine-tune once per seed (train.seed; it also draws the random twin); mean and spread in "
                        "RUN_DIR/comparison.json")
    p.add_argument("--lrs", nargs="+", type=number(above=0),
                   help="fine-tune once per learning rate (optim.lr) too; each init's is chosen on the validation "
                        "metric (its mean over the seeds)")
    p.add_argument("--no-resume", action="store_true", help="ignore a checkpoint in the run folder")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-3")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("predict", help="predict with a fine-tuned model: labels, transcripts or scores, one JSON "
                                       "line per input; labelled inputs are also scored")
    p.add_argument("model", help="a fine-tuned export (data2vec2 export of a fine-tuning run), run folder or checkpoint")
    p.add_argument("inputs", nargs="+", help="files, folders (recursive), .txt lists of paths, a manifest (audio) "
                                             "or a TSV / text file (text); a labelled set is scored")
    p.add_argument("--out", help="the JSON-lines file to write (default: standard output)")
    p.add_argument("--summary", help="also write the counts, speed and scores as JSON here, with the machine")
    p.add_argument("--batch-size", type=integer(1), help="default: the fine-tuning's train.batch_size")
    p.add_argument("--top", type=integer(1), default=5, help="classifiers: the most likely labels listed")
    p.add_argument("--on-bad-file", choices=("stop", "skip"), default="stop")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto, as in training: bf16 on GPUs and on CPUs fast at it (AMX, AVX512-BF16), else fp32")
    p.add_argument("--workers", type=integer(0), default=0, help="DataLoader worker processes (decoding)")
    p.add_argument("--lm", help="speech recognition: decode by beam search with this word n-gram model (ARPA or "
                                "KenLM binary; data2vec2 ngram writes one), not greedily; needs flashlight-text")
    p.add_argument("--lexicon", help="with --lm: the words to propose, one per line (default: the ARPA file's)")
    p.add_argument("--beam", type=integer(1), default=50, help="with --lm: hypotheses kept per frame")
    p.add_argument("--lm-weight", type=number(minimum=0), default=2.0, help="with --lm: the LM log-probability's weight")
    p.add_argument("--word-score", type=number(), default=-1.0, help="with --lm: added per word")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write the encoder for use without the training code "
                                      "(text: a transformers model)")
    p.add_argument("run", help="a run folder or a checkpoint file")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing export in --out")
    p.add_argument("--format", choices=("native", "onnx", "transformers"), default="native",
                   help="native: an encoder in its modality's format (text: a transformers RobertaModel), a "
                        "fine-tuning run in ours (for predict and load_model); onnx: model.onnx, an encoder's "
                        "features or a fine-tuned model's scores (needs the onnx extra); transformers: a "
                        "fine-tuned text model as RobertaForSequenceClassification")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-fairseq", help="read a data2vec 2.0 checkpoint of the reference (fairseq) without "
                                             "fairseq and without running code from the file")
    p.add_argument("checkpoint", help="a fairseq data2vec 2.0 pre-training checkpoint (.pt) of any modality")
    p.add_argument("--out", help="write the encoder here (the modality's export format)")
    p.add_argument("--weights", choices=("teacher", "student"), default="teacher",
                   help="which encoder --out exports (default: the EMA teacher)")
    p.add_argument("--run-dir", help="write a run folder that `data2vec2 pretrain` continues from")
    p.add_argument("--tokenizer", help="text (required): the tokenizers JSON whose ids the checkpoint uses "
                                       "(RoBERTa's GPT-2 BPE, e.g. the tokenizer.json of roberta-base)")
    p.add_argument("--allow-unused", action="store_true",
                   help="import even when the file holds tensors that are not mapped (they are listed)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing --out or --run-dir")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="settings of the continued run, e.g. data.train=my_images train.batch_size=64")
    p.set_defaults(func=cmd_import_fairseq)

    p = sub.add_parser("benchmark", help="time full training updates of a preset on random inputs (pre-training, or "
                                         "a fine-tuning preset's task): step time, samples/s, FLOP/s, MFU, peak "
                                         "memory (one JSON line each)")
    p.add_argument("preset", help="a preset name (data2vec2 presets) or a YAML file")
    p.add_argument("--precision", nargs="+", default=["auto"], metavar="{auto,fp32,bf16}",
                   help="auto: what training would use here (bf16 where the CPU or GPU is fast at it)")
    p.add_argument("--compile", nargs="+", default=["off"], metavar="{off,on}",
                   help="torch.compile each transformer block (on: 3 warm-up updates instead of 1)")
    p.add_argument("--steps", type=integer(1), default=5, help="timed updates (the median is reported)")
    p.add_argument("--out", help="append the JSON lines to this file (e.g. docs/benchmarks/step_speed.jsonl)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.batch_size=8")
    p.set_defaults(func=cmd_benchmark)

    for modality in MODALITIES.values():
        modality.add_commands(sub, prepare, modality)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (argparse only takes them before)
    options = [e for e in extra if e.startswith("-")]
    if options or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(options or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    not_set = [o for o in getattr(args, "overrides", []) if "=" not in o]
    if not_set:
        parser.error(f"{not_set[0]!r} is not an override: write key=value, e.g. {not_set[0]}=VALUE")
    import torch  # (every command uses it; here for its out-of-memory error)

    try:
        if hasattr(args, "modality"):
            args.func(args, args.modality)
        else:
            args.func(args)
    except Data2Vec2Error as e:
        print(f"data2vec2: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # a signal during training: the update it arrived in was finished and saved
        print(f"data2vec2: {e}", file=sys.stderr)
        return 128 + e.signal_number
    except KeyboardInterrupt:
        print("data2vec2: interrupted; the last checkpoint on disk is complete (resume with the same command)",
              file=sys.stderr)
        return 130
    except torch.cuda.OutOfMemoryError as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else "CUDA out of memory"
        print(f"data2vec2: error: the GPU ran out of memory ({first}). Use a smaller micro-batch: lower "
              f"train.batch_size, or raise train.grad_accum (the same update in more steps), or set "
              f"train.activation_checkpointing=true; the last checkpoint on disk is complete", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
