"""MrFlow's refine recipe against a hand-written reference: the σ grids, the token counts and the noise mixing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ralu.config import RALUConfig
from ralu.eval.alternatives import refine_sample
from ralu.layout import MixedLayout, downsample_tokens, upsample_tokens


class ConstantFlow:
    """A sampler adapter whose velocity is 1 everywhere, recording (tokens, σ) of every call: Euler then moves
    x by exactly Σ Δσ = (σ_end - σ_start), which the test can write down by hand."""

    def __init__(self):
        self.calls: list[tuple[int, float]] = []

    def session(self):
        from contextlib import nullcontext

        return nullcontext()

    def prepare_positions(self, positions, grid, resolution=None):
        return positions

    def velocity(self, x, positions, sigma, step=None):
        self.calls.append((x.shape[1], float(sigma)))
        return torch.ones_like(x)


def shifted(u: np.ndarray, h: float) -> np.ndarray:
    """The flow-matching time shift σ = h·u / (1 + (h - 1)·u), written out independently."""
    return h * u / (1 + (h - 1) * u)


def test_refine_runs_the_half_image_to_the_end_then_refines_from_sigma():
    grid, shift, sigma, low_steps, full_steps = (4, 6), 3.0, 0.3, 5, 2
    noise = torch.randn(2, 24, 16, generator=torch.Generator().manual_seed(0))
    generators = [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
    adapter = ConstantFlow()
    out = refine_sample(adapter, noise, grid, low_steps, sigma, full_steps, shift, generators)

    # the calls: 5 on the 2x3 half grid from σ = 1 on the stock shifted grid, then 2 on the full grid from σ = S
    low_sigmas = shifted(np.linspace(1, 0, low_steps + 1), shift)[:-1]
    u_start = sigma / (shift - (shift - 1) * sigma)  # shifted(u_start) == sigma
    full_sigmas = shifted(np.linspace(u_start, 0, full_steps + 1), shift)[:-1]
    assert [n for n, _ in adapter.calls] == [6] * low_steps + [24] * full_steps
    np.testing.assert_allclose([s for _, s in adapter.calls], [*low_sigmas, *full_sigmas], rtol=1e-6)
    assert adapter.calls[low_steps][1] == pytest.approx(sigma, rel=1e-6)

    # the result: the half image moved by -1 (σ 1 → 0), upsampled, mixed with fresh noise at σ = S, moved by -S
    variant = RALUConfig.preset("flux-dev-4x")
    low = downsample_tokens(noise, grid, variant.noise_downsample) - 1.0
    layout = MixedLayout.from_selection(torch.zeros(2, 0, dtype=torch.long), (2, 3))
    up, _ = layout.to_raster(upsample_tokens(low, variant.upsample), low[:, :0])
    fresh = torch.cat([torch.randn(1, 24, 16, generator=torch.Generator().manual_seed(s)) for s in (10, 11)])
    expected = (1 - sigma) * up + sigma * fresh - sigma
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_refine_refuses_a_noise_level_outside_zero_one():
    with pytest.raises(ValueError, match=r"sigma must be in \(0, 1\)"):
        refine_sample(ConstantFlow(), torch.zeros(1, 16, 16), (4, 4), 2, 1.0, 1, 3.0)
