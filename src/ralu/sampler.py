"""The one sampling loop: RALU's three stages, or a plain single-resolution schedule.

Written against :class:`ModelAdapter`, so it never asks which model it runs (DESIGN.md §2-§4).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, Protocol

import torch

from .config import Baseline, RALUConfig
from .layout import MixedLayout, downsample_tokens, grid_positions, low_positions, pool_tokens, upsample_tokens
from .noise import Generator, correlate, randn
from .regions import edge_scores, latent_edge_scores, select_tokens
from .schedule import Stage


class ModelAdapter(Protocol):
    """What the sampler needs from a model family (see ``ralu.adapters``)."""

    def prepare_positions(self, positions: torch.Tensor, grid: tuple[int, int], resolution: str = "full") -> Any:
        """Turn token positions into whatever the model consumes; called once per stage.

        positions: (B, S, 2) ``(row, col)`` in units of ``grid``, the (h, w) grid of the stage
        (the low-res grid in stages 1-2, the full grid in stage 3).
        resolution: the stage's ``Stage.resolution``: "low", "mixed" or "full".
        """

    def velocity(self, x: torch.Tensor, positions: Any, step: Step) -> torch.Tensor:
        """Velocity ``v = ε - x0`` for tokens x (B, S, D) at noise level ``step.sigma``.

        ``step`` also says where the loop is (stage, step within the stage), for cache hooks that
        keep per-step state; ``step.index == 0`` marks a new stage, i.e. a new token count.
        """

    def decode(self, x0: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Low-res clean tokens (B, h·w, D) on ``grid`` → images (B, 3, H, W) in [-1, 1]."""


@dataclass(frozen=True)
class Step:
    """Where the sampling loop is: stage k (0-based), step ``index`` of the stage's ``steps``,
    noise level ``sigma`` (0-d float32 tensor on the latents' device) and ``step_global`` over
    all stages. ``sigma_value`` is the same level as a Python float, known without a device sync."""

    stage: int
    index: int
    steps: int
    sigma: torch.Tensor
    step_global: int
    sigma_value: float | None = None

    @property
    def level(self) -> float:
        """σ as a Python float (for cache contexts), without reading the tensor back when possible."""
        return float(self.sigma) if self.sigma_value is None else self.sigma_value


StepCallback = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]
ProgressFactory = Callable[[int, str], ContextManager]


@dataclass
class SampleResult:
    """latents: (B, M, D) full-resolution tokens in raster order.
    layout: the stage-2 region selection (None for a single-resolution schedule).
    stage_seconds, stage_tokens, stage_steps: per stage, for reports.
    """

    latents: torch.Tensor
    layout: MixedLayout | None
    stage_seconds: tuple[float, ...]
    stage_tokens: tuple[int, ...]
    stage_steps: tuple[int, ...]

    @property
    def model_calls(self) -> int:
        return sum(self.stage_steps)


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    elif x.device.type == "mps":
        torch.mps.synchronize()


def _run_stage(
    adapter: ModelAdapter,
    x: torch.Tensor,
    positions: Any,
    stage: Stage,
    stage_index: int,
    first_step: int,
    callback: StepCallback | None,
    interrupt: Callable[[], bool] | None,
    progress: ContextManager,
    step_start: Callable[[Step], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Euler steps over one stage's σ grid; returns the final x and the last velocity."""
    sigmas = torch.tensor(stage.sigmas, dtype=torch.float32, device=x.device)
    v = None
    with progress as bar:
        for i in range(stage.steps):
            if interrupt is not None and interrupt():
                continue
            step = Step(stage_index, i, stage.steps, sigmas[i], first_step + i, stage.sigmas[i])
            if step_start is not None:
                step_start(step)
            v = adapter.velocity(x, positions, step)
            # float32 update, as FlowMatchEulerDiscreteScheduler.step
            x = (x.float() + (sigmas[i + 1] - sigmas[i]) * v.float()).to(x.dtype)
            if callback is not None:
                replaced = callback(first_step + i, sigmas[i], x)
                x = x if replaced is None else replaced
            if bar is not None:
                bar.update()
    return x, v


def _renoise(
    stay: torch.Tensor,
    parents: torch.Tensor,
    stage: Stage,
    config: RALUConfig,
    generator: Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Renoise at a resolution change (DESIGN.md §3).

    stay: (B, n, D) tokens whose resolution does not change; parents: (B, m, D) tokens
    upsampled to 4m children. Returns (stay', children') with ``x' = β·x + α·noise``; the
    children's noise is correlated inside each group of copies, fresh from ``generator``.
    """
    mode, ratio = config.upsample, config.noise_ratio
    batch, n, dim = stay.shape
    w = randn((batch, n + 4 * parents.shape[1], dim), generator, stay.device, torch.float32)
    w_stay, w_up = w.split([n, w.shape[1] - n], dim=1)
    kept_scale = math.sqrt(1.0 - 1.0 / ratio**2) if config.exact_kept_noise else 1.0
    stay = stage.beta * stay.float() + stage.alpha * kept_scale * w_stay
    up = lambda t: upsample_tokens(t, mode)  # noqa: E731
    pool = lambda t: pool_tokens(t, mode)  # noqa: E731
    children = stage.beta * up(parents.float()) + stage.alpha * correlate(w_up, up, pool, ratio)
    return stay.to(parents.dtype), children.to(parents.dtype)


def sample(
    adapter: ModelAdapter,
    noise: torch.Tensor,
    config: RALUConfig | Baseline,
    grid: tuple[int, int],
    *,
    generator: Generator = None,
    callback: StepCallback | None = None,
    interrupt: Callable[[], bool] | None = None,
    progress: ProgressFactory | None = None,
    step_start: Callable[[Step], None] | None = None,
) -> SampleResult:
    """Denoise ``noise`` with a RALU config or a single-resolution baseline.

    noise: (B, h·w, D) full-resolution tokens in raster order (σ = 1), D = C·2·2.
    grid: (h, w) full-resolution token grid, both even for RALU.
    generator: torch generator(s) for the renoising noise; a list holds one per sample.
    callback: called after every step as ``callback(step, sigma, x)`` with the global step
        index over all stages; may return a replacement for x (same shape).
    interrupt: polled before each step; True skips the remaining steps.
    progress: ``progress(total, description)`` gives a context manager with ``update()``
        for each stage (a tqdm bar); None shows nothing.
    step_start: called with the :class:`Step` before each model call (pipelines publish the
        current timestep there, for cache hooks that poll it).
    """
    stages = config.stages
    open_bar = progress or (lambda total, desc: nullcontext())
    seconds, tokens = [], []

    def run(k: int, x: torch.Tensor, positions: torch.Tensor, unit_grid: tuple[int, int]):
        stage = stages[k]
        start = time.perf_counter()
        prepared = adapter.prepare_positions(positions, unit_grid, stage.resolution)
        label = f"Stage {k + 1}/{len(stages)} ({stage.resolution}, {x.shape[1]} tokens)"
        x, v = _run_stage(adapter, x, prepared, stage, k, sum(s.steps for s in stages[:k]), callback, interrupt,
                          open_bar(stage.steps, label), step_start)
        _sync(x)
        seconds.append(time.perf_counter() - start)
        tokens.append(x.shape[1])
        return x, v

    def shared(positions: torch.Tensor) -> torch.Tensor:
        return positions.expand(noise.shape[0], -1, -1)

    if len(stages) == 1:
        x, _ = run(0, noise, shared(grid_positions(grid, noise.device)), grid)
        return SampleResult(x, None, tuple(seconds), tuple(tokens), (stages[0].steps,))

    if not isinstance(config, RALUConfig):
        raise TypeError(f"config must be a RALUConfig for a multi-stage schedule, got {type(config).__name__}")
    if grid[0] % 2 or grid[1] % 2:
        raise ValueError(f"RALU needs an even token grid to halve it, got {grid[0]}x{grid[1]}")
    low_grid = (grid[0] // 2, grid[1] // 2)

    # Stage 1: half resolution.
    x = downsample_tokens(noise, grid, config.noise_downsample)
    x, v = run(0, x, shared(low_positions(low_grid, config.token_position, x.device)), low_grid)

    # Stage 1 → 2: edges of the decoded clean estimate choose the tokens to upsample.
    select_start = time.perf_counter()
    if v is None:  # interrupted before any step
        x0 = x
    else:
        x0 = (x.float() - stages[0].sigmas[-1] * v.float()).to(x.dtype)
    if config.region_source == "latent":
        scores = latent_edge_scores(x0, low_grid)
    else:
        scores = edge_scores(adapter.decode(x0, low_grid), low_grid, config.canny_clip_unit)
    selected = select_tokens(scores, config.selected_tokens(scores.shape[1]), low_grid).to(x.device)
    layout = MixedLayout.from_selection(selected, low_grid)
    kept, parents = layout.split_low(x)
    kept, children = _renoise(kept, parents, stages[1], config, generator)
    x = torch.cat([kept, children], dim=1)
    selection_seconds = time.perf_counter() - select_start
    x, _ = run(1, x, layout.mixed_positions(config.token_position), low_grid)
    seconds[-1] += selection_seconds

    # Stage 2 → 3: everything to full resolution, back in raster order.
    kept, children = layout.split_mixed(x)
    children, kept_children = _renoise(children, kept, stages[2], config, generator)
    x, positions = layout.to_raster(kept_children, children)
    x, _ = run(2, x, positions, grid)
    steps = tuple(s.steps for s in stages)
    return SampleResult(x, layout, tuple(seconds), tuple(tokens), steps)
