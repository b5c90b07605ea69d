"""``RALUFlux2Pipeline`` and ``RALUFlux2KleinPipeline``: FLUX.2 [dev] and [klein] with RALU's three-stage sampler.

Schedules. The stock pipelines run ``σ = linspace(1, 1/N, N)`` time-shifted by
``μ = compute_empirical_mu(image_tokens, N)``, a fit that depends on the step count N. A Baseline(N)
runs exactly that grid. A RALU config with ``base_shift="auto"`` matches the shift of the model's
stock baseline at the run's size: N is the pipeline's default step count (:attr:`stock_steps`: 50 for
dev and klein base, 4 for step-distilled klein), not RALU's own number of model calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

from ..adapters.base import Conditioning
from ..adapters.common import Guidance
from ..adapters.flux2 import Flux2Adapter, decode_latents, vae_decode
from ..config import Baseline, RALUConfig
from ..schedule import shift_of_mu
from .common import (RALUPipelineMixin, check_batch, check_number, check_output_type, check_size, effective_batch,
                     make_output, resolve_config)


class _Flux2Mixin(RALUPipelineMixin):
    """What the two FLUX.2 pipelines share: the schedule, the checks and the sampling run."""

    stock_steps = 50  # the stock baseline's step count, whose shift "auto" matches

    def stock_timestep_kwargs(self, steps: int, image_tokens: int) -> dict:
        """The stock pipelines' ``retrieve_timesteps`` arguments: σ = linspace(1, 1/N, N), μ(tokens, N)."""
        sigmas = None if self.scheduler.config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        return dict(sigmas=sigmas, mu=compute_empirical_mu(image_seq_len=image_tokens, num_steps=steps))

    def stock_shift(self, image_tokens: int) -> float:
        """The shift h of the stock baseline (:attr:`stock_steps` steps) at this many image tokens."""
        mu = self.stock_timestep_kwargs(self.stock_steps, image_tokens)["mu"]
        return shift_of_mu(self.scheduler.config, mu)

    def _check(self, image, sigmas, config, num_inference_steps, default: str, height, width, output_type,
               guidance_scale, prompt, prompt_embeds, num_images_per_prompt, generator, latents,
               callback_on_step_end_tensor_inputs, stock_checks: dict | None = None,
               ) -> tuple[RALUConfig | Baseline, int, int, int, tuple[int, int]]:
        """Every input check, before any model runs; stock_checks: more arguments of the stock ``check_inputs``.

        Returns (config, height, width, batch, grid).
        """
        if isinstance(image, str) and prompt is None:
            raise ValueError("image got a string: the first positional argument of the FLUX.2 pipelines is image; "
                             "pass the prompt as prompt=...")
        if image is not None:
            raise ValueError("image: reference-image conditioning is not supported with RALU (its tokens would need "
                             "their own positions and caches through the stages); use the stock pipeline")
        if sigmas is not None:
            raise ValueError("sigmas: custom noise levels are not supported; pass config=Baseline(steps, "
                             "sigmas=(1.0, ..., 0.0)) for a baseline on your own grid")
        config = resolve_config(config, default, num_inference_steps)
        height = self.default_sample_size * self.vae_scale_factor if height is None else height
        width = self.default_sample_size * self.vae_scale_factor if width is None else width
        per_token = self.vae_scale_factor * 2
        ralu = isinstance(config, RALUConfig)
        check_size(height, width, per_token * (2 if ralu else 1),
                   "for this config (whole 2x2-latent tokens at half resolution)" if ralu else "(whole 2x2-latent tokens)")
        check_output_type(output_type)
        check_number("guidance_scale", guidance_scale)
        self.check_inputs(prompt, height, width, prompt_embeds=prompt_embeds,
                          callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, **(stock_checks or {}))
        batch = effective_batch(prompt, prompt_embeds, num_images_per_prompt)
        grid = (height // per_token, width // per_token)
        check_batch(batch, generator, latents, (batch, self.transformer.config.in_channels, *grid),
                    "batch, latent channels x 4, height/16, width/16")
        return config, height, width, batch, grid

    def _start(self, config: RALUConfig | Baseline, guidance_scale: float, attention_kwargs) -> None:
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        self._num_timesteps = sum(stage.steps for stage in config.stages)


class RALUFlux2Pipeline(_Flux2Mixin, Flux2Pipeline):
    """A Flux2Pipeline (FLUX.2 [dev]) whose ``__call__`` samples with RALU (or a baseline schedule) via ``config=``.

    Build it like any diffusers pipeline (``from_pretrained``) or share an existing pipeline's
    components with ``RALUFlux2Pipeline.from_pipe(pipe)``; LoRA loaded on those components applies.
    Text encoding, input checks, latent preparation and VAE decoding are Flux2Pipeline's own.
    Guidance is embedded (guidance-distilled): one transformer call per step.
    """

    default_preset = "flux2-dev-3x"
    family = "FLUX.2"

    @torch.no_grad()
    def __call__(
        self,
        image=None,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int = 512,
        text_encoder_out_layers: tuple[int, ...] = (10, 20, 30),
        caption_upsample_temperature: float | None = None,
        config: RALUConfig | Baseline | str | None = None,
        num_inference_steps: int | None = None,
    ):
        """Generate images; arguments as ``Flux2Pipeline.__call__``, plus:

        config: a :class:`RALUConfig`, a preset name (default ``"flux2-dev-3x"``) or a
            :class:`Baseline` to run the stock single-resolution schedule through the same loop
            (FLUX.2 [dev]'s stock: 50 steps).
        num_inference_steps: only with ``config=None``, as a shortcut for ``Baseline(steps)``.

        ``latents`` are the stock ones, (B, 4C, H/16, W/16) normalised; ``output_type="latent"``
        returns the packed (B, H/16·W/16, 4C) tokens, as Flux2Pipeline. ``image`` (reference images)
        and ``sigmas`` are not supported and raise ``ValueError``. Returns a
        :class:`~ralu.pipelines.common.RALUPipelineOutput` or ``(images,)``.
        """
        config, height, width, batch, grid = self._check(
            image, sigmas, config, num_inference_steps, self.default_preset, height, width, output_type,
            guidance_scale, prompt, prompt_embeds, num_images_per_prompt, generator, latents,
            list(callback_on_step_end_tensor_inputs))
        config = self.resolve_schedule(config, grid[0] * grid[1])
        self._start(config, guidance_scale, attention_kwargs)
        device = self._execution_device

        if caption_upsample_temperature:
            prompt = self.upsample_prompt(prompt, images=None, temperature=caption_upsample_temperature, device=device)
        embeds, text_ids = self.encode_prompt(prompt=prompt, prompt_embeds=prompt_embeds, device=device,
                                              num_images_per_prompt=num_images_per_prompt,
                                              max_sequence_length=max_sequence_length,
                                              text_encoder_out_layers=text_encoder_out_layers)
        latents, _ = self.prepare_latents(batch, self.transformer.config.in_channels // 4, height, width, embeds.dtype,
                                          device, generator, latents)
        embedded = torch.full([1], guidance_scale, device=device, dtype=torch.float32).expand(batch)
        adapter = Flux2Adapter(self.transformer, Conditioning(embeds, text_ids=text_ids[0]),
                               embedded_guidance=embedded, joint_attention_kwargs=attention_kwargs, vae=self.vae)
        result = self.run_sampler(adapter, latents, config, grid, generator, callback_on_step_end,
                                  callback_on_step_end_tensor_inputs)

        if output_type == "latent":
            images = result.latents
        else:
            images = vae_decode(self.vae, decode_latents(self.vae, result.latents, grid))
            images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        return make_output(images, result, return_dict)


class RALUFlux2KleinPipeline(_Flux2Mixin, Flux2KleinPipeline):
    """A Flux2KleinPipeline (FLUX.2 [klein]) whose ``__call__`` samples with RALU (or a baseline) via ``config=``.

    Step-distilled checkpoints (``is_distilled=True``: klein 4B, 9B) run without guidance, 4 steps
    stock; base checkpoints run true classifier-free guidance against the empty prompt (or
    ``negative_prompt_embeds``) as a second transformer call per step when ``guidance_scale`` > 1,
    as Flux2KleinPipeline. Build it with ``from_pretrained`` or ``from_pipe``.
    """

    default_preset = "flux2-dev-3x"  # base klein: the same stock schedule as FLUX.2 [dev] (50 steps, same μ)
    distilled_preset = "flux2-klein-2x"
    family = "FLUX.2 [klein]"

    @property
    def stock_steps(self) -> int:
        """4 for step-distilled checkpoints (BFL's fixed setting), else 50 (the pipeline's default)."""
        return 4 if self.config.is_distilled else 50

    @torch.no_grad()
    def __call__(
        self,
        image=None,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int = 512,
        text_encoder_out_layers: tuple[int, ...] = (9, 18, 27),
        config: RALUConfig | Baseline | str | None = None,
        num_inference_steps: int | None = None,
    ):
        """Generate images; arguments as ``Flux2KleinPipeline.__call__``, plus:

        config: a :class:`RALUConfig`, a preset name (default ``"flux2-klein-2x"`` for step-distilled
            checkpoints, ``"flux2-dev-3x"`` for base ones) or a :class:`Baseline` (stock: 4 steps
            distilled, 50 base).
        num_inference_steps: only with ``config=None``, as a shortcut for ``Baseline(steps)``.

        ``latents`` are the stock ones, (B, 4C, H/16, W/16) normalised; ``output_type="latent"``
        returns the VAE's (B, C, H/8, W/8) latents, as Flux2KleinPipeline. ``negative_prompt_embeds``
        (one per prompt) replaces the empty prompt of classifier-free guidance. ``image`` and
        ``sigmas`` are not supported and raise ``ValueError``.
        """
        distilled = self.config.is_distilled
        config, height, width, batch, grid = self._check(
            image, sigmas, config, num_inference_steps, self.distilled_preset if distilled else self.default_preset,
            height, width, output_type, guidance_scale, prompt, prompt_embeds, num_images_per_prompt, generator,
            latents, list(callback_on_step_end_tensor_inputs), dict(guidance_scale=guidance_scale))
        prompts = batch // num_images_per_prompt
        cfg = guidance_scale > 1 and not distilled
        if cfg and negative_prompt_embeds is not None:
            if not isinstance(negative_prompt_embeds, torch.Tensor) or negative_prompt_embeds.dim() != 3:
                raise ValueError(f"negative_prompt_embeds must be a (prompts, tokens, channels) tensor, got "
                                 f"{getattr(negative_prompt_embeds, 'shape', type(negative_prompt_embeds).__name__)}")
            if negative_prompt_embeds.shape[0] != prompts:
                raise ValueError(f"negative_prompt_embeds has {negative_prompt_embeds.shape[0]} entries for {prompts} "
                                 "prompts; give one per prompt")
        config = self.resolve_schedule(config, grid[0] * grid[1])
        self._start(config, guidance_scale, attention_kwargs)
        device = self._execution_device

        def encode(text, embeds):
            return self.encode_prompt(prompt=text, prompt_embeds=embeds, device=device,
                                      num_images_per_prompt=num_images_per_prompt,
                                      max_sequence_length=max_sequence_length,
                                      text_encoder_out_layers=text_encoder_out_layers)

        embeds, text_ids = encode(prompt, prompt_embeds)
        guidance = None
        if cfg:
            # the stock negative: the empty prompt, one per prompt
            negative, negative_ids = encode([""] * prompts, negative_prompt_embeds)
            guidance = Guidance(Conditioning(negative, text_ids=negative_ids[0]), guidance_scale)
        latents, _ = self.prepare_latents(batch, self.transformer.config.in_channels // 4, height, width, embeds.dtype,
                                          device, generator, latents)
        adapter = Flux2Adapter(self.transformer, Conditioning(embeds, text_ids=text_ids[0]), guidance,
                               joint_attention_kwargs=attention_kwargs, vae=self.vae)
        result = self.run_sampler(adapter, latents, config, grid, generator, callback_on_step_end,
                                  callback_on_step_end_tensor_inputs)

        latents = decode_latents(self.vae, result.latents, grid)
        if output_type == "latent":
            images = latents
        else:
            images = self.image_processor.postprocess(vae_decode(self.vae, latents), output_type=output_type)
        self.maybe_free_model_hooks()
        return make_output(images, result, return_dict)
