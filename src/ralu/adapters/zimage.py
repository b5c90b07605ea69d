"""Z-Image (Z-Image-Turbo, Z-Image) behind the sampler's adapter protocol: tokens, RoPE positions, velocity, guidance.

``ZImageTransformer2DModel.forward`` takes whole latent images, patchifies them itself and gives
every token integer coordinates ``(axis 0, row, col)`` that index precomputed RoPE tables
(θ 256, axes 32/48/48, tables 1536/512/512): caption token i at ``(1 + i, 0, 0)``, image token
``(h, w)`` at ``(L + 1, h, w)`` with L the caption length padded to a multiple of 32. A
fractional position has no table row, so :func:`transformer_tokens` runs the same model on a
token sequence: each token's RoPE factors are computed with the tables' own formula
(:func:`rope_factors`; whole coordinates read the tables), and the stock forward's padding is
reproduced (image and caption padded to multiples of 32 with learned pad tokens at ``(0, 0, 0)``,
the unified ``[image, caption]`` sequence right-padded across the batch under a key mask). On a
uniform grid it equals the stock forward bit for bit.

Positions. Stage 1 runs the stock half-resolution forward: low-res token ``(i, j)`` at row i,
column j. Stage 2 (``mixed_positions``) puts every token on the full-resolution grid by default
("full_grid": coordinates doubled, so the children of a selected token sit on the integer cells
they keep in stage 3, and a kept low-res token on its top-left child, or on its children's
centre with ``token_position="center"``); "low_grid" keeps stage 1's grid instead (kept tokens at
``(i, j)``, children at ``(i + a/2, j + b/2)``). Chosen by measurement on random-weight models
(docs/families/zimage.md): a full-resolution latent that is the nearest upsampling of a
half-resolution one, the mixed sequence's velocities against the stock half-resolution forward
(kept tokens) and the stock full-resolution forward (children). Each convention is closer on its
own group; over all stage-2 tokens "full_grid" is closer at the presets' up_ratio 0.3 (by 2%) and
above, "low_grid" at 0.1. Random weights are weak evidence.

Time and guidance, as ``ZImagePipeline``: the model gets ``1 - σ`` and predicts ``x0 - ε``, so
the velocity is its negation (in float32, as the pipeline's latents). Classifier-free guidance
(scale s > 0) is one call on ``[positive, negative]``, ``pred = pos + s·(pos - neg)``; steps with
``1 - σ > cfg_truncation`` run the positive branch alone; ``cfg_normalization`` clamps each
sample's ``‖pred‖`` to ``‖pos‖·value`` (norms over the whole sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF, RopeEmbedder
from diffusers.utils.peft_utils import apply_lora_scale
from torch.nn.utils.rnn import pad_sequence

from ..layout import PATCH, grid_positions, tokens_to_latent
from .base import TIMESTEP_SCALE, Conditioning, Step
from .common import AdapterBase, Decoder, Guidance, cache_context

MIXED_POSITIONS = ("full_grid", "low_grid")
PATCH_KEY = f"{PATCH}-1"  # the transformer's embedder for 2x2 spatial, 1 frame patches


# --- layouts -------------------------------------------------------------------------------------------

def to_patch_layout(tokens: torch.Tensor) -> torch.Tensor:
    """ralu's channel-major ``(c, p, q)`` tokens (B, S, C·4) → the model's ``(pF, pH, pW, C)`` = ``(p, q, c)``."""
    return tokens.unflatten(-1, (-1, PATCH, PATCH)).permute(0, 1, 3, 4, 2).flatten(2)


def from_patch_layout(tokens: torch.Tensor) -> torch.Tensor:
    """The model's ``(p, q, c)`` tokens (B, S, 4·C) → ralu's ``(c, p, q)``."""
    return tokens.unflatten(-1, (PATCH, PATCH, -1)).permute(0, 1, 4, 2, 3).flatten(2)


def captions_to_conditioning(captions: Sequence[torch.Tensor]) -> Conditioning:
    """The pipeline's caption list (B tensors (L_b, C)) → a Conditioning: ``embeds`` (B, max L, C)
    zero-padded, ``mask`` (B, max L) True on the real tokens."""
    if len(captions) == 0:
        raise ValueError("prompt_embeds must hold at least one caption tensor")
    for i, caption in enumerate(captions):
        if not isinstance(caption, torch.Tensor) or caption.dim() != 2 or caption.shape[0] < 1:
            shape = tuple(caption.shape) if isinstance(caption, torch.Tensor) else type(caption).__name__
            raise ValueError(f"prompt embeddings must be a list of (tokens >= 1, features) tensors; "
                             f"entry {i} is {shape}")
    embeds = pad_sequence(list(captions), batch_first=True)
    lengths = torch.tensor([len(c) for c in captions], device=embeds.device)
    mask = torch.arange(embeds.shape[1], device=embeds.device)[None] < lengths[:, None]
    return Conditioning(embeds, mask=mask)


def caption_list(conditioning: Conditioning) -> list[torch.Tensor]:
    """A Conditioning → the transformer's caption list: each sample's real tokens (L_b, C)."""
    if conditioning.mask is None:
        return list(conditioning.embeds.unbind(0))
    return [embeds[mask] for embeds, mask in zip(conditioning.embeds, conditioning.mask)]


def stack_conditioning(first: Conditioning, second: Conditioning) -> Conditioning:
    """``[first, second]`` along the batch, padded to the longer caption."""
    return captions_to_conditioning(caption_list(first) + caption_list(second))


# --- RoPE ----------------------------------------------------------------------------------------------

def rope_tables(transformer) -> list[torch.Tensor]:
    """The transformer's RoPE tables, one (axes_lens[k], axes_dims[k]/2) complex64 per axis, on the CPU
    (``RopeEmbedder.precompute_freqs_cis``, which the model indexes with its integer ids)."""
    c = transformer.config
    return RopeEmbedder.precompute_freqs_cis(list(c.axes_dims), list(c.axes_lens), theta=c.rope_theta)


def rope_factors(coords: torch.Tensor, dim: int, theta: float, table: torch.Tensor | None = None) -> torch.Tensor:
    """RoPE factors ``exp(i·c·ω_k)`` of one axis at coordinates c: (N,) → (N, dim/2) complex64.

    The tables' formula: ``ω_k = 1 / θ^(2k/dim)`` in float64, the angle ``c·ω_k`` in float64 rounded
    to float32, then ``polar``. Whole coordinates inside ``table`` read the table, so integer
    positions are the model's own factors bit for bit.
    """
    coords = coords.detach().to(device="cpu", dtype=torch.float64)
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = (coords[:, None] * freqs[None]).float()
    out = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
    if table is not None:
        whole = (coords == coords.round()) & (coords >= 0) & (coords < table.shape[0])
        if bool(whole.any()):
            out[whole] = table[coords[whole].long()]
    return out


# --- the model on tokens ------------------------------------------------------------------------------

@apply_lora_scale("joint_attention_kwargs")
def transformer_tokens(transformer, tokens: torch.Tensor, image_rope: torch.Tensor, captions: Sequence[torch.Tensor],
                       timestep: torch.Tensor, tables: Sequence[torch.Tensor],
                       joint_attention_kwargs: dict | None = None) -> torch.Tensor:
    """``ZImageTransformer2DModel.forward`` (basic mode) on image tokens with their own RoPE factors.

    tokens: (B, S, 4·C) image tokens in the model's ``(p, q, c)`` patch layout and dtype;
    image_rope: (B or 1, S, (d1 + d2)/2) complex64 row and column factors of every token (the
    axis-0 factor, ``L_b + 1``, follows from each caption's padded length L_b); captions: B tensors
    (L_b, cap_feat_dim); timestep: (B,) the model's time ``1 - σ``; tables: :func:`rope_tables` on
    the tokens' device. Returns (B, S, 4·C) in the same layout.
    LoRA scale in ``joint_attention_kwargs["scale"]`` applies; ``enable_model_cpu_offload``'s hook is
    run first, as the stock forward's call would.
    """
    hook = getattr(transformer, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(transformer)
    batch, count, _ = tokens.shape
    device = tokens.device
    adaln = transformer.t_embedder(timestep * transformer.t_scale).type_as(tokens)

    # image stream: padded to a multiple of 32 with copies of the last token, then the learned pad
    # token at position (0, 0, 0) (RoPE factor 1) replaces them; the pad tokens are attended to
    pad = (-count) % SEQ_MULTI_OF
    padded = torch.cat([tokens, tokens[:, -1:].expand(-1, pad, -1)], dim=1)
    x = transformer.all_x_embedder[PATCH_KEY](padded.flatten(0, 1))
    is_pad = (torch.arange(count + pad, device=device) >= count).repeat(batch)[:, None]
    x = torch.where(is_pad, transformer.x_pad_token, x).unflatten(0, (batch, -1))
    cap_lengths = [len(c) + (-len(c)) % SEQ_MULTI_OF for c in captions]
    axis0 = torch.stack([tables[0][n + 1] for n in cap_lengths])[:, None].expand(-1, count, -1)
    x_rope = torch.cat([axis0, image_rope.expand(batch, -1, -1)], dim=-1)
    x_rope = torch.cat([x_rope, torch.ones_like(x_rope[:, :1]).expand(-1, pad, -1)], dim=1)
    for layer in transformer.noise_refiner:
        x = layer(x, None, x_rope, adaln)

    # caption stream: each caption padded by repeating its last token (then the pad token), at
    # (1 + i, 0, 0); right-padded across the batch under a key mask when lengths differ
    padded_caps = [torch.cat([c, c[-1:].expand(n - len(c), -1)]) for c, n in zip(captions, cap_lengths)]
    cap = transformer.cap_embedder(torch.cat(padded_caps))
    cap_is_pad = torch.cat([torch.arange(n, device=device) >= len(c) for c, n in zip(captions, cap_lengths)])[:, None]
    cap = torch.where(cap_is_pad, transformer.cap_pad_token, cap)
    cap = pad_sequence(list(cap.split(cap_lengths)), batch_first=True)
    origin = torch.cat([tables[1][0], tables[2][0]])
    # rows past a shorter caption are masked keys whose outputs are dropped: their factors do not matter
    cap_rope = pad_sequence([torch.cat([tables[0][1 : n + 1], origin.expand(n, -1)], dim=-1) for n in cap_lengths],
                            batch_first=True)
    for layer in transformer.context_refiner:
        cap = layer(cap, _key_mask(cap_lengths, device), cap_rope)

    # the unified sequence: [image, caption] per sample
    lengths = [x.shape[1] + n for n in cap_lengths]
    unified = pad_sequence([torch.cat([x[b], cap[b, :n]]) for b, n in enumerate(cap_lengths)], batch_first=True)
    rope = pad_sequence([torch.cat([x_rope[b], cap_rope[b, :n]]) for b, n in enumerate(cap_lengths)], batch_first=True)
    mask = _key_mask(lengths, device)
    for layer in transformer.layers:
        unified = layer(unified, mask, rope, adaln)
    return transformer.all_final_layer[PATCH_KEY](unified, c=adaln)[:, :count]


def _key_mask(lengths: list[int], device: torch.device) -> torch.Tensor | None:
    """(B, max length) True on each sample's tokens, or None when all lengths are equal (the stock's rule)."""
    if len(set(lengths)) == 1:
        return None
    return torch.arange(max(lengths), device=device)[None] < torch.tensor(lengths, device=device)[:, None]


# --- the adapter -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ZImagePositions:
    """Positions of one stage, ready for the transformer.

    rope: (B or 1, S, (d1 + d2)/2) complex64 row and column RoPE factors (1 when all samples share them);
    raster: the token grid when the sequence is that whole grid in raster order (stages 1 and 3,
    baselines), else None; guidance normalisation then takes norms in the stock pipeline's layout.
    """

    rope: torch.Tensor
    raster: tuple[int, int] | None = None


class ZImageAdapter(AdapterBase):
    """Velocity of a ``ZImageTransformer2DModel`` with fixed prompt conditioning.

    conditioning: captions as :func:`captions_to_conditioning` makes them (``embeds`` padded, ``mask``).
    guidance: classifier-free guidance with the negative captions and the scale s (> 0), or None.
    cfg_truncation / cfg_normalization: as ``ZImagePipeline``'s arguments.
    mixed_positions: the stage-2 coordinates, "full_grid" (default) or "low_grid" (module docstring).
    """

    batched_guidance = True

    def __init__(self, transformer, conditioning: Conditioning, guidance: Guidance | None = None, *,
                 cfg_truncation: float | None = 1.0, cfg_normalization: bool | float = False,
                 mixed_positions: str = "full_grid", joint_attention_kwargs: dict | None = None, vae=None,
                 decoder: Decoder | None = None):
        if mixed_positions not in MIXED_POSITIONS:
            raise ValueError(f"mixed_positions must be one of {MIXED_POSITIONS}, got {mixed_positions!r}")
        patch = transformer.config.all_patch_size
        if PATCH not in patch or 1 not in transformer.config.all_f_patch_size:
            raise ValueError(f"ralu's tokens are {PATCH}x{PATCH} single-frame patches; the transformer has "
                             f"all_patch_size={patch}, all_f_patch_size={transformer.config.all_f_patch_size}")
        super().__init__(transformer, conditioning, guidance, vae=vae, decoder=decoder)
        self.cfg_truncation = cfg_truncation
        self.cfg_normalization = cfg_normalization
        self.mixed_positions = mixed_positions
        self.joint_attention_kwargs = dict(joint_attention_kwargs or {})
        self._tables = rope_tables(transformer)
        self._device_tables: dict[torch.device, list[torch.Tensor]] = {}
        self._stack_key: tuple[Conditioning, Conditioning] | None = None
        self._stack: Conditioning | None = None

    def tables(self, device: torch.device) -> list[torch.Tensor]:
        """The RoPE tables on ``device`` (moved once)."""
        if device not in self._device_tables:
            self._device_tables[device] = [t.to(device) for t in self._tables]
        return self._device_tables[device]

    def prepare_positions(self, positions: torch.Tensor, grid: tuple[int, int],
                          resolution: str = "full") -> ZImagePositions:
        """positions (B, S, 2) ``(row, col)`` in units of ``grid`` → each token's row and column RoPE factors.

        Stages 1 and 3 use the positions as they are (the stock half- and full-resolution grids);
        stage 2 (``resolution="mixed"``) follows ``mixed_positions``.
        """
        if positions.shape[0] > 1 and bool((positions == positions[:1]).all()):
            positions = positions[:1]
        coords = positions.to(torch.float32)
        if resolution == "mixed" and self.mixed_positions == "full_grid":
            coords = coords * 2
        c = self.transformer.config
        flat = coords.reshape(-1, 2)
        rope = torch.cat([rope_factors(flat[:, 0], c.axes_dims[1], c.rope_theta, self._tables[1]),
                          rope_factors(flat[:, 1], c.axes_dims[2], c.rope_theta, self._tables[2])], dim=-1)
        cells = grid_positions(grid, positions.device)
        raster = positions.shape[1] == cells.shape[0] and bool((positions.floor() == cells).all())
        rope = rope.reshape(*coords.shape[:2], -1).to(positions.device)
        return ZImagePositions(rope, tuple(grid) if raster else None)

    def duplicate_positions(self, positions: ZImagePositions) -> ZImagePositions:
        if positions.rope.shape[0] == 1:
            return positions
        return ZImagePositions(torch.cat([positions.rope, positions.rope]), positions.raster)

    def forward(self, x: torch.Tensor, positions: ZImagePositions, sigma: torch.Tensor,
                conditioning: Conditioning) -> torch.Tensor:
        """The model's prediction ``x0 - ε`` (B, S, D) of tokens x (B, S, D) at the 0-d float32 σ."""
        # ZImagePipeline's time: t = σ·1000 (the scheduler's float32 timesteps), the model gets (1000 - t)/1000
        timestep = ((TIMESTEP_SCALE - sigma * TIMESTEP_SCALE) / TIMESTEP_SCALE).expand(x.shape[0])
        dtype = self.transformer.dtype
        out = transformer_tokens(self.transformer, to_patch_layout(x.to(dtype)), positions.rope,
                                 caption_list(conditioning), timestep, self.tables(x.device),
                                 joint_attention_kwargs=self.joint_attention_kwargs)
        return from_patch_layout(out)

    def guidance_scale_at(self, sigma: float) -> float:
        """The guidance scale of a step at noise level σ: 0 without guidance or where ``1 - σ > cfg_truncation``."""
        if self.guidance is None or not self.guidance.scale > 0:
            return 0.0
        truncation = self.cfg_truncation
        if truncation is not None and float(truncation) <= 1:
            # the stock pipeline's t_norm: (1000 - t) / 1000 from the float32 timestep t = σ·1000
            t = torch.tensor(sigma, dtype=torch.float32) * TIMESTEP_SCALE
            if float((TIMESTEP_SCALE - t) / TIMESTEP_SCALE) > truncation:
                return 0.0
        return float(self.guidance.scale)

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float,
                raster: tuple[int, int] | None = None) -> torch.Tensor:
        """Z-Image's guided prediction ``pos + s·(pos - neg)`` (float32), with the norm clamp of
        ``cfg_normalization``; raster: the token grid, for norms summed in the stock latent layout."""
        pred = cond + scale * (cond - uncond)
        if not (self.cfg_normalization and float(self.cfg_normalization) > 0.0):
            return pred
        rows = []
        for b in range(pred.shape[0]):
            pos_b, pred_b = cond[b : b + 1], pred[b : b + 1]
            if raster is not None:  # the stock pipeline's (C, 1, H, W) sample, in its memory order
                pos_b, pred_b = tokens_to_latent(pos_b, raster), tokens_to_latent(pred_b, raster)
            max_norm = torch.linalg.vector_norm(pos_b) * float(self.cfg_normalization)
            norm = torch.linalg.vector_norm(pred_b)
            rows.append(torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm)))
        return pred * torch.stack(rows)[:, None, None]

    def _stacked(self) -> Conditioning:
        """``[positive, negative]`` captions for the guided call, rebuilt only when either changes."""
        key = (self.conditioning, self.guidance.negative)
        if self._stack_key is None or any(a is not b for a, b in zip(key, self._stack_key)):
            self._stack_key, self._stack = key, stack_conditioning(*key)
        return self._stack

    def velocity(self, x: torch.Tensor, positions: ZImagePositions, sigma: torch.Tensor | float,
                 step: Step | None = None) -> torch.Tensor:
        """x (B, S, D) tokens at noise level σ → the flow-matching velocity ``ε - x0`` (guided), float32.

        One transformer call per step: ``[positive, negative]`` under guidance (the positive branch
        alone on truncated steps), as ZImagePipeline.
        """
        sigma, where = self.begin_step(sigma, x.device, step)
        scale = self.guidance_scale_at(float(sigma) if step is None else step.sigma_value)
        try:
            if scale == 0.0:
                with cache_context(self.transformer, "cond", **where):
                    return -self.forward(x, positions, sigma, self.conditioning).float()
            both = self._stacked()
            with cache_context(self.transformer, "cond_uncond", **where):
                out = self.forward(torch.cat([x, x]), self.duplicate_positions(positions), sigma, both)
            cond, uncond = out.float().chunk(2)
            return -self.combine(cond, uncond, scale, positions.raster)
        finally:
            self.current = None
