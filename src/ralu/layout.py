"""Bookkeeping of mixed-resolution token sequences (docs/method.md).

Conventions, shared by every model adapter:
- A token is a ``p×p`` patch (p = 2) of a C-channel latent, stored channel-major as ``(C, p, p)``
  flattened: ``D = C·p·p`` values (FLUX's packing and SD3's patch-embedding weight layout).
- The full-resolution token grid is ``(h, w)``, both even; the low-resolution grid is
  ``(h/2, w/2)``. Low-res token ``(i, j)`` covers full-res tokens ``(2i+a, 2j+b)``, a, b ∈ {0, 1}:
  its four *children*, always listed in row-major ``(a, b)`` order.
- Positions are ``(row, col)`` floats in units of the grid of the current stage: the low grid in
  stages 1 and 2 (children at ``(i + a/2, j + b/2)``), the full grid in stage 3.
- A stage-2 sequence of sample b is ``[kept low-res tokens, children of selected tokens]``; its
  indices live in :class:`MixedLayout`. All samples of a batch keep the same number of tokens,
  so a batch stays one tensor even when samples upsample different regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import CHILDREN

PATCH = 2  # a token packs a PATCH × PATCH latent patch
CHILD_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))  # the CHILDREN of a low-res token, row-major


def _as_patches(x: torch.Tensor) -> torch.Tensor:
    """(B, n, C·p·p) → (B, n, C, p, p)."""
    return x.unflatten(-1, (-1, PATCH, PATCH))


def tokens_to_latent(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Tokens (B, h·w, C·p·p) in raster order on grid (h, w) → the latent image (B, C, p·h, p·w)."""
    h, w = grid
    batch, _, dim = tokens.shape
    patches = tokens.view(batch, h, w, dim // PATCH**2, PATCH, PATCH)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, dim // PATCH**2, PATCH * h, PATCH * w)


def latent_to_tokens(latents: torch.Tensor) -> torch.Tensor:
    """The latent image (B, C, p·h, p·w) → tokens (B, h·w, C·p·p) in raster order (FLUX's packing)."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // PATCH) * (width // PATCH), channels * PATCH**2)


def downsample_tokens(x: torch.Tensor, grid: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Downsampling by 2 of the latent image behind full-res tokens; white noise stays white.

    x: (B, h·w, D) tokens in raster order on the full grid ``grid = (h, w)``.
    mode: "nearest" keeps every second latent pixel per side, the top-left pixel of each 2×2
    block (docs/method.md §2, as ``F.interpolate(mode="nearest")``); "block_sum" takes each block's sum / 2
    (2 × its mean: four disjoint unit-variance values, so still unit variance and independent),
    which keeps the noise's low frequencies, those a full-resolution run starts from.
    Returns (B, h/2·w/2, D).
    """
    h, w = grid
    patches = _as_patches(x).unflatten(1, (h // 2, 2, w // 2, 2))  # B, i, a, j, b, C, p, q
    if mode == "nearest":
        low = patches[..., 0, 0]  # B, i, a, j, b, C: latent pixel (2(2i+a), 2(2j+b))
    elif mode == "block_sum":
        low = patches.sum(dim=(-2, -1)) / 2  # the block of latent pixels (2(2i+a)+p, 2(2j+b)+q)
    else:
        raise ValueError(f"noise_downsample must be one of ('nearest', 'block_sum'), got {mode!r}")
    return low.permute(0, 1, 3, 5, 2, 4).flatten(1, 2).flatten(2)  # B, (i j), (C a b)


def upsample_tokens(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Replicate each token into its four children: (B, n, D) → (B, 4n, D), children row-major.

    "token_repeat": every child is a copy of the parent token (the reference script).
    "latent_nearest": nearest upsampling of the latent image; child (a, b) holds four copies
        of the parent's latent pixel (a, b).
    """
    if mode == "token_repeat":
        return x.repeat_interleave(CHILDREN, dim=1)
    if mode == "latent_nearest":
        pixels = _as_patches(x).flatten(-2)  # B, n, C, (a b)
        children = pixels.transpose(-1, -2)[..., None].expand(*pixels.shape[:2], CHILDREN, pixels.shape[2],
                                                                PATCH * PATCH)
        return children.flatten(-2).flatten(1, 2)  # B, (n a b), (C p q)
    raise ValueError(f"upsample must be one of ('token_repeat', 'latent_nearest'), got {mode!r}")


def pool_tokens(y: torch.Tensor, mode: str) -> torch.Tensor:
    """Mean over each group of copies made by :func:`upsample_tokens`: (B, 4n, D) → (B, n, D).

    This is ``Uᵀ/4``; ``pool_tokens(upsample_tokens(x)) == x``.
    """
    if mode == "token_repeat":
        return y.unflatten(1, (-1, CHILDREN)).mean(dim=2)
    if mode == "latent_nearest":
        children = _as_patches(y).flatten(-2).unflatten(1, (-1, CHILDREN))  # B, n, (a b), C, (p q)
        parent_pixels = children.mean(dim=-1).transpose(-1, -2)  # B, n, C, (a b)
        return parent_pixels.flatten(-2)
    raise ValueError(f"upsample must be one of ('token_repeat', 'latent_nearest'), got {mode!r}")


def grid_positions(grid: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """Integer ``(row, col)`` positions of a raster grid: (h·w, 2) float32."""
    h, w = grid
    rows = torch.arange(h, device=device, dtype=torch.float32).repeat_interleave(w)
    cols = torch.arange(w, device=device, dtype=torch.float32).repeat(h)
    return torch.stack([rows, cols], dim=-1)


def low_positions(grid: tuple[int, int], token_position: str, device: torch.device | str | None = None) -> torch.Tensor:
    """Positions of low-res tokens on the low grid: (h·w, 2); "center" shifts them by ¼ to the middle of their children."""
    offset = 0.25 if token_position == "center" else 0.0
    return grid_positions(grid, device) + offset


def children_positions(parents: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Low-grid positions of the children of low-res tokens: (..., n) indices → (..., 4n, 2)."""
    h, w = grid
    rows, cols = (parents // w).float(), (parents % w).float()
    offsets = torch.tensor(CHILD_OFFSETS, dtype=torch.float32, device=parents.device) / 2
    pos = torch.stack([rows, cols], dim=-1)[..., None, :] + offsets
    return pos.flatten(-3, -2)


def children_indices(parents: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Full-grid raster indices of the children of low-res tokens: (..., n) → (..., 4n)."""
    h, w = grid
    rows, cols = parents // w, parents % w
    a = torch.tensor([o[0] for o in CHILD_OFFSETS], device=parents.device)
    b = torch.tensor([o[1] for o in CHILD_OFFSETS], device=parents.device)
    full = (2 * rows[..., None] + a) * (2 * w) + 2 * cols[..., None] + b
    return full.flatten(-2)


def _gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


@dataclass(frozen=True)
class MixedLayout:
    """Which low-res tokens of each sample go to full resolution at the stage 1 → 2 change.

    grid: (h, w) low-res token grid.
    selected: (B, k) sorted low-res indices upsampled early; kept: (B, M-k) the others, sorted.
    """

    grid: tuple[int, int]
    selected: torch.Tensor
    kept: torch.Tensor

    @classmethod
    def from_selection(cls, selected: torch.Tensor, grid: tuple[int, int]) -> MixedLayout:
        """Layout from (B, k) selected low-res token indices."""
        selected = selected.sort(dim=1).values
        batch, tokens = selected.shape[0], grid[0] * grid[1]
        is_kept = torch.ones(batch, tokens, dtype=torch.bool, device=selected.device)
        is_kept.scatter_(1, selected, False)
        kept = torch.arange(tokens, device=selected.device).expand(batch, -1)[is_kept].view(batch, -1)
        return cls(grid, selected, kept)

    @property
    def num_kept(self) -> int:
        return self.kept.shape[1]

    def mask(self) -> torch.Tensor:
        """(B, h, w) bool map of the tokens upsampled early."""
        batch = self.selected.shape[0]
        out = torch.zeros(batch, self.grid[0] * self.grid[1], dtype=torch.bool, device=self.selected.device)
        return out.scatter_(1, self.selected, True).view(batch, *self.grid)

    def split_low(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res tokens (B, M, D) → (kept (B, M-k, D), selected (B, k, D))."""
        return _gather_tokens(x, self.kept), _gather_tokens(x, self.selected)

    def split_mixed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-2 sequence (B, M-k+4k, D) → (kept low-res part, full-res children part)."""
        return x[:, : self.num_kept], x[:, self.num_kept :]

    def mixed_positions(self, token_position: str) -> torch.Tensor:
        """Stage-2 positions on the low grid: (B, M-k+4k, 2)."""
        base = low_positions(self.grid, token_position, self.kept.device)
        kept = base[self.kept]
        return torch.cat([kept, children_positions(self.selected, self.grid)], dim=1)

    def to_raster(self, kept_children: torch.Tensor, selected_children: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage-3 tokens in full-grid raster order, and their full-grid positions.

        kept_children: (B, 4(M-k), D) the kept low-res tokens after upsampling;
        selected_children: (B, 4k, D) the tokens that were already at full resolution.
        Returns tokens (B, 4M, D) and positions (B, 4M, 2), both in raster order; the positions
        come from the stage-2 geometry scaled by 2 and must equal the integer grid.
        """
        tokens = torch.cat([kept_children, selected_children], dim=1)
        target = torch.cat([children_indices(self.kept, self.grid), children_indices(self.selected, self.grid)], dim=1)
        positions = 2 * torch.cat(
            [children_positions(self.kept, self.grid), children_positions(self.selected, self.grid)], dim=1
        )
        order = target.argsort(dim=1)
        return _gather_tokens(tokens, order), _gather_tokens(positions, order)
