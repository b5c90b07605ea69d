"""Plumbing every model family shares: cache hooks across stages, guidance, timesteps, VAE decoding.

:class:`AdapterBase` implements the sampler's protocol (:class:`~ralu.adapters.base.ModelAdapter`)
except for the one transformer call of a family, :meth:`AdapterBase.forward`, and its position
preparation. Guidance is either two calls per step (``batched_guidance = False``: FLUX's true
CFG, Qwen-Image) or one call on ``[uncond, cond]`` (SD3, Z-Image), combined by
:meth:`AdapterBase.combine`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..layout import tokens_to_latent
from .base import TIMESTEP_SCALE, Conditioning, Step

Decoder = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]

logger = logging.getLogger(__name__)


def reset_cache_state(transformer: torch.nn.Module) -> None:
    """Forget every stateful hook's state (cached residuals, step counters) under ``transformer``.

    Called at each stage boundary: cache hooks keep tensors shaped like the previous call and
    count the steps of one schedule, while a new stage has a new token count and its own steps.
    This is what diffusers' ``CacheMixin._reset_stateful_cache`` does, for any model.
    """
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    # hooks applied to blocks since the last run are missing from the registry's cached child list on
    # models that are no CacheMixin (SD3, Z-Image) until it is rebuilt
    registry.invalidate_child_registries_cache()
    registry.reset_stateful_hooks(recurse=True)


@contextmanager
def cache_context(transformer: torch.nn.Module, name: str, **where) -> Iterator[None]:
    """``transformer.cache_context(name, **where)`` for any model, CacheMixin or not (SD3 is not)."""
    if hasattr(transformer, "cache_context"):
        with transformer.cache_context(name, **where):
            yield
        return
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    _set_cache_context(transformer, CacheContext(name, **where))
    try:
        yield
    finally:
        _set_cache_context(transformer, None)


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, H, W) in the transformer's space → images (B, 3, 8H, 8W) in [-1, 1].

    Undoes the VAE's scaling and shift factors (FLUX.1 and SD3 alike), on the VAE's device and dtype.
    """
    from diffusers.utils.torch_utils import get_module_execution_device

    latents = latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)
    latents = latents.to(device=get_module_execution_device(vae), dtype=vae.dtype)
    return vae.decode(latents, return_dict=False)[0]


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' ``apply_rotary_emb`` (real form, interleaved pairs) with per-sample factors.

    x: (B, S, heads, head_dim); cos, sin: (B, S, head_dim) float32. Used by the processors that let
    a batch whose samples sit at different positions run as one call (FLUX.1, FLUX.2).
    """
    cos, sin = cos[:, :, None, :].to(x.device), sin[:, :, None, :].to(x.device)
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def rotated_joint_attention(processor, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                            attention_mask, rope: tuple[torch.Tensor, torch.Tensor], qkv_projections) -> torch.Tensor:
    """The attention of a FLUX.1 or FLUX.2 processor with per-sample rotary factors: q/k/v of the image
    stream (and of the text stream before it, when ``encoder_hidden_states`` is given), their norms,
    ``rope`` = (cos, sin) each (B, S_txt + S_img, head_dim), and the processor's attention backend.

    qkv_projections: the family's ``_get_qkv_projections(attn, hidden_states, encoder_hidden_states)``.
    Returns (B, S_txt + S_img, heads·head_dim), text first, before the output projections.
    """
    q, k, v, eq, ek, ev = qkv_projections(attn, hidden_states, encoder_hidden_states)
    q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))
    q, k = attn.norm_q(q), attn.norm_k(k)
    if attn.added_kv_proj_dim is not None:
        eq, ek, ev = (t.unflatten(-1, (-1, attn.head_dim)) for t in (eq, ek, ev))
        eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
        q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
    q, k = rotate_pairs(q, *rope), rotate_pairs(k, *rope)
    out = dispatch_attention_fn(q, k, v, attn_mask=attention_mask, backend=processor._attention_backend,
                                parallel_config=processor._parallel_config)
    return out.flatten(2, 3).to(q.dtype)


# the processors installed on each transformer, reused so that a compiled model sees the same objects
_INSTALLED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextmanager
def processors_swapped(transformer: torch.nn.Module, replacements: Mapping[type, type]) -> Iterator[bool]:
    """Run with each stock attention processor replaced by its per-sample-position twin; restore them after.

    replacements: stock processor class → twin class (a subclass that behaves exactly as the stock one
    unless given per-sample positions). A model with any processor of another kind (a user's own,
    IP-Adapter) is left untouched: yields False, and the adapter then runs the samples one at a time.
    """
    processors = transformer.attn_processors
    kinds = {type(p) for p in processors.values()}
    twins = set(replacements.values())
    if not kinds <= set(replacements) | twins:
        yield False
        return
    if kinds <= twins:
        yield True
        return
    installed = _INSTALLED.get(transformer)
    if installed is None or set(installed) != set(processors) or any(
            type(installed[name]) is not replacements.get(type(p), type(p)) for name, p in processors.items()):
        installed = {name: p if type(p) in twins else _twin(p, replacements[type(p)]) for name, p in processors.items()}
        _INSTALLED[transformer] = installed
    transformer.set_attn_processor(dict(installed))
    try:
        yield True
    finally:
        transformer.set_attn_processor(dict(processors))


def _twin(processor, cls: type):
    """The twin of a stock processor, with its attention backend and parallel config."""
    twin = cls()
    for name in ("_attention_backend", "_parallel_config"):
        if hasattr(processor, name):
            setattr(twin, name, getattr(processor, name))
    return twin


def processors_installed(transformer: torch.nn.Module, twins) -> bool:
    """True when every attention processor is one of ``twins`` (per-sample positions run batched)."""
    return all(type(p) in set(twins) for p in transformer.attn_processors.values())


def as_sigma(sigma: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """A noise level as the 0-d float32 tensor the stock pipelines compute timesteps from."""
    if isinstance(sigma, torch.Tensor):
        return sigma.to(device=device, dtype=torch.float32).reshape(())
    return torch.tensor(float(sigma), dtype=torch.float32, device=device)


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance of one run: the negative branch and the scale (no guidance when None)."""

    negative: Conditioning
    scale: float


class AdapterBase:
    """The shared part of every family adapter.

    transformer: the family's diffusers transformer; conditioning: the prompt's
    :class:`Conditioning`; guidance: a :class:`Guidance` for classifier-free guidance, or None;
    decoder: ``decoder(x0, grid)`` → images, replacing the VAE (the toy model's exact codec);
    vae: the pipeline's VAE, decoded through :func:`vae_decode` when no decoder is given. Without
    either, only ``region_source="latent"`` configs and baselines can run.
    """

    batched_guidance = False  # one call on [uncond, cond] instead of two calls
    # stock attention processor class → its twin that also takes per-sample positions
    # (:func:`processors_swapped`); empty for families whose positions need no twin
    rope_twins: Mapping[type, type] = {}

    def __init__(self, transformer, conditioning: Conditioning, guidance: Guidance | None = None, *,
                 vae=None, decoder: Decoder | None = None):
        self.transformer = transformer
        self.conditioning = conditioning
        self.guidance = guidance
        self.vae = vae
        self.decoder = decoder
        self.current: Step | None = None  # the step being evaluated, for pipelines' current_timestep
        self._warned_loop = False  # batched_rope_ready has warned

    # --- what a family overrides -----------------------------------------------------------------

    def prepare_positions(self, positions: torch.Tensor, grid: tuple[int, int], resolution: str = "full") -> Any:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, positions: Any, sigma: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """One transformer call: tokens (B, S, D) at the 0-d float32 ``sigma`` → prediction (B, S, D)."""
        raise NotImplementedError

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """Guided velocity from the two branches: ``uncond + scale·(cond - uncond)``."""
        return uncond + scale * (cond - uncond)

    def duplicate_positions(self, positions: Any) -> Any:
        """Positions for a ``[uncond, cond]`` batch of twice the size (batched guidance only)."""
        return positions

    def session(self):
        """Per-sample-RoPE processors (:attr:`rope_twins`) for batches, whose samples may choose different
        regions; nothing for one sample."""
        if self.rope_twins and self.conditioning.batch > 1:
            return processors_swapped(self.transformer, self.rope_twins)
        return nullcontext()

    def batched_rope_ready(self) -> bool:
        """True when the installed processors take per-sample positions; otherwise warns (once per
        adapter) that the batch's samples will run one at a time."""
        if processors_installed(self.transformer, self.rope_twins.values()):
            return True
        if not self._warned_loop:
            logger.warning("the attention processors cannot take per-sample positions (custom processors, or "
                           "outside %s.session()); running the samples of the batch one at a time",
                           type(self).__name__)
            self._warned_loop = True
        return False

    # --- shared --------------------------------------------------------------------------------------

    def begin_step(self, sigma: torch.Tensor | float, device: torch.device,
                   step: Step | None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Before a step's calls: forget the cache hooks' state at a stage's first step and make ``step``
        current. → (sigma as a 0-d float32 tensor, the step's fields for :func:`cache_context`); the
        caller sets ``self.current`` back to None when the step's calls are done."""
        sigma = as_sigma(sigma, device)
        if step is not None and step.starts_stage:
            reset_cache_state(self.transformer)
        self.current = step
        where = {} if step is None else dict(step_index=step.index, num_inference_steps=step.steps,
                                              timestep=sigma * TIMESTEP_SCALE, sigma=step.sigma_value)
        return sigma, where

    def velocity(self, x: torch.Tensor, positions: Any, sigma: torch.Tensor | float,
                 step: Step | None = None) -> torch.Tensor:
        """x (B, S, D) tokens at noise level sigma → the (guided) velocity, same shape and dtype."""
        sigma, where = self.begin_step(sigma, x.device, step)
        guidance = self.guidance
        try:
            if guidance is None:
                with cache_context(self.transformer, "cond", **where):
                    return self.forward(x, positions, sigma, self.conditioning)
            if self.batched_guidance:
                both = _stack_conditioning(guidance.negative, self.conditioning)
                with cache_context(self.transformer, "cond", **where):
                    out = self.forward(torch.cat([x, x]), self.duplicate_positions(positions), sigma, both)
                uncond, cond = out.chunk(2)
                return self.combine(cond, uncond, guidance.scale)
            with cache_context(self.transformer, "cond", **where):
                cond = self.forward(x, positions, sigma, self.conditioning)
            with cache_context(self.transformer, "uncond", **where):
                uncond = self.forward(x, positions, sigma, guidance.negative)
            return self.combine(cond, uncond, guidance.scale)
        finally:
            self.current = None

    def decode(self, x0: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Clean tokens (B, h·w, D) → images (B, 3, H, W) in [-1, 1], by the decoder or the VAE."""
        if self.decoder is not None:
            return self.decoder(x0, grid)
        if self.vae is None:
            raise ValueError("this adapter has neither a vae nor a decoder: pass one to decode (RALU's region "
                             "selection decodes), or use RALUConfig(region_source='latent')")
        return vae_decode(self.vae, tokens_to_latent(x0, grid))


def _stack_conditioning(negative: Conditioning, positive: Conditioning) -> Conditioning:
    """``[negative, positive]`` along the batch, field by field; text_ids (shared by the batch) stay the positive's.

    Tensors in ``extras`` must be per sample (batch first); other extras are taken from ``positive``.
    """

    def cat(a, b):
        return torch.cat([a, b]) if isinstance(b, torch.Tensor) else b

    extras = {k: cat(negative.extras.get(k), v) for k, v in positive.extras.items()}
    return Conditioning(cat(negative.embeds, positive.embeds), cat(negative.pooled, positive.pooled),
                        positive.text_ids, cat(negative.mask, positive.mask), extras)
