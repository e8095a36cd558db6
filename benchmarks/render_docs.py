"""Render the tables of the docs from their results files, so that a number in a table can only
change by changing its file.

A rendered table sits between two markers in a Markdown file (README.md, docs/*.md):

    <!-- render: efficiency docs/results/efficiency.json -->
    | ... the table this script writes ... |
    <!-- /render -->

A JSON-lines file renders the lines whose keys equal the marker's `key=value` pairs (all of them
without any): `<!-- render: step_speed docs/benchmarks/step_speed.jsonl commit=7e46576 -->`.

`python benchmarks/render_docs.py` rewrites every such table; `--check` only reports the tables that
differ from their files (tests/test_results.py runs it). Prose numbers name their file instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- render: (\S+) (\S+)((?: \w+=\S+)*) -->\n)(.*?)(<!-- /render -->)", re.S)
OBJECTIVES = {"data2vec2": "data2vec 2.0", "mae": "MAE", "data2vec1": "data2vec 1.0", "mlm": "MLM"}


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def efficiency(data: dict) -> list[str]:
    """One line per pre-training run of benchmarks/efficiency.py (and per ablation): its learning rate,
    cost, length and accuracy at each checkpoint (probe on the test split; validation and fine-tuning
    at the last)."""
    runs = data["runs"] + data.get("ablations", [])  # an ablation: data2vec 2.0 with one switch changed
    budget = f"{60 * data['budget_minutes']:,.0f}"
    last = [r["points"][-1] for r in runs]
    finetuned = any("finetune_test" in p for p in last)
    head = ["objective", "lr", "GFLOP / update", "updates", f"seconds (of {budget})",
            "probe test at 1/8, 1/4, 1/2, all", "probe validation, all"]
    head += ["fine-tuned val / test (last)"] if finetuned else []
    lines = [row(head), row(["---"] + ["---:"] * 4 + ["---"] + ["---:"] * (len(head) - 6))]
    for run, end in zip(runs, last):
        curve = ", ".join(pct(p.get("probe_test")) for p in run["points"][:-1])
        name = run.get("ablation") or OBJECTIVES.get(run["objective"], run["objective"])
        cells = [name, f"{run['lr']:g}",
                 f"{run['flops_per_update'] / 1e9:.1f}", f"{end['updates']:,}", f"{end['seconds']:,.0f}",
                 f"{curve}, **{pct(end.get('probe_test'))}** %", f"{pct(end.get('probe_val'))} %"]
        if finetuned:
            cells.append("-" if end.get("finetune_test") is None else
                         f"{pct(end.get('finetune_val'))} / **{pct(end['finetune_test'])}** %")
        lines.append(row(cells))
    return lines


def ctc_lm(data: dict) -> list[str]:
    """benchmarks/ctc_lm.py: greedy against beam search with the language model, per model and split."""
    lines = []
    for result in data["results"]:
        splits = [k for k in result if k.endswith(".tsv")]
        if not lines:
            head = ["model", "chosen (weight, word score)"]
            for split in splits:
                n = result[split]["clips"]
                head += [f"{Path(split).stem} ({n}): greedy WER / CER", "with the LM"]
            lines = [row(head), row(["---", "---"] + ["---:"] * (2 * len(splits)))]
        chosen = result["valid"]["chosen"]
        checkpoint = Path(result["checkpoint"])  # runs/RUN/INIT/checkpoints/step_NNN.pt
        step = int(checkpoint.stem.split("_")[-1]) if checkpoint.stem.startswith("step_") else None
        label = checkpoint.parent.parent.name.replace("_", " ") + (f", {step:,} updates" if step else "")
        cells = [label, f"{chosen['lm_weight']:g}, {chosen['word_score']:g}"]
        for split in splits:
            s = result[split]
            cells += [f"{pct(s['greedy']['wer'])} / {pct(s['greedy']['cer'])} %",
                      f"**{pct(s['chosen']['wer'])}** / {pct(s['chosen']['cer'])} %"]
        lines.append(row(cells))
    return lines


def predict_speed(data: dict) -> list[str]:
    """benchmarks/predict_speed.py: items per second of `predict` (fp32, bf16) and ONNX Runtime."""
    lines = [row(["model (inputs)", "batch", "`predict` fp32, items/s", "`predict` bf16", "ONNX Runtime fp32"]),
             row(["---"] + ["---:"] * 4)]
    for r in data["results"]:
        onnx = r["onnx"]
        per_call = "" if onnx["batch_size"] == r["batch_size"] else f" ({onnx['batch_size']} per call)"
        lines.append(row([f"{r['task']}, {r['inputs']} ({r['fp32']['predicted']:,})", r["batch_size"],
                          f"{r['fp32']['per_second']:,.0f}", f"{r['bf16']['per_second']:,.0f}",
                          f"{onnx['per_second']:,.0f}{per_call}"]))
    return lines


def finetune(data: dict) -> list[str]:
    """benchmarks/finetune_results.py of a --compare run (one seed): each init's updates, speed, best
    step and scores on the validation and the test split (every metric of the task)."""
    inits = {"pretrained": "pre-trained", "random_init": "random init, same architecture"}
    first = data["pretrained"]
    test = next(k for k in first["scores"] if k != "valid")
    metric, others = data["metric"], [m for m in first["scores"][test] if m != data["metric"]]
    lines = [row(["encoder", "updates", "samples / s", "best step", f"validation {metric}", f"**test {metric}**"]
                 + [f"test {m}" for m in others]),
             row(["---"] + ["---:"] * (5 + len(others)))]
    for name, label in inits.items():
        r = data[name]
        scores = r["scores"]
        lines.append(row([label, f"{r['updates']:,}", f"{r['samples_per_s_median']:,.0f}", f"{r['best_step']:,}",
                          f"{pct(scores['valid'][metric], 2)} %", f"**{pct(scores[test][metric], 2)} %**"]
                         + [f"{pct(scores[test][m], 2)} %" for m in others]))
    return lines


def finetune_seeds(data: dict) -> list[str]:
    """benchmarks/finetune_results.py of a --compare --seeds run: each init's validation and test
    metric, mean +- sd over the seeds, and the test metric of each seed."""
    comparison, metric = data["comparison"], data["metric"]
    test = next(k for k in comparison["pretrained"] if k not in ("valid",) and not k.endswith(("_std", "_runs")))
    seeds = ", ".join(str(s) for s in comparison["seeds"])
    lines = [row(["encoder", f"validation {metric}, mean +- sd", f"**test {metric}**, mean +- sd",
                  f"test per seed ({seeds})"]), row(["---", "---:", "---:", "---"])]
    for name, label in (("pretrained", "pre-trained"), ("random_init", "random init")):
        r = comparison[name]
        lines.append(row([label, f"{pct(r['valid'][metric], 2)} +- {pct(r['valid_std'][metric], 2)} %",
                          f"**{pct(r[test][metric], 2)} +- {pct(r[test + '_std'][metric], 2)} %**",
                          ", ".join(pct(x, 2) for x in r[test + "_runs"]) + " %"]))
    return lines


def screen(data: dict) -> list[str]:
    """A screen of short runs (rows with what each changed, its updates, speed and validation
    accuracy), the chosen one in bold."""
    lines = [row(["variant", "updates", "images / s", "validation accuracy"]), row(["---", "---:", "---:", "---:"])]
    for r in data["rows"]:
        what = r["what"] + (" (**chosen**)" if r["variant"] == data.get("chosen") else "")
        lines.append(row([f"{r['variant']}: {what}", f"{r['updates']:,}", f"{r['samples_per_s_median']:,.0f}",
                          f"{pct(r['valid_accuracy'], 2)} %"]))
    return lines


def pretrain_log(data: dict) -> list[str]:
    """A pre-training run's metrics.jsonl kept as a results file: the loss and the three stds the
    collapse guards watch, at updates 25, 100, 250, then every 250, and the last row that has them."""
    log = [r for r in data["log"] if "local_std" in r]
    shown = [r for r in log if r["step"] in (25, 100, 250) or r["step"] % 250 == 0]
    shown += [log[-1]] if log[-1] not in shown else []
    lines = [row(["update", "loss", "target std", "prediction std", "local std", "seconds"]),
             row(["---:"] * 6)]
    for r in shown:
        lines.append(row([f"{r['step']:,}", f"{r['loss']:.2f}", f"{r['target_std']:.3f}", f"{r['pred_std']:.3f}",
                          f"{r['local_std']:.3f}", f"{r['elapsed_s']:,.0f}"]))
    return lines


def audio_collapse(data: dict) -> list[str]:
    """benchmarks/audio_collapse.py: each teacher variant's local std (first -> last logged update)
    and the keyword-spotting probe of its encoder, with the random init the same probe ran."""
    lines = [row(["audio-tiny variant (same data, batch, seed)", "local std, update", "loss", "KWS test (val)"]),
             row(["---", "---", "---:", "---:"])]
    for v in data["variants"]:
        first, last = v["first"], v["last"]
        lines.append(row([v["variant"], f"{first['local_std']:.2f} -> {last['local_std']:.2f} "
                          f"({first['step']} -> {last['step']})", f"{last['loss']:.2f}",
                          f"{pct(v['kws_test'])} % ({pct(v['kws_val'])} %)"]))
    randoms = {(v["random_init_kws_test"], v["random_init_kws_val"]) for v in data["variants"]}
    for test, val in sorted(randoms):
        lines.append(row(["random init, same architecture", "", "", f"{pct(test)} % ({pct(val)} %)"]))
    return lines


def text_tiny(data: dict) -> list[str]:
    """benchmarks/text_tiny.py: the frozen probe and fine-tuning on Rotten Tomatoes, pre-trained
    against random init, dev (where every choice is made) and test."""
    lr = data["finetune_chosen_lr"]
    dev = data["finetune_dev_mean"]
    lines = [row(["Rotten Tomatoes", "pre-trained", "random init", "gain"]), row(["---", "---:", "---:", "---:"])]
    for name, ours, theirs in [
        ("frozen probe, dev", data["probe_dev"]["pretrained"], data["probe_dev"]["random_init"]),
        ("frozen probe, **test**", data["probe_pretrained"], data["probe_random"]),
        (f"fine-tuned, dev (mean of {len(data['seeds'])} seeds; lr {lr['pretrained']:g} / {lr['random_init']:g})",
         dev["pretrained"], dev["random_init"]),
        (f"fine-tuned, **test** (mean of {len(data['seeds'])} seeds)", data["finetune_pretrained_mean"],
         data["finetune_random_mean"]),
    ]:
        lines.append(row([name, f"{pct(ours, 2)} %", f"{pct(theirs, 2)} %", f"{100 * (ours - theirs):+.1f}"]))
    return lines


def text_search(data: dict) -> list[str]:
    """The text-tiny variants (benchmarks/text_tiny.py per run): each change to the preset, its
    length and speed, and the probe of it and of its random init on dev and test."""
    lines = [row(["change to the preset", "updates", "seconds", "blocks/s (MFU)", "probe dev: pre-trained / random",
                  "probe test: pre-trained / random"]), row(["---", "---:", "---:", "---:", "---", "---"])]
    for run in data["runs"]:
        pre = run["pretraining"]
        dev, test = run["probe_dev"], (run["probe_pretrained"], run["probe_random"])
        lines.append(row([
            run["change"], f"{pre['updates']:,}", f"{pre['seconds']:,.0f}",
            f"{pre['mean_blocks_per_s']:.0f} ({pct(pre['mean_mfu'], 0)} %)",
            f"{pct(dev['pretrained'])} / {pct(dev['random_init'])} % ({100 * (dev['pretrained'] - dev['random_init']):+.1f})",
            f"{pct(test[0])} / {pct(test[1])} % ({100 * (test[0] - test[1]):+.1f})"]))
    return lines


def probe_seeds(data: dict) -> list[str]:
    """The preset's frozen probe with several `probe-text --seed` values (each draws the random
    encoder and the logistic regression's start) and their mean."""
    probes = data["preset_probe_by_seed"]["probes"]
    lines = [row(["`probe-text --seed`", "probe dev: pre-trained / random", "probe test: pre-trained / random"]),
             row(["---:", "---", "---"])]
    for p in probes:
        lines.append(row([p["seed"], f"{pct(p['pretrained']['dev'])} / {pct(p['random_init']['dev'])} %",
                          f"{pct(p['pretrained']['test'])} / {pct(p['random_init']['test'])} %"]))
    mean = {(who, split): sum(p[who][split] for p in probes) / len(probes)
            for who in ("pretrained", "random_init") for split in ("dev", "test")}
    cells = ["mean"]
    for split in ("dev", "test"):
        ours, theirs = mean["pretrained", split], mean["random_init", split]
        cells.append(f"{pct(ours)} / {pct(theirs)} % ({100 * (ours - theirs):+.1f})")
    lines.append(row(cells))
    return lines


def step_speed(lines: list[dict]) -> list[str]:
    """`data2vec2 benchmark` lines (docs/benchmarks/step_speed.jsonl): one full update per preset,
    batch and precision, its speed and MFU against the matmul rate measured in the same run."""
    out = [row(["preset", "overrides", "precision", "s / update", "samples / s", "achieved GFLOP/s",
                "matmul peak GFLOP/s", "MFU"]), row(["---", "---", "---", "---:", "---:", "---:", "---:", "---:"])]
    for line in lines:
        precision = {"float32": "fp32", "bfloat16": "bf16"}.get(line["precision"], line["precision"])
        samples = line["samples_per_s"]
        out.append(row([f"`{line['preset']}`", " ".join(f"`{o}`" for o in line["overrides"]) or "-", precision,
                        f"{line['step_s']:.3g}", f"{samples:.3g}" if samples < 10 else f"{samples:.0f}",
                        f"{line['achieved_gflops']:.0f}", f"{line.get('matmul_peak_gflops', line.get('peak_gflops')):.0f}",
                        f"{pct(line['mfu'], 0)} %"]))
    return out


def finetune_recipe(data: dict) -> list[str]:
    """benchmarks/finetune_recipe.py: the validation accuracy of every (peak LR, layer decay) for
    each encoder, and their mean, which chooses the recipe (in bold)."""
    names = {e: (OBJECTIVES.get(next((o for o in OBJECTIVES if f"-{o}-" in e), ""), e)) for e in data["encoders"]}
    grid: dict = {}
    for r in data["rows"]:
        grid.setdefault((r["lr"], r["layer_decay"]), {})[r["encoder"]] = r["val"]
    means = {key: sum(vals.values()) / len(vals) for key, vals in grid.items()}
    best = max(means, key=means.get)
    lines = [row(["peak LR", "layer decay"] + [names[e] for e in data["encoders"]] + ["mean"]),
             row(["---:"] * (3 + len(data["encoders"])))]
    for key, vals in grid.items():
        cells = [f"{key[0]:g}", f"{key[1]:g}"] + [f"{pct(vals.get(e))} %" for e in data["encoders"]]
        cells.append(f"{pct(means[key])} %")
        lines.append(row([f"**{c}**" for c in cells] if key == best else cells))
    return lines


def ctc_runs(data: dict) -> list[str]:
    """benchmarks/finetune_results.py of a CTC --compare run: each init's validation CER at every
    validation, the checkpoint the run chose (by its metric) and that checkpoint's test WER / CER."""
    inits = {"pretrained": "pre-trained", "random_init": "random init"}
    curve = data["pretrained"]["valid_curve"]
    tests = [k for k in data["pretrained"]["scores"] if k != "valid"]
    lines = [row(["encoder", "valid CER at " + " / ".join(f"{p['step']:,}" for p in curve),
                  f"checkpoint (best {data['metric'].upper()})"]
                 + [f"{Path(t).stem}: WER / CER" for t in tests]), row(["---", "---", "---:"] + ["---:"] * len(tests))]
    for name, label in inits.items():
        r = data[name]
        cers = [p["cer"] for p in r["valid_curve"]]
        best = min(cers)
        cells = [label, " / ".join(f"**{pct(c)}**" if c == best else pct(c) for c in cers) + " %", f"{r['best_step']:,}"]
        cells += [f"{pct(r['scores'][t]['wer'])} / {pct(r['scores'][t]['cer'])} %" for t in tests]
        lines.append(row(cells))
    return lines


def predicted_scores(data: dict) -> list[str]:
    """`data2vec2 predict --summary` of checkpoints on labelled splits (one entry per "init-split"):
    the checkpoint and each split's scores."""
    entries = {k: v for k, v in data.items() if k != "header"}
    splits = sorted({k.split("-", 1)[1] for k in entries})
    metrics = list(next(iter(entries.values()))["scores"])
    lines = [row(["encoder", "checkpoint"] + [f"{s}: {' / '.join(m.upper() for m in metrics)}" for s in splits]),
             row(["---", "---:"] + ["---:"] * len(splits))]
    for init in dict.fromkeys(k.split("-", 1)[0] for k in entries):
        first = entries[f"{init}-{splits[0]}"]
        step = Path(first["model"]).stem.split("_")[-1]
        cells = [init.replace("_", " ").replace("pretrained", "pre-trained"), f"{int(step):,}" if step.isdigit() else step]
        cells += [" / ".join(pct(entries[f"{init}-{s}"]["scores"][m]) for m in metrics) + " %" for s in splits]
        lines.append(row(cells))
    return lines


def preset_memory(data: dict) -> list[str]:
    """benchmarks/preset_memory.py: each preset's student and teacher parameters and the fp32
    training state they need (weights, gradients and AdamW moments of the student; teacher weights)."""
    lines = [row(["preset", "student", "teacher", "state"]), row(["---", "---:", "---:", "---:"])]
    for p in data["presets"]:
        lines.append(row([p["preset"], f"{p['student_params_m']:.1f} M", f"{p['teacher_params_m']:.1f} M",
                          f"{p['state_gib']:.2f} GiB"]))
    return lines


def fsdp_state(data: dict) -> list[str]:
    """benchmarks/fsdp_state.py: what one process holds of a preset's state after an update, by the
    number of processes (the first process's share)."""
    lines = [row(["processes", "student weights", "teacher weights", "AdamW moments", "per process"]),
             row(["---:"] * 5)]
    for r in data["rows"]:
        held = r["per_process"][0]
        lines.append(row([r["processes"]] + [f"{held[k]:.1f} MiB" for k in
                                             ("student_weights_mib", "teacher_weights_mib", "adamw_moments_mib",
                                              "total_mib")]))
    return lines


def busy_core(data: dict) -> list[str]:
    """benchmarks/busy_core.py: seconds per update with the cores quiet and beside one busy process,
    for each choice of threads and workers."""
    lines = [row(["threads and workers", "quiet s / update", "busy s / update", "slowdown"]), row(["---"] + ["---:"] * 3)]
    for name, r in data["results"].items():
        lines.append(row([name, f"{r['quiet_s_per_update']:.2f}", f"{r['busy_s_per_update']:.2f}",
                          f"{r['slowdown']:.2f}x"]))
    return lines


def kill_loop(data: dict) -> list[str]:
    """benchmarks/kill_loop.py: per modality, the kills, the checkpoint files checked after them and
    how the interrupted run's losses and weights compare with the uninterrupted one."""
    lines = [row(["modality (preset)", "kills during training / during a checkpoint write", "checkpoint files checked",
                  "updates with equal loss", "max loss difference", "final student and teacher weights"]),
             row(["---", "---:", "---:", "---:", "---:", "---"])]
    for modality, r in data["results"].items():
        k = r["kills"]
        lines.append(row([f"{modality} ({r['preset']})", f"{k['during_training']} / {k['checkpoint_write']}",
                          k["checkpoints_checked"], f"{r['losses_equal']} of {r['updates']}", f"{r['max_loss_diff']:g}",
                          "bitwise equal" if r["weights_bitwise_equal"] else f"max difference {r['max_weight_diff']:g}"]))
    return lines


def probe_subset_cost(data: dict) -> list[str]:
    """benchmarks/probe_subset_cost.py: the linear probe learning from part of the training images,
    for the pre-trained encoder and the random init (the same features)."""
    res = data["results"]
    sizes = [k for k in res["pretrained"] if k.isdigit()]
    lines = [row(["probe training images", "pre-trained", "random init", "gain"]), row(["---:"] * 4)]
    for n in sizes:
        lines.append(row([f"{int(n):,}", f"{pct(res['pretrained'][n]['probe_acc'], 2)} %",
                          f"{pct(res['random'][n]['probe_acc'], 2)} %", f"{res['gain_points'][n]:+.2f}"]))
    return lines


def trend_tuning(data: dict) -> list[str]:
    """benchmarks/efficiency_trend.py's tuning grids: each setting's short run and its validation
    probe (the best of each objective in bold: the setting of its long run)."""
    lines = [row(["objective", "setting", "updates", "seconds", "probe validation"]),
             row(["---", "---", "---:", "---:", "---:"])]
    tuned = list(data["tuning"].values())
    for t in tuned:
        best = max((u for u in tuned if u["objective"] == t["objective"]), key=lambda u: u["points"][-1]["probe_val"])
        end = t["points"][-1]
        value = f"{pct(end['probe_val'])} %"
        lines.append(row([OBJECTIVES[t["objective"]], t["setting"], f"{end['updates']:,}", f"{end['seconds']:,.0f}",
                          f"**{value}**" if t is best else value]))
    return lines


def share(fraction: float) -> str:
    """A checkpoint's place in its run: 1/16 ... all."""
    return f"1/{round(1 / fraction)}" if fraction < 1 else "all"


def trend(data: dict) -> list[str]:
    """benchmarks/efficiency_trend.py: every checkpoint of each long run (and the reference rows),
    with its cost and the evaluations: the probe from all training labels, from 1 % and 10 % of
    them (mean +- spread over the draws), and kNN, on the test split."""
    def low(p: dict, key: str) -> str:
        return f"{pct(p[key])} +- {pct(p[key + '_std'])} %" if key in p else "-"

    lines = [row(["objective", "of the run", "updates", "seconds", "TFLOP", "probe (all labels)", "probe, 1 % of labels",
                  "probe, 10 %", "kNN"]), row(["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"])]
    for name, run in data["runs"].items():
        for p in run["points"]:
            if "probe_test" not in p:
                continue
            lines.append(row([OBJECTIVES.get(name, name), share(p["fraction"]),
                              f"{p['updates']:,}", f"{p['seconds']:,.0f}", f"{p['flops'] / 1e12:,.1f}",
                              f"{pct(p['probe_test'])} %", low(p, "probe_test_01"), low(p, "probe_test_1"),
                              f"{pct(p['knn_test'])} %"]))
    for name, p in data["references"].items():
        lines.append(row([name, "", "", "", "", f"{pct(p['probe_test'])} %", low(p, "probe_test_01"),
                          low(p, "probe_test_1"), f"{pct(p['knn_test'])} %"]))
    return lines


def trend_ratios(data: dict) -> list[str]:
    """At each checkpoint of each objective: the seconds and FLOPs the other needs to reach its
    probe accuracy (all labels), and their ratios (> 1: this objective is ahead there)."""
    lines = [row(["objective at", "updates", "probe", "the other reaches it at (s)", "time ratio",
                  "FLOP ratio"]), row(["---", "---:", "---:", "---:", "---:", "---:"])]
    for r in data["ratios"].get("probe_test", []):
        if {r["objective"], r["other"]} != {"data2vec2", "mae"}:  # (the control run: trend_control)
            continue
        at = f"{OBJECTIVES[r['objective']]}, {share(r['fraction'])}"
        reached = "never" if r["other_seconds"] is None else f"{r['other_seconds']:,.0f}" + (
            " (interpolated)" if r["interpolated"] else "")
        lines.append(row([at, f"{r['updates']:,}", f"{pct(r['accuracy'])} %", reached,
                          "-" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}",
                          "-" if r["flops_ratio"] is None else f"{r['flops_ratio']:.2f}"]))
    return lines


def trend_control(data: dict) -> list[str]:
    """The control run (data2vec 2.0 with the preset's teacher, as many updates as the tuned run):
    at each checkpoint, its probe accuracy, the tuned teacher's and MAE's at the same point of their
    runs, and the FLOPs each of those needs to reach the control's accuracy, over the control's (exact,
    where the seconds depend on what shared the machine with each run)."""
    control = next(name for name in data["runs"] if name not in OBJECTIVES)
    at = {(r["other"], r["fraction"]): r for r in data["ratios"].get("probe_test", []) if r["objective"] == control}
    same = {name: {p["fraction"]: p for p in data["runs"][name]["points"]} for name in ("data2vec2", "mae")}
    lines = [row(["of the run", "updates", "preset teacher: probe", "tuned teacher: probe", "reaches it (FLOP ratio)",
                  "MAE: probe", "reaches it (FLOP ratio)"]), row(["---:"] * 7)]
    for p in data["runs"][control]["points"]:
        if "probe_test" not in p:
            continue
        cells = [share(p["fraction"]), f"{p['updates']:,}", f"{pct(p['probe_test'])} %"]
        for other in ("data2vec2", "mae"):
            r = at.get((other, p["fraction"]))
            cells += [f"{pct(same[other][p['fraction']].get('probe_test'))} %",
                      "never" if r is None or r["flops_ratio"] is None else f"{r['flops_ratio']:.2f}"]
        lines.append(row(cells))
    return lines


def trend_finetune(data: dict) -> list[str]:
    """benchmarks/efficiency_trend.py's last phase: the last checkpoint of each long run and the
    random init fine-tuned with image-cls-tiny's recipe for the same time; validation accuracy
    along the way, the best checkpoint's validation and test accuracy."""
    lines = [row(["encoder", "minutes", "updates", "images / s", "validation along the way", "best step",
                  "validation", "**test**"]), row(["---", "---:", "---:", "---:", "---", "---:", "---:", "---:"])]
    for name, r in data["finetune"].items():
        curve = ", ".join(f"{pct(v['accuracy'])}" for v in r["valid_curve"])
        lines.append(row([OBJECTIVES.get(name, name) + (", last checkpoint" if name in data["runs"] else ""),
                          f"{r['finetune_minutes']:g}", f"{r['updates']:,}", f"{r['samples_per_s']:.0f}", curve,
                          f"{r['best_step']:,}", f"{pct(r['finetune_val'], 2)} %",
                          f"**{pct(r['finetune_test'], 2)} %**"]))
    return lines


RENDERERS = {"efficiency": efficiency, "ctc_lm": ctc_lm, "predict_speed": predict_speed, "finetune": finetune,
             "finetune_seeds": finetune_seeds, "screen": screen, "pretrain_log": pretrain_log,
             "audio_collapse": audio_collapse, "text_tiny": text_tiny, "text_search": text_search,
             "probe_seeds": probe_seeds, "step_speed": step_speed,
             "finetune_recipe": finetune_recipe, "ctc_runs": ctc_runs, "predicted_scores": predicted_scores,
             "preset_memory": preset_memory, "fsdp_state": fsdp_state, "busy_core": busy_core,
             "kill_loop": kill_loop, "probe_subset_cost": probe_subset_cost, "trend_tuning": trend_tuning,
             "trend": trend, "trend_ratios": trend_ratios, "trend_control": trend_control,
             "trend_finetune": trend_finetune}


def render(text: str, where: Path) -> str:
    """`text` with every marked table rendered anew from its results file (relative to the root)."""
    def table(match: re.Match) -> str:
        name, source = match.group(2), match.group(3)
        if name not in RENDERERS:
            raise SystemExit(f"{where}: no renderer {name!r} (have {', '.join(RENDERERS)})")
        text = (ROOT / source).read_text()
        if source.endswith(".jsonl"):
            wanted = dict(pair.split("=", 1) for pair in match.group(4).split())
            data = [line for line in map(json.loads, text.splitlines())
                    if all(str(line.get(k)) == v for k, v in wanted.items())]
        else:
            data = json.loads(text)
        return match.group(1) + "\n".join(RENDERERS[name](data)) + "\n" + match.group(6)
    return MARKER.sub(table, text)


def documents() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="report the tables that differ; change nothing")
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        text = path.read_text()
        new = render(text, path)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    verb = "differ from their results files" if args.check else "rendered anew"
    print(f"{len(stale)} document(s) {verb}" + "".join(f"\n  {p}" for p in stale))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
