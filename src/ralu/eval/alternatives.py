"""Same-cost alternatives to RALU that run through any sampler adapter: a higher-order flow solver,
the two-stage "hires-fix" family (Bottleneck Sampling), with and without renoising, and MrFlow's
whole-image-then-refine recipe.

They reuse the sampler's building blocks (noise downsampling, token upsampling, correlated renoising)
so that only the method differs from RALU, not the plumbing.
"""

from __future__ import annotations

import torch

from ..config import RALUConfig
from ..layout import MixedLayout, downsample_tokens, grid_positions, low_positions, upsample_tokens
from ..noise import Generator, randn
from ..sampler import _renoise
from ..schedule import Stage, stage_sigmas
from ..solvers import StageSolver


def _euler(adapter, x: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int], sigmas, resolution: str):
    """Plain Euler steps over ``sigmas`` (float32 update, as the sampler's)."""
    prepared = adapter.prepare_positions(positions.expand(x.shape[0], -1, -1), grid, resolution)
    solver = StageSolver("euler", sigmas, x.device)
    for i in range(len(solver.sigmas) - 1):
        x = solver.step(i, x, adapter.velocity(x, prepared, solver.grid[i]))
    return x


def solver_sample(adapter, noise: torch.Tensor, grid: tuple[int, int], steps: int, shift: float,
                  solver: str = "unipc") -> torch.Tensor:
    """The stock schedule at full resolution with diffusers' UniPC or DPM-Solver++ (flow sigmas, order 2).

    noise: (B, h·w, D) tokens at σ = 1; shift: the stock static shift. Returns clean tokens.
    """
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    kwargs = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, solver_order=2,
                  final_sigmas_type="zero")
    if solver == "unipc":
        scheduler = UniPCMultistepScheduler(**kwargs)
    elif solver == "dpm":
        scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **kwargs)
    else:
        raise ValueError(f"solver must be 'unipc' or 'dpm', got {solver!r}")
    scheduler.set_timesteps(steps, device=noise.device)
    with adapter.session():
        prepared = adapter.prepare_positions(grid_positions(grid, noise.device).expand(noise.shape[0], -1, -1), grid)
        x = noise
        for i, t in enumerate(scheduler.timesteps):
            v = adapter.velocity(x, prepared, scheduler.sigmas[i])
            x = scheduler.step(v, t, x, return_dict=False)[0]
    return x


def _half_resolution(adapter, noise: torch.Tensor, grid: tuple[int, int], sigmas, variant: RALUConfig):
    """The first part of every two-stage recipe: the full-resolution noise downsampled as in RALU's first
    stage, Euler over ``sigmas`` on the half grid. Returns the half-resolution tokens and the layout that
    upsamples all of them (call inside ``adapter.session()``)."""
    low_grid = (grid[0] // 2, grid[1] // 2)
    x = downsample_tokens(noise, grid, variant.noise_downsample)
    x = _euler(adapter, x, low_positions(low_grid, "corner", x.device)[None], low_grid, sigmas, "low")
    everything = MixedLayout.from_selection(torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device), low_grid)
    return x, everything


def two_stage_sample(adapter, noise: torch.Tensor, grid: tuple[int, int], low_steps: int, end: float,
                     full_steps: int, base_shift: float, renoise: bool, generator: Generator = None,
                     reference: RALUConfig | None = None) -> torch.Tensor:
    """Half resolution to progress ``end``, every token upsampled, then full resolution to the end.

    renoise: True puts the upsampled latent back on the flow path with RALU's correlated noise and
    restart (stage shifts and Z from NT-DM on the two stages: "hires-fix" done right); False continues
    from the same latent at noise level 1 - end with the stock shift (naive latent upsampling).
    reference: the variant fields (noise downsampling, upsampling operator) to share with a RALU run.
    Returns clean tokens (B, h·w, D).
    """
    from ..ntdm import solve_ntdm

    variant = reference or RALUConfig.preset("flux-dev-4x")
    if renoise:
        (h_low, h_full), ratio = solve_ntdm((low_steps, full_steps), (end, 1.0), base_shift)
    else:
        h_low = h_full = base_shift
    with adapter.session():
        x, everything = _half_resolution(adapter, noise, grid, stage_sigmas(0.0, end, low_steps, h_low), variant)
        if renoise:
            config = variant.replace(noise_ratio=ratio, shifts=(h_low, h_full, h_full), base_shift=base_shift,
                                     solved_shift=None)
            start = end / (ratio * (1.0 - end) + end)
            beta = 1.0 / (ratio * (1.0 - end) + end)
            stage = Stage("full", tuple(stage_sigmas(start, 1.0, full_steps, h_full)), 1.0 - beta * end, beta)
            _, children = _renoise(x[:, :0], x, stage, config, generator)
            x, positions = everything.to_raster(children, x[:, :0])
            sigmas = stage.sigmas
        else:
            x, positions = everything.to_raster(upsample_tokens(x, variant.upsample), x[:, :0])
            sigmas = stage_sigmas(end, 1.0, full_steps, base_shift)
        return _euler(adapter, x, positions[:1], grid, sigmas, "full")


def refine_sample(adapter, noise: torch.Tensor, grid: tuple[int, int], low_steps: int, sigma: float,
                  full_steps: int, base_shift: float, generator: Generator = None,
                  reference: RALUConfig | None = None) -> torch.Tensor:
    """MrFlow's recipe: a whole image at half resolution, every token upsampled, fresh noise up to ``sigma``
    (``x = (1-σ)·U(x0) + σ·ε``), then ``full_steps`` at full resolution from σ to 0.

    MrFlow (arXiv 2607.01642) upscales the decoded image with a super-resolution network and re-encodes
    it; here the latent's own upsampling operator stands in for that (on the toy's pixel latent it is
    pixel replication). The half-resolution noise is the full-resolution noise downsampled as in RALU's
    first stage, so that every method starts from the same noise. Returns clean tokens (B, h·w, D).
    """
    variant = reference or RALUConfig.preset("flux-dev-4x")
    if not 0 < sigma < 1:
        raise ValueError(f"sigma must be in (0, 1), got {sigma}")
    with adapter.session():
        x, everything = _half_resolution(adapter, noise, grid, stage_sigmas(0.0, 1.0, low_steps, base_shift), variant)
        x, positions = everything.to_raster(upsample_tokens(x, variant.upsample), x[:, :0])
        fresh = randn(tuple(x.shape), generator, x.device, torch.float32)
        x = ((1.0 - sigma) * x.float() + sigma * fresh).to(x.dtype)
        return _euler(adapter, x, positions[:1], grid, stage_sigmas(1.0 - sigma, 1.0, full_steps, base_shift), "full")
