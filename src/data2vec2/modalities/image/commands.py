"""The image commands: `prepare fashion-mnist`, `probe`, `knn`, `embed`, `demo` (fine-tuning: `data2vec2
finetune image-cls-tiny`, the task in classification.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...errors import DataError
from ...export import check_out, load_encoder_and_config
from ...options import number


def cmd_prepare(args, modality) -> None:
    from .fashion_mnist import prepare_fashion_mnist

    out = prepare_fashion_mnist(Path(args.cache), progress=True)
    print(f"Fashion-MNIST ready in {out}")


def cmd_evaluate(args, modality) -> None:
    import torch

    from ...train.setup import pick_dtype
    from .evaluate import evaluate_encoder

    encoder, config = load_encoder_and_config(args.model, {modality.name: modality})
    if args.cache:
        config.data.cache_dir = args.cache
    bf16 = pick_dtype(args.precision, torch.device("cpu")) == torch.bfloat16
    result = evaluate_encoder(encoder, config, args.train, args.test, pool=args.pool, knn=args.command == "knn",
                              probe=args.command == "probe", bf16=bf16)
    print(json.dumps(result, indent=2))


def cmd_embed(args, modality) -> None:
    import numpy as np

    from .data import open_image_source
    from .evaluate import extract_features

    out = Path(args.out)
    if out.suffix != ".npy":
        raise DataError(f"--out {out}: give a .npy file name (numpy.save would add the suffix)")
    check_out(out, args.overwrite, folder=False)
    if out.parent.exists() and not out.parent.is_dir():
        raise DataError(f"--out {out}: {out.parent} is a file, not a folder")
    encoder, config = load_encoder_and_config(args.model, {modality.name: modality})
    source = open_image_source(args.images, Path(config.data.cache_dir), config.data.settings.channels)
    image, data = config.model.settings, config.data.settings
    feats, _ = extract_features(encoder, source, image_size=image.image_size, mean=data.mean, std=data.std,
                                pool=args.pool, progress=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npy")
    np.save(tmp, feats.numpy())
    os.replace(tmp, out)
    paths = [source.path(i) for i in range(len(source))]
    Path(str(out) + ".paths.txt").write_text("\n".join(paths) + "\n")
    print(f"wrote {tuple(feats.shape)} features to {out} (row order in {out}.paths.txt)")


def cmd_demo(args, modality) -> None:
    from .demo import run_demo

    run_demo(modality, args.out, args.overrides, resume=args.resume, progress=not args.no_progress,
             budget_minutes=args.budget_minutes)


def add_commands(sub, prepare, modality) -> None:
    """`sub`: the command line's sub-commands; `prepare`: those of `data2vec2 prepare`."""
    p = prepare.add_parser("fashion-mnist", help="Fashion-MNIST from its Debian package")
    p.add_argument("--cache", default="cache")
    p.set_defaults(func=cmd_prepare, modality=modality)

    p = sub.add_parser("demo", help="pre-train image-tiny on Fashion-MNIST and compare linear probes")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo instead of starting over")
    p.add_argument("--budget-minutes", type=number(above=0), default=11.0,
                   help="pre-training and evaluation together, sized to this machine (default 11)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=5e-4")
    p.set_defaults(func=cmd_demo, modality=modality)

    for kind, help_text in (("probe", "image: linear probe on frozen features"),
                            ("knn", "image: k-nearest-neighbour accuracy")):
        p = sub.add_parser(kind, help=help_text)
        p.add_argument("model", help="an export folder, a run folder or a checkpoint file")
        p.add_argument("--train", default="fashion-mnist:train",
                       help="labelled images: fashion-mnist:train or a folder")
        p.add_argument("--test", default="fashion-mnist:test")
        p.add_argument("--pool", choices=["mean", "cls"], default="mean")
        p.add_argument("--cache", help="the data cache (default: the run's data.cache_dir)")
        p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                       help="feature extraction precision (auto: bf16 where the CPU is fast at it)")
        p.set_defaults(func=cmd_evaluate, modality=modality)

    p = sub.add_parser("embed", help="image: write features for a folder of images (.npy)")
    p.add_argument("model", help="an export folder, a run folder or a checkpoint file")
    p.add_argument("images", help="a folder of images (recursive) or fashion-mnist:test")
    p.add_argument("--out", required=True, help="the .npy file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--pool", choices=["mean", "cls"], default="mean")
    p.set_defaults(func=cmd_embed, modality=modality)
