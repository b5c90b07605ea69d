"""``ralu generate``: load a pipeline (or the shipped toy model), run a schedule, save the images.

Everything that can be checked without weights is checked before loading: the schedule, the
size for the model family, the device, the output path, the checkpoint's pipeline class.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# the stock pipeline class names (model_index.json) → (family, RALU pipeline class path)
PIPELINES = {
    "FluxPipeline": ("flux", "ralu.pipelines.flux:RALUFluxPipeline"),
    "StableDiffusion3Pipeline": ("sd3", "ralu.pipelines.sd3:RALUStableDiffusion3Pipeline"),
    "Flux2Pipeline": ("flux2", "ralu.pipelines.flux2:RALUFlux2Pipeline"),
    "Flux2KleinPipeline": ("flux2", "ralu.pipelines.flux2:RALUFlux2KleinPipeline"),
    "QwenImagePipeline": ("qwenimage", "ralu.pipelines.qwenimage:RALUQwenImagePipeline"),
    "ZImagePipeline": ("zimage", "ralu.pipelines.zimage:RALUZImagePipeline"),
}
# whole tokens at half resolution: 8x VAE, 2x2 patches, halved
SIZE_MULTIPLE = 32


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    prompt: str
    config: object | None
    size: tuple[int, int] | None
    seed: int
    guidance: float | None
    true_cfg_scale: float | None
    negative_prompt: str | None
    num_images: int
    dtype: str
    device: str
    paths: Sequence[Path]


def model_index(model: str) -> dict:
    """The checkpoint's model_index.json, from a local folder or the local hub cache (never waits on the network
    when offline); raises ValueError with what to do when it cannot be read."""
    folder = Path(model)
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.is_file():
            raise ValueError(f"{model} has no model_index.json: pass a diffusers pipeline folder "
                             "(save_pretrained), a hub id, or 'toy'")
        return json.loads(index.read_text())
    if folder.exists() or model.count("/") != 1:
        raise ValueError(f"model must be a diffusers pipeline folder, a hub id such as "
                         f"black-forest-labs/FLUX.1-dev, or 'toy'; got {model!r}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = hf_hub_download(model, "model_index.json", local_files_only=_offline())
    except LocalEntryNotFoundError:
        raise ValueError(f"{model} is not in the local hub cache and the hub is not reachable (offline): download it "
                         f"on a connected machine (huggingface-cli download {model}) or pass a local folder") from None
    except GatedRepoError:
        raise ValueError(f"{model} is gated: accept its licence on huggingface.co, then run "
                         "huggingface-cli login (or set HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ValueError(f"{model} is not a repository on the hub (or it is private: huggingface-cli login)") from None
    return json.loads(Path(path).read_text())


def _offline() -> bool:
    import os

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    import socket

    try:  # a quick probe instead of the hub client's retries
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return False
    except OSError:
        return True


def family_of(model: str) -> str:
    """The model family of a checkpoint (from its pipeline class), or "toy"."""
    if model == "toy":
        return "toy"
    return _pipeline_entry(model_index(model))[0]


def _pipeline_entry(index: dict) -> tuple[str, str]:
    name = index.get("_class_name", "")
    name = name.removeprefix("RALU")
    if name not in PIPELINES:
        raise ValueError(f"this checkpoint is a {name or 'pipeline without _class_name'}; ralu generate runs "
                         f"{', '.join(sorted(PIPELINES))}")
    return PIPELINES[name]


def pipeline_class(index: dict):
    """The RALU pipeline class for a model_index.json."""
    import importlib

    module, _, name = _pipeline_entry(index)[1].partition(":")
    return getattr(importlib.import_module(module), name)


def dtype_argument(dtype) -> dict:
    """``dtype=`` where diffusers has renamed ``torch_dtype`` (0.36 on; the old name warns), else ``torch_dtype=``."""
    import inspect

    from diffusers import DiffusionPipeline

    return {"dtype" if "dtype" in inspect.signature(DiffusionPipeline.from_pretrained).parameters
            or _renamed() else "torch_dtype": dtype}


def _renamed() -> bool:
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return False
    return True


def run_generate(request: GenerateRequest, say: Callable[[str], None] = print) -> None:
    if request.model == "toy":
        _generate_toy(request, say)
        return
    import torch

    from .config import RALUConfig

    index = model_index(request.model)
    cls = pipeline_class(index)
    if request.size is not None:
        multiple = SIZE_MULTIPLE if request.config is None or isinstance(request.config, RALUConfig) \
            else SIZE_MULTIPLE // 2
        for name, value in zip(("height", "width"), request.size):
            if value is not None and value % multiple:
                raise ValueError(f"--{name} must be a multiple of {multiple} px for this schedule, got {value}")
    dtype = getattr(torch, "float32" if request.dtype == "auto" and request.device == "cpu" else
                    "bfloat16" if request.dtype == "auto" else request.dtype)
    start = time.perf_counter()
    pipe = cls.from_pretrained(request.model, **dtype_argument(dtype)).to(request.device)
    say(f"loaded {request.model} ({cls.__name__}) on {request.device} ({str(dtype).removeprefix('torch.')}) in "
        f"{time.perf_counter() - start:.1f} s")
    say(request.config.describe() if request.config is not None else f"schedule: {cls.__name__}'s default preset")
    kwargs = dict(num_images_per_prompt=request.num_images,
                  generator=torch.Generator("cpu").manual_seed(request.seed), config=request.config)
    if request.size is not None:
        kwargs.update({k: v for k, v in zip(("height", "width"), request.size) if v is not None})
    if request.guidance is not None:
        kwargs["guidance_scale"] = request.guidance
    if request.true_cfg_scale is not None:
        kwargs["true_cfg_scale"] = request.true_cfg_scale
    if request.negative_prompt is not None:
        kwargs["negative_prompt"] = request.negative_prompt
    start = time.perf_counter()
    output = pipe(prompt=request.prompt, **kwargs)
    total = time.perf_counter() - start
    _report(output.stage_steps, output.stage_tokens, output.stage_seconds, output.regions, total, say)
    _save(output.images, request.paths, say)


def _report(steps, tokens, seconds, regions, total: float, say) -> None:
    for k, (n, t, s) in enumerate(zip(steps, tokens, seconds)):
        say(f"  stage {k + 1}: {n:>3} steps  {t:>6} image tokens  {s:8.2f} s")
    say(f"  sampling {sum(seconds):.2f} s, total {total:.2f} s (text encoding and decoding included), "
        f"{sum(steps)} model calls")
    if regions is None:
        say("  regions: none (single-resolution schedule)")
    else:
        counts = ", ".join(str(int(r.sum())) for r in regions)
        say(f"  regions upsampled early: {counts} of {regions[0].numel()} low-res tokens")


def _save(images, paths: Sequence[Path], say) -> None:
    """Write the images; on any failure (Ctrl-C included) remove what this call wrote."""
    written = []
    try:
        for image, path in zip(images, paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    for image, path in zip(images, written):
        say(f"saved {path} ({image.width}x{image.height})")


def _generate_toy(request: GenerateRequest, say) -> None:
    from PIL import Image

    from .config import RALUConfig
    from .demo import model as toy
    from .demo.images import to_uint8

    height, width = request.size or (None, None)
    height, width = height or width or toy.RESOLUTION, width or height or toy.RESOLUTION
    toy.token_grid(height, width)  # raises for sizes the toy cannot take
    config = request.config if request.config is not None else RALUConfig.preset("flux-dev-4x")
    if request.true_cfg_scale is not None:
        raise ValueError("--true-cfg-scale does not apply to the toy model: use --guidance (CFG against the empty prompt)")
    if request.negative_prompt is not None:
        raise ValueError("--negative-prompt does not apply to the toy model (its guidance uses the empty prompt)")
    model = toy.load_toy(device=request.device)
    model.tokenizer([request.prompt])  # unknown words fail here, with the vocabulary
    guidance = toy.DEFAULT_GUIDANCE if request.guidance is None else request.guidance
    say(f"toy model ({sum(p.numel() for p in model.transformer.parameters()) / 1e6:.1f} M parameters), "
        f"{width}x{height} px, guidance {guidance:g}")
    say(config.describe())
    seeds = [request.seed + i for i in range(request.num_images)]
    start = time.perf_counter()
    images, result = toy.generate(model, [request.prompt] * len(seeds), seeds, config, guidance, height, width)
    total = time.perf_counter() - start
    regions = None if result.layout is None else result.layout.mask()
    _report(result.stage_steps, result.stage_tokens, result.stage_seconds, regions, total, say)
    _save([Image.fromarray(p) for p in to_uint8(images)], request.paths, say)
