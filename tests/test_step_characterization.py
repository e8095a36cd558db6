"""Characterization of one training step per modality, pinned from the code as it was when the
package was reshaped into one folder per modality (version 0.1.0, which matched the reference
implementation numerically).

For each case: a small model in fp32 at a fixed seed, a fixed batch, fixed masks and fixed
mask-noise seeds, dropout off. One update: forward, backward, clip, AdamW, EMA (tau = 0.5, so the
teacher moves measurably). Recorded: the targets, the predictions at the masked positions, the
loss, the gradient norm of every parameter and the teacher after the EMA step. The current code
must reproduce every one of them to a relative difference of 1e-6 (||a - b|| / ||b||).

    python tests/test_step_characterization.py --write    # re-pin (only for a deliberate change)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

REFERENCE = Path(__file__).parent / "data" / "step_characterization.safetensors"

NO_DROPOUT = ["model.dropout=0", "model.attention_dropout=0", "model.activation_dropout=0",
              "model.post_mlp_dropout=0", "model.prenet_dropout=0", "model.drop_path=0", "model.layerdrop=0",
              "decoder.input_dropout=0", "train.precision=fp32", "optim.warmup_steps=0",
              "ema.decay=0.5", "ema.end_decay=0.5"]
SMALL_BLOCKS = ["model.embed_dim=32", "model.num_heads=2", "model.depth=2", "targets.top_k=2",
                "masking.num_masks=2"]
AUDIO_CNN = "model.audio.conv_layers=[[16,10,5],[16,3,2],[16,3,2]]"
CASES = {
    "image": ("image-tiny", SMALL_BLOCKS + ["model.prenet_depth=1", "decoder.dim=32", "decoder.groups=4",
                                            "decoder.layers=2"]),
    "audio": ("audio-tiny", SMALL_BLOCKS + ["model.prenet_depth=1", AUDIO_CNN, "model.audio.conv_pos_width=15",
                                            "model.audio.conv_pos_depth=3", "model.audio.conv_pos_groups=4",
                                            "model.audio.ema_local_encoder=false", "decoder.dim=16",
                                            "decoder.groups=4", "decoder.layers=2"]),
    "audio-ema-local": ("audio-tiny", SMALL_BLOCKS + [AUDIO_CNN, "model.audio.conv_pos_width=15",
                                                      "model.audio.conv_pos_depth=3", "model.audio.conv_pos_groups=4",
                                                      "model.audio.ema_local_encoder=true", "decoder.dim=16",
                                                      "decoder.groups=4", "decoder.layers=2"]),
    "text": ("text-tiny", SMALL_BLOCKS + ["model.text.vocab_size=64", "model.text.max_positions=16",
                                          "model.text.embed_dropout=0", "decoder.dim=32", "decoder.layers=2"]),
}


def fixed_batch(name: str, config) -> dict:
    """The inputs, masks (B*M, T) and noise seeds (B,) of a case, from fixed seeds."""
    from data2vec2.masking import block_mask_1d, make_masks

    g = torch.Generator().manual_seed(1234)
    rng = np.random.default_rng(1234)
    m = config.masking
    if name == "image":
        ic = config.model.image
        inputs = torch.randn(2, ic.in_channels, ic.image_size, ic.image_size, generator=g)
        grid = ic.image_size // ic.patch_size
        mask = np.concatenate([make_masks(m.kind, m.num_masks, (grid, grid), m.mask_prob, m.mask_length,
                                          m.mask_prob_adjust, rng) for _ in range(2)])
    elif name.startswith("audio"):
        inputs = torch.randn(2, 1600, generator=g)
        T = 79  # frames of 1600 samples through the small CNN
        mask = np.concatenate([block_mask_1d(m.num_masks, T, m.mask_prob, m.mask_length, m.mask_prob_adjust, rng)
                               for _ in range(2)])
    else:
        inputs = torch.randint(4, config.model.text.vocab_size, (2, 16), generator=g)
        inputs[:, 0] = 0  # <s>
        inputs[1, 13:] = 1  # <pad>: the second block is 13 tokens long
        count = 13 - int(13 * (1.0 - m.mask_prob))
        mask = np.zeros((4, 16), dtype=bool)
        for row, valid in enumerate([16, 16, 13, 13]):
            mask[row, rng.permutation(valid)[:count]] = True
    return {"inputs": inputs, "mask": torch.from_numpy(mask), "noise_seed": torch.tensor([11, 22])}


def run_step(name: str) -> dict[str, torch.Tensor]:
    """One update of the current code on the fixed batch; returns what is compared."""
    from data2vec2.config import load_config
    from data2vec2.model import build_model
    from data2vec2.train.optim import build_optimizer, build_scheduler

    preset, overrides = CASES[name]
    config = load_config(preset, overrides + NO_DROPOUT)
    torch.manual_seed(0)
    model = build_model(config)
    model.train()
    b = fixed_batch(name, config)
    optimizer = build_optimizer(model.student, config.optim, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, config.optim, config.train.max_steps)

    with torch.no_grad():
        out = model.student(b["inputs"], b["mask"], b["noise_seed"])
        targets = model.targets(b["inputs"], out.local_features)
    result = model(b["inputs"], b["mask"], b["noise_seed"])
    loss = result["loss_sum"] / result["num_masked"]
    loss.backward()
    record = {"targets": targets, "pred_masked": out.pred[b["mask"]], "loss": loss.detach().double()}
    for pname, p in model.student.named_parameters():
        record[f"grad_norm/{pname}"] = p.grad.norm().double()
    torch.nn.utils.clip_grad_norm_(model.student.parameters(), config.optim.clip_norm or float("inf"))
    optimizer.step()
    scheduler.step()
    model.update_teacher(1)
    for pname, t in model.teacher.state_dict().items():
        record[f"teacher/{pname}"] = t
    return {k: v.detach().contiguous() for k, v in record.items()}


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30)) if b.norm() > 0 else float((a - b).norm())


@pytest.mark.parametrize("name", list(CASES))
def test_one_training_step_reproduces_the_pinned_numbers(name):
    reference = {k.split(":", 1)[1]: v for k, v in load_file(str(REFERENCE)).items() if k.startswith(name + ":")}
    assert reference, f"no pinned numbers for {name}"
    current = run_step(name)
    assert sorted(current) == sorted(reference)
    for key, want in reference.items():
        got = current[key]
        assert got.shape == want.shape, key
        assert relative_difference(got, want) <= 1e-6, f"{name}: {key} differs by {relative_difference(got, want):.2e}"


if __name__ == "__main__" and "--write" in sys.argv:
    torch.set_num_threads(1)
    pinned = {f"{name}:{k}": v for name in CASES for k, v in run_step(name).items()}
    REFERENCE.parent.mkdir(exist_ok=True)
    save_file(pinned, str(REFERENCE))
    print(f"wrote {len(pinned)} tensors to {REFERENCE}")
