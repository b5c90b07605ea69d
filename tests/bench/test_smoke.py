"""The toy benchmarks run end to end at tiny settings and write what they promise only where told."""

from __future__ import annotations

import json

import pytest

from ralu import RALUConfig
from ralu.cli import main

pytestmark = pytest.mark.slow


def test_caching_benchmark(tmp_path, capsys):
    assert main(["bench", "caching", "--prompts", "2", "--seeds", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "teacache" in out.lower() and "first_block" in out
    record = json.loads((tmp_path / "caching.json").read_text())
    rows = {(r["method"], r["cache"]): r for r in record["rows"]}
    assert rows[("baseline 50", "none")]["skipped"] == [0] and rows[("baseline 50", "none")]["total"] == 1.0
    assert rows[("flux-dev-4x", "none")]["spatial"] > 3 and rows[("flux-dev-4x", "teacache")]["calls"] == 18


def test_regions_benchmark(tmp_path, capsys):
    assert main(["bench", "regions", "--prompts", "3", "--seeds", "1", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "regions.json").read_text())
    assert record["images"] == 3 and 0.0 <= record["iou_mean"] <= 1.0 and record["selected"] == 19
    assert "IoU" in capsys.readouterr().out


def test_quality_benchmark_quick_writes_nothing_without_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    # too few images for the set metrics: refused before generating
    assert main(["bench", "quality", "--quick", "--prompts", "2", "--work", str(work)]) == 2
    assert not work.exists()
    assert main(["bench", "quality", "--quick", "--prompts", "4", "--work", str(work), "--batch-size", "4"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    rows = [json.loads(line) for line in (work / "manifest.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} >= {"baseline:50", "ralu:1,1,2:0.3,0.45:0.3"} and len(rows) % 2 == 0


def test_sizes_benchmark_shift_rule_and_a_tiny_run(capsys):
    from ralu.bench import sizes

    assert sizes.toy_shift(64) == pytest.approx(3.0) and sizes.toy_shift(48) < 3.0 < sizes.toy_shift(80)
    record = sizes.run(None, prompts=4, sizes=(48,), presets=("flux-dev-7x",), threads=1)
    methods = record["48"]["methods"]
    assert set(methods) == {"baseline 50", "flux-dev-7x auto", "flux-dev-7x fixed", "steps 7 (flux-dev-7x)"}
    assert methods["flux-dev-7x auto"]["base_shift"] == pytest.approx(sizes.toy_shift(48))
    assert methods["flux-dev-7x fixed"]["shifts"] == RALUConfig.preset("flux-dev-7x").shifts
