"""diffusers pipeline classes running RALU, one per model family."""

from __future__ import annotations

from .common import RALUPipelineOutput
from .flux import RALUFluxPipeline
from .flux2 import RALUFlux2KleinPipeline, RALUFlux2Pipeline
from .qwenimage import RALUQwenImagePipeline
from .sd3 import RALUStableDiffusion3Pipeline
from .zimage import RALUZImagePipeline

__all__ = ["RALUFlux2KleinPipeline", "RALUFlux2Pipeline", "RALUFluxPipeline", "RALUPipelineOutput",
           "RALUQwenImagePipeline", "RALUStableDiffusion3Pipeline", "RALUZImagePipeline"]
