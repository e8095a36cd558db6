"""A control for docs/text.md: pre-train text-tiny's encoder with plain masked language modelling
(BERT's objective, not this library's) on the same corpus, batch and precision, then fine-tune it
and a randomly initialised twin on Rotten Tomatoes with `finetune-text`'s recipe, for each seed.

    python benchmarks/text_mlm_control.py --cache cache --updates 10000 --seeds 0 1 2 --out mlm.json

MLM here: 15 % of the tokens after <s> are chosen; 80 % of those become a mask symbol, 10 % a
random token, 10 % stay; a Linear -> GELU -> LayerNorm head whose output layer is the (tied) token
embedding predicts the originals. The vocabulary has no <mask>, so <unk> (id 3) serves: a
byte-level BPE never emits it. AdamW as text-tiny's (0.9, 0.98, eps 1e-6, weight decay 0.01), its
peak LR and warmup, then cosine to zero. If the control does no better than data2vec at the same
compute, the objective is not what holds text-tiny back.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data2vec2 import load_config
from data2vec2.encoder import Encoder
from data2vec2.modalities import MODALITIES
from data2vec2.modalities.text.data import BOS, UNK, TokenBlocks, prepare_token_cache
from data2vec2.modalities.text.finetune import Recipe, finetune_compare
from data2vec2.model import build_encoder, random_encoder
from data2vec2.train.setup import pick_dtype


class MlmHead(nn.Module):
    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        D = embedding.embedding_dim
        self.transform = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.LayerNorm(D))
        self.embedding = embedding  # tied output layer
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x) @ self.embedding.weight.t() + self.bias  # (N, V)


def corrupt(tokens: torch.Tensor, vocab_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, T) -> (corrupted input (B, T), chosen positions (B, T) bool); <s> is never chosen."""
    chosen = torch.rand(tokens.shape, generator=gen) < 0.15
    chosen[:, 0] = False
    roll = torch.rand(tokens.shape, generator=gen)
    inputs = tokens.clone()
    inputs[chosen & (roll < 0.8)] = UNK
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = torch.randint(UNK + 1, vocab_size, (int(swap.sum()),), generator=gen)
    return inputs, chosen


def pretrain_mlm(config, folder: Path, updates: int, seed: int) -> tuple[Encoder, list[float]]:
    torch.manual_seed(seed)
    encoder = build_encoder(config.model, MODALITIES["text"])
    head = MlmHead(encoder.local_encoder.token_embed)
    params = list(encoder.parameters()) + [p for n, p in head.named_parameters() if not n.startswith("embedding.")]
    o = config.optim
    opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    warmup = o.warmup_steps
    def lr_factor(step: int) -> float:  # linear warmup, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(updates - warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    blocks = TokenBlocks(folder, config.model.text.max_positions)
    dtype = pick_dtype(config.train.precision, torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    encoder.train()
    for _ in tqdm(range(updates), desc="mlm", dynamic_ncols=True):
        index = torch.randint(len(blocks), (config.train.batch_size,), generator=gen)
        tokens = torch.stack([blocks.block(int(i)) for i in index])  # (B, T), <s> first
        assert bool((tokens[:, 0] == BOS).all())
        inputs, chosen = corrupt(tokens, config.model.text.vocab_size, gen)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits = head(encoder(inputs).x[chosen])  # (N chosen, V)
        loss = F.cross_entropy(logits.float(), tokens[chosen])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, o.clip_norm)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return encoder.eval(), losses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="cache", help="the data cache of 'data2vec2 prepare text'")
    p.add_argument("--updates", type=int, default=10000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config("text-tiny", [f"data.cache_dir={args.cache}"])
    _, folder = prepare_token_cache(config)
    start = time.perf_counter()
    encoder, losses = pretrain_mlm(config, folder, args.updates, seed=0)
    seconds = time.perf_counter() - start
    rt = Path(args.cache) / "text" / "rotten_tomatoes"
    first, last = losses[:100], losses[-100:]
    result = {"updates": args.updates, "pretrain_seconds": round(seconds, 1), "loss_first_100": sum(first) / len(first),
              "loss_last_100": sum(last) / len(last), "seeds": {}}
    for seed in args.seeds:
        r = finetune_compare(encoder, config, rt / "train.tsv", rt / "dev.tsv", rt / "test.tsv",
                             recipe=Recipe(seed=seed, threads=args.threads), progress=False,
                             baseline=random_encoder(config.model, MODALITIES["text"], seed=seed))
        result["seeds"][seed] = {name: r[name]["final"] for name in ("pretrained", "random_init")}
        dev = {f"{name}_dev": r[name]["final"]["dev"]["accuracy"] for name in ("pretrained", "random_init")}
        print(json.dumps({"seed": seed, **dev}), flush=True)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
