"""``RALUFluxPipeline``: FluxPipeline with RALU's three-stage sampler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import FluxPipeline

from ..adapters.base import Conditioning
from ..adapters.common import Guidance
from ..adapters.flux import FluxAdapter
from ..config import Baseline, RALUConfig
from .common import (RALUPipelineMixin, check_batch, check_negative_batch, check_number, check_output_type, check_size,
                     effective_batch, make_output, resolve_config)


class RALUFluxPipeline(RALUPipelineMixin, FluxPipeline):
    """A FluxPipeline whose ``__call__`` samples with RALU (or a baseline schedule) via ``config=``.

    Build it like any diffusers pipeline (``from_pretrained``) or share an existing pipeline's
    components with ``RALUFluxPipeline.from_pipe(pipe)``; LoRA loaded on those components applies.
    Text encoding, input checks, latent preparation and VAE decoding are FluxPipeline's own.
    """

    default_preset = "flux-dev-4x"  # guidance-distilled FLUX.1-dev; FLUX.1-schnell gets "flux-schnell-2x"
    family = "FLUX.1"

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        true_cfg_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float = 3.5,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int = 512,
        config: RALUConfig | Baseline | str | None = None,
        num_inference_steps: int | None = None,
    ):
        """Generate images; arguments as ``FluxPipeline.__call__``, plus:

        config: a :class:`RALUConfig`, a preset name (default ``"flux-dev-4x"``, or
            ``"flux-schnell-2x"`` for a model without guidance embedding), or a
            :class:`Baseline` to run the stock single-resolution schedule through the same loop.
        num_inference_steps: only with ``config=None``, as a shortcut for ``Baseline(steps)``.

        Returns a :class:`~ralu.pipelines.common.RALUPipelineOutput` (``images`` as FluxPipeline's,
        plus the selected ``regions`` and per-stage timings) or ``(images,)``.
        """
        schnell = not self.transformer.config.guidance_embeds
        config = resolve_config(config, "flux-schnell-2x" if schnell else self.default_preset, num_inference_steps)
        height = self.default_sample_size * self.vae_scale_factor if height is None else height
        width = self.default_sample_size * self.vae_scale_factor if width is None else width
        ralu = isinstance(config, RALUConfig)
        check_size(height, width, self.vae_scale_factor * (4 if ralu else 2),
                   "for this config (whole 2x2-latent tokens at half resolution)" if ralu else "(whole 2x2-latent tokens)")
        check_output_type(output_type)
        check_number("guidance_scale", guidance_scale)
        check_number("true_cfg_scale", true_cfg_scale)
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)
        self.check_inputs(prompt, prompt_2, height, width, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
                          negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                          max_sequence_length=max_sequence_length)
        batch = effective_batch(prompt, prompt_embeds, num_images_per_prompt)
        check_negative_batch(negative_prompt, batch // num_images_per_prompt)
        grid = (height // (self.vae_scale_factor * 2), width // (self.vae_scale_factor * 2))
        channels = self.transformer.config.in_channels
        check_batch(batch, generator, latents, (batch, grid[0] * grid[1], channels), "batch, image tokens, channels")
        config = self.resolve_schedule(config, grid[0] * grid[1])

        self._guidance_scale = guidance_scale
        self._joint_attention_kwargs = joint_attention_kwargs or {}
        self._current_timestep = None
        self._interrupt = False
        self._num_timesteps = sum(stage.steps for stage in config.stages)
        device = self._execution_device
        lora_scale = self._joint_attention_kwargs.get("scale")

        embeds, pooled, text_ids = self.encode_prompt(
            prompt=prompt, prompt_2=prompt_2, prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            device=device, num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length,
            lora_scale=lora_scale)
        guidance = None
        has_negative = negative_prompt is not None or (negative_prompt_embeds is not None
                                                       and negative_pooled_prompt_embeds is not None)
        if true_cfg_scale > 1 and has_negative:
            negative = self.encode_prompt(
                prompt=negative_prompt, prompt_2=negative_prompt_2, prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=negative_pooled_prompt_embeds, device=device,
                num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length,
                lora_scale=lora_scale)
            guidance = Guidance(Conditioning(*negative), true_cfg_scale)
        latents, _ = self.prepare_latents(batch, channels // 4, height, width, embeds.dtype, device, generator, latents)
        embedded = None
        if self.transformer.config.guidance_embeds:
            embedded = torch.full([batch], guidance_scale, device=device, dtype=torch.float32)

        adapter = FluxAdapter(self.transformer, Conditioning(embeds, pooled, text_ids), guidance,
                              embedded_guidance=embedded, joint_attention_kwargs=self._joint_attention_kwargs,
                              vae=self.vae)


        result = self.run_sampler(adapter, latents, config, grid, generator, callback_on_step_end,
                                  callback_on_step_end_tensor_inputs)

        if output_type == "latent":
            images = result.latents
        else:
            images = self.image_processor.postprocess(adapter.decode(result.latents, grid), output_type=output_type)
        self.maybe_free_model_hooks()
        return make_output(images, result, return_dict)
