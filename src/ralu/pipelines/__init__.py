"""diffusers pipeline classes running RALU."""

from __future__ import annotations

from .common import RALUPipelineOutput
from .flux import RALUFluxPipeline

__all__ = ["RALUFluxPipeline", "RALUPipelineOutput"]
