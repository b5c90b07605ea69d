"""Cache hooks under RALU: diffusers' own caches and the TeaCache-style hook, on tiny FLUX.

A stage change changes the token count, so cache state from the previous stage must be
dropped (docs/caching.md). "Work" is counted as calls of the transformer's Linear layers,
which every cache type skips some of when it reuses results.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import hooks as dh

from ralu import RALUConfig, RALUFluxPipeline
from ralu.caching import (IDENTITY_COEFFICIENTS, TeaCacheConfig, apply_teacache, cache_context, remove_teacache,
                          transformer_blocks)

pytestmark = pytest.mark.slow  # pipelines run end to end: in make test, not make test-fast

SIZE = 256


@pytest.fixture()
def pipe(tiny_flux_path):
    pipe = RALUFluxPipeline.from_pretrained(tiny_flux_path)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    for module in pipe.transformer.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(lambda m, a: calls.append(1))
    pipe.linear_calls = calls
    return pipe


# the preset's numbers as published (base shift pinned to what they were solved for, not "auto"),
# so that the step sizes these thresholds were chosen for do not change with the tiny model's size
PRESET = RALUConfig.preset("flux-dev-4x", base_shift=3.0)


def run(pipe, config=PRESET, **kwargs):
    pipe.linear_calls.clear()
    out = pipe(["a red circle", "a blue star"], height=SIZE, width=SIZE, output_type="latent", config=config,
               generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kwargs)
    return out, len(pipe.linear_calls)


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


# Region selection is a discrete choice: a cache that perturbs stage 1 can flip which tokens
# are upsampled, and then images differ a lot for reasons that are not the cache's error.
# Closeness is therefore checked with up_ratio=0 (no early upsampling, same stages otherwise).
NO_REGIONS = PRESET.replace(up_ratio=0.0)

CACHES = {
    "first_block": lambda pipe, aggressive: dh.FirstBlockCacheConfig(threshold=0.5 if aggressive else 0.02),
    "taylorseer": lambda pipe, aggressive: dh.TaylorSeerCacheConfig(cache_interval=3 if aggressive else 2,
                                                                    disable_cache_before_step=1,
                                                                    taylor_factors_dtype=torch.float32),
    "magcache": lambda pipe, aggressive: dh.MagCacheConfig(threshold=0.3 if aggressive else 0.02, retention_ratio=0.2,
                                                           num_inference_steps=7, mag_ratios=[0.97] * 7),
    "fastercache": lambda pipe, aggressive: dh.FasterCacheConfig(
        spatial_attention_block_skip_range=2, current_timestep_callback=lambda: pipe.current_timestep,
        attention_weight_callback=lambda _: 0.5, is_guidance_distilled=True),
    "pyramid_attention_broadcast": lambda pipe, aggressive: dh.PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, current_timestep_callback=lambda: pipe.current_timestep),
}


@pytest.mark.parametrize("name", sorted(CACHES))
def test_diffusers_cache_runs_across_stages_and_skips_work(pipe, name):
    _, full_work = run(pipe)
    pipe.transformer.enable_cache(CACHES[name](pipe, aggressive=True))
    try:
        out, cached_work = run(pipe)
        assert torch.isfinite(out.images).all()
        assert cached_work < full_work, f"{name} skipped nothing"
        # a second generation starts from clean state (no stale tensors from the last stage)
        again, _ = run(pipe)
        assert torch.equal(again.images, out.images)
    finally:
        pipe.transformer.disable_cache()


@pytest.mark.parametrize("name", sorted(CACHES))
def test_diffusers_cache_stays_close_at_a_conservative_setting(pipe, name):
    reference, _ = run(pipe, NO_REGIONS)
    pipe.transformer.enable_cache(CACHES[name](pipe, aggressive=False))
    try:
        out, _ = run(pipe, NO_REGIONS)
    finally:
        pipe.transformer.disable_cache()
    # random weights make velocities change fast between steps: 10% relative is "close" here
    # (the latents are unit-scale noise-to-image mixtures; unrelated runs differ by ~140%)
    assert relative(out.images, reference.images) < 0.1


def test_cache_state_is_reset_at_every_stage(pipe):
    # FirstBlockCache with an enormous threshold computes the tail of the stack only when it has
    # no cached residual: once per stage if state is dropped at each resolution change. Without
    # the resets a token-count change would crash, or (equal counts) reuse stage-1 tensors.
    tail = transformer_blocks(pipe.transformer)[-1][1]
    computed = []
    tail.proj_out.register_forward_pre_hook(lambda m, a: computed.append(1))
    pipe.transformer.enable_cache(dh.FirstBlockCacheConfig(threshold=1e9))
    try:
        for config in (PRESET, NO_REGIONS):  # 64/121/256, 64/64/256 tokens
            computed.clear()
            run(pipe, config)
            assert len(computed) == 3
    finally:
        pipe.transformer.disable_cache()


def test_teacache_skips_and_counts(pipe):
    reference, full_work = run(pipe)
    stats = apply_teacache(pipe.transformer, TeaCacheConfig(threshold=0.3, coefficients=IDENTITY_COEFFICIENTS))
    try:
        out, work = run(pipe)
    finally:
        remove_teacache(pipe.transformer)
    assert stats.skipped > 0 and stats.computed + stats.skipped == 18
    per_stage = stats.skipped_per_stage((5, 6, 7))
    assert sum(per_stage) == stats.skipped
    # every stage computes its first and last step
    assert stats.computed >= 6 and all(s <= n - 2 for s, n in zip(per_stage, (5, 6, 7)))
    first_and_last = [0, 4, 5, 10, 11, 17]
    assert all(stats.decisions[i] for i in first_and_last)
    assert work < full_work and torch.isfinite(out.images).all()
    _, after = run(pipe)
    assert after == full_work  # hooks removed


def test_teacache_close_at_a_conservative_threshold(pipe):
    reference, _ = run(pipe, NO_REGIONS)
    stats = apply_teacache(pipe.transformer, TeaCacheConfig(threshold=0.05, coefficients=IDENTITY_COEFFICIENTS))
    try:
        out, _ = run(pipe, NO_REGIONS)
    finally:
        remove_teacache(pipe.transformer)
    assert stats.skipped > 0
    assert relative(out.images, reference.images) < 0.1


def test_teacache_threshold_zero_is_exact(pipe):
    reference, _ = run(pipe)
    stats = apply_teacache(pipe.transformer, TeaCacheConfig(threshold=0.0))
    try:
        out, _ = run(pipe)
    finally:
        remove_teacache(pipe.transformer)
    assert stats.skipped == 0 and torch.equal(out.images, reference.images)


def test_teacache_reuses_the_stack_residual_exactly(tiny_flux_path):
    # same input twice: the skipped call must return exactly what the computed one did
    transformer = RALUFluxPipeline.from_pretrained(tiny_flux_path).transformer
    ids = torch.stack([torch.zeros(64), torch.arange(64) // 8, torch.arange(64) % 8], dim=1).float()
    kwargs = dict(hidden_states=torch.randn(1, 64, 64), encoder_hidden_states=torch.randn(1, 8, 32),
                  pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                  txt_ids=torch.zeros(8, 3), img_ids=ids, return_dict=False)
    stats = apply_teacache(transformer, TeaCacheConfig(threshold=10.0))
    with cache_context(transformer, "cond", step_index=1, num_inference_steps=10):
        computed = transformer(**kwargs)[0]
    with cache_context(transformer, "cond", step_index=2, num_inference_steps=10):
        reused = transformer(**kwargs)[0]
    assert (stats.computed, stats.skipped) == (1, 1)
    assert torch.allclose(reused, computed, atol=1e-6)


def test_teacache_config_validation():
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        TeaCacheConfig(threshold=-1)
    assert TeaCacheConfig(coefficients=(2.0, 1.0)).rescale(0.5) == 2.0
