"""How a stage moves along its σ grid: Euler, or a second-order multistep method (no extra model calls).

Every stage of a RALU schedule is short (2-7 calls), and each resolution change renoises the latent,
so a multistep method starts afresh in every stage: its first step there is an Euler step, and the
history it keeps never crosses a renoising.

- ``"euler"``: the stock flow-matching scheduler's step, ``x += (σ' - σ)·v`` (the paper's sampler).
- ``"dpmpp2m"``: DPM-Solver++(2M) for flow matching (diffusers' ``DPMSolverMultistepScheduler`` with
  ``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``prediction_type="flow_prediction"``): an
  exponential integrator on the clean estimate ``D = x - σ·v`` in ``λ = log((1-σ)/σ)``; the step to
  σ = 0 is first order, as diffusers' ``final_sigmas_type="zero"``. At σ = 1 (λ = -∞) its correction
  term vanishes, so a stage that starts from pure noise gains from its third step on.
- ``"ab2"``: Adams-Bashforth 2 on the velocity in σ with variable steps,
  ``x += h·v + h²/(2h_prev)·(v - v_prev)``: second order from a stage's second step, no singularity at
  σ = 1.
- ``"unipc"``: UniPC (diffusers' ``UniPCMultistepScheduler``, ``solver_type="bh2"``, order 2, data
  prediction, flow sigmas): a multistep predictor on D, and a corrector that reuses the next call's D
  to correct the point it was taken at. The corrector works from a stage's second call on, also from
  σ = 1; the last step of a stage is first order, as diffusers' ``lower_order_final``.

All updates run in float32 (float64 for float64 inputs) and are cast back, as diffusers' schedulers do.
"""

from __future__ import annotations

import math

import torch

from .config import SOLVERS


def _lam(sigma: float) -> float:
    """λ = log(α/σ) with α = 1 - σ (the flow-matching path); -inf at σ = 1, +inf at σ = 0."""
    if sigma >= 1.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log(1.0 - sigma) - math.log(sigma)


class StageSolver:
    """One stage's stepper over ``sigmas`` (its σ grid, first to last): ``step(i, x, v)`` → x at σ_{i+1},
    where v is the model's velocity at x (and, for UniPC, x is corrected first)."""

    def __init__(self, name: str, sigmas, device: torch.device | str = "cpu"):
        if name not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {name!r}")
        self.name, self.sigmas = name, tuple(float(s) for s in sigmas)
        self.lam = tuple(_lam(s) for s in self.sigmas)
        # Euler's step size as the stock scheduler computes it: a difference of float32 σs
        self.grid = torch.tensor(self.sigmas, dtype=torch.float32, device=device)
        self.history: list[torch.Tensor] = []  # the last steps' D (dpmpp2m, unipc) or v (ab2), newest last
        self.last: tuple[torch.Tensor, int] | None = None  # unipc: the corrected x of the last step, its order

    def step(self, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 inputs
        x32, v32 = x.to(wide), v.to(wide)
        if self.name == "euler":
            return (x32 + (self.grid[i + 1] - self.grid[i]) * v32).to(x.dtype)
        out = getattr(self, "_" + self.name)(i, x32, v32)
        self.history = self.history[-2:]
        return out.to(x.dtype)

    def _ab2(self, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = self.sigmas
        out = x + (s[i + 1] - s[i]) * v
        if self.history:
            h, h_prev = s[i + 1] - s[i], s[i] - s[i - 1]
            out = out + (h * h / (2.0 * h_prev)) * (v - self.history[-1])
        self.history.append(v)
        return out

    def _dpmpp2m(self, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint), in its order of operations."""
        s0, s1 = self.sigmas[i], self.sigmas[i + 1]
        d0 = x - s0 * v
        if s1 <= 0.0:  # the step to σ = 0: first order, which lands on D
            out = d0
        else:
            h = self.lam[i + 1] - self.lam[i]
            coefficient = (1.0 - s1) * (math.exp(-h) - 1.0)
            out = (s1 / s0) * x - coefficient * d0
            if self.history and math.isfinite(self.lam[i] - self.lam[i - 1]):
                r0 = (self.lam[i] - self.lam[i - 1]) / h
                out = out - 0.5 * coefficient * ((1.0 / r0) * (d0 - self.history[-1]))
        self.history.append(d0)
        return out

    def _unipc(self, i: int, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """diffusers' UniPCMultistepScheduler (bh2, order 2, data prediction): correct x with the new D (UniC),
        then predict (UniP); the last step of a stage is first order, as its ``lower_order_final``."""
        d = x - self.sigmas[i] * v
        if self.last is not None:  # UniC: x was predicted from the last corrected x; v was taken at x
            last_x, order = self.last
            x = self._unipc_update(i - 1, last_x, self.history, order, corrector=d)
        self.history.append(d)
        order = 1 if (i == len(self.sigmas) - 2 or len(self.history) < 2) else 2
        self.last = (x, order)
        return self._unipc_update(i, x, self.history, order)

    def _unipc_update(self, i: int, x: torch.Tensor, history: list, order: int,
                      corrector: torch.Tensor | None = None) -> torch.Tensor:
        """From x at σ_i with D_i = history[-1] (and D_{i-1} = history[-2] at order 2) to σ_{i+1}; with
        ``corrector`` (D at the predicted x_{i+1}) the UniC update, else UniP. A history point at σ = 1
        (λ = -∞) carries no information: the update takes its limit there."""
        s0, s1 = self.sigmas[i], self.sigmas[i + 1]
        m0 = history[-1]
        hh = -(self.lam[i + 1] - self.lam[i])
        h_phi_1 = math.expm1(hh)
        b_h = h_phi_1  # bh2
        out = (s1 / s0) * x - (1.0 - s1) * h_phi_1 * m0
        rk = (self.lam[i - 1] - self.lam[i]) / -hh if order == 2 else math.nan
        if corrector is None:
            if order == 2 and math.isfinite(rk):
                out = out - (1.0 - s1) * b_h * 0.5 * ((history[-2] - m0) / rk)
            return out
        if order == 1:
            return out - (1.0 - s1) * b_h * 0.5 * (corrector - m0)
        phi = h_phi_1 / hh - 1.0
        b0 = phi / b_h
        b1 = (phi / hh - 0.5) * 2.0 / b_h
        if not math.isfinite(rk):  # the limit rk → -∞ of the 2x2 solve below
            return out - (1.0 - s1) * b_h * b0 * (corrector - m0)
        rho1 = (b1 - b0 * 1.0) / (rk - 1.0)  # R = [[1, 1], [rk, 1]], R·ρ = (b0, b1)
        rho2 = b0 - rho1
        return out - (1.0 - s1) * b_h * (rho1 * ((history[-2] - m0) / rk) + rho2 * (corrector - m0))
