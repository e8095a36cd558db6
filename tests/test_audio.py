import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ALLISON

from data2vec2 import build_model, load_config
from data2vec2.data.collate import ResumableSampler
from data2vec2.encoder import MaskInfo
from data2vec2.errors import DataError
from data2vec2.masking import block_mask_1d
from data2vec2.modalities.audio.data import AudioMaskingCollate, PretrainAudioDataset, load_audio, open_audio_source
from data2vec2.modalities.audio.encoder import alibi_bias, alibi_slopes, gather_bias

# audio-tiny shrunk further for fast tests: same code paths
SMALL = ["model.embed_dim=32", "model.num_heads=4", "model.depth=2", "targets.top_k=2",
         "model.audio.conv_layers=[[16,10,5],[16,3,2],[16,3,2],[16,3,2],[16,3,2],[16,2,2],[16,2,2]]",
         "model.audio.conv_pos_groups=4", "model.audio.conv_pos_depth=2", "decoder.dim=16", "decoder.groups=4",
         "decoder.layers=2", "masking.num_masks=2", "train.precision=fp32", "data.num_workers=0",
         "train.log_every=1", "optim.warmup_steps=2"]


def small_model(extra=()):
    torch.manual_seed(0)
    config = load_config("audio-tiny", SMALL + list(extra))
    return build_model(config), config


def masks_for(model, config, B, num_samples, seed=0):
    T = model.encoder.local_encoder.num_frames(num_samples)
    m = config.masking
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.concatenate([block_mask_1d(m.num_masks, T, m.mask_prob, m.mask_length,
                                                          m.mask_prob_adjust, rng) for _ in range(B)]))


def test_cnn_output_length_formula():
    model, _ = small_model()
    enc = model.encoder
    assert enc.local_encoder.num_frames(16000) == 49 and enc.local_encoder.num_frames(320000) == 999 and enc.local_encoder.num_frames(400) == 1
    for n in (400, 1234, 16000, 16321):
        assert enc.local_encoder.feature_extractor(torch.randn(1, n)).shape[-1] == enc.local_encoder.num_frames(n)


def test_base_preset_masks():
    masks = block_mask_1d(8, 999, 0.5, 5, 0.05, np.random.default_rng(0))
    assert (masks.sum(1) == 499).all()


def test_block_mask_1d_counts_and_spans():
    rng = np.random.default_rng(1)
    for T in (49, 150, 999):
        masks = block_mask_1d(6, T, 0.5, 5, 0.05, rng)
        assert masks.shape == (6, T) and (masks.sum(1) == int(T * 0.5)).all()
    # spans: masked frames come in runs (blocks of 5, merged or trimmed), unlike random masking
    masks = block_mask_1d(50, 999, 0.5, 5, 0.05, rng)
    runs = []
    for row in masks.astype(np.int8):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row, [0]])))
        runs += list(edges[1::2] - edges[0::2])
    assert np.mean(runs) > 4.0  # random masking at 50% gives runs of about 2
    # with little overlap and no forcing needed the blocks are exactly the 5 frames around centres
    sparse = block_mask_1d(1, 1000, 0.05, 5, 0.0, np.random.default_rng(3))[0]
    assert sparse.sum() == 50


def test_alibi_slopes_and_bias_closed_form():
    s12 = alibi_slopes(12).tolist()
    expected = [2.0 ** -k for k in range(1, 9)] + [2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5]
    assert s12 == pytest.approx(expected)
    assert alibi_slopes(16).tolist() == pytest.approx([2 ** (-k / 2) for k in range(1, 17)])
    slopes, scale = alibi_slopes(4), torch.tensor([1.0, 0.5, -2.0, 3.0])
    bias = alibi_bias(slopes, scale, 7)
    for h in range(4):
        for i in range(7):
            for j in range(7):
                want = -slopes[h].item() * abs(i - j) * max(scale[h].item(), 0.0)
                assert bias[h, i, j].item() == pytest.approx(want)


def test_alibi_gathered_for_kept_frames_by_original_index():
    bias = alibi_bias(alibi_slopes(4), torch.ones(4), 10)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, [1, 2, 6, 7, 8]] = True
    mask[1, [0, 3, 4, 5, 9]] = True
    info = MaskInfo.from_mask(mask)
    g = gather_bias(bias, info.ids_keep)  # (2, 4, 5, 5)
    assert g.shape == (2, 4, 5, 5)
    for n in range(2):
        kept = info.ids_keep[n].tolist()
        assert kept == sorted(kept)
        for a in range(5):
            for b in range(5):
                assert torch.equal(g[n, :, a, b], bias[:, kept[a], kept[b]])


def test_teacher_shares_the_cnn_and_projection():
    model, _ = small_model(["model.audio.ema_local_encoder=false"])  # the reference's teacher
    assert model.teacher.local_encoder.feature_extractor is None and model.teacher.local_encoder.project_features is None
    cnn = model.encoder.local_encoder.feature_extractor.convs[0].weight
    assert sum(p is cnn for p in model.parameters()) == 1
    # the teacher's input is the student's local features: changing the student CNN changes targets
    wave = torch.randn(2, 8000)
    before = model.forward_targets(wave)
    with torch.no_grad():
        cnn.mul_(2.0)
    assert not torch.allclose(before, model.forward_targets(wave))
    # the EMA teacher has its own copy of the pos-conv, ALiBi scales and blocks
    assert model.teacher.local_encoder.alibi_scale is not model.encoder.local_encoder.alibi_scale
    assert model.teacher.local_encoder.pos_conv.layers[0][0].weight is not model.encoder.local_encoder.pos_conv.layers[0][0].weight


def test_teacher_with_its_own_ema_cnn():
    """model.audio.ema_local_encoder=true (audio-tiny): the teacher keeps an EMA copy of the CNN and
    the projection, so a change to the student's CNN reaches the targets only through the EMA."""
    model, _ = small_model(["model.audio.ema_local_encoder=true"])
    cnn, teacher_cnn = model.encoder.local_encoder.feature_extractor.convs[0].weight, model.teacher.local_encoder.feature_extractor.convs[0].weight
    assert teacher_cnn is not cnn and torch.equal(teacher_cnn, cnn)
    wave = torch.randn(2, 8000)
    before = model.forward_targets(wave)
    with torch.no_grad():
        cnn.add_(1.0)
    torch.testing.assert_close(before, model.forward_targets(wave))  # the student's CNN is not the teacher's input
    old = teacher_cnn.clone()
    tau = model.update_teacher(1)  # one EMA step moves the teacher's copy towards the student's
    torch.testing.assert_close(teacher_cnn, tau * old + (1 - tau) * cnn)
    assert not torch.allclose(before, model.forward_targets(wave))


def test_targets_do_not_depend_on_the_student_mask():
    model, config = small_model()
    model.train()
    wave = torch.randn(2, 8000)
    lf = model.encoder.local_features(wave)
    y1 = model.forward_targets(wave, lf)
    model(wave, masks_for(model, config, 2, 8000, seed=1), torch.arange(2))
    y2 = model.forward_targets(wave, lf)
    torch.testing.assert_close(y1, y2)
    assert y1.shape == (2, model.encoder.local_encoder.num_frames(8000), 32)
    # per-layer instance norm and no final norm: each channel of each layer is normalised over time
    # before averaging, so the average has zero mean over time per channel
    torch.testing.assert_close(y1.mean(dim=1), torch.zeros(2, 32), atol=1e-5, rtol=0)


def test_masked_frames_do_not_reach_the_student():
    model, config = small_model()
    model.eval()
    lf = torch.randn(1, 24, 32)
    mask = masks_for(model, config, 1, 8000)[:, :24]
    mask = torch.from_numpy(block_mask_1d(2, 24, 0.5, 5, 0.05, np.random.default_rng(0)))
    info = MaskInfo.from_mask(mask)
    out1 = model.encoder.forward_masked(lf, info, 2).x
    lf2 = lf.clone()
    lf2[0, mask[0] & mask[1]] += 5.0  # change frames masked in both clones
    out2 = model.encoder.forward_masked(lf2, info, 2).x
    torch.testing.assert_close(out1, out2)


def test_ctc_greedy_decoding_hand_made():
    from data2vec2.modalities.audio.ctc import BLANK, greedy_text

    letters = [BLANK, " ", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    ids = {c: i for i, c in enumerate(letters)}
    frames = ["H", "H", "<blank>", "E", "L", "L", "<blank>", "L", "O", " ", " ", "<blank>", "A", "A"]
    assert greedy_text([ids[c] for c in frames], letters) == "HELLO A"
    assert greedy_text([ids[c] for c in frames[:9]], letters) == "HELLO"
    assert greedy_text([ids[c] for c in [" ", "A", " ", " ", "<blank>", " "]], letters) == "A"


def test_span_mask_and_tri_stage():
    from data2vec2.modalities.audio.labelled import span_mask
    from data2vec2.train.optim import lr_factor

    rng = np.random.default_rng(0)
    for length in (30, 100, 400):
        m = span_mask(length, 0.5, 10, rng)
        assert m.shape == (length,) and m.sum() >= 10  # at least one whole span
        assert 0.2 < m.mean() <= 0.5 + 10 / length  # spans overlap: at most prob of the frames (plus one span)
    assert not span_mask(10, 0.5, 10, rng).any()  # too short for a span
    # warmup 10 from 1 %, hold 40, exponential decay to 5 % at 100, then 5 %
    assert lr_factor(0, 10, 100, 0.05, "tri_stage", 40) == pytest.approx(0.01)
    assert lr_factor(5, 10, 100, 0.05, "tri_stage", 40) == pytest.approx(0.505)
    assert lr_factor(10, 10, 100, 0.05, "tri_stage", 40) == lr_factor(49, 10, 100, 0.05, "tri_stage", 40) == 1.0
    assert lr_factor(75, 10, 100, 0.05, "tri_stage", 40) == pytest.approx(0.05 ** 0.5)
    assert lr_factor(100, 10, 100, 0.05, "tri_stage", 40) == lr_factor(150, 10, 100, 0.05, "tri_stage", 40) \
        == pytest.approx(0.05)
    # linear (GLUE's polynomial decay of power 1): warmup from 0, then straight down to min_lr
    assert lr_factor(5, 10, 110, 0.0, "linear") == 0.5 and lr_factor(60, 10, 110, 0.0, "linear") == 0.5
    assert lr_factor(110, 10, 110, 0.0, "linear") == 0.0


def _write_wavs(folder: Path, n: int, seconds: float = 1.0, rate: int = 8000) -> None:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(n):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(len(t))
        sf.write(str(folder / f"clip{i}.wav"), wave.astype(np.float32), rate)


def test_source_resamples_drops_short_and_reports_bad_files(tmp_path):
    _write_wavs(tmp_path / "a", 3, seconds=1.0)
    _write_wavs(tmp_path / "short", 1, seconds=0.1)
    (tmp_path / "a" / "short.wav").write_bytes((tmp_path / "short" / "clip0.wav").read_bytes())
    src = open_audio_source(str(tmp_path / "a"), min_samples=8000)
    assert len(src) == 3 and src.dropped_short == 1 and src.lengths == [16000] * 3
    assert len(load_audio(src.paths[0])) == 16000
    (tmp_path / "a" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    src = open_audio_source(str(tmp_path / "a"), min_samples=8000)
    assert src.dropped_bad == 1
    with pytest.raises(DataError, match="broken.wav"):
        open_audio_source(str(tmp_path / "a"), min_samples=8000, on_bad_file="stop")
    with pytest.raises(DataError, match="broken.wav"):
        load_audio(tmp_path / "a" / "broken.wav")
    with pytest.raises(DataError, match="does not exist"):
        open_audio_source(str(tmp_path / "nowhere"))
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"{tmp_path / 'a'}\nclip0.wav\t16000\nmissing.wav\t16000\n")
    with pytest.raises(DataError, match="missing.wav does not exist"):
        open_audio_source(str(manifest))


def test_corrupt_file_in_a_worker_is_reported_with_its_path(tmp_path):
    _write_wavs(tmp_path / "a", 2)
    src = open_audio_source(str(tmp_path / "a"), min_samples=100)
    (tmp_path / "a" / "clip1.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")  # corrupted after listing
    _, config = small_model()
    ds = PretrainAudioDataset(src, 48000, seed=0)
    collate = AudioMaskingCollate(config.masking, lambda n: (n - 400) // 320 + 1, seed=0)
    batch = collate([ds[0], ds[1]])
    assert batch["inputs"].shape[0] == 1 and "clip1.wav" in batch["errors"][0]


def test_collate_crops_to_shortest_and_masks_after_the_crop():
    _, config = small_model()
    num_frames = lambda n: (n - 400) // 320 + 1  # noqa: E731
    collate = AudioMaskingCollate(config.masking, num_frames, seed=0)
    samples = [{"index": i, "inputs": torch.randn(n)} for i, n in enumerate((16000, 20000, 17000))]
    batch = collate(samples)
    T = num_frames(16000)
    assert batch["inputs"].shape == (3, 16000) and batch["mask"].shape == (3 * config.masking.num_masks, T)
    assert (batch["mask"].sum(1) == int(T * config.masking.mask_prob)).all()
    again = collate(samples)
    assert torch.equal(batch["inputs"], again["inputs"]) and torch.equal(batch["mask"], again["mask"])


def test_bucketed_sampler_groups_similar_lengths():
    lengths = list(np.random.default_rng(0).integers(1000, 100000, size=64))
    sampler = ResumableSampler(64, micro_batch=8, world_size=1, rank=0, accum=1, seed=0, lengths=lengths)
    order = list(sampler)
    assert sorted(order) == list(range(64))
    spread = [np.ptp([lengths[i] for i in order[k:k + 8]]) for k in range(0, 64, 8)]
    assert max(spread) < np.ptp(lengths) / 3


@pytest.mark.skipif(not ALLISON.is_dir(), reason="asterisk-core-sounds-en-wav is not installed (scripts/install.sh)")
def test_loss_falls_on_real_speech(tmp_path):
    from data2vec2 import pretrain

    files = sorted(ALLISON.glob("*.wav"))[:48]
    manifest = tmp_path / "real.tsv"
    manifest.write_text("\n".join(str(f) for f in files) + "\n")
    _, _ = small_model()
    config = load_config("audio-tiny", SMALL + [f"data.train={manifest}", "train.batch_size=8", "optim.lr=2e-3",
                                                "data.max_samples=24000", "train.max_steps=40",
                                                "guards.after_steps=100000"])  # the preset's EMA
    result = pretrain(config, tmp_path / "run", progress=False)
    import json

    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result["steps"] == 40 and math.isfinite(losses[-1])
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_kws_probes_frozen_features_of_a_labelled_manifest(labelled_audio, tmp_path):
    from data2vec2.modalities.audio.kws import evaluate_kws

    model, config = small_model()
    encoders = {"pretrained": model.encoder, "random": small_model()[0].encoder}
    manifest = str(labelled_audio["classes"])
    kws = evaluate_kws(encoders, config, manifest, manifest)
    assert kws["classes"] == 2 and kws["num_train"] == kws["num_test"] == 24
    assert all(0.0 <= kws[name]["accuracy"] <= 1.0 for name in encoders)
    odd = tmp_path / "odd.tsv"
    line = Path(manifest).read_text().splitlines()[0].rsplit("\t", 1)[0]  # path <TAB> samples
    odd.write_text(f"{line}\tC\n")
    with pytest.raises(DataError, match=r"odd.tsv:1: class 'C' does not occur in the training data"):
        evaluate_kws(encoders, config, manifest, str(odd))
