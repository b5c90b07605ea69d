"""Qwen-Image behind the sampler's adapter protocol: per-token RoPE, velocity, true CFG, VAE decode.

``QwenImageTransformer2DModel.forward`` builds its rotary embedding from ``img_shapes``, a grid
shape: ``QwenEmbedRope`` (scale_rope) gives row i of an (h, w) grid the position
``i - ceil(h/2)`` (rows ``-ceil(h/2) … floor(h/2)-1``, a grid centred on 0), columns likewise,
the frame axis 0, and the text tokens the positions ``max(h//2, w//2) + t`` on all three axes.
A mixed-resolution sequence has no such grid, so :func:`transformer_tokens` runs the same
model on tokens: the stock embedders, the stock blocks called directly with rotary frequencies
computed per token by :func:`rope_frequencies` (the stock tables at whole positions, the formula
that built them, ``QwenEmbedRope.rope_params``, between), then ``norm_out``/``proj_out``. On a
uniform grid it equals the stock forward bit for bit.

Where tokens sit (``RALUConfig.table_positions``, the same three conventions as SD3's centred
table, :func:`rope_coordinates`):

- stage 1 (low-res tokens only): the stock half-resolution forward's own centred grid, the text
  after ``max(h_l//2, w_l//2)`` of that grid ("low_grid", "stock_then_full"); "full_grid" puts
  them at twice their index on the full-resolution grid instead;
- stage 2 (mixed), the default "stock_then_full" (as "full_grid"): the full-resolution grid; a
  kept low-res token (i, j) at its top-left child's position ``2i - ceil(h/2)`` (+0.5 with
  ``token_position="center"``), children on the integer positions they keep in stage 3, and the
  text after the full grid's ``max(h//2, w//2)``; "low_grid" keeps the half-resolution grid
  (children at half steps) and its text positions;
- stage 3: the stock full-resolution grid.

The stage-2 default was chosen by measurement on tiny random models (docs/families/qwenimage.md):
the children's velocities lie closer to the stock full-resolution forward's with it (about 10%
less error), the kept tokens' farther from the half-resolution forward's (about 20% more), a tie
over all tokens; the text placed after the image tokens' own grid beats the other grid in both.
Random weights are weak evidence; the tie is broken by what the measurement cannot see: children
then already sit where stage 3 keeps them, every position is a whole one (a stock table row, with
the default ``token_position="corner"``), and SD3's trained-toy measurement favoured the same
choice (docs/sd3_positions.md).

True CFG as QwenImagePipeline: a second call with the negative prompt, ``neg + s·(cond - neg)``
rescaled per token to the conditional prediction's norm. When the samples of a batch chose
different regions, :class:`BatchedRopeQwenAttnProcessor` (installed by
:meth:`QwenImageAdapter.session`) takes per-sample frequencies, so the batch is still one call
per step and guidance branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_qwenimage import (QwenDoubleStreamAttnProcessor2_0,
                                                                 compute_text_seq_len_from_mask)
from diffusers.utils.peft_utils import apply_lora_scale

from ..config import TABLE_POSITIONS
from ..layout import PATCH, tokens_to_latent
from .base import TIMESTEP_SCALE, Conditioning
from .common import AdapterBase, Decoder, Guidance, processors_swapped


# --- positions ---------------------------------------------------------------------------------------

def grid_origin(grid: tuple[int, int]) -> tuple[int, int]:
    """RoPE position of the stock grid's first row and column: ``(-ceil(h/2), -ceil(w/2))``."""
    return -(grid[0] - grid[0] // 2), -(grid[1] - grid[1] // 2)


def text_offset(grid: tuple[int, int]) -> int:
    """Position of the first text token after a stock (h, w) grid: ``max(h//2, w//2)`` (scale_rope)."""
    return max(grid[0] // 2, grid[1] // 2)


def rope_coordinates(positions: torch.Tensor, grid: tuple[int, int], full_grid: tuple[int, int], convention: str,
                     mixed: bool = False) -> tuple[torch.Tensor, int]:
    """Sampler positions → Qwen-Image RoPE positions ``(row, col)`` and the text tokens' first position.

    positions: (B, S, 2) ``(row, col)`` in units of ``grid``: the low grid ``full_grid/2`` in stages
    1-2 (children at half steps), the full grid in stage 3 and in a baseline.
    convention: a ``RALUConfig.table_positions`` value. On the full grid every convention is the
    stock one; on the low grid "low_grid" uses the stock half-resolution grid, "full_grid" the
    full-resolution grid at twice the position, and "stock_then_full" the former while the sequence
    holds low-res tokens only (stage 1) and the latter once it mixes (``mixed``, stage 2). The text
    follows the grid the image tokens are placed on.
    Returns (B, S, 2) float32 and the text offset.
    """
    if convention not in TABLE_POSITIONS:
        raise ValueError(f"table_positions must be one of {TABLE_POSITIONS}, got {convention!r}")
    full_grid = tuple(full_grid)
    low_grid = (full_grid[0] // 2, full_grid[1] // 2)
    if tuple(grid) not in (full_grid, low_grid):
        raise ValueError(f"grid must be the full token grid {full_grid} or the low grid {low_grid}, got {tuple(grid)}")
    on_full = tuple(grid) == full_grid or convention == "full_grid" or (convention == "stock_then_full" and mixed)
    placed = full_grid if on_full else low_grid
    scale = 2.0 if on_full and tuple(grid) != full_grid else 1.0
    origin = torch.tensor(grid_origin(placed), dtype=torch.float32, device=positions.device)
    return positions.to(torch.float32) * scale + origin, text_offset(placed)


def rope_frequencies(pos_embed, coords: torch.Tensor) -> torch.Tensor:
    """Qwen-Image's rotary frequencies at RoPE positions: (..., 3) ``(frame, row, col)`` → (..., F) complex64.

    F = sum(axes_dim) / 2. Whole positions inside the stock tables (-4096 … 4095) read the model's
    own ``pos_freqs``/``neg_freqs``, so uniform grids are the stock embedding bit for bit on any
    device; other positions evaluate ``pos_embed.rope_params``, the formula that built the tables.
    """
    size = pos_embed.pos_freqs.shape[0]
    # on the CPU, where the stock tables live and are built (their formula takes CPU tensors)
    table = torch.cat([pos_embed.neg_freqs, pos_embed.pos_freqs]).cpu()  # rows: positions -size … size-1
    flat = coords.reshape(-1, coords.shape[-1]).to(device="cpu", dtype=torch.float32)
    out, start = [], 0
    for axis, dim in enumerate(pos_embed.axes_dim):
        c = flat[:, axis]
        freqs = pos_embed.rope_params(c, dim, pos_embed.theta).to(table.dtype)
        whole = (c == c.round()) & (c >= -size) & (c < size)
        if bool(whole.any()):
            freqs[whole] = table[(c[whole] + size).long(), start : start + dim // 2]
        out.append(freqs)
        start += dim // 2
    return torch.cat(out, dim=-1).reshape(*coords.shape[:-1], -1).to(coords.device)


def text_frequencies(pos_embed, offset: int, length: int, device: torch.device | str) -> torch.Tensor:
    """Rows ``offset … offset+length-1`` of the stock positive table: the text tokens' (length, F) frequencies."""
    return pos_embed.pos_freqs[offset : offset + length].to(device)


# --- the model on tokens -------------------------------------------------------------------------------

@apply_lora_scale("attention_kwargs")
def transformer_tokens(transformer, tokens: torch.Tensor, image_rotary_emb: tuple[torch.Tensor, torch.Tensor],
                       encoder_hidden_states: torch.Tensor, encoder_hidden_states_mask: torch.Tensor | None,
                       timestep: torch.Tensor, attention_kwargs: dict | None = None) -> torch.Tensor:
    """``QwenImageTransformer2DModel.forward`` with the rotary embedding given instead of ``img_shapes``.

    tokens: (B, S, 64) packed 2x2 patches (ralu's ``(c, p, q)`` layout, QwenImagePipeline's packing);
    image_rotary_emb: (image (S, F) or per sample (B, S, F), text (T, F)) complex frequencies;
    encoder_hidden_states: (B, T, J) text states; encoder_hidden_states_mask: (B, T) or None;
    timestep: (B,) σ in the latents' dtype (the stock pipeline's ``t / 1000``).
    Returns (B, S, 64) in the same layout. LoRA scale in ``attention_kwargs["scale"]`` applies, as in
    the stock forward; ``enable_model_cpu_offload``'s hook runs as diffusers' ``apply_forward_hook`` does.
    """
    hook = getattr(transformer, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(transformer)
    hidden = transformer.img_in(tokens)
    timestep = timestep.to(hidden.dtype)
    context = transformer.txt_in(transformer.txt_norm(encoder_hidden_states))
    _, _, mask = compute_text_seq_len_from_mask(context, encoder_hidden_states_mask)
    temb = transformer.time_text_embed(timestep, hidden)
    for block in transformer.transformer_blocks:
        context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, encoder_hidden_states_mask=mask,
                                temb=temb, image_rotary_emb=image_rotary_emb, joint_attention_kwargs=attention_kwargs)
    return transformer.proj_out(transformer.norm_out(hidden, temb))


def _rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """diffusers' ``apply_rotary_emb_qwen`` (complex) with per-sample frequencies: x (B, S, H, D), freqs (B, S, D/2)."""
    rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs[:, :, None, :]
    return torch.view_as_real(rotated).flatten(3).type_as(x)


class BatchedRopeQwenAttnProcessor(QwenDoubleStreamAttnProcessor2_0):
    """QwenDoubleStreamAttnProcessor2_0 that also takes per-sample image frequencies.

    image_rotary_emb: (image, text); image (B, S_img, F) applies per sample. With (S_img, F)
    frequencies (or none) it is exactly the stock processor.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):
        if image_rotary_emb is None or image_rotary_emb[0].dim() == 2:
            return super().__call__(attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask,
                                    attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ValueError("BatchedRopeQwenAttnProcessor does not accept an external attention_mask")
        if encoder_hidden_states_mask is not None:
            image_mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
            attention_mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)[:, None, None, :]
        head_dim = attn.inner_dim // attn.heads
        q, k, v = (proj(hidden_states).unflatten(-1, (-1, head_dim)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        tq, tk, tv = (proj(encoder_hidden_states).unflatten(-1, (-1, head_dim))
                      for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        q, k = attn.norm_q(q), attn.norm_k(k)
        tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
        image, text = image_rotary_emb
        image = image.to(q.device)
        q, k = _rope(q, image), _rope(k, image)
        text = text[None].to(tq.device)
        tq, tk = _rope(tq, text), _rope(tk, text)
        out = dispatch_attention_fn(torch.cat([tq, q], 1), torch.cat([tk, k], 1), torch.cat([tv, v], 1),
                                    attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(q.dtype)
        seq_txt = encoder_hidden_states.shape[1]
        image_out = attn.to_out[0](out[:, seq_txt:].contiguous())
        if len(attn.to_out) > 1:
            image_out = attn.to_out[1](image_out)
        return image_out, attn.to_add_out(out[:, :seq_txt].contiguous())


_TWINS = {QwenDoubleStreamAttnProcessor2_0: BatchedRopeQwenAttnProcessor}


def per_sample_rope(transformer: torch.nn.Module):
    """Run with :class:`BatchedRopeQwenAttnProcessor` in place of the stock processors; restore them after
    (:func:`ralu.adapters.common.processors_swapped`). Yields True when per-sample positions run batched."""
    return processors_swapped(transformer, _TWINS)


@dataclass(frozen=True)
class QwenPositions:
    """Rotary frequencies of one stage.

    image: (S, F) shared by the batch, or (B, S, F) per sample; text_offset: the first text position.
    loop: True when per-sample frequencies must run one sample at a time (processors that
    cannot take them).
    """

    image: torch.Tensor
    text_offset: int
    loop: bool = False


class QwenImageAdapter(AdapterBase):
    """Velocity of a ``QwenImageTransformer2DModel`` with fixed prompt conditioning.

    conditioning: Qwen2.5-VL states (B, T, J) as ``embeds`` and their (B, T) ``mask`` (None when all
        tokens are valid), as ``QwenImagePipeline.encode_prompt`` returns them.
    full_grid: (h, w) full-resolution token grid of the run; table_positions: the
        ``RALUConfig.table_positions`` convention (:func:`rope_coordinates`).
    guidance: true CFG (``true_cfg_scale`` > 1 with a negative prompt), a second call per step
        combined by :meth:`combine`, as QwenImagePipeline.
    attention_kwargs: passed to the attention processors (``scale``: LoRA scale).
    """

    rope_twins = _TWINS

    def __init__(self, transformer, conditioning: Conditioning, full_grid: tuple[int, int],
                 guidance: Guidance | None = None, *, table_positions: str = "stock_then_full",
                 attention_kwargs: dict | None = None, vae=None, decoder: Decoder | None = None):
        config = transformer.config
        if table_positions not in TABLE_POSITIONS:
            raise ValueError(f"table_positions must be one of {TABLE_POSITIONS}, got {table_positions!r}")
        if config.patch_size != PATCH:
            raise ValueError(f"ralu's tokens are {PATCH}x{PATCH} patches; the transformer has "
                             f"patch_size={config.patch_size}")
        variants = [name for name in ("zero_cond_t", "use_additional_t_cond", "use_layer3d_rope", "guidance_embeds")
                    if config.get(name, False)]
        if variants:
            raise ValueError(f"transformer config sets {variants}: only Qwen-Image text-to-image transformers (all "
                             "four False) are supported")
        super().__init__(transformer, conditioning, guidance, vae=vae, decoder=decoder)
        self.full_grid = tuple(full_grid)
        self.table_positions = table_positions
        self.attention_kwargs = dict(attention_kwargs or {})

    def prepare_positions(self, positions: torch.Tensor, grid: tuple[int, int],
                          resolution: str = "full") -> QwenPositions:
        """positions (B, S, 2) in units of ``grid`` → per-token rotary frequencies and the text offset.

        resolution: the stage's ("low", "mixed", "full"); it decides the grid for "stock_then_full".
        """
        coords, offset = rope_coordinates(positions, grid, self.full_grid, self.table_positions,
                                          mixed=resolution == "mixed")
        shared = coords.shape[0] == 1 or bool((coords == coords[:1]).all())
        if shared:
            coords = coords[:1]
        coords = torch.cat([torch.zeros_like(coords[..., :1]), coords], dim=-1)  # frame 0, as the stock image
        image = rope_frequencies(self.transformer.pos_embed, coords)
        if shared:
            return QwenPositions(image[0], offset)
        if self.batched_rope_ready():
            return QwenPositions(image, offset)
        return QwenPositions(image, offset, loop=True)

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        """QwenImagePipeline's true CFG: ``neg + s·(cond - neg)``, rescaled per token to ‖cond‖ (channel norms).

        cond, uncond: (B, S, 64) predictions of the prompt and the negative prompt; scale: true_cfg_scale.
        """
        combined = uncond + scale * (cond - uncond)
        return combined * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))

    def _call(self, x, image, offset, timestep, conditioning: Conditioning):
        text = text_frequencies(self.transformer.pos_embed, offset, conditioning.embeds.shape[1], x.device)
        return transformer_tokens(self.transformer, x, (image, text), conditioning.embeds, conditioning.mask,
                                  timestep, attention_kwargs=self.attention_kwargs)

    def forward(self, x: torch.Tensor, positions: QwenPositions, sigma: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        # the stock pipeline's rounding: timesteps σ·1000 in float32, cast to the latents' dtype, then / 1000
        timestep = (sigma * TIMESTEP_SCALE).expand(x.shape[0]).to(x.dtype) / TIMESTEP_SCALE
        if not positions.loop:
            return self._call(x, positions.image, positions.text_offset, timestep, conditioning)
        outs = []
        for b in range(x.shape[0]):
            mask = None if conditioning.mask is None else conditioning.mask[b : b + 1]
            one = Conditioning(conditioning.embeds[b : b + 1], mask=mask)
            outs.append(self._call(x[b : b + 1], positions.image[b], positions.text_offset, timestep[b : b + 1], one))
        return torch.cat(outs)

    def decode(self, x0: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Clean tokens (B, h·w, 64) → images (B, 3, 16h, 16w) in [-1, 1], by the decoder or the Qwen-Image VAE."""
        if self.decoder is not None or self.vae is None:
            return super().decode(x0, grid)
        return qwen_vae_decode(self.vae, x0, grid)


def qwen_vae_decode(vae, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Packed tokens (B, h·w, 64) on grid (h, w) → images (B, 3, 16h, 16w) in [-1, 1], as QwenImagePipeline decodes.

    Unpacks to the VAE's (B, 16, 1, 2h, 2w) video latent, undoes the per-channel normalisation
    (``x / (1/std) + mean``, the stock arithmetic) in the VAE's dtype, decodes, keeps frame 0.
    """
    from diffusers.utils.torch_utils import get_module_execution_device

    latents = tokens_to_latent(tokens.contiguous(), grid).unsqueeze(2).to(vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    latents = (latents / inverse_std + mean).to(get_module_execution_device(vae))
    return vae.decode(latents, return_dict=False)[0][:, :, 0]
