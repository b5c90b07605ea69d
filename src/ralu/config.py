"""RALU sampling configurations: validated, frozen, with the paper's presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

from .schedule import Stage, renoise_coefficients, restart_progress, stage_sigmas

UPSAMPLE_MODES = ("token_repeat", "latent_nearest")
TOKEN_POSITIONS = ("corner", "center")
TABLE_POSITIONS = ("low_grid", "full_grid", "stock_then_full")
REGION_SOURCES = ("decoded", "latent")
NOISE_DOWNSAMPLE_MODES = ("nearest", "block_sum")
# The fields that choose between implementations of one step (not the schedule), with their values.
VARIANT_OPTIONS = {"upsample": UPSAMPLE_MODES, "canny_clip_unit": (False, True), "token_position": TOKEN_POSITIONS,
                   "exact_kept_noise": (False, True), "table_positions": TABLE_POSITIONS,
                   "region_source": REGION_SOURCES, "noise_downsample": NOISE_DOWNSAMPLE_MODES}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RALUConfig:
    """A three-stage RALU schedule (DESIGN.md §2).

    steps: (N1, N2, N3) model calls per stage (paper N).
    ends: (e1, e2, 1.0) progress at which each stage ends (paper e), 0 < e1 < e2 < 1.
    up_ratio: fraction of low-res tokens upsampled early, at the stage 1 → 2 change (paper r).
    shifts: (H1, H2, H3) per-stage scheduler shifts (paper h); solved by NT-DM when None.
    noise_ratio: Z = 1/√c of the renoising, Z ≥ 2; solved by NT-DM when None.
    base_shift: the model's stock shift h0 that NT-DM matches (3.0 for FLUX.1-dev and SD3).
    upsample: "token_repeat" (the reference script: each packed 2×2-patch token copied four
        times) or "latent_nearest" (nearest upsampling of the latent image), DESIGN.md §7.1.
    canny_clip_unit: True reproduces the reference script, which clips the decoded image to
        [0, 1] before Canny although the VAE outputs [-1, 1] (§7.2); False maps [-1, 1] → [0, 1].
    token_position: "corner" (the reference: a low-res token sits at its top-left child) or
        "center" (at the centre of its four children), §7.4.
    exact_kept_noise: False keeps the reference's renoising of tokens that are not upsampled
        (noise level α·√(1+1/Z²)); True scales their fresh noise to give exactly α (§3).
    table_positions: where tokens sit in an absolute position table (SD3's centre-cropped sin-cos
        table; FLUX's RoPE ignores it). "stock_then_full" (default): stage 1 uses the stock
        half-resolution crop (the model's own half-resolution generation), stage 2 the stock
        full-resolution crop with each child on its stage-3 cell and a low-res token at twice its
        low-grid position; stage 3 the stock full-resolution crop. "low_grid" (the reference's
        FLUX convention carried over): stages 1-2 in the half-resolution crop, children at
        half-cell offsets. "full_grid": the full-resolution crop from stage 1 on. Measured on the
        SD3-architecture toy (docs/sd3_positions.md): the half-resolution crop predicts stage 1
        best, the full-resolution crop stage 2's children best.
    region_source: "decoded" (the paper: decode the clean estimate at low resolution, Canny on
        the image) or "latent" (Sobel magnitude of the clean-estimate latent itself: no VAE decode).
    noise_downsample: how stage 1's half-resolution noise comes from the full-resolution noise:
        "block_sum" (default: each 2×2 block's sum / 2) or "nearest" (the paper: one latent pixel
        of each block). Both give white noise, the same distribution; "block_sum" keeps the
        noise's low frequencies, so a seed lays out the picture more as the full-resolution
        baseline does with the same seed (docs/quality.md).
    name: preset name, for display only.
    """

    steps: tuple[int, ...]
    ends: tuple[float, ...]
    up_ratio: float
    shifts: tuple[float, ...] | None = None
    noise_ratio: float | None = None
    base_shift: float = 3.0
    upsample: str = "token_repeat"
    canny_clip_unit: bool = False
    token_position: str = "corner"
    exact_kept_noise: bool = False
    table_positions: str = "stock_then_full"
    region_source: str = "decoded"
    noise_downsample: str = "block_sum"
    name: str | None = field(default=None, compare=False)

    PRESETS: ClassVar[dict[str, dict]] = {
        # The reference script's presets for FLUX.1-dev at 1024² (DESIGN.md §6).
        "flux-dev-4x": dict(steps=(5, 6, 7), ends=(0.3, 0.45, 1.0), up_ratio=0.3,
                            shifts=(5.019, 2.589, 2.226), noise_ratio=6.317),
        "flux-dev-7x": dict(steps=(2, 3, 5), ends=(0.2, 0.3, 1.0), up_ratio=0.1,
                            shifts=(8.141, 2.856, 2.193), noise_ratio=6.261),
        # The paper's SD3-Medium schedules at 1024² (baseline 28 steps, base shift 3.0), Z = 1/√c.
        "sd3-2x": dict(steps=(5, 6, 9), ends=(0.2, 0.3, 1.0), up_ratio=0.3,
                       shifts=(6.121, 2.23, 1.97), noise_ratio=1 / math.sqrt(0.0586)),
        "sd3-3x": dict(steps=(3, 3, 6), ends=(0.25, 0.3, 1.0), up_ratio=0.2,
                       shifts=(6.40, 2.60, 2.273), noise_ratio=1 / math.sqrt(0.0255)),
        # FLUX.1-schnell (timestep-distilled, 4 steps, shift 1.0, no guidance embedding): its four
        # steps split 2/1/1 over the stages; H and Z from NT-DM with base shift 1.0, which lands on
        # the bounds (H2 = 0.5, Z = 2) for so few steps. Not validated on real weights.
        "flux-schnell-2x": dict(steps=(2, 1, 1), ends=(0.5, 0.75, 1.0), up_ratio=0.3, base_shift=1.0,
                                shifts=(0.574, 0.5, 0.878), noise_ratio=2.0),
    }

    def __post_init__(self) -> None:
        steps, ends = tuple(self.steps), tuple(self.ends)
        if len(steps) != 3 or not all(_is_int(n) and n >= 1 for n in steps):
            raise ValueError(f"steps must be three integers >= 1 (N1, N2, N3), got {self.steps!r}")
        if len(ends) != 3 or not all(isinstance(e, (int, float)) for e in ends):
            raise ValueError(f"ends must be three progresses (e1, e2, 1.0), got {self.ends!r}")
        ends = tuple(float(e) for e in ends)
        if not (0.0 < ends[0] < ends[1] < ends[2]) or ends[2] != 1.0:
            raise ValueError(f"ends must increase strictly from above 0 and end at 1.0 (0 < e1 < e2 < e3 = 1), got {self.ends!r}")
        if not isinstance(self.up_ratio, (int, float)) or not 0.0 <= self.up_ratio <= 1.0:
            raise ValueError(f"up_ratio must be in [0, 1], got {self.up_ratio!r}")
        if not isinstance(self.base_shift, (int, float)) or not self.base_shift > 0:
            raise ValueError(f"base_shift must be > 0, got {self.base_shift!r}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if self.token_position not in TOKEN_POSITIONS:
            raise ValueError(f"token_position must be one of {TOKEN_POSITIONS}, got {self.token_position!r}")
        if self.region_source not in REGION_SOURCES:
            raise ValueError(f"region_source must be one of {REGION_SOURCES}, got {self.region_source!r}")
        if self.noise_downsample not in NOISE_DOWNSAMPLE_MODES:
            raise ValueError(f"noise_downsample must be one of {NOISE_DOWNSAMPLE_MODES}, got {self.noise_downsample!r}")
        if self.table_positions not in TABLE_POSITIONS:
            raise ValueError(f"table_positions must be one of {TABLE_POSITIONS}, got {self.table_positions!r}")
        shifts, noise_ratio = self.shifts, self.noise_ratio
        if shifts is not None:
            shifts = tuple(shifts)
            if len(shifts) != 3 or not all(isinstance(h, (int, float)) and h > 0 for h in shifts):
                raise ValueError(f"shifts must be three numbers > 0 (H1, H2, H3), got {self.shifts!r}")
        if noise_ratio is not None and (not isinstance(noise_ratio, (int, float)) or not noise_ratio >= 2.0):
            raise ValueError(f"noise_ratio must be >= 2 (Z = 1/sqrt(c), c <= 1/4), got {self.noise_ratio!r}")
        if shifts is None or noise_ratio is None:
            from .ntdm import solve_ntdm

            solved_shifts, solved_ratio = solve_ntdm(steps, ends, float(self.base_shift))
            shifts = solved_shifts if shifts is None else shifts
            noise_ratio = solved_ratio if noise_ratio is None else noise_ratio
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "ends", ends)
        object.__setattr__(self, "up_ratio", float(self.up_ratio))
        object.__setattr__(self, "shifts", tuple(float(h) for h in shifts))
        object.__setattr__(self, "noise_ratio", float(noise_ratio))

    @classmethod
    def preset(cls, name: str, **overrides) -> RALUConfig:
        """A named preset (``flux-dev-4x``, ``flux-dev-7x``, ``sd3-2x``, ``sd3-3x``), optionally with fields replaced."""
        if name not in cls.PRESETS:
            raise ValueError(f"preset must be one of {sorted(cls.PRESETS)}, got {name!r}")
        return cls(**{**cls.PRESETS[name], "name": name, **overrides})

    def replace(self, **changes) -> RALUConfig:
        """A copy with fields changed (validated again)."""
        return replace(self, **changes)

    @property
    def restarts(self) -> tuple[float, ...]:
        """Restart progress s_k of each stage."""
        return restart_progress(self.ends, self.noise_ratio)

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The three stages with their σ grids and the renoising applied on entering each."""
        out = []
        for k, resolution in enumerate(("low", "mixed", "full")):
            alpha, beta = (1.0, 1.0) if k == 0 else renoise_coefficients(self.ends[k - 1], self.noise_ratio)
            sigmas = stage_sigmas(self.restarts[k], self.ends[k], self.steps[k], self.shifts[k])
            out.append(Stage(resolution, tuple(float(s) for s in sigmas), alpha, beta))
        return tuple(out)

    def selected_tokens(self, low_tokens: int) -> int:
        """Tokens upsampled at the stage 1 → 2 change: ``floor(r · M_low)``.

        A small epsilon guards against float products such as ``0.29 * 100 = 28.999…``
        (the reference's ``int(M * r)`` would select one token too few there).
        """
        return min(low_tokens, math.floor(self.up_ratio * low_tokens + 1e-9))

    def tokens_per_stage(self, full_tokens: int) -> tuple[int, int, int]:
        """Image tokens of each stage for ``full_tokens`` tokens at full resolution (a multiple of 4)."""
        low = full_tokens // 4
        k = self.selected_tokens(low)
        return low, low - k + 4 * k, full_tokens

    def describe(self) -> str:
        """One line: the schedule, then any variant option that differs from its default."""
        label = self.name or "custom"
        changed = [f"{name}={getattr(self, name)}" for name in VARIANT_OPTIONS
                   if getattr(self, name) != self.__dataclass_fields__[name].default]
        return (f"{label}: steps={self.steps} ends={self.ends} up_ratio={self.up_ratio} "
                f"shifts={tuple(round(h, 3) for h in self.shifts)} noise_ratio={self.noise_ratio:.3f}"
                + (f" ({', '.join(changed)})" if changed else ""))


@dataclass(frozen=True)
class Baseline:
    """The stock single-resolution schedule, run through the same sampler as RALU.

    steps: model calls (50 for FLUX.1-dev in the paper, 28 for SD3).
    shift: scheduler shift h of the uniform grid ``linspace(1, 0, steps+1)``; None lets the
        pipeline use its scheduler's own shift (resolution-dependent for FLUX).
    sigmas: an explicit (steps+1,) grid, 1 → 0, e.g. a scheduler's own (SD3's pipeline lets the
        scheduler end its grid at a shifted σ_min before 0); overrides ``shift``.
    """

    steps: int = 50
    shift: float | None = None
    name: str | None = field(default=None, compare=False)
    sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.steps) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.shift is not None and (not isinstance(self.shift, (int, float)) or not self.shift > 0):
            raise ValueError(f"shift must be > 0 or None, got {self.shift!r}")
        if self.sigmas is not None:
            sigmas = tuple(float(x) for x in self.sigmas)
            if len(sigmas) != self.steps + 1 or sigmas[-1] != 0.0 or not sigmas[0] <= 1.0 or any(
                    a <= b for a, b in zip(sigmas, sigmas[1:])):
                raise ValueError(f"sigmas must be {self.steps + 1} decreasing noise levels from <= 1 to 0, got {self.sigmas!r}")
            object.__setattr__(self, "sigmas", sigmas)

    @property
    def stages(self) -> tuple[Stage, ...]:
        if self.sigmas is not None:
            return (Stage("full", self.sigmas),)
        if self.shift is None:
            raise ValueError("Baseline.shift is None: resolve it first (the pipeline does, from its scheduler)")
        return (Stage("full", tuple(float(s) for s in stage_sigmas(0.0, 1.0, self.steps, self.shift))),)

    def tokens_per_stage(self, full_tokens: int) -> tuple[int]:
        return (full_tokens,)

    def describe(self) -> str:
        grid = ("the scheduler's own grid" if self.sigmas is not None
                else "scheduler shift" if self.shift is None else f"shift={self.shift:.3f}")
        return f"{self.name or 'baseline'}: steps={self.steps} ({grid}, full resolution)"
