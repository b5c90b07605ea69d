"""FLUX.1 behind the sampler's adapter protocol: RoPE ids per token, velocity, guidance.

FLUX's transformer takes one 2-D ``img_ids`` for the whole batch. When the samples of a batch
chose different regions, their positions differ; :class:`BatchedRopeFluxAttnProcessor` then
takes per-sample rotary embeddings through ``joint_attention_kwargs`` so that the batch still
runs as one transformer call per step. The adapter's :meth:`FluxAdapter.session` installs those
processors for the duration of a sampling run and restores the previous ones afterwards; where
a user's own processors are installed, it leaves them and runs the samples one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from .base import TIMESTEP_SCALE, Conditioning
from .common import AdapterBase, Decoder, Guidance, processors_swapped, rotated_joint_attention

class BatchedRopeFluxAttnProcessor(FluxAttnProcessor):
    """FluxAttnProcessor that also accepts per-sample rotary embeddings.

    batched_rotary_emb: (cos, sin), each (B, S_txt + S_img, head_dim). Without it the
    processor is exactly the stock one.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 batched_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None):
        if batched_rotary_emb is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        out = rotated_joint_attention(self, attn, hidden_states, encoder_hidden_states, attention_mask,
                                      batched_rotary_emb, _get_qkv_projections)
        if encoder_hidden_states is None:
            return out
        context, out = out.split_with_sizes([encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], 1)
        return attn.to_out[1](attn.to_out[0](out.contiguous())), attn.to_add_out(context.contiguous())


_TWINS = {FluxAttnProcessor: BatchedRopeFluxAttnProcessor}


def per_sample_rope(transformer: torch.nn.Module):
    """Run with :class:`BatchedRopeFluxAttnProcessor` in place of the stock processors; restore them after
    (:func:`ralu.adapters.common.processors_swapped`). Yields True when per-sample positions run batched."""
    return processors_swapped(transformer, _TWINS)


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


class FluxAdapter(AdapterBase):
    """Velocity of a ``FluxTransformer2DModel`` with fixed prompt conditioning.

    conditioning: T5 states (B, T, C) as ``embeds``, CLIP pooled (B, P) as ``pooled``, ``text_ids`` (T, 3).
    guidance: true classifier-free guidance (``true_cfg_scale`` > 1 with a negative prompt), run
        as a second call per step, as ``FluxPipeline`` does.
    embedded_guidance: (B,) float32 guidance of guidance-distilled models (FLUX.1-dev), else None.
    """

    rope_twins = _TWINS

    def __init__(self, transformer, conditioning: Conditioning, guidance: Guidance | None = None, *,
                 embedded_guidance: torch.Tensor | None = None, joint_attention_kwargs: dict | None = None,
                 vae=None, decoder: Decoder | None = None):
        super().__init__(transformer, conditioning, guidance, vae=vae, decoder=decoder)
        self.embedded_guidance = embedded_guidance
        self.joint_attention_kwargs = dict(joint_attention_kwargs or {})

    def prepare_positions(self, positions: torch.Tensor, grid: tuple[int, int], resolution: str = "full") -> FluxPositions:
        """positions (B, S, 2) → img_ids ``[0, row, col]`` and, if samples differ, per-sample RoPE.

        RoPE is relative: FLUX needs neither the grid nor the stage's resolution.
        """
        positions = positions.to(torch.float32)
        ids = torch.cat([torch.zeros_like(positions[..., :1]), positions], dim=-1)
        if ids.shape[0] == 1 or bool((ids == ids[:1]).all()):
            return FluxPositions(ids[0])
        if not self.batched_rope_ready():
            return FluxPositions(ids[0], per_sample_ids=ids)
        text_ids = self.conditioning.text_ids.to(ids.device, torch.float32)
        negative = self.guidance.negative.text_ids if self.guidance is not None else None
        if negative is not None and not torch.equal(negative.to(ids.device, torch.float32), text_ids):
            raise ValueError("negative prompt text_ids differ from the prompt's; per-sample positions need one layout")
        # one pos_embed call for the whole batch: RoPE is per position, so rows can be stacked
        batch = ids.shape[0]
        stacked = torch.cat([text_ids.expand(batch, -1, -1), ids], dim=1).flatten(0, 1)
        cos, sin = (t.unflatten(0, (batch, -1)) for t in self.transformer.pos_embed(stacked))
        return FluxPositions(ids[0], rope=(cos, sin))

    def _call(self, x, ids, timestep, guidance, conditioning: Conditioning, rope):
        kwargs = self.joint_attention_kwargs if rope is None else {**self.joint_attention_kwargs,
                                                                    "batched_rotary_emb": rope}
        return self.transformer(hidden_states=x, timestep=timestep, guidance=guidance,
                                pooled_projections=conditioning.pooled, encoder_hidden_states=conditioning.embeds,
                                txt_ids=conditioning.text_ids, img_ids=ids, joint_attention_kwargs=kwargs,
                                return_dict=False)[0]

    def forward(self, x: torch.Tensor, positions: FluxPositions, sigma: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        # the stock pipeline's rounding: timesteps σ·1000 in float32, cast to the latents' dtype, then / 1000
        timestep = (sigma * TIMESTEP_SCALE).expand(x.shape[0]).to(x.dtype) / TIMESTEP_SCALE
        guidance = self.embedded_guidance
        if positions.per_sample_ids is None:
            return self._call(x, positions.ids, timestep, guidance, conditioning, positions.rope)
        outs = []
        for b, ids in enumerate(positions.per_sample_ids):
            one = Conditioning(conditioning.embeds[b : b + 1], conditioning.pooled[b : b + 1], conditioning.text_ids)
            outs.append(self._call(x[b : b + 1], ids, timestep[b : b + 1],
                                   None if guidance is None else guidance[b : b + 1], one, None))
        return torch.cat(outs)
