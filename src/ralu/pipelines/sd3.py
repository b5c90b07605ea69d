"""``RALUStableDiffusion3Pipeline``: StableDiffusion3Pipeline with RALU's three-stage sampler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

from ..adapters.flux import vae_decode
from ..adapters.sd3 import SD3Adapter
from ..config import Baseline, RALUConfig
from ..layout import latent_to_tokens, tokens_to_latent
from ..sampler import sample
from .common import (check_batch, check_output_type, check_size, effective_batch, make_output, resolve_config,
                     stage_progress, step_callback)


def scheduler_baseline(config: Baseline, scheduler, image_tokens: int, device) -> Baseline:
    """The stock pipeline's σ grid for a :class:`Baseline` without shift (dynamic shifting as SD3's pipeline)."""
    kwargs = {}
    if scheduler.config.get("use_dynamic_shifting", None):
        kwargs["mu"] = calculate_shift(image_tokens, scheduler.config.get("base_image_seq_len", 256),
                                       scheduler.config.get("max_image_seq_len", 4096),
                                       scheduler.config.get("base_shift", 0.5), scheduler.config.get("max_shift", 1.16))
    scheduler.set_timesteps(config.steps, device=device, **kwargs)
    return Baseline(config.steps, sigmas=tuple(float(s) for s in scheduler.sigmas.cpu()), name=config.name)


class RALUStableDiffusion3Pipeline(StableDiffusion3Pipeline):
    """A StableDiffusion3Pipeline whose ``__call__`` samples with RALU (or a baseline schedule) via ``config=``.

    Works for SD3 and SD3.5 checkpoints. Build it like any diffusers pipeline (``from_pretrained``)
    or share an existing pipeline's components with ``RALUStableDiffusion3Pipeline.from_pipe(pipe)``.
    Text encoding, input checks, latent preparation and the VAE are StableDiffusion3Pipeline's own.
    """

    default_preset = "sd3-2x"

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
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        patch = self.transformer.config.patch_size
        ralu = isinstance(config, RALUConfig)
        check_size(height, width, self.vae_scale_factor * patch * (2 if ralu else 1),
                   "for this config (whole 2x2-latent tokens at half resolution)" if ralu
                   else "(whole 2x2-latent tokens)")
        check_output_type(output_type)
        grid = (height // (self.vae_scale_factor * patch), width // (self.vae_scale_factor * patch))
        table = self.transformer.config.pos_embed_max_size
        if max(grid) > table:
            raise ValueError(f"height and width must be at most {table * self.vae_scale_factor * patch} px for this "
                             f"model (its position table has {table} cells per side), got {height}x{width}")
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)
        self.check_inputs(prompt, prompt_2, prompt_3, height, width, negative_prompt=negative_prompt,
                          negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3,
                          prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                          pooled_prompt_embeds=pooled_prompt_embeds,
                          negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                          callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                          max_sequence_length=max_sequence_length)
        batch = effective_batch(prompt, prompt_embeds, num_images_per_prompt)
        channels = self.transformer.config.in_channels
        latent_shape = (batch, channels, grid[0] * patch, grid[1] * patch)
        check_batch(batch, generator, None, ())
        if latents is not None and tuple(latents.shape) != latent_shape:
            raise ValueError(f"latents must have shape {latent_shape} (batch, channels, height/8, width/8), "
                             f"got {tuple(latents.shape)}")
        if isinstance(config, Baseline) and config.shift is None and config.sigmas is None:
            config = scheduler_baseline(config, self.scheduler, grid[0] * grid[1], "cpu")

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
        negative = (negative_prompt_embeds, negative_pooled_prompt_embeds) if self.do_classifier_free_guidance else None
        latents = self.prepare_latents(batch, channels, height, width, prompt_embeds.dtype, device, generator, latents)
        tokens = latent_to_tokens(latents)

        adapter = SD3Adapter(self.transformer, self.vae, prompt_embeds, pooled_prompt_embeds, grid, negative=negative,
                             guidance_scale=guidance_scale, joint_attention_kwargs=self._joint_attention_kwargs,
                             table_positions=config.table_positions if ralu else "stock_then_full")
        result = sample(adapter, tokens, config, grid, generator=generator,
                        callback=step_callback(self, callback_on_step_end, callback_on_step_end_tensor_inputs,
                                               lambda: {"prompt_embeds": adapter.prompt_embeds,
                                                        "pooled_prompt_embeds": adapter.pooled_prompt_embeds},
                                               lambda out: self._update_embeds(adapter, out)),
                        interrupt=lambda: self.interrupt, progress=stage_progress(self),
                        step_start=lambda step: setattr(self, "_current_timestep", step.sigma * 1000))
        self._current_timestep = None

        latents = tokens_to_latent(result.latents, grid)  # SD3's own (B, 16, H/8, W/8)
        if output_type == "latent":
            images = latents
        else:
            images = self.image_processor.postprocess(vae_decode(self.vae, latents), output_type=output_type)
        self.maybe_free_model_hooks()
        return make_output(images, result, return_dict)

    @staticmethod
    def _update_embeds(adapter: SD3Adapter, outputs: dict) -> None:
        adapter.prompt_embeds = outputs.get("prompt_embeds", adapter.prompt_embeds)
        adapter.pooled_prompt_embeds = outputs.get("pooled_prompt_embeds", adapter.pooled_prompt_embeds)
