"""FLUX.1 behind the sampler's adapter interface: packed tokens, RoPE ids, velocity, decode.

FLUX's transformer takes one 2-D ``img_ids`` for the whole batch. When the samples of a batch
chose different regions, their positions differ; :class:`BatchedRopeFluxAttnProcessor` then
takes per-sample rotary embeddings through ``joint_attention_kwargs`` so that the batch still
runs as one transformer call per step (DIFFUSERS-NOTES.md §2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections
from diffusers.utils.torch_utils import get_module_execution_device

from ..caching import cache_context, reset_cache_state
from ..layout import tokens_to_latent
from ..sampler import Step

logger = logging.getLogger(__name__)


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, H, W) in the transformer's space → images (B, 3, 8H, 8W) in [-1, 1].

    Undoes the VAE's scaling and shift factors (FLUX and SD3 alike), on the VAE's device and dtype.
    """
    latents = latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)
    latents = latents.to(device=get_module_execution_device(vae), dtype=vae.dtype)
    return vae.decode(latents, return_dict=False)[0]


class BatchedRopeFluxAttnProcessor(FluxAttnProcessor):
    """FluxAttnProcessor that also accepts per-sample rotary embeddings.

    batched_rotary_emb: (cos, sin), each (B, S_txt + S_img, head_dim). Without it the
    processor is exactly the stock one, so installing it does not change stock pipelines.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 batched_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None):
        if batched_rotary_emb is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        q, k, v, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if attn.added_kv_proj_dim is not None:
            eq, ek, ev = (t.unflatten(-1, (-1, attn.head_dim)) for t in (eq, ek, ev))
            eq, ek = attn.norm_added_q(eq), attn.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        cos, sin = (t[:, :, None, :].to(q.device) for t in batched_rotary_emb)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        out = dispatch_attention_fn(q, k, v, attn_mask=attention_mask, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(q.dtype)
        if encoder_hidden_states is None:
            return out
        context, out = out.split_with_sizes([encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], 1)
        return attn.to_out[1](attn.to_out[0](out.contiguous())), attn.to_add_out(context.contiguous())


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """diffusers' ``apply_rotary_emb`` (use_real, unbind -1) with a batch dimension on cos/sin."""
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def ensure_batched_rope(transformer: torch.nn.Module) -> bool:
    """Install :class:`BatchedRopeFluxAttnProcessor` where the stock processor is in use.

    Returns False (and changes nothing) when some attention module has a processor of another
    kind (IP-Adapter, a user's custom processor): those cannot take per-sample positions.
    """
    processors = transformer.attn_processors
    if not all(type(p) in (FluxAttnProcessor, BatchedRopeFluxAttnProcessor) for p in processors.values()):
        return False
    if any(type(p) is FluxAttnProcessor for p in processors.values()):
        transformer.set_attn_processor({name: BatchedRopeFluxAttnProcessor() for name in processors})
    return True


@dataclass(frozen=True)
class FluxPositions:
    """Positions of one stage, ready for the transformer.

    ids: (S, 3) img_ids shared by the batch, or of sample 0 when per-sample positions differ.
    rope: per-sample (cos, sin), each (B, S_txt + S, head_dim), or None.
    per_sample_ids: (B, S, 3) when samples must run one at a time, else None.
    """

    ids: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    per_sample_ids: torch.Tensor | None = None


class FluxAdapter:
    """Velocity and decode for a ``FluxTransformer2DModel`` with fixed prompt conditioning.

    prompt_embeds: (B, T, C) T5 states; pooled_prompt_embeds: (B, P); text_ids: (T, 3).
    guidance: (B,) float32 embedded guidance for guidance-distilled models, else None.
    negative: (embeds, pooled, text_ids) for true classifier-free guidance with
        ``true_cfg_scale`` > 1, run as a second call per step exactly as ``FluxPipeline`` does.
    """

    def __init__(self, transformer, vae, prompt_embeds: torch.Tensor, pooled_prompt_embeds: torch.Tensor,
                 text_ids: torch.Tensor, guidance: torch.Tensor | None = None,
                 joint_attention_kwargs: dict | None = None,
                 negative: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 true_cfg_scale: float = 1.0, vae_scale_factor: int = 8):
        self.transformer = transformer
        self.vae = vae
        self.cond = (prompt_embeds, pooled_prompt_embeds, text_ids)
        self.negative = negative
        self.true_cfg_scale = true_cfg_scale
        self.guidance = guidance
        self.joint_attention_kwargs = dict(joint_attention_kwargs or {})
        self.vae_scale_factor = vae_scale_factor
        self._warned_loop = False

    def prepare_positions(self, positions: torch.Tensor, grid: tuple[int, int], resolution: str = "full") -> FluxPositions:
        """positions (B, S, 2) → img_ids ``[0, row, col]`` and, if samples differ, per-sample RoPE.

        RoPE is relative: FLUX needs neither the grid nor the stage's resolution.
        """
        positions = positions.to(torch.float32)
        ids = torch.cat([torch.zeros_like(positions[..., :1]), positions], dim=-1)
        if ids.shape[0] == 1 or bool((ids == ids[:1]).all()):
            return FluxPositions(ids[0])
        if not ensure_batched_rope(self.transformer):
            if not self._warned_loop:
                logger.warning("custom attention processors cannot take per-sample positions; "
                               "running the samples of the batch one at a time")
                self._warned_loop = True
            return FluxPositions(ids[0], per_sample_ids=ids)
        text_ids = self.cond[2].to(ids.device, torch.float32)
        if self.negative is not None and not torch.equal(self.negative[2].to(ids.device, torch.float32), text_ids):
            raise ValueError("negative prompt text_ids differ from the prompt's; per-sample positions need one layout")
        # one pos_embed call for the whole batch: RoPE is per position, so rows can be stacked
        batch, tokens = ids.shape[:2]
        stacked = torch.cat([text_ids.expand(batch, -1, -1), ids], dim=1).flatten(0, 1)
        cos, sin = (t.unflatten(0, (batch, -1)) for t in self.transformer.pos_embed(stacked))
        return FluxPositions(ids[0], rope=(cos, sin))

    def _call(self, x, ids, timestep, guidance, embeds, pooled, text_ids, rope):
        kwargs = self.joint_attention_kwargs if rope is None else {**self.joint_attention_kwargs, "batched_rotary_emb": rope}
        return self.transformer(hidden_states=x, timestep=timestep, guidance=guidance, pooled_projections=pooled,
                                encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=ids,
                                joint_attention_kwargs=kwargs, return_dict=False)[0]

    def _branch(self, x, positions: FluxPositions, timestep, conditioning):
        embeds, pooled, text_ids = conditioning
        if positions.per_sample_ids is None:
            return self._call(x, positions.ids, timestep, self.guidance, embeds, pooled, text_ids, positions.rope)
        outs = []
        for b, ids in enumerate(positions.per_sample_ids):
            guidance = None if self.guidance is None else self.guidance[b : b + 1]
            outs.append(self._call(x[b : b + 1], ids, timestep[b : b + 1], guidance, embeds[b : b + 1],
                                   pooled[b : b + 1], text_ids, None))
        return torch.cat(outs)

    def velocity(self, x: torch.Tensor, positions: FluxPositions, step: Step) -> torch.Tensor:
        """x (B, S, 4C) packed tokens at noise level ``step.sigma`` → velocity, same shape and dtype."""
        # the stock pipeline's rounding: timesteps are σ·1000 in float32, cast, then divided by 1000
        timestep = (step.sigma * 1000).expand(x.shape[0]).to(x.dtype) / 1000
        if step.index == 0:
            reset_cache_state(self.transformer)
        where = dict(step_index=step.index, num_inference_steps=step.steps, timestep=step.sigma * 1000,
                     sigma=step.level)
        with cache_context(self.transformer, "cond", **where):
            v = self._branch(x, positions, timestep, self.cond)
        if self.negative is not None and self.true_cfg_scale > 1:
            with cache_context(self.transformer, "uncond", **where):
                v_neg = self._branch(x, positions, timestep, self.negative)
            v = v_neg + self.true_cfg_scale * (v - v_neg)
        return v

    def decode(self, x0: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Clean tokens (B, h·w, 64) → images (B, 3, 16h, 16w) in [-1, 1], through the pipeline's VAE."""
        return vae_decode(self.vae, tokens_to_latent(x0, grid))
