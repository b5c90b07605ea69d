"""diffusers pipeline classes running RALU."""

from __future__ import annotations

from .common import RALUPipelineOutput
from .flux import RALUFluxPipeline
from .sd3 import RALUStableDiffusion3Pipeline

__all__ = ["RALUFluxPipeline", "RALUPipelineOutput", "RALUStableDiffusion3Pipeline"]
