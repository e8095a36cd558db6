"""The evidence files: the docs' tables are rendered from them (benchmarks/render_docs.py); every
results file under docs/results/ and every line of docs/benchmarks/*.jsonl carries the standard
header (data2vec2.provenance.HEADER_KEYS: date, command, commit, CPU and its flags or GPU, threads,
precision, versions), and every benchmark script writes it."""

import json
from pathlib import Path

import torch

from data2vec2.provenance import HEADER_KEYS, missing_header, results_header

ROOT = Path(__file__).resolve().parents[1]


def test_every_results_file_carries_the_header():
    problems = []
    for path in sorted((ROOT / "docs" / "results").glob("*.json")):
        missing = missing_header(json.loads(path.read_text()).get("header") or {})
        if missing:
            problems.append(f"{path.name}: header lacks {', '.join(missing)}")
    for path in sorted((ROOT / "docs" / "benchmarks").glob("*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            missing = missing_header(json.loads(line))
            if missing:
                problems.append(f"{path.name}:{n}: lacks {', '.join(missing)}")
    assert not problems, "\n".join(problems)
    assert len(list((ROOT / "docs" / "results").glob("*.json"))) >= 30


def test_every_benchmark_script_writes_the_header():
    """A script that writes a results file builds its header with results_header (or, collecting
    runs, from their own HEADER_KEYS)."""
    writers = [p for p in sorted((ROOT / "benchmarks").glob("*.py")) if "--out" in p.read_text()]
    assert len(writers) >= 15
    lacking = [p.name for p in writers if "results_header" not in p.read_text() and "HEADER_KEYS" not in p.read_text()]
    assert not lacking, lacking


def test_the_docs_tables_are_rendered_from_their_results_files():
    """benchmarks/render_docs.py --check: every marked table equals what its results file renders to."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "benchmarks" / "render_docs.py")
    render_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_docs)
    marked = sum(len(render_docs.MARKER.findall(p.read_text())) for p in render_docs.documents())
    assert marked >= 6
    assert render_docs.main(["--check"]) == 0, "run: python benchmarks/render_docs.py"


def test_the_header_holds_the_command_the_machine_and_the_precision(monkeypatch):
    monkeypatch.setattr("sys.argv", [str(ROOT / "benchmarks" / "x.py"), "--out", "a b.json"])
    monkeypatch.chdir(ROOT)
    header = results_header("fp32")
    assert header["command"] == "python benchmarks/x.py --out 'a b.json'"
    assert not missing_header(header) and set(HEADER_KEYS) <= set(header)
    assert header["threads"] == torch.get_num_threads() and header["precision"] == "fp32"
    assert header["date"].endswith("Z") and header["torch"] == torch.__version__
    assert missing_header({**header, "cpu_flags": [], "precision": ""}) == ["precision", "cpu_flags or gpu"]
