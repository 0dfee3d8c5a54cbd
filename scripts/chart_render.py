#!/usr/bin/env python3
"""Renders charts/berth offline with Helm's own engine (PyPI helm-python-sdk, as the chart
tests do) and prints the objects as one JSON array, each with `__source` naming its template.

    .venv/bin/python scripts/chart_render.py [--values FILE]

Release `berth` in namespace `berth-system`, as an install. The lab (e2e/src/lab.rs) runs this
to apply what the chart renders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chart_test  # noqa: E402  (the same render() the chart tests check)


def main(argv: list[str]) -> int:
    values: dict = {}
    if "--values" in argv:
        i = argv.index("--values")
        if i + 1 >= len(argv):
            print("--values needs a file", file=sys.stderr)
            return 2
        values = chart_test.load_values(Path(argv[i + 1]))
    chart = chart_test.ROOT / "charts" / "berth"
    try:
        objects = chart_test.render(chart, values)
    except chart_test.Problem as e:
        print(f"cannot render {chart}: {e}", file=sys.stderr)
        return 1
    json.dump(objects, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
