"""Glue shared by the RALU pipelines: config resolution, checks, progress bars, outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from ..config import Baseline, RALUConfig
from ..sampler import SampleResult

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class RALUPipelineOutput(BaseOutput):
    """images: as the stock pipeline returns them (PIL list, numpy, torch, or packed latents).
    regions: (B, h/2, w/2) bool map of the low-res tokens upsampled early (None for a baseline).
    stage_seconds, stage_tokens, stage_steps: wall time, image tokens and model calls per stage.
    """

    images: list | object
    regions: torch.Tensor | None = None
    stage_seconds: tuple[float, ...] = ()
    stage_tokens: tuple[int, ...] = ()
    stage_steps: tuple[int, ...] = ()


def resolve_config(config: RALUConfig | Baseline | str | None, default: str,
                   num_inference_steps: int | None = None) -> RALUConfig | Baseline:
    """``None`` → the default preset; a string → that preset; configs pass through.

    num_inference_steps: the stock pipelines' argument, accepted alone as ``Baseline(steps)``.
    """
    if num_inference_steps is not None:
        if config is not None:
            raise ValueError("pass either num_inference_steps (a baseline run) or config, not both: "
                             "RALU's steps per stage are config.steps")
        return Baseline(num_inference_steps)
    if config is None:
        return RALUConfig.preset(default)
    if isinstance(config, str):
        return RALUConfig.preset(config)
    if not isinstance(config, (RALUConfig, Baseline)):
        raise TypeError(f"config must be a RALUConfig, a Baseline or a preset name, got {type(config).__name__}")
    return config


def check_size(height: int, width: int, multiple: int, what: str) -> None:
    """Raise early when the image size does not fit the token grid."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % multiple:
            raise ValueError(f"{name} must be a positive multiple of {multiple} px {what}, got {value!r}")


def check_batch(batch: int, generator, latents: torch.Tensor | None, shape: tuple[int, ...]) -> None:
    """Generators and user latents must match the effective batch size before any work is done."""
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"generator is a list of {len(generator)} generators, but the effective batch size "
                         f"(prompts x num_images_per_prompt) is {batch}")
    if latents is not None and tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape} (batch, image tokens, channels), got {tuple(latents.shape)}")


def effective_batch(prompt, prompt_embeds: torch.Tensor | None, num_images_per_prompt: int) -> int:
    """Prompts x images per prompt, as the stock pipelines count them (after their check_inputs)."""
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
    prompts = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
    return prompts * num_images_per_prompt


def step_callback(pipe, callback, tensor_inputs: list[str], tensors, update):
    """The sampler's per-step hook in diffusers' ``callback_on_step_end(pipe, step, timestep, kwargs)`` form.

    tensors: () → the tensors a callback may ask for besides ``latents`` (prompt embeddings);
    update: takes the callback's returned dict, to swap in changed embeddings.
    """

    def on_step(step: int, sigma: torch.Tensor, x: torch.Tensor):
        if callback is None:
            return None
        available = {"latents": x, **tensors()}
        outputs = callback(pipe, step, sigma * 1000, {k: available[k] for k in tensor_inputs}) or {}
        update(outputs)
        return outputs.get("latents")

    return on_step


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")


def resolve_baseline_shift(config: RALUConfig | Baseline, scheduler_config, image_tokens: int) -> RALUConfig | Baseline:
    """Give a Baseline without shift the scheduler's own shift for this resolution (as the stock pipeline)."""
    if not isinstance(config, Baseline) or config.shift is not None:
        return config
    if scheduler_config.get("use_dynamic_shifting", False):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(image_tokens, scheduler_config.get("base_image_seq_len", 256),
                             scheduler_config.get("max_image_seq_len", 4096), scheduler_config.get("base_shift", 0.5),
                             scheduler_config.get("max_shift", 1.15))
        return Baseline(config.steps, math.exp(mu), name=config.name)
    return Baseline(config.steps, float(scheduler_config.get("shift", 1.0)), name=config.name)


def stage_progress(pipe):
    """Progress-bar factory for the sampler: one tqdm bar per stage with the pipeline's bar config."""

    def factory(total: int, desc: str):
        options = dict(getattr(pipe, "_progress_bar_config", {}) or {})
        options.setdefault("desc", desc)
        return tqdm(total=total, **options)

    return factory


def make_output(images, result: SampleResult, return_dict: bool):
    if not return_dict:
        return (images,)
    regions = None if result.layout is None else result.layout.mask()
    return RALUPipelineOutput(images=images, regions=regions, stage_seconds=result.stage_seconds,
                              stage_tokens=result.stage_tokens, stage_steps=result.stage_steps)
