"""The sampler against an exact model: a data distribution that is a single latent image.

For data x0 = T (a point mass) the flow-matching velocity is exactly v = (x - T)/σ, so Euler
steps stay on the line x = (1-σ)·T + σ·ε. Any error in token order, positions or renoising
then shows up directly: the output must be T, and at the start of every stage the normalised
noise (x - (1-σ)T)/σ must have the statistics docs/method.md §3 promises.
"""

from __future__ import annotations

import math

import pytest
import torch

from ralu import Baseline, RALUConfig, sample
from ralu.layout import children_indices, tokens_to_latent, upsample_tokens
from ralu.sampler import Interrupted

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

    def velocity(self, x, prepared, sigma, step=None):
        target, _ = prepared
        if len(self.starts) < self._stage:
            self.starts.append((x - (1 - sigma) * target) / sigma)
        return (x - target) / sigma

    def decode(self, x0, grid):
        """Each token's 2x2 latent patch, channel 0, as a grey image of 16x16 px per token."""
        latent = tokens_to_latent(x0.float(), grid)[:, :1]  # (B, 1, 2h, 2w)
        grey = latent.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3).clamp(-1, 1)
        return grey.expand(-1, 3, -1, -1)


def run(config, batch=4, seed=0, low=None):
    config = config.resolve(3.0)
    if low is None:
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


def _copy_groups(up: torch.Tensor, mode: str) -> torch.Tensor:
    """The renoised children (B, 4n, D) regrouped as (B, groups, 4): the four copies of one value.

    Written from the operators' definitions, independently of ralu.layout: token_repeat copies a
    whole token into its four children (same slot, consecutive children); latent_nearest copies
    the parent's latent pixel (c, a, b) into the 2x2 patch (c, ·, ·) of child (a, b).
    """
    batch, count, dim = up.shape
    children = up.view(batch, count // 4, 4, dim)  # B, parent, child (a b), value
    if mode == "token_repeat":
        return children.permute(0, 1, 3, 2).reshape(batch, -1, 4)  # groups over the children
    return children.view(batch, count // 4, 4, dim // 4, 4).reshape(batch, -1, 4)  # groups over (p q) in a child


def _stats(eps, kept, mode):
    stay, up = eps[:, :kept], eps[:, kept:]
    groups = _copy_groups(up, mode)
    corr = (groups[..., 0] * groups[..., 1]).mean() / groups.var()
    return stay.var().item(), up.mean().item(), up.var().item(), corr.item()


@pytest.mark.parametrize("mode", ["token_repeat", "latent_nearest"])
def test_renoised_latents_are_white_at_the_scheduled_level(mode):
    # small Z makes every effect large: 1/Z² = 0.16
    config = RALUConfig(steps=(2, 2, 2), ends=(0.3, 0.5, 1.0), up_ratio=0.5, shifts=(3.0, 2.0, 2.0), noise_ratio=2.5,
                        exact_kept_noise=True, upsample=mode)
    adapter, result = run(config, batch=16)
    stage2 = adapter.starts[1]
    kept = 48 - 24
    n_up = stage2[:, kept:].numel()
    stay_var, up_mean, up_var, corr = _stats(stage2, kept, mode)
    err = math.sqrt(2 / n_up)  # standard error of a variance estimate from n normal samples
    assert abs(up_mean) < 5 / math.sqrt(n_up)
    assert abs(up_var - 1) < 5 * err and abs(stay_var - 1) < 5 * math.sqrt(2 / stage2[:, :kept].numel())
    # uncorrelated renoising, or noise correlated over other groups than the copies, would leave a
    # within-group correlation of (1/Z²)/(1+1/Z²) = 0.138 (about 20 standard errors here)
    assert abs(corr) < 5 * math.sqrt(1 / (n_up / 4))
    stage3 = adapter.starts[2]
    assert abs(stage3.var().item() - 1) < 5 * math.sqrt(2 / stage3.numel())


def test_reference_kept_noise_is_one_over_z2_too_high():
    config = RALUConfig(steps=(2, 2, 2), ends=(0.3, 0.5, 1.0), up_ratio=0.5, shifts=(3.0, 2.0, 2.0), noise_ratio=2.5)
    adapter, _ = run(config, batch=16)
    stay_var, _, up_var, _ = _stats(adapter.starts[1], 24, "token_repeat")
    assert abs(stay_var - (1 + 1 / 2.5**2)) < 5 * math.sqrt(2 / adapter.starts[1][:, :24].numel())
    assert abs(up_var - 1) < 5 * math.sqrt(2 / adapter.starts[1][:, 24:].numel())


def test_regions_follow_the_edges_of_the_clean_estimate():
    """The data has edges in its left half only; the noisy latent has them everywhere.

    The exact model's clean estimate at the end of stage 1 is the data itself, so region selection
    fed the clean estimate picks tokens on the left; fed the noisy latent it would pick anywhere.
    """
    low = torch.zeros(1, LOW[0] * LOW[1], DIM)
    board = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # a checkerboard inside each token's 2x2 patch
    for row in range(LOW[0]):
        for col in range(LOW[1] // 2):
            low[0, row * LOW[1] + col, :4] = board.flatten()
    config = RALUConfig.preset("flux-dev-4x", up_ratio=0.25)
    _, result = run(config, batch=2, low=low)
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


def test_callback_sees_every_step_with_stage_and_clean_estimate():
    seen = []

    def on_step(info):
        seen.append(info)
        return info.x * 1.0

    config = RALUConfig.preset("flux-dev-7x").resolve(3.0)
    adapter, result = run(config, batch=1)
    low = adapter.low
    adapter = DiracAdapter(low, config)
    sample(adapter, torch.randn(1, 192, DIM), config, (16, 12), on_step=on_step)
    assert [i.step for i in seen] == list(range(10)) and {i.total for i in seen} == {10}
    assert [i.stage for i in seen] == [0] * 2 + [1] * 3 + [2] * 5
    assert [i.resolution for i in seen] == ["low"] * 2 + ["mixed"] * 3 + ["full"] * 5
    assert [i.index for i in seen] == [0, 1, 0, 1, 2, 0, 1, 2, 3, 4]
    assert [i.x.shape[1] for i in seen] == [48] * 2 + [48 - 4 + 16] * 3 + [192] * 5
    sigmas = [s for stage in config.stages for s in stage.sigmas[:-1]]
    assert [i.sigma for i in seen] == sigmas
    # the exact model's clean estimate is the data at every step (stage 3: the full-resolution data)
    assert torch.allclose(seen[0].denoised, low, atol=1e-4)
    assert torch.allclose(seen[-1].denoised, adapter.full, atol=1e-4)
    assert seen[-1].grid == (16, 12) and seen[0].grid == LOW


def test_callback_replacement_is_used():
    config = RALUConfig.preset("flux-dev-7x").resolve(3.0)
    adapter, _ = run(config, batch=1)
    noise = torch.randn(1, 192, DIM)
    plain = sample(DiracAdapter(adapter.low, config), noise, config, (16, 12)).latents
    shifted = sample(DiracAdapter(adapter.low, config), noise, config, (16, 12),
                     on_step=lambda info: info.x + 1 if info.step == 9 else None).latents
    assert torch.allclose(shifted, plain + 1, atol=1e-5)


@pytest.mark.parametrize("stop_after, tokens", [(1, 48), (3, 48 - 4 + 16), (6, 192)])
def test_interrupt_stops_and_returns_full_resolution_latents(stop_after, tokens):
    calls, last = [], {}

    def on_step(info):
        calls.append(info.x.shape[1])
        last["x"] = info.x
        if len(calls) == stop_after:
            raise Interrupted

    config = RALUConfig.preset("flux-dev-7x").resolve(3.0)
    adapter, _ = run(config, batch=1)
    result = sample(DiracAdapter(adapter.low, config), torch.randn(1, 192, DIM), config, (16, 12), on_step=on_step)
    assert len(calls) == stop_after and calls[-1] == tokens
    assert result.interrupted and result.latents.shape == (1, 192, DIM) and result.model_calls == stop_after
    # the last latents, brought to the full raster without renoising: every token copied to its children
    x = last["x"]
    if tokens == 48:  # stage 1: all low-res tokens
        expected = torch.empty(1, 192, DIM)
        expected[:, children_indices(torch.arange(48), LOW)] = upsample_tokens(x, config.upsample)
    elif tokens == 192:
        expected = x
    else:  # stage 2: kept tokens upsampled, the children where they are
        layout = result.layout
        kept, children = x[:, :layout.num_kept], x[:, layout.num_kept:]
        expected = torch.empty(1, 192, DIM)
        expected[:, children_indices(layout.kept[0], LOW)] = upsample_tokens(kept, config.upsample)
        expected[:, children_indices(layout.selected[0], LOW)] = children
    assert torch.equal(result.latents, expected)


def test_a_stage_that_goes_non_finite_is_named():
    config = RALUConfig.preset("flux-dev-7x").resolve(3.0)
    adapter, _ = run(config, batch=1)

    class Exploding(DiracAdapter):
        def velocity(self, x, prepared, sigma, step=None):
            v = super().velocity(x, prepared, sigma, step)
            return v * float("inf") if step.stage == 1 and step.index == 1 else v

    with pytest.raises(FloatingPointError, match=r"stage 2 \(mixed\) produced non-finite latents at its step 2 of 3"):
        sample(Exploding(adapter.low, config), torch.randn(1, 192, DIM), config, (16, 12))


def test_an_auto_config_must_be_resolved_first():
    config = RALUConfig(steps=(2, 3, 5), ends=(0.2, 0.3, 1.0), up_ratio=0.1)
    adapter, _ = run(RALUConfig.preset("flux-dev-7x"), batch=1)
    with pytest.raises(ValueError, match=r"base_shift is 'auto': resolve it first"):
        sample(adapter, torch.randn(1, 192, DIM), config, (16, 12))


def test_odd_grid_is_rejected():
    low = torch.randn(1, 48, DIM)
    config = RALUConfig.preset("flux-dev-4x").resolve(3.0)
    with pytest.raises(ValueError, match="even token grid"):
        sample(DiracAdapter(low, config), torch.randn(1, 15 * 12, DIM), config, (15, 12))


@pytest.mark.parametrize("mode", ["nearest", "block_sum"])
def test_stage_one_starts_from_the_configured_noise_downsampling(mode):
    from ralu.layout import downsample_tokens

    config = RALUConfig.preset("flux-dev-4x", noise_downsample=mode).resolve(3.0)
    adapter, result = run(config, batch=2, seed=5)
    noise = torch.randn(2, 4 * LOW[0] * LOW[1], DIM, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(adapter.starts[0], downsample_tokens(noise, (2 * LOW[0], 2 * LOW[1]), mode))
    torch.testing.assert_close(result.latents, adapter.full.expand(2, -1, -1), atol=1e-4, rtol=0)
