"""``ralu demo``: a progress line per method, a labelled picture, the table; each method's read-back from
the shipped quality study, only where the demo ran what the study ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ralu.cli import main
from ralu.config import Baseline, RALUConfig
from ralu.demo import model as toy
from ralu.demo import run

REPO = Path(__file__).resolve().parents[2]


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


def _demo_methods(steps=50, quick=False):
    grid = toy.token_grid()
    return run._methods(steps, grid[0] * grid[1], dict(toy.model_spec().transformer), toy.MAX_WORDS, quick=quick)


def _fake_study(keys, guidance=toy.DEFAULT_GUIDANCE):
    return dict(source="docs/x", captions=256, guidance=guidance, base_shift=toy.BASE_SHIFT,
                readback={key: dict(mean=i / 10, se=0.01) for i, key in enumerate(keys)})


def test_each_demo_method_gets_its_own_study_read_back():
    methods = _demo_methods()
    keys = ["baseline:50", "flux-dev-4x", "steps:11", "flux-dev-7x", "steps:6", "steps:50"]
    assert [config.name for config in methods] == ["baseline 50", "flux-dev-4x", "steps 11", "flux-dev-7x", "steps 6"]
    found = run.study_readback(methods, 50, toy.DEFAULT_GUIDANCE, _fake_study(keys))
    assert [r["mean"] for r in found] == [0.0, 0.1, 0.2, 0.3, 0.4]
    # another guidance or baseline length than the study's: no column; a changed preset: no value
    assert run.study_readback(methods, 50, 1.0, _fake_study(keys)) is None
    assert run.study_readback(methods, 40, toy.DEFAULT_GUIDANCE, _fake_study(keys)) is None
    changed = [methods[0], RALUConfig.preset("flux-dev-4x", up_ratio=0.5).resolve(toy.BASE_SHIFT)]
    assert run.study_readback(changed, 50, toy.DEFAULT_GUIDANCE, _fake_study(keys))[1] is None


def test_the_shipped_study_covers_the_demo_and_matches_its_committed_summary():
    study = json.loads(run.STUDY.read_text())
    summary = json.loads((REPO / study["source"] / "summary.json").read_text())
    assert study == json.loads(json.dumps(run.study_record(summary, study["source"])))
    for name, method in summary["methods"].items():  # each method's overall read-back, nothing else
        assert study["readback"][name]["mean"] == method["scores"]["toy_readback.all"]["mean"]
    assert all(run.study_readback(_demo_methods(), 50, toy.DEFAULT_GUIDANCE, study))


@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_the_demo_prints_the_study_read_back_where_it_ran_the_same_method(tmp_path):
    methods = _demo_methods(8, quick=True)
    path = tmp_path / "study.json"
    study = _fake_study(dict.fromkeys(run.study_key(m, 8) for m in methods))
    path.write_text(json.dumps(study))
    lines = []
    run.run_demo(tmp_path / "a.png", quick=True, say=lines.append, study_path=path)
    table = [line for line in lines if line.startswith(tuple(m.name + " " for m in methods))]
    # the baseline and the step cuts ran as studied; the presets with --quick's steps did not
    assert [line.rsplit(None, 1)[-1] if "±" not in line else line.rsplit(None, 3)[-3] for line in table] \
        == [f"{study['readback'][run.study_key(m, 8)]['mean']:.3f}" if isinstance(m, Baseline) else "-"
            for m in methods]
    assert any("read-back: share of 256 held-out captions" in line for line in lines)
    lines.clear()
    run.run_demo(tmp_path / "b.png", quick=True, say=lines.append, study_path=tmp_path / "none.json")
    assert not any("read-back" in line for line in lines)
