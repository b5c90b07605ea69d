"""What generates the images of an evaluation: a RALU pipeline (any family), or the shipped toy model."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..config import Baseline, RALUConfig
from ..models import ModelSpec
from .methods import CacheSpec, Method


class CallCounter:
    """Counts the transformer's computed block-stack calls per sampler step (a cache skips some).

    A forward pre-hook on the first Linear of the last block fires only when that block really runs.
    """

    def __init__(self, transformer: torch.nn.Module):
        from ..caching import transformer_blocks

        last = transformer_blocks(transformer)[-1][1]
        leaf = next(m for m in last.modules() if isinstance(m, torch.nn.Linear))
        self.calls = 0
        self._handle = leaf.register_forward_pre_hook(lambda *_: self._count())

    def _count(self) -> None:
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


@contextmanager
def cache(transformer: torch.nn.Module, spec: CacheSpec | None, flux_coefficients: bool) -> Iterator[None]:
    """The method's temporal cache on ``transformer`` for the duration."""
    if spec is None:
        yield
        return
    if spec.kind == "teacache":
        from ..caching import (FLUX_TEACACHE_COEFFICIENTS, IDENTITY_COEFFICIENTS, TeaCacheConfig, apply_teacache,
                               remove_teacache)

        coefficients = FLUX_TEACACHE_COEFFICIENTS if flux_coefficients else IDENTITY_COEFFICIENTS
        apply_teacache(transformer, TeaCacheConfig(spec.value, coefficients))
        try:
            yield
        finally:
            remove_teacache(transformer)
        return
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    if not hasattr(transformer, "enable_cache"):
        raise ValueError(f"+{spec.kind}: {type(transformer).__name__} has no diffusers cache support (enable_cache)")
    config = (FirstBlockCacheConfig(threshold=spec.value) if spec.kind == "fbc" else
              TaylorSeerCacheConfig(cache_interval=int(spec.value), disable_cache_before_step=1,
                                    taylor_factors_dtype=torch.float32))
    transformer.enable_cache(config)
    try:
        yield
    finally:
        transformer.disable_cache()


def computed_steps(per_step: Sequence[int], stage_steps: Sequence[int]) -> list[float]:
    """Steps per stage whose block stack really ran, from the running count of computed calls after each step.

    The first step always computes (caches start empty), so it gives the calls per step (the guidance branches
    run as separate calls, or 1 when they run as one batch).
    """
    per_call = per_step[0] if per_step and per_step[0] else 1
    out, start, previous = [], 0, 0
    for n in stage_steps:
        end = per_step[start + n - 1] if n else previous
        out.append((end - previous) / per_call)
        previous, start = end, start + n
    return out


def _stage_flops(spec: ModelSpec, config: RALUConfig | Baseline, height: int, width: int,
                 computed: Sequence[float], branches: int) -> float:
    """FLOPs per image: computed steps per stage times the branches, at the stage's token count, plus decodes."""
    tokens = config.tokens_per_stage(spec.image_tokens(height, width))
    total = branches * sum(c * spec.call_flops(t) for c, t in zip(computed, tokens))
    total += spec.decode(height, width)
    if isinstance(config, RALUConfig) and config.region_source == "decoded":
        total += spec.decode(height // 2, width // 2)
    return float(total)


class PipelineRunner:
    """A RALU pipeline (``ralu.generate.pipeline_class``) at one size with fixed call arguments."""

    def __init__(self, pipe, spec: ModelSpec | None, size: tuple[int, int], call_kwargs: dict | None = None,
                 name: str = "model", branches: int | None = None):
        self.pipe, self.spec, self.size, self.name = pipe, spec, tuple(size), name
        self.call_kwargs = dict(call_kwargs or {})
        self.branches = branches if branches is not None else (spec.branches if spec is not None else 1)

    def _config(self, method: Method):
        if method.toy_only:
            raise ValueError(f"method {method.spec!r} runs on the toy model only (it drives the sampler's adapter "
                             "directly)")
        if method.kind == "plan":
            from ..planner import plan

            if self.spec is None:
                raise ValueError(f"method {method.spec!r} needs a known model for the planner's cost model")
            return plan(method.plan_target, model=self.spec, height=self.size[0], width=self.size[1]).best
        return method.config

    def generate(self, method: Method, prompts: Sequence[str], seeds: Sequence[int]) -> tuple[list[np.ndarray], dict]:
        config = self._config(method)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        counter = CallCounter(self.pipe.transformer)
        per_step = []

        def on_step(pipe, step, timestep, tensors):
            per_step.append(counter.calls)
            return {}

        try:
            with cache(self.pipe.transformer, method.cache, self.spec is not None and self.spec.family == "flux"):
                out = self.pipe(list(prompts), height=self.size[0], width=self.size[1], generator=generators,
                                config=config, output_type="np", callback_on_step_end=on_step, **self.call_kwargs)
        finally:
            counter.remove()
        images = [(np.clip(i, 0, 1) * 255).round().astype(np.uint8) for i in out.images]
        facts: dict = dict(model_calls=sum(out.stage_steps))
        if self.spec is not None:
            computed = computed_steps(per_step, out.stage_steps)
            facts["skipped"] = [n - c for n, c in zip(out.stage_steps, computed)] if method.cache else None
            facts["flops"] = _stage_flops(self.spec, config, *self.size, computed, self.branches)
        return images, facts


class ToyRunner:
    """The shipped toy model (``ralu.demo.model``), with classifier-free guidance ``guidance``."""

    def __init__(self, model=None, guidance: float | None = None, size: int = 64, bfloat16: bool = False):
        from ..demo import model as toy

        self.toy = toy
        self.model = model if model is not None else toy.load_toy()
        self.guidance = toy.DEFAULT_GUIDANCE if guidance is None else guidance
        self.size = (size, size)
        self.bfloat16 = bfloat16
        self.name = "toy"
        self.spec = toy.model_spec(dict(self.model.transformer.config), self.guidance)
        self.branches = self.spec.branches

    def config(self, method: Method):
        if method.kind == "plan":
            from ..planner import plan

            return plan(method.plan_target, model=self.spec, height=self.size[0], width=self.size[1]).best
        return method.config

    def generate(self, method: Method, prompts: Sequence[str], seeds: Sequence[int]) -> tuple[list[np.ndarray], dict]:
        from ..demo.images import to_uint8
        from .alternatives import refine_sample, solver_sample, two_stage_sample

        toy, h = self.toy, self.size[0]
        counter = CallCounter(self.model.transformer)
        try:
            with cache(self.model.transformer, method.cache, False), torch.no_grad(), \
                    torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16):
                if method.kind in ("baseline", "ralu", "plan"):
                    config = self.config(method)
                    per_step = []
                    images, result = toy.generate(self.model, prompts, seeds, config, self.guidance, h,
                                                  on_step=lambda info: per_step.append(counter.calls))
                    steps = result.stage_steps
                    computed = computed_steps(per_step, steps)
                    flops = _stage_flops(self.spec, config, h, h, computed, self.branches)
                    skipped = [n - c for n, c in zip(steps, computed)]
                    facts = dict(model_calls=sum(steps), flops=flops, skipped=skipped if method.cache else None)
                else:
                    adapter = self.model.adapter(list(prompts), self.guidance, toy.token_grid(h))
                    noise = toy.initial_noise(seeds, h)
                    grid = toy.token_grid(h)
                    if method.kind == "solver":
                        tokens = solver_sample(adapter, noise, grid, method.steps, toy.BASE_SHIFT, method.solver)
                        calls, stages = method.steps, [(method.steps, grid[0] * grid[1])]
                    else:
                        two = method.two_stage
                        if two.refine is not None:
                            tokens = refine_sample(adapter, noise, grid, two.low_steps, two.refine, two.full_steps,
                                                   toy.BASE_SHIFT, toy.renoise_generators(seeds))
                        else:
                            tokens = two_stage_sample(adapter, noise, grid, two.low_steps, two.end, two.full_steps,
                                                      toy.BASE_SHIFT, two.renoise, toy.renoise_generators(seeds))
                        calls = two.low_steps + two.full_steps
                        stages = [(two.low_steps, grid[0] * grid[1] // 4), (two.full_steps, grid[0] * grid[1])]
                    images = toy.decode_tokens(tokens, grid)
                    flops = self.branches * sum(n * self.spec.call_flops(t) for n, t in stages)
                    facts = dict(model_calls=calls, flops=float(flops), skipped=None)
        finally:
            counter.remove()
        return list(to_uint8(images)), facts

    def baseline_flops(self, steps: int = 50) -> float:
        return _stage_flops(self.spec, Baseline(steps), *self.size, [steps], self.branches)
