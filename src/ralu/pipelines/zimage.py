"""``RALUZImagePipeline``: ZImagePipeline (Z-Image-Turbo, Z-Image) with RALU's three-stage sampler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from diffusers import ZImagePipeline
from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas

from ..adapters.common import Guidance
from ..adapters.zimage import ZImageAdapter, caption_list, captions_to_conditioning
from ..config import Baseline, RALUConfig
from ..layout import latent_to_tokens, tokens_to_latent
from .common import (RALUPipelineMixin, check_batch, check_negative_batch, check_number, check_output_type, check_size,
                     effective_batch, make_output, resolve_config, scheduler_sigmas)

TURBO_SHIFT = 3.0  # Z-Image-Turbo's scheduler shift; the base Z-Image ships 6.0


class RALUZImagePipeline(RALUPipelineMixin, ZImagePipeline):
    """A ZImagePipeline whose ``__call__`` samples with RALU (or a baseline schedule) via ``config=``.

    Works for Z-Image-Turbo and Z-Image. Build it like any diffusers pipeline (``from_pretrained``)
    or share an existing pipeline's components with ``RALUZImagePipeline.from_pipe(pipe)``; LoRA
    loaded on those components applies. Text encoding, latent preparation and the VAE are
    ZImagePipeline's own.
    """

    default_preset = "z-image-3x"  # the base model; a scheduler with Z-Image-Turbo's shift gets turbo_preset
    turbo_preset = "z-image-turbo-1.6x"
    family = "Z-Image"

    def stock_timestep_kwargs(self, steps: int, image_tokens: int) -> dict:
        """ZImagePipeline's: σ = torch.linspace(1, 1/N, N), and μ (used only by a dynamically shifting scheduler)."""
        c = self.scheduler.config
        mu = calculate_shift(image_tokens, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        return dict(sigmas=get_default_z_image_sigmas(steps), mu=mu)

    def preset_for_model(self) -> str:
        """The default preset: the few-step one for a scheduler with Turbo's static shift 3.0, else the base model's."""
        c = self.scheduler.config
        turbo = not c.get("use_dynamic_shifting", False) and float(c.get("shift", 1.0)) == TURBO_SHIFT
        return self.turbo_preset if turbo else self.default_preset

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 5.0,
        cfg_normalization: bool | float = False,
        cfg_truncation: float | None = 1.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: list[torch.Tensor] | None = None,
        negative_prompt_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        max_sequence_length: int = 512,
        config: RALUConfig | Baseline | str | None = None,
    ):
        """Generate images; arguments as ``ZImagePipeline.__call__``, plus:

        config: a :class:`RALUConfig`, a preset name (default ``"z-image-turbo-1.6x"`` for a scheduler
            with Z-Image-Turbo's shift 3.0, else ``"z-image-3x"``), or a :class:`Baseline` to run
            the stock single-resolution schedule through the same loop.
        num_inference_steps: only with ``config=None``, as a shortcut for ``Baseline(steps)``
            (Z-Image-Turbo's 8 model calls are ``num_inference_steps=8`` in diffusers).
        sigmas: only with ``config=None``: a baseline on ``scheduler.set_timesteps(sigmas=...)``'s grid.

        ``guidance_scale`` > 0 runs classifier-free guidance (``pos + s·(pos - neg)``); Z-Image-Turbo
        wants 0. ``latents`` are (B, 16, H/8, W/8) float32; ``output_type="latent"`` returns that layout.
        ``callback_on_step_end`` sees ``latents`` as ralu's token sequence of the current stage
        (B, S, 64) and ``prompt_embeds`` as the caption list; it may return ``latents``,
        ``prompt_embeds`` and ``negative_prompt_embeds``.
        Returns a :class:`~ralu.pipelines.common.RALUPipelineOutput` or ``(images,)``.
        """
        if sigmas is not None:  # a baseline on the scheduler's grid from these σ, made once the size is known
            config = self._check_sigmas(sigmas, config, num_inference_steps)
            num_inference_steps = None
        config = resolve_config(config, self.preset_for_model(), num_inference_steps)
        height = 1024 if height is None else height
        width = 1024 if width is None else width
        ralu = isinstance(config, RALUConfig)
        per_token = self.vae_scale_factor * 2
        table = min(self.transformer.config.axes_lens[1:])
        what = "for this config (whole 2x2-latent tokens at half resolution)" if ralu else "(whole 2x2-latent tokens)"
        check_size(height, width, per_token * (2 if ralu else 1), what, largest=table * per_token,
                   why_largest=f" (its RoPE tables have {table} rows per side)")
        check_output_type(output_type)
        check_number("guidance_scale", guidance_scale)
        if cfg_truncation is not None:
            check_number("cfg_truncation", cfg_truncation)
        if not isinstance(cfg_normalization, bool):
            check_number("cfg_normalization", cfg_normalization, low=0.0)
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) or max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be an integer >= 1, got {max_sequence_length!r}")
        callback_on_step_end_tensor_inputs = list(callback_on_step_end_tensor_inputs)
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, "
                             f"got {unknown}")
        guided = guidance_scale > 0
        prompt_batch = self._check_prompts(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, guided)
        batch = effective_batch([None] * prompt_batch, None, num_images_per_prompt)  # prompts x images per prompt
        grid = (height // per_token, width // per_token)
        channels = self.transformer.config.in_channels
        check_batch(batch, generator, latents, (batch, channels, 2 * grid[0], 2 * grid[1]),
                    "batch, channels, height/8, width/8")
        if sigmas is None:
            config = self.resolve_schedule(config, grid[0] * grid[1])
        else:
            kwargs = dict(self.stock_timestep_kwargs(len(sigmas), grid[0] * grid[1]), sigmas=[float(s) for s in sigmas])
            config = Baseline(len(sigmas), sigmas=scheduler_sigmas(self.scheduler, len(sigmas), **kwargs))

        self._guidance_scale = guidance_scale
        self._joint_attention_kwargs = joint_attention_kwargs or {}
        self._interrupt = False
        self._cfg_normalization = cfg_normalization
        self._cfg_truncation = cfg_truncation
        self._num_timesteps = sum(stage.steps for stage in config.stages)
        device = self._execution_device

        if prompt is not None:
            # lists of their own: ZImagePipeline's encoder writes the chat template into the list it is given
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            negatives = [negative_prompt] * prompt_batch if isinstance(negative_prompt, str) else (
                None if negative_prompt is None else list(negative_prompt))
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(
                prompt=prompts, negative_prompt=negatives, do_classifier_free_guidance=guided,
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, device=device,
                max_sequence_length=max_sequence_length)
        repeat = num_images_per_prompt
        conditioning = captions_to_conditioning([e for e in prompt_embeds for _ in range(repeat)])
        guidance = None
        if guided:
            negative = captions_to_conditioning([e for e in negative_prompt_embeds for _ in range(repeat)])
            guidance = Guidance(negative, guidance_scale)
        latents = self.prepare_latents(batch, channels, height, width, torch.float32, device, generator, latents)
        tokens = latent_to_tokens(latents.to(torch.float32))

        adapter = ZImageAdapter(self.transformer, conditioning, guidance, cfg_truncation=cfg_truncation,
                                cfg_normalization=cfg_normalization,
                                joint_attention_kwargs=self._joint_attention_kwargs, vae=self.vae)

        def tensors() -> dict:
            return {"prompt_embeds": caption_list(adapter.conditioning)}

        def apply(outputs: dict) -> None:
            if "prompt_embeds" in outputs:
                adapter.conditioning = captions_to_conditioning(outputs["prompt_embeds"])
            if "negative_prompt_embeds" in outputs and adapter.guidance is not None:
                negative = captions_to_conditioning(outputs["negative_prompt_embeds"])
                adapter.guidance = replace(adapter.guidance, negative=negative)

        result = self.run_sampler(adapter, tokens, config, grid, generator, callback_on_step_end,
                                  callback_on_step_end_tensor_inputs, tensors, apply)

        latents = tokens_to_latent(result.latents, grid)  # ZImagePipeline's own (B, 16, H/8, W/8)
        if output_type == "latent":
            images = latents
        else:  # ZImagePipeline's decode: cast to the VAE's dtype first, then unscale
            latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + self.vae.config.shift_factor
            images = self.image_processor.postprocess(self.vae.decode(latents, return_dict=False)[0],
                                                      output_type=output_type)
        self.maybe_free_model_hooks()
        return make_output(images, result, return_dict)

    @staticmethod
    def _check_sigmas(sigmas, config, num_inference_steps) -> Baseline:
        """``sigmas=`` as ZImagePipeline takes it: only for a baseline, one step per σ."""
        if config is not None:
            raise ValueError("pass either sigmas (a baseline run on that σ grid) or config, not both")
        if isinstance(sigmas, (str, bytes)) or not hasattr(sigmas, "__len__") or len(sigmas) < 1:
            raise ValueError(f"sigmas must be a non-empty list of noise levels, got {sigmas!r}")
        if num_inference_steps is not None and num_inference_steps != len(sigmas):
            raise ValueError(f"num_inference_steps ({num_inference_steps!r}) must equal len(sigmas) ({len(sigmas)}) "
                             "when both are given")
        return Baseline(len(sigmas))

    @staticmethod
    def _check_prompts(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, guided: bool) -> int:
        """Prompts and their embeddings, as ZImagePipeline needs them; returns the number of prompts."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds, got "
                             + ("both" if prompt is not None else "neither"))
        if prompt is not None and not (isinstance(prompt, str) or (
                isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt))):
            raise ValueError(f"prompt must be a string or a non-empty list of strings, got {type(prompt).__name__}")
        if prompt_embeds is not None:
            if not isinstance(prompt_embeds, (list, tuple)):
                raise ValueError("prompt_embeds must be a list of (tokens, features) tensors, one per prompt "
                                 f"(ZImagePipeline's captions), got {type(prompt_embeds).__name__}")
            captions_to_conditioning(prompt_embeds)
        count = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else len(prompt_embeds)
        if not guided:
            return count
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass at most one of negative_prompt and negative_prompt_embeds, got both")
        if prompt_embeds is not None and negative_prompt_embeds is None:
            raise ValueError("negative_prompt_embeds must be given with prompt_embeds when guidance_scale > 0 "
                             "(classifier-free guidance)")
        check_negative_batch(negative_prompt, count)
        if negative_prompt is not None and not isinstance(negative_prompt, (str, list)):
            raise ValueError(f"negative_prompt must be a string or a list of strings, "
                             f"got {type(negative_prompt).__name__}")
        if negative_prompt_embeds is not None:
            if not isinstance(negative_prompt_embeds, (list, tuple)) or len(negative_prompt_embeds) != count:
                got = len(negative_prompt_embeds) if isinstance(negative_prompt_embeds, (list, tuple)) else \
                    type(negative_prompt_embeds).__name__
                raise ValueError(f"negative_prompt_embeds must be a list of {count} caption tensors (one per prompt), "
                                 f"got {got}")
            captions_to_conditioning(negative_prompt_embeds)
        return count
