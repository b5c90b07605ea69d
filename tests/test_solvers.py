"""The stage solvers against exact flows and against diffusers' own DPM-Solver++.

For Gaussian data N(μ, s²) the flow-matching velocity is known in closed form, and so is the ODE's
solution: z = (x - (1-σ)μ) / √((1-σ)²s² + σ²) stays constant along a path. That gives each solver's
order of convergence without a model: halving the step divides the error by ~2 for Euler and ~4
for a second-order method.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ralu import Baseline, RALUConfig, sample
from ralu.solvers import StageSolver

MU, S = 0.5, 0.3


def gaussian_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Exact flow-matching velocity for data N(MU, S²) per coordinate: (x - E[x0 | x]) / σ."""
    variance = (1 - sigma) ** 2 * S**2 + sigma**2
    clean = MU + (1 - sigma) * S**2 / variance * (x - (1 - sigma) * MU)
    return (x - clean) / sigma


def exact(x: torch.Tensor, sigma: float, to: float) -> torch.Tensor:
    def scale(s):
        return math.sqrt((1 - s) ** 2 * S**2 + s**2)

    return (1 - to) * MU + scale(to) * (x - (1 - sigma) * MU) / scale(sigma)


def solve(name: str, sigmas, x: torch.Tensor) -> torch.Tensor:
    solver = StageSolver(name, sigmas)
    for i in range(len(sigmas) - 1):
        x = solver.step(i, x, gaussian_velocity(x, sigmas[i]))
    return x


@pytest.mark.parametrize("name, order", [("euler", 1), ("dpmpp2m", 2), ("ab2", 2), ("unipc", 2)])
def test_each_solver_converges_at_its_order(name, order):
    x = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64)
    errors = []
    for steps in (128, 256, 512):  # the asymptotic range (DPM-Solver++ is pre-asymptotic below ~64)
        u = np.linspace(0.9, 0.15, steps + 1)
        sigmas = 3 * u / (1 + 2 * u)  # shifted as the stock schedules are: steps of varying size
        errors.append((solve(name, sigmas, x) - exact(x, sigmas[0], sigmas[-1])).abs().max().item())
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(rate - order) < 0.2 for rate in rates), (name, errors, rates)


@pytest.mark.parametrize("name", ["dpmpp2m", "ab2", "unipc"])
def test_second_order_solvers_start_with_an_euler_step_even_from_pure_noise(name):
    x = torch.linspace(-2, 2, 5, dtype=torch.float64)
    sigmas = (1.0, 0.8, 0.5)
    v = gaussian_velocity(x, 0.8)
    euler = StageSolver("euler", sigmas)
    solver = StageSolver(name, sigmas)
    first = solver.step(0, x, torch.ones_like(x))
    # equal up to Euler taking its step size as a difference of float32 σs, as the stock scheduler
    torch.testing.assert_close(first, euler.step(0, x, torch.ones_like(x)), rtol=1e-7, atol=1e-7)
    # from σ = 1 DPM-Solver++'s correction vanishes (λ = -inf); AB2's and UniPC's corrector do not
    second = solver.step(1, first, v)
    differs = not torch.allclose(second, StageSolver("euler", sigmas).step(1, first, v), rtol=1e-6, atol=1e-6)
    assert differs == (name != "dpmpp2m")


def test_unknown_solver_is_refused_by_name():
    with pytest.raises(ValueError, match="solver must be one of"):
        RALUConfig.preset("flux-dev-4x", solver="heun")
    with pytest.raises(ValueError, match="solver must be one of"):
        Baseline(10, shift=3.0, solver="rk4")


class VelocityAdapter:
    """An adapter whose velocity is the exact Gaussian flow (positions ignored)."""

    def prepare_positions(self, positions, grid, resolution="full"):
        return positions

    def velocity(self, x, prepared, sigma, step=None):
        return gaussian_velocity(x, float(sigma)).to(x.dtype)

    def decode(self, x0, grid):
        return torch.zeros(x0.shape[0], 3, 16 * grid[0], 16 * grid[1])


def _diffusers(solver: str, steps: int):
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    kwargs = dict(solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                  final_sigmas_type="zero")
    if solver == "dpmpp2m":
        scheduler = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **kwargs)
    else:
        scheduler = UniPCMultistepScheduler(solver_type="bh2", **kwargs)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("solver", ["dpmpp2m", "unipc"])
@pytest.mark.parametrize("steps", [2, 3, 9])
def test_baseline_with_a_diffusers_solver_is_that_scheduler_on_the_same_grid(solver, steps):
    scheduler = _diffusers(solver, steps)
    noise = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    x = noise
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(gaussian_velocity(x, float(scheduler.sigmas[i])), t, x, return_dict=False)[0]
    grid = tuple(float(s) for s in scheduler.sigmas)
    ours = sample(VelocityAdapter(), noise, Baseline(steps, sigmas=grid, solver=solver), (4, 4)).latents
    # float32 both; diffusers forms its coefficients from float32 σs, ours from float64: ~1e-6 apart
    torch.testing.assert_close(ours, x, rtol=2e-5, atol=2e-5)
    euler = sample(VelocityAdapter(), noise, Baseline(steps, sigmas=grid), (4, 4)).latents
    gap = (euler - x).abs().max()  # what the comparison must resolve: Euler is this far away
    assert gap > (1e-3 if steps == 9 else 1e-4 if (solver, steps) == ("unipc", 3) else 0)  # 2 steps: both Euler


def test_multistep_history_starts_afresh_in_every_stage():
    """With one call per stage a second-order solver has no history to use: it must equal Euler.
    (Carrying D or v across a renoising would make stages 2 and 3 differ.)"""
    noise = torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(1))
    config = RALUConfig.preset("flux-dev-4x", steps=(1, 1, 1)).resolve(3.0)
    outputs = {}
    for name in ("euler", "dpmpp2m", "ab2", "unipc"):
        outputs[name] = sample(VelocityAdapter(), noise, config.replace(solver=name), (8, 8),
                               generator=torch.Generator().manual_seed(2)).latents
    torch.testing.assert_close(outputs["dpmpp2m"], outputs["euler"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["ab2"], outputs["euler"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["unipc"], outputs["euler"], rtol=1e-5, atol=1e-5)
    longer = config.replace(steps=(2, 2, 2), shifts=None, noise_ratio=None)
    a, b = (sample(VelocityAdapter(), noise, longer.replace(solver=name), (8, 8),
                   generator=torch.Generator().manual_seed(2)).latents for name in ("euler", "ab2"))
    assert (a - b).abs().max() > 1e-3


def test_a_ralu_stage_with_a_solver_is_that_solver_over_the_stage_grid():
    """Stage 3 of a RALU run, rebuilt from its entry point (read back through the step callback) with a
    fresh solver over the stage's σ grid, ends where the sampler ended."""
    config = RALUConfig.preset("flux-dev-4x", solver="dpmpp2m").resolve(3.0)
    noise = torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(3))
    infos = []
    result = sample(VelocityAdapter(), noise, config, (8, 8), generator=torch.Generator().manual_seed(4),
                    on_step=lambda info: infos.append(info) if info.stage == 2 else None)
    sigmas = config.stages[2].sigmas
    first = infos[0]
    entry = first.x.double() - (first.sigma_next - first.sigma) * first.velocity.double()  # undo its Euler step
    x = solve("dpmpp2m", sigmas, entry)
    assert len(infos) == 7 == len(sigmas) - 1
    torch.testing.assert_close(result.latents.double(), x, rtol=1e-4, atol=1e-4)
    assert (solve("euler", sigmas, entry) - x).abs().max() > 1e-3


def test_ab2_integrates_the_line_through_the_last_two_velocities():
    """Uneven steps σ 1.0 → 0.8 → 0.5 with v = 1 then 3: the second step integrates the straight line
    through (1.0, 1) and (0.8, 3) from 0.8 to 0.5: -0.3·3 + (0.3²/2)·(3 - 1)/(-0.2) = -1.35."""
    solver = StageSolver("ab2", (1.0, 0.8, 0.5))
    x0 = torch.zeros(3, dtype=torch.float64)
    x1 = solver.step(0, x0, torch.full_like(x0, 1.0))
    x2 = solver.step(1, x1, torch.full_like(x0, 3.0))
    torch.testing.assert_close(x1, torch.full_like(x0, -0.2), rtol=0, atol=1e-12)
    torch.testing.assert_close(x2, torch.full_like(x0, -0.2 - 1.35), rtol=0, atol=1e-12)
