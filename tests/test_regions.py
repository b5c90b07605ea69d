from __future__ import annotations

import pytest
import torch

from ralu.regions import edge_scores, select_tokens, to_gray_uint8


def square_image(low: float, high: float, size: int = 64) -> torch.Tensor:
    """A (1, 3, size, size) image of value `low` with a `high` square on pixels [20, 44)²."""
    img = torch.full((1, 3, size, size), low)
    img[..., 20:44, 20:44] = high
    return img


def test_edges_are_counted_in_the_tokens_the_square_border_crosses():
    scores = edge_scores(square_image(-1.0, 1.0), (4, 4)).view(4, 4)
    # border pixels at rows/cols 19-20 and 43-44 fall in tokens 1 and 2 (16 px footprint)
    assert (scores[1:3, 1:3] > 0).all()
    assert scores[0].sum() == 0 and scores[3].sum() == 0 and scores[:, 0].sum() == 0 and scores[:, 3].sum() == 0


def test_batched_scores_are_per_image():
    images = torch.cat([square_image(-1.0, 1.0), torch.zeros(1, 3, 64, 64)])
    scores = edge_scores(images, (4, 4))
    assert scores.shape == (2, 16) and scores[0].sum() > 0 and scores[1].sum() == 0


def test_reference_clipping_loses_edges_between_dark_tones():
    dark = square_image(-0.9, -0.1)  # both tones below 0: the [0,1] clip maps both to black
    assert edge_scores(dark, (4, 4), clip_unit=True).sum() == 0
    assert edge_scores(dark, (4, 4), clip_unit=False).sum() > 0


def test_gray_conversion_maps_the_vae_range():
    img = torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    assert to_gray_uint8(img).tolist() == [[[0, 127, 255]]]
    assert to_gray_uint8(img, clip_unit=True).tolist() == [[[0, 0, 255]]]


def test_size_must_match_the_grid():
    with pytest.raises(ValueError, match="not a multiple of the token grid"):
        edge_scores(torch.zeros(1, 3, 62, 64), (4, 4))


def test_select_takes_the_top_k_per_sample_sorted():
    scores = torch.tensor([[0.0, 5.0, 1.0, 9.0], [7.0, 0.0, 3.0, 2.0]])
    assert select_tokens(scores, 2, (2, 2)).tolist() == [[1, 3], [0, 2]]
    assert select_tokens(scores, 0, (2, 2)).shape == (2, 0)


def test_ties_prefer_neighbours_of_edges_then_low_index():
    scores = torch.zeros(1, 16)
    scores[0, 5] = 10.0  # token (1, 1) of a 4x4 grid
    chosen = select_tokens(scores, 4, (4, 4))[0].tolist()
    assert 5 in chosen
    neighbours = {0, 1, 2, 4, 6, 8, 9, 10}
    assert set(chosen) - {5} <= neighbours
    # deterministic
    assert select_tokens(scores, 4, (4, 4))[0].tolist() == chosen


def test_latent_edge_score_finds_a_square_in_the_latent():
    from diffusers import FluxPipeline

    from ralu.regions import latent_edge_scores

    latent = torch.zeros(1, 16, 16, 16)  # (B, C, 2h, 2w) for an 8x8 token grid
    latent[:, :, 4:12, 4:12] = 1.0  # a square whose border runs through tokens 1-2 and 5-6 of each axis
    tokens = FluxPipeline._pack_latents(latent, 1, 16, 16, 16)
    scores = latent_edge_scores(tokens, (8, 8)).view(8, 8)
    inside_border = {1, 2, 5, 6}
    for i in range(8):
        for j in range(8):
            on_border = (i in inside_border or j in inside_border) and 1 <= i <= 6 and 1 <= j <= 6
            assert (scores[i, j] > 0) == on_border, (i, j)


def test_latent_region_source_skips_the_decode():
    from ralu import RALUConfig, sample

    class NoDecode:
        def prepare_positions(self, positions, grid, resolution="full"):
            return None

        def velocity(self, x, prepared, sigma, step=None):
            return torch.zeros_like(x)

        def decode(self, x0, grid):
            raise AssertionError("decode must not run with region_source='latent'")

    noise = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(0))
    config = RALUConfig.preset("flux-dev-7x", region_source="latent", up_ratio=0.25).resolve(3.0)
    result = sample(NoDecode(), noise, config, (8, 8))
    assert result.layout.selected.shape == (1, 4)


def test_without_canny_edges_the_strongest_gradients_win():
    # a faint ramp: no Canny edge anywhere, but the gradient lives in the middle column of tokens
    img = torch.full((1, 3, 64, 64), -0.5)
    ramp = torch.linspace(-0.5, -0.3, 16)
    img[..., :, 16:32] = ramp
    img[..., :, 32:] = -0.3
    scores = edge_scores(img, (4, 4))
    assert (scores < 1).all() and scores.max() > 0  # no Canny edge pixel, a gradient term
    chosen = select_tokens(scores, 4, (4, 4))[0].tolist()
    assert sorted(chosen) == [1, 5, 9, 13]  # column 1: the ramp
    # a Canny edge still outranks any gradient term
    assert edge_scores(square_image(-1.0, 1.0), (4, 4)).view(4, 4)[1, 1] >= 1
