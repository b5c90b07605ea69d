"""RALUFluxPipeline and the FLUX adapter on a tiny real FluxTransformer2DModel/AutoencoderKL."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from ralu import Baseline, RALUFluxPipeline
from ralu.adapters.base import Conditioning
from ralu.adapters.flux import BatchedRopeFluxAttnProcessor, FluxAdapter, per_sample_rope
from ralu.layout import grid_positions
from tests.families import gens

SIZE = 256  # 16x16 full-res tokens, 8x8 low-res


def test_from_pretrained_and_from_pipe(tiny_flux_path, flux_pipe, ralu_pipe):
    loaded = RALUFluxPipeline.from_pretrained(tiny_flux_path)
    assert isinstance(loaded, RALUFluxPipeline)
    assert ralu_pipe.transformer is flux_pipe.transformer and ralu_pipe.vae is flux_pipe.vae
    loaded.set_progress_bar_config(disable=True)
    out = loaded("a red circle", height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(0))
    assert isinstance(out.images[0], PIL.Image.Image) and out.images[0].size == (SIZE, SIZE)


def test_baseline_path_reproduces_stock_flux_pipeline(flux_pipe, ralu_pipe, prompt_embeds):
    embeds, pooled = prompt_embeds
    latents = torch.randn(2, 256, 64, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, latents=latents, height=SIZE, width=SIZE,
                  output_type="latent")
    stock = flux_pipe(num_inference_steps=12, **kwargs).images
    ours = ralu_pipe(config=Baseline(12), **kwargs).images
    # the scheduler's own σ grid, the same model calls and the same float32 Euler update: bit for bit
    assert torch.equal(ours, stock)
    decoded = ralu_pipe(num_inference_steps=12, **{**kwargs, "output_type": "np"}).images
    stock_decoded = flux_pipe(num_inference_steps=12, **{**kwargs, "output_type": "np"}).images
    assert np.array_equal(decoded, stock_decoded)


def _adapter(pipe, embeds, pooled, batch):
    text_ids = torch.zeros(embeds.shape[1], 3)
    return FluxAdapter(pipe.transformer, Conditioning(embeds[:batch], pooled[:batch], text_ids),
                       embedded_guidance=torch.full([batch], 3.5), vae=pipe.vae)


def test_adapter_velocity_equals_stock_transformer_on_the_full_grid(ralu_pipe, prompt_embeds):
    embeds, pooled = prompt_embeds
    adapter = _adapter(ralu_pipe, embeds, pooled, 2)
    x = torch.randn(2, 256, 64)
    positions = grid_positions((16, 16)).expand(2, -1, -1)
    ours = adapter.velocity(x, adapter.prepare_positions(positions, (16, 16)), 0.7)
    ids = ralu_pipe._prepare_latent_image_ids(2, 16, 16, "cpu", torch.float32)
    stock = ralu_pipe.transformer(hidden_states=x, timestep=torch.full([2], 0.7), guidance=torch.full([2], 3.5),
                                  pooled_projections=pooled, encoder_hidden_states=embeds,
                                  txt_ids=torch.zeros(embeds.shape[1], 3), img_ids=ids, return_dict=False)[0]
    assert torch.equal(ours, stock)


def _per_sample_positions():
    base = grid_positions((8, 8))
    other = base.flip(0) * 0.75 + 0.5  # different, fractional positions for sample 1
    return torch.stack([base, other])


def test_per_sample_rope_equals_single_sample_runs(ralu_pipe, prompt_embeds):
    embeds, pooled = prompt_embeds
    adapter = _adapter(ralu_pipe, embeds, pooled, 2)
    x = torch.randn(2, 64, 64)
    positions = _per_sample_positions()
    stock = dict(ralu_pipe.transformer.attn_processors)
    with adapter.session():
        assert {type(p) for p in ralu_pipe.transformer.attn_processors.values()} == {BatchedRopeFluxAttnProcessor}
        prepared = adapter.prepare_positions(positions, (8, 8))
        assert prepared.rope is not None and prepared.per_sample_ids is None  # one batched call
        batched = adapter.velocity(x, prepared, 0.5)
    # the session restores the very processors that were installed before it
    assert ralu_pipe.transformer.attn_processors == stock
    for b in range(2):
        single = _adapter(ralu_pipe, embeds[b:b + 1], pooled[b:b + 1], 1)
        alone = single.velocity(x[b:b + 1], single.prepare_positions(positions[b:b + 1], (8, 8)), 0.5)
        # different attention kernels' summation order: float32 rounding
        assert torch.allclose(batched[b:b + 1], alone, atol=1e-5, rtol=0)


def test_a_pipeline_call_leaves_the_stock_processors_in_place(ralu_pipe):
    before = dict(ralu_pipe.transformer.attn_processors)
    out = ralu_pipe(["a red circle", "a blue star"], height=SIZE, width=SIZE, generator=gens(0, 1),
                    output_type="latent", config="flux-dev-7x")
    assert not torch.equal(out.regions[0], out.regions[1])  # per-sample positions were needed
    assert ralu_pipe.transformer.attn_processors == before
    assert {type(p) for p in before.values()} == {FluxAttnProcessor}


def test_custom_processors_are_left_alone_and_samples_run_one_at_a_time(tiny_flux_path, prompt_embeds):
    class CustomProcessor(FluxAttnProcessor):
        pass

    pipe = RALUFluxPipeline.from_pretrained(tiny_flux_path)
    pipe.transformer.set_attn_processor(CustomProcessor())
    mine = dict(pipe.transformer.attn_processors)
    embeds, pooled = prompt_embeds
    adapter = _adapter(pipe, embeds, pooled, 2)
    positions = _per_sample_positions()
    x = torch.randn(2, 64, 64)
    with adapter.session() as batched_ok:
        assert not batched_ok and pipe.transformer.attn_processors == mine
        prepared = adapter.prepare_positions(positions, (8, 8))
        assert prepared.per_sample_ids is not None and prepared.rope is None
        looped = adapter.velocity(x, prepared, 0.5)
    pipe.transformer.set_attn_processor(FluxAttnProcessor())
    with per_sample_rope(pipe.transformer):
        batched = adapter.velocity(x, adapter.prepare_positions(positions, (8, 8)), 0.5)
    assert torch.allclose(looped, batched, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", ["flux-dev-4x", "flux-dev-7x"])
def test_batch_equals_samples_run_alone_with_different_regions(ralu_pipe, prompt_embeds, preset):
    embeds, pooled = prompt_embeds
    kwargs = dict(height=SIZE, width=SIZE, config=preset, output_type="latent")
    batch = ralu_pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, generator=gens(10, 11), **kwargs)
    assert not torch.equal(batch.regions[0], batch.regions[1]), "the test needs samples that choose different regions"
    for b, seed in enumerate((10, 11)):
        alone = ralu_pipe(prompt_embeds=embeds[b:b + 1], pooled_prompt_embeds=pooled[b:b + 1], generator=gens(seed),
                          **kwargs)
        assert torch.equal(alone.regions[0], batch.regions[b])
        assert torch.allclose(alone.images[0], batch.images[b], atol=1e-4, rtol=0)


@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_ralu_run_shapes_types_and_stage_report(ralu_pipe):
    out = ralu_pipe(["a red circle", "a blue star"], height=SIZE, width=320, num_images_per_prompt=2,
                    generator=gens(0, 1, 2, 3), output_type="np", config="flux-dev-4x")
    assert out.images.shape == (4, SIZE, 320, 3) and np.isfinite(out.images).all()
    low = 8 * 10
    k = int(0.3 * low)
    assert out.stage_tokens == (low, low - k + 4 * k, 4 * low)
    assert out.stage_steps == (5, 6, 7) and len(out.stage_seconds) == 3
    assert out.regions.shape == (4, 8, 10) and out.regions.flatten(1).sum(1).tolist() == [k] * 4
    pt = ralu_pipe("a red circle", height=SIZE, width=SIZE, output_type="pt", generator=gens(0)).images
    assert pt.shape == (1, 3, SIZE, SIZE)
    latent = ralu_pipe("a red circle", height=SIZE, width=SIZE, output_type="latent", generator=gens(0)).images
    assert latent.shape == (1, 256, 64)
    (images,) = ralu_pipe("a red circle", height=SIZE, width=SIZE, return_dict=False, generator=gens(0))
    assert len(images) == 1


@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_same_generator_seed_is_reproducible(ralu_pipe):
    a = ralu_pipe("a red circle", height=SIZE, width=SIZE, generator=gens(5), output_type="latent").images
    b = ralu_pipe("a red circle", height=SIZE, width=SIZE, generator=gens(5), output_type="latent").images
    c = ralu_pipe("a red circle", height=SIZE, width=SIZE, generator=gens(6), output_type="latent").images
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_bfloat16(tiny_flux_path):
    pipe = RALUFluxPipeline.from_pretrained(tiny_flux_path, torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", height=SIZE, width=SIZE, generator=gens(0), output_type="latent")
    assert out.images.dtype == torch.bfloat16 and torch.isfinite(out.images.float()).all()


def test_callback_on_step_end_follows_diffusers_convention(ralu_pipe):
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append((step, float(timestep), kwargs["latents"].shape[1]))
        assert pipe is ralu_pipe
        return {"latents": kwargs["latents"]}

    ralu_pipe("a red circle", height=SIZE, width=SIZE, generator=gens(0), config="flux-dev-7x",
              callback_on_step_end=callback, output_type="latent")
    assert [s for s, _, _ in seen] == list(range(10))
    assert seen[0][1] == pytest.approx(1000.0) and all(0 < t <= 1000 for _, t, _ in seen)
    assert [n for _, _, n in seen] == [64] * 2 + [64 - 6 + 24] * 3 + [256] * 5


def test_true_cfg_baseline_reproduces_stock_flux_pipeline(flux_pipe, ralu_pipe, prompt_embeds):
    """FLUX's true CFG (a second call on the negative prompt, neg + s·(cond − neg)) as the stock pipeline."""
    embeds, pooled = prompt_embeds
    latents = torch.randn(2, 256, 64, generator=torch.Generator().manual_seed(3))
    kwargs = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=embeds.flip(0),
                  negative_pooled_prompt_embeds=pooled.flip(0), true_cfg_scale=4.0, latents=latents, height=SIZE,
                  width=SIZE, output_type="latent")
    stock = flux_pipe(num_inference_steps=6, **kwargs).images
    ours = ralu_pipe(config=Baseline(6), **kwargs).images
    assert torch.equal(ours, stock)
    plain = ralu_pipe(config=Baseline(6), **{**kwargs, "true_cfg_scale": 1.0}).images
    assert not torch.allclose(plain, stock, atol=1e-3)  # the guidance acted


def test_true_cfg_runs_a_second_branch(ralu_pipe):
    kwargs = dict(height=SIZE, width=SIZE, output_type="latent", config="flux-dev-7x")
    plain = ralu_pipe("a red circle", generator=gens(0), **kwargs).images
    guided = ralu_pipe("a red circle", negative_prompt="a blue square", true_cfg_scale=4.0, generator=gens(0),
                       **kwargs).images
    assert torch.isfinite(guided).all() and not torch.allclose(plain, guided)


@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_lora_on_the_base_pipe_applies_and_scales(tiny_flux_path):
    from diffusers import FluxPipeline
    from peft import LoraConfig

    base = FluxPipeline.from_pretrained(tiny_flux_path)
    ralu = RALUFluxPipeline.from_pipe(base)
    ralu.set_progress_bar_config(disable=True)
    kwargs = dict(height=SIZE, width=SIZE, output_type="latent", config="flux-dev-7x")
    before = ralu("a red circle", generator=gens(0), **kwargs).images
    base.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                            init_lora_weights=False))
    with_lora = ralu("a red circle", generator=gens(0), **kwargs).images
    off = ralu("a red circle", generator=gens(0), joint_attention_kwargs={"scale": 0.0}, **kwargs).images
    assert not torch.allclose(before, with_lora, atol=1e-3)
    assert torch.allclose(before, off, atol=1e-5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(height=250), ValueError, r"height must be a positive multiple of 32 px .* got 250"),
    (dict(width=272), ValueError, r"width must be a positive multiple of 32 px .* got 272"),
    (dict(generator=[torch.Generator()] * 3), ValueError, r"generator is a list of 3 .* batch size .* is 1"),
    (dict(latents=torch.zeros(1, 64, 64)), ValueError, r"latents must have shape \(1, 256, 64\)"),
    (dict(output_type="jpg"), ValueError, r"output_type must be one of"),
    (dict(config=42), TypeError, r"config must be a RALUConfig, a Baseline or a preset name, got int"),
    (dict(config="flux-dev-9x"), ValueError, r"preset must be one of"),
    (dict(config="flux-dev-4x", num_inference_steps=20), ValueError, r"either num_inference_steps .* or config"),
    (dict(num_images_per_prompt=0), ValueError, r"num_images_per_prompt must be an integer >= 1"),
])
def test_bad_input_fails_early_with_a_clear_message(ralu_pipe, kwargs, error, match):
    called = []
    original = ralu_pipe.transformer.forward
    ralu_pipe.transformer.forward = lambda *a, **k: called.append(1) or original(*a, **k)
    try:
        with pytest.raises(error, match=match):
            ralu_pipe(**{"prompt": "a red circle", "height": SIZE, "width": SIZE, **kwargs})
    finally:
        del ralu_pipe.transformer.forward
    assert not called, "the error must come before any transformer call"


def test_baseline_size_only_needs_whole_tokens(ralu_pipe):
    out = ralu_pipe("a red circle", height=240, width=SIZE, config=Baseline(2), output_type="latent",
                    generator=gens(0))
    assert out.images.shape == (1, 15 * 16, 64)
    with pytest.raises(ValueError, match=r"multiple of 32"):
        ralu_pipe("a red circle", height=240, width=SIZE, config="flux-dev-4x")
