"""Closeness to a reference image of the same prompt and seed: PSNR, SSIM, edge error (scikit-image).

These punish any change of composition, so they favour step reduction by construction; the quality
benchmark reports them only as secondary "closeness to the baseline image" columns. The SD3 position
benchmark (``ralu bench positions``) compares position conventions with them, where composition is
meant to stay the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ralu.demo import shapes


def _grey(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    return rgb2gray(image)


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of an (H, W, 3) image in [0, 1] against the reference (inf when identical)."""
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(image, reference):
        return math.inf
    return float(peak_signal_noise_ratio(reference, image, data_range=1.0))


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """SSIM of (H, W, 3) images in [0, 1] (scikit-image, 7×7 window, mean over channels)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(reference, image, channel_axis=-1, data_range=1.0))


def edge_band(reference: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool: the reference's Canny edges (σ = 1) dilated by ``width`` px."""
    from scipy import ndimage
    from skimage.feature import canny

    edges = canny(_grey(reference), sigma=1.0)
    return ndimage.binary_dilation(edges, iterations=width) if width else edges


def edge_error(image: np.ndarray, reference: np.ndarray) -> float:
    """Relative gradient error in the band around the reference's edges (NaN when it has none)."""
    from skimage.filters import sobel

    band = edge_band(reference)
    if not band.any():
        return math.nan
    g_image, g_reference = sobel(_grey(image)), sobel(_grey(reference))
    return float(np.abs(g_image - g_reference)[band].mean() / max(g_reference[band].mean(), 1e-8))


def score_images(batch: np.ndarray, reference: np.ndarray, targets: Sequence) -> dict[str, list]:
    """Per-image metrics of (B, H, W, 3) images in [0, 1]: PSNR, SSIM, edge error against the
    reference images, and the prompt checks (all, colour, shape, relation) against the targets."""
    per_image = dict(psnr=[psnr(i, r) for i, r in zip(batch, reference)],
                     ssim=[ssim(i, r) for i, r in zip(batch, reference)],
                     edge_error=[edge_error(i, r) for i, r in zip(batch, reference)])
    checks = [shapes.check_prompt(i, t) for i, t in zip(batch, targets)]
    for key in ("all", "colour", "shape", "relation"):
        per_image[f"prompt_{key}"] = [c[key] for c in checks]
    return per_image


def paired_difference(first: Sequence[float | None], second: Sequence[float | None]) -> dict:
    """Mean of first − second over the pairs where both are finite, with 2 standard errors (ci) and n."""
    diff = [x - y for x, y in zip(first, second)
            if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)]
    s = summary(diff)
    return dict(mean=s["mean"], ci=None if s["se"] is None else 2 * s["se"], n=s["n"])


def summary(values: Sequence[float]) -> dict:
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(finite) == 0:
        return dict(mean=None, se=None, n=0)
    se = float(finite.std(ddof=1) / np.sqrt(len(finite))) if len(finite) > 1 else 0.0
    return dict(mean=float(finite.mean()), se=se, n=int(len(finite)))


def fmt(summary: dict, digits: int) -> str:
    if summary["mean"] is None:
        return "—"
    return f"{summary['mean']:.{digits}f} ± {summary['se']:.{digits}f}"
