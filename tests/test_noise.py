from __future__ import annotations

import math

import pytest
import torch

from ralu.layout import pool_tokens, upsample_tokens
from ralu.noise import correlate, correlation_coefficient, randn

MODES = ("token_repeat", "latent_nearest")


@pytest.mark.parametrize("mode", MODES)
def test_covariance_is_identity_minus_ones_over_z2_inside_each_group_of_copies(mode):
    z, samples, parents, dim = 2.5, 100_000, 2, 4
    up = lambda t: upsample_tokens(t, mode)  # noqa: E731
    pool = lambda t: pool_tokens(t, mode)  # noqa: E731
    w = torch.randn(samples, 4 * parents, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = correlate(w, up, pool, z).flatten(1)
    cov = noise.T @ noise / samples
    # the groups are, by definition, the positions the upsampler fills from one parent value
    ids = up(torch.arange(parents * dim, dtype=torch.float64).view(1, parents, dim)).flatten()
    same_group = ids[:, None] == ids[None, :]
    expected = torch.eye(len(ids), dtype=torch.float64) - same_group.double() / z**2
    # each entry is a mean of `samples` products with variance <= 1 + γ²: standard error ~ 1/sqrt(samples);
    # 6 standard errors bounds the max over the 1024 entries
    assert (cov - expected).abs().max() < 6 / math.sqrt(samples)


def test_coefficient_needs_z_at_least_sqrt_k():
    assert correlation_coefficient(4, 2.0) == 1.0
    with pytest.raises(ValueError, match=r"noise_ratio must be >= sqrt\(4\)"):
        correlation_coefficient(4, 1.9)


def test_randn_per_sample_generators_match_single_draws():
    batch = randn((3, 5, 2), [torch.Generator().manual_seed(s) for s in (1, 2, 3)], "cpu", torch.float32)
    alone = randn((1, 5, 2), torch.Generator().manual_seed(2), "cpu", torch.float32)
    assert torch.equal(batch[1:2], alone)
    with pytest.raises(ValueError, match="generator list has 2 generators for a batch of 3"):
        randn((3, 5, 2), [torch.Generator(), torch.Generator()], "cpu", torch.float32)


def test_randn_draws_fresh_noise_each_call():
    gen = torch.Generator().manual_seed(0)
    assert not torch.equal(randn((1, 8), gen, "cpu", torch.float32), randn((1, 8), gen, "cpu", torch.float32))
