"""The baselines of objectives/ (data2vec 1.0, MAE, MLM): their losses on small cases computed by
hand, their masking invariants, and that each trains on real data through the same trainer and its
encoder exports and loads through the same commands as data2vec 2.0's."""

import math

import numpy as np
import pytest
import torch
from conftest import SMALL, SMALL_TEXT, settings_of

import data2vec2
from data2vec2.errors import ConfigError
from data2vec2.masking import make_masks
from data2vec2.modalities import MODALITIES
from data2vec2.objectives.mlm import corrupt

DATA2VEC1 = ["objective=data2vec1", "masking.num_masks=1", "loss.cls_weight=0"]
MAE = ["objective=mae", "masking.kind=random", "masking.mask_prob=0.75", "masking.num_masks=1",
       "decoder.num_heads=2"]
MLM = ["objective=mlm", "masking.mask_prob=0.15", "masking.num_masks=1"]


def image_model(extra):
    torch.manual_seed(0)
    config = data2vec2.load_config("image-tiny", SMALL + extra)
    return data2vec2.build_model(config).eval(), config


def images_and_mask(config, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 1, 28, 28, generator=g)
    m, rng = config.masking, np.random.default_rng(seed)
    mask = np.concatenate([make_masks(m.kind, m.num_masks, (7, 7), m.mask_prob, m.mask_length, m.mask_prob_adjust, rng)
                           for _ in range(B)])
    return images, torch.from_numpy(mask)


def patches_by_hand(images):
    """(B, 1, 28, 28) -> (B, 49, 16): 4x4 patches in row-major order, pixels row by row."""
    return images.reshape(images.shape[0], 7, 4, 7, 4).permute(0, 1, 3, 2, 4).reshape(images.shape[0], 49, 16)


def scramble_masked_patches(images, mask):
    """The same images with fresh pixels in every masked patch (mask: (B, 49), True = masked)."""
    noisy = images + 5 * torch.randn_like(images)
    patch_mask = mask.reshape(-1, 1, 7, 1, 7, 1).expand(-1, 1, 7, 4, 7, 4).reshape(images.shape)
    return torch.where(patch_mask, noisy, images)


@pytest.mark.parametrize("extra", [DATA2VEC1, MAE], ids=["data2vec1", "mae"])
def test_the_student_never_sees_the_masked_patches(extra):
    model, config = image_model(extra)
    images, mask = images_and_mask(config)
    seeds = torch.arange(3)
    with torch.no_grad():
        out = model.student(images, mask, seeds)
        again = model.student(scramble_masked_patches(images, mask), mask, seeds)
    torch.testing.assert_close(again.pred, out.pred)
    T = mask.shape[1]
    if config.objective == "data2vec1":  # the whole sequence is encoded (CLS + 49 tokens), one head output each
        assert out.encoded.shape[1] == 1 + T and out.pred.shape == (3, T, config.model.embed_dim)
    else:  # MAE: the encoder sees the CLS and the 12 visible patches only; the decoder predicts 16 pixels each
        assert out.encoded.shape[1] == 1 + T - int(mask[0].sum()) and out.pred.shape == (3, T, 16)


def test_mae_loss_by_hand():
    model, config = image_model(MAE)
    images, mask = images_and_mask(config)
    seeds = torch.arange(3)
    with torch.no_grad():
        pred = model.student(images, mask, seeds).pred.double().numpy()
        loss = float(model(images, mask, seeds).loss)
    patches = patches_by_hand(images).double().numpy()
    total, count = 0.0, 0
    for b in range(3):
        for t in np.flatnonzero(mask[b].numpy()):
            p = patches[b, t]
            target = (p - p.mean()) / math.sqrt(p.var(ddof=1) + 1e-6)  # norm_pix_loss, unbiased variance
            total += np.mean((pred[b, t] - target) ** 2)
            count += 1
    assert count == int(mask.sum()) == 3 * 37  # 75 % of 49 tokens, rounded, in every row
    assert loss == pytest.approx(total / count, rel=1e-5)


def test_data2vec1_loss_by_hand():
    model, config = image_model(DATA2VEC1)
    images, mask = images_and_mask(config)
    seeds = torch.arange(3)
    with torch.no_grad():
        pred = model.student(images, mask, seeds).pred.double()
        targets = model.forward_targets(images).double()  # the data2vec 2.0 targets code, tested in test_model.py
        loss = float(model(images, mask, seeds).loss)
    D = config.model.embed_dim
    by_hand = ((pred - targets) ** 2)[mask].sum() / math.sqrt(D) / mask.sum()
    assert loss == pytest.approx(float(by_hand), rel=1e-5)
    # the masked tokens enter as the learned mask embedding: the student has one more parameter vector
    names = dict(model.student.named_parameters())
    assert names["mask_embedding"].shape == (D,) and names["head.weight"].shape == (D, D)
    assert not any(n.startswith("decoder") for n in names)


def test_data2vec1_text_head_has_the_two_layers_of_v1_text():
    config = data2vec2.load_config("text-tiny", SMALL_TEXT + DATA2VEC1)  # text-tiny: decoder.projection_layers=2
    head, D = data2vec2.build_model(config).student.head, config.model.embed_dim
    assert [tuple(m.weight.shape) for m in head if isinstance(m, torch.nn.Linear)] == [(2 * D, D), (D, 2 * D)]
    assert isinstance(head[1], torch.nn.GELU)


def test_mlm_corruption_follows_80_10_10():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 500, (64, 512), generator=g)
    chosen = torch.rand(64, 512, generator=g) < 0.15
    out = corrupt(tokens, chosen, torch.arange(64), mask_id=3, first_ordinary=4, vocab=500)
    assert torch.equal(out[~chosen], tokens[~chosen])
    n = int(chosen.sum())
    masked = float((out[chosen] == 3).sum()) / n
    same = float((out[chosen] == tokens[chosen]).sum()) / n
    assert abs(masked - 0.8) < 0.02 and abs(same - (0.1 + 0.1 / 496)) < 0.015
    assert bool((out >= 3).all())  # never a special token other than the mask symbol
    assert torch.equal(out, corrupt(tokens, chosen, torch.arange(64), 3, 4, 500))  # seeded: a resume agrees


def test_mlm_loss_by_hand(tiny_text):
    preset, overrides = tiny_text
    torch.manual_seed(0)
    config = data2vec2.load_config(preset, overrides + MLM)
    model = data2vec2.build_model(config).eval()
    data = MODALITIES["text"].pretraining_data(config)
    batch = data.collate([data.dataset[i] for i in range(4)])
    tokens, mask, seeds = batch["inputs"], batch["mask"], batch["noise_seed"]
    with torch.no_grad():
        logits = model.student(tokens, mask, seeds).pred.double()
        loss = float(model(tokens, mask, seeds).loss)
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    by_hand = -log_probs[torch.arange(len(logits)), tokens[mask]].mean()
    assert logits.shape == (int(mask.sum()), config.model.settings.vocab_size)
    assert loss == pytest.approx(float(by_hand), rel=1e-5)
    assert loss == pytest.approx(math.log(config.model.settings.vocab_size), rel=0.1)  # untrained: near uniform


@pytest.fixture
def tiny_text(real_text, tokenizer_file, tmp_path):
    return "text-tiny", SMALL_TEXT + [f"data.train={real_text}", f"data.tokenizer={tokenizer_file}",
                                      f"data.cache_dir={tmp_path / 'cache'}"]


BASELINE_OVERRIDES = {"data2vec1": DATA2VEC1, "mae": MAE, "mlm": MLM}
# every baseline each modality of the table names (its testing.py's BASELINES)
CASES = {f"{modality}-{objective}": (modality, objective) for modality in MODALITIES
         for objective in settings_of(modality).BASELINES}


@pytest.mark.parametrize("case", list(CASES))
def test_each_objective_trains_and_its_encoder_exports(case, small_data, tmp_path):
    modality, objective = CASES[case]
    preset, extra = f"{modality}-tiny", BASELINE_OVERRIDES[objective]
    overrides = settings_of(modality).SMALL + small_data(modality)
    config = data2vec2.load_config(preset, overrides + extra + ["train.max_steps=12", "optim.lr=1e-3"])
    result = data2vec2.pretrain(config, tmp_path / "run", progress=False)
    assert result["steps"] == 12
    rows = [r for r in map(__import__("json").loads, (tmp_path / "run/metrics.jsonl").read_text().splitlines())]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    if objective in ("mae", "mlm"):  # a fixed target: the loss falls within a few updates
        assert np.mean(losses[-4:]) < np.mean(losses[:4])
    encoder, loaded = data2vec2.load_encoder_and_config(tmp_path / "run")
    assert loaded.objective == config.objective
    record = MODALITIES[modality]
    exported = data2vec2.load_encoder(record.export(encoder, loaded, tmp_path / "export"))
    data = record.pretraining_data(config)
    inputs = data.collate([data.dataset[i] for i in range(2)])["inputs"]
    with torch.no_grad():
        torch.testing.assert_close(exported(inputs).x, encoder(inputs).x)


def test_counted_flops_agree_with_the_hand_count():
    """The FLOP counter used for the baselines (train/flops.py: count_update_flops) gives data2vec
    2.0's hand count (image: grouped decoder convolutions included) to within 1 %."""
    from data2vec2.train.flops import count_update_flops

    config = data2vec2.load_config("image-tiny", SMALL + ["train.batch_size=4"])
    record = MODALITIES["image"]
    model = data2vec2.build_model(config)
    batch, length = record.synthetic_batch(config)
    counted = count_update_flops(model, batch, torch.device("cpu"))
    assert counted == pytest.approx(record.step_flops(config, 4, length), rel=0.01)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("extra", [["masking.drop_masked=false"], ["decoder.kind=transformer", "decoder.num_heads=4"]],
                         ids=["encode-masked", "transformer-decoder"])
def test_the_ablation_switches(extra):
    """masking.drop_masked=false encodes every token (masked ones as a learned embedding, so their
    pixels never reach the student); decoder.kind=transformer swaps the conv decoder. Both train."""
    model, config = image_model(extra + ["masking.num_masks=1"])  # one clone: a masked patch is hidden entirely
    images, mask = images_and_mask(config)
    seeds = torch.arange(3)
    with torch.no_grad():
        out = model.student(images, mask, seeds)
        again = model.student(scramble_masked_patches(images, mask), mask, seeds)
    M, T, D = config.masking.num_masks, mask.shape[1], config.model.embed_dim
    assert out.pred.shape == (3 * M, T, D)
    torch.testing.assert_close(again.pred, out.pred)
    kept = T if not config.masking.drop_masked else T - int(mask[0].sum())
    assert out.encoded.shape[1] == 1 + kept
    model.train()
    loss = model(images, mask, seeds).loss
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(p.grad is not None for n, p in model.student.named_parameters() if "decoder" in n or "mask_emb" in n)


def test_keys_added_later_may_be_missing_from_a_saved_config():
    from data2vec2.config import config_to_dict

    values = config_to_dict(data2vec2.load_config("image-tiny"))
    for section, key in (("decoder", "num_heads"), ("decoder", "kind"), ("masking", "drop_masked")):
        del values[section][key]
    loaded = data2vec2.config_from_dict(values, saved=True)
    assert loaded.decoder.kind == "conv" and loaded.masking.drop_masked and loaded.decoder.num_heads == 16
    del values["decoder"]["dim"]
    with pytest.raises(ConfigError, match="decoder.dim"):
        data2vec2.config_from_dict(values, saved=True)
    with pytest.raises(ConfigError, match="decoder.kind"):
        data2vec2.load_config("text-tiny", ["decoder.kind=transformer"])
