"""Stage noise-level grids and the renoising coefficients of RALU (docs/method.md §2, §3).

Progress ``p = 1 - σ`` runs 0 (pure noise) → 1 (clean). Every function here is pure
Python/numpy; nothing imports torch or diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

RESOLUTIONS = ("low", "mixed", "full")


def shift_sigmas(u: np.ndarray, shift: float) -> np.ndarray:
    """Scheduler shift h: ``σ = h·u / (1 + (h-1)·u)``; u and σ in [0, 1]."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def unshift_sigmas(sigma: np.ndarray | float, shift: float) -> np.ndarray | float:
    """Inverse of :func:`shift_sigmas`: ``u = σ / (h - (h-1)·σ)``."""
    return sigma / (shift - (shift - 1.0) * sigma)


def stage_sigmas(start: float, end: float, steps: int, shift: float) -> np.ndarray:
    """Noise levels of one stage, ``(steps+1,)`` float64, from progress ``start`` (s_k) to ``end`` (e_k).

    The grid is uniform in the unshifted variable u and then shifted by ``shift`` (H_k), so a
    stage from 0 to 1 reproduces the stock flow-matching schedule ``linspace(1, 0, N+1)`` shifted.
    The model is evaluated at the first ``steps`` levels; the last one is where the stage ends.
    """
    u = np.linspace(unshift_sigmas(1.0 - start, shift), unshift_sigmas(1.0 - end, shift), steps + 1)
    return shift_sigmas(u, shift)


def restart_progress(ends: tuple[float, ...], noise_ratio: float) -> tuple[float, ...]:
    """Restart progresses ``s_k`` of every stage: ``s_1 = 0``, ``s_{k+1} = e_k / (Z·(1-e_k) + e_k)``."""
    return (0.0,) + tuple(e / (noise_ratio * (1.0 - e) + e) for e in ends[:-1])


def renoise_coefficients(end: float, noise_ratio: float) -> tuple[float, float]:
    """``(α, β)`` of the renoising ``x' = β·U(x) + α·n'`` after a stage ending at progress ``end``.

    ``β = 1/(Z·(1-e) + e)`` rescales the signal to the restart progress ``s = β·e`` and
    ``α = 1 - s`` is the noise level the new stage starts from (docs/method.md §3).
    """
    beta = 1.0 / (noise_ratio * (1.0 - end) + end)
    return 1.0 - beta * end, beta


@dataclass(frozen=True)
class Stage:
    """One stage of a sampling plan.

    resolution: "low" (half latent resolution), "mixed" (low + selected full-res tokens) or "full".
    sigmas: ``(N_k+1,)`` noise levels, decreasing; the model runs at ``sigmas[:-1]``.
    alpha, beta: renoising coefficients applied on entering this stage (1, 1 for the first stage).
    """

    resolution: str
    sigmas: tuple[float, ...]
    alpha: float = 1.0
    beta: float = 1.0

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


def dynamic_shift_mu(scheduler_config: Mapping[str, Any], image_tokens: int) -> float:
    """Resolution-dependent μ of FLUX-style dynamic shifting (diffusers' ``calculate_shift``): linear in the
    image token count between ``(base_image_seq_len, base_shift)`` and ``(max_image_seq_len, max_shift)``
    of the scheduler config."""
    c = scheduler_config
    slope = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    return image_tokens * slope + c["base_shift"] - slope * c["base_image_seq_len"]


def shift_of_mu(scheduler_config: Mapping[str, Any], mu: float | None) -> float:
    """The shift h that ``σ = h·u / (1 + (h-1)·u)`` applies for a scheduler config and a run's μ:
    ``exp(μ)`` (or μ for ``time_shift_type="linear"``) with dynamic shifting, else the static ``shift``."""
    if not scheduler_config.get("use_dynamic_shifting", False) or mu is None:
        return float(scheduler_config.get("shift", 1.0))
    return math.exp(mu) if scheduler_config.get("time_shift_type", "exponential") == "exponential" else float(mu)
