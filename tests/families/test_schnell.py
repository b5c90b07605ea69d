"""FLUX.1-schnell-style models: no guidance embedding, static shift 1.0, 4 steps."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from ralu import Baseline, RALUConfig, RALUFluxPipeline, solve_ntdm
from ralu.caching import IDENTITY_COEFFICIENTS, TeaCacheConfig, apply_teacache, remove_teacache
from ralu.testing import tiny_flux_components

SIZE = 256


@pytest.fixture(scope="module")
def schnell_path(tmp_path_factory):
    components = tiny_flux_components(seed=1, guidance_embeds=False)
    components["scheduler"] = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    path = tmp_path_factory.mktemp("tiny-schnell")
    FluxPipeline(**components).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def schnell(schnell_path):
    pipe = RALUFluxPipeline.from_pretrained(schnell_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_preset_is_ntdm_at_base_shift_one(assert_ntdm_optimum):
    preset = RALUConfig.preset("flux-schnell-2x")
    shifts, ratio = solve_ntdm(preset.steps, preset.ends, 1.0)
    assert preset.solved_shift == 1.0 and preset.steps == (2, 1, 1)
    assert_ntdm_optimum(preset, shifts, ratio)


def test_default_config_for_a_model_without_guidance_is_the_schnell_preset(schnell):
    out = schnell("a red circle", height=SIZE, width=SIZE, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert out.stage_steps == (2, 1, 1) and torch.isfinite(out.images).all()


def test_schnell_baseline_matches_stock(schnell_path, schnell):
    stock = FluxPipeline.from_pretrained(schnell_path)
    stock.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 256, 64, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt="a red circle", latents=latents, height=SIZE, width=SIZE, output_type="latent")
    expected = stock(num_inference_steps=4, **kwargs).images
    ours = schnell(config=Baseline(4), **kwargs).images
    assert torch.equal(ours, expected)  # the scheduler's own σ grid: bit for bit


def test_a_static_shift_keeps_the_preset_at_every_size(schnell):
    preset = RALUConfig.preset("flux-schnell-2x")
    for tokens in (256, 1024, 4096, 16384):
        assert schnell.resolve_schedule(preset, tokens) == preset.replace(base_shift=1.0)


def test_schnell_with_teacache_and_first_block_cache(schnell):
    from diffusers.hooks import FirstBlockCacheConfig

    kwargs = dict(height=SIZE, width=SIZE, output_type="latent", generator=torch.Generator().manual_seed(0))
    stats = apply_teacache(schnell.transformer, TeaCacheConfig(threshold=0.5, coefficients=IDENTITY_COEFFICIENTS))
    try:
        out = schnell("a red circle", **kwargs)
    finally:
        remove_teacache(schnell.transformer)
    # one-step stages compute every call: the first and last step of a stage are never skipped
    assert stats.computed == 4 and stats.skipped == 0 and torch.isfinite(out.images).all()
    schnell.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.5))
    try:
        out = schnell("a red circle", **{**kwargs, "generator": torch.Generator().manual_seed(0)})
    finally:
        schnell.transformer.disable_cache()
    assert torch.isfinite(out.images).all()
