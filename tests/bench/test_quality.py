"""The quality benchmark's method list: every alternative matched to its RALU preset's FLOPs."""

from __future__ import annotations

import pytest

from ralu import RALUConfig
from ralu.bench.quality import PRESETS, method_list
from ralu.eval.runners import ToyRunner


def test_every_alternative_costs_what_its_preset_costs_within_a_few_percent():
    runner = ToyRunner()
    spec, branches = runner.spec, runner.branches
    low, full = spec.call_flops(64), spec.call_flops(256)  # 64 px: 16x16 tokens, 8x8 at half resolution
    method_objects, series, _, level = method_list(runner)
    for name in PRESETS:
        target = spec.cost(RALUConfig.preset(name).resolve(3.0), 64, 64, branches) - spec.decode(64, 64)
        group = {m.spec: m for m in method_objects if level[m.spec] == name and m.kind != "ralu"}
        kinds = {series[s] for s in group}
        assert {"step cut (Euler)", "step cut (UniPC)", "hires-fix (renoised)", "naive upsampling",
                "MrFlow (refine)"} <= kinds
        for s, m in group.items():
            if m.kind == "baseline" or m.kind == "solver":
                flops = branches * m.steps * full
            else:
                two = m.two_stage
                flops = branches * (two.low_steps * low + two.full_steps * full)
                if two.refine is not None:  # MrFlow: the half-resolution image is finished, one full step
                    assert two.end == 1.0 and two.full_steps == 1
            assert flops == pytest.approx(target, rel=0.08), s
