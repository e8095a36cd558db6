"""Render the tables of the docs from their results files, so that a number in a table can only
change by changing its file.

A rendered table sits between two markers in a Markdown file (README.md, docs/*.md):

    <!-- render: efficiency docs/results/efficiency.json -->
    | ... the table this script writes ... |
    <!-- /render -->

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
MARKER = re.compile(r"(<!-- render: (\S+) (\S+) -->\n)(.*?)(<!-- /render -->)", re.S)
OBJECTIVES = {"data2vec2": "data2vec 2.0", "mae": "MAE", "data2vec1": "data2vec 1.0", "mlm": "MLM"}


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def efficiency(data: dict) -> list[str]:
    """One line per pre-training run of benchmarks/efficiency.py: its learning rate, cost, length and
    accuracy at each checkpoint (probe on the test split; validation and fine-tuning at the last)."""
    runs = data["runs"]
    budget = f"{60 * data['budget_minutes']:,.0f}"
    last = [r["points"][-1] for r in runs]
    finetuned = any("finetune_test" in p for p in last)
    head = ["objective", "lr", "GFLOP / update", "updates", f"seconds (of {budget})",
            "probe test at 1/8, 1/4, 1/2, all", "probe validation, all"]
    head += ["fine-tuned val / test (last)"] if finetuned else []
    lines = [row(head), row(["---"] + ["---:"] * 4 + ["---"] + ["---:"] * (len(head) - 6))]
    for run, end in zip(runs, last):
        curve = ", ".join(pct(p.get("probe_test")) for p in run["points"][:-1])
        cells = [OBJECTIVES.get(run["objective"], run["objective"]), f"{run['lr']:g}",
                 f"{run['flops_per_update'] / 1e9:.1f}", f"{end['updates']:,}", f"{end['seconds']:,.0f}",
                 f"{curve}, **{pct(end.get('probe_test'))}** %", f"{pct(end.get('probe_val'))} %"]
        if finetuned:
            cells.append(f"{pct(end.get('finetune_val'))} / **{pct(end.get('finetune_test'))}** %")
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


RENDERERS = {"efficiency": efficiency, "ctc_lm": ctc_lm, "predict_speed": predict_speed, "finetune": finetune,
             "finetune_seeds": finetune_seeds, "screen": screen}


def render(text: str, where: Path) -> str:
    """`text` with every marked table rendered anew from its results file (relative to the root)."""
    def table(match: re.Match) -> str:
        name, source = match.group(2), match.group(3)
        if name not in RENDERERS:
            raise SystemExit(f"{where}: no renderer {name!r} (have {', '.join(RENDERERS)})")
        data = json.loads((ROOT / source).read_text())
        return match.group(1) + "\n".join(RENDERERS[name](data)) + "\n" + match.group(5)
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
