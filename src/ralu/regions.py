"""Edge-based choice of the regions RALU upsamples first (docs/method.md §2).

Decoded clean estimates → grey → Canny → edge pixels counted in each low-res token's
footprint → the top ``k`` tokens per sample.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .layout import tokens_to_latent

CANNY_THRESHOLDS = (100, 200)


def to_gray_uint8(images: torch.Tensor, clip_unit: bool = False) -> np.ndarray:
    """Images (B, 3, H, W) in [-1, 1] → (B, H, W) uint8 grey (ITU-R 601 luma).

    clip_unit: reproduce the reference script, which clips the [-1, 1] output to [0, 1]
    (so every dark pixel becomes black); otherwise [-1, 1] is mapped onto [0, 1] first.
    """
    rgb = images.detach().to(device="cpu", dtype=torch.float32)
    gray = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    if not clip_unit:
        gray = (gray + 1.0) / 2.0
    # truncation, as the reference's astype(uint8)
    return (gray.clamp(0.0, 1.0) * 255.0).numpy().astype(np.uint8)


def edge_scores(images: torch.Tensor, grid: tuple[int, int], clip_unit: bool = False) -> torch.Tensor:
    """Canny edge pixels per low-res token: images (B, 3, H, W) in [-1, 1] → (B, h·w) float32.

    grid: (h, w) low-res token grid; each token's footprint is (H/h) × (W/w) pixels
    (16×16 for FLUX and SD3 at the low resolution).
    The integer part is the paper's score, the edge-pixel count. A fraction below 0.5 adds the
    token's share of the image's Sobel gradient energy, which only orders tokens with equal counts:
    on smooth decodes Canny (thresholds 100/200) can find no edge at all, and the choice then
    follows the strongest gradients instead of an arbitrary tie-break.
    """
    import cv2

    h, w = grid
    batch, _, height, width = images.shape
    if height % h or width % w:
        raise ValueError(f"image size {height}x{width} is not a multiple of the token grid {h}x{w}")
    gray = to_gray_uint8(images, clip_unit)
    edges = np.stack([cv2.Canny(g, *CANNY_THRESHOLDS) for g in gray]).astype(np.float32) / 255.0
    gradient = np.stack([np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)) for g in gray])

    def per_token(pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pixels).view(batch, h, height // h, w, width // w).sum(dim=(2, 4)).flatten(1)

    energy = per_token(gradient)
    return per_token(edges) + 0.49 * energy / (energy.amax(dim=1, keepdim=True) + 1e-6)


def latent_edge_scores(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Decode-free edge score per low-res token: tokens (B, h·w, C·2·2) → (B, h·w) float32.

    The clean-estimate latent is reassembled from its 2×2-patch tokens (ralu's channel-major
    packing), its Sobel gradient magnitude is summed over channels and over each token's
    footprint. A cheaper stand-in for decoding + Canny: no VAE call, no image-sized tensors.
    """
    h, w = grid
    batch, _, dim = tokens.shape
    latent = tokens_to_latent(tokens.float(), grid)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=tokens.device)
    kernels = torch.stack([sobel, sobel.T])[:, None].repeat(dim // 4, 1, 1, 1)
    padded = F.pad(latent, (1, 1, 1, 1), mode="replicate")
    grads = F.conv2d(padded, kernels, groups=dim // 4).view(batch, dim // 4, 2, 2 * h, 2 * w)
    magnitude = grads.pow(2).sum(dim=2).sqrt().sum(dim=1)
    return magnitude.view(batch, h, 2, w, 2).sum(dim=(2, 4)).flatten(1).cpu()


def select_tokens(scores: torch.Tensor, count: int, grid: tuple[int, int]) -> torch.Tensor:
    """Indices of the ``count`` highest-scoring tokens per sample: scores (B, h·w) → (B, count) sorted.

    Exact ties (e.g. flat regions, where even the gradient term of :func:`edge_scores` is zero)
    are broken deterministically: first by the score of the 3×3 token neighbourhood (tokens next
    to edges come first), then by index. The reference breaks ties with global random noise.
    """
    batch = scores.shape[0]
    if count == 0:
        return torch.zeros(batch, 0, dtype=torch.long, device=scores.device)
    maps = scores.view(batch, 1, *grid).double()
    neighbourhood = F.avg_pool2d(maps, 3, stride=1, padding=1, count_include_pad=False).flatten(1)
    # small enough never to reorder distinct scores (edge_scores' fractions are float32 multiples of ~1e-7)
    key = scores.double() + 1e-9 * neighbourhood / (neighbourhood.amax(dim=1, keepdim=True) + 1.0)
    order = torch.argsort(key, dim=1, descending=True, stable=True)
    return order[:, :count].sort(dim=1).values
