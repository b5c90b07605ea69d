"""tools/pooled_pairs.py: paired differences per run and pooled, against a hand computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.eval import load_tool

TOOL = "pooled_pairs"


def write_run(folder: Path, a: list, b: list) -> None:
    """Method A and B scored on the same prompts (seed 0); None where the metric does not apply."""
    folder.mkdir()
    rows = [dict(method=m, prompt_index=i, seed=0, scores={"toy_readback.all": v})
            for m, values in (("A", a), ("B", b)) for i, v in enumerate(values)]
    rows.append(dict(method="A", prompt_index=99, seed=0, scores={"toy_readback.all": 1.0}))  # B lacks it: unpaired
    (folder / "scores.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_pairs_are_matched_by_prompt_and_pooled_over_runs(tmp_path, capsys):
    tool = load_tool(TOOL)
    write_run(tmp_path / "one", [1, 0, 1, 1], [0, 0, 1, 0])
    write_run(tmp_path / "two", [0, 1, None, 0], [0, 0, 1, 1])
    assert tool.main([str(tmp_path / "one"), str(tmp_path / "two"), "--pair", "A=B",
                      "--metrics", "toy_readback.all"]) == 0
    out = capsys.readouterr().out
    one, two = np.array([1, 0, 0, 1.0]), np.array([0, 1, -1.0])
    pooled = np.concatenate([one, two])

    def cell(x):
        return f"{x.mean():+.3f} ± {2 * x.std(ddof=1) / np.sqrt(len(x)):.3f} (n {len(x)})"

    assert f"one: {cell(one)}" in out and f"two: {cell(two)}" in out and f"pooled: {cell(pooled)}" in out
