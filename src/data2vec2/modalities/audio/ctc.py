"""CTC fine-tuning on letters (fairseq `Wav2VecCtc`/`Wav2VecEncoder`) and greedy decoding, scored by WER and CER.

    wave -> frozen CNN -> projection -> masked frames replaced by N(0, 0.01^2) noise (span masking,
    no token dropping) + channel masking -> pos-conv -> blocks -> Linear(D, letters + blank) -> CTC

The whole encoder is frozen for the first `freeze_steps` updates (only the head learns); the
learning rate follows the tri-stage schedule (10% warmup, 40% hold, 50% exponential decay to 5%
of the peak). Decoding is greedy (Viterbi over frames without a language model): the argmax
letter per frame, repeats merged, blanks removed.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ...nn.blocks import Attention, Mlp
from .evaluate import LabelledClips, pad_batch

BLANK = 0
VOCAB = ["<blank>", " ", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB)}


@dataclass
class CTCConfig:
    steps: int = 1500
    batch_size: int = 8
    lr: float = 5e-4
    freeze_steps: int = 200  # whole encoder frozen (only the head trains) for these first updates
    mask_prob: float = 0.5  # span masking of frames, replaced by noise
    mask_length: int = 10
    mask_channel_prob: float = 0.1
    mask_channel_length: int = 16
    layerdrop: float = 0.1
    activation_dropout: float = 0.1
    max_samples: int = 160_000  # longer training clips are skipped (10 s)
    seed: int = 0


def encode_text(text: str) -> list[int]:
    return [CHAR_TO_ID[c] for c in text if c in CHAR_TO_ID and c != "<blank>"]


def greedy_decode(log_probs: Tensor, lengths: Tensor | None = None) -> list[str]:
    """(B, T, V) scores -> strings: argmax per frame, merge repeats, drop blanks."""
    best = log_probs.argmax(-1)  # (B, T)
    out = []
    for b in range(best.shape[0]):
        ids = best[b, : int(lengths[b]) if lengths is not None else best.shape[1]].tolist()
        chars, prev = [], None
        for i in ids:
            if i != prev and i != BLANK:
                chars.append(VOCAB[i])
            prev = i
        out.append(" ".join("".join(chars).split()))
    return out


def span_mask(B: int, T: int, prob: float, length: int, rng: np.random.Generator,
              frames: Tensor | None = None) -> Tensor:
    """wav2vec-style span masking: per row, floor(prob * T / length + U(0, 1)) spans (at least 1)
    with starts drawn without replacement from [0, T - length). (B, T) bool."""
    mask = np.zeros((B, T), dtype=bool)
    for b in range(B):
        t = int(frames[b]) if frames is not None else T
        if t <= length:
            continue
        n = max(1, int(prob * t / length + rng.random()))
        starts = rng.choice(t - length, size=min(n, t - length), replace=False)
        mask[b, (starts[:, None] + np.arange(length)[None]).ravel()] = True
    return torch.from_numpy(mask)


class CTCModel(nn.Module):
    def __init__(self, encoder, vocab_size: int = len(VOCAB)):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.cfg.embed_dim, vocab_size)

    def forward(self, wave: Tensor, padding: Tensor, frame_mask: Tensor | None = None,
                channel_mask: Tensor | None = None) -> Tensor:
        """Log-probabilities (B, T, V). frame_mask (B, T) / channel_mask (B, D): True = masked."""
        enc = self.encoder
        with torch.no_grad():  # the CNN stays frozen (feature_grad_mult 0)
            feats = enc.local_encoder.feature_extractor(wave).transpose(1, 2)  # (B, T, C)
        x = enc.local_encoder.project_features(feats)  # (B, T, D)
        if frame_mask is not None:
            noise = torch.randn_like(x) * 0.01
            x = torch.where(frame_mask.unsqueeze(-1), noise, x)
        if channel_mask is not None:
            x = x.masked_fill(channel_mask.unsqueeze(1), 0.0)
        x = x.masked_fill(padding.unsqueeze(-1), 0.0)
        x = enc.forward_unmasked(x, padding if padding.any() else None).x
        return F.log_softmax(self.head(x).float(), dim=-1)


def tri_stage(step: int, total: int, floor: float = 0.05, start: float = 0.01) -> float:
    warm, hold = int(0.1 * total), int(0.4 * total)
    if step < warm:
        return start + (1 - start) * step / max(1, warm)
    if step < warm + hold:
        return 1.0
    decay_steps = max(1, total - warm - hold)
    return math.exp(math.log(floor) * min(1.0, (step - warm - hold) / decay_steps))


def _batches(clips: LabelledClips, batch_size: int, rng: np.random.Generator):
    """Endless batches of similar length (sorted, chunked, chunks shuffled)."""
    order = np.argsort([len(w) for w in clips.waves])
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    while True:
        for c in rng.permutation(len(chunks)):
            yield chunks[c]


def finetune_ctc(encoder, train: LabelledClips, cfg: CTCConfig, progress: bool = True) -> CTCModel:
    torch.manual_seed(cfg.seed)
    enc = copy.deepcopy(encoder).float()
    enc.cfg = copy.deepcopy(enc.cfg)
    enc.cfg.layerdrop = cfg.layerdrop
    # fine-tuning dropouts (fairseq wav2vec finetuning YAMLs): activation dropout and layerdrop only, every other one 0
    for m in enc.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, Attention):
            m.attention_dropout = 0.0
    for m in enc.modules():
        if isinstance(m, Mlp):
            m.dropout.p = cfg.activation_dropout
    enc.cfg.prenet_dropout = 0.0
    enc.local_encoder.feature_extractor.requires_grad_(False)
    model = CTCModel(enc)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: tri_stage(s, cfg.steps))
    rng = np.random.default_rng(cfg.seed)
    batches = _batches(train, cfg.batch_size, rng)
    targets = [torch.tensor(encode_text(t)) for t in train.labels]
    model.train()
    bar = tqdm(range(cfg.steps), desc="ctc", disable=not progress, dynamic_ncols=True)
    for step in bar:
        idx = next(batches)
        wave, padding, frames = pad_batch([train.waves[i] for i in idx], enc.local_encoder.num_frames)
        B, T = padding.shape
        fmask = span_mask(B, T, cfg.mask_prob, cfg.mask_length, rng, frames) if cfg.mask_prob > 0 else None
        cmask = (span_mask(B, enc.cfg.embed_dim, cfg.mask_channel_prob, cfg.mask_channel_length, rng)
                 if cfg.mask_channel_prob > 0 else None)
        frozen = step < cfg.freeze_steps
        for n, p in enc.named_parameters():
            p.requires_grad_(not frozen and not n.startswith("local_encoder.feature_extractor."))
        lp = model(wave, padding, fmask, cmask)  # (B, T, V)
        tgt = [targets[i] for i in idx]
        loss = F.ctc_loss(lp.transpose(0, 1), torch.cat(tgt), frames, torch.tensor([len(t) for t in tgt]),
                          blank=BLANK, reduction="sum", zero_infinity=True) / B
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", frozen=frozen)
    return model.eval()


@torch.no_grad()
def transcribe(model: CTCModel, clips: LabelledClips, batch_size: int = 16) -> list[str]:
    model.eval()
    order = np.argsort([len(w) for w in clips.waves])
    out: list[str] = [""] * len(clips.waves)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        wave, padding, frames = pad_batch([clips.waves[i] for i in idx], model.encoder.local_encoder.num_frames)
        for i, text in zip(idx, greedy_decode(model(wave, padding), frames)):
            out[i] = text
    return out


def score(refs: list[str], hyps: list[str]) -> dict:
    import jiwer

    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps)), "num": len(refs)}


def evaluate_ctc(encoders: dict, train: LabelledClips, tests: dict[str, LabelledClips], cfg: CTCConfig,
                 progress: bool = True) -> dict:
    """Fine-tune each encoder ({"pretrained": enc, "random": enc}) with the same recipe and seed;
    WER/CER on each test set, plus a few example transcripts."""
    result = {}
    for name, encoder in encoders.items():
        start = time.perf_counter()
        model = finetune_ctc(encoder, train, cfg, progress)
        r = {"finetune_s": round(time.perf_counter() - start, 1)}
        for tname, clips in tests.items():
            hyps = transcribe(model, clips)
            r[tname] = score(clips.labels, hyps) | {"examples": [[clips.labels[i], hyps[i]] for i in range(3)]}
        result[name] = r
    return result
