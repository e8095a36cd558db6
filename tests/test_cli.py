"""The command line's own checks: every numeric option is range-checked by argparse before any work
starts, and an output path that cannot be written is refused before the work, not after it."""

import argparse
import time

import pytest

from data2vec2.cli import build_parser, main


def parsers(parser: argparse.ArgumentParser, name: str = "data2vec2"):
    """(name, parser) of the command line and of every sub-command, nested ones included."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from parsers(sub, f"{name} {sub_name}")


def test_no_numeric_option_takes_any_number():
    """A plain int or float type would let 0, -3 or nan through to the work (a JSON line of NaN, a
    traceback): each option states its range (data2vec2/options.py)."""
    plain = [f"{name} {action.option_strings or action.dest}" for name, parser in parsers(build_parser())
             for action in parser._actions if action.type in (int, float)]
    assert not plain, plain


@pytest.mark.parametrize("argv, option, why", [
    (["benchmark", "image-tiny", "--steps", "0"], "--steps", "must be >= 1, not 0"),
    (["benchmark", "image-tiny", "--steps", "-3"], "--steps", "must be >= 1, not -3"),
    (["predict", "model", "inputs", "--batch-size", "0"], "--batch-size", "must be >= 1, not 0"),
    (["predict", "model", "inputs", "--lm-weight", "nan"], "--lm-weight", "must be a finite number"),
    (["finetune", "image-cls-tiny", "--lrs", "0"], "--lrs", "must be > 0, not 0"),
    (["finetune-ctc", "model", "--steps", "0"], "--steps", "must be >= 1, not 0"),
    (["finetune-ctc", "model", "--batch-size", "0"], "--batch-size", "must be >= 1, not 0"),
    (["finetune-text", "model", "--epochs", "0"], "--epochs", "must be >= 1, not 0"),
    (["tokenizer", "english", "--vocab-size", "100"], "--vocab-size", "must be >= 260, not 100"),
    (["demo", "--budget-minutes", "-1"], "--budget-minutes", "must be > 0, not -1"),
    (["rewind", "runs/x", "0"], "step", "must be >= 1, not 0"),
    (["kws", "model", "--seed", "x"], "--seed", "'x' is not a whole number"),
])
def test_an_option_out_of_range_stops_before_any_work(argv, option, why, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert f"argument {option}: {why}" in capsys.readouterr().err


def test_benchmark_checks_its_out_before_it_runs(tmp_path, capsys):
    start = time.perf_counter()
    assert main(["benchmark", "image-tiny", "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "is a folder: give the JSON-lines file to append to" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert main(["benchmark", "image-tiny", "--steps", "1", "--out", str(tmp_path / "a_file" / "x.jsonl")]) == 2
    assert "a_file is a file, not a folder" in capsys.readouterr().err
    assert time.perf_counter() - start < 10  # refused, not timed
