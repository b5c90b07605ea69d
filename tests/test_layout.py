from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxPipeline
from hypothesis import given, settings
from hypothesis import strategies as st

from ralu.layout import (MixedLayout, children_indices, downsample_tokens, grid_positions, pool_tokens,
                         upsample_tokens)

MODES = ("token_repeat", "latent_nearest")


def pack(latents):  # (B, C, 2h, 2w) -> (B, h*w, 4C), diffusers' own packing
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(tokens, grid):
    b, _, d = tokens.shape
    return tokens.view(b, grid[0], grid[1], d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, 2 * grid[0], 2 * grid[1])


def test_pack_helpers_round_trip():
    latents = torch.randn(2, 3, 8, 6)
    assert torch.equal(unpack(pack(latents), (4, 3)), latents)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3))
def test_downsample_is_nearest_interpolation_of_the_latent(h, w, channels):
    latents = torch.randn(2, channels, 4 * h, 4 * w)
    expected = pack(F.interpolate(latents, scale_factor=0.5, mode="nearest"))
    assert torch.equal(downsample_tokens(pack(latents), (2 * h, 2 * w)), expected)


def _raster(children, grid):
    """Children of all low-res tokens (parent order) -> full-grid raster order."""
    index = children_indices(torch.arange(grid[0] * grid[1]), grid)
    out = torch.empty_like(children)
    out[:, index] = children
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3))
def test_latent_nearest_is_nearest_upsampling_of_the_latent_image(h, w, channels):
    low = torch.randn(2, channels, 2 * h, 2 * w)
    expected = pack(F.interpolate(low, scale_factor=2, mode="nearest"))
    assert torch.equal(_raster(upsample_tokens(pack(low), "latent_nearest"), (h, w)), expected)


def test_token_repeat_is_the_reference_token_interpolation():
    tokens = torch.randn(2, 5, 12)
    # the reference: F.interpolate over the token axis, nearest
    expected = F.interpolate(tokens.transpose(1, 2), size=20, mode="nearest").transpose(1, 2)
    assert torch.equal(upsample_tokens(tokens, "token_repeat"), expected)


@pytest.mark.parametrize("mode", MODES)
def test_pool_is_the_group_mean_of_the_copies(mode):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 7, 16, generator=generator, dtype=torch.float64)
    assert torch.allclose(pool_tokens(upsample_tokens(tokens, mode), mode), tokens, atol=1e-12)
    # Uᵀ/k: <U x, y> = k <x, pool(y)>, in float64: both sides sum the same 1344 products, so they
    # agree to ~1e-13 of the sum of their magnitudes (a relative tolerance fails when the sum is near 0)
    y = torch.randn(3, 28, 16, generator=generator, dtype=torch.float64)
    left = upsample_tokens(tokens, mode) * y
    right = 4 * (tokens * pool_tokens(y, mode)).sum()
    assert abs(left.sum() - right) <= 1e-12 * left.abs().sum()


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="upsample must be one of"):
        upsample_tokens(torch.zeros(1, 1, 4), "bicubic")


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 3), st.floats(0.0, 1.0), st.sampled_from(MODES),
       st.integers(0, 2**31 - 1))
def test_stage_three_is_raster_order_on_the_full_grid(h, w, batch, ratio, mode, seed):
    gen = torch.Generator().manual_seed(seed)
    tokens = h * w
    k = int(ratio * tokens)
    selected = torch.stack([torch.randperm(tokens, generator=gen)[:k] for _ in range(batch)])
    layout = MixedLayout.from_selection(selected, (h, w))
    assert layout.kept.shape == (batch, tokens - k)
    assert torch.equal(layout.mask().flatten(1).sum(1), torch.full((batch,), k))

    low = torch.randn(batch, tokens, 8, generator=gen)
    kept, sel = layout.split_low(low)
    mixed = torch.cat([kept, upsample_tokens(sel, mode)], dim=1)
    positions = layout.mixed_positions("corner")
    assert mixed.shape[1] == positions.shape[1] == tokens - k + 4 * k

    kept_part, full_part = layout.split_mixed(mixed)
    full, full_positions = layout.to_raster(upsample_tokens(kept_part, mode), full_part)
    # positions: exactly the integer full-resolution grid, in raster order
    assert torch.equal(full_positions, grid_positions((2 * h, 2 * w)).expand(batch, -1, -1))
    # content: the same as upsampling the whole low-res grid at once
    assert torch.equal(full, _raster(upsample_tokens(low, mode), (h, w)))


def test_mixed_positions_conventions():
    layout = MixedLayout.from_selection(torch.tensor([[1]]), (1, 2))
    corner = layout.mixed_positions("corner")[0].tolist()
    assert corner == [[0, 0], [0, 1], [0, 1.5], [0.5, 1], [0.5, 1.5]]
    center = layout.mixed_positions("center")[0].tolist()
    assert center[0] == [0.25, 0.25] and center[1:] == corner[1:]


def test_tokens_to_latent_inverts_diffusers_packing():
    from ralu.layout import tokens_to_latent

    from ralu.layout import latent_to_tokens

    latents = torch.randn(2, 16, 6, 10)
    assert torch.equal(tokens_to_latent(pack(latents), (3, 5)), latents)
    assert torch.equal(latent_to_tokens(latents), pack(latents))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3))
def test_block_sum_downsample_is_twice_the_block_mean_of_the_latent(h, w, channels):
    latents = torch.randn(2, channels, 4 * h, 4 * w, dtype=torch.float64)
    expected = pack(2 * F.avg_pool2d(latents, 2))
    torch.testing.assert_close(downsample_tokens(pack(latents), (2 * h, 2 * w), "block_sum"), expected)


@pytest.mark.parametrize("mode", ["nearest", "block_sum"])
def test_noise_downsampling_keeps_white_noise_white(mode):
    # a linear map y = A n keeps N(0, I) as N(0, I) iff A Aᵀ = I: build A column by column
    grid, dim = (4, 6), 8
    basis = torch.eye(grid[0] * grid[1] * dim, dtype=torch.float64).view(-1, grid[0] * grid[1], dim)
    a = downsample_tokens(basis, grid, mode).flatten(1).T  # (low values, full values)
    torch.testing.assert_close(a @ a.T, torch.eye(a.shape[0], dtype=torch.float64))


def test_unknown_noise_downsample_mode_is_refused():
    with pytest.raises(ValueError, match=r"noise_downsample must be one of \('nearest', 'block_sum'\), got 'mean'"):
        downsample_tokens(torch.zeros(1, 4, 8), (2, 2), "mean")
