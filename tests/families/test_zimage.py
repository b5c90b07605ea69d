"""RALUZImagePipeline and the Z-Image adapter on tiny real ZImageTransformer2DModel / AutoencoderKL / Qwen3 stacks."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import ZImagePipeline, ZImageTransformer2DModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ralu import Baseline, RALUConfig, models, solve_ntdm
from ralu.adapters.common import Guidance
from ralu.adapters.zimage import (
    MIXED_POSITIONS,
    ZImageAdapter,
    captions_to_conditioning,
    from_patch_layout,
    rope_factors,
    rope_tables,
    to_patch_layout,
)
from ralu.cost import zimage_call_flops
from ralu.layout import MixedLayout, grid_positions, latent_to_tokens, low_positions
from ralu.ntdm import ntdm_objective
from ralu.pipelines.zimage import RALUZImagePipeline
from ralu.testing import TINY_ZIMAGE_TRANSFORMER
from tests.families import gens, load, quiet

SIZE = 128  # 16x16 latent, 8x8 full-res tokens, 4x4 low-res
PROMPTS = ["a red circle left of a blue square", "a yellow star"]
NEGATIVES = ["a green triangle", "a dog on the left"]
# z-image-7x with fewer steps, for properties that do not depend on the step count
FAST = RALUConfig.preset("z-image-7x", steps=(1, 2, 2))
PRESETS = {"z-image-turbo-1.6x": "z-image-turbo", "z-image-3x": "z-image", "z-image-7x": "z-image"}


@pytest.fixture(scope="module")
def stock(tiny_zimage_path):
    return load(tiny_zimage_path, ZImagePipeline)


@pytest.fixture(scope="module")
def pipe(stock):
    return quiet(RALUZImagePipeline.from_pipe(stock))


@pytest.fixture(scope="module")
def base_pipe(tiny_zimage_base_path):
    return load(tiny_zimage_base_path, RALUZImagePipeline)


def stock_velocity(transformer, latents: torch.Tensor, sigma: float, captions: list[torch.Tensor]) -> torch.Tensor:
    """ZImagePipeline's unguided velocity ``-model(x, 1 - σ)`` of latents (B, C, H, W), as ralu tokens (B, S, 4C)."""
    t = torch.tensor(sigma, dtype=torch.float32) * 1000
    timestep = ((1000 - t) / 1000).expand(latents.shape[0])
    out = transformer(list(latents.to(transformer.dtype).unsqueeze(2).unbind(0)), timestep, captions,
                      return_dict=False)[0]
    return -latent_to_tokens(torch.stack([o.float() for o in out]).squeeze(2))


def uniform_positions(adapter: ZImageAdapter, grid: tuple[int, int], batch: int, resolution: str):
    return adapter.prepare_positions(grid_positions(grid).expand(batch, -1, -1), grid, resolution)


# --- the adapter against the stock transformer -----------------------------------------------------------

@pytest.mark.parametrize("full_latent", [(16, 16), (16, 24), (24, 8)])
def test_adapter_equals_stock_forward_on_uniform_grids(pipe, full_latent):
    """Full grid (stage 3, baselines) and half grid (stage 1), batch 1 and 2, bit for bit.

    Batch 2 has captions of 5 and 40 tokens (padded to 32 and 64): the caption and joint streams
    run under key masks, as in the stock forward; 8x8 and 4x12 grids pad the image to 32 tokens.
    """
    transformer = pipe.transformer
    h, w = full_latent
    generator = torch.Generator().manual_seed(0)
    dim = transformer.config.cap_feat_dim
    for batch in (1, 2):
        captions = [torch.randn(n, dim, generator=generator) for n in (5, 40)[:batch]]
        for latent_size, resolution in (((h, w), "full"), ((h // 2, w // 2), "low")):
            latents = torch.randn(batch, 16, *latent_size, generator=generator)
            grid = (latent_size[0] // 2, latent_size[1] // 2)
            expected = stock_velocity(transformer, latents, 0.7, captions)
            for convention in MIXED_POSITIONS:  # stages 1 and 3 do not depend on it
                adapter = ZImageAdapter(transformer, captions_to_conditioning(captions), mixed_positions=convention)
                ours = adapter.velocity(latent_to_tokens(latents), uniform_positions(adapter, grid, batch, resolution),
                                        0.7)
                assert ours.dtype == torch.float32 and torch.equal(ours, expected), (batch, latent_size, convention)


def test_patch_layout_round_trip_and_the_models_patchify(pipe):
    latents = torch.randn(2, 16, 8, 12)
    tokens = latent_to_tokens(latents)
    model = torch.stack([pipe.transformer._patchify_image(x.unsqueeze(1), 2, 1)[0] for x in latents])
    assert torch.equal(to_patch_layout(tokens), model)
    assert torch.equal(from_patch_layout(to_patch_layout(tokens)), tokens)


def test_rope_factors_are_the_tables_formula():
    # the released models' axes (32/48/48, tables 1536/512/512): the formula alone reproduces every row
    from diffusers.models.transformers.transformer_z_image import RopeEmbedder

    config = models.get("z-image-turbo").transformer
    tables = RopeEmbedder.precompute_freqs_cis(config["axes_dims"], config["axes_lens"], config["rope_theta"])
    for dim, length, table in zip(config["axes_dims"], config["axes_lens"], tables):
        whole = torch.arange(length, dtype=torch.float32)
        assert torch.equal(rope_factors(whole, dim, config["rope_theta"]), table)
        # between rows: e^{i c ω_k} at c + 1/2, against float64 (the float32 angle of c ≈ 1500 is off by ~1e-4)
        half = whole[:-1] + 0.5
        omega = 1.0 / config["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        exact = torch.polar(torch.ones(len(half), dim // 2, dtype=torch.float64), half.double()[:, None] * omega)
        assert torch.allclose(rope_factors(half, dim, config["rope_theta"]).to(torch.complex128), exact, atol=5e-4)


def test_stage2_positions_follow_the_convention(pipe):
    transformer = pipe.transformer
    c = transformer.config
    tables = rope_tables(transformer)
    low = (4, 6)
    layout = MixedLayout.from_selection(torch.tensor([[0, 7]]), low)  # low tokens (0,0) and (1,1) upsampled
    conditioning = captions_to_conditioning([torch.randn(3, c.cap_feat_dim)])

    def factors(coords: torch.Tensor) -> torch.Tensor:
        return torch.cat([rope_factors(coords[:, 0], c.axes_dims[1], c.rope_theta),
                          rope_factors(coords[:, 1], c.axes_dims[2], c.rope_theta)], dim=-1)

    kept_low = low_positions(low, "corner")[layout.kept[0]]
    children = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [2, 2], [2, 3], [3, 2], [3, 3]], dtype=torch.float32)
    for convention, expected in (("full_grid", torch.cat([2 * kept_low, children])),
                                 ("low_grid", torch.cat([kept_low, children / 2]))):
        adapter = ZImageAdapter(transformer, conditioning, mixed_positions=convention)
        prepared = adapter.prepare_positions(layout.mixed_positions("corner"), low, "mixed")
        assert prepared.raster is None and torch.equal(prepared.rope[0], factors(expected)), convention
        # stage 1 is the stock half-resolution grid under both conventions
        stage1 = adapter.prepare_positions(low_positions(low, "corner")[None], low, "low")
        assert stage1.raster == low and torch.equal(stage1.rope[0], factors(grid_positions(low)))
    # full_grid: whole cells, read from the model's own tables; centre: between the children
    centred = ZImageAdapter(transformer, conditioning).prepare_positions(layout.mixed_positions("center"), low, "mixed")
    assert torch.equal(centred.rope[0, :1], factors(torch.tensor([[0.5, 2.5]])))  # kept low-res token (0, 1)
    assert torch.equal(factors(torch.tensor([[3.0, 2.0]])), torch.cat([tables[1][3], tables[2][2]])[None])
    with pytest.raises(ValueError, match=r"mixed_positions must be one of .* got 'centre'"):
        ZImageAdapter(transformer, conditioning, mixed_positions="centre")


def test_mixed_position_measurement_is_exact_where_it_must_be(pipe):
    """The convention measurement (docs/families/zimage.md): with nothing upsampled, "low_grid"'s kept
    tokens are the stock half-resolution forward exactly; with everything upsampled, "full_grid"'s
    children are the stock full-resolution forward up to summation order."""
    from ralu.testing.zimage import mixed_position_errors

    kwargs = dict(low_grid=(4, 4), sigmas=(0.6,), seeds=(0,), caption_tokens=7)
    none = mixed_position_errors(pipe.transformer, up_ratio=0.0, **kwargs)
    assert none["low_grid/corner"]["kept"] == 0.0 and none["full_grid/corner"]["kept"] > 1e-3
    everything = mixed_position_errors(pipe.transformer, up_ratio=1.0, **kwargs)
    assert everything["full_grid/corner"]["children"] < 1e-10 and everything["low_grid/corner"]["children"] > 1e-3


def test_guidance_is_pos_plus_scale_times_difference_and_clamps_norms(pipe):
    """Against separate stock calls of each branch: v = -(pos + s·(pos - neg)), norm clamp per sample."""
    transformer = pipe.transformer
    generator = torch.Generator().manual_seed(1)
    dim = transformer.config.cap_feat_dim
    positive = [torch.randn(n, dim, generator=generator) for n in (6, 33)]
    negative = [torch.randn(n, dim, generator=generator) for n in (3, 4)]
    latents = torch.randn(2, 16, 16, 16, generator=generator)
    pos, neg = (-stock_velocity(transformer, latents, 0.4, caps) for caps in (positive, negative))
    expected = pos + 3.0 * (pos - neg)
    for normalization in (False, 0.5):
        adapter = ZImageAdapter(transformer, captions_to_conditioning(positive),
                                Guidance(captions_to_conditioning(negative), 3.0), cfg_normalization=normalization)
        ours = -adapter.velocity(latent_to_tokens(latents), uniform_positions(adapter, (8, 8), 2, "full"), 0.4)
        target = expected
        if normalization:
            norms, limits = expected.flatten(1).norm(dim=1), 0.5 * pos.flatten(1).norm(dim=1)
            assert bool((norms > limits).all()), "the test needs a clamp to happen"
            target = expected * (limits / norms)[:, None, None]
        # one batched call against separate calls per branch: float32 rounding
        torch.testing.assert_close(ours, target, atol=1e-5, rtol=1e-5)


def test_cfg_truncation_turns_guidance_off_where_one_minus_sigma_exceeds_it(pipe):
    conditioning = captions_to_conditioning([torch.randn(4, pipe.transformer.config.cap_feat_dim)])
    adapter = ZImageAdapter(pipe.transformer, conditioning, Guidance(conditioning, 4.0), cfg_truncation=0.5)
    assert adapter.guidance_scale_at(0.6) == 4.0 and adapter.guidance_scale_at(0.5) == 4.0
    assert adapter.guidance_scale_at(0.49) == 0.0
    assert ZImageAdapter(pipe.transformer, conditioning, Guidance(conditioning, 4.0),
                         cfg_truncation=1.5).guidance_scale_at(0.0) == 4.0  # > 1: never (the stock rule)
    assert ZImageAdapter(pipe.transformer, conditioning).guidance_scale_at(0.9) == 0.0


# --- the pipeline ----------------------------------------------------------------------------------------

def test_from_pretrained_from_pipe_and_the_default_presets(tiny_zimage_path, stock, pipe, base_pipe):
    loaded = load(tiny_zimage_path, RALUZImagePipeline)
    assert isinstance(loaded, RALUZImagePipeline) and pipe.transformer is stock.transformer and pipe.vae is stock.vae
    # the scheduler's shift tells Z-Image-Turbo (3.0) from Z-Image (6.0): as the shipped model specs say
    assert loaded.preset_for_model() == models.get("z-image-turbo").preset == "z-image-turbo-1.6x"
    assert base_pipe.preset_for_model() == models.get("z-image").preset == "z-image-3x"
    out = loaded("a red circle", height=SIZE, width=SIZE, guidance_scale=0.0, generator=gens(0))
    assert isinstance(out.images[0], PIL.Image.Image) and out.images[0].size == (SIZE, SIZE)
    assert out.stage_steps == (3, 2, 3)


GUIDANCE_CASES = [dict(guidance_scale=0.0), dict(guidance_scale=4.0), dict(guidance_scale=4.0, cfg_truncation=0.5),
                  dict(guidance_scale=4.0, cfg_normalization=True),
                  dict(guidance_scale=3.0, cfg_normalization=0.7, cfg_truncation=0.6)]


@pytest.mark.parametrize("size", [(SIZE, SIZE), (96, 160)])
def test_baseline_reproduces_the_stock_pipeline(stock, pipe, size):
    """Baseline(N) against ZImagePipeline(num_inference_steps=N), bit for bit, with every guidance option;
    the same transformer calls (batch sizes: truncated steps run the positive branch alone)."""
    h, w = size
    latents = torch.randn(2, 16, h // 8, w // 8, generator=torch.Generator().manual_seed(0))
    calls = []
    hook = pipe.transformer.t_embedder.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    outputs = {}
    try:
        for i, extra in enumerate(GUIDANCE_CASES):
            # fresh prompt lists: ZImagePipeline writes its chat template into the list it is given
            kwargs = dict(prompt=list(PROMPTS), negative_prompt=list(NEGATIVES), latents=latents.clone(), height=h,
                          width=w, output_type="latent", max_sequence_length=64, **extra)
            calls.clear()
            expected = stock(num_inference_steps=6, **kwargs).images
            stock_calls = list(calls)
            calls.clear()
            ours = pipe(config=Baseline(6), **{**kwargs, "prompt": list(PROMPTS), "negative_prompt": list(NEGATIVES)})
            assert ours.images.shape == (2, 16, h // 8, w // 8) and torch.equal(ours.images, expected), extra
            assert calls == stock_calls, extra
            outputs[i] = ours.images
    finally:
        hook.remove()
    assert not torch.equal(outputs[1], outputs[0]) and not torch.equal(outputs[2], outputs[1])
    assert not torch.equal(outputs[3], outputs[1]), "the norm clamp must act in this test"


def test_baseline_shortcuts_and_decoding_match_the_stock_pipeline(stock, pipe):
    latents = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    kwargs = dict(prompt="a red circle", latents=latents, height=SIZE, width=SIZE, guidance_scale=2.0,
                  max_sequence_length=64)
    expected = stock(num_inference_steps=3, output_type="np", **kwargs).images
    assert np.array_equal(pipe(num_inference_steps=3, output_type="np", **kwargs).images, expected)
    sigmas = [1.0, 0.8, 0.45, 0.2]  # ZImagePipeline's custom σ, shifted by its scheduler
    expected = stock(sigmas=list(sigmas), output_type="latent", **kwargs).images
    assert torch.equal(pipe(sigmas=list(sigmas), output_type="latent", **kwargs).images, expected)
    # images per prompt: each prompt's captions repeated in place ([a, a, b, b]), as the stock pipeline does
    many = dict(kwargs, latents=torch.randn(4, 16, 16, 16, generator=torch.Generator().manual_seed(4)),
                num_images_per_prompt=2, output_type="latent")
    expected = stock(num_inference_steps=2, **dict(many, prompt=list(PROMPTS), negative_prompt=list(NEGATIVES))).images
    ours = pipe(num_inference_steps=2, **dict(many, prompt=list(PROMPTS), negative_prompt=list(NEGATIVES))).images
    assert torch.equal(ours, expected)


def test_turbo_baseline_is_the_8_forward_schedule(pipe):
    # diffusers' num_inference_steps=8 is the official loop's 9-step, 8-forward Turbo schedule (models.md §4.5)
    grid = pipe.resolve_schedule(Baseline(8), 4096).sigmas
    official = (1.0, 0.9545, 0.9, 0.8333, 0.75, 0.6429, 0.5, 0.3, 0.0)
    assert grid == pytest.approx(official, abs=5e-5)
    spec = models.get("z-image-turbo")
    assert spec.resolve(Baseline(8), 1024, 1024).stages[0].sigmas == pytest.approx(grid, abs=1e-6)
    assert pipe.stock_shift(4096) == spec.stock_shift(4096) == 3.0


def test_guided_batch_is_one_call_per_step_and_equals_samples_run_alone(base_pipe):
    embeds, negative = base_pipe.encode_prompt(list(PROMPTS), negative_prompt=list(NEGATIVES), max_sequence_length=64)
    kwargs = dict(height=SIZE, width=SIZE, config=FAST, guidance_scale=4.0, output_type="latent")
    calls = []
    hook = base_pipe.transformer.t_embedder.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    try:
        batch = base_pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, generator=gens(10, 11), **kwargs)
    finally:
        hook.remove()
    assert calls == [4] * 5, "one call per step, [positive, negative] x 2 samples"
    assert not torch.equal(batch.regions[0], batch.regions[1]), "the test needs samples that choose different regions"
    for b, seed in enumerate((10, 11)):
        alone = base_pipe(prompt_embeds=embeds[b:b + 1], negative_prompt_embeds=negative[b:b + 1], generator=gens(seed),
                          **kwargs)
        assert torch.equal(alone.regions[0], batch.regions[b])
        # batch-size-dependent matmul blocking and key masks: float32 rounding over 5 steps
        torch.testing.assert_close(alone.images[0], batch.images[b], atol=1e-5, rtol=0)


def test_shapes_types_and_stage_report(pipe):
    prompts = ["a red circle", "a blue star"]
    out = pipe(prompts, height=SIZE, width=192, num_images_per_prompt=2, generator=gens(0, 1, 2, 3),
               output_type="np", config=FAST, guidance_scale=0.0, max_sequence_length=64)
    assert out.images.shape == (4, SIZE, 192, 3) and np.isfinite(out.images).all()
    assert prompts == ["a red circle", "a blue star"], "the caller's prompt list must not be rewritten"
    low = 4 * 6
    k = int(0.3 * low)
    assert out.stage_tokens == (low, low - k + 4 * k, 4 * low) and out.stage_steps == (1, 2, 2)
    assert out.regions.shape == (4, 4, 6) and out.regions.flatten(1).sum(1).tolist() == [k] * 4
    kwargs = dict(height=SIZE, width=SIZE, generator=gens(0), config=FAST, max_sequence_length=64)
    (images,) = pipe("a red circle", output_type="pt", return_dict=False, **kwargs)
    assert images.shape == (1, 3, SIZE, SIZE)
    latent = pipe("a red circle", output_type="latent", guidance_scale=0.0, **kwargs).images
    assert latent.shape == (1, 16, 16, 16) and latent.dtype == torch.float32  # ZImagePipeline's own layout


def test_ralu_differs_with_guidance_and_is_reproducible(base_pipe):
    kwargs = dict(height=SIZE, width=SIZE, config=FAST, output_type="latent", max_sequence_length=64)
    plain = base_pipe("a red circle", guidance_scale=0.0, generator=gens(5), **kwargs).images
    guided = base_pipe("a red circle", negative_prompt="a dog", guidance_scale=4.0, generator=gens(5), **kwargs).images
    again = base_pipe("a red circle", negative_prompt="a dog", guidance_scale=4.0, generator=gens(5), **kwargs).images
    assert torch.equal(guided, again) and not torch.allclose(plain, guided)


def test_callback_on_step_end_follows_diffusers_convention(pipe):
    seen = []

    def callback(p, step, timestep, tensors):
        assert p is pipe and isinstance(tensors["prompt_embeds"], list) and len(tensors["prompt_embeds"]) == 1
        seen.append((step, float(timestep), tensors["latents"].shape[1]))
        return {"latents": tensors["latents"]}

    pipe("a red circle", height=SIZE, width=SIZE, generator=gens(0), config="z-image-turbo-1.6x", guidance_scale=0.0,
         max_sequence_length=64, callback_on_step_end=callback,
         callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], output_type="latent")
    assert [s for s, _, _ in seen] == list(range(8))
    assert seen[0][1] == pytest.approx(1000.0) and all(0 < t <= 1000 for _, t, _ in seen)
    k = int(0.3 * 16)
    assert [n for _, _, n in seen] == [16] * 3 + [16 - k + 4 * k] * 2 + [64] * 3


def test_callback_can_replace_the_prompt_embeddings(pipe):
    other, _ = pipe.encode_prompt(["a yellow star"], do_classifier_free_guidance=False, max_sequence_length=64)
    kwargs = dict(height=SIZE, width=SIZE, config=FAST, guidance_scale=0.0, output_type="latent",
                  max_sequence_length=64)
    swapped = pipe("a red circle", generator=gens(0), callback_on_step_end=lambda p, i, t, d: {"prompt_embeds": other},
                   **kwargs).images
    plain = pipe("a red circle", generator=gens(0), **kwargs).images
    assert not torch.allclose(swapped, plain)


def test_lora_scale_applies_through_the_token_forward(tiny_zimage_path):
    from peft import LoraConfig

    pipe = load(tiny_zimage_path, RALUZImagePipeline)
    kwargs = dict(prompt="a red circle", height=SIZE, width=SIZE, output_type="latent", config=FAST,
                  guidance_scale=0.0, max_sequence_length=64)
    before = pipe(generator=gens(0), **kwargs).images
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                            init_lora_weights=False))
    with_lora = pipe(generator=gens(0), **kwargs).images
    off = pipe(generator=gens(0), joint_attention_kwargs={"scale": 0.0}, **kwargs).images
    assert not torch.allclose(before, with_lora, atol=1e-3)
    torch.testing.assert_close(before, off, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(height=250), ValueError, r"height must be a positive multiple of 32 px .* got 250"),
    (dict(width=272), ValueError, r"width must be a positive multiple of 32 px .* got 272"),
    (dict(height=8224), ValueError, r"at most 8192 px .* RoPE tables have 512 rows"),
    (dict(generator=[torch.Generator()] * 3), ValueError, r"generator is a list of 3 .* batch size .* is 1"),
    (dict(latents=torch.zeros(1, 16, 32, 32)), ValueError, r"latents must have shape \(1, 16, 16, 16\)"),
    (dict(latents=torch.zeros(1, 64, 64)), ValueError, r"latents must have shape \(1, 16, 16, 16\)"),
    (dict(guidance_scale=float("nan")), ValueError, r"guidance_scale must be a finite number, got nan"),
    (dict(cfg_truncation=float("inf")), ValueError, r"cfg_truncation must be a finite number"),
    (dict(cfg_normalization=-1.0), ValueError, r"cfg_normalization must be a finite number >= 0"),
    (dict(prompt=["a", "b"], negative_prompt=["c"] * 3), ValueError, r"negative_prompt has 3 entries for 2 prompts"),
    (dict(prompt=None), ValueError, r"exactly one of prompt and prompt_embeds, got neither"),
    (dict(prompt_embeds=[torch.zeros(3, 24)]), ValueError, r"exactly one of prompt and prompt_embeds, got both"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 3, 24)), ValueError, r"prompt_embeds must be a list"),
    (dict(prompt=None, prompt_embeds=[torch.zeros(3, 24)]), ValueError, r"negative_prompt_embeds must be given"),
    (dict(prompt=None, prompt_embeds=[torch.zeros(3, 24)], negative_prompt_embeds=[torch.zeros(3, 24)] * 2),
     ValueError, r"negative_prompt_embeds must be a list of 1 caption tensors"),
    (dict(prompt=None, prompt_embeds=[torch.zeros(0, 24)], guidance_scale=0.0), ValueError, r"entry 0 is \(0, 24\)"),
    (dict(sigmas=[1.0, 0.5], config="z-image-7x"), ValueError, r"either sigmas .* or config"),
    (dict(sigmas=[1.0, 0.5], num_inference_steps=3), ValueError, r"num_inference_steps \(3\) must equal len\(sigmas\)"),
    (dict(callback_on_step_end_tensor_inputs=["noise_pred"]), ValueError, r"callback_on_step_end_tensor_inputs must"),
    (dict(max_sequence_length=0), ValueError, r"max_sequence_length must be an integer >= 1"),
    (dict(output_type="jpg"), ValueError, r"output_type must be one of"),
    (dict(config=42), TypeError, r"config must be a RALUConfig, a Baseline or a preset name, got int"),
    (dict(config="z-image-9x"), ValueError, r"preset must be one of"),
    (dict(config="z-image-7x", num_inference_steps=20), ValueError, r"either num_inference_steps .* or config"),
    (dict(num_images_per_prompt=0), ValueError, r"num_images_per_prompt must be an integer >= 1"),
])
def test_bad_input_fails_early_with_a_clear_message(pipe, kwargs, error, match):
    called = []
    transformer = pipe.transformer
    modules = (transformer, transformer.t_embedder, transformer.all_x_embedder["2-1"], transformer.layers[0])
    hooks = [module.register_forward_pre_hook(lambda *a: called.append(1)) for module in modules]
    try:
        with pytest.raises(error, match=match):
            pipe(**{"prompt": "a red circle", "height": SIZE, "width": SIZE, **kwargs})
    finally:
        for hook in hooks:
            hook.remove()
    assert not called, "the error must come before any transformer call"


def test_baseline_size_only_needs_whole_tokens(pipe):
    out = pipe("a red circle", height=112, width=SIZE, config=Baseline(2), output_type="latent", generator=gens(0),
               guidance_scale=0.0, max_sequence_length=64)
    assert out.images.shape == (1, 16, 14, 16)
    with pytest.raises(ValueError, match=r"multiple of 32"):
        pipe("a red circle", height=112, width=SIZE, config="z-image-7x")


@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_bfloat16_runs_and_stays_stock_exact_on_a_uniform_grid(tiny_zimage_path):
    stock = ZImagePipeline.from_pretrained(tiny_zimage_path, dtype=torch.bfloat16)
    stock.set_progress_bar_config(disable=True)
    pipe = RALUZImagePipeline.from_pipe(stock, dtype=torch.bfloat16)  # from_pipe casts to float32 by default
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.dtype == pipe.transformer.dtype == torch.bfloat16
    # the stock decode casts to the VAE's bfloat16 before unscaling: the same images
    kwargs = dict(prompt="a red circle", height=SIZE, width=SIZE, guidance_scale=0.0, max_sequence_length=64,
                  output_type="np", latents=torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(2)))
    assert np.array_equal(pipe(num_inference_steps=2, **kwargs).images, stock(num_inference_steps=2, **kwargs).images)
    out = pipe("a red circle", height=SIZE, width=SIZE, generator=gens(0), config=FAST, output_type="latent",
               guidance_scale=0.0, max_sequence_length=64)
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()  # ZImagePipeline's float32 latents
    transformer = pipe.transformer
    captions = [torch.randn(9, transformer.config.cap_feat_dim).to(torch.bfloat16)]
    latents = torch.randn(1, 16, 16, 16)
    adapter = ZImageAdapter(transformer, captions_to_conditioning(captions))
    ours = adapter.velocity(latent_to_tokens(latents), uniform_positions(adapter, (8, 8), 1, "full"), 0.3)
    assert torch.equal(ours, stock_velocity(transformer, latents, 0.3, captions))


def test_model_cpu_offload_hook_runs_before_the_token_forward(tiny_zimage_path):
    pytest.importorskip("accelerate")
    pipe = load(tiny_zimage_path, RALUZImagePipeline)
    kwargs = dict(height=SIZE, width=SIZE, config=FAST, guidance_scale=0.0, max_sequence_length=64,
                  output_type="latent")
    expected = pipe("a red circle", generator=gens(0), **kwargs).images
    pipe.enable_model_cpu_offload(device="cpu")
    hook = pipe.transformer._hf_hook
    calls = []
    original = hook.pre_forward
    hook.pre_forward = lambda module, *args, **kw: (calls.append(module), original(module, *args, **kw))[1]
    out = pipe("a red circle", generator=gens(0), **kwargs).images
    assert len(calls) == sum(FAST.steps) and all(module is pipe.transformer for module in calls)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_cli_generate_picks_the_zimage_pipeline_and_its_default_preset(tiny_zimage_path, tmp_path, capsys):
    from ralu.cli import main

    output = tmp_path / "zimage.png"
    argv = ["generate", str(tiny_zimage_path), "--prompt", "a red circle", "--guidance", "0", "--height", "64",
            "--width", "96", "--device", "cpu", "--output", str(output)]
    assert main(argv) == 0
    with PIL.Image.open(output) as image:
        assert image.size == (96, 64)
    out = capsys.readouterr().out
    assert "RALUZImagePipeline's default preset" in out
    assert [line.split()[2] for line in out.splitlines() if line.startswith("  stage ")] == ["3", "2", "3"]


# --- caches --------------------------------------------------------------------------------------------------

LAYER_PATTERNS = [r"layers\.\d+\.attention", r"layers\.\d+\.feed_forward"]


def _taylorseer(transformer):
    from diffusers.hooks import TaylorSeerCacheConfig, apply_taylorseer_cache

    apply_taylorseer_cache(transformer, TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2,
                                                               cache_identifiers=LAYER_PATTERNS,
                                                               taylor_factors_dtype=torch.float32))


def _pyramid_attention_broadcast(pipe):
    from diffusers.hooks import (
        PyramidAttentionBroadcastConfig,
        apply_pyramid_attention_broadcast,
    )

    apply_pyramid_attention_broadcast(pipe.transformer, PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
        spatial_attention_block_identifiers=(r"layers\.\d+\.attention",),
        current_timestep_callback=lambda: pipe.current_timestep))


@pytest.mark.parametrize("cache", ["taylorseer", "pyramid_attention_broadcast"])
@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_diffusers_caches_on_the_block_stack_run_across_stages(tiny_zimage_base_path, cache):
    """Hooks on the attention / feed-forward modules of ``layers`` run under RALU: their state is reset at
    each stage (the token count changes), they skip work, and a second generation equals the first."""
    pipe = load(tiny_zimage_base_path, RALUZImagePipeline)
    calls = []
    pipe.transformer.layers[1].attention.to_q.register_forward_hook(lambda *a: calls.append(1))
    kwargs = dict(prompt=PROMPTS, height=SIZE, width=SIZE, config="z-image-3x", guidance_scale=4.0,
                  output_type="latent", max_sequence_length=64)
    plain = pipe(generator=gens(0, 1), **kwargs).images
    assert len(calls) == 26
    if cache == "taylorseer":
        _taylorseer(pipe.transformer)
    else:
        _pyramid_attention_broadcast(pipe)
    calls.clear()
    first = pipe(generator=gens(0, 1), **kwargs).images
    skipped = 26 - len(calls)
    second = pipe(generator=gens(0, 1), **kwargs).images
    assert skipped > 0 and torch.isfinite(first).all() and torch.equal(first, second)
    assert not torch.equal(first, plain)


def test_residual_caches_cannot_hook_zimage_blocks(pipe):
    """FirstBlockCache and MagCache read a ``hidden_states`` argument that ZImageTransformerBlock (``x``) does
    not have, and ralu's TeaCache reads ``norm1``/``temb``: they fail on the stock forward too (docs)."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    from ralu.adapters.common import cache_context
    from ralu.caching import apply_teacache

    transformer = ZImageTransformer2DModel(**TINY_ZIMAGE_TRANSFORMER).eval()
    apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=0.1))
    with torch.no_grad(), cache_context(transformer, "cond"), pytest.raises(ValueError, match="hidden_states"):
        transformer([torch.randn(16, 1, 8, 8)], torch.tensor([0.5]), [torch.randn(5, 24)])
    transformer = ZImageTransformer2DModel(**TINY_ZIMAGE_TRANSFORMER).eval()
    apply_teacache(transformer)
    with torch.no_grad(), cache_context(transformer, "cond"), pytest.raises(KeyError, match="hidden_states"):
        transformer([torch.randn(16, 1, 8, 8)], torch.tensor([0.5]), [torch.randn(5, 24)])


# --- presets, model specs and FLOPs ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_ntdm_at_the_stock_shift_and_named_by_their_speedup(name):
    spec = models.get(PRESETS[name])
    preset = RALUConfig.preset(name)
    base = spec.stock_shift(spec.image_tokens(1024, 1024))
    assert preset.solved_shift == base == {"z-image-turbo": 3.0, "z-image": 6.0}[spec.name]
    # The objective is flat, and L-BFGS-B's end point moves with the CPU's float kernels (one host
    # solves z-image-3x's last shift to 6.109, another to 6.111): the preset must be as good as a fresh
    # solve here, within 3% of the objective, and near its point.
    shifts, ratio = solve_ntdm(preset.steps, preset.ends, base)
    fresh = ntdm_objective(shifts, ratio, preset.steps, preset.ends, base)
    assert ntdm_objective(preset.shifts, preset.noise_ratio, preset.steps, preset.ends, base) <= 1.03 * fresh
    assert preset.shifts == pytest.approx(shifts, abs=0.05) and preset.noise_ratio == pytest.approx(ratio, rel=0.02)
    assert name in spec.presets and models.for_preset(name) is spec
    # end-to-end FLOPs at 1024² against the stock schedule (CFG's two branches for the base model)
    speedup = spec.cost(Baseline(spec.steps), 1024, 1024) / spec.cost(preset, 1024, 1024)
    label = name.rsplit("-", 1)[1].removesuffix("x")
    places = len(label.partition(".")[2])
    assert math.floor(speedup * 10**places) / 10**places == float(label), speedup


def test_turbo_preset_spends_the_8_step_budget_and_the_base_ones_are_mild_and_strong():
    turbo, mild, strong = (RALUConfig.preset(n) for n in ("z-image-turbo-1.6x", "z-image-3x", "z-image-7x"))
    assert sum(turbo.steps) == models.get("z-image-turbo").steps == 8
    assert sum(mild.steps) > sum(strong.steps) and models.get("z-image").steps == 50


def counted_flops(model, grid: tuple[int, int], text: int, device: str = "cpu") -> int:
    """FlopCounterMode's total for one stock forward (batch 1, MATH attention: the two bmm are counted)."""
    c = model.config
    with torch.device(device):
        x = [torch.randn(c.in_channels, 1, 2 * grid[0], 2 * grid[1])]
        caption, t = [torch.randn(text, c.cap_feat_dim)], torch.full((1,), 0.5)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x, t, caption)
    return counter.get_total_flops()


@pytest.mark.parametrize("grid, text", [((4, 4), 5), ((8, 6), 40), ((3, 5), 32)])
def test_flops_match_the_flop_counter_on_tiny_models(grid, text):
    # the same operations counted in integers on both sides; rel 1e-12 absorbs the float conversion
    config = dict(TINY_ZIMAGE_TRANSFORMER, n_layers=3, n_refiner_layers=2)
    model = ZImageTransformer2DModel(**config).eval()
    assert zimage_call_flops(config, grid[0] * grid[1], text) == pytest.approx(counted_flops(model, grid, text),
                                                                              rel=1e-12)


def test_flops_of_a_mixed_stage_call_match_the_flop_counter(pipe):
    """The token forward pads a stage-2 sequence (here 19 tokens) as the stock forward pads any: same count."""
    transformer = pipe.transformer
    layout = MixedLayout.from_selection(torch.tensor([[1, 6]]), (4, 4))
    adapter = ZImageAdapter(transformer, captions_to_conditioning([torch.randn(7, transformer.config.cap_feat_dim)]))
    positions = adapter.prepare_positions(layout.mixed_positions("corner"), (4, 4), "mixed")
    x = torch.randn(1, 14 + 8, 64)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        adapter.velocity(x, positions, 0.5)
    assert counter.get_total_flops() == zimage_call_flops(transformer.config, 22, 7)


@pytest.mark.parametrize("grid, text", [((64, 64), 512), ((48, 80), 77)])
@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_flops_match_the_flop_counter_on_the_released_model(grid, text):
    """Z-Image(-Turbo)'s own config on the meta device (shapes only): 6.15 B parameters, counted exactly."""
    config = dict(models.get("z-image-turbo").transformer)
    assert config == dict(models.get("z-image").transformer)
    with torch.device("meta"):
        model = ZImageTransformer2DModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(6.15e9, rel=1e-3)
    assert zimage_call_flops(config, grid[0] * grid[1], text) == pytest.approx(
        counted_flops(model, grid, text, "meta"), rel=1e-12)


def test_model_specs_hold_the_released_configs_and_the_flux_vae_cost():
    from ralu.models import vae_decode_coefficients

    turbo, base = models.get("z-image-turbo"), models.get("z-image")
    assert (turbo.family, turbo.pipeline, turbo.hub, turbo.steps, turbo.branches) == (
        "zimage", "ZImagePipeline", "Tongyi-MAI/Z-Image-Turbo", 8, 1)
    assert (base.family, base.pipeline, base.hub, base.steps, base.branches) == (
        "zimage", "ZImagePipeline", "Tongyi-MAI/Z-Image", 50, 2)
    assert turbo.scheduler["shift"] == 3.0 and base.scheduler["shift"] == 6.0
    assert not turbo.scheduler["use_dynamic_shifting"] and not base.scheduler["use_dynamic_shifting"]
    assert turbo.transformer["axes_lens"] == [1536, 512, 512] and turbo.transformer["rope_theta"] == 256.0
    import json
    from importlib import resources

    vae = json.loads(resources.files("ralu").joinpath("data", "models", "z-image.json").read_text())["vae"]["config"]
    assert (vae["scaling_factor"], vae["shift_factor"]) == (0.3611, 0.1159)
    assert turbo.decode_flops == base.decode_flops == vae_decode_coefficients(vae)

