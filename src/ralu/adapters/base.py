"""What the sampler needs from a model family, and what it tells its step callback. Torch only.

A family adapter turns the sampler's token sequences into calls of one diffusers transformer:
:meth:`ModelAdapter.prepare_positions` once per stage, :meth:`ModelAdapter.velocity` once per
step, :meth:`ModelAdapter.decode` once for region selection. :class:`Step` says where the loop
is (for cache hooks); :class:`StepInfo` is the one record a step callback receives.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

TIMESTEP_SCALE = 1000.0  # diffusers' flow-matching timesteps are σ·1000


@dataclass(frozen=True)
class Conditioning:
    """Prompt conditioning of one guidance branch, as the family's transformer takes it.

    embeds: (B, T, C) text states; pooled: (B, P) pooled text or None; text_ids: (T, k) text
    positions (FLUX) or None; mask: (B, T) bool text mask or None; extras: other per-family inputs.
    A pipeline replaces the whole object (``dataclasses.replace``) when a step callback changes
    the embeddings.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    text_ids: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.embeds.shape[0]


@dataclass(frozen=True)
class Step:
    """Where the sampling loop is: stage k (0-based), step ``index`` of the stage's ``steps``,
    ``step_global`` over all stages, and the noise level ``sigma`` (0-d float32 tensor on the
    latents' device) with ``sigma_value``, the same level as a Python float (no device sync)."""

    stage: int
    index: int
    steps: int
    sigma: torch.Tensor
    step_global: int
    sigma_value: float

    @property
    def starts_stage(self) -> bool:
        """True at the first step of a stage: a new token count, so caches must forget."""
        return self.index == 0


@dataclass(frozen=True)
class StepInfo:
    """What a step callback receives after every model call (k-diffusion's callback dict, typed).

    stage: 0-based stage; resolution: "low", "mixed" or "full"; index / steps: the step within
    the stage; step / total: over all stages. sigma → sigma_next: the noise levels of this step.
    x: (B, S, D) latents after the step; denoised: (B, S, D) the clean estimate
    ``x_σ - σ·v`` the model made at this step; velocity: (B, S, D) that v.
    grid: the stage's token grid (the low grid in stages 1-2); positions: (B, S, 2) token
    positions in units of ``grid``.
    """

    stage: int
    resolution: str
    index: int
    steps: int
    step: int
    total: int
    sigma: float
    sigma_next: float
    x: torch.Tensor
    denoised: torch.Tensor
    velocity: torch.Tensor
    grid: tuple[int, int]
    positions: torch.Tensor


StepCallback = Callable[[StepInfo], "torch.Tensor | None"]


class ModelAdapter(Protocol):
    """What the sampler needs from a model family (implementations: ``ralu.adapters.<family>``)."""

    def prepare_positions(self, positions: torch.Tensor, grid: tuple[int, int], resolution: str = "full") -> Any:
        """Token positions (B, S, 2) ``(row, col)`` in units of ``grid`` → what the model consumes.

        Called once per stage. grid: the stage's (h, w) grid, the low grid in stages 1-2 (children
        at half steps), the full grid in stage 3. resolution: "low", "mixed" or "full".
        """

    def velocity(self, x: torch.Tensor, positions: Any, sigma: torch.Tensor | float,
                 step: Step | None = None) -> torch.Tensor:
        """Velocity ``v = ε - x0`` (guidance applied) of tokens x (B, S, D) at noise level sigma.

        step: where the loop is, for cache hooks; None outside a sampling loop.
        """

    def decode(self, x0: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Clean tokens (B, h·w, D) on ``grid`` → images (B, 3, H, W) in [-1, 1]."""

    def session(self) -> AbstractContextManager:
        """Context held around a whole sampling run (e.g. attention processors installed for it)."""
