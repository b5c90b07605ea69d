"""The one sampling loop: RALU's three stages, or a plain single-resolution schedule.

Written against :class:`~ralu.adapters.base.ModelAdapter`, so it never asks which model it runs
(docs/method.md: stages, renoising, region selection).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from .adapters.base import ModelAdapter, Step, StepCallback, StepInfo
from .config import Baseline, RALUConfig
from .layout import CHILDREN, MixedLayout, downsample_tokens, grid_positions, low_positions, pool_tokens, upsample_tokens
from .noise import Generator, correlate, randn
from .regions import edge_scores, latent_edge_scores, select_tokens
from .schedule import Stage
from .solvers import StageSolver

ProgressFactory = Callable[[int, str], AbstractContextManager]


class Interrupted(Exception):
    """Raised by a step callback to end sampling early; :func:`sample` returns what it has."""


@dataclass
class SampleResult:
    """latents: (B, M, D) full-resolution tokens in raster order.
    layout: the stage-2 region selection (None for a single-resolution schedule or an interruption before it).
    stage_seconds, stage_tokens, stage_steps: per stage run, for reports.
    interrupted: True when a callback stopped the run; the latents are then the last state,
        brought to full resolution by upsampling without renoising.
    """

    latents: torch.Tensor
    layout: MixedLayout | None
    stage_seconds: tuple[float, ...]
    stage_tokens: tuple[int, ...]
    stage_steps: tuple[int, ...]
    interrupted: bool = False

    @property
    def model_calls(self) -> int:
        return sum(self.stage_steps)


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    elif x.device.type == "mps":
        torch.mps.synchronize()


def _renoise(stay: torch.Tensor, parents: torch.Tensor, stage: Stage, config: RALUConfig,
             generator: Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Renoise at a resolution change (docs/method.md, "Renoising").

    stay: (B, n, D) tokens whose resolution does not change; parents: (B, m, D) tokens
    upsampled to 4m children. Returns (stay', children') with ``x' = β·x + α·noise``; the
    children's noise is correlated inside each group of copies, fresh from ``generator``.
    """
    mode, ratio = config.upsample, config.noise_ratio
    batch, n, dim = stay.shape
    w = randn((batch, n + CHILDREN * parents.shape[1], dim), generator, stay.device, torch.float32)
    w_stay, w_up = w.split([n, w.shape[1] - n], dim=1)
    kept_scale = math.sqrt(1.0 - 1.0 / ratio**2) if config.exact_kept_noise else 1.0
    stay = stage.beta * stay.float() + stage.alpha * kept_scale * w_stay

    def up(t: torch.Tensor) -> torch.Tensor:
        return upsample_tokens(t, mode)

    def pool(t: torch.Tensor) -> torch.Tensor:
        return pool_tokens(t, mode)

    children = stage.beta * up(parents.float()) + stage.alpha * correlate(w_up, up, pool, ratio)
    return stay.to(parents.dtype), children.to(parents.dtype)


class _Run:
    """The state of one :func:`sample` call: stages, timings, callback and progress bars."""

    def __init__(self, adapter: ModelAdapter, stages: tuple[Stage, ...], on_step: StepCallback | None,
                 progress: ProgressFactory | None, solver: str = "euler"):
        self.adapter, self.stages, self.on_step, self.solver = adapter, stages, on_step, solver
        self.progress = progress or (lambda total, desc: nullcontext())
        self.total = sum(s.steps for s in stages)
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.steps: list[int] = []
        self.x: torch.Tensor | None = None  # the latest latents, for an interrupted run

    def stage(self, k: int, x: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int],
              extra_seconds: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps over stage k's σ grid (Euler, or the config's multistep solver started afresh); returns the
        final x and the last clean estimate."""
        stage = self.stages[k]
        start = time.perf_counter() - extra_seconds
        prepared = self.adapter.prepare_positions(positions, grid, stage.resolution)
        solver = StageSolver(self.solver, stage.sigmas, x.device)
        sigmas = solver.grid  # float32 σs on the device, as the stock scheduler's
        first = sum(s.steps for s in self.stages[:k])
        bad = torch.zeros(stage.steps, dtype=torch.bool, device=x.device)  # read once, at the stage's end
        denoised = x
        label = f"Stage {k + 1}/{len(self.stages)} ({stage.resolution}, {x.shape[1]} tokens)"
        done = 0
        try:
            with self.progress(stage.steps, label) as bar:
                for i in range(stage.steps):
                    step = Step(k, i, stage.steps, sigmas[i], first + i, stage.sigmas[i])
                    v = self.adapter.velocity(x, prepared, sigmas[i], step)
                    if self.on_step is not None or i == stage.steps - 1:  # for the callback and region selection
                        denoised = (x.float() - sigmas[i] * v.float()).to(x.dtype)
                    x = solver.step(i, x, v)  # float32 update, as FlowMatchEulerDiscreteScheduler.step
                    bad[i] = ~torch.isfinite(x).all()
                    done = i + 1
                    if bar is not None:
                        bar.update()
                    if self.on_step is not None:
                        info = StepInfo(k, stage.resolution, i, stage.steps, first + i, self.total, stage.sigmas[i],
                                        stage.sigmas[i + 1], x, denoised, v, tuple(grid), positions)
                        self.x = x
                        replaced = self.on_step(info)
                        x = x if replaced is None else replaced
                    self.x = x
        finally:
            self.steps.append(done)
            self.tokens.append(x.shape[1])
            _sync(x)
            self.seconds.append(time.perf_counter() - start)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise FloatingPointError(f"stage {k + 1} ({stage.resolution}) produced non-finite latents at its step "
                                     f"{i + 1} of {stage.steps} (step {first + i + 1} overall); check the inputs "
                                     f"(latents, guidance) and the dtype")
        return x, denoised


def _to_full(x: torch.Tensor, config: RALUConfig, layout: MixedLayout | None, low_grid: tuple[int, int]) -> torch.Tensor:
    """Low-res (no layout) or mixed tokens → full-resolution raster tokens, upsampled without renoising."""
    if layout is None:
        everything = torch.arange(low_grid[0] * low_grid[1], device=x.device).expand(x.shape[0], -1)
        layout = MixedLayout.from_selection(everything[:, :0], low_grid)
        return layout.to_raster(upsample_tokens(x, config.upsample), x[:, :0])[0]
    kept, children = layout.split_mixed(x)
    return layout.to_raster(upsample_tokens(kept, config.upsample), children)[0]


def sample(
    adapter: ModelAdapter,
    noise: torch.Tensor,
    config: RALUConfig | Baseline,
    grid: tuple[int, int],
    *,
    generator: Generator = None,
    on_step: StepCallback | None = None,
    progress: ProgressFactory | None = None,
) -> SampleResult:
    """Denoise ``noise`` with a RALU config or a single-resolution baseline.

    noise: (B, h·w, D) full-resolution tokens in raster order (σ = 1), D = C·2·2.
    config: a RALUConfig with a numeric ``base_shift`` (``config.resolve(shift)`` for "auto") or
        a Baseline with its σ grid or shift.
    grid: (h, w) full-resolution token grid, both even for RALU.
    generator: torch generator(s) for the renoising noise; a list holds one per sample.
    on_step: called after every model call with a :class:`StepInfo`; may return a replacement for
        ``info.x`` (same shape), or raise :class:`Interrupted` to stop.
    progress: ``progress(total, description)`` gives a context manager with ``update()``
        for each stage (a tqdm bar); None shows nothing.
    """
    if isinstance(config, RALUConfig) and not config.resolved:
        raise ValueError("config.base_shift is 'auto': resolve it first with config.resolve(<the scheduler's shift>) "
                         "(the pipelines do this from their scheduler)")
    if noise.dim() != 3 or noise.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"noise must be (batch, {grid[0]}x{grid[1]} tokens, channels), got {tuple(noise.shape)}")
    stages = config.stages
    run = _Run(adapter, stages, on_step, progress, config.solver)
    session = getattr(adapter, "session", None)

    def result(x, layout=None, interrupted=False):
        return SampleResult(x, layout, tuple(run.seconds), tuple(run.tokens), tuple(run.steps), interrupted)

    def shared(positions: torch.Tensor) -> torch.Tensor:
        return positions.expand(noise.shape[0], -1, -1)

    with session() if session is not None else nullcontext():
        if len(stages) == 1:
            try:
                x, _ = run.stage(0, noise, shared(grid_positions(grid, noise.device)), grid)
            except Interrupted:
                return result(run.x, interrupted=True)
            return result(x)

        if not isinstance(config, RALUConfig):
            raise TypeError(f"config must be a RALUConfig for a multi-stage schedule, got {type(config).__name__}")
        if grid[0] % 2 or grid[1] % 2:
            raise ValueError(f"RALU needs an even token grid to halve it, got {grid[0]}x{grid[1]}")
        low_grid = (grid[0] // 2, grid[1] // 2)
        layout = None
        x = downsample_tokens(noise, grid, config.noise_downsample)
        try:
            # Stage 1: half resolution.
            x, denoised = run.stage(0, x, shared(low_positions(low_grid, config.token_position, x.device)), low_grid)

            # Stage 1 → 2: edges of the clean estimate choose the tokens to upsample.
            select_start = time.perf_counter()
            if config.region_source == "latent":
                scores = latent_edge_scores(denoised, low_grid)
            else:
                scores = edge_scores(adapter.decode(denoised, low_grid), low_grid, config.canny_clip_unit)
            selected = select_tokens(scores, config.selected_tokens(scores.shape[1]), low_grid).to(x.device)
            layout = MixedLayout.from_selection(selected, low_grid)
            kept, parents = layout.split_low(x)
            kept, children = _renoise(kept, parents, stages[1], config, generator)
            x = torch.cat([kept, children], dim=1)
            x, _ = run.stage(1, x, layout.mixed_positions(config.token_position), low_grid,
                             extra_seconds=time.perf_counter() - select_start)

            # Stage 2 → 3: everything to full resolution, back in raster order.
            kept, children = layout.split_mixed(x)
            children, kept_children = _renoise(children, kept, stages[2], config, generator)
            x, positions = layout.to_raster(kept_children, children)
            x, _ = run.stage(2, x, positions, grid)
        except Interrupted:
            stage = len(run.steps) - 1  # the stage that was running
            x = run.x
            if stage < 2:
                x = _to_full(x, config, layout if stage == 1 else None, low_grid)
            return result(x, layout, interrupted=True)
        return result(x, layout)
