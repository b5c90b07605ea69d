"""The model families ralu knows offline: shipped transformer, scheduler and VAE configs, stock defaults.

``ralu schedule``, the planner and the evaluation's FLOPs column need a model's cost and its
stock schedule without loading weights. Each ``data/models/<name>.json`` holds the released
checkpoint's transformer config, scheduler config and VAE decoder cost, with the stock pipeline's
defaults (steps, text tokens per call, guidance branches per step). Pure Python: no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .config import Baseline, RALUConfig
from .cost import call_flops, schedule_cost
from .schedule import dynamic_shift_mu, shift_of_mu

REFERENCE_SIZE = (1024, 1024)  # presets' numbers hold exactly at this size


@dataclass(frozen=True)
class ModelSpec:
    """One released model, as far as schedules and costs are concerned.

    family: "flux", "sd3", "flux2", "qwenimage" or "zimage" (which adapter runs it);
    pipeline: the stock diffusers pipeline class name; hub: the checkpoint's hub id;
    transformer / scheduler: the released config.json dicts (read-only);
    decode_flops: (a, b) with one VAE decode of P output pixels costing ``a·P + b·P²`` FLOPs;
    steps, text_tokens, branches: the stock pipeline's steps, text tokens per transformer call and
    transformer calls per step (2 under classifier-free guidance);
    preset: the RALU preset its pipeline uses by default; presets: those made for this model (solved for
    its stock schedule); pixels_per_token: 16 (8x VAE, 2x2 patches).
    """

    name: str
    family: str
    pipeline: str
    hub: str
    transformer: Mapping[str, Any]
    scheduler: Mapping[str, Any]
    decode_flops: tuple[float, float]
    steps: int
    text_tokens: int
    branches: int
    preset: str
    presets: tuple[str, ...] = ()
    pixels_per_token: int = 16

    def image_tokens(self, height: int, width: int) -> int:
        """Transformer image tokens of a ``height`` x ``width`` px image."""
        return (height // self.pixels_per_token) * (width // self.pixels_per_token)

    def stock_shift(self, image_tokens: int, steps: int | None = None) -> float:
        """The stock schedule's shift h at this many image tokens (its dynamic shifting included).

        steps: the run's step count, for families whose μ depends on it (FLUX.2).
        """
        c = self.scheduler
        if not c.get("use_dynamic_shifting", False):
            return shift_of_mu(c, None)
        if self.family == "flux2":
            return shift_of_mu(c, flux2_empirical_mu(image_tokens, steps or self.steps))
        return shift_of_mu(c, dynamic_shift_mu(c, image_tokens))

    def resolve(self, config: RALUConfig | Baseline, height: int, width: int) -> RALUConfig | Baseline:
        """The schedule this model's pipeline would run at this size (auto base shift matched)."""
        tokens = self.image_tokens(height, width)
        if isinstance(config, Baseline):
            return config.resolve(self.stock_shift(tokens, config.steps))
        # the stock schedule RALU matches is the model's own baseline (its default steps, for FLUX.2's μ)
        reference = self.stock_shift(self.image_tokens(*REFERENCE_SIZE))
        return config.resolve(self.stock_shift(tokens), reference)

    def decode(self, height: int, width: int) -> float:
        """FLOPs of one VAE decode to ``height`` x ``width`` px."""
        a, b = self.decode_flops
        pixels = height * width
        return a * pixels + b * pixels * pixels

    def call_flops(self, image_tokens: int) -> float:
        """FLOPs of one transformer call for one sample at this many image tokens."""
        return call_flops(self.transformer, image_tokens, self.text_tokens)

    def cost(self, config: RALUConfig | Baseline, height: int, width: int, branches: int | None = None,
             skipped: tuple[int, ...] | None = None) -> float:
        """End-to-end FLOPs of one image: transformer calls (times the guidance branches), the final
        decode and, for RALU with ``region_source="decoded"``, the half-resolution decode of region selection."""
        branches = self.branches if branches is None else branches
        tokens = self.image_tokens(height, width)
        total = branches * schedule_cost(config, tokens, self.transformer, self.text_tokens, skipped).total
        total += self.decode(height, width)
        if isinstance(config, RALUConfig) and config.region_source == "decoded":
            total += self.decode(height // 2, width // 2)
        return total


def flux2_empirical_mu(image_tokens: int, steps: int) -> float:
    """FLUX.2's μ (diffusers' ``compute_empirical_mu``): fitted in the token count and the step count."""
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    if image_tokens > 4300:
        return float(a2 * image_tokens + b2)
    m_200 = a2 * image_tokens + b2
    m_10 = a1 * image_tokens + b1
    a = (m_200 - m_10) / 190.0
    b = m_200 - 200.0 * a
    return float(a * steps + b)


@lru_cache(maxsize=None)
def _load(name: str) -> ModelSpec:
    data = json.loads(resources.files("ralu").joinpath("data", "models", f"{name}.json").read_text())
    return ModelSpec(name=name, family=data["family"], pipeline=data["pipeline"], hub=data["hub"],
                     transformer=MappingProxyType(data["transformer"]), scheduler=MappingProxyType(data["scheduler"]),
                     decode_flops=tuple(data["vae"]["decode_flops"]), steps=data["steps"],
                     text_tokens=data["text_tokens"], branches=data["branches"], preset=data["preset"],
                     presets=tuple(data.get("presets", ())), pixels_per_token=data.get("pixels_per_token", 16))


def names() -> tuple[str, ...]:
    """The shipped models' names."""
    folder = resources.files("ralu").joinpath("data", "models")
    return tuple(sorted(Path(str(entry)).stem for entry in folder.iterdir() if str(entry).endswith(".json")))


def get(name: str) -> ModelSpec:
    """A shipped model by name (``ralu.models.names()``)."""
    if name not in names():
        raise ValueError(f"model must be one of {list(names())}, got {name!r}")
    return _load(name)


def for_preset(preset: str) -> ModelSpec:
    """The model a preset was made for (the first model file listing it; FLUX.1-dev for custom configs)."""
    for name in names():
        if preset in get(name).presets:
            return get(name)
    return get("flux-dev")


def vae_decode_coefficients(vae_config: Mapping[str, Any]) -> tuple[float, float]:
    """(a, b) of an AutoencoderKL decode costing ``a·P + b·P²`` FLOPs for P output pixels, from two
    counts with torch's FlopCounterMode on the meta device (convolutions are linear in P, the mid-block
    attention quadratic). Imports torch and diffusers."""
    from .cost import vae_decode_flops

    small, large = 256 * 256, 512 * 512
    f_small, f_large = vae_decode_flops(vae_config, 256, 256), vae_decode_flops(vae_config, 512, 512)
    b = (f_large / large - f_small / small) / (large - small)
    a = f_small / small - b * small
    return float(a), float(b) if not math.isclose(b, 0.0, abs_tol=1e-12) else 0.0
