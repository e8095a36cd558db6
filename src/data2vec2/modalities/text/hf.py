"""Export of the text encoder as a Hugging Face `transformers` RoBERTa model directory.

RoBERTa's architecture is ours (the paper's text encoder follows RoBERTa): token + learned position
embeddings (positions start at pad + 1 = 2) -> LayerNorm -> post-LN blocks with exact GELU. What the
mapping does (our names under `local_encoder.` for the embeddings):

    token_embed / pos_embed / embed_norm -> embeddings.{word,position}_embeddings / LayerNorm
    (no token types)                     -> token_type_embeddings: one all-zero row
    blocks[i].attn.qkv (3D, D), fused    -> attention.self.{query,key,value}: rows [0:D], [D:2D], [2D:3D]
    blocks[i].attn.proj, norm1           -> attention.output.dense, attention.output.LayerNorm
    blocks[i].mlp.fc1 / fc2, norm2       -> intermediate.dense / output.dense, output.LayerNorm

The directory holds config.json (RobertaConfig, plus a "data2vec2" entry with our model config),
model.safetensors, and the tokenizer (tokenizer.json + tokenizer_config.json), so that
`AutoModel.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)` need no code of ours.
The pooler is not exported (the pre-trained model has none): transformers initialises it and says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ... import __version__
from ...config import ModelConfig, config_to_dict
from ...errors import DataError
from ...export import write_json, write_safetensors
from .data import load_tokenizer
from .encoder import PAD

FORMAT = "data2vec2-text-hf"


def hf_config(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["RobertaModel"], "model_type": "roberta",
        "vocab_size": cfg.settings.vocab_size, "hidden_size": cfg.embed_dim, "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads, "intermediate_size": int(cfg.embed_dim * cfg.mlp_ratio),
        "hidden_act": "gelu", "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.settings.max_positions + PAD + 1, "type_vocab_size": 1,
        "layer_norm_eps": cfg.norm_eps, "initializer_range": 0.02, "pad_token_id": 1, "bos_token_id": 0,
        "eos_token_id": 2, "position_embedding_type": "absolute", "torch_dtype": "float32",
    }


def to_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    D = cfg.embed_dim
    out = {
        "embeddings.word_embeddings.weight": state["local_encoder.token_embed.weight"],
        "embeddings.position_embeddings.weight": state["local_encoder.pos_embed.weight"],
        "embeddings.token_type_embeddings.weight": torch.zeros(1, D),
        "embeddings.LayerNorm.weight": state["local_encoder.embed_norm.weight"],
        "embeddings.LayerNorm.bias": state["local_encoder.embed_norm.bias"],
    }
    for i in range(cfg.depth):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[f"{src}attn.qkv.{kind}"].split(D, dim=0)  # (3D, ...) -> three (D, ...)
            out[f"{dst}attention.self.query.{kind}"] = q
            out[f"{dst}attention.self.key.{kind}"] = k
            out[f"{dst}attention.self.value.{kind}"] = v
            out[f"{dst}attention.output.dense.{kind}"] = state[f"{src}attn.proj.{kind}"]
            out[f"{dst}attention.output.LayerNorm.{kind}"] = state[f"{src}norm1.{kind}"]
            out[f"{dst}intermediate.dense.{kind}"] = state[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}output.dense.{kind}"] = state[f"{src}mlp.fc2.{kind}"]
            out[f"{dst}output.LayerNorm.{kind}"] = state[f"{src}norm2.{kind}"]
    return {k: v.detach().float().contiguous().cpu() for k, v in out.items()}


def from_hf_state(hf: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    out = {
        "local_encoder.token_embed.weight": hf["embeddings.word_embeddings.weight"],
        "local_encoder.pos_embed.weight": hf["embeddings.position_embeddings.weight"],
        "local_encoder.embed_norm.weight": hf["embeddings.LayerNorm.weight"],
        "local_encoder.embed_norm.bias": hf["embeddings.LayerNorm.bias"],
    }
    for i in range(depth):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.qkv.{kind}"] = torch.cat([hf[f"{src}attention.self.{n}.{kind}"] for n in ("query", "key", "value")])
            out[f"{dst}attn.proj.{kind}"] = hf[f"{src}attention.output.dense.{kind}"]
            out[f"{dst}norm1.{kind}"] = hf[f"{src}attention.output.LayerNorm.{kind}"]
            out[f"{dst}mlp.fc1.{kind}"] = hf[f"{src}intermediate.dense.{kind}"]
            out[f"{dst}mlp.fc2.{kind}"] = hf[f"{src}output.dense.{kind}"]
            out[f"{dst}norm2.{kind}"] = hf[f"{src}output.LayerNorm.{kind}"]
    return out


def write_tokenizer(tokenizer_file: str | Path, out: Path, max_length: int, vocab_size: int) -> None:
    """tokenizer.json (the run's tokenizer, as loaded and checked: a `tokenizers` JSON file with
    the RoBERTa special ids and no more tokens than the model has, never just any file the config
    names) + tokenizer_config.json naming the generic fast tokenizer."""
    if not str(tokenizer_file):
        raise DataError("the model has no tokenizer (config data.tokenizer; import-fairseq: --tokenizer): cannot "
                        "export it")
    tok = load_tokenizer(tokenizer_file)
    if tok.get_vocab_size() > vocab_size:
        raise DataError(f"{tokenizer_file}: {tok.get_vocab_size()} tokens, more than the model's {vocab_size}: "
                        f"not this model's tokenizer")
    tmp = out / ".tokenizer.json.tmp"
    tok.save(str(tmp))
    os.replace(tmp, out / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
              "model_max_length": max_length, "padding_side": "right"}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {k: config[k] for k in ("bos_token", "eos_token", "sep_token", "cls_token", "unk_token", "pad_token")}, indent=2))


def export_text_hf(encoder: torch.nn.Module, config, out_dir: str | Path) -> Path:
    """The text encoder as a `transformers` RoBERTa folder, with the run's tokenizer."""
    cfg = config.model
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = cfg.settings
    write_tokenizer(config.data.settings.tokenizer, out, text.max_positions, text.vocab_size)  # first: it may refuse
    write_safetensors(to_hf_state(encoder.state_dict(), cfg), out / "model.safetensors", {"format": "pt"})
    meta = hf_config(cfg) | {"data2vec2": {"format": FORMAT, "version": __version__, "model": config_to_dict(cfg)}}
    write_json(out / "config.json", meta)
    return out


def read_text_hf(folder: Path, meta: dict) -> tuple[dict, dict]:
    """(our encoder's state dict, the data keys) of a folder written by `export_text_hf`."""
    if meta["data2vec2"].get("format") != FORMAT:
        raise DataError(f"{folder / 'config.json'}: unknown export format {meta['data2vec2'].get('format')!r}")
    try:
        hf = load_file(str(folder / "model.safetensors"))
    except Exception as e:
        raise DataError(f"cannot read {folder / 'model.safetensors'}: {e}") from None
    depth = meta["data2vec2"]["model"]["depth"]
    try:
        state = from_hf_state(hf, depth)
    except KeyError as e:
        raise DataError(f"{folder / 'model.safetensors'}: no tensor {e} (not a text export of this depth)") from None
    return state, {"tokenizer": str(folder / "tokenizer.json")}


def export_classifier_hf(model, out_dir: str | Path) -> Path:
    """A fine-tuned text classifier or regressor (`predict.FinetunedModel`) as a `transformers`
    `RobertaForSequenceClassification` folder: the encoder as `export_text_hf` maps it under
    `roberta.`, the head (dense -> tanh -> out) as `classifier.dense` / `classifier.out_proj`, the
    labels as `id2label`, and the tokenizer."""
    config, objective = model.config, model.objective
    cfg = config.model
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(config.data.settings.tokenizer, out, cfg.settings.max_positions, cfg.settings.vocab_size)
    encoder = {f"roberta.{k}": v for k, v in to_hf_state(objective.encoder.state_dict(), cfg).items()}
    head = {f"classifier.{ours}.{kind}": getattr(objective, theirs).state_dict()[kind]
            for ours, theirs in (("dense", "dense"), ("out_proj", "out")) for kind in ("weight", "bias")}
    write_safetensors({**encoder, **head}, out / "model.safetensors", {"format": "pt"})
    regression = model.task.name == "regression"
    labels = ["score"] if regression else model.labels
    meta = hf_config(cfg) | {
        "architectures": ["RobertaForSequenceClassification"], "num_labels": len(labels),
        "id2label": {str(i): name for i, name in enumerate(labels)}, "label2id": {name: i for i, name in enumerate(labels)},
        "problem_type": "regression" if regression else "single_label_classification", "classifier_dropout": 0.0,
        "data2vec2": {"format": FORMAT + "-classifier", "version": __version__, "model": config_to_dict(cfg),
                      "task": model.task.name}}
    write_json(out / "config.json", meta)
    return out
