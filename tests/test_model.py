import math

import numpy as np
import pytest
import torch
from conftest import SMALL

from data2vec2 import build_model, load_config
from data2vec2.masking import make_masks
from data2vec2.modalities.image.encoder import sincos_positions_2d
from data2vec2.errors import ConfigError
from data2vec2.nn.ema import ema_decay, ema_update, sized_to_run


def small_model(extra=()):
    torch.manual_seed(0)
    config = load_config("image-tiny", SMALL + list(extra))
    return build_model(config), config


def batch(config, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ic, m = config.model.settings, config.masking
    images = torch.randn(B, ic.in_channels, ic.image_size, ic.image_size, generator=g)
    grid = ic.image_size // ic.patch_size
    rng = np.random.default_rng(seed)
    mask = np.concatenate([make_masks(m.kind, m.num_masks, (grid, grid), m.mask_prob, m.mask_length,
                                      m.mask_prob_adjust, rng) for _ in range(B)])
    return images, torch.from_numpy(mask), torch.arange(B) + 100 * seed


def test_ema_schedule_values():
    assert ema_decay(0, 0.9998, 0.99999, 100_000) == pytest.approx(0.9998)
    assert ema_decay(50_000, 0.9998, 0.99999, 100_000) == pytest.approx((0.9998 + 0.99999) / 2)
    assert ema_decay(100_000, 0.9998, 0.99999, 100_000) == 0.99999
    assert ema_decay(10**7, 0.9998, 1.0, 300_000) == 1.0
    values = [ema_decay(t, 0.999, 0.9999, 1000) for t in range(0, 1200, 100)]
    assert all(a < b for a, b in zip(values[:10], values[1:11])) and values[-1] == values[-2] == 0.9999


def test_a_teacher_sized_to_the_run():
    """ema.start_half_life / end_half_life / anneal_fraction: fractions of train.max_steps. After h
    updates at the derived decay half of the teacher is its old self; the reference's image-base
    schedule reads back from its fractions; all 0 keeps the preset's schedule."""
    decay, end, anneal = sized_to_run(0.999, 0.9999, 1200, 720, 1 / 16, 1 / 4, 1 / 2)
    assert decay ** (720 / 16) == pytest.approx(0.5) and end ** (720 / 4) == pytest.approx(0.5) and anneal == 360
    ref = sized_to_run(0.0, 0.0, 0, 375_300, 3465.4 / 375_300, 69_314.4 / 375_300, 100_000 / 375_300)
    assert ref[0] == pytest.approx(0.9998, abs=1e-8) and ref[1] == pytest.approx(0.99999, abs=1e-9)
    assert ref[2] == 100_000
    assert sized_to_run(0.999, 0.9999, 1200, 720) == (0.999, 0.9999, 1200)
    model, config = small_model(["train.max_steps=800", "ema.start_half_life=0.0625", "ema.end_half_life=0.25",
                                 "ema.anneal_fraction=0.5"])
    assert model.ema_decay(0) == pytest.approx(0.5 ** (1 / 50))
    assert model.ema_decay(400) == pytest.approx(0.5 ** (1 / 200))
    assert model.ema_decay(200) == pytest.approx((0.5 ** (1 / 50) + 0.5 ** (1 / 200)) / 2)
    default, _ = small_model()
    assert default.ema_decay(0) == config.ema.decay == 0.999
    with pytest.raises(ConfigError, match="ema.anneal_fraction"):
        load_config("image-tiny", ["ema.anneal_fraction=1.5"])


def test_ema_update_rule_and_freeze():
    model, _ = small_model()
    student, teacher = model.student.encoder, model.teacher
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    s = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * s[name].detach())
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 1.0)  # tau = 1 freezes the teacher
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, snapshot[k])


def test_teacher_runs_once_per_sample_in_eval_mode():
    model, config = small_model()
    model.train()
    assert not model.teacher.training and model.student.training
    seen = []
    model.teacher.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    images, mask, seeds = batch(config)
    model(images, mask, seeds)
    assert seen == [images.shape[0]]  # B samples, not B*M clones


def test_targets_do_not_depend_on_student_masks_and_repeat_sample_major():
    model, config = small_model()
    images, mask_a, seeds = batch(config, seed=0)
    _, mask_b, _ = batch(config, seed=1)
    y = model.forward_targets(images)
    captured = []
    orig = model.elementwise_loss
    model.elementwise_loss = lambda pred, target: captured.append(target) or orig(pred, target)
    model(images, mask_a, seeds)
    model(images, mask_b, seeds)
    model.elementwise_loss = orig
    M = config.masking.num_masks
    y_rep = y.repeat_interleave(M, 0)
    # the loss sees every position's target (and keeps the masked ones by a product with the mask)
    torch.testing.assert_close(captured[0], y_rep)
    torch.testing.assert_close(captured[2], y_rep)
    # rows b*M .. b*M+M-1 all carry sample b's targets
    for b in range(images.shape[0]):
        for j in range(M):
            assert torch.equal(y_rep[b * M + j], y[b])
    torch.testing.assert_close(model.forward_targets(images), y)  # the student's masks never reach the teacher


def test_the_regression_loss_sums_the_masked_positions_only():
    """The masked sum (a product with the mask, no gather: train/step.py makes the host wait for
    nothing) equals the sum over the gathered masked positions."""
    model, config = small_model()
    model.eval()  # no dropout: the student runs the same twice
    images, mask, seeds = batch(config)
    out = model(images, mask, seeds)
    pred = model.forward_student(images, mask, seeds).pred.float()
    y = model.forward_targets(images).repeat_interleave(config.masking.num_masks, 0)
    gathered = ((pred[mask] - y[mask]) ** 2 * model.loss_scale).sum() / mask.sum()
    torch.testing.assert_close(out.metrics()["reg_loss"], gathered, rtol=1e-6, atol=0)


def test_targets_are_normalised_ffn_outputs_of_top_k_shared_blocks():
    model, config = small_model()
    images, _, _ = batch(config)
    teacher = model.teacher
    # by hand: run the teacher and collect the FFN outputs via hooks on the MLPs of the shared blocks
    ffn = []
    hooks = [blk.mlp.register_forward_hook(lambda m, i, o: ffn.append(o)) for blk in teacher.blocks]
    with torch.no_grad():
        teacher(images)
    for h in hooks:
        h.remove()
    K = config.targets.top_k
    layers = []
    for f in ffn[-K:]:
        f = f[:, 1:].float()  # drop CLS
        mu, var = f.mean(1, keepdim=True), f.var(1, unbiased=False, keepdim=True)
        layers.append((f - mu) / torch.sqrt(var + 1e-5))  # instance norm over tokens
    y = sum(layers) / K
    y = (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(model.forward_targets(images), y, atol=1e-5, rtol=1e-5)


def test_loss_equals_hand_computed_value():
    model, config = small_model()
    images, mask, seeds = batch(config)
    out = model(images, mask, seeds)
    # by hand, reusing the same mask-token noise (it depends only on the per-sample seeds)
    student = model.student(images, mask, seeds)
    y = model.forward_targets(images)
    M, D = config.masking.num_masks, config.model.embed_dim
    y_rep = y.repeat_interleave(M, 0)
    sq = ((student.pred.float() - y_rep) ** 2).sum(-1)  # (B*M, T)
    n = mask.sum()
    reg = (sq * mask).sum() / math.sqrt(D)
    cls = ((student.encoded[:, 0] - y.mean(1).repeat_interleave(M, 0)) ** 2).sum() / math.sqrt(D)
    expected = (reg + 0.01 * n * cls) / n  # the mean over the masked tokens of the update
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    assert int(out.count) == int(n) and torch.equal(out.loss, out.loss_sum / n)


def test_student_drops_masked_tokens():
    model, config = small_model()
    images, mask, seeds = batch(config)
    out = model.student(images, mask, seeds)
    T = mask.shape[1]
    keep = T - int(mask[0].sum())
    assert out.encoded.shape == (mask.shape[0], 1 + keep, config.model.embed_dim)  # CLS + kept tokens only
    assert out.pred.shape == (mask.shape[0], T, config.model.embed_dim)


def test_decoder_residual_rule():
    from data2vec2.nn.decoders import Decoder2d

    dec = Decoder2d(16, 8, kernel_size=3, layers=2, groups=1, residual=True, grid=(2, 2))
    # layer 1 changes channels (16 -> 8): no residual; layer 2 (8 -> 8): residual
    x = torch.randn(1, 4, 16)
    h = x.transpose(1, 2).reshape(1, 16, 2, 2)
    a = dec.layers[0](h)
    b = dec.layers[1](a) + a
    expected = dec.proj(b.flatten(2).transpose(1, 2))
    torch.testing.assert_close(dec(x), expected)


def test_sincos_positions():
    table = sincos_positions_2d(8, 3)  # 9 patches, D = 8: [sin x, cos x] over 2 freqs, then y
    assert table.shape == (9, 8)
    # patch 5 is row 1, column 2
    x, y = 2.0, 1.0
    omega = [1.0, 1.0 / 100.0]
    expected = [math.sin(x * w) for w in omega] + [math.cos(x * w) for w in omega] + \
               [math.sin(y * w) for w in omega] + [math.cos(y * w) for w in omega]
    torch.testing.assert_close(table[5], torch.tensor(expected))


def test_mask_noise_is_fresh_and_seeded():
    model, config = small_model()
    images, mask, seeds = batch(config)
    a = model.student(images, mask, seeds).pred
    b = model.student(images, mask, seeds).pred
    c = model.student(images, mask, seeds + 1).pred
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_bad_config_key_and_type_are_named():
    from data2vec2.errors import ConfigError

    with pytest.raises(ConfigError, match="masking.mask_prbo"):
        load_config("image-tiny", ["masking.mask_prbo=0.5"])
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        load_config("image-tiny", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer"):
        load_config("image-tiny", ["train.batch_size=1.5"])
    with pytest.raises(ConfigError, match="masking.mask_prob: must be in"):
        load_config("image-tiny", ["masking.mask_prob=1.5"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("image-tinyy")


def test_weight_decay_groups():
    from data2vec2.train.optim import param_groups

    model, config = small_model()
    groups = param_groups(model.student, config.optim)  # reference: everything decayed
    assert len(groups) == 1
    config.optim.decay_1d_params = False
    groups = param_groups(model.student, config.optim)
    assert len(groups) == 2 and all(p.ndim > 1 for p in groups[0]["params"])
    assert groups[1]["weight_decay"] == 0.0


def test_lr_schedule():
    from data2vec2.train.optim import lr_factor

    assert lr_factor(0, 10, 100, 0.0) == 0.0
    assert lr_factor(5, 10, 100, 0.0) == 0.5
    assert lr_factor(10, 10, 100, 0.0) == 1.0
    assert lr_factor(55, 10, 100, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_decoder1d_residual_rule_and_projection():
    from data2vec2.nn.decoders import Decoder1d

    torch.manual_seed(0)
    # audio-like: first layer changes width (no residual there), later layers are residual
    dec = Decoder1d(32, 16, kernel_size=7, layers=3, groups=4, residual=True)
    x = torch.randn(2, 11, 32)
    assert dec(x).shape == (2, 11, 32)
    h = dec.layers[0](x.transpose(1, 2))
    for layer in dec.layers[1:]:
        h = layer(h) + h
    torch.testing.assert_close(dec(x), dec.proj(h.transpose(1, 2)))
    # text-like: no residual at all, two-layer projection D -> 2d -> GELU -> D
    dec = Decoder1d(32, 32, kernel_size=9, layers=2, groups=1, residual=False, projection_layers=2)
    h = x.transpose(1, 2)
    for layer in dec.layers:
        h = layer(h)
    torch.testing.assert_close(dec(x), dec.proj(h.transpose(1, 2)))
    assert [m.out_features for m in dec.proj if isinstance(m, torch.nn.Linear)] == [64, 32]


def test_teacher_can_share_the_local_encoder():
    """With ema_local_encoder = False (audio by default, text) the teacher has no copy of the local
    encoder's shareable parts and encodes the student's local features."""
    model, config = small_model()
    encoder = model.encoder
    encoder.local_encoder.ema_local_encoder = False  # on this instance only
    encoder.local_encoder.shareable = ("patch_embed",)
    from data2vec2.model import Data2Vec2

    shared = Data2Vec2(encoder, model.student.decoder, config)
    assert shared.teacher.local_encoder.patch_embed is None
    assert not any("patch_embed" in n for n, _ in shared.teacher.named_parameters())
    assert shared.teacher.local_encoder.cls_token is not None  # the rest of the local encoder is copied
    images, _, _ = batch(config)
    with torch.no_grad():
        encoder.local_encoder.patch_embed.weight.mul_(2.0)  # the teacher sees this change: it is shared
    y = shared.forward_targets(images)
    lf = encoder.local_features(images)
    y2 = shared.forward_targets(images, lf)
    torch.testing.assert_close(y, y2)
    ema_update(shared.teacher, encoder, 0.5)  # skips the parameters the teacher lacks


@pytest.mark.parametrize("tokens", [15, 200])
def test_explicit_and_fused_attention_agree(tokens):
    """The explicit CPU path for short sequences computes what the fused kernel computes, values and
    gradients, with an additive bias and padded keys (ALiBi and padding in speech)."""
    from data2vec2.nn.blocks import CPU_EXPLICIT_ATTENTION_MAX_TOKENS, attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, tokens, 16, generator=g, requires_grad=True) for _ in range(3))
    bias = torch.randn(1, 3, tokens, tokens, generator=g)
    bias[..., -2:] = float("-inf")  # two padded keys
    out = attend(q, k, v, bias, 0.0)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    reference_grads = torch.autograd.grad(reference.square().sum(), (q, k, v))
    for a, b in zip(grads, reference_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert (tokens <= CPU_EXPLICIT_ATTENTION_MAX_TOKENS) == (tokens == 15)
