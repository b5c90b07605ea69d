"""RALUFlux2Pipeline, RALUFlux2KleinPipeline and the FLUX.2 adapter on tiny real Flux2 models, VAE and text stacks."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline, Flux2Transformer2DModel
from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

from ralu import Baseline, RALUConfig, RALUFlux2KleinPipeline, RALUFlux2Pipeline, models, solve_ntdm
from ralu.adapters.base import Conditioning
from ralu.adapters.common import Guidance
from ralu.adapters.flux2 import (BatchedRopeFlux2AttnProcessor, BatchedRopeFlux2ParallelSelfAttnProcessor,
                                 Flux2Adapter, decode_latents, per_sample_rope)
from ralu.layout import (MixedLayout, children_indices, grid_positions, latent_to_tokens, low_positions,
                         upsample_tokens)
from ralu.models import flux2_empirical_mu
from ralu.testing.flux2 import TINY_FLUX2_TRANSFORMER
from tests.families import gens, load, quiet

SIZE = 256  # 16x16 full-res tokens, 8x8 low-res
D = TINY_FLUX2_TRANSFORMER["in_channels"]  # 32 values per token (8 latent channels x 2 x 2)
TEXT = 16  # max_sequence_length of the tests
# flux2-dev-5x with fewer steps, for properties that do not depend on the step count
FAST = RALUConfig.preset("flux2-dev-5x", steps=(2, 2, 2))


def text_ids(count: int) -> torch.Tensor:
    """The stock (count, 4) text ids ``(0, 0, 0, l)``."""
    return Flux2Pipeline._prepare_text_ids(torch.zeros(1, count, 1))[0]


@pytest.fixture(scope="module")
def stock(tiny_flux2_path):
    return load(tiny_flux2_path, Flux2Pipeline)


@pytest.fixture(scope="module")
def pipe(stock):
    return quiet(RALUFlux2Pipeline.from_pipe(stock))


@pytest.fixture(scope="module")
def klein_stock(tiny_klein_path):
    return load(tiny_klein_path, Flux2KleinPipeline)


@pytest.fixture(scope="module")
def klein(klein_stock):
    return quiet(RALUFlux2KleinPipeline.from_pipe(klein_stock))


@pytest.fixture(scope="module")
def klein_base(klein_stock):
    """The same weights without step distillation: true CFG against the empty prompt."""
    ralu = RALUFlux2KleinPipeline.from_pipe(klein_stock, is_distilled=False)
    ralu.set_progress_bar_config(disable=True)
    return ralu


@pytest.fixture(scope="module")
def embeds():
    """(2, T, 48) prompt embeddings of two different prompts (random: the transformer takes any)."""
    return torch.randn(2, TEXT, 48, generator=torch.Generator().manual_seed(1))


def stock_ids(batch: int, grid: tuple[int, int]) -> torch.Tensor:
    return Flux2Pipeline._prepare_latent_ids(torch.zeros(batch, 1, *grid))


# --- tokens, positions, adapter ----------------------------------------------------------------------

def test_the_pipelines_packed_latents_are_ralus_tokens():
    """Flux2's patchify is channel-major (c, p, q) and its packing raster order: ralu's tokens as they are."""
    latent = torch.randn(2, 8, 12, 20)
    packed = Flux2Pipeline._pack_latents(Flux2Pipeline._patchify_latents(latent))
    assert torch.equal(packed, latent_to_tokens(latent))
    # latent_nearest upsampling then is nearest upsampling of the latent image the model sees
    low = torch.randn(1, 8, 6, 10)
    children = upsample_tokens(latent_to_tokens(low), "latent_nearest")
    order = children_indices(torch.arange(15)[None], (3, 5))[0]
    full = torch.empty(1, 60, 32)
    full[0, order] = children[0]
    assert torch.equal(full, latent_to_tokens(low.repeat_interleave(2, 2).repeat_interleave(2, 3)))


def test_decode_undoes_the_batchnorm_as_the_stock_pipeline(stock):
    vae = stock.vae
    assert not torch.allclose(vae.bn.running_mean, torch.zeros_like(vae.bn.running_mean))  # the test needs stats
    tokens = torch.randn(2, 8 * 12, D)
    ids = stock_ids(2, (8, 12))
    expected = Flux2Pipeline._unpack_latents_with_ids(tokens, ids)
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    expected = Flux2Pipeline._unpatchify_latents(expected * std + mean)
    assert torch.equal(decode_latents(vae, tokens, (8, 12)), expected)
    # region selection decodes the same way
    adapter = Flux2Adapter(stock.transformer, Conditioning(torch.zeros(2, 4, 48), text_ids=text_ids(4)), vae=vae)
    assert torch.equal(adapter.decode(tokens, (8, 12)), vae.decode(expected, return_dict=False)[0])


def _dev_adapter(transformer, embeds, batch, **kwargs):
    return Flux2Adapter(transformer, Conditioning(embeds[:batch], text_ids=text_ids(embeds.shape[1])),
                        embedded_guidance=torch.full([batch], 4.0), **kwargs)


@pytest.mark.parametrize("grid", [(16, 16), (8, 8), (12, 20), (6, 10)])
@pytest.mark.parametrize("variant", ["dev", "klein"])
def test_adapter_velocity_equals_stock_transformer_on_uniform_grids(stock, klein_stock, embeds, grid, variant):
    """Full and half grids, square and not, batch 1 and 2, against Flux2Transformer2DModel.forward, bit for bit."""
    transformer = (stock if variant == "dev" else klein_stock).transformer
    for batch in (1, 2):
        x = torch.randn(batch, grid[0] * grid[1], D)
        guidance = torch.full([batch], 4.0) if variant == "dev" else None
        adapter = Flux2Adapter(transformer, Conditioning(embeds[:batch], text_ids=text_ids(TEXT)),
                               embedded_guidance=guidance)
        positions = grid_positions(grid).expand(batch, -1, -1)
        ours = adapter.velocity(x, adapter.prepare_positions(positions, grid), 0.7)
        timestep = torch.tensor(700.0).expand(batch).to(x.dtype) / 1000  # the stock pipelines' rounding
        expected = transformer(hidden_states=x, timestep=timestep, guidance=guidance, encoder_hidden_states=embeds[:batch],
                               txt_ids=text_ids(TEXT)[None].expand(batch, -1, -1), img_ids=stock_ids(batch, grid),
                               return_dict=False)[0]
        assert torch.equal(ours, expected), (variant, grid, batch)


def test_bfloat16_timesteps_round_as_the_stock_pipelines(tiny_klein_path, embeds):
    """In bfloat16 the stock rounding (σ·1000 in float32 → bfloat16 → / 1000) differs from σ in bfloat16."""
    transformer = Flux2Transformer2DModel.from_pretrained(tiny_klein_path, subfolder="transformer", dtype=torch.bfloat16)
    x, text, grid = torch.randn(1, 64, D).to(torch.bfloat16), embeds[:1].to(torch.bfloat16), (8, 8)
    adapter = Flux2Adapter(transformer, Conditioning(text, text_ids=text_ids(TEXT)))
    for sigma in (0.7129, 0.4567):  # where the two roundings land on different bfloat16 timesteps
        ours = adapter.velocity(x, adapter.prepare_positions(grid_positions(grid)[None], grid), sigma)
        t = torch.tensor(sigma, dtype=torch.float32) * 1000  # the scheduler's timestep
        expected = transformer(hidden_states=x, timestep=t.expand(1).to(torch.bfloat16) / 1000, guidance=None,
                               encoder_hidden_states=text, txt_ids=text_ids(TEXT), img_ids=stock_ids(1, grid),
                               return_dict=False)[0]
        assert ours.dtype == torch.bfloat16 and torch.equal(ours, expected)


def _per_sample_positions():
    base = grid_positions((8, 8))
    other = base.flip(0) * 0.75 + 0.5  # different, fractional positions for sample 1
    return torch.stack([base, other])


def test_per_sample_rope_equals_single_sample_runs(pipe, embeds):
    adapter = _dev_adapter(pipe.transformer, embeds, 2)
    x = torch.randn(2, 64, D)
    positions = _per_sample_positions()
    before = dict(pipe.transformer.attn_processors)
    with adapter.session():
        kinds = {type(p) for p in pipe.transformer.attn_processors.values()}
        assert kinds == {BatchedRopeFlux2AttnProcessor, BatchedRopeFlux2ParallelSelfAttnProcessor}  # both streams
        prepared = adapter.prepare_positions(positions, (8, 8))
        assert prepared.rope is not None and prepared.per_sample_ids is None  # one batched call
        batched = adapter.velocity(x, prepared, 0.5)
    assert pipe.transformer.attn_processors == before  # the very processors that were there
    for b in range(2):
        single = _dev_adapter(pipe.transformer, embeds[b:b + 1], 1)
        alone = single.velocity(x[b:b + 1], single.prepare_positions(positions[b:b + 1], (8, 8)), 0.5)
        # different attention kernels' summation order: float32 rounding
        assert torch.allclose(batched[b:b + 1], alone, atol=1e-5, rtol=0)


def test_batched_processors_equal_the_stock_ones_without_per_sample_positions(pipe, embeds):
    adapter = _dev_adapter(pipe.transformer, embeds, 2)
    x, grid = torch.randn(2, 64, D), (8, 8)
    prepared = adapter.prepare_positions(grid_positions(grid).expand(2, -1, -1), grid)
    stock = adapter.velocity(x, prepared, 0.3)
    with per_sample_rope(pipe.transformer) as ok:
        assert ok
        assert torch.equal(adapter.velocity(x, prepared, 0.3), stock)


def test_custom_processors_are_left_alone_and_samples_run_one_at_a_time(tiny_flux2_path, embeds):
    class Custom(Flux2AttnProcessor):
        pass

    transformer = Flux2Transformer2DModel.from_pretrained(tiny_flux2_path, subfolder="transformer")
    transformer.set_attn_processor({name: Custom() if isinstance(p, Flux2AttnProcessor) else p
                                    for name, p in transformer.attn_processors.items()})
    mine = dict(transformer.attn_processors)
    adapter = _dev_adapter(transformer, embeds, 2)
    x, positions = torch.randn(2, 64, D), _per_sample_positions()
    with adapter.session() as batched_ok:
        assert not batched_ok and transformer.attn_processors == mine
        prepared = adapter.prepare_positions(positions, (8, 8))
        assert prepared.per_sample_ids is not None and prepared.rope is None
        looped = adapter.velocity(x, prepared, 0.5)
    transformer.set_attn_processor({name: Flux2AttnProcessor() if isinstance(p, Custom) else p
                                    for name, p in transformer.attn_processors.items()})
    assert {type(p) for p in transformer.attn_processors.values()} == {Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor}
    with per_sample_rope(transformer):
        batched = adapter.velocity(x, adapter.prepare_positions(positions, (8, 8)), 0.5)
    assert torch.allclose(looped, batched, atol=1e-5, rtol=0)


def test_mixed_stage_positions(pipe, embeds):
    """The ids each convention gives the mixed stage; stages 1 and 3 are the stock grids either way."""
    layout = MixedLayout.from_selection(torch.tensor([[0, 5]]), (2, 3))
    mixed = layout.mixed_positions("corner")
    for convention, scale in (("low_grid", 1.0), ("full_grid", 2.0)):
        adapter = _dev_adapter(pipe.transformer, embeds, 1, mixed_positions=convention)
        ids = adapter.prepare_positions(mixed, (2, 3), "mixed").ids
        assert torch.equal(ids[:, 1:3], scale * mixed[0]) and not ids[:, [0, 3]].any()
        low = adapter.prepare_positions(low_positions((2, 3), "corner")[None], (2, 3), "low").ids
        assert torch.equal(low[:, 1:3], grid_positions((2, 3)))  # where the stock half-res forward puts them
    with pytest.raises(ValueError, match=r"mixed_positions must be one of \('low_grid', 'full_grid'\), got 'centre'"):
        _dev_adapter(pipe.transformer, embeds, 1, mixed_positions="centre")


def test_mixed_stage_convention_measurement():
    """The measurement behind the default (docs/families/flux2.md), one seed: on a latent that is the nearest
    upsampling of a half-resolution one, "low_grid" keeps the kept tokens closer to the stock half-res forward,
    "full_grid" the children closer to the stock full-res forward. Random weights (RMSNorm gains x3)."""
    torch.manual_seed(0)
    model = Flux2Transformer2DModel(**TINY_FLUX2_TRANSFORMER).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.RMSNorm):
            module.weight.data.mul_(3.0)
    generator = torch.Generator().manual_seed(0)
    low, full = (8, 8), (16, 16)
    z_low = torch.randn(1, 64, D, generator=generator)
    z_full = torch.empty(1, 256, D)
    z_full[0, children_indices(torch.arange(64)[None], low)[0]] = upsample_tokens(z_low, "latent_nearest")[0]
    cond = Conditioning(torch.randn(1, 8, 48, generator=generator), text_ids=text_ids(8))
    layout = MixedLayout.from_selection(torch.randperm(64, generator=generator)[:19][None], low)
    children = children_indices(layout.selected, low)[0]
    x = torch.cat([layout.split_low(z_low)[0], z_full[:, children]], 1)
    errors = {}
    with torch.no_grad():
        base = Flux2Adapter(model, cond, embedded_guidance=torch.full([1], 4.0))
        v_low = base.velocity(z_low, base.prepare_positions(grid_positions(low)[None], low, "low"), 0.6)
        v_full = base.velocity(z_full, base.prepare_positions(grid_positions(full)[None], full), 0.6)
        for convention in ("low_grid", "full_grid"):
            adapter = Flux2Adapter(model, cond, embedded_guidance=torch.full([1], 4.0), mixed_positions=convention)
            kept, child = layout.split_mixed(adapter.velocity(x, adapter.prepare_positions(
                layout.mixed_positions("corner"), low, "mixed"), 0.6))
            reference_kept, reference_children = v_low[:, layout.kept[0]], v_full[:, children]
            errors[convention] = ((kept - reference_kept).norm() / reference_kept.norm(),
                                  (child - reference_children).norm() / reference_children.norm())
    assert errors["low_grid"][0] < errors["full_grid"][0]
    assert errors["full_grid"][1] < errors["low_grid"][1]


# --- pipelines: stock equality ------------------------------------------------------------------------

@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_from_pretrained_and_from_pipe(tiny_flux2_path, tiny_klein_path, stock, pipe, klein_stock, klein):
    loaded = load(tiny_flux2_path, RALUFlux2Pipeline)
    assert isinstance(loaded, RALUFlux2Pipeline) and pipe.transformer is stock.transformer and pipe.vae is stock.vae
    out = loaded(prompt="a red circle", height=SIZE, width=SIZE, config=FAST, max_sequence_length=TEXT,
                 generator=gens(0))
    assert isinstance(out.images[0], PIL.Image.Image) and out.images[0].size == (SIZE, SIZE)
    loaded = load(tiny_klein_path, RALUFlux2KleinPipeline)
    assert isinstance(loaded, RALUFlux2KleinPipeline) and loaded.config.is_distilled
    assert klein.transformer is klein_stock.transformer
    out = loaded(prompt="a red circle", height=SIZE, width=192, max_sequence_length=TEXT, generator=gens(0))
    assert out.images[0].size == (192, SIZE) and out.stage_steps == (2, 1, 1)  # flux2-klein-2x, its default


def test_baseline_reproduces_stock_flux2_dev(stock, pipe, embeds):
    latents = torch.randn(2, D, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt_embeds=embeds, latents=latents, height=SIZE, width=SIZE, guidance_scale=2.5,
                  output_type="latent")
    expected = stock(num_inference_steps=6, **kwargs).images
    ours = pipe(config=Baseline(6), **kwargs).images
    # the scheduler's own σ grid (μ for 6 steps), the same model calls and float32 Euler update: bit for bit
    assert ours.shape == (2, 256, D) and torch.equal(ours, expected)
    assert not torch.equal(ours, pipe(config=Baseline(6), **{**kwargs, "guidance_scale": 4.0}).images)
    decoded = pipe(num_inference_steps=6, **{**kwargs, "output_type": "np"}).images
    assert np.array_equal(decoded, stock(num_inference_steps=6, **{**kwargs, "output_type": "np"}).images)


def test_baseline_reproduces_stock_klein_distilled(klein_stock, klein):
    latents = torch.randn(1, D, 12, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt="a red circle", latents=latents, height=192, width=SIZE, output_type="latent",
                  max_sequence_length=TEXT, guidance_scale=1.0)
    expected = klein_stock(num_inference_steps=4, **kwargs).images
    ours = klein(config=Baseline(4), **kwargs).images
    assert ours.shape == (1, 8, 24, 32) and torch.equal(ours, expected)  # klein's latents: the VAE's own layout
    decoded = klein(num_inference_steps=4, **{**kwargs, "output_type": "pt"}).images
    assert torch.equal(decoded, klein_stock(num_inference_steps=4, **{**kwargs, "output_type": "pt"}).images)


def test_baseline_reproduces_stock_klein_base_with_true_cfg(klein_stock, klein_base):
    stock = Flux2KleinPipeline.from_pipe(klein_stock, is_distilled=False)
    stock.set_progress_bar_config(disable=True)
    latents = torch.randn(2, D, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt=["a red circle", "a blue star"], latents=latents, height=SIZE, width=SIZE,
                  guidance_scale=3.0, output_type="latent", max_sequence_length=TEXT)
    expected = stock(num_inference_steps=3, **kwargs).images
    assert torch.equal(klein_base(config=Baseline(3), **kwargs).images, expected)
    negative = torch.randn(2, TEXT, 48, generator=torch.Generator().manual_seed(3))
    expected = stock(num_inference_steps=3, negative_prompt_embeds=negative, **kwargs).images
    assert torch.equal(klein_base(config=Baseline(3), negative_prompt_embeds=negative, **kwargs).images, expected)


def test_cfg_is_a_second_call_against_the_empty_prompt(klein_base):
    calls = []
    hook = klein_base.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        klein_base(prompt="a red circle", height=SIZE, width=SIZE, config=FAST, guidance_scale=3.0,
                   max_sequence_length=TEXT, output_type="latent", generator=gens(0))
        assert len(calls) == 2 * 6
        empty = klein_base.encode_prompt([""], max_sequence_length=TEXT)[0]
        assert torch.equal(calls[1], empty) and not torch.equal(calls[0], empty)
        calls.clear()
        klein_base(prompt="a red circle", height=SIZE, width=SIZE, config=FAST, guidance_scale=1.0,
                   max_sequence_length=TEXT, output_type="latent", generator=gens(0))
        assert len(calls) == 6  # guidance_scale <= 1: no second branch, as the stock pipeline
    finally:
        hook.remove()


def test_guided_velocity_is_uncond_plus_scale_times_difference(klein_base, embeds):
    transformer = klein_base.transformer
    cond, uncond = Conditioning(embeds[:1], text_ids=text_ids(TEXT)), Conditioning(embeds[1:], text_ids=text_ids(TEXT))
    adapter = Flux2Adapter(transformer, cond, Guidance(uncond, 3.0))
    x, grid = torch.randn(1, 64, D), (8, 8)
    guided = adapter.velocity(x, adapter.prepare_positions(grid_positions(grid)[None], grid), 0.4)
    plain = Flux2Adapter(transformer, cond)
    positive = plain.velocity(x, plain.prepare_positions(grid_positions(grid)[None], grid), 0.4)
    plain.conditioning = uncond
    negative = plain.velocity(x, plain.prepare_positions(grid_positions(grid)[None], grid), 0.4)
    assert torch.equal(guided, negative + 3.0 * (positive - negative))


# --- schedules and presets ----------------------------------------------------------------------------

@pytest.mark.parametrize(("tokens", "steps"), [(64, 4), (256, 50), (1024, 28), (4096, 4), (4096, 50), (4300, 8),
                                               (4301, 8), (16384, 50)])
def test_empirical_mu_and_stock_shift_follow_the_pipeline(pipe, klein, tokens, steps):
    assert flux2_empirical_mu(tokens, steps) == compute_empirical_mu(tokens, steps)
    spec = models.get("flux2-dev")
    # a baseline runs the scheduler's own grid for its step count
    sigmas = pipe.resolve_schedule(Baseline(steps), tokens).sigmas
    assert sigmas == pytest.approx(spec.resolve(Baseline(steps), 16, 16 * tokens).stages[0].sigmas, abs=1e-6)
    stock = type(pipe.scheduler).from_config(pipe.scheduler.config)
    stock.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=compute_empirical_mu(tokens, steps))
    assert sigmas == tuple(float(s) for s in stock.sigmas)
    # "auto" matches the stock baseline's shift: 50 steps for dev, 4 for step-distilled klein
    assert pipe.stock_shift(tokens) == pytest.approx(spec.stock_shift(tokens), rel=1e-12)
    assert pipe.stock_shift(tokens) == pytest.approx(np.exp(compute_empirical_mu(tokens, 50)), rel=1e-12)
    assert klein.stock_shift(tokens) == pytest.approx(models.get("flux2-klein-4b").stock_shift(tokens), rel=1e-12)
    assert klein.stock_shift(tokens) == pytest.approx(np.exp(compute_empirical_mu(tokens, 4)), rel=1e-12)


def test_auto_base_shift_uses_the_stock_step_count_not_ralus(pipe, klein, klein_base):
    custom = RALUConfig(steps=(3, 3, 4), ends=(0.3, 0.45, 1.0), up_ratio=0.2)
    for p, steps in ((pipe, 50), (klein, 4), (klein_base, 50)):
        assert p.resolve_schedule(custom, 1024).base_shift == pytest.approx(np.exp(compute_empirical_mu(1024, steps)))
    preset = RALUConfig.preset("flux2-dev-3x")
    assert pipe.resolve_schedule(preset, 4096) == preset.replace(base_shift=preset.solved_shift)  # kept at 1024²


@pytest.mark.parametrize(("name", "model", "speedup"), [("flux2-dev-3x", "flux2-dev", 3), ("flux2-dev-5x", "flux2-dev", 5),
                                                        ("flux2-klein-2x", "flux2-klein-4b", 2),
                                                        ("flux2-klein-2x", "flux2-klein-9b", 2)])
def test_presets_are_ntdm_at_the_stock_shift_and_named_for_their_speedup(name, model, speedup, assert_ntdm_optimum):
    preset, spec = RALUConfig.preset(name), models.get(model)
    assert name in spec.presets
    assert preset.solved_shift == pytest.approx(spec.stock_shift(spec.image_tokens(1024, 1024)), abs=1e-4)
    shifts, ratio = solve_ntdm(preset.steps, preset.ends, preset.solved_shift, "reference")
    assert_ntdm_optimum(preset, shifts, ratio)
    measured = spec.cost(Baseline(spec.steps), 1024, 1024) / spec.cost(preset, 1024, 1024)
    assert round(measured) == speedup, measured


def test_default_presets(pipe, klein, klein_base):
    kwargs = dict(prompt="a red circle", height=SIZE, width=SIZE, max_sequence_length=TEXT, output_type="latent")
    assert klein(generator=gens(0), **kwargs).stage_steps == (2, 1, 1)  # distilled: its few-step preset
    assert pipe.default_preset == klein_base.default_preset == "flux2-dev-3x"
    assert models.get("flux2-dev").preset == "flux2-dev-3x" and models.get("flux2-klein-4b").preset == "flux2-klein-2x"


# --- FLOPs --------------------------------------------------------------------------------------------

def counted_flops(model, n: int, m: int, device: str = "cpu") -> int:
    """FlopCounterMode's total for one forward (batch 1), MATH attention (as tests/test_cost.py)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    c = model.config
    with torch.device(device):
        inputs = dict(hidden_states=torch.randn(1, n, c.in_channels),
                      encoder_hidden_states=torch.randn(1, m, c.joint_attention_dim),
                      timestep=torch.full((1,), 0.5), img_ids=torch.zeros(n, 4), txt_ids=torch.zeros(m, 4),
                      guidance=torch.full((1,), 4.0) if c.guidance_embeds else None)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(**inputs)
    return counter.get_total_flops()


WIDE = dict(TINY_FLUX2_TRANSFORMER, guidance_embeds=False, mlp_ratio=2.5, num_layers=2, num_single_layers=3,
            out_channels=16, timestep_guidance_channels=64)


@pytest.mark.parametrize("config", [TINY_FLUX2_TRANSFORMER, WIDE], ids=["tiny", "wide"])
@pytest.mark.parametrize(("n", "m"), [(16, 8), (64, 24)])
def test_flops_match_the_flop_counter_on_tiny_models(config, n, m):
    from ralu.cost import call_flops

    model = Flux2Transformer2DModel(**config).eval()
    counted = counted_flops(model, n, m)
    assert call_flops({"_class_name": "Flux2Transformer2DModel", **config}, n, m) == pytest.approx(counted, rel=1e-12)


@pytest.mark.parametrize(("name", "params", "n"), [("flux2-dev", 32.22e9, 4096), ("flux2-klein-4b", 3.88e9, 1024),
                                                   ("flux2-klein-9b", 9.08e9, None)])
@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_shipped_configs_are_the_real_models_and_count_exactly(name, params, n):
    spec = models.get(name)
    config = {k: v for k, v in spec.transformer.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = Flux2Transformer2DModel.from_config(config).eval()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=2e-3)
    if n is not None:  # one meta-device forward: shapes only
        assert spec.call_flops(n) == pytest.approx(counted_flops(model, n, spec.text_tokens, "meta"), rel=1e-12)


def test_shipped_decode_coefficients_count_exactly():
    """a·P + b·P² equals FlopCounterMode's count of AutoencoderKLFlux2.decode at a size they were not fitted on."""
    from diffusers import AutoencoderKLFlux2
    from torch.utils.flop_counter import FlopCounterMode

    import json
    from importlib import resources

    vae = json.loads(resources.files("ralu").joinpath("data", "models", "flux2-dev.json").read_text())["vae"]["config"]
    with torch.device("meta"):
        model = AutoencoderKLFlux2.from_config({k: v for k, v in vae.items() if not k.startswith("_")})
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        model.decode(torch.empty(1, 32, 384 // 8, 640 // 8, device="meta"))
    for name in ("flux2-dev", "flux2-klein-4b", "flux2-klein-9b"):
        assert models.get(name).decode(384, 640) == counter.get_total_flops()


# --- RALU runs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["dev", "klein_base"])
def test_batch_is_one_call_per_step_and_equals_samples_run_alone(request, embeds, variant):
    p = request.getfixturevalue("pipe" if variant == "dev" else "klein_base")
    branches = 1 if variant == "dev" else 2
    kwargs = dict(height=SIZE, width=SIZE, config=RALUConfig.preset("flux2-dev-5x", steps=(2, 2, 2), up_ratio=0.3),
                  output_type="latent", guidance_scale=3.0)
    calls = []
    hook = p.transformer.register_forward_pre_hook(lambda m, args, kw: calls.append(kw["hidden_states"].shape[0]),
                                                   with_kwargs=True)
    try:
        batch = p(prompt_embeds=embeds, generator=gens(10, 11), **kwargs)
    finally:
        hook.remove()
    assert calls == [2] * 6 * branches, "one call per step and branch for the whole batch"
    assert not torch.equal(batch.regions[0], batch.regions[1]), "the test needs samples that choose different regions"
    for b, seed in enumerate((10, 11)):
        alone = p(prompt_embeds=embeds[b:b + 1], generator=gens(seed), **kwargs)
        assert torch.equal(alone.regions[0], batch.regions[b])
        # batch-size-dependent kernels: float32 rounding over 6 steps
        assert torch.allclose(alone.images[0], batch.images[b], atol=1e-4, rtol=0)


def test_a_pipeline_call_leaves_the_stock_processors_in_place(pipe):
    before = dict(pipe.transformer.attn_processors)
    out = pipe(prompt=["a red circle", "a blue star"], height=SIZE, width=SIZE, generator=gens(0, 1),
               output_type="latent", config=FAST, max_sequence_length=TEXT)
    assert not torch.equal(out.regions[0], out.regions[1])  # per-sample positions were needed
    assert pipe.transformer.attn_processors == before
    assert {type(p) for p in before.values()} == {Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor}


@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_shapes_types_and_stage_report(pipe, klein):
    out = pipe(prompt=["a red circle", "a blue star"], height=SIZE, width=320, num_images_per_prompt=2,
               generator=gens(0, 1, 2, 3), output_type="np", config=FAST, max_sequence_length=TEXT)
    assert out.images.shape == (4, SIZE, 320, 3) and np.isfinite(out.images).all()
    low = 8 * 10
    k = int(0.2 * low)
    assert out.stage_tokens == (low, low - k + 4 * k, 4 * low) and out.stage_steps == (2, 2, 2)
    assert out.regions.shape == (4, 8, 10) and out.regions.flatten(1).sum(1).tolist() == [k] * 4
    kwargs = dict(prompt="a red circle", height=SIZE, width=SIZE, config=FAST, max_sequence_length=TEXT)
    assert pipe(output_type="latent", generator=gens(0), **kwargs).images.shape == (1, 256, D)  # packed, as stock
    assert klein(output_type="latent", generator=gens(0), **kwargs).images.shape == (1, 8, 32, 32)  # the VAE's
    (images,) = klein(output_type="pt", return_dict=False, generator=gens(0), **kwargs)
    assert images.shape == (1, 3, SIZE, SIZE)


def test_same_generator_seed_is_reproducible(klein):
    kwargs = dict(prompt="a red circle", height=SIZE, width=SIZE, output_type="latent", max_sequence_length=TEXT)
    a, b = (klein(generator=gens(5), **kwargs).images for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, klein(generator=gens(6), **kwargs).images)


@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_bfloat16(tiny_klein_path):
    p = load(tiny_klein_path, RALUFlux2KleinPipeline, dtype=torch.bfloat16)
    out = p(prompt="a red circle", height=SIZE, width=SIZE, generator=gens(0), output_type="latent",
            max_sequence_length=TEXT)
    assert out.images.dtype == torch.bfloat16 and torch.isfinite(out.images.float()).all()


def test_callback_on_step_end_follows_diffusers_convention(pipe, embeds):
    seen = []
    replacement = torch.randn(1, TEXT, 48)

    def callback(p, step, timestep, tensors):
        assert p is pipe
        seen.append((step, float(timestep), tensors["latents"].shape[1], tensors["prompt_embeds"]))
        return {"latents": tensors["latents"], "prompt_embeds": replacement} if step == 1 else {}

    pipe(prompt_embeds=embeds[:1], height=SIZE, width=SIZE, generator=gens(0), config=FAST, output_type="latent",
         callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert [s for s, *_ in seen] == list(range(6))
    assert seen[0][1] == pytest.approx(1000.0) and all(0 < t <= 1000 for _, t, *_ in seen)
    k = int(0.2 * 64)
    assert [n for _, _, n, _ in seen] == [64] * 2 + [64 - k + 4 * k] * 2 + [256] * 2
    assert torch.equal(seen[1][3], embeds[:1]) and torch.equal(seen[2][3], replacement)


@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_lora_on_the_base_pipe_applies_and_scales(tiny_flux2_path):
    from peft import LoraConfig

    base = load(tiny_flux2_path, Flux2Pipeline)
    ralu = RALUFlux2Pipeline.from_pipe(base)
    ralu.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red circle", height=SIZE, width=SIZE, output_type="latent", config=FAST,
                  max_sequence_length=TEXT)
    before = ralu(generator=gens(0), **kwargs).images
    base.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_qkv_mlp_proj"],
                                            init_lora_weights=False))
    with_lora = ralu(generator=gens(0), **kwargs).images
    off = ralu(generator=gens(0), attention_kwargs={"scale": 0.0}, **kwargs).images
    assert not torch.allclose(before, with_lora, atol=1e-3)
    assert torch.allclose(before, off, atol=1e-5)


def test_caption_upsampling_is_the_stock_pipelines(pipe, monkeypatch):
    asked = []
    monkeypatch.setattr(pipe, "upsample_prompt", lambda prompt, images, temperature, device: asked.append(
        (prompt, images, temperature)) or ["a blue star"])
    out = pipe(prompt="a red circle", height=SIZE, width=SIZE, config=FAST, max_sequence_length=TEXT,
               caption_upsample_temperature=0.15, output_type="latent", generator=gens(0))
    expected = pipe(prompt="a blue star", height=SIZE, width=SIZE, config=FAST, max_sequence_length=TEXT,
                    output_type="latent", generator=gens(0))
    assert asked == [("a red circle", None, 0.15)] and torch.equal(out.images, expected.images)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(height=250), ValueError, r"height must be a positive multiple of 32 px .* got 250"),
    (dict(width=272), ValueError, r"width must be a positive multiple of 32 px .* got 272"),
    (dict(height=264, config=Baseline(2)), ValueError, r"height must be a positive multiple of 16 px .* got 264"),
    (dict(image=PIL.Image.new("RGB", (64, 64))), ValueError, r"image: reference-image conditioning is not supported"),
    (dict(image="a red circle", prompt=None), ValueError, r"image got a string: .* pass the prompt as prompt="),
    (dict(sigmas=[1.0, 0.5]), ValueError, r"sigmas: custom noise levels are not supported; pass config=Baseline"),
    (dict(guidance_scale=float("nan")), ValueError, r"guidance_scale must be a finite number, got nan"),
    (dict(guidance_scale=None), ValueError, r"guidance_scale must be a finite number, got None"),
    (dict(generator=[torch.Generator()] * 3), ValueError, r"generator is a list of 3 .* batch size .* is 1"),
    (dict(latents=torch.zeros(1, 256, D)), ValueError, r"latents must have shape \(1, 32, 16, 16\)"),
    (dict(latents=torch.full((1, D, 16, 16), float("inf"))), ValueError, r"latents must be finite"),
    (dict(output_type="jpg"), ValueError, r"output_type must be one of"),
    (dict(config=42), TypeError, r"config must be a RALUConfig, a Baseline or a preset name, got int"),
    (dict(config="flux2-dev-9x"), ValueError, r"preset must be one of"),
    (dict(config="flux2-dev-3x", num_inference_steps=20), ValueError, r"either num_inference_steps .* or config"),
    (dict(num_images_per_prompt=0), ValueError, r"num_images_per_prompt must be an integer >= 1"),
    (dict(prompt_embeds=torch.zeros(1, 4, 48)), ValueError, r"Cannot forward both `prompt`"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), ValueError, r"callback_on_step_end_tensor_inputs"),
])
@pytest.mark.parametrize("variant", ["pipe", "klein_base"])
def test_bad_input_fails_early_with_a_clear_message(request, variant, kwargs, error, match):
    p = request.getfixturevalue(variant)
    called = []
    hook = p.transformer.register_forward_pre_hook(lambda *a: called.append(1))
    try:
        with pytest.raises(error, match=match):
            p(**{"prompt": "a red circle", "height": SIZE, "width": SIZE, "max_sequence_length": TEXT, **kwargs})
    finally:
        hook.remove()
    assert not called, "the error must come before any transformer call"


@pytest.mark.parametrize("negative, match", [
    (torch.zeros(1, TEXT, 48), r"negative_prompt_embeds has 1 entries for 2 prompts"),
    (torch.zeros(TEXT, 48), r"negative_prompt_embeds must be a \(prompts"),
])
def test_negative_prompt_embeds_of_the_wrong_count_fail_early(klein_base, negative, match):
    called = []
    hook = klein_base.transformer.register_forward_pre_hook(lambda *a: called.append(1))
    try:
        with pytest.raises(ValueError, match=match):
            klein_base(prompt=["a red circle", "a blue star"], negative_prompt_embeds=negative, height=SIZE, width=SIZE,
                       max_sequence_length=TEXT)
    finally:
        hook.remove()
    assert not called


# --- caches -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", ["taylorseer", "magcache"])
def test_diffusers_caches_run_across_the_stages(pipe, cache):
    from diffusers.hooks import MagCacheConfig, TaylorSeerCacheConfig

    config = (TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1, taylor_factors_dtype=torch.float32)
              if cache == "taylorseer" else
              MagCacheConfig(threshold=0.5, mag_ratios=[1.0] * 10, num_inference_steps=10, retention_ratio=0.0))
    kwargs = dict(prompt=["a red circle", "a blue star"], height=SIZE, width=SIZE, output_type="latent",
                  config="flux2-dev-5x", max_sequence_length=TEXT)
    calls = []
    hook = pipe.transformer.transformer_blocks[0].attn.to_q.register_forward_hook(lambda *a: calls.append(1))
    pipe.transformer.enable_cache(config)
    try:
        first = pipe(generator=gens(0, 1), **kwargs).images
        computed = len(calls)
        second = pipe(generator=gens(0, 1), **kwargs).images
    finally:
        pipe.transformer.disable_cache()
        hook.remove()
    assert 0 < computed < 17, f"{computed} of 17 calls computed the first block"
    assert torch.isfinite(first).all() and torch.equal(first, second)  # state reset between generations


def test_first_block_cache_and_teacache_do_not_fit_flux2s_blocks(pipe):
    """Documented limits (docs/families/flux2.md): diffusers' FirstBlockCache fails on Flux2Transformer2DModel
    itself (its head block returns two streams, its tail block the fused one); ralu's TeaCache reads the
    head block's ``temb`` (FLUX.1's AdaLayerNormZero), which FLUX.2's blocks do not take."""
    from diffusers.hooks import FirstBlockCacheConfig

    from ralu.caching import IDENTITY_COEFFICIENTS, TeaCacheConfig, apply_teacache, remove_teacache

    kwargs = dict(prompt="a red circle", height=SIZE, width=SIZE, output_type="latent", config=FAST,
                  max_sequence_length=TEXT)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.5))
    try:
        with pytest.raises(TypeError, match=r"unsupported operand type\(s\) for -: 'Tensor' and 'list'"):
            pipe(generator=gens(0), **kwargs)
    finally:
        pipe.transformer.disable_cache()
    apply_teacache(pipe.transformer, TeaCacheConfig(threshold=0.3, coefficients=IDENTITY_COEFFICIENTS))
    try:
        with pytest.raises(ValueError, match=r"'temb' not found"):
            pipe(generator=gens(0), **kwargs)
    finally:
        remove_teacache(pipe.transformer)
