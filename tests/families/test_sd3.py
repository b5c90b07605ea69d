"""RALUStableDiffusion3Pipeline and the SD3 adapter on tiny real SD3 / SD3.5 transformers, VAE and text stacks."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from ralu import Baseline, RALUConfig, RALUStableDiffusion3Pipeline
from ralu.adapters.base import Conditioning
from ralu.adapters.sd3 import SD3Adapter, crop_origin, table_coordinates, table_embedding
from ralu.layout import MixedLayout, grid_positions, low_positions
from ralu.testing import TINY_SD35_BLOCKS, save_tiny_sd3
from tests.families import gens, load, quiet

SIZE = 128  # 16x16 latent, 8x8 full-res tokens, 4x4 low-res; the tiny table has 24x24 cells
PROMPTS = ["a red circle left of a blue square", "a yellow star"]
# sd3-3x with fewer steps, for tests of properties that do not depend on the step count
FAST = RALUConfig.preset("sd3-3x", steps=(1, 2, 2))


def pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


@pytest.fixture(scope="module")
def sd3_path(tmp_path_factory):
    return save_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"), seed=0)


@pytest.fixture(scope="module")
def sd35_path(tmp_path_factory):
    return save_tiny_sd3(tmp_path_factory.mktemp("tiny-sd35"), seed=1, **TINY_SD35_BLOCKS)


@pytest.fixture(scope="module")
def stock_pipe(sd3_path):
    return load(sd3_path, StableDiffusion3Pipeline)


@pytest.fixture(scope="module")
def stock_pipe35(sd35_path):
    return load(sd35_path, StableDiffusion3Pipeline)


@pytest.fixture(scope="module")
def pipe(stock_pipe):
    return quiet(RALUStableDiffusion3Pipeline.from_pipe(stock_pipe))


@pytest.fixture(scope="module")
def embeds(pipe):
    """(embeds, negative, pooled, negative pooled) for the two PROMPTS, max 16 T5 tokens."""
    return pipe.encode_prompt(PROMPTS, None, None, max_sequence_length=16)


def test_from_pretrained_and_from_pipe(sd3_path, stock_pipe, pipe):
    loaded = load(sd3_path, RALUStableDiffusion3Pipeline)
    assert isinstance(loaded, RALUStableDiffusion3Pipeline) and loaded.default_preset == "sd3-2x"
    assert pipe.transformer is stock_pipe.transformer and pipe.vae is stock_pipe.vae
    out = loaded("a red circle", negative_prompt="a blue square", height=SIZE, width=SIZE, generator=gens(0),
                 config=FAST, max_sequence_length=16)
    assert isinstance(out.images[0], PIL.Image.Image) and out.images[0].size == (SIZE, SIZE)


@pytest.mark.parametrize("variant", ["sd3", "sd35"])
@pytest.mark.parametrize("full_latent", [(32, 32), (32, 48), (48, 16)])
def test_adapter_equals_stock_forward_on_uniform_grids(variant, full_latent, stock_pipe, stock_pipe35):
    """Full grid (stage 3, baseline) and half grid (stage 1) against SD3Transformer2DModel.forward, bit for bit.

    Batch 1 and 2: the stock stride-2 convolution and a per-token one round differently for some
    shapes (batch 1 on CPU), which the raster path avoids.
    """
    transformer = (stock_pipe if variant == "sd3" else stock_pipe35).transformer
    h, w = full_latent
    full_grid = (h // 2, w // 2)
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 2):
        text, pooled = torch.randn(batch, 7, 32, generator=generator), torch.randn(batch, 32, generator=generator)
        for latent_size, grid in (((h, w), full_grid), ((h // 2, w // 2), (h // 4, w // 4))):
            latents = torch.randn(batch, 16, *latent_size, generator=generator)
            stock = transformer(hidden_states=latents, encoder_hidden_states=text, pooled_projections=pooled,
                                timestep=torch.full([batch], 700.0), return_dict=False)[0]
            for convention in ("low_grid", "stock_then_full"):  # the two whose stage 1 is the stock half-res forward
                adapter = SD3Adapter(transformer, Conditioning(text, pooled), full_grid, table_positions=convention)
                positions = grid_positions(grid).expand(batch, -1, -1)
                ours = adapter.velocity(pack(latents), adapter.prepare_positions(positions, grid), 0.7)
                assert torch.equal(ours, pack(stock)), (variant, batch, latent_size, convention)


def test_table_embedding_reads_the_checkpoint_table_and_the_formula_between_cells(stock_pipe35):
    transformer = stock_pipe35.transformer
    patch_embed = transformer.pos_embed
    size = patch_embed.pos_embed_max_size
    cells = grid_positions((size, size))
    table = patch_embed.pos_embed[0].clone()
    # off-cell coordinates evaluate the sin-cos formula that built the table: continuous through its cells
    near = table_embedding(patch_embed, cells + 1e-4)
    assert torch.allclose(near, table, atol=1e-3) and not torch.equal(near, table)
    # whole cells read the stored table, so a uniform grid stays stock-exact for a checkpoint whose
    # stored table differs from the formula
    patch_embed.pos_embed.add_(torch.randn_like(patch_embed.pos_embed))
    try:
        assert torch.equal(table_embedding(patch_embed, cells), patch_embed.pos_embed[0])
        latents, text, pooled = torch.randn(1, 16, 32, 32), torch.randn(1, 7, 32), torch.randn(1, 32)
        stock = transformer(hidden_states=latents, encoder_hidden_states=text, pooled_projections=pooled,
                            timestep=torch.full([1], 500.0), return_dict=False)[0]
        adapter = SD3Adapter(transformer, Conditioning(text, pooled), (16, 16))
        positions = adapter.prepare_positions(grid_positions((16, 16))[None], (16, 16))
        assert torch.equal(adapter.velocity(pack(latents), positions, 0.5), pack(stock))
    finally:
        patch_embed.pos_embed.copy_(table[None])


def test_position_conventions_map_onto_the_table():
    size, full, low = 24, (8, 12), (4, 6)
    layout = MixedLayout.from_selection(torch.tensor([[0, 7]]), low)  # low tokens (0,0) and (1,1) upsampled
    stage1 = low_positions(low, "corner")[None]
    stage2 = layout.mixed_positions("corner")
    stage3 = grid_positions(full)[None]
    low_origin, full_origin = torch.tensor(crop_origin(size, low)), torch.tensor(crop_origin(size, full))
    assert crop_origin(size, low) == (10, 9) and crop_origin(size, full) == (8, 6)

    def coords(positions, grid, convention):
        mixed = positions.shape[1] != grid[0] * grid[1]
        return table_coordinates(positions, grid, full, size, convention, mixed=mixed)[0]

    for convention in ("low_grid", "full_grid", "stock_then_full"):  # stage 3 is the stock full-res crop
        assert torch.equal(coords(stage3, full, convention), stage3[0] + full_origin)
    # low_grid: stages 1-2 in the stock half-res crop, children at half cells
    assert torch.equal(coords(stage1, low, "low_grid"), stage1[0] + low_origin)
    children = coords(stage2, low, "low_grid")[-8:]
    assert children[:4].tolist() == [[10, 9], [10, 9.5], [10.5, 9], [10.5, 9.5]]
    # full_grid: spatially aligned; children sit on the cells their tokens get in stage 3
    assert torch.equal(coords(stage1, low, "full_grid"), 2 * stage1[0] + full_origin)
    children = coords(stage2, low, "full_grid")[-8:]
    assert children.tolist() == [[8, 6], [8, 7], [9, 6], [9, 7], [10, 8], [10, 9], [11, 8], [11, 9]]
    centred = table_coordinates(low_positions(low, "center")[None], low, full, size, "full_grid")[0]
    assert torch.equal(centred, 2 * stage1[0] + full_origin + 0.5)  # the centre of the four children
    # stock_then_full: stage 1 as low_grid, stage 2 as full_grid
    assert torch.equal(coords(stage1, low, "stock_then_full"), coords(stage1, low, "low_grid"))
    assert torch.equal(coords(stage2, low, "stock_then_full"), coords(stage2, low, "full_grid"))
    # the stage decides, not the token count: a stage-2 sequence with nothing upsampled yet
    same_count = table_coordinates(stage1, low, full, size, "stock_then_full", mixed=True)[0]
    assert torch.equal(same_count, coords(stage1, low, "full_grid"))
    with pytest.raises(ValueError, match=r"table_positions must be one of"):
        table_coordinates(stage1, low, full, size, "centre_crop")
    with pytest.raises(ValueError, match=r"grid must be the full token grid \(8, 12\) or the low grid"):
        table_coordinates(stage1, (3, 6), full, size, "low_grid")
    with pytest.raises(ValueError, match=r"table_positions must be one of .* got 'aligned'"):
        RALUConfig.preset("sd3-3x", table_positions="aligned")


@pytest.mark.parametrize("variant", ["sd3", "sd35"])
def test_baseline_path_reproduces_stock_pipeline_with_guidance(variant, stock_pipe, stock_pipe35, pipe):
    if variant == "sd35":
        stock_pipe = stock_pipe35
        pipe = RALUStableDiffusion3Pipeline.from_pipe(stock_pipe)
        pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt=PROMPTS, negative_prompt="a green triangle", latents=latents, height=SIZE, width=SIZE,
                  guidance_scale=5.0, max_sequence_length=16, output_type="latent")
    stock = stock_pipe(num_inference_steps=4, **kwargs).images
    ours = pipe(config=Baseline(4), **kwargs).images
    # same σ grid (the scheduler's own), same model calls on the same [uncond, cond] batch, same float32
    # Euler update: bit-identical
    assert ours.shape == (2, 16, 16, 16) and torch.equal(ours, stock)
    if variant == "sd35":
        return  # the decode is the same code for both
    decoded = pipe(num_inference_steps=4, **{**kwargs, "output_type": "np"}).images
    stock_decoded = stock_pipe(num_inference_steps=4, **{**kwargs, "output_type": "np"}).images
    assert np.array_equal(decoded, stock_decoded)


@pytest.mark.parametrize("convention", ["low_grid", "stock_then_full"])  # the reference's, and the default
def test_guided_batch_is_one_call_per_step_and_equals_samples_run_alone(pipe, embeds, convention):
    prompt, negative, pooled, negative_pooled = embeds
    config = FAST.replace(table_positions=convention)
    kwargs = dict(height=SIZE, width=SIZE, config=config, guidance_scale=5.0, output_type="latent")
    calls = []
    hook = pipe.transformer.time_text_embed.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    try:
        batch = pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
                     negative_pooled_prompt_embeds=negative_pooled, generator=gens(10, 11), **kwargs)
    finally:
        hook.remove()
    assert calls == [4] * 5, "one call per step, [uncond, cond] x 2 samples"
    assert not torch.equal(batch.regions[0], batch.regions[1]), "the test needs samples that choose different regions"
    for b, seed in enumerate((10, 11)):
        alone = pipe(prompt_embeds=prompt[b:b + 1], negative_prompt_embeds=negative[b:b + 1],
                     pooled_prompt_embeds=pooled[b:b + 1], negative_pooled_prompt_embeds=negative_pooled[b:b + 1],
                     generator=gens(seed), **kwargs)
        assert torch.equal(alone.regions[0], batch.regions[b])
        # batch-size-dependent matmul blocking: float32 rounding over 5 steps
        assert torch.allclose(alone.images[0], batch.images[b], atol=1e-5, rtol=0)


def test_conventions_differ_only_where_they_should(pipe):
    kwargs = dict(prompt="a red circle", height=SIZE, width=SIZE, output_type="latent", max_sequence_length=16)
    runs = {c: pipe(config=FAST.replace(table_positions=c), generator=gens(3), **kwargs) for c in
            ("low_grid", "full_grid", "stock_then_full")}
    # low_grid and stock_then_full share stage 1 (the stock half-res forward), hence the regions
    assert torch.equal(runs["low_grid"].regions, runs["stock_then_full"].regions)
    images = [r.images for r in runs.values()]
    assert not torch.allclose(images[0], images[1]) and not torch.allclose(images[0], images[2])


def test_shapes_types_and_stage_report(pipe):
    out = pipe(["a red circle", "a blue star"], height=SIZE, width=192, num_images_per_prompt=2,
               generator=gens(0, 1, 2, 3), output_type="np", config=FAST, max_sequence_length=16)
    assert out.images.shape == (4, SIZE, 192, 3) and np.isfinite(out.images).all()
    low = 4 * 6
    k = int(0.2 * low)
    assert out.stage_tokens == (low, low - k + 4 * k, 4 * low) and out.stage_steps == (1, 2, 2)
    assert out.regions.shape == (4, 4, 6) and out.regions.flatten(1).sum(1).tolist() == [k] * 4
    kwargs = dict(height=SIZE, width=SIZE, generator=gens(0), config=FAST, max_sequence_length=16)
    (images,) = pipe("a red circle", output_type="pt", return_dict=False, **kwargs)
    assert images.shape == (1, 3, SIZE, SIZE)
    latent = pipe("a red circle", output_type="latent", guidance_scale=1.0, **kwargs).images
    assert latent.shape == (1, 16, 16, 16)  # SD3's own latent layout


def test_bfloat16_runs_and_stays_stock_exact_on_a_uniform_grid(sd35_path):
    pipe = RALUStableDiffusion3Pipeline.from_pretrained(sd35_path, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", height=SIZE, width=SIZE, generator=gens(0), config=FAST, output_type="latent",
               max_sequence_length=16)
    assert out.images.dtype == torch.bfloat16 and torch.isfinite(out.images.float()).all()
    transformer = pipe.transformer
    latents, text, pooled = (torch.randn(*shape).to(torch.bfloat16) for shape in ((1, 16, 16, 16), (1, 7, 32), (1, 32)))
    stock = transformer(hidden_states=latents, encoder_hidden_states=text, pooled_projections=pooled,
                        timestep=torch.full([1], 300.0), return_dict=False)[0]
    adapter = SD3Adapter(transformer, Conditioning(text, pooled), (8, 8))
    ours = adapter.velocity(pack(latents), adapter.prepare_positions(grid_positions((8, 8))[None], (8, 8)), 0.3)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, pack(stock))


def test_callback_on_step_end_follows_diffusers_convention(pipe):
    seen = []

    def callback(p, step, timestep, tensors):
        assert p is pipe and tensors["prompt_embeds"].shape[0] == 2  # [negative, positive]
        seen.append((step, float(timestep), tensors["latents"].shape[1]))
        return {"latents": tensors["latents"]}

    pipe("a red circle", height=SIZE, width=SIZE, generator=gens(0), config="sd3-3x", max_sequence_length=16,
         callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"],
         output_type="latent")
    assert [s for s, _, _ in seen] == list(range(12))
    assert seen[0][1] == pytest.approx(1000.0) and all(0 < t <= 1000 for _, t, _ in seen)
    k = int(0.2 * 16)
    assert [n for _, _, n in seen] == [16] * 3 + [16 - k + 4 * k] * 3 + [64] * 6


@pytest.mark.slow  # over half a second: in make test, not make test-fast
def test_lora_scale_applies_through_the_token_forward(sd3_path):
    from peft import LoraConfig

    pipe = load(sd3_path, RALUStableDiffusion3Pipeline)
    kwargs = dict(prompt="a red circle", height=SIZE, width=SIZE, output_type="latent", config=FAST,
                  max_sequence_length=16)
    before = pipe(generator=gens(0), **kwargs).images
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                            init_lora_weights=False))
    with_lora = pipe(generator=gens(0), **kwargs).images
    off = pipe(generator=gens(0), joint_attention_kwargs={"scale": 0.0}, **kwargs).images
    assert not torch.allclose(before, with_lora, atol=1e-3)
    assert torch.allclose(before, off, atol=1e-6)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(height=250), ValueError, r"height must be a positive multiple of 32 px .* got 250"),
    (dict(width=272), ValueError, r"width must be a positive multiple of 32 px .* got 272"),
    (dict(height=416), ValueError, r"at most 384 px .* position table has 24 cells"),
    (dict(skip_guidance_layers=[1]), ValueError, r"skip_guidance_layers: .*not supported with RALU"),
    (dict(skip_layer_guidance_scale=2.8), ValueError, r"skip_layer_guidance_scale: .*not supported with RALU"),
    (dict(ip_adapter_image_embeds=[torch.zeros(2, 1, 8)]), ValueError, r"ip_adapter_image_embeds: .*not supported"),
    (dict(joint_attention_kwargs={"ip_adapter_image_embeds": 0}), ValueError, r"IP-Adapter is not supported"),
    (dict(generator=[torch.Generator()] * 3), ValueError, r"generator is a list of 3 .* batch size .* is 1"),
    (dict(latents=torch.zeros(1, 16, 32, 32)), ValueError, r"latents must have shape \(1, 16, 16, 16\)"),
    (dict(latents=torch.zeros(1, 64, 64)), ValueError, r"latents must have shape \(1, 16, 16, 16\)"),
    (dict(output_type="jpg"), ValueError, r"output_type must be one of"),
    (dict(config=42), TypeError, r"config must be a RALUConfig, a Baseline or a preset name, got int"),
    (dict(config="sd3-9x"), ValueError, r"preset must be one of"),
    (dict(config="sd3-3x", num_inference_steps=20), ValueError, r"either num_inference_steps .* or config"),
    (dict(num_images_per_prompt=0), ValueError, r"num_images_per_prompt must be an integer >= 1"),
])
def test_bad_input_fails_early_with_a_clear_message(pipe, kwargs, error, match):
    called = []
    hooks = [module.register_forward_pre_hook(lambda *a: called.append(1))
             for module in (pipe.transformer, pipe.transformer.pos_embed.proj, pipe.transformer.transformer_blocks[0])]
    try:
        with pytest.raises(error, match=match):
            pipe(**{"prompt": "a red circle", "height": SIZE, "width": SIZE, **kwargs})
    finally:
        for hook in hooks:
            hook.remove()
    assert not called, "the error must come before any transformer call"


def test_baseline_size_only_needs_whole_tokens(pipe):
    out = pipe("a red circle", height=112, width=SIZE, config=Baseline(2), output_type="latent", generator=gens(0),
               max_sequence_length=16)
    assert out.images.shape == (1, 16, 14, 16)
    with pytest.raises(ValueError, match=r"multiple of 32"):
        pipe("a red circle", height=112, width=SIZE, config="sd3-3x")


def test_cli_generate_picks_the_sd3_pipeline_and_its_default_preset(sd3_path, tmp_path, capsys):
    from ralu.cli import main

    output = tmp_path / "sd3.png"
    argv = ["generate", str(sd3_path), "--prompt", "a red circle", "--negative-prompt", "a blue square",
            "--height", "64", "--width", "96", "--device", "cpu", "--output", str(output)]
    assert main(argv) == 0
    with PIL.Image.open(output) as image:
        assert image.size == (96, 64)
    out = capsys.readouterr().out
    assert "RALUStableDiffusion3Pipeline's default preset" in out
    assert [line.split()[2] for line in out.splitlines() if line.startswith("  stage ")] == ["5", "6", "9"]  # sd3-2x
    assert "stage 3" in out and "regions upsampled early" in out


@pytest.mark.parametrize("path_fixture", ["sd3_path", "sd35_path"])
@pytest.mark.slow  # over a second: in make test, not make test-fast
def test_teacache_hook_works_on_sd3_under_ralu(request, path_fixture):
    """diffusers' FirstBlockCache fails on SD3 (its last block returns no encoder states);
    the TeaCache-style hook handles that block and runs across RALU's stages."""
    from ralu.caching import IDENTITY_COEFFICIENTS, TeaCacheConfig, apply_teacache, remove_teacache

    ralu = load(request.getfixturevalue(path_fixture), RALUStableDiffusion3Pipeline)
    kwargs = dict(prompt=PROMPTS, height=128, width=128, output_type="latent", config="sd3-2x")
    reference = ralu(generator=gens(0, 1), **{**kwargs, "config": RALUConfig.preset("sd3-2x", up_ratio=0.0)}).images
    stats = apply_teacache(ralu.transformer, TeaCacheConfig(threshold=0.3, coefficients=IDENTITY_COEFFICIENTS))
    try:
        out = ralu(generator=gens(0, 1), **kwargs)
        assert stats.skipped > 0 and stats.computed + stats.skipped == 20 and torch.isfinite(out.images).all()
    finally:
        remove_teacache(ralu.transformer)
    stats = apply_teacache(ralu.transformer, TeaCacheConfig(threshold=0.05, coefficients=IDENTITY_COEFFICIENTS))
    try:
        close = ralu(generator=gens(0, 1), **{**kwargs, "config": RALUConfig.preset("sd3-2x", up_ratio=0.0)}).images
    finally:
        remove_teacache(ralu.transformer)
    assert stats.skipped > 0
    # random weights: 10% relative is close (unrelated runs differ by over 100%)
    assert ((close - reference).norm() / reference.norm()).item() < 0.1


def test_model_cpu_offload_hook_runs_before_the_token_forward(sd3_path):
    # enable_model_cpu_offload moves the transformer to the accelerator in a hook on its forward;
    # the adapter calls the model's parts, so it must run that hook itself (this machine has no
    # accelerator, so the offload device is the CPU and the test watches the hook being called)
    pytest.importorskip("accelerate")
    pipe = load(sd3_path, RALUStableDiffusion3Pipeline)
    kwargs = dict(height=SIZE, width=SIZE, config=FAST, max_sequence_length=16, output_type="latent")
    expected = pipe("a red circle", generator=gens(0), **kwargs).images
    pipe.enable_model_cpu_offload(device="cpu")
    hook = pipe.transformer._hf_hook
    calls = []
    original = hook.pre_forward
    hook.pre_forward = lambda module, *args, **kw: (calls.append(module), original(module, *args, **kw))[1]
    out = pipe("a red circle", generator=gens(0), **kwargs).images
    assert len(calls) == sum(FAST.steps) and all(module is pipe.transformer for module in calls)
    # not bit-equal: StableDiffusion3Pipeline's own output moves by 3e-6 under offload as well
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
