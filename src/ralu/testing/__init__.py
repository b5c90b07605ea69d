"""Tiny randomly initialised pipelines built from the real diffusers/transformers classes, for tests and timing.

No weights can be downloaded here, so the tests assemble complete pipelines (text encoders with
hand-made tokenizers, VAE, transformer, scheduler) from tiny configs, one module per family.
The pictures are noise; the code paths are the real ones.
"""

from __future__ import annotations

from .flux_sd3 import (TINY_SD35_BLOCKS, TINY_SD3_TRANSFORMER, TINY_TRANSFORMER, TINY_VAE, WORDS, save_tiny_flux,
                       save_tiny_sd3, tiny_flux_components, tiny_sd3_components)

__all__ = ["TINY_SD35_BLOCKS", "TINY_SD3_TRANSFORMER", "TINY_TRANSFORMER", "TINY_VAE", "WORDS", "save_tiny_flux",
           "save_tiny_sd3", "tiny_flux_components", "tiny_sd3_components"]
