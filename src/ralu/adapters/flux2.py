"""FLUX.2 [dev] and [klein] behind the sampler's adapter protocol: 4-axis RoPE ids per token, velocity, decode.

Tokens. The pipelines' packed latents already are ralu's tokens: ``Flux2Pipeline._patchify_latents``
packs each 2×2 patch of the C-channel VAE latent channel-major, ``(c, p, q)`` (``view(B, C, H/2, 2,
W/2, 2).permute(0, 1, 3, 5, 2, 4)``), and ``_pack_latents`` lists the token grid in raster order;
the transformer has ``patch_size=1``. No conversion at the boundary. The values are normalised by the
VAE's BatchNorm statistics, one mean and variance per ``(c, p, q)`` channel; :func:`decode_latents`
undoes that exactly as the stock pipelines do before ``vae.decode``.

Positions. ``img_ids`` are ``(t, h, w, l) = (0, row, col, 0)``; text ids ``(0, 0, 0, l)``. The stock
half-resolution forward puts low-res tokens at integer ``(row, col)`` of the half grid; stage 1 does
the same. In the mixed stage (``mixed_positions``) a kept low-res token stays at ``(i, j)`` of the low
grid and the children of a selected token sit at ``(i + a/2, j + b/2)`` ("low_grid", the default), or
everything is scaled by 2 onto full-grid units ("full_grid": children on their stage-3 positions, kept
tokens at ``(2i, 2j)``). Measured on random tiny transformers (docs/families/flux2.md): against the
stock forwards on a latent that is the nearest upsampling of a half-resolution one, "low_grid" puts the
kept tokens 5-20% closer to the stock half-res forward, "full_grid" the children 5-10% closer to the stock
full-res forward; token-weighted the two tie. "low_grid" is the default: the kept tokens continue the
trajectory stage 1 computed in the same geometry, and it is FLUX.1's (the reference's) convention.
Random weights are weak evidence; the option stays for a measurement with the real weights.

Per-sample positions. ``Flux2Transformer2DModel`` takes one id set for the batch (``img_ids[0]``).
When the samples of a batch chose different regions, :class:`BatchedRopeFlux2AttnProcessor` (double
stream) and :class:`BatchedRopeFlux2ParallelSelfAttnProcessor` (single stream) take per-sample rotary
embeddings through ``joint_attention_kwargs``, so a batch stays one transformer call per step;
:meth:`Flux2Adapter.session` installs them for a sampling run and restores the previous processors
after. Other processors (a user's own, the KV-cache ones) are left alone and the samples run one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_flux2 import (Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor,
                                                              _get_qkv_projections)

from ..layout import tokens_to_latent
from .base import TIMESTEP_SCALE, Conditioning
from .common import AdapterBase, Decoder, Guidance, processors_swapped, rotate_pairs, rotated_joint_attention

MIXED_POSITIONS = ("low_grid", "full_grid")


class BatchedRopeFlux2AttnProcessor(Flux2AttnProcessor):
    """Flux2AttnProcessor (double-stream blocks) that also takes per-sample rotary embeddings.

    batched_rotary_emb: (cos, sin), each (B, S_txt + S_img, head_dim). Without it the processor
    is exactly the stock one.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 batched_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None):
        if batched_rotary_emb is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        out = rotated_joint_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask,
                                      batched_rotary_emb, _get_qkv_projections)
        if encoder_hidden_states is None:
            return attn.to_out[1](attn.to_out[0](out))
        context, out = out.split_with_sizes([encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], 1)
        return attn.to_out[1](attn.to_out[0](out)), attn.to_add_out(context)


class BatchedRopeFlux2ParallelSelfAttnProcessor(Flux2ParallelSelfAttnProcessor):
    """Flux2ParallelSelfAttnProcessor (single-stream blocks) that also takes per-sample rotary embeddings.

    batched_rotary_emb: (cos, sin), each (B, S_txt + S_img, head_dim). Without it the processor
    is exactly the stock one.
    """

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None,
                 batched_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None):
        if batched_rotary_emb is None:
            return super().__call__(attn, hidden_states, attention_mask, image_rotary_emb)
        hidden_states = attn.to_qkv_mlp_proj(hidden_states)
        qkv_dim = 3 * attn.inner_dim
        mlp_dim = attn.mlp_hidden_dim * attn.mlp_mult_factor
        local_qkv = hidden_states.shape[-1] * qkv_dim // (qkv_dim + mlp_dim)  # as the stock one, shard-agnostic
        qkv, mlp = torch.split(hidden_states, [local_qkv, hidden_states.shape[-1] - local_qkv], dim=-1)
        q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in qkv.chunk(3, dim=-1))
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k = rotate_pairs(q, *batched_rotary_emb), rotate_pairs(k, *batched_rotary_emb)
        out = dispatch_attention_fn(q, k, v, attn_mask=attention_mask, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(q.dtype)
        return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))


_TWINS = {Flux2AttnProcessor: BatchedRopeFlux2AttnProcessor,
          Flux2ParallelSelfAttnProcessor: BatchedRopeFlux2ParallelSelfAttnProcessor}


def per_sample_rope(transformer: torch.nn.Module):
    """Run with the per-sample-RoPE processors in place of the stock ones; restore the previous ones after
    (:func:`ralu.adapters.common.processors_swapped`). A model with another kind of processor (a user's
    own, Flux2KVAttnProcessor) is left untouched and yields False."""
    return processors_swapped(transformer, _TWINS)


def decode_latents(vae, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Normalised tokens (B, h·w, 4C) on ``grid`` → the VAE's latent image (B, C, 2h, 2w), as the stock pipelines.

    Undoes the BatchNorm normalisation (``x·sqrt(running_var + eps) + running_mean`` per ``(c, p, q)``
    channel, in the tokens' dtype), then unpatchifies.
    """
    mean = vae.bn.running_mean.to(tokens.device, tokens.dtype)
    std = torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps).to(tokens.device, tokens.dtype)
    return tokens_to_latent(tokens * std + mean, grid)


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """The VAE latent image (B, C, H, W) → images (B, 3, 8H, 8W) in [-1, 1], on the VAE's device and dtype."""
    from diffusers.utils.torch_utils import get_module_execution_device

    latents = latents.to(device=get_module_execution_device(vae), dtype=vae.dtype)
    return vae.decode(latents, return_dict=False)[0]


@dataclass(frozen=True)
class Flux2Positions:
    """Positions of one stage, ready for the transformer.

    ids: (S, 4) img_ids shared by the batch, or of sample 0 when per-sample positions differ.
    rope: per-sample image (cos, sin), each (B, S, head_dim), or None.
    per_sample_ids: (B, S, 4) when samples must run one at a time, else None.
    """

    ids: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    per_sample_ids: torch.Tensor | None = None


class Flux2Adapter(AdapterBase):
    """Velocity of a ``Flux2Transformer2DModel`` with fixed prompt conditioning.

    conditioning: stacked text-encoder states (B, T, J) as ``embeds``, ``text_ids`` (T, 4).
    guidance: true classifier-free guidance (FLUX.2 [klein] base, ``guidance_scale`` > 1), run as a
        second call per step against the negative prompt, ``uncond + scale·(cond - uncond)``, as
        Flux2KleinPipeline does.
    embedded_guidance: (B,) float32 guidance of guidance-distilled models (FLUX.2 [dev]), else None.
    mixed_positions: "low_grid" or "full_grid", where the mixed stage puts its tokens (module docstring).
    """

    rope_twins = _TWINS

    def __init__(self, transformer, conditioning: Conditioning, guidance: Guidance | None = None, *,
                 embedded_guidance: torch.Tensor | None = None, joint_attention_kwargs: dict | None = None,
                 mixed_positions: str = "low_grid", vae=None, decoder: Decoder | None = None):
        if mixed_positions not in MIXED_POSITIONS:
            raise ValueError(f"mixed_positions must be one of {MIXED_POSITIONS}, got {mixed_positions!r}")
        super().__init__(transformer, conditioning, guidance, vae=vae, decoder=decoder)
        self.embedded_guidance = embedded_guidance
        self.joint_attention_kwargs = dict(joint_attention_kwargs or {})
        self.mixed_positions = mixed_positions

    def prepare_positions(self, positions: torch.Tensor, grid: tuple[int, int],
                          resolution: str = "full") -> Flux2Positions:
        """positions (B, S, 2) → img_ids ``(0, row, col, 0)`` and, if samples differ, per-sample image RoPE.

        RoPE is relative, so the grid is not needed; ``resolution="mixed"`` scales by 2 for "full_grid".
        """
        positions = positions.to(torch.float32)
        if resolution == "mixed" and self.mixed_positions == "full_grid":
            positions = 2 * positions
        zeros = torch.zeros_like(positions[..., :1])
        ids = torch.cat([zeros, positions, zeros], dim=-1)
        if ids.shape[0] == 1 or bool((ids == ids[:1]).all()):
            return Flux2Positions(ids[0])
        if not self.batched_rope_ready():
            return Flux2Positions(ids[0], per_sample_ids=ids)
        # one pos_embed call for the whole batch: RoPE is per position, so rows can be stacked
        cos, sin = (t.unflatten(0, ids.shape[:2]) for t in self.transformer.pos_embed(ids.flatten(0, 1)))
        return Flux2Positions(ids[0], rope=(cos, sin))

    def _call(self, x, ids, timestep, guidance, conditioning: Conditioning, rope):
        kwargs = self.joint_attention_kwargs
        if rope is not None:
            # text positions per branch (the negative prompt may have its own length)
            text = self.transformer.pos_embed(conditioning.text_ids)
            rope = tuple(torch.cat([t.expand(x.shape[0], -1, -1), r.to(t.device)], dim=1) for t, r in zip(text, rope))
            kwargs = {**kwargs, "batched_rotary_emb": rope}
        return self.transformer(hidden_states=x.to(self.transformer.dtype), timestep=timestep, guidance=guidance,
                                encoder_hidden_states=conditioning.embeds, txt_ids=conditioning.text_ids, img_ids=ids,
                                joint_attention_kwargs=kwargs, return_dict=False)[0]

    def forward(self, x: torch.Tensor, positions: Flux2Positions, sigma: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        # the stock pipelines' rounding: timesteps σ·1000 in float32, cast to the latents' dtype, then / 1000
        timestep = (sigma * TIMESTEP_SCALE).expand(x.shape[0]).to(x.dtype) / TIMESTEP_SCALE
        guidance = self.embedded_guidance
        if positions.per_sample_ids is None:
            return self._call(x, positions.ids, timestep, guidance, conditioning, positions.rope)
        outs = []
        for b, ids in enumerate(positions.per_sample_ids):
            one = Conditioning(conditioning.embeds[b : b + 1], text_ids=conditioning.text_ids)
            outs.append(self._call(x[b : b + 1], ids, timestep[b : b + 1],
                                   None if guidance is None else guidance[b : b + 1], one, None))
        return torch.cat(outs)

    def decode(self, x0: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Clean tokens (B, h·w, D) → images (B, 3, 16h, 16w) in [-1, 1], by the decoder or the VAE."""
        if self.decoder is not None or self.vae is None:
            return super().decode(x0, grid)
        return vae_decode(self.vae, decode_latents(self.vae, x0, grid))
