"""The sampler against an exact model: a data distribution that is a single latent image.

For data x0 = T (a point mass) the flow-matching velocity is exactly v = (x - T)/σ, so Euler
steps stay on the line x = (1-σ)·T + σ·ε. Any error in token order, positions or renoising
then shows up directly: the output must be T, and at the start of every stage the normalised
noise (x - (1-σ)T)/σ must have the statistics DESIGN.md §3 promises.
"""

from __future__ import annotations

import math

import pytest
import torch

from ralu import Baseline, RALUConfig, sample
from ralu.layout import children_indices, upsample_tokens

LOW = (8, 6)
DIM = 64


class DiracAdapter:
    """Exact velocity when the data is U(L): the low-res latent L upsampled by the config's operator."""

    def __init__(self, low: torch.Tensor, config: RALUConfig):
        self.low, self.config = low, config
        children = upsample_tokens(low, config.upsample)
        self.full = torch.empty_like(children)
        self.full[:, children_indices(torch.arange(LOW[0] * LOW[1]), LOW)] = children
        self.kept = LOW[0] * LOW[1] - config.selected_tokens(LOW[0] * LOW[1])
        self.starts = []  # normalised noise at the first step of each stage
        self._stage = 0

    def prepare_positions(self, positions, grid, resolution="full"):
        self._stage += 1
        batch, count, _ = positions.shape
        low_index = lambda p: (p[..., 0].floor() * LOW[1] + p[..., 1].floor()).long()  # noqa: E731
        full_index = lambda p: (p[..., 0] * 2 * LOW[1] + p[..., 1]).long()  # noqa: E731
        pick = lambda source, index: torch.gather(source.expand(batch, -1, -1), 1, index[..., None].expand(-1, -1, DIM))  # noqa: E731
        if tuple(grid) != LOW:  # stage 3: the full grid
            return pick(self.full, full_index(positions)), None
        if count == LOW[0] * LOW[1]:  # stage 1
            return pick(self.low, low_index(positions)), None
        kept = pick(self.low, low_index(positions[:, : self.kept]))
        children = pick(self.full, full_index(2 * positions[:, self.kept :]))
        return torch.cat([kept, children], dim=1), None

    def velocity(self, x, prepared, step):
        target, _ = prepared
        sigma = step.sigma
        if len(self.starts) < self._stage:
            self.starts.append((x - (1 - sigma) * target) / sigma)
        return (x - target) / sigma

    def decode(self, x0, grid):
        # an image whose left half is a sharp checkerboard: edges there, none on the right
        b = x0.shape[0]
        img = torch.zeros(b, 3, grid[0] * 16, grid[1] * 16)
        yy, xx = torch.meshgrid(torch.arange(grid[0] * 16), torch.arange(grid[1] * 16), indexing="ij")
        board = (((yy // 4) + (xx // 4)) % 2).float() * 2 - 1
        img[..., : grid[1] * 8] = board[:, : grid[1] * 8]
        return img


def run(config, batch=4, seed=0):
    low = torch.randn(1, LOW[0] * LOW[1], DIM, generator=torch.Generator().manual_seed(123))
    adapter = DiracAdapter(low, config)
    noise = torch.randn(batch, 4 * LOW[0] * LOW[1], DIM, generator=torch.Generator().manual_seed(seed))
    gens = [torch.Generator().manual_seed(seed + 1 + b) for b in range(batch)]
    result = sample(adapter, noise, config, (2 * LOW[0], 2 * LOW[1]), generator=gens)
    return adapter, result


@pytest.mark.parametrize("mode", ["token_repeat", "latent_nearest"])
@pytest.mark.parametrize("position", ["corner", "center"])
def test_exact_model_lands_on_the_data(mode, position):
    config = RALUConfig.preset("flux-dev-4x", upsample=mode, token_position=position)
    adapter, result = run(config)
    # float32 Euler steps: rounding only
    assert torch.allclose(result.latents, adapter.full.expand_as(result.latents), atol=1e-4)
    assert result.stage_tokens == (48, 48 - 14 + 4 * 14, 192)
    assert result.stage_steps == (5, 6, 7) and result.model_calls == 18


def _stats(eps, kept):
    stay, up = eps[:, :kept], eps[:, kept:]
    children = up.unflatten(1, (-1, 4))  # token_repeat groups: same value slot across the 4 children
    corr = (children[:, :, 0] * children[:, :, 1]).mean() / children.var()
    return stay.var().item(), up.mean().item(), up.var().item(), corr.item()


def test_renoised_latents_are_white_at_the_scheduled_level():
    # small Z makes every effect large: 1/Z² = 0.16
    config = RALUConfig(steps=(2, 2, 2), ends=(0.3, 0.5, 1.0), up_ratio=0.5, shifts=(3.0, 2.0, 2.0), noise_ratio=2.5,
                        exact_kept_noise=True)
    adapter, result = run(config, batch=16)
    stage2 = adapter.starts[1]
    kept = 48 - 24
    n_up = stage2[:, kept:].numel()
    stay_var, up_mean, up_var, corr = _stats(stage2, kept)
    err = math.sqrt(2 / n_up)  # standard error of a variance estimate from n normal samples
    assert abs(up_mean) < 5 / math.sqrt(n_up)
    assert abs(up_var - 1) < 5 * err and abs(stay_var - 1) < 5 * math.sqrt(2 / stage2[:, :kept].numel())
    # uncorrelated renoising would leave a within-group correlation of (1/Z²)/(1+1/Z²) = 0.138
    assert abs(corr) < 5 * math.sqrt(1 / (n_up / 4))
    stage3 = adapter.starts[2]
    assert abs(stage3.var().item() - 1) < 5 * math.sqrt(2 / stage3.numel())


def test_reference_kept_noise_is_one_over_z2_too_high():
    config = RALUConfig(steps=(2, 2, 2), ends=(0.3, 0.5, 1.0), up_ratio=0.5, shifts=(3.0, 2.0, 2.0), noise_ratio=2.5)
    adapter, _ = run(config, batch=16)
    stay_var, _, up_var, _ = _stats(adapter.starts[1], 24)
    assert abs(stay_var - (1 + 1 / 2.5**2)) < 5 * math.sqrt(2 / adapter.starts[1][:, :24].numel())
    assert abs(up_var - 1) < 5 * math.sqrt(2 / adapter.starts[1][:, 24:].numel())


def test_regions_follow_the_edges():
    config = RALUConfig.preset("flux-dev-4x", up_ratio=0.25)
    _, result = run(config, batch=2)
    mask = result.layout.mask()
    # 12 of 48 tokens, all inside the checkerboard half (columns 0-2 of 6)
    assert mask.sum().item() == 2 * 12
    assert not mask[:, :, 3:].any()


def test_baseline_is_a_single_full_resolution_stage():
    low = torch.randn(1, 48, DIM)
    adapter = DiracAdapter(low, RALUConfig.preset("flux-dev-4x"))
    noise = torch.randn(2, 192, DIM)
    result = sample(adapter, noise, Baseline(10, shift=3.0), (16, 12))
    assert result.layout is None and result.stage_tokens == (192,) and result.model_calls == 10
    assert torch.allclose(result.latents, adapter.full.expand(2, -1, -1), atol=1e-4)


def test_callback_sees_every_step_and_can_replace_latents():
    seen = []

    def callback(step, sigma, x):
        seen.append((step, x.shape[1]))
        return x * 1.0

    low = torch.randn(1, 48, DIM)
    config = RALUConfig.preset("flux-dev-7x")
    sample(DiracAdapter(low, config), torch.randn(1, 192, DIM), config, (16, 12), callback=callback)
    assert [s for s, _ in seen] == list(range(10))
    assert [n for _, n in seen] == [48] * 2 + [48 - 4 + 16] * 3 + [192] * 5


def test_interrupt_skips_the_remaining_steps():
    calls = []
    low = torch.randn(1, 48, DIM)
    config = RALUConfig.preset("flux-dev-7x")
    sample(DiracAdapter(low, config), torch.randn(1, 192, DIM), config, (16, 12),
           callback=lambda step, sigma, x: calls.append(step), interrupt=lambda: len(calls) >= 3)
    assert calls == [0, 1, 2]


def test_odd_grid_is_rejected():
    low = torch.randn(1, 48, DIM)
    config = RALUConfig.preset("flux-dev-4x")
    with pytest.raises(ValueError, match="even token grid"):
        sample(DiracAdapter(low, config), torch.randn(1, 15 * 12, DIM), config, (15, 12))


@pytest.mark.parametrize("mode", ["nearest", "block_sum"])
def test_stage_one_starts_from_the_configured_noise_downsampling(mode):
    from ralu.layout import downsample_tokens

    config = RALUConfig.preset("flux-dev-4x", noise_downsample=mode)
    adapter, result = run(config, batch=2, seed=5)
    noise = torch.randn(2, 4 * LOW[0] * LOW[1], DIM, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(adapter.starts[0], downsample_tokens(noise, (2 * LOW[0], 2 * LOW[1]), mode))
    torch.testing.assert_close(result.latents, adapter.full.expand(2, -1, -1), atol=1e-4, rtol=0)
