"""Tiny randomly initialised pipelines built from the real diffusers/transformers classes, for tests and timing.

No weights can be downloaded here, so the tests assemble complete pipelines (text encoders with
hand-made tokenizers, VAE, transformer, scheduler) from tiny configs, one module per family.
The pictures are noise; the code paths are the real ones.
"""

from __future__ import annotations

from .flux_sd3 import (TINY_SD35_BLOCKS, TINY_SD3_TRANSFORMER, TINY_TRANSFORMER, TINY_VAE, WORDS, save_tiny_flux,
                       save_tiny_sd3, tiny_flux_components, tiny_sd3_components)
from .flux2 import save_tiny_flux2, save_tiny_flux2_klein, tiny_flux2_components, tiny_flux2_klein_components
from .qwenimage import TINY_QWEN_TRANSFORMER, TINY_QWEN_VAE, save_tiny_qwenimage, tiny_qwenimage_components
from .zimage import TINY_ZIMAGE_TRANSFORMER, save_tiny_zimage, tiny_zimage_components

__all__ = ["TINY_QWEN_TRANSFORMER", "TINY_QWEN_VAE", "TINY_SD35_BLOCKS", "TINY_SD3_TRANSFORMER", "TINY_TRANSFORMER",
           "TINY_VAE", "TINY_ZIMAGE_TRANSFORMER", "WORDS", "save_tiny_flux", "save_tiny_flux2", "save_tiny_flux2_klein",
           "save_tiny_qwenimage", "save_tiny_sd3", "save_tiny_zimage", "tiny_flux2_components",
           "tiny_flux2_klein_components", "tiny_flux_components", "tiny_qwenimage_components", "tiny_sd3_components",
           "tiny_zimage_components"]
