"""``ralu demo``: a progress line per method, a labelled picture, the table; the read-back column only
where the model can pass it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ralu.cli import main
from ralu.demo import run


@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_demo_quick_writes_a_labelled_grid_and_a_table(tmp_path, capsys):
    output = tmp_path / "demo.png"
    assert main(["demo", "--quick", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.strip().startswith("[")]
    assert len(progress) == 5 and progress[0].strip().startswith("[1/5] baseline 8")
    rows = [line.split() for line in out.splitlines() if line.startswith(("baseline", "flux-dev-", "steps"))]
    assert [row[0] for row in rows] == ["baseline", "flux-dev-4x", "steps", "flux-dev-7x", "steps"]
    assert rows[0][5] == "1.00x" and rows[0][6] == "1.00x"  # measured and FLOPs speedup of the baseline
    with Image.open(output) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert image.width > 2 * 3 * 64 and image.height > 5 * 3 * 64
    assert (np.abs(pixels.astype(int) - (0, 255, 255)).sum(-1) == 0).any()  # cyan region outlines drawn


@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_the_read_back_column_needs_a_model_that_passes_it(monkeypatch, tmp_path):
    lines = []
    monkeypatch.setattr(run, "READBACK_FLOOR", 1.01)  # nothing reaches it: the column is hidden
    run.run_demo(tmp_path / "a.png", quick=True, say=lines.append)
    assert not any("prompt ok" in line for line in lines)
    lines.clear()
    monkeypatch.setattr(run, "READBACK_FLOOR", 0.0)
    run.run_demo(tmp_path / "b.png", quick=True, say=lines.append)
    assert any("prompt ok" in line for line in lines)
