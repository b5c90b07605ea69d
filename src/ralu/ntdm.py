"""NT-DM: choose per-stage shifts H and the noise ratio Z of a RALU schedule (docs/method.md §5).

On progress t ∈ [0, 1] (0 = pure noise, 1 = clean), with base shift h0:

- ``pdf(t,h) = h / (1 + (h-1)t)²``, ``cdf(t,h) = h·t / (1 + (h-1)t)``,
  ``trunc(t,h,a,b) = pdf(t,h) / (cdf(b,h) - cdf(a,h))`` on [a, b], 0 elsewhere;
- target ``P*(t) ∝ pdf(t,h0) + Σ_{k<K} (e_k - s_{k+1})·trunc(t,h0,s_{k+1},e_k)``;
- achieved ``P(t) = Σ_k N_k·trunc(t,H_k,s_k,e_k) / Σ_k N_k``;

and (H_1..H_K, Z) minimise the Jensen-Shannon distance between P* and P.

Numerical variant (chosen because it reproduces both FLUX reference results of docs/method.md §5
to 1e-3; other grids or minimisers land up to ~0.1 away on H_1 and Z, because the objective
is flat along H_1 and piecewise in Z, where grid points cross the stage boundaries):

- grid: ``numpy.linspace(0, 1, 1000)``, both endpoints included. Excluding them, or
  ``arange(1000)/1000``, or midpoints moves the 7x result by up to 0.1.
- ``trunc`` is nonzero on the closed interval ``a <= t <= b``. The open interval gives
  Z ≈ 5.88 instead of 6.317 for the 4x preset.
- the target is divided by ``1 + Σ (e_k - s_{k+1})`` and the achieved density by
  ``Σ N_k``. Then ``scipy.spatial.distance.jensenshannon``, natural log, which normalises
  both vectors by their sums again. Mathematically the target's divisor has no effect, but
  it changes the rounding and so the path of the finite-difference minimiser. Without it the
  7x preset gives H = (8.141, 2.856, 2.193), the value in the §6 table of the reference
  script, instead of §5's (8.146, 2.855, 2.193). Both are the same valley: the objective
  differs by 2e-7.
- ``scipy.optimize.minimize`` with bounds and default method (L-BFGS-B), default tolerances
  and finite-difference gradients, from ``(3, …, 3, 2)``. TNC, SLSQP, Powell, Nelder-Mead and
  trust-constr all stop elsewhere.

That recipe is the ``"reference"`` method. The objective is flat along H_1 and piecewise in Z, so
one bounded L-BFGS-B run from one start stops wherever rounding sends it, often well above the
minimum (on the FLUX 4x schedule 0.01746 against 0.01687). The ``"robust"`` method (the default)
runs the reference recipe, then scans Z over a fixed geometric grid with H minimised at each Z
(warm-started along the scan), polishes the two best scan points in all variables, and returns
the best of these by the objective, the reference point on ties: deterministic, never worse than
the reference, about 0.15 s. docs/planner.md has the measured gains.

Checked with scipy 1.17.1 and numpy 2.4.6.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import numpy as np

from .schedule import restart_progress

GRID_POINTS = 1000
_GRID = np.linspace(0.0, 1.0, GRID_POINTS)
SHIFT_BOUNDS = (0.5, 10.0)
NOISE_RATIO_BOUNDS = (2.0, 100.0)
_START_SHIFT = 3.0
_START_NOISE_RATIO = 2.0
METHODS = ("robust", "reference")  # ralu.config.NTDM_METHODS
_SCAN = np.geomspace(2.0, 40.0, 20)  # noise ratios of the robust method's scan
_POLISHED = 2  # scan points polished in all variables


def _pdf(t: np.ndarray, h: float) -> np.ndarray:
    """Density of progress under a shift-h schedule: ``h / (1 + (h-1)t)²``."""
    return h / (1.0 + (h - 1.0) * t) ** 2


def _cdf(t: float, h: float) -> float:
    """CDF of :func:`_pdf`: ``h·t / (1 + (h-1)t)``."""
    return h * t / (1.0 + (h - 1.0) * t)


def _trunc(t: np.ndarray, h: float, a: float, b: float) -> np.ndarray:
    """``pdf(t,h)`` truncated to the closed interval [a, b] and renormalised."""
    inside = (t >= a) & (t <= b)
    return np.where(inside, _pdf(t, h) / (_cdf(b, h) - _cdf(a, h)), 0.0)


def _densities(
    steps: Sequence[float],
    ends: Sequence[float],
    shifts: Sequence[float],
    noise_ratio: float,
    base_shift: float,
    grid: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Target P* and achieved P on ``grid``, each ``(len(grid),)``."""
    starts = restart_progress(tuple(ends), noise_ratio)
    target = _pdf(grid, base_shift)
    for e, s in zip(ends[:-1], starts[1:]):
        target = target + (e - s) * _trunc(grid, base_shift, s, e)
    target = target / (1.0 + sum(e - s for e, s in zip(ends[:-1], starts[1:])))
    achieved = sum(n * _trunc(grid, h, s, e) for n, h, s, e in zip(steps, shifts, starts, ends))
    achieved = achieved / sum(steps)
    return target, achieved


def ntdm_objective(
    shifts: Sequence[float],
    noise_ratio: float,
    steps: Sequence[int],
    ends: Sequence[float],
    base_shift: float = 3.0,
) -> float:
    """Jensen-Shannon distance between the target P* and achieved P on the 1000-point grid.

    shifts: H_k, one per stage; noise_ratio: Z; steps: N_k; ends: e_k; base_shift: h0.
    Inputs are not validated: this is what the solver minimises.
    """
    from scipy.spatial.distance import jensenshannon

    target, achieved = _densities(steps, ends, shifts, noise_ratio, base_shift, _GRID)
    return float(jensenshannon(target, achieved))


def _check(
    steps: Sequence[int], ends: Sequence[float], base_shift: float
) -> tuple[tuple[int, ...], tuple[float, ...], float]:
    """Validate the solver's inputs and return them as plain tuples of int / float."""
    steps_t, ends_t = tuple(steps), tuple(ends)
    def is_count(n: object) -> bool:
        return isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1

    if not all(is_count(n) for n in steps_t):
        raise ValueError(f"steps must be integers >= 1, got {steps_t}")
    if len(steps_t) < 2:
        raise ValueError(f"steps must have at least 2 stages, got {steps_t}")
    if len(ends_t) != len(steps_t):
        raise ValueError(
            f"ends must have one entry per stage (len(steps) = {len(steps_t)}), got {ends_t}"
        )
    if not all(isinstance(e, numbers.Real) and not isinstance(e, bool) for e in ends_t):
        raise ValueError(f"ends must be real numbers in (0, 1], got {ends_t}")
    ends_f = tuple(float(e) for e in ends_t)
    increasing = all(a < b for a, b in zip((0.0,) + ends_f, ends_f))
    if not increasing or ends_f[-1] != 1.0:
        raise ValueError(f"ends must increase strictly in (0, 1] and end at 1.0, got {ends_t}")
    if (
        not isinstance(base_shift, numbers.Real)
        or isinstance(base_shift, bool)
        or not math.isfinite(base_shift)
        or not base_shift > 0
    ):
        raise ValueError(f"base_shift must be a finite number > 0, got {base_shift!r}")
    return tuple(int(n) for n in steps_t), ends_f, float(base_shift)


@functools.lru_cache(maxsize=1024)
def _solve(steps: tuple[int, ...], ends: tuple[float, ...], base_shift: float,
           method: str) -> tuple[tuple[float, ...], float]:
    from scipy.optimize import minimize

    k = len(steps)
    bounds = [SHIFT_BOUNDS] * k + [NOISE_RATIO_BOUNDS]

    def objective(x: np.ndarray) -> float:
        return ntdm_objective(x[:k], x[k], steps, ends, base_shift)

    reference = minimize(objective, np.array([_START_SHIFT] * k + [_START_NOISE_RATIO]), bounds=bounds)
    # scipy's reported .fun can differ from the objective at its returned .x: compare recomputed values
    best_value, best = objective(reference.x), reference.x
    if method == "robust":
        shifts, scan = np.full(k, _START_SHIFT), []
        for ratio in _SCAN:
            fixed = minimize(lambda h: ntdm_objective(h, ratio, steps, ends, base_shift), shifts,
                             bounds=[SHIFT_BOUNDS] * k)
            shifts = fixed.x
            scan.append((fixed.fun, np.append(fixed.x, ratio)))
        scan.sort(key=lambda item: item[0])
        for _, start in scan[:_POLISHED]:
            polished = minimize(objective, start, bounds=bounds)
            value = objective(polished.x)
            if value < best_value:
                best_value, best = value, polished.x
    return tuple(float(h) for h in best[:k]), float(best[k])


def solve_ntdm(
    steps: Sequence[int], ends: Sequence[float], base_shift: float = 3.0, method: str = "robust"
) -> tuple[tuple[float, ...], float]:
    """Per-stage shifts H and noise ratio Z (paper 1/√c) that minimise the NT-DM objective.

    steps: N_k, model calls per stage, K >= 2 stages; ends: e_k, stage-end progresses,
    increasing strictly in (0, 1] with e_K = 1.0; base_shift: h0 of the stock schedule.
    method: "robust" (default: never worse than "reference") or "reference" (the published
    script's recipe, which the published presets come from).
    Returns ``((H_1, …, H_K), Z)``, H_k ∈ [0.5, 10], Z ∈ [2, 100]. Results are cached, so equal
    inputs return the identical tuple.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return _solve(*_check(steps, ends, base_shift), method)
