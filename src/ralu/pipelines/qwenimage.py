"""``RALUQwenImagePipeline``: QwenImagePipeline with RALU's three-stage sampler."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import QwenImagePipeline
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

from ..adapters.base import Conditioning
from ..adapters.common import Guidance
from ..adapters.qwenimage import QwenImageAdapter, qwen_vae_decode
from ..config import Baseline, RALUConfig
from .common import (RALUPipelineMixin, check_batch, check_negative_batch, check_number, check_output_type, check_size,
                     effective_batch, make_output, resolve_config, scheduler_sigmas)

logger = logging.getLogger(__name__)


def _check_embeds_mask(embeds_name: str, embeds: torch.Tensor | None, mask_name: str, mask: torch.Tensor | None,
                       batch: int | None = None) -> None:
    """Text embeddings (B, T, J) and their (B, T) mask must agree, and B must be the prompts' count when given."""
    if embeds is not None:
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 3:
            raise ValueError(f"{embeds_name} must be a (batch, tokens, channels) tensor, got "
                             f"{tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__}")
        if batch is not None and embeds.shape[0] != batch:
            raise ValueError(f"{embeds_name} has batch {embeds.shape[0]}, but there are {batch} prompts; give one "
                             "negative embedding per prompt")
    if mask is not None:
        if embeds is None:
            raise ValueError(f"{mask_name} is given without {embeds_name}")
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2]):
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"{mask_name} must have shape {tuple(embeds.shape[:2])} ({embeds_name}'s batch and "
                             f"tokens), got {got}")


def _check_sigmas(sigmas: Any) -> list[float]:
    """A custom σ grid as the stock pipeline takes it: a flat, non-empty sequence of finite numbers."""
    if isinstance(sigmas, (str, bytes)) or not hasattr(sigmas, "__len__") or len(sigmas) == 0:
        raise ValueError(f"sigmas must be a non-empty sequence of noise levels, got {sigmas!r}")
    try:
        values = [float(s) for s in np.asarray(sigmas, dtype=np.float64).reshape(-1)]
    except (TypeError, ValueError):
        values = []
    if len(values) != len(sigmas) or not np.isfinite(values).all():
        raise ValueError(f"sigmas must be a flat sequence of finite noise levels, got {sigmas!r}")
    return values


class RALUQwenImagePipeline(RALUPipelineMixin, QwenImagePipeline):
    """A QwenImagePipeline whose ``__call__`` samples with RALU (or a baseline schedule) via ``config=``.

    Build it like any diffusers pipeline (``from_pretrained``) or share an existing pipeline's
    components with ``RALUQwenImagePipeline.from_pipe(pipe)``; LoRA loaded on those components applies.
    Text encoding, input checks, latent preparation and the VAE are QwenImagePipeline's own.
    """

    default_preset = "qwen-image-3x"
    family = "Qwen-Image"

    def stock_timestep_kwargs(self, steps: int, image_tokens: int, sigmas: Sequence[float] | None = None) -> dict:
        """QwenImagePipeline's ``set_timesteps`` arguments: σ = linspace(1, 1/N, N) (or the caller's), and μ
        from its own ``calculate_shift`` with the scheduler config's numbers."""
        c = self.scheduler.config
        mu = calculate_shift(image_tokens, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        return dict(sigmas=np.linspace(1.0, 1 / steps, steps) if sigmas is None else sigmas, mu=mu)

    def _encode(self, prompt, embeds: torch.Tensor | None, mask: torch.Tensor | None, device: torch.device,
                num_images_per_prompt: int, max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``encode_prompt``, each prompt's embeddings (B·n, T, J) and mask (B·n, T) repeated n times in a row.

        diffusers 0.42.1's ``encode_prompt`` repeats the embeddings per prompt but tiles the mask over
        the batch, so with several prompts of different lengths and ``num_images_per_prompt`` > 1 the
        masks land on the wrong samples; with n = 1 this is exactly the stock result.
        """
        embeds, mask = self.encode_prompt(prompt=prompt, prompt_embeds=embeds, prompt_embeds_mask=mask, device=device,
                                          num_images_per_prompt=1, max_sequence_length=max_sequence_length)
        embeds = embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return embeds, None if mask is None else mask.repeat_interleave(num_images_per_prompt, dim=0)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        true_cfg_scale: float = 4.0,
        height: int | None = None,
        width: int | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int = 512,
        config: RALUConfig | Baseline | str | None = None,
        num_inference_steps: int | None = None,
    ):
        """Generate images; arguments as ``QwenImagePipeline.__call__``, plus:

        config: a :class:`RALUConfig`, a preset name (default ``"qwen-image-3x"``) or a
            :class:`Baseline` to run the stock single-resolution schedule through the same loop
            (Qwen-Image's stock: 50 steps).
        num_inference_steps: only with ``config=None``, as a shortcut for ``Baseline(steps)``.
        sigmas: a custom σ grid as the stock pipeline takes it (then shifted by the scheduler);
            baseline runs only, its length is the step count.

        True CFG runs when ``true_cfg_scale`` > 1 and a negative prompt (or its embeddings) is
        given, as in the stock pipeline: Qwen-Image's recommended ``negative_prompt=" "`` with the
        default 4.0. A single negative prompt applies to every prompt. ``latents`` and
        ``output_type="latent"`` are the stock packed (B, H/16·W/16, 64); ``callback_on_step_end``
        sees ``latents`` as the current stage's token sequence.
        Returns a :class:`~ralu.pipelines.common.RALUPipelineOutput` or ``(images,)``.
        """
        if sigmas is not None:
            sigmas = _check_sigmas(sigmas)
            if config is None and num_inference_steps is None:
                num_inference_steps = len(sigmas)
        config = resolve_config(config, self.default_preset, num_inference_steps)
        height = self.default_sample_size * self.vae_scale_factor if height is None else height
        width = self.default_sample_size * self.vae_scale_factor if width is None else width
        ralu = isinstance(config, RALUConfig)
        if sigmas is not None and (ralu or config.steps != len(sigmas)):
            raise ValueError(f"sigmas: a custom grid of {len(sigmas)} levels applies to a baseline run of as many "
                             f"steps only, got config {getattr(config, 'name', None) or config}")
        check_size(height, width, self.vae_scale_factor * (4 if ralu else 2),
                   "for this config (whole 2x2-latent tokens at half resolution)" if ralu
                   else "(whole 2x2-latent tokens)")
        check_output_type(output_type)
        check_number("true_cfg_scale", true_cfg_scale)
        if guidance_scale is not None:
            check_number("guidance_scale", guidance_scale)
            logger.warning(f"guidance_scale is passed as {guidance_scale}, but ignored since the model is not "
                           "guidance-distilled.")
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)
        self.check_inputs(prompt, height, width, negative_prompt=negative_prompt, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds, prompt_embeds_mask=prompt_embeds_mask,
                          negative_prompt_embeds_mask=negative_prompt_embeds_mask,
                          callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                          max_sequence_length=max_sequence_length)
        batch = effective_batch(prompt, prompt_embeds, num_images_per_prompt)
        prompts = batch // num_images_per_prompt
        check_negative_batch(negative_prompt, prompts)
        _check_embeds_mask("prompt_embeds", prompt_embeds, "prompt_embeds_mask", prompt_embeds_mask)
        _check_embeds_mask("negative_prompt_embeds", negative_prompt_embeds, "negative_prompt_embeds_mask",
                           negative_prompt_embeds_mask, prompts)
        grid = (height // (self.vae_scale_factor * 2), width // (self.vae_scale_factor * 2))
        channels = self.transformer.config.in_channels
        check_batch(batch, generator, latents, (batch, grid[0] * grid[1], channels), "batch, image tokens, channels")
        tokens = grid[0] * grid[1]
        if sigmas is not None:
            grid_sigmas = scheduler_sigmas(self.scheduler, len(sigmas),
                                           **self.stock_timestep_kwargs(len(sigmas), tokens, sigmas))
            config = Baseline(len(sigmas), sigmas=grid_sigmas, name=config.name)
        config = self.resolve_schedule(config, tokens)

        has_negative = negative_prompt is not None or negative_prompt_embeds is not None
        if true_cfg_scale > 1 and not has_negative:
            logger.warning(f"true_cfg_scale is passed as {true_cfg_scale}, but classifier-free guidance is not "
                           "enabled since no negative_prompt is provided.")
        elif true_cfg_scale <= 1 and has_negative:
            logger.warning(" negative_prompt is passed but classifier-free guidance is not enabled since "
                           "true_cfg_scale <= 1")
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs or {}
        self._current_timestep = None
        self._interrupt = False
        self._num_timesteps = sum(stage.steps for stage in config.stages)
        device = self._execution_device

        embeds, mask = self._encode(prompt, prompt_embeds, prompt_embeds_mask, device, num_images_per_prompt,
                                    max_sequence_length)
        guidance = None
        if true_cfg_scale > 1 and has_negative:
            if isinstance(negative_prompt, str):  # one for every prompt (the stock pipeline would fail here)
                negative_prompt = [negative_prompt] * prompts
            negative, negative_mask = self._encode(negative_prompt, negative_prompt_embeds, negative_prompt_embeds_mask,
                                                   device, num_images_per_prompt, max_sequence_length)
            guidance = Guidance(Conditioning(negative, mask=negative_mask), true_cfg_scale)
        latents = self.prepare_latents(batch, channels // 4, height, width, embeds.dtype, device, generator, latents)

        adapter = QwenImageAdapter(self.transformer, Conditioning(embeds, mask=mask), grid, guidance,
                                   table_positions=config.table_positions if ralu else "stock_then_full",
                                   attention_kwargs=self._attention_kwargs, vae=self.vae)


        result = self.run_sampler(adapter, latents, config, grid, generator, callback_on_step_end,
                                  callback_on_step_end_tensor_inputs)

        if output_type == "latent":
            images = result.latents
        else:
            images = self.image_processor.postprocess(qwen_vae_decode(self.vae, result.latents, grid),
                                                      output_type=output_type)
        self.maybe_free_model_hooks()
        return make_output(images, result, return_dict)
