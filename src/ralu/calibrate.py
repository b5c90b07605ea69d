"""Latency, not only FLOPs: a per-host model of one transformer call's time against its token count.

FLOPs overstate RALU's wall-clock speedup: its low-resolution and mixed stages run matmuls on fewer
tokens, and fewer tokens get fewer FLOP/s, by an amount that depends on the device, dtype, size and
batch. :func:`calibrate` times one transformer call at a handful of token counts on the user's own
device and dtype (a model of the target's real width with a few blocks), and :class:`LatencyModel`
interpolates those times piecewise linearly in the token count (linear extrapolation beyond the
measured range). ``ralu schedule`` and ``ralu plan`` then show, or optimise, the predicted speedup.
The calibration is saved per model under ``~/.cache/ralu/calibration`` (``RALU_CACHE`` overrides).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .config import Baseline, RALUConfig

DEFAULT_TOKENS = (64, 144, 256, 576, 1024, 2304, 4096)


def cache_dir() -> Path:
    return Path(os.environ.get("RALU_CACHE", Path.home() / ".cache" / "ralu")) / "calibration"


def default_path(model: str) -> Path:
    """Where ``ralu bench calibrate`` saves, and ``ralu schedule`` / ``ralu plan`` look for, a model's calibration."""
    return cache_dir() / f"{model}.json"


def host() -> dict:
    """CPU model, the AMX / avx512_bf16 / avx512 flags, threads and the torch build (and the GPU, if any)."""
    flags, cpu = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info = dict(cpu=cpu, amx_bf16="amx_bf16" in flags, avx512_bf16="avx512_bf16" in flags,
                avx512f="avx512f" in flags, cores=os.cpu_count())
    try:
        import torch

        info.update(torch=torch.__version__, threads=torch.get_num_threads(),
                    gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    except ImportError:
        pass
    return info


@dataclass(frozen=True)
class LatencyModel:
    """Seconds of one transformer call (for ``batch`` samples) at measured image-token counts.

    tokens / seconds: the measured points, increasing in tokens; model: what was timed (the shipped
    model name, with its width and ``blocks``); device, dtype, text_tokens, batch: the conditions.
    """

    tokens: tuple[int, ...]
    seconds: tuple[float, ...]
    model: str
    device: str
    dtype: str
    text_tokens: int
    batch: int = 1
    blocks: tuple[int, ...] = ()
    spread: tuple[float, ...] = ()  # (max - min) / median of each point's repetitions
    host: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.tokens) < 2 or len(self.tokens) != len(self.seconds):
            raise ValueError("a latency model needs at least two (tokens, seconds) points")
        if any(a >= b for a, b in zip(self.tokens, self.tokens[1:])):
            raise ValueError(f"tokens must increase strictly, got {self.tokens}")
        if any(not s > 0 for s in self.seconds):
            raise ValueError(f"seconds must be positive, got {self.seconds}")

    def call_seconds(self, tokens: float) -> float:
        """Predicted seconds of one call at ``tokens`` image tokens."""
        t, s = np.asarray(self.tokens, float), np.asarray(self.seconds, float)
        if tokens <= t[0]:
            slope = (s[1] - s[0]) / (t[1] - t[0])
            return float(max(s[0] + slope * (tokens - t[0]), 1e-12))
        if tokens >= t[-1]:
            slope = (s[-1] - s[-2]) / (t[-1] - t[-2])
            return float(s[-1] + slope * (tokens - t[-1]))
        return float(np.interp(tokens, t, s))

    def schedule_seconds(self, schedule: RALUConfig | Baseline, full_tokens: int, branches: int = 1) -> float:
        """Predicted transformer time of a schedule: its calls per stage at their token counts."""
        steps = schedule.steps if isinstance(schedule, RALUConfig) else (schedule.steps,)
        return branches * sum(n * self.call_seconds(t) for n, t in zip(steps, schedule.tokens_per_stage(full_tokens)))

    def speedup(self, schedule: RALUConfig | Baseline, baseline: Baseline, full_tokens: int, branches: int = 1) -> float:
        """Predicted transformer-time speedup of ``schedule`` over ``baseline``."""
        return self.schedule_seconds(baseline, full_tokens, branches) / self.schedule_seconds(schedule, full_tokens,
                                                                                              branches)

    def describe(self) -> str:
        return (f"calibrated for {self.model} on {self.device} in {self.dtype}, {len(self.tokens)} points "
                f"{self.tokens[0]}-{self.tokens[-1]} tokens")

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> LatencyModel:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no latency calibration at {path}: run `ralu bench calibrate` first")
        try:
            data = json.loads(path.read_text())
            data["tokens"], data["seconds"] = tuple(data["tokens"]), tuple(data["seconds"])
            data["blocks"], data["spread"] = tuple(data.get("blocks", ())), tuple(data.get("spread", ()))
            return cls(**data)
        except (json.JSONDecodeError, TypeError, KeyError) as error:
            raise ValueError(f"{path} is not a ralu latency calibration ({error})") from None


def time_calls(run, tokens: Sequence[int], reps: int = 5, warmup: int = 1, sync=lambda: None,
               min_seconds: float = 0.0) -> tuple[list, list]:
    """Median seconds and relative spread of ``run(n)`` at each token count n (warm-up calls excluded).

    At least ``reps`` timed calls, and more until they add up to ``min_seconds``: fast calls are noisy.
    """
    medians, spreads = [], []
    for n in tokens:
        for _ in range(warmup):
            run(n)
        sync()
        times = []
        while len(times) < reps or (sum(times) < min_seconds and len(times) < 50 * reps):
            start = time.perf_counter()
            run(n)
            sync()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        medians.append(median)
        spreads.append((max(times) - min(times)) / median)
    return medians, spreads


def calibrate(model="flux-dev", tokens: Sequence[int] = DEFAULT_TOKENS, blocks: tuple[int, int] = (1, 1),
              text_tokens: int | None = None, dtype: str = "float32", device: str | None = None, reps: int = 5,
              batch: int = 1) -> LatencyModel:
    """Time one call of a transformer with ``model``'s (a shipped model name or a ModelSpec) width (heads, head dim, text width) and ``blocks``
    (double, single) blocks at each token count. FLUX.1's block structure serves every family: the time's
    shape in the token count, which the predictions use, comes from its attention and MLP widths."""
    import torch
    from diffusers import FluxTransformer2DModel

    from . import models

    spec = models.get(model) if isinstance(model, str) else model
    config = spec.transformer
    heads = config.get("num_attention_heads") or config.get("n_heads")
    head_dim = config.get("attention_head_dim") or (config["dim"] // heads)
    text_width = config.get("joint_attention_dim") or config.get("cap_feat_dim") or 4096
    text_tokens = text_tokens or spec.text_tokens
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype)
    side = 2 * (7 * head_dim // 32)  # FLUX.1's split (16, 56, 56) of 128, each even
    rope = (head_dim - 2 * side, side, side)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=blocks[0], num_single_layers=blocks[1],
                                         attention_head_dim=head_dim, num_attention_heads=heads,
                                         joint_attention_dim=text_width, pooled_projection_dim=768,
                                         guidance_embeds=True, axes_dims_rope=rope).to(device, torch_dtype).eval()
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(batch, text_tokens, text_width, generator=generator).to(device, torch_dtype)
    pooled = torch.randn(batch, 768, generator=generator).to(device, torch_dtype)
    text_ids = torch.zeros(text_tokens, 3, device=device)

    def run(n: int) -> None:
        ids = torch.zeros(n, 3, device=device)
        ids[:, 1] = torch.arange(n, device=device) // 64
        ids[:, 2] = torch.arange(n, device=device) % 64
        x = torch.randn(batch, n, 64, device=device, dtype=torch_dtype)
        with torch.no_grad():
            transformer(hidden_states=x, timestep=torch.full([batch], 0.5, device=device, dtype=torch_dtype),
                        guidance=torch.full([batch], 3.5, device=device), pooled_projections=pooled,
                        encoder_hidden_states=text, txt_ids=text_ids, img_ids=ids, return_dict=False)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    seconds, spreads = time_calls(run, sorted(set(int(t) for t in tokens)), reps=reps, sync=sync, min_seconds=3.0)
    return LatencyModel(tuple(sorted(set(int(t) for t in tokens))), tuple(seconds), spec.name, device, dtype, text_tokens,
                        batch, tuple(blocks), tuple(round(s, 4) for s in spreads), host())
