"""ralu: Region-Adaptive Latent Upsampling for diffusion transformers (arXiv 2507.08422)."""

from __future__ import annotations

from .config import Baseline, RALUConfig
from .ntdm import solve_ntdm

__all__ = ["Baseline", "RALUConfig", "RALUFlux2KleinPipeline", "RALUFlux2Pipeline", "RALUFluxPipeline",
           "RALUPipelineOutput", "RALUQwenImagePipeline", "RALUStableDiffusion3Pipeline", "RALUZImagePipeline",
           "SampleResult", "StepInfo", "sample", "solve_ntdm"]
__version__ = "0.2.0"

# torch and diffusers load on first use of these names, so that `import ralu` (and the CLI) stay light
_LAZY = {
    "sample": "ralu.sampler", "SampleResult": "ralu.sampler", "StepInfo": "ralu.adapters.base",
    "RALUPipelineOutput": "ralu.pipelines.common", "RALUFluxPipeline": "ralu.pipelines.flux",
    "RALUStableDiffusion3Pipeline": "ralu.pipelines.sd3", "RALUFlux2Pipeline": "ralu.pipelines.flux2",
    "RALUFlux2KleinPipeline": "ralu.pipelines.flux2", "RALUQwenImagePipeline": "ralu.pipelines.qwenimage",
    "RALUZImagePipeline": "ralu.pipelines.zimage",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ralu' has no attribute {name!r}")
