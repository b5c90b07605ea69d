"""``RALUStableDiffusion3Pipeline``: StableDiffusion3Pipeline with RALU's three-stage sampler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from dataclasses import replace

from diffusers import StableDiffusion3Pipeline

from ..adapters.base import Conditioning
from ..adapters.common import Guidance, vae_decode
from ..adapters.sd3 import SD3Adapter
from ..config import Baseline, RALUConfig
from ..layout import latent_to_tokens, tokens_to_latent
from .common import (RALUPipelineMixin, check_batch, check_negative_batch, check_number, check_output_type,
                     check_size, dynamic_shift_mu, effective_batch, make_output, resolve_config)


class RALUStableDiffusion3Pipeline(RALUPipelineMixin, StableDiffusion3Pipeline):
    """A StableDiffusion3Pipeline whose ``__call__`` samples with RALU (or a baseline schedule) via ``config=``.

    Works for SD3 and SD3.5 checkpoints. Build it like any diffusers pipeline (``from_pretrained``)
    or share an existing pipeline's components with ``RALUStableDiffusion3Pipeline.from_pipe(pipe)``.
    Text encoding, input checks, latent preparation and the VAE are StableDiffusion3Pipeline's own.
    """

    default_preset = "sd3-2x"
    family = "SD3"

    def stock_timestep_kwargs(self, steps: int, image_tokens: int) -> dict:
        """StableDiffusion3Pipeline's: the scheduler's own grid, with μ when it shifts dynamically."""
        if self.scheduler.config.get("use_dynamic_shifting", False):
            return dict(mu=dynamic_shift_mu(self.scheduler.config, image_tokens))
        return {}

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        prompt_3: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float = 7.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_3: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int = 256,
        config: RALUConfig | Baseline | str | None = None,
        num_inference_steps: int | None = None,
        skip_guidance_layers: list[int] | None = None,
        skip_layer_guidance_scale: float | None = None,
        skip_layer_guidance_stop: float | None = None,
        skip_layer_guidance_start: float | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: torch.Tensor | None = None,
    ):
        """Generate images; arguments as ``StableDiffusion3Pipeline.__call__``, plus:

        config: a :class:`RALUConfig`, a preset name (default ``"sd3-2x"``) or a :class:`Baseline`
            to run the stock single-resolution schedule through the same loop (SD3's stock: 28 steps).
        num_inference_steps: only with ``config=None``, as a shortcut for ``Baseline(steps)``.

        ``latents`` are SD3's (B, 16, H/8, W/8); ``output_type="latent"`` returns the same layout.
        ``callback_on_step_end`` sees ``latents`` as ralu's token sequence of the current stage
        (B, S, 64), and ``prompt_embeds``/``pooled_prompt_embeds`` as the transformer gets them
        (``[negative, positive]`` under guidance). Skip-layer guidance and IP-Adapter inputs are
        not supported with RALU and raise ``ValueError``.
        Returns a :class:`~ralu.pipelines.common.RALUPipelineOutput` or ``(images,)``.
        """
        unsupported = dict(skip_guidance_layers=skip_guidance_layers, skip_layer_guidance_scale=skip_layer_guidance_scale,
                           skip_layer_guidance_stop=skip_layer_guidance_stop,
                           skip_layer_guidance_start=skip_layer_guidance_start, ip_adapter_image=ip_adapter_image,
                           ip_adapter_image_embeds=ip_adapter_image_embeds)
        given = [name for name, value in unsupported.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: skip-layer guidance and IP-Adapter are not supported with RALU "
                             "(their extra transformer calls assume one full-resolution latent image)")
        if joint_attention_kwargs and "ip_adapter_image_embeds" in joint_attention_kwargs:
            raise ValueError("joint_attention_kwargs['ip_adapter_image_embeds']: IP-Adapter is not supported with RALU")
        config = resolve_config(config, self.default_preset, num_inference_steps)
        height = self.default_sample_size * self.vae_scale_factor if height is None else height
        width = self.default_sample_size * self.vae_scale_factor if width is None else width
        patch = self.transformer.config.patch_size
        ralu = isinstance(config, RALUConfig)
        table = self.transformer.config.pos_embed_max_size
        check_size(height, width, self.vae_scale_factor * patch * (2 if ralu else 1),
                   "for this config (whole 2x2-latent tokens at half resolution)" if ralu
                   else "(whole 2x2-latent tokens)", largest=table * self.vae_scale_factor * patch,
                   why_largest=f" (its position table has {table} cells per side)")
        check_output_type(output_type)
        check_number("guidance_scale", guidance_scale)
        grid = (height // (self.vae_scale_factor * patch), width // (self.vae_scale_factor * patch))
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)
        self.check_inputs(prompt, prompt_2, prompt_3, height, width, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3,
                          prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                          pooled_prompt_embeds=pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                          max_sequence_length=max_sequence_length)
        batch = effective_batch(prompt, prompt_embeds, num_images_per_prompt)
        check_negative_batch(negative_prompt, batch // num_images_per_prompt)
        channels = self.transformer.config.in_channels
        latent_shape = (batch, channels, grid[0] * patch, grid[1] * patch)
        check_batch(batch, generator, latents, latent_shape, "batch, channels, height/8, width/8")
        config = self.resolve_schedule(config, grid[0] * grid[1])

        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._joint_attention_kwargs = joint_attention_kwargs or {}
        self._current_timestep = None
        self._interrupt = False
        self._num_timesteps = sum(stage.steps for stage in config.stages)
        device = self._execution_device

        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(
            prompt=prompt, prompt_2=prompt_2, prompt_3=prompt_3, negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3,
            do_classifier_free_guidance=self.do_classifier_free_guidance, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, device=device, clip_skip=clip_skip,
            num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length,
            lora_scale=self._joint_attention_kwargs.get("scale"))
        guidance = None
        if self.do_classifier_free_guidance:
            guidance = Guidance(Conditioning(negative_prompt_embeds, negative_pooled_prompt_embeds), guidance_scale)
        latents = self.prepare_latents(batch, channels, height, width, prompt_embeds.dtype, device, generator, latents)
        tokens = latent_to_tokens(latents)

        adapter = SD3Adapter(self.transformer, Conditioning(prompt_embeds, pooled_prompt_embeds), grid, guidance,
                             table_positions=config.table_positions if ralu else "stock_then_full",
                             joint_attention_kwargs=self._joint_attention_kwargs, vae=self.vae)

        def tensors() -> dict:
            # as the stock pipeline shows them: [negative, positive] under guidance
            cond, guide = adapter.conditioning, adapter.guidance
            if guide is None:
                return {"prompt_embeds": cond.embeds, "pooled_prompt_embeds": cond.pooled}
            return {"prompt_embeds": torch.cat([guide.negative.embeds, cond.embeds]),
                    "pooled_prompt_embeds": torch.cat([guide.negative.pooled, cond.pooled])}

        def apply(outputs: dict) -> None:
            changed = {field: outputs[key] for key, field in (("prompt_embeds", "embeds"),
                                                              ("pooled_prompt_embeds", "pooled")) if key in outputs}
            if not changed:
                return
            if adapter.guidance is None:
                adapter.conditioning = replace(adapter.conditioning, **changed)
                return
            halves = {field: value.chunk(2) for field, value in changed.items()}
            adapter.conditioning = replace(adapter.conditioning, **{f: h[1] for f, h in halves.items()})
            adapter.guidance = replace(adapter.guidance, negative=replace(adapter.guidance.negative,
                                                                          **{f: h[0] for f, h in halves.items()}))

        result = self.run_sampler(adapter, tokens, config, grid, generator, callback_on_step_end,
                                  callback_on_step_end_tensor_inputs, tensors, apply)

        latents = tokens_to_latent(result.latents, grid)  # SD3's own (B, 16, H/8, W/8)
        if output_type == "latent":
            images = latents
        else:
            images = self.image_processor.postprocess(vae_decode(self.vae, latents), output_type=output_type)
        self.maybe_free_model_hooks()
        return make_output(images, result, return_dict)
