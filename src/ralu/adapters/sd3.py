"""Stable Diffusion 3 / 3.5 behind the sampler's adapter interface: tokens, table positions, velocity, decode.

``SD3Transformer2DModel.forward`` embeds one whole latent image: a stride-2 convolution, then a
centre crop of its sin-cos position table is added (docs/method.md §4). A mixed-resolution
sequence has no such image, so :func:`transformer_tokens` runs the same model on tokens: the
stock patch convolution (on the latent image when the tokens form a raster grid, else on each
token's own patch), the sin-cos embedding evaluated at each token's (possibly fractional) table
coordinates, the joint blocks called directly, then ``norm_out``/``proj_out``. On a uniform grid
it equals the stock forward bit for bit.

Classifier-free guidance runs ``[uncond, cond]`` as one batch of 2B, as the stock pipeline does;
the two halves of a sample share its positions, and per-sample positions are just a (B, S, D)
embedding, so a batch whose samples chose different regions is still one call per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid
from diffusers.utils.peft_utils import apply_lora_scale

from ..config import TABLE_POSITIONS
from ..layout import PATCH, grid_positions, tokens_to_latent
from .base import TIMESTEP_SCALE, Conditioning
from .common import AdapterBase, Decoder, Guidance


def crop_origin(table_size: int, grid: tuple[int, int]) -> tuple[int, int]:
    """Top-left table cell of the stock centre crop for a token grid (h, w): ``((M-h)//2, (M-w)//2)``."""
    return (table_size - grid[0]) // 2, (table_size - grid[1]) // 2


def table_coordinates(positions: torch.Tensor, grid: tuple[int, int], full_grid: tuple[int, int],
                      table_size: int, convention: str, mixed: bool = False) -> torch.Tensor:
    """Sampler positions → coordinates in SD3's position table, in table cells.

    positions: (B, S, 2) ``(row, col)`` in units of ``grid``: the low grid ``full_grid/2`` in
    stages 1-2 (children at half steps), the full grid in stage 3 and in a baseline.
    convention: a ``RALUConfig.table_positions`` value. On the full grid every convention is the
    stock crop; on the low grid "low_grid" uses the stock half-resolution crop, "full_grid" the
    full-resolution crop at twice the position, and "stock_then_full" the former while the
    sequence holds low-res tokens only (stage 1) and the latter once it mixes (``mixed``, stage 2).
    Returns (B, S, 2) float32.
    """
    if convention not in TABLE_POSITIONS:
        raise ValueError(f"table_positions must be one of {TABLE_POSITIONS}, got {convention!r}")
    low_grid = (full_grid[0] // 2, full_grid[1] // 2)
    if tuple(grid) not in (tuple(full_grid), low_grid):
        raise ValueError(f"grid must be the full token grid {full_grid} or the low grid {low_grid}, got {grid}")
    positions = positions.to(torch.float32)
    on_full = tuple(grid) == tuple(full_grid) or convention == "full_grid" or (
        convention == "stock_then_full" and mixed)
    if on_full:
        scale = 1.0 if tuple(grid) == tuple(full_grid) else 2.0
        origin = crop_origin(table_size, full_grid)
    else:
        scale, origin = 1.0, crop_origin(table_size, low_grid)
    return positions * scale + torch.tensor(origin, dtype=torch.float32, device=positions.device)


def table_embedding(patch_embed, coords: torch.Tensor) -> torch.Tensor:
    """SD3's sin-cos position embedding at table coordinates: (..., 2) ``(row, col)`` cells → (..., D).

    Whole cells inside the table read the model's own table buffer (so a checkpoint whose
    stored table differs from the formula is still reproduced exactly); other coordinates
    evaluate the formula that built it: cell c encodes ``c / (M / base)``, the first D/2
    channels embed the column and the last D/2 the row, in float64 from float32 coordinates.
    """
    table = patch_embed.pos_embed[0]  # (M·M, D), row-major cells
    size, dim = patch_embed.pos_embed_max_size, table.shape[-1]
    flat = coords.reshape(-1, 2).to(device=table.device, dtype=torch.float32)
    # the stock table: arange(M) / (M / base_size) / interpolation_scale, in float32
    scaled = flat / (size / patch_embed.base_size) / patch_embed.interpolation_scale
    out = torch.cat([get_1d_sincos_pos_embed_from_grid(dim // 2, scaled[:, 1]),
                     get_1d_sincos_pos_embed_from_grid(dim // 2, scaled[:, 0])], dim=1).float().to(table.dtype)
    whole = (flat == flat.round()).all(dim=1) & (flat >= 0).all(dim=1) & (flat <= size - 1).all(dim=1)
    if bool(whole.any()):
        cells = (flat[whole, 0] * size + flat[whole, 1]).long()
        out[whole] = table[cells]
    return out.reshape(*coords.shape[:-1], dim)


@apply_lora_scale("joint_attention_kwargs")
def transformer_tokens(transformer, tokens: torch.Tensor, position_embedding: torch.Tensor,
                       encoder_hidden_states: torch.Tensor, pooled_projections: torch.Tensor, timestep: torch.Tensor,
                       raster: tuple[int, int] | None = None, joint_attention_kwargs: dict | None = None) -> torch.Tensor:
    """``SD3Transformer2DModel.forward`` on a token sequence instead of a latent image.

    tokens: (B, S, C·p·p) patches in ralu's channel-major ``(c, p, q)`` layout (the patch
    convolution's weight layout); position_embedding: (B or 1, S, D) from :func:`table_embedding`;
    timestep: (B,) σ·1000. raster: the (h, w) grid when the tokens are that grid in raster order:
    they are then embedded by the stride-p convolution on their latent image, exactly as the stock
    forward (per-token convolution rounds differently for some shapes: up to 6e-7 on CPU).
    Returns (B, S, C_out·p·p) in the same ``(c, p, q)`` layout.
    LoRA scale in ``joint_attention_kwargs["scale"]`` applies, as in the stock forward.
    ``enable_model_cpu_offload``'s hook moves the model to the accelerator when its ``forward``
    is called; this function calls the model's parts instead, so it runs the hook itself, as
    diffusers' ``apply_forward_hook`` does for ``AutoencoderKL.decode``.
    """
    hook = getattr(transformer, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(transformer)
    proj = transformer.pos_embed.proj
    batch, count, _ = tokens.shape
    p = transformer.config.patch_size
    tokens = tokens.to(proj.weight.dtype)
    if raster is None:  # the stock Conv2d on each token's own p×p patch
        h = proj(tokens.reshape(batch * count, -1, p, p)).reshape(batch, count, -1)
    else:
        h = proj(tokens_to_latent(tokens.contiguous(), raster)).flatten(2).transpose(1, 2)
    h = (h + position_embedding).to(h.dtype).contiguous()
    temb = transformer.time_text_embed(timestep, pooled_projections)
    context = transformer.context_embedder(encoder_hidden_states)
    for block in transformer.transformer_blocks:
        context, h = block(hidden_states=h, encoder_hidden_states=context, temb=temb,
                           joint_attention_kwargs=joint_attention_kwargs)
    out = transformer.proj_out(transformer.norm_out(h, temb))
    # per-token (p, q, c) → ralu's (c, p, q)
    return out.unflatten(-1, (p, p, -1)).permute(0, 1, 4, 2, 3).flatten(2)


@dataclass(frozen=True)
class SD3Positions:
    """Position embedding of one stage: (B, S, D), or (1, S, D) when all samples share positions.

    raster: the token grid (h, w) when the sequence is that whole grid in raster order (stages 1
    and 3, baselines), else None (stage 2).
    """

    embedding: torch.Tensor
    raster: tuple[int, int] | None = None


class SD3Adapter(AdapterBase):
    """Velocity of an ``SD3Transformer2DModel`` with fixed prompt conditioning.

    conditioning: joint CLIP+T5 states (B, T, J) as ``embeds``, pooled (B, P) as ``pooled``.
    guidance: classifier-free guidance; every step runs ``[uncond, cond]`` as one batch and returns
        the guided velocity, as StableDiffusion3Pipeline.
    full_grid: (h, w) full-resolution token grid of the run; table_positions: the
        ``RALUConfig.table_positions`` convention (see :func:`table_coordinates`).
    """

    batched_guidance = True

    def __init__(self, transformer, conditioning: Conditioning, full_grid: tuple[int, int],
                 guidance: Guidance | None = None, *, table_positions: str = "stock_then_full",
                 joint_attention_kwargs: dict | None = None, vae=None, decoder: Decoder | None = None):
        if table_positions not in TABLE_POSITIONS:
            raise ValueError(f"table_positions must be one of {TABLE_POSITIONS}, got {table_positions!r}")
        if transformer.config.patch_size != PATCH:
            raise ValueError(f"ralu's tokens are {PATCH}x{PATCH} patches; the transformer has "
                             f"patch_size={transformer.config.patch_size}")
        super().__init__(transformer, conditioning, guidance, vae=vae, decoder=decoder)
        self.full_grid = tuple(full_grid)
        self.table_positions = table_positions
        self.joint_attention_kwargs = dict(joint_attention_kwargs or {})

    def prepare_positions(self, positions: torch.Tensor, grid: tuple[int, int], resolution: str = "full") -> SD3Positions:
        """positions (B, S, 2) in units of ``grid`` → the sin-cos embedding each token gets added.

        resolution: the stage's ("low", "mixed", "full"); it decides the table for "stock_then_full".
        """
        patch_embed = self.transformer.pos_embed
        if positions.shape[0] > 1 and bool((positions == positions[:1]).all()):
            positions = positions[:1]
        coords = table_coordinates(positions, grid, self.full_grid, patch_embed.pos_embed_max_size,
                                   self.table_positions, mixed=resolution == "mixed")
        cells = grid_positions(grid, positions.device)
        raster = positions.shape[1] == cells.shape[0] and bool((positions.floor() == cells).all())
        return SD3Positions(table_embedding(patch_embed, coords), tuple(grid) if raster else None)

    def duplicate_positions(self, positions: SD3Positions) -> SD3Positions:
        embedding = positions.embedding
        if embedding.shape[0] == 1:
            return positions
        return SD3Positions(torch.cat([embedding, embedding]), positions.raster)

    def forward(self, x: torch.Tensor, positions: SD3Positions, sigma: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        # the stock pipeline's timestep: σ·1000 in float32 (the scheduler's timesteps)
        timestep = (sigma * TIMESTEP_SCALE).to(torch.float32).expand(x.shape[0])
        return transformer_tokens(self.transformer, x, positions.embedding, conditioning.embeds, conditioning.pooled,
                                  timestep, raster=positions.raster, joint_attention_kwargs=self.joint_attention_kwargs)
