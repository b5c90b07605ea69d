"""RALUQwenImagePipeline and the Qwen-Image adapter on a tiny real QwenImageTransformer2DModel, VAE and text encoder."""

from __future__ import annotations

import json
import math
from importlib import resources

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import QwenImagePipeline
from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

from ralu import Baseline, RALUConfig, RALUQwenImagePipeline, models
from ralu.adapters.base import Conditioning
from ralu.adapters.qwenimage import (BatchedRopeQwenAttnProcessor, QwenImageAdapter, per_sample_rope, qwen_vae_decode,
                                     rope_coordinates, rope_frequencies)
from ralu.layout import MixedLayout, children_indices, grid_positions, low_positions
from tests.families import gens, load, quiet

SIZE = 128  # 16x16 latent, 8x8 full-res tokens, 4x4 low-res
PROMPTS = ["a red circle left of a blue square", "a yellow star"]  # different lengths: a padding mask
# qwen-image-5x with fewer steps, for tests of properties that do not depend on the step count
FAST = RALUConfig.preset("qwen-image-5x", steps=(1, 2, 2))


@pytest.fixture(scope="module")
def stock_pipe(tiny_qwenimage_path):
    return load(tiny_qwenimage_path, QwenImagePipeline)


@pytest.fixture(scope="module")
def pipe(stock_pipe):
    return quiet(RALUQwenImagePipeline.from_pipe(stock_pipe))


@pytest.fixture(scope="module")
def embeds(pipe):
    """(embeds, mask) of PROMPTS and (negative embeds, mask) of [" ", "a dog"]: masks pad the shorter ones."""
    positive = pipe.encode_prompt(PROMPTS, max_sequence_length=64)
    negative = pipe.encode_prompt([" ", "a cat on the left"], max_sequence_length=64)
    assert positive[1] is not None and negative[1] is not None
    return positive, negative


@pytest.fixture
def count_calls(pipe):
    """Number of transformer calls (the image embedder runs once per call)."""
    calls = []
    handle = pipe.transformer.img_in.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    yield calls
    handle.remove()


# --- the adapter against the stock transformer --------------------------------------------------------

@pytest.mark.parametrize("full_grid", [(8, 8), (6, 10), (10, 4)])
def test_adapter_equals_stock_forward_on_uniform_grids(stock_pipe, full_grid):
    """Full grid (stage 3, baseline) and half grid (stage 1) against the stock forward, bit for bit,
    batch 1 and 2, with a text mask, under both conventions whose stage 1 is the stock half-res forward."""
    transformer = stock_pipe.transformer
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 2):
        text = torch.randn(batch, 7, 32, generator=generator)
        mask = torch.ones(batch, 7, dtype=torch.long)
        mask[-1, 4:] = 0
        for grid, resolution in ((full_grid, "full"), ((full_grid[0] // 2, full_grid[1] // 2), "low")):
            x = torch.randn(batch, grid[0] * grid[1], 64, generator=generator)
            stock = transformer(hidden_states=x, encoder_hidden_states=text, encoder_hidden_states_mask=mask,
                                timestep=torch.full([batch], 0.7), img_shapes=[[(1, *grid)]] * batch,
                                return_dict=False)[0]
            for convention in ("low_grid", "stock_then_full"):
                adapter = QwenImageAdapter(transformer, Conditioning(text, mask=mask), full_grid,
                                           table_positions=convention)
                positions = grid_positions(grid).expand(batch, -1, -1)
                ours = adapter.velocity(x, adapter.prepare_positions(positions, grid, resolution), 0.7)
                assert torch.equal(ours, stock), (batch, grid, convention)


def test_bfloat16_velocity_keeps_the_stock_timestep_rounding(tiny_qwenimage_path):
    """QwenImagePipeline passes ``t.to(latents.dtype) / 1000`` with t = σ·1000 from the scheduler; in
    bf16 that rounds differently from σ itself, and the adapter must round as the stock pipeline does."""
    transformer = load(tiny_qwenimage_path, QwenImagePipeline).transformer.to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 64, generator=generator).to(torch.bfloat16)
    text = torch.randn(1, 5, 32, generator=generator).to(torch.bfloat16)
    adapter = QwenImageAdapter(transformer, Conditioning(text), (8, 8))
    positions = adapter.prepare_positions(grid_positions((4, 4))[None], (4, 4), "low")
    for sigma in (0.98627311, 0.38180089):  # levels where the two roundings differ in bf16
        t = torch.tensor(sigma, dtype=torch.float32) * 1000  # the scheduler's timestep
        assert t.to(x.dtype) / 1000 != torch.tensor(sigma).to(x.dtype)
        stock = transformer(hidden_states=x, encoder_hidden_states=text, timestep=t.expand(1).to(x.dtype) / 1000,
                            img_shapes=[[(1, 4, 4)]], return_dict=False)[0]
        assert torch.equal(adapter.velocity(x, positions, torch.tensor(sigma)), stock), sigma


def test_rope_frequencies_read_the_tables_at_whole_positions_and_the_formula_between(stock_pipe):
    pos_embed = stock_pipe.transformer.pos_embed
    rows = torch.arange(-6.0, 6.0)
    coords = torch.stack([torch.zeros_like(rows), rows, rows.flip(0)], dim=-1)
    freqs = rope_frequencies(pos_embed, coords)
    # independent: the stock table rows, axis by axis (frame 2, height 3, width 3 complex columns)
    table = {p: (pos_embed.pos_freqs[p] if p >= 0 else pos_embed.neg_freqs[4096 + p]) for p in range(-6, 6)}
    expected = torch.stack([torch.cat([table[0][:2], table[int(r)][2:5], table[int(c)][5:]])
                            for r, c in coords[:, 1:].tolist()])
    assert torch.equal(freqs, expected)
    # between whole positions: the formula, continuous through them and not a table row
    near = rope_frequencies(pos_embed, coords + torch.tensor([0.0, 1e-3, 1e-3]))
    assert torch.allclose(near, freqs, atol=1e-2) and not torch.equal(near, freqs)
    half = rope_frequencies(pos_embed, torch.tensor([[0.0, 0.5, -1.5]]))[0]
    # a rotation by angle p·θ_k: half a step is the square root of the whole step's rotation
    whole = rope_frequencies(pos_embed, torch.tensor([[0.0, 1.0, -3.0]]))[0]
    assert torch.allclose(half * half, whole, atol=1e-6)
    # whole positions read the model's own tables, so a model whose tables differ from the formula
    # (or a device whose polar() rounds differently) keeps the stock embedding exactly
    tables = pos_embed.pos_freqs, pos_embed.neg_freqs
    try:
        pos_embed.pos_freqs, pos_embed.neg_freqs = (t * torch.polar(torch.ones(()), torch.tensor(0.1)) for t in tables)
        moved = rope_frequencies(pos_embed, coords)
        assert torch.equal(moved[:, 2:5], torch.stack([pos_embed.pos_freqs[int(r)][2:5] if r >= 0 else
                                                       pos_embed.neg_freqs[4096 + int(r)][2:5]
                                                       for r in coords[:, 1].tolist()]))
    finally:
        pos_embed.pos_freqs, pos_embed.neg_freqs = tables


def test_position_conventions_map_onto_the_stock_grids():
    full_grid = (6, 10)  # odd low grid (3, 5): centring rounds as the stock grid does
    low_grid = (3, 5)
    low = grid_positions(low_grid)[None]
    # stage 1: the stock half-resolution grid, rows -2..0, cols -3..1, text after max(3//2, 5//2) = 2
    coords, offset = rope_coordinates(low, low_grid, full_grid, "stock_then_full")
    assert coords[0, 0].tolist() == [-2.0, -3.0] and coords[0, -1].tolist() == [0.0, 1.0] and offset == 2
    # stage 2 (stock_then_full): the full grid, twice the low position, text after max(6//2, 10//2) = 5
    coords, offset = rope_coordinates(low + 0.5, low_grid, full_grid, "stock_then_full", mixed=True)
    assert coords[0, 0].tolist() == [-2.0, -4.0] and offset == 5
    # stage 2 (low_grid): children at half steps of the half-resolution grid
    coords, offset = rope_coordinates(low + 0.5, low_grid, full_grid, "low_grid", mixed=True)
    assert coords[0, 0].tolist() == [-1.5, -2.5] and offset == 2
    # stage 1 (full_grid): the full grid from the start
    coords, offset = rope_coordinates(low, low_grid, full_grid, "full_grid")
    assert coords[0, 0].tolist() == [-3.0, -5.0] and offset == 5
    with pytest.raises(ValueError, match="grid must be the full token grid"):
        rope_coordinates(low, (4, 4), full_grid, "low_grid")
    with pytest.raises(ValueError, match="table_positions must be one of"):
        rope_coordinates(low, low_grid, full_grid, "centre")


def _mixed(low_grid, selected):
    layout = MixedLayout.from_selection(torch.tensor([selected]), low_grid)
    return layout, layout.mixed_positions("corner")


def test_mixed_stage_with_every_token_upsampled_is_the_stock_full_resolution_forward(stock_pipe):
    """stock_then_full's stage 2 puts children (and the text) where stage 3 has them: with all tokens
    upsampled the mixed sequence is the full grid in another order, so the stock full forward, permuted."""
    transformer = stock_pipe.transformer
    full_grid, low_grid = (6, 10), (3, 5)
    text = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1))
    layout, positions = _mixed(low_grid, list(range(15)))
    x_full = torch.randn(1, 60, 64, generator=torch.Generator().manual_seed(2))
    order = children_indices(layout.selected, low_grid)[0]
    stock = transformer(hidden_states=x_full, encoder_hidden_states=text, timestep=torch.full([1], 0.6),
                        img_shapes=[[(1, *full_grid)]], return_dict=False)[0]
    adapter = QwenImageAdapter(transformer, Conditioning(text), full_grid)
    ours = adapter.velocity(x_full[:, order], adapter.prepare_positions(positions, low_grid, "mixed"), 0.6)
    # the same attention over the same set in another order: float32 summation order only
    assert torch.allclose(ours, stock[:, order], atol=1e-5, rtol=0)


def test_mixed_stage_with_nothing_upsampled_under_low_grid_is_the_stock_half_resolution_forward(stock_pipe):
    transformer = stock_pipe.transformer
    full_grid, low_grid = (6, 10), (3, 5)
    text = torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(1))
    _, positions = _mixed(low_grid, [])
    x = torch.randn(1, 15, 64, generator=torch.Generator().manual_seed(2))
    stock = transformer(hidden_states=x, encoder_hidden_states=text, timestep=torch.full([1], 0.6),
                        img_shapes=[[(1, *low_grid)]], return_dict=False)[0]
    adapter = QwenImageAdapter(transformer, Conditioning(text), full_grid, table_positions="low_grid")
    assert torch.equal(adapter.velocity(x, adapter.prepare_positions(positions, low_grid, "mixed"), 0.6), stock)


def test_the_measured_convention_trade_off(stock_pipe):
    """docs/families/qwenimage.md: on a constructed case (full latent = the upsampled low one), children lie
    closer to the stock full-res forward under stock_then_full, kept tokens closer to the half-res forward
    under low_grid, and moving the text off the image tokens' grid hurts the part that moved."""
    from ralu.testing.qwenimage import mixed_position_errors

    errors = mixed_position_errors(stock_pipe.transformer, seeds=(0, 1))
    assert errors["stock_then_full"]["children"] < errors["low_grid"]["children"]
    assert errors["low_grid"]["kept"] < errors["stock_then_full"]["kept"]
    assert errors["low_grid"]["kept"] < errors["low_grid, text on the full grid"]["kept"]
    assert errors["stock_then_full"]["children"] < errors["stock_then_full, text on the low grid"]["children"]


# --- per-sample positions in one call -------------------------------------------------------------------

def _per_sample_positions():
    base = low_positions((4, 4), "corner")
    return torch.stack([base, base.flip(0) * 0.75 + 0.5])  # sample 1: other, fractional positions


def test_per_sample_rope_equals_single_sample_runs(pipe, embeds):
    (text, mask), _ = embeds
    adapter = QwenImageAdapter(pipe.transformer, Conditioning(text, mask=mask), (8, 8))
    x = torch.randn(2, 16, 64)
    positions = _per_sample_positions()
    stock = dict(pipe.transformer.attn_processors)
    with adapter.session():
        assert {type(p) for p in pipe.transformer.attn_processors.values()} == {BatchedRopeQwenAttnProcessor}
        prepared = adapter.prepare_positions(positions, (4, 4), "low")
        assert prepared.image.dim() == 3 and not prepared.loop  # one batched call
        batched = adapter.velocity(x, prepared, 0.5)
    assert pipe.transformer.attn_processors == stock  # the very processors installed before
    for b in range(2):
        single = QwenImageAdapter(pipe.transformer, Conditioning(text[b:b + 1], mask=mask[b:b + 1]), (8, 8))
        alone = single.velocity(x[b:b + 1], single.prepare_positions(positions[b:b + 1], (4, 4), "low"), 0.5)
        # one attention call over a batch against one per sample: float32 rounding
        assert torch.allclose(batched[b:b + 1], alone, atol=1e-5, rtol=0)


def test_custom_processors_are_left_alone_and_samples_run_one_at_a_time(tiny_qwenimage_path, embeds):
    class CustomProcessor(QwenDoubleStreamAttnProcessor2_0):
        pass

    pipe = load(tiny_qwenimage_path, RALUQwenImagePipeline)
    pipe.transformer.set_attn_processor(CustomProcessor())
    mine = dict(pipe.transformer.attn_processors)
    (text, mask), _ = embeds
    adapter = QwenImageAdapter(pipe.transformer, Conditioning(text, mask=mask), (8, 8))
    x, positions = torch.randn(2, 16, 64), _per_sample_positions()
    with adapter.session() as batched_ok:
        assert not batched_ok and pipe.transformer.attn_processors == mine
        prepared = adapter.prepare_positions(positions, (4, 4), "low")
        assert prepared.loop
        looped = adapter.velocity(x, prepared, 0.5)
    pipe.transformer.set_attn_processor(QwenDoubleStreamAttnProcessor2_0())
    with per_sample_rope(pipe.transformer):
        batched = adapter.velocity(x, adapter.prepare_positions(positions, (4, 4), "low"), 0.5)
    assert torch.allclose(looped, batched, atol=1e-5, rtol=0)


@pytest.mark.parametrize("convention", ["stock_then_full", "low_grid"])
@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_guided_batch_is_one_call_per_step_and_branch_and_equals_samples_run_alone(pipe, embeds, count_calls,
                                                                                  convention):
    (text, mask), (negative, negative_mask) = embeds
    config = RALUConfig.preset("qwen-image-5x", table_positions=convention)
    kwargs = dict(height=256, width=256, config=config, output_type="latent", true_cfg_scale=4.0)
    batch = pipe(prompt_embeds=text, prompt_embeds_mask=mask, negative_prompt_embeds=negative,
                 negative_prompt_embeds_mask=negative_mask, generator=gens(10, 11), **kwargs)
    assert not torch.equal(batch.regions[0], batch.regions[1]), "the test needs samples that choose different regions"
    assert count_calls == [2] * (2 * sum(config.steps))  # two branches per step, each one call on the batch
    for b, seed in enumerate((10, 11)):
        alone = pipe(prompt_embeds=text[b:b + 1], prompt_embeds_mask=mask[b:b + 1],
                     negative_prompt_embeds=negative[b:b + 1], negative_prompt_embeds_mask=negative_mask[b:b + 1],
                     generator=gens(seed), **kwargs)
        assert torch.equal(alone.regions[0], batch.regions[b])
        assert torch.allclose(alone.images[0], batch.images[b], atol=1e-4, rtol=0)
    assert {type(p) for p in pipe.transformer.attn_processors.values()} == {QwenDoubleStreamAttnProcessor2_0}


# --- the pipeline against the stock pipeline ------------------------------------------------------------

def test_from_pretrained_and_from_pipe(tiny_qwenimage_path, stock_pipe, pipe):
    loaded = load(tiny_qwenimage_path, RALUQwenImagePipeline)
    assert isinstance(loaded, RALUQwenImagePipeline) and loaded.default_preset == "qwen-image-3x"
    assert pipe.transformer is stock_pipe.transformer and pipe.vae is stock_pipe.vae
    out = loaded("a red circle", negative_prompt=" ", height=SIZE, width=SIZE, generator=gens(0), config=FAST)
    assert isinstance(out.images[0], PIL.Image.Image) and out.images[0].size == (SIZE, SIZE)


@pytest.mark.parametrize("size", [(SIZE, SIZE), (96, 160)])
def test_baseline_reproduces_the_stock_pipeline_bit_for_bit(stock_pipe, pipe, embeds, size):
    """True CFG with the norm rescale, padded prompts with their masks, the shifted and stretched σ grid."""
    (text, mask), (negative, negative_mask) = embeds
    height, width = size
    latents = torch.randn(2, (height // 16) * (width // 16), 64, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt_embeds=text, prompt_embeds_mask=mask, negative_prompt_embeds=negative,
                  negative_prompt_embeds_mask=negative_mask, latents=latents, height=height, width=width,
                  true_cfg_scale=4.0, output_type="latent")
    stock = stock_pipe(num_inference_steps=6, **kwargs).images
    assert torch.equal(pipe(config=Baseline(6), **kwargs).images, stock)
    decoded = pipe(num_inference_steps=6, **{**kwargs, "output_type": "np"}).images
    assert np.array_equal(decoded, stock_pipe(num_inference_steps=6, **{**kwargs, "output_type": "np"}).images)
    # without a negative prompt there is no guidance, as in the stock pipeline
    plain = {k: v for k, v in kwargs.items() if not k.startswith("negative")}
    assert torch.equal(pipe(num_inference_steps=3, **plain).images, stock_pipe(num_inference_steps=3, **plain).images)


def test_images_per_prompt_keep_each_prompts_mask(pipe):
    """diffusers 0.42.1 tiles the prompt mask over the batch while it repeats the embeddings per prompt; the
    pipeline repeats both per prompt, so two images per prompt equal the prompts listed twice each."""
    latents = torch.randn(4, 64, 64, generator=torch.Generator().manual_seed(0))
    kwargs = dict(height=SIZE, width=SIZE, latents=latents, output_type="latent", config=Baseline(2))
    twice = pipe(PROMPTS, num_images_per_prompt=2, **kwargs).images
    listed = pipe([PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, **kwargs).images
    assert torch.equal(twice, listed)


def test_custom_sigmas_baseline_matches_the_stock_pipeline(stock_pipe, pipe):
    sigmas = [1.0, 0.8, 0.5, 0.3]
    kwargs = dict(prompt="a red circle", negative_prompt=" ", latents=torch.randn(1, 64, 64), height=SIZE, width=SIZE,
                  output_type="latent", sigmas=sigmas)
    assert torch.equal(pipe(**kwargs).images, stock_pipe(**kwargs).images)


def test_true_cfg_only_with_a_scale_above_one_and_a_negative_prompt(pipe, count_calls):
    kwargs = dict(prompt="a red circle", height=SIZE, width=SIZE, output_type="latent", config=FAST)
    cases = ((dict(negative_prompt=" "), 2), (dict(), 1), (dict(negative_prompt=" ", true_cfg_scale=1.0), 1))
    for extra, branches in cases:
        count_calls.clear()
        pipe(generator=gens(0), **kwargs, **extra)
        assert len(count_calls) == branches * sum(FAST.steps), extra


def test_guidance_combine_is_the_stock_norm_rescaled_formula(stock_pipe):
    adapter = QwenImageAdapter(stock_pipe.transformer, Conditioning(torch.zeros(1, 1, 32)), (8, 8))
    generator = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 10, 64, generator=generator), torch.randn(2, 10, 64, generator=generator)
    out = adapter.combine(cond, uncond, 4.0)
    # independent: the guided direction (4·cond - 3·uncond), scaled per token to cond's length
    direction = 4.0 * cond - 3.0 * uncond
    expected = direction / direction.norm(dim=-1, keepdim=True) * cond.norm(dim=-1, keepdim=True)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(out.norm(dim=-1), cond.norm(dim=-1), atol=1e-5)


def test_region_selection_decode_undoes_the_latent_normalisation_as_the_stock_pipeline(stock_pipe):
    vae = stock_pipe.vae
    tokens = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    # the stock pipeline's decode, step by step
    latents = QwenImagePipeline._unpack_latents(tokens, 64, 64, 8).to(vae.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    stock = vae.decode(latents / std + mean, return_dict=False)[0][:, :, 0]
    adapter = QwenImageAdapter(stock_pipe.transformer, Conditioning(torch.zeros(2, 1, 32)), (8, 8), vae=vae)
    assert torch.equal(adapter.decode(tokens, (4, 4)), stock)
    assert torch.equal(qwen_vae_decode(vae, tokens, (4, 4)), stock)
    assert stock.shape == (2, 3, 64, 64)


def test_schedule_is_the_stock_one_and_auto_means_its_shift_part(pipe):
    tokens = 4096
    config = pipe.scheduler.config
    mu = calculate_shift(tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift,
                         config.max_shift)
    assert mu == pytest.approx(0.693548, abs=1e-6)
    assert pipe.stock_shift(tokens) == math.exp(mu)
    assert models.get("qwen-image").stock_shift(tokens) == pytest.approx(math.exp(mu), rel=1e-12)
    baseline = pipe.resolve_schedule(Baseline(50), tokens)
    sigmas = baseline.stages[0].sigmas
    # the stock grid: exp(μ)-shifted linspace(1, 1/N, N), stretched to end at shift_terminal, then 0
    assert sigmas[0] == 1.0 and sigmas[-2] == pytest.approx(0.02, abs=1e-7) and sigmas[-1] == 0.0
    shifted = np.exp(mu) / (np.exp(mu) + (1 / np.linspace(1.0, 1 / 50, 50) - 1))
    stretched = 1 - (1 - shifted) / ((1 - shifted[-1]) / (1 - 0.02))
    assert np.allclose(sigmas[:-1], stretched, atol=1e-6)
    # a preset at 1024² keeps its numbers; at 512² it is solved again for the smaller stock shift
    preset = RALUConfig.preset("qwen-image-3x")
    assert pipe.resolve_schedule(preset, tokens).shifts == preset.shifts
    smaller = pipe.resolve_schedule(preset, 1024)
    assert smaller.base_shift == pytest.approx(preset.solved_shift * pipe.stock_shift(1024) / pipe.stock_shift(4096))
    assert smaller.shifts != preset.shifts


# --- pipeline conventions ---------------------------------------------------------------------------------

@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_shapes_types_and_stage_report(pipe):
    out = pipe(PROMPTS, negative_prompt=" ", height=SIZE, width=192, num_images_per_prompt=2,
               generator=gens(0, 1, 2, 3), output_type="np", config=FAST)
    assert out.images.shape == (4, SIZE, 192, 3) and np.isfinite(out.images).all()
    low = 4 * 6
    k = int(0.3 * low)
    assert out.stage_tokens == (low, low - k + 4 * k, 4 * low) and out.stage_steps == (1, 2, 2)
    assert out.regions.shape == (4, 4, 6) and out.regions.flatten(1).sum(1).tolist() == [k] * 4
    pt = pipe("a red circle", height=SIZE, width=SIZE, output_type="pt", generator=gens(0), config=FAST).images
    assert pt.shape == (1, 3, SIZE, SIZE)
    latent = pipe("a red circle", height=SIZE, width=SIZE, output_type="latent", generator=gens(0), config=FAST).images
    assert latent.shape == (1, 64, 64)
    (images,) = pipe("a red circle", height=SIZE, width=SIZE, return_dict=False, generator=gens(0), config=FAST)
    assert len(images) == 1 and isinstance(images[0], PIL.Image.Image)


def test_same_generator_seed_is_reproducible(pipe):
    kwargs = dict(prompt="a red circle", negative_prompt=" ", height=SIZE, width=SIZE, output_type="latent",
                  config=FAST)
    a, b = (pipe(generator=gens(5), **kwargs).images for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a, pipe(generator=gens(6), **kwargs).images)


def test_callback_on_step_end_follows_diffusers_convention(pipe):
    seen = []
    replacement = {}

    def callback(p, step, timestep, tensors):
        seen.append((step, float(timestep), tensors["latents"].shape[1]))
        assert p is pipe and tensors["prompt_embeds"].shape[0] == 1
        if step == 0:
            replacement["embeds"] = tensors["prompt_embeds"] * 0
            return {"latents": tensors["latents"], "prompt_embeds": replacement["embeds"]}
        assert torch.equal(tensors["prompt_embeds"], replacement["embeds"])  # the replaced embeddings are used
        return {}

    pipe("a red circle", height=SIZE, width=SIZE, generator=gens(0), config=FAST, callback_on_step_end=callback,
         callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], output_type="latent")
    assert [s for s, _, _ in seen] == list(range(5))
    assert seen[0][1] == pytest.approx(1000.0) and all(0 < t <= 1000 for _, t, _ in seen)
    assert [n for _, _, n in seen] == [16] + [16 - 4 + 16] * 2 + [64] * 2


def test_interrupt_returns_full_resolution_latents(pipe):
    def stop(p, step, timestep, tensors):
        p._interrupt = step == 1
        return {}

    out = pipe("a red circle", height=SIZE, width=SIZE, generator=gens(0), config=FAST, callback_on_step_end=stop,
               output_type="latent")
    assert out.images.shape == (1, 64, 64) and out.stage_steps == (1, 1)


@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_bfloat16(tiny_qwenimage_path):
    pipe = RALUQwenImagePipeline.from_pretrained(tiny_qwenimage_path, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", negative_prompt=" ", height=SIZE, width=SIZE, generator=gens(0), config=FAST,
               output_type="latent")
    assert out.images.dtype == torch.bfloat16 and torch.isfinite(out.images.float()).all()


def test_lora_on_the_base_pipe_applies_and_scales(tiny_qwenimage_path):
    from peft import LoraConfig

    base = load(tiny_qwenimage_path, QwenImagePipeline)
    ralu = RALUQwenImagePipeline.from_pipe(base)
    ralu.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red circle", height=SIZE, width=SIZE, output_type="latent", config=FAST)
    before = ralu(generator=gens(0), **kwargs).images
    base.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                            init_lora_weights=False))
    with_lora = ralu(generator=gens(0), **kwargs).images
    off = ralu(generator=gens(0), attention_kwargs={"scale": 0.0}, **kwargs).images
    assert not torch.allclose(before, with_lora, atol=1e-3)
    assert torch.allclose(before, off, atol=1e-5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(height=144), ValueError, r"height must be a positive multiple of 32 px .* got 144"),
    (dict(width=136), ValueError, r"width must be a positive multiple of 32 px .* got 136"),
    (dict(config=Baseline(2), height=120), ValueError, r"height must be a positive multiple of 16 px .* got 120"),
    (dict(generator=[torch.Generator()] * 3), ValueError, r"generator is a list of 3 .* batch size .* is 1"),
    (dict(latents=torch.zeros(1, 16, 64)), ValueError, r"latents must have shape \(1, 64, 64\)"),
    (dict(latents=torch.full((1, 64, 64), float("nan"))), ValueError, r"latents must be finite"),
    (dict(output_type="jpg"), ValueError, r"output_type must be one of"),
    (dict(config=42), TypeError, r"config must be a RALUConfig, a Baseline or a preset name, got int"),
    (dict(config="qwen-image-9x"), ValueError, r"preset must be one of"),
    (dict(config="qwen-image-3x", num_inference_steps=20), ValueError, r"either num_inference_steps .* or config"),
    (dict(num_images_per_prompt=0), ValueError, r"num_images_per_prompt must be an integer >= 1"),
    (dict(true_cfg_scale=float("nan")), ValueError, r"true_cfg_scale must be a finite number, got nan"),
    (dict(guidance_scale=float("inf")), ValueError, r"guidance_scale must be a finite number, got inf"),
    (dict(negative_prompt=[" ", " "]), ValueError, r"negative_prompt has 2 entries for 1 prompts"),
    (dict(negative_prompt_embeds=torch.zeros(2, 5, 32)), ValueError,
     r"negative_prompt_embeds has batch 2, .* 1 prompts"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 5, 32), prompt_embeds_mask=torch.ones(1, 4)), ValueError,
     r"prompt_embeds_mask must have shape \(1, 5\)"),
    (dict(sigmas=[1.0, 0.5]), ValueError, r"sigmas: a custom grid of 2 levels applies to a baseline run"),
    (dict(sigmas=[1.0, float("nan")], config=Baseline(2)), ValueError, r"sigmas must be a flat sequence of finite"),
    (dict(max_sequence_length=2000), ValueError, r"max_sequence_length` cannot be greater than 1024"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), ValueError, r"callback_on_step_end_tensor_inputs` has to be"),
])
def test_bad_input_fails_early_with_a_clear_message(pipe, count_calls, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe(**{"prompt": "a red circle", "height": SIZE, "width": SIZE, "config": FAST, **kwargs})
    assert not count_calls, "the error must come before any transformer call"


def test_unsupported_transformer_variants_are_refused(stock_pipe):
    from diffusers import QwenImageTransformer2DModel

    from ralu.testing import TINY_QWEN_TRANSFORMER

    edit = QwenImageTransformer2DModel(**{**TINY_QWEN_TRANSFORMER, "zero_cond_t": True})
    with pytest.raises(ValueError, match=r"transformer config sets \['zero_cond_t'\]"):
        QwenImageAdapter(edit, Conditioning(torch.zeros(1, 1, 32)), (8, 8))


# --- caches across the stages ---------------------------------------------------------------------------

def _linear_calls(pipe):
    calls = []
    hooks = [m.register_forward_pre_hook(lambda m, a: calls.append(1))
             for m in pipe.transformer.transformer_blocks.modules() if isinstance(m, torch.nn.Linear)]
    return calls, hooks


@pytest.mark.parametrize("name", ["first_block", "taylorseer", "magcache"])
@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_diffusers_cache_runs_across_stages_skips_work_and_starts_clean(pipe, name):
    import diffusers.hooks as dh

    caches = {"first_block": lambda: dh.FirstBlockCacheConfig(threshold=0.5),
              "taylorseer": lambda: dh.TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=1,
                                                              taylor_factors_dtype=torch.float32),
              "magcache": lambda: dh.MagCacheConfig(threshold=0.3, retention_ratio=0.2, num_inference_steps=10,
                                                    mag_ratios=[0.97] * 10)}
    calls, hooks = _linear_calls(pipe)

    def run():
        calls.clear()
        out = pipe(PROMPTS, negative_prompt=" ", height=256, width=256, output_type="latent", config="qwen-image-3x",
                   generator=gens(0, 1))
        return out.images, len(calls)

    try:
        _, full_work = run()
        pipe.transformer.enable_cache(caches[name]())
        try:
            images, work = run()
            again, _ = run()
        finally:
            pipe.transformer.disable_cache()
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.isfinite(images).all() and work < full_work
    assert torch.equal(again, images)  # no state left over from the previous run's last stage


def test_ralu_teacache_needs_a_first_block_norm1_which_qwen_blocks_do_not_have(pipe):
    from ralu.caching import TeaCacheConfig, apply_teacache, remove_teacache

    apply_teacache(pipe.transformer, TeaCacheConfig(threshold=0.3))
    try:
        with pytest.raises(AttributeError, match="norm1"):
            pipe("a red circle", height=SIZE, width=SIZE, output_type="latent", config=FAST, generator=gens(0))
    finally:
        remove_teacache(pipe.transformer)


# --- presets, model file, FLOPs ----------------------------------------------------------------------------

def _model_file() -> dict:
    return json.loads(resources.files("ralu").joinpath("data", "models", "qwen-image.json").read_text())


@pytest.mark.parametrize("name", ["qwen-image-3x", "qwen-image-5x"])
def test_presets_are_ntdm_at_the_stock_shift_and_named_for_their_speedup(name, assert_ntdm_optimum):
    from ralu.ntdm import solve_ntdm

    spec = models.get("qwen-image")
    preset = RALUConfig.preset(name)
    h0 = spec.stock_shift(4096)
    assert preset.solved_shift == pytest.approx(h0, abs=1e-4) and name in spec.presets
    shifts, ratio = solve_ntdm(preset.steps, preset.ends, h0, "reference")
    assert_ntdm_optimum(preset, shifts, ratio)
    speed = spec.cost(Baseline(spec.steps), 1024, 1024) / spec.cost(preset, 1024, 1024)
    assert f"{round(speed)}x" == name.rsplit("-", 1)[1]
    assert spec.preset == "qwen-image-3x" and models.for_preset(name) is spec


def test_model_file_is_the_released_configs(stock_pipe):
    data = _model_file()
    assert data["branches"] == 2 and data["steps"] == 50 and data["family"] == "qwenimage"
    # the tiny scheduler is built from the shipped config: the stock pipeline runs with it
    released = {k: v for k, v in data["scheduler"].items() if not k.startswith("_")}
    assert {k: stock_pipe.scheduler.config[k] for k in released} == released
    with torch.device("meta"):
        from diffusers import QwenImageTransformer2DModel

        keys = {k: v for k, v in data["transformer"].items() if not k.startswith("_") and k != "pooled_projection_dim"}
        model = QwenImageTransformer2DModel(**keys)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(20.43e9, rel=1e-3)  # Qwen-Image's 20 B


def _counted_flops(model, grid, text_tokens, device="cpu") -> int:
    """FlopCounterMode's total of one stock forward (batch 1, MATH attention, as tests/test_cost.py)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    c = model.config
    with torch.device(device):
        inputs = dict(hidden_states=torch.randn(1, grid[0] * grid[1], c.in_channels),
                      encoder_hidden_states=torch.randn(1, text_tokens, c.joint_attention_dim),
                      timestep=torch.full((1,), 0.5), img_shapes=[[(1, *grid)]])
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(**inputs)
    return counter.get_total_flops()


@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_call_flops_count_exactly_on_tiny_and_real_configs(stock_pipe):
    from diffusers import QwenImageTransformer2DModel

    from ralu.cost import call_flops, qwenimage_call_flops

    tiny = dict(stock_pipe.transformer.config)
    for grid, m in (((4, 4), 8), ((6, 10), 24)):
        # both sides count the same operations in integers; rel 1e-12 only absorbs the float conversion
        assert call_flops(tiny, grid[0] * grid[1], m) == pytest.approx(_counted_flops(stock_pipe.transformer, grid, m),
                                                                       rel=1e-12)
    real = _model_file()["transformer"]
    with torch.device("meta"):
        model = QwenImageTransformer2DModel(**{k: v for k, v in real.items()
                                               if not k.startswith("_") and k != "pooled_projection_dim"})
    assert qwenimage_call_flops(real, 4096, 128) == pytest.approx(_counted_flops(model, (64, 64), 128, "meta"),
                                                                  rel=1e-12)
    assert qwenimage_call_flops(real, 4096, 128) == pytest.approx(70.58e12, rel=1e-3)


@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_vae_decode_coefficients_count_exactly_at_a_third_size():
    from ralu.cost import qwenimage_vae_decode_flops

    vae = _model_file()["vae"]["config"]
    small, large = qwenimage_vae_decode_flops(vae, 256, 256), qwenimage_vae_decode_flops(vae, 512, 512)
    p, q = 256 * 256, 512 * 512
    b = (large / q - small / p) / (q - p)
    assert (small / p - b * p, b) == tuple(_model_file()["vae"]["decode_flops"])
    assert models.get("qwen-image").decode(384, 640) == qwenimage_vae_decode_flops(vae, 384, 640)


def test_cli_schedule_for_the_shipped_model(capsys):
    from ralu.cli import main

    assert main(["schedule", "--preset", "qwen-image-5x"]) == 0
    out = capsys.readouterr().out
    assert "qwen-image (QwenImageTransformer2DModel)" in out and "2 branches" in out and "= 5.40x" in out


def test_model_cpu_offload_hook_runs_before_the_token_forward(tiny_qwenimage_path):
    # enable_model_cpu_offload moves the transformer to the accelerator in a hook on its forward; the
    # adapter calls the model's parts, so it runs that hook itself (no accelerator here: the offload
    # device is the CPU and the test watches the hook being called)
    pytest.importorskip("accelerate")
    pipe = load(tiny_qwenimage_path, RALUQwenImagePipeline)
    kwargs = dict(height=SIZE, width=SIZE, config=FAST, output_type="latent", negative_prompt=" ")
    expected = pipe("a red circle", generator=gens(0), **kwargs).images
    pipe.enable_model_cpu_offload(device="cpu")
    hook = pipe.transformer._hf_hook
    calls = []
    original = hook.pre_forward
    hook.pre_forward = lambda module, *args, **kw: (calls.append(module), original(module, *args, **kw))[1]
    out = pipe("a red circle", generator=gens(0), **kwargs).images
    assert len(calls) == 2 * sum(FAST.steps) and all(module is pipe.transformer for module in calls)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
