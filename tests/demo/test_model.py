"""The shipped toy model: its codec, its loading from package data, sampling."""

from __future__ import annotations

import json

import pytest
import torch

from ralu import Baseline, RALUConfig
from ralu.demo import model as toy
from ralu.demo import shapes
from ralu.layout import MixedLayout, tokens_to_latent, upsample_tokens


def test_haar_is_orthonormal_and_its_own_inverse():
    assert torch.allclose(toy.HAAR @ toy.HAAR.T, torch.eye(4), atol=1e-7)
    assert torch.equal(toy.HAAR, toy.HAAR.T)


def test_codec_round_trip_and_a_constant_image():
    images = torch.from_numpy(shapes.render_batch(shapes.scenes(0, 3), 64))
    tokens = toy.encode_images(images)
    assert tokens.shape == (3, 256, 48)
    assert torch.allclose(toy.decode_tokens(tokens, (16, 16)), images, atol=1e-6)
    # a constant image c: every 2x2 block has mean c, so LL = 2c (the Haar row (1,1,1,1)/2) and no detail
    constant = torch.full((1, 3, 8, 8), 0.25)
    latent = toy.encode_images(constant).view(1, 4, 3, 4, 2, 2)  # tokens, (colour, coefficient), 2x2 latent pixels
    assert torch.allclose(latent[:, :, :, 0], torch.full_like(latent[:, :, :, 0], 0.5))
    assert torch.allclose(latent[:, :, :, 1:], torch.zeros_like(latent[:, :, :, 1:]), atol=1e-7)


def test_latent_nearest_upsampling_keeps_block_means():
    # Why Haar: replicating a latent pixel replicates the 2x2 block mean of the half-res image, so
    # the 2x2 block means of the upsampled 64 px image are the 32 px image's block means, repeated.
    half = torch.from_numpy(shapes.render_batch(shapes.scenes(1, 2), 32))
    low = toy.encode_images(half)  # (2, 64, 48) on the 8x8 low grid
    layout = MixedLayout.from_selection(torch.zeros(2, 0, dtype=torch.long), (8, 8))
    up, _ = layout.to_raster(upsample_tokens(low, "latent_nearest"), low[:, :0])
    full = toy.decode_tokens(up, (16, 16))
    means = torch.nn.functional.avg_pool2d(full, 2)
    expected = torch.nn.functional.avg_pool2d(half, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert torch.allclose(means, expected, atol=1e-5)


def test_tokenizer_rejects_unknown_words():
    with pytest.raises(ValueError, match="puppy"):
        toy.ToyTokenizer()(["a small red puppy"])
    ids = toy.ToyTokenizer()(["a large red circle", ""])
    assert ids.shape == (2, toy.MAX_WORDS) and ids[0, :4].ne(0).all() and ids[0, 4:].eq(0).all() and ids[1].eq(0).all()


@pytest.fixture(scope="module")
def model():
    return toy.load_toy()


def test_shipped_model_loads_from_package_data(model):
    from diffusers import FluxTransformer2DModel

    assert (toy.DATA_DIR / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert isinstance(model.transformer, FluxTransformer2DModel)
    count = sum(p.numel() for p in model.transformer.parameters())
    assert 2e6 <= count <= 10e6  # float16 weights of at most 20 MB
    record = json.loads((toy.DATA_DIR / "training.json").read_text())
    assert record["parameters"]["transformer"] == count
    assert {"seed", "steps", "final_loss", "wall_seconds", "command"} <= set(record)


def test_generates_finite_images_of_the_right_size(model):
    prompts = ["a large red circle", "a small blue star left of a large green square"]
    images, result = toy.generate(model, prompts, [0, 1], Baseline(3))
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    images, result = toy.generate(model, prompts, [0, 1], RALUConfig.preset("flux-dev-4x", steps=(1, 1, 1)), 2.0)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    assert result.stage_tokens == (64, 64 - 19 + 4 * 19, 256)  # floor(0.3 · 64) = 19 tokens upsampled early
    assert result.layout.mask().shape == (2, 8, 8)


def test_same_seed_same_image(model):
    config = RALUConfig.preset("flux-dev-7x", steps=(1, 1, 1))
    first, _ = toy.generate(model, ["a large yellow star"], [3], config)
    second, _ = toy.generate(model, ["a large yellow star"], [3], config)
    assert torch.equal(first, second)


# --- the SD3-architecture twin ------------------------------------------------------------------

def test_shipped_sd3_twin_loads_from_package_data():
    from diffusers import SD3Transformer2DModel

    model = toy.load_toy(toy.SD3_DATA_DIR)
    assert isinstance(model.transformer, SD3Transformer2DModel) and model.architecture == "sd3"
    count = sum(p.numel() for p in model.transformer.parameters())
    record = json.loads((toy.SD3_DATA_DIR / "training.json").read_text())
    assert record["architecture"] == "sd3" and record["parameters"]["transformer"] == count
    assert dict(model.transformer.config.items()) | toy.SD3_TRANSFORMER_CONFIG == dict(model.transformer.config.items())


def test_sd3_twin_keeps_sd3_table_proportions():
    from diffusers import SD3Transformer2DModel

    transformer = toy.build_toy(0, "sd3").transformer
    assert isinstance(transformer, SD3Transformer2DModel)
    pe = transformer.pos_embed
    full, low = toy.token_grid(), (toy.token_grid()[0] // 2, toy.token_grid()[1] // 2)
    # SD3-medium: a 96-cell table for its 64-token (1024 px) side, crops starting at 16 (1024 px) and 32 (512 px)
    assert pe.pos_embed_max_size / full[0] == 96 / 64 and pe.base_size == full[0]
    assert (pe.pos_embed_max_size - full[0]) // 2 == 4 and (pe.pos_embed_max_size - low[0]) // 2 == 8
    with pytest.raises(ValueError, match=r"architecture must be one of \('flux', 'sd3'\)"):
        toy.build_toy(0, "sdxl")


def test_sd3_twin_samples_with_the_stock_forward_it_is_trained_with():
    # training calls SD3Transformer2DModel.forward on the latent image; sampling goes through
    # SD3Adapter on tokens: on a uniform grid they must give the same velocity
    from ralu.layout import grid_positions, latent_to_tokens

    model = toy.build_toy(3, "sd3")
    model.transformer.eval()
    images = torch.from_numpy(shapes.render_batch(shapes.scenes(5, 2), 64))
    tokens = toy.encode_images(images)
    latent = tokens_to_latent(tokens, (16, 16))
    states, pooled = model.encode_prompt(["a large red circle", "a small blue star"])
    sigma = torch.tensor(0.6)
    with torch.no_grad():
        stock = model.transformer(hidden_states=latent, timestep=(sigma * 1000).expand(2), pooled_projections=pooled,
                                  encoder_hidden_states=states, return_dict=False)[0]
        adapter = model.adapter(["a large red circle", "a small blue star"], 1.0)
        positions = adapter.prepare_positions(grid_positions((16, 16))[None].expand(2, -1, -1), (16, 16), "full")
        ours = adapter.velocity(tokens, positions, sigma)
    assert torch.equal(ours, latent_to_tokens(stock))


def test_sd3_twin_samples_each_convention():
    model = toy.build_toy(2, "sd3")
    model.transformer.eval()
    runs = {}
    for convention in ("low_grid", "full_grid", "stock_then_full"):
        config = RALUConfig.preset("sd3-3x", steps=(1, 1, 1), table_positions=convention)
        images, result = toy.generate(model, ["a large red circle"], [0], config, 2.0)
        assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
        runs[convention] = images
    # the conventions place tokens differently, so the pictures differ
    assert not torch.equal(runs["low_grid"], runs["full_grid"])
    assert not torch.equal(runs["low_grid"], runs["stock_then_full"])


def test_auto_dtype_picks_bfloat16_only_where_the_cpu_has_bf16_instructions(monkeypatch):
    for flags, fast in (({"avx2", "avx512f"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16"}, True)):
        monkeypatch.setattr(toy, "cpu_facts", lambda flags=flags: ("cpu", frozenset(flags)))
        assert toy.bf16_is_fast() is fast


def test_save_toy_round_trips_in_float16_and_leaves_the_model_alone(tmp_path):
    import logging

    warnings = []
    handler = logging.Handler()
    handler.emit = warnings.append
    logger = logging.getLogger("diffusers.models.modeling_utils")
    logger.addHandler(handler)
    model = toy.build_toy(2)
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    try:
        toy.save_toy(model, tmp_path / "m")
    finally:
        logger.removeHandler(handler)
    after = model.transformer.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], v) for k, v in before.items())
    loaded = toy.load_toy(tmp_path / "m").transformer.state_dict()
    assert all(torch.equal(loaded[k], v.half().float()) for k, v in before.items())
    # diffusers' own to() warns "modules ... kept in float32: []" on every dtype cast; save_toy avoids it
    assert [r.getMessage() for r in warnings if r.levelno >= logging.WARNING] == []


def test_noise_downsample_acts_only_through_stage_one_start(model):
    """Both modes start stage 1 from white noise and every later draw comes from the renoise
    generators, so they give one image distribution: two runs whose stage-1 starts coincide
    must give the same image, whichever mode made the start."""
    from ralu.layout import downsample_tokens
    from ralu.sampler import sample

    prompts, seeds, grid = ["a large red circle", "a small blue star left of a large green square"], [0, 1], toy.token_grid()
    full = toy.initial_noise(seeds)
    start = downsample_tokens(full, grid, "block_sum")
    picked = downsample_tokens(torch.arange(full[0].numel(), dtype=torch.float64).view(1, *full.shape[1:]), grid,
                               "nearest").long().flatten()  # which entries of the full noise "nearest" keeps
    other = full.flatten(1).clone()
    other[:, picked] = start.flatten(1)
    other = other.view_as(full)
    torch.testing.assert_close(downsample_tokens(other, grid, "nearest"), start, rtol=0, atol=0)
    latents = []
    for noise, mode in ((full, "block_sum"), (other, "nearest")):
        config = RALUConfig.preset("flux-dev-4x", steps=(1, 1, 2), noise_downsample=mode).resolve(toy.BASE_SHIFT)
        with torch.no_grad():
            latents.append(sample(model.adapter(prompts, 2.0, grid), noise, config, grid,
                                  generator=toy.renoise_generators(seeds)).latents)
    torch.testing.assert_close(latents[0], latents[1], rtol=0, atol=0)


def test_a_grown_text_encoder_starts_as_the_identity_then_lets_words_see_the_caption(tmp_path):
    encoder = toy.ToyTextEncoder()
    ids = toy.ToyTokenizer()(["a small red circle left of a large blue square", "a small red circle above a large "
                              "blue square", ""])
    before = encoder(ids)
    encoder.grow(2)
    assert encoder.layers == 2
    for old, new in zip(before, encoder(ids)):
        assert torch.equal(old, new)  # exactly: the new blocks' residual branches write zeros
    with pytest.raises(ValueError, match="layers can only grow"):
        encoder.grow(1)
    # once trained (here: random residual outputs), the colour word "red" (word 2) carries the relation, which
    # the embeddings alone cannot: captions 0 and 1 differ only from word 4 on
    torch.manual_seed(0)
    for block in encoder.blocks:
        for linear in (block.self_attn.out_proj, block.linear2):
            torch.nn.init.normal_(linear.weight, std=0.2)
    states, pooled = encoder(ids)
    assert torch.equal(before[0][0, 2], before[0][1, 2])
    assert not torch.allclose(states[0, 2], states[1, 2], atol=1e-3)
    assert torch.isfinite(states[2]).all() and torch.equal(pooled[2], torch.zeros(64))  # the empty prompt: no words
    # saved and loaded with its blocks (float16 storage)
    model = toy.build_toy(1, num_attention_heads=2)
    model.text_encoder = encoder
    loaded = toy.load_toy(toy.save_toy(model, tmp_path / "m")).text_encoder
    assert loaded.layers == 2
    for p, q in zip(encoder.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(p.half().float(), q)


def test_canonical_relations_read_each_scene_one_way_and_are_saved_with_the_model(tmp_path):
    plain, canonical = toy.ToyTokenizer(), toy.ToyTokenizer(canonical_relations=True)
    same_scene = {"a small red circle right of a large blue square": "a large blue square left of a small red circle",
                  "a small red circle below a large blue square": "a large blue square above a small red circle"}
    for rewritten, written in same_scene.items():
        assert torch.equal(canonical([rewritten]), plain([written]))
        assert not torch.equal(plain([rewritten]), plain([written]))
    # captions already canonical, single objects, the empty prompt and unparsed word lists are read as written
    kept = ["a small red circle left of a large blue square", "a large blue square above a small red circle",
            "a small red circle", "", "right of below"]
    assert torch.equal(canonical(kept), plain(kept))
    with pytest.raises(ValueError, match="unknown"):
        canonical(["a small red circle right of a large blue blob"])
    model = toy.build_toy(1, num_attention_heads=2)
    assert toy.load_toy(toy.save_toy(model, tmp_path / "plain")).tokenizer.canonical_relations is False
    model.tokenizer.canonical_relations = True
    assert toy.load_toy(toy.save_toy(model, tmp_path / "canonical")).tokenizer.canonical_relations is True
    spec = json.loads((tmp_path / "canonical" / "text_encoder.json").read_text())
    del spec["canonical_relations"]  # files saved before the option read captions as written
    (tmp_path / "canonical" / "text_encoder.json").write_text(json.dumps(spec))
    assert toy.load_toy(tmp_path / "canonical").tokenizer.canonical_relations is False


def test_phrase_means_average_each_objects_words_and_leave_relation_words_and_pads_out():
    tokenizer = toy.ToyTokenizer()
    ids = tokenizer(["a small red circle left of a large blue square", "a large green triangle", ""])
    embeddings = torch.randn(3, ids.shape[1], 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    means = toy.phrase_means(embeddings, ids)
    first, second = embeddings[0, 0:4].mean(0), embeddings[0, 6:10].mean(0)
    for t in range(4):
        torch.testing.assert_close(means[0, t], first)
    for t in range(6, 10):
        torch.testing.assert_close(means[0, t], second)
    assert means[0, 4:6].abs().max() == 0 and means[0, 10:].abs().max() == 0  # "left of", pads
    torch.testing.assert_close(means[1, 0:4], embeddings[1, 0:4].mean(0).expand(4, -1))
    assert means[1, 4:].abs().max() == 0 and means[2].abs().max() == 0  # pads; the empty prompt
    above = tokenizer(["a small red circle above a large blue square"])  # one relation word
    e = embeddings[:1, : above.shape[1]]
    torch.testing.assert_close(toy.phrase_means(e, above)[0, 5:9], e[0, 5:9].mean(0).expand(4, -1))


def test_phrase_context_starts_as_the_identity_then_carries_the_colour_to_its_kind_word(tmp_path):
    encoder = toy.ToyTextEncoder(layers=0)
    captions = ["a small red circle left of a large blue square", "a small green circle left of a large blue square",
                "a small red circle left of a large green square"]
    ids = toy.ToyTokenizer()(captions)
    before, _ = encoder(ids)
    encoder.add_phrase_context()
    assert encoder.phrase_context and torch.equal(encoder(ids)[0], before)  # zero projection: unchanged
    torch.manual_seed(0)
    torch.nn.init.normal_(encoder.phrase.weight, std=0.2)
    states, _ = encoder(ids)
    # without it the kind word's state (word 3, "circle") is the same whatever the colour; with it, it follows
    # its own phrase's colour (captions 0, 1) and not the other object's (0, 2)
    assert torch.equal(before[0, 3], before[1, 3])
    assert not torch.allclose(states[0, 3], states[1, 3], atol=1e-3)
    torch.testing.assert_close(states[0, 3], states[2, 3])
    model = toy.build_toy(1, num_attention_heads=2)
    model.text_encoder = encoder
    loaded = toy.load_toy(toy.save_toy(model, tmp_path / "m"))
    assert loaded.text_encoder.phrase_context
    torch.testing.assert_close(loaded.text_encoder(ids)[0], states, atol=2e-2, rtol=0)  # float16 storage
    spec = json.loads((tmp_path / "m" / "text_encoder.json").read_text())
    assert spec["phrase_context"] is True
    (tmp_path / "m" / "text_encoder.json").write_text(json.dumps(spec | {"vocabulary": spec["vocabulary"][::-1]}))
    with pytest.raises(ValueError, match="phrase_context needs the toy's own vocabulary"):
        toy.load_toy(tmp_path / "m")
    del spec["phrase_context"]  # a file from before the option: no projection
    (tmp_path / "m" / "text_encoder.json").write_text(json.dumps(spec))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        toy.load_toy(tmp_path / "m")
    assert not toy.load_toy(toy.save_toy(toy.build_toy(1, num_attention_heads=2), tmp_path / "old")).text_encoder.phrase_context
