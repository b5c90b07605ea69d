"""Paired differences pooled over several `ralu eval` runs: per run and over all their images together.

    python tools/pooled_pairs.py DIR [DIR ...] --pair A=B [--pair C=D ...] [--metrics toy_readback.all ...]

Each DIR is a scored `ralu eval` folder (scores.jsonl). Images are paired by (run, prompt index, seed); a
difference is first − second, mean ± 2 SE over the pairs where both scores exist (None: the metric does not
apply, e.g. relation on one-object captions). A replicate on new captions and noise is the check that a
difference found in one run is not a draw of that run's captions.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

METRICS = ("toy_readback.all", "toy_readback.shape", "toy_readback.relation")


def scores(folder: Path) -> dict[tuple[str, int, int], dict]:
    """(method, prompt index, seed) → that image's scores."""
    out = {}
    for line in (folder / "scores.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[(row["method"], row["prompt_index"], row["seed"])] = row["scores"]
    return out


def differences(table: dict, first: str, second: str, metric: str) -> list[float]:
    """first − second on ``metric`` for every (prompt, seed) both methods have a score for."""
    out = []
    for (method, index, seed), row in table.items():
        other = table.get((second, index, seed))
        if method == first and other is not None and row.get(metric) is not None and other.get(metric) is not None:
            out.append(row[metric] - other[metric])
    return out


def summary(values: list[float]) -> str:
    """mean ± 2 SE (n), '*' beyond 2 SE."""
    n = len(values)
    if n < 2:
        return f"n = {n}"
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return f"{mean:+.3f} ± {2 * se:.3f} (n {n}){' *' if abs(mean) > 2 * se else ''}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--pair", action="append", required=True, help="FIRST=SECOND (method specs)")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS))
    args = parser.parse_args(argv)
    tables = {run: scores(run) for run in args.runs}
    for pair in args.pair:
        first, sep, second = pair.rpartition("=")
        if not sep or not first:
            parser.error(f"--pair must be FIRST=SECOND, got {pair!r}")
        print(f"{first} − {second}")
        for metric in args.metrics:
            per_run = {run: differences(table, first, second, metric) for run, table in tables.items()}
            pooled = [v for values in per_run.values() for v in values]
            cells = "; ".join(f"{run.name}: {summary(values)}" for run, values in per_run.items())
            print(f"  {metric:<24} {cells}; pooled: {summary(pooled)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
