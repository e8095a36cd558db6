"""What every "pre-trained vs random init" command shares: its options and how it reports."""

from __future__ import annotations

import json
from pathlib import Path

from ..options import integer


def add_comparison_options(parser) -> None:
    parser.add_argument("--seed", type=integer(0), default=0, help="seeds both runs (and the random init)")
    parser.add_argument("--out", help="also write the JSON result here")


def write_result(out: str | None, result: dict) -> None:
    """Print the result as JSON and, with `out`, write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
