"""Glue shared by the RALU pipelines: schedules from the pipeline's own scheduler, checks, callbacks, outputs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from diffusers.utils import BaseOutput

from ..adapters.base import TIMESTEP_SCALE, StepInfo
from ..config import Baseline, RALUConfig
from ..sampler import Interrupted, SampleResult, sample
from ..schedule import dynamic_shift_mu, shift_of_mu

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class RALUPipelineOutput(BaseOutput):
    """images: as the stock pipeline returns them (PIL list, numpy, torch, or latents).
    regions: (B, h/2, w/2) bool map of the low-res tokens upsampled early (None for a baseline).
    stage_seconds, stage_tokens, stage_steps: wall time, image tokens and model calls per stage.
    """

    images: list | object
    regions: torch.Tensor | None = None
    stage_seconds: tuple[float, ...] = ()
    stage_tokens: tuple[int, ...] = ()
    stage_steps: tuple[int, ...] = ()


# --- schedules from the pipeline's own scheduler ---------------------------------------------------

def scheduler_sigmas(scheduler, steps: int, **timestep_kwargs) -> tuple[float, ...]:
    """The (steps+1,) σ grid that ``scheduler.set_timesteps`` makes, on a fresh copy (the pipeline's
    scheduler keeps its state). timestep_kwargs: ``sigmas=`` and/or ``mu=``, as the stock pipeline passes."""
    fresh = type(scheduler).from_config(scheduler.config)
    if "sigmas" in timestep_kwargs and timestep_kwargs["sigmas"] is not None:
        fresh.set_timesteps(device="cpu", **timestep_kwargs)
    else:
        fresh.set_timesteps(steps, device="cpu", **{k: v for k, v in timestep_kwargs.items() if k != "sigmas"})
    grid = tuple(float(s) for s in fresh.sigmas)
    if len(grid) != steps + 1:
        raise ValueError(f"the scheduler made {len(grid) - 1} steps, asked for {steps}")
    return grid


def flux_timestep_kwargs(scheduler, steps: int, image_tokens: int) -> dict:
    """FluxPipeline's (and QwenImagePipeline's) ``retrieve_timesteps`` arguments: σ = linspace(1, 1/N, N), μ."""
    config = scheduler.config
    sigmas = None if config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
    mu = dynamic_shift_mu(config, image_tokens) if config.get("use_dynamic_shifting", False) else None
    return dict(sigmas=sigmas, mu=mu)


# --- arguments ---------------------------------------------------------------------------------------

def resolve_config(config: RALUConfig | Baseline | str | None, default: str,
                   num_inference_steps: int | None = None) -> RALUConfig | Baseline:
    """``None`` → the default preset; a string → that preset; configs pass through.

    num_inference_steps: the stock pipelines' argument, accepted alone as ``Baseline(steps)``.
    """
    if num_inference_steps is not None:
        if config is not None:
            raise ValueError("pass either num_inference_steps (a baseline run) or config, not both: "
                             "RALU's steps per stage are config.steps")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        return Baseline(num_inference_steps)
    if config is None:
        return RALUConfig.preset(default)
    if isinstance(config, str):
        return RALUConfig.preset(config)
    if not isinstance(config, (RALUConfig, Baseline)):
        raise TypeError(f"config must be a RALUConfig, a Baseline or a preset name, got {type(config).__name__}")
    return config


def check_size(height: Any, width: Any, multiple: int, what: str, largest: int | None = None,
               why_largest: str = "") -> None:
    """Raise early when the image size does not fit the token grid (or exceeds ``largest`` px, because ``why_largest``)."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
            raise ValueError(f"{name} must be a positive multiple of {multiple} px {what}, got {value!r}")
        if largest is not None and value > largest:
            raise ValueError(f"{name} must be at most {largest} px for this model{why_largest}, got {value!r}")


def check_batch(batch: int, generator, latents: torch.Tensor | None, shape: tuple[int, ...], what: str) -> None:
    """Generators and user latents must match the effective batch before any work is done."""
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"generator is a list of {len(generator)} generators, but the effective batch size "
                         f"(prompts x num_images_per_prompt) is {batch}")
    if latents is not None:
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} ({what}), got {tuple(latents.shape)}")
        if not bool(torch.isfinite(latents).all()):
            raise ValueError("latents must be finite; they contain NaN or inf")


def check_number(name: str, value: Any, low: float | None = None) -> None:
    """A finite real number (at least ``low``), e.g. a guidance scale."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            low is not None and value < low):
        bound = "" if low is None else f" >= {low:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")


def effective_batch(prompt, prompt_embeds: torch.Tensor | None, num_images_per_prompt: int) -> int:
    """Prompts x images per prompt, as the stock pipelines count them (after their check_inputs)."""
    if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
    prompts = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
    return prompts * num_images_per_prompt


def check_negative_batch(negative_prompt, prompt_batch: int) -> None:
    """A list of negative prompts must have one per prompt."""
    if isinstance(negative_prompt, list) and len(negative_prompt) != prompt_batch:
        raise ValueError(f"negative_prompt has {len(negative_prompt)} entries for {prompt_batch} prompts; give one "
                         "negative prompt per prompt, or a single string")


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")


# --- the pipelines' shared part ----------------------------------------------------------------------

class RALUPipelineMixin:
    """What every RALU pipeline adds to its stock pipeline class (listed first in the bases).

    A family sets ``default_preset`` and overrides :meth:`stock_timestep_kwargs` where its stock
    pipeline computes its σ grid differently from FluxPipeline.
    """

    default_preset: str = "flux-dev-4x"
    reference_size: tuple[int, int] = (1024, 1024)  # presets' H and Z hold exactly at this size
    _ralu_adapter = None

    @classmethod
    def _stock_class(cls) -> type:
        """The stock diffusers pipeline this class extends."""
        return next(base for base in cls.__mro__[1:] if base.__module__.startswith("diffusers."))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """The stock ``from_pretrained``, after checking that the checkpoint is of this pipeline's family."""
        import os

        folder = pretrained_model_name_or_path
        index = os.path.join(str(folder), "model_index.json") if os.path.isdir(str(folder)) else None
        if index is not None and os.path.isfile(index):
            import json

            with open(index) as handle:
                name = json.load(handle).get("_class_name", "")
            stock = cls._stock_class().__name__
            if name.removeprefix("RALU") != stock:
                raise ValueError(f"{folder} holds a {name or 'pipeline without _class_name'}, not a {stock}: load it "
                                 f"with the RALU class for {name} (ralu.generate.PIPELINES), or pass a {stock} folder")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @property
    def current_timestep(self):
        """σ·1000 of the model call in progress (for cache hooks polling the pipeline), else None."""
        step = None if self._ralu_adapter is None else self._ralu_adapter.current
        return None if step is None else step.sigma * TIMESTEP_SCALE

    def stock_timestep_kwargs(self, steps: int, image_tokens: int) -> dict:
        """The ``set_timesteps`` arguments the stock pipeline uses (FluxPipeline's recipe)."""
        return flux_timestep_kwargs(self.scheduler, steps, image_tokens)

    def stock_shift(self, image_tokens: int) -> float:
        """The stock schedule's shift h at this many image tokens (dynamic shifting included)."""
        mu = self.stock_timestep_kwargs(1, image_tokens).get("mu")
        return shift_of_mu(self.scheduler.config, mu)

    def tokens_at(self, height: int, width: int) -> int:
        """Image tokens of the transformer at this size in px."""
        per_token = self.vae_scale_factor * 2
        return (height // per_token) * (width // per_token)

    def resolve_schedule(self, config: RALUConfig | Baseline, image_tokens: int) -> RALUConfig | Baseline:
        """A complete schedule for this run: a Baseline on the scheduler's own σ grid; a RALUConfig
        with base_shift "auto" matched to the scheduler's shift at this size (``RALUConfig.resolve``)."""
        if isinstance(config, Baseline):
            if config.resolved:
                return config
            sigmas = scheduler_sigmas(self.scheduler, config.steps,
                                      **self.stock_timestep_kwargs(config.steps, image_tokens))
            return Baseline(config.steps, sigmas=sigmas, name=config.name)
        reference = self.stock_shift(self.tokens_at(*self.reference_size))
        return config.resolve(self.stock_shift(image_tokens), reference)

    def run_sampler(self, adapter, latents: torch.Tensor, config: RALUConfig | Baseline, grid: tuple[int, int],
                    generator, callback_on_step_end, tensor_inputs, callback_tensors: Callable[[], dict] | None = None,
                    apply_outputs: Callable[[dict], None] | None = None) -> SampleResult:
        """Run the sampler with diffusers' callback, interrupt, progress-bar and current-timestep conventions.

        callback_tensors: () → the tensors a callback may ask for besides ``latents``; apply_outputs: takes
        the callback's returned dict, to swap in changed conditioning. By default a callback sees and may
        replace ``prompt_embeds``, the positive prompt's ``adapter.conditioning.embeds``.
        """
        tensor_inputs = list(tensor_inputs)
        if callback_tensors is None:
            def callback_tensors():
                return {"prompt_embeds": adapter.conditioning.embeds}
        if apply_outputs is None:
            def apply_outputs(outputs: dict) -> None:
                if "prompt_embeds" in outputs:
                    adapter.conditioning = replace(adapter.conditioning, embeds=outputs["prompt_embeds"])
        from tqdm.auto import tqdm

        def progress(total: int, desc: str):
            options = dict(getattr(self, "_progress_bar_config", {}) or {})
            options.setdefault("desc", desc)
            return tqdm(total=total, **options)

        def on_step(info: StepInfo):
            replaced = None
            if callback_on_step_end is not None:
                available = {"latents": info.x, **callback_tensors()}
                timestep = torch.tensor(info.sigma, dtype=torch.float32) * TIMESTEP_SCALE  # the scheduler's t
                outputs = callback_on_step_end(self, info.step, timestep,
                                               {k: available[k] for k in tensor_inputs}) or {}
                apply_outputs(outputs)
                replaced = outputs.get("latents")
            if self.interrupt:
                raise Interrupted
            return replaced

        self._ralu_adapter = adapter
        try:
            return sample(adapter, latents, config, grid, generator=generator, on_step=on_step, progress=progress)
        finally:
            self._ralu_adapter = None


def make_output(images, result: SampleResult, return_dict: bool):
    if not return_dict:
        return (images,)
    regions = None if result.layout is None else result.layout.mask()
    return RALUPipelineOutput(images=images, regions=regions, stage_seconds=result.stage_seconds,
                              stage_tokens=result.stage_tokens, stage_steps=result.stage_steps)
