"""Shipped model specs and the auto base shift: the stock scheduler's own shift at every size."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ralu import Baseline, RALUConfig, models
from ralu.cli import main


@pytest.mark.parametrize("name", models.names())
def test_every_model_file_loads_and_its_presets_exist(name):
    spec = models.get(name)
    assert spec.steps >= 1 and spec.branches in (1, 2) and spec.text_tokens >= 1
    assert spec.preset in RALUConfig.PRESETS and all(p in RALUConfig.PRESETS for p in spec.presets)
    assert spec.call_flops(4096) > spec.call_flops(1024) > 0
    assert models.for_preset(spec.preset).family == spec.family


def test_every_preset_has_a_model():
    listed = {p for n in models.names() for p in models.get(n).presets}
    assert set(RALUConfig.PRESETS) <= listed


@pytest.mark.parametrize("name", ["flux-dev", "sd3-medium", "flux-schnell"])
@pytest.mark.parametrize("tokens", [256, 1024, 2304, 4096, 6400])
def test_stock_shift_is_the_schedulers_own(name, tokens):
    """The spec's shift h reproduces the σ grid diffusers' scheduler makes from the model's config."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    spec = models.get(name)
    config = {k: v for k, v in spec.scheduler.items() if not k.startswith("_")}
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    steps = 10
    kwargs = {}
    if config.get("use_dynamic_shifting"):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        kwargs["mu"] = calculate_shift(tokens, config["base_image_seq_len"], config["max_image_seq_len"],
                                       config["base_shift"], config["max_shift"])
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), **kwargs)
    h = spec.stock_shift(tokens)
    u = np.linspace(1.0, 1 / steps, steps)
    assert scheduler.sigmas[:-1].numpy() == pytest.approx(h * u / (1 + (h - 1) * u), abs=1e-6)


def test_auto_keeps_presets_at_1024_and_follows_dynamic_shifting_elsewhere():
    spec = models.get("flux-dev")
    preset = RALUConfig.preset("flux-dev-4x")
    assert spec.resolve(preset, 1024, 1024) == preset.replace(base_shift=3.0)
    small = spec.resolve(preset, 512, 512)
    expected = 3.0 * spec.stock_shift(1024) / spec.stock_shift(4096)
    assert small.base_shift == pytest.approx(expected) and math.isclose(spec.stock_shift(1024), math.exp(0.63), rel_tol=1e-9)
    assert small.steps == preset.steps and small.shifts != preset.shifts
    from ralu import solve_ntdm

    assert (small.shifts, small.noise_ratio) == solve_ntdm(preset.steps, preset.ends, expected, method="reference")
    sd3 = models.get("sd3-medium")
    assert sd3.resolve(RALUConfig.preset("sd3-2x"), 512, 768).shifts == RALUConfig.preset("sd3-2x").shifts


def test_the_pipeline_matches_the_same_shift_as_its_scheduler(ralu_pipe):
    """RALUFluxPipeline.resolve_schedule uses its own scheduler's dynamic shift: the spec's rule, live."""
    preset = RALUConfig.preset("flux-dev-7x")
    for tokens in (256, 1024, 4096):
        h = math.exp(tokens * (1.15 - 0.5) / (4096 - 256) + 0.5 - (1.15 - 0.5) / (4096 - 256) * 256)
        resolved = ralu_pipe.resolve_schedule(preset, tokens)
        assert resolved.base_shift == pytest.approx(3.0 * h / math.exp(1.15), rel=1e-12)
    assert ralu_pipe.resolve_schedule(preset, 4096).shifts == preset.shifts
    grid = ralu_pipe.resolve_schedule(Baseline(8), 1024)
    assert len(grid.sigmas) == 9 and grid.sigmas[-1] == 0.0


def test_cli_schedule_shows_what_a_preset_becomes_at_a_size(capsys):
    assert main(["schedule", "--preset", "flux-dev-4x", "--size", "768x1344"]) == 0
    out = capsys.readouterr().out
    spec = models.get("flux-dev")
    tokens = spec.image_tokens(1344, 768)
    assert f"scheduler shift at 768x1344 is {spec.stock_shift(tokens):.3f}" in out and "solved by NT-DM" in out
    assert main(["schedule", "--model", "sd3-medium"]) == 0
    assert capsys.readouterr().out.startswith("sd3-2x")  # the model's own default preset
