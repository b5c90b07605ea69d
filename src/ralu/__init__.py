"""ralu: Region-Adaptive Latent Upsampling for diffusion transformers (arXiv 2507.08422)."""

from __future__ import annotations

from .config import Baseline, RALUConfig
from .ntdm import solve_ntdm
from .sampler import SampleResult, sample

__all__ = ["Baseline", "RALUConfig", "RALUFluxPipeline", "RALUPipelineOutput", "RALUStableDiffusion3Pipeline", "SampleResult",
           "sample", "solve_ntdm"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # the pipelines import diffusers; load them on first use so that `import ralu` stays light
    if name == "RALUFluxPipeline":
        from .pipelines.flux import RALUFluxPipeline

        return RALUFluxPipeline
    if name == "RALUStableDiffusion3Pipeline":
        from .pipelines.sd3 import RALUStableDiffusion3Pipeline

        return RALUStableDiffusion3Pipeline
    if name == "RALUPipelineOutput":
        from .pipelines.common import RALUPipelineOutput

        return RALUPipelineOutput
    raise AttributeError(f"module 'ralu' has no attribute {name!r}")
