"""Noise for RALU's renoising at resolution changes (docs/method.md §3). Torch only.

After upsampling by a replication operator U (each value copied into a group of k positions),
the renoised latent ``x' = β·U(x) + α·n'`` is exactly on the flow path when ``n'`` has covariance
``I - 11ᵀ/Z²`` inside each group of copies and is independent across groups. Sampling it costs
O(n): ``n' = w - (1 - √(1 - k/Z²))·U(mean_group(w))`` with ``w ~ N(0, I)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Generator = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: tuple[int, ...], generator: Generator, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise drawn from the caller's generator(s).

    A list of generators draws sample b of the batch (dim 0) from ``generator[b]``, so that a
    sample gets the same noise whether it runs alone or in a batch. Noise is drawn in float32 on
    the generator's device and then moved, as diffusers' ``randn_tensor`` does.
    """
    device = torch.device(device)
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"generator list has {len(generator)} generators for a batch of {shape[0]}")
        parts = [randn((1, *shape[1:]), g, device, dtype) for g in generator]
        return torch.cat(parts, dim=0)
    draw_device = generator.device if generator is not None else device
    if draw_device.type != device.type and draw_device.type != "cpu":
        raise ValueError(f"generator is on {draw_device}, cannot draw noise for {device}")
    noise = torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def correlation_coefficient(group_size: int, noise_ratio: float) -> float:
    """``a = 1 - √(1 - k/Z²)``: the share of the group mean removed from white noise."""
    if noise_ratio**2 < group_size:
        raise ValueError(f"noise_ratio must be >= sqrt({group_size}) for groups of {group_size}, got {noise_ratio}")
    return 1.0 - math.sqrt(1.0 - group_size / noise_ratio**2)


def correlate(
    w: torch.Tensor,
    upsample: Callable[[torch.Tensor], torch.Tensor],
    pool: Callable[[torch.Tensor], torch.Tensor],
    noise_ratio: float,
    group_size: int = 4,
) -> torch.Tensor:
    """Turn white noise ``w`` (shaped like an upsampled tensor) into noise with covariance
    ``I - 11ᵀ/Z²`` inside every group of copies that ``upsample`` makes.

    upsample, pool: the replication operator U and its group mean ``Uᵀ/k`` (pool(upsample(x)) == x).
    """
    a = correlation_coefficient(group_size, noise_ratio)
    return w - a * upsample(pool(w))
