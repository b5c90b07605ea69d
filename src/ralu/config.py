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
SOLVERS = ("euler", "dpmpp2m", "ab2", "unipc")  # ralu.solvers
# The fields that choose between implementations of one step (not the schedule), with their values.
NTDM_METHODS = ("robust", "reference")
VARIANT_OPTIONS = {"ntdm_method": NTDM_METHODS, "upsample": UPSAMPLE_MODES, "canny_clip_unit": (False, True), "token_position": TOKEN_POSITIONS,
                   "exact_kept_noise": (False, True), "table_positions": TABLE_POSITIONS,
                   "region_source": REGION_SOURCES, "noise_downsample": NOISE_DOWNSAMPLE_MODES,
                   "solver": SOLVERS}


CHILDREN = 4  # full-resolution tokens per low-resolution token: a 2×2 block
AUTO = "auto"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    """A finite int or float (bools and non-finite values are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tuple(name: str, value: object, what: str) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class RALUConfig:
    """A three-stage RALU schedule (docs/method.md).

    steps: (N1, N2, N3) model calls per stage (paper N).
    ends: (e1, e2, 1.0) progress at which each stage ends (paper e), 0 < e1 < e2 < 1.
    up_ratio: fraction of low-res tokens upsampled early, at the stage 1 → 2 change (paper r).
    shifts: (H1, H2, H3) per-stage scheduler shifts (paper h); solved by NT-DM when None.
    noise_ratio: Z = 1/√c of the renoising, Z ≥ 2; solved by NT-DM when None.
    base_shift: the stock schedule's shift h0 that NT-DM matches, or "auto" (the default): the
        pipeline's scheduler shift at the requested image size, set by :meth:`resolve`.
    solved_shift: the base shift that ``shifts`` and ``noise_ratio`` were solved for (presets);
        :meth:`resolve` keeps them when the run's base shift equals it and solves again otherwise.
        None: shifts and noise ratio given by hand are kept as they are.
    ntdm_method: how NT-DM solves missing H and Z: "robust" (never worse than the published recipe)
        or "reference" (the published script's recipe; the presets use it, so that their numbers
        move continuously from the published ones when re-solved at another size).
    upsample: "token_repeat" (the reference script: each packed 2×2-patch token copied four
        times) or "latent_nearest" (nearest upsampling of the latent image).
    canny_clip_unit: True reproduces the reference script, which clips the decoded image to
        [0, 1] before Canny although the VAE outputs [-1, 1]; False maps [-1, 1] → [0, 1].
    token_position: "corner" (the reference: a low-res token sits at its top-left child) or
        "center" (at the centre of its four children).
    exact_kept_noise: False keeps the reference's renoising of tokens that are not upsampled
        (noise level α·√(1+1/Z²)); True scales their fresh noise to give exactly α.
    table_positions: where tokens sit when the family's positions depend on the image grid (SD3's
        centre-cropped sin-cos table, Qwen-Image's centred RoPE; FLUX's relative RoPE ignores it): "stock_then_full" (stage 1 in the stock half-resolution
        crop, stage 2 on the full-resolution cells), "low_grid" (stages 1-2 in the half-resolution
        crop) or "full_grid" (the full-resolution crop from stage 1 on). docs/sd3_positions.md.
    region_source: "decoded" (the paper: decode the clean estimate at low resolution, Canny on
        the image) or "latent" (Sobel magnitude of the clean-estimate latent: no VAE decode).
    noise_downsample: how stage 1's half-resolution noise comes from the full-resolution noise:
        "block_sum" (each 2×2 block's sum / 2) or "nearest" (the paper: one latent pixel of each
        block). Both give white noise of the same distribution.
    solver: how each stage steps along its σ grid, with no extra model calls: "euler" (the paper)
        or a second-order multistep method started afresh in every stage, "dpmpp2m", "ab2" or "unipc"
        (:mod:`ralu.solvers`; docs/verdict.md measures them).
    name: preset name, for display only.
    """

    steps: tuple[int, ...]
    ends: tuple[float, ...]
    up_ratio: float
    shifts: tuple[float, ...] | None = None
    noise_ratio: float | None = None
    base_shift: float | str = AUTO
    solved_shift: float | None = None
    ntdm_method: str = "robust"
    upsample: str = "token_repeat"
    canny_clip_unit: bool = False
    token_position: str = "corner"
    exact_kept_noise: bool = False
    table_positions: str = "stock_then_full"
    region_source: str = "decoded"
    noise_downsample: str = "block_sum"
    solver: str = "euler"
    name: str | None = field(default=None, compare=False)

    # Named schedules at 1024². solved_shift: the stock shift their H and Z were solved for.
    # docs/presets.md gives each one's source and FLOPs speedup.
    PRESETS: ClassVar[dict[str, dict]] = {
        # The reference script's presets for FLUX.1-dev (base 50 steps).
        "flux-dev-4x": dict(steps=(5, 6, 7), ends=(0.3, 0.45, 1.0), up_ratio=0.3,
                            shifts=(5.019, 2.589, 2.226), noise_ratio=6.317, solved_shift=3.0),
        "flux-dev-7x": dict(steps=(2, 3, 5), ends=(0.2, 0.3, 1.0), up_ratio=0.1,
                            shifts=(8.141, 2.856, 2.193), noise_ratio=6.261, solved_shift=3.0),
        # The paper's v3 main preset (Table 1, "RALU 5x"): H and c = 1/Z² as published (NT-DM's
        # published recipe gives H = (5.115, 2.642, 2.254), c = 0.0177).
        "flux-dev-5x": dict(steps=(4, 5, 6), ends=(0.3, 0.45, 1.0), up_ratio=0.2,
                            shifts=(5.12, 2.64, 2.25), noise_ratio=1 / math.sqrt(0.0177), solved_shift=3.0),
        # The paper's SD3-Medium schedules (baseline 28 steps, base shift 3.0), Z = 1/√c.
        "sd3-2x": dict(steps=(5, 6, 9), ends=(0.2, 0.3, 1.0), up_ratio=0.3,
                       shifts=(6.121, 2.23, 1.97), noise_ratio=1 / math.sqrt(0.0586), solved_shift=3.0),
        "sd3-3x": dict(steps=(3, 3, 6), ends=(0.25, 0.3, 1.0), up_ratio=0.2,
                       shifts=(6.40, 2.60, 2.273), noise_ratio=1 / math.sqrt(0.0255), solved_shift=3.0),
        # FLUX.1-schnell (timestep-distilled, 4 steps, shift 1.0): its four steps split 2/1/1; H
        # and Z from NT-DM at base shift 1.0, which lands on the bounds (H2 = 0.5, Z = 2).
        "flux-schnell-2x": dict(steps=(2, 1, 1), ends=(0.5, 0.75, 1.0), up_ratio=0.3,
                                shifts=(0.574, 0.5, 0.878), noise_ratio=2.0, solved_shift=1.0),
        # SD3.5-Large-Turbo (4 steps, no CFG; the paper's Table 2 gives no schedule): FLUX.1-schnell's
        # 2/1/1 split and stage ends, H and Z from NT-DM's published recipe at the static shift 3.0.
        # With one step in stages 2 and 3 only H1 and Z act (a one-step grid is its two ends).
        "sd3.5-large-turbo-2x": dict(steps=(2, 1, 1), ends=(0.5, 0.75, 1.0), up_ratio=0.3,
                                     shifts=(2.595, 1.521, 9.796), noise_ratio=4.176, solved_shift=3.0),
        # --- FLUX.2 presets ---
        # FLUX.2 [dev] (50 steps; μ = compute_empirical_mu(4096, 50), shift 7.5636 at 1024²) and the
        # step-distilled FLUX.2 [klein] 4B/9B (4 steps; shift 9.8866). Steps, ends and r: the planner's
        # best at 3x and 5x (dev) and FLUX.1-schnell's 2/1/1 split with the planner's best ends (klein);
        # H and Z from NT-DM's published recipe at that shift. Named for the end-to-end FLOPs speedup
        # at 1024²: 2.98x, 5.01x; klein 1.76x (4B), 1.82x (9B). docs/families/flux2.md.
        "flux2-dev-3x": dict(steps=(14, 9, 9), ends=(0.3, 0.45, 1.0), up_ratio=0.1,
                             shifts=(9.511, 5.029, 5.955), noise_ratio=5.868, solved_shift=7.5636),
        "flux2-dev-5x": dict(steps=(7, 4, 6), ends=(0.3, 0.35, 1.0), up_ratio=0.2,
                             shifts=(10.0, 7.721, 4.834), noise_ratio=9.266, solved_shift=7.5636),
        "flux2-klein-2x": dict(steps=(2, 1, 1), ends=(0.3, 0.45, 1.0), up_ratio=0.3,
                               shifts=(10.0, 5.359, 8.076), noise_ratio=5.827, solved_shift=9.8866),
        # --- Qwen-Image presets ---
        # Qwen-Image (50 steps, true CFG 4 with a negative prompt: 2 calls per step). Its stock σ grid
        # is exp(μ)-shifted, μ = calculate_shift(4096) = 0.69355, then stretched to end at 0.02; NT-DM
        # matches the shift part, h0 = exp(μ) = 2.0008 at 1024². FLUX.1's stage ends, H and Z from
        # NT-DM's published recipe; named for the end-to-end FLOPs speedup at 1024² (3.32x, 5.40x).
        "qwen-image-3x": dict(steps=(6, 8, 10), ends=(0.3, 0.45, 1.0), up_ratio=0.3,
                              shifts=(3.264, 1.725, 1.488), noise_ratio=4.647, solved_shift=2.0008),
        "qwen-image-5x": dict(steps=(4, 5, 6), ends=(0.3, 0.45, 1.0), up_ratio=0.3,
                              shifts=(3.161, 1.607, 1.433), noise_ratio=3.774, solved_shift=2.0008),
        # --- Z-Image presets ---
        # NT-DM at each model's static shift (docs/families/zimage.md). Z-Image-Turbo (8 calls, shift
        # 3.0): its eight calls split 3/2/3. Z-Image (50 steps with CFG, shift 6.0): mild and strong.
        "z-image-turbo-1.6x": dict(steps=(3, 2, 3), ends=(0.4, 0.6, 1.0), up_ratio=0.3,
                                   shifts=(3.261, 2.11, 3.014), noise_ratio=8.168, solved_shift=3.0),
        "z-image-3x": dict(steps=(10, 8, 8), ends=(0.5, 0.65, 1.0), up_ratio=0.3,
                           shifts=(7.088, 4.883, 6.109), noise_ratio=17.849, solved_shift=6.0),
        "z-image-7x": dict(steps=(4, 3, 4), ends=(0.4, 0.55, 1.0), up_ratio=0.3,
                           shifts=(7.832, 5.089, 5.186), noise_ratio=20.817, solved_shift=6.0),
    }

    def __post_init__(self) -> None:
        steps = _tuple("steps", self.steps, "three integers >= 1 (N1, N2, N3)")
        ends = _tuple("ends", self.ends, "three progresses (e1, e2, 1.0)")
        if len(steps) != 3 or not all(_is_int(n) and n >= 1 for n in steps):
            raise ValueError(f"steps must be three integers >= 1 (N1, N2, N3), got {self.steps!r}")
        if len(ends) != 3 or not all(_is_real(e) for e in ends):
            raise ValueError(f"ends must be three finite progresses (e1, e2, 1.0), got {self.ends!r}")
        ends = tuple(float(e) for e in ends)
        if not (0.0 < ends[0] < ends[1] < ends[2]) or ends[2] != 1.0:
            raise ValueError(f"ends must increase strictly from above 0 and end at 1.0 (0 < e1 < e2 < e3 = 1), got {self.ends!r}")
        if not _is_real(self.up_ratio) or not 0.0 <= self.up_ratio <= 1.0:
            raise ValueError(f"up_ratio must be a number in [0, 1], got {self.up_ratio!r}")
        if self.base_shift != AUTO and (not _is_real(self.base_shift) or not self.base_shift > 0):
            raise ValueError(f"base_shift must be 'auto' or a finite number > 0, got {self.base_shift!r}")
        if self.solved_shift is not None and (not _is_real(self.solved_shift) or not self.solved_shift > 0):
            raise ValueError(f"solved_shift must be a finite number > 0 or None, got {self.solved_shift!r}")
        for name, allowed in VARIANT_OPTIONS.items():
            value = getattr(self, name)
            if allowed == (False, True):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be True or False, got {value!r}")
            elif value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        shifts, noise_ratio = self.shifts, self.noise_ratio
        if shifts is not None:
            shifts = _tuple("shifts", shifts, "three numbers > 0 (H1, H2, H3)")
            if len(shifts) != 3 or not all(_is_real(h) and h > 0 for h in shifts):
                raise ValueError(f"shifts must be three finite numbers > 0 (H1, H2, H3), got {self.shifts!r}")
            shifts = tuple(float(h) for h in shifts)
        if noise_ratio is not None and (not _is_real(noise_ratio) or not noise_ratio >= 2.0):
            raise ValueError(f"noise_ratio must be a finite number >= 2 (Z = 1/sqrt(c), c <= 1/4), got {self.noise_ratio!r}")
        if (shifts is None or noise_ratio is None) and self.base_shift != AUTO:
            from .ntdm import solve_ntdm

            solved_shifts, solved_ratio = solve_ntdm(steps, ends, float(self.base_shift), self.ntdm_method)
            shifts = solved_shifts if shifts is None else shifts
            noise_ratio = solved_ratio if noise_ratio is None else noise_ratio
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "ends", ends)
        object.__setattr__(self, "up_ratio", float(self.up_ratio))
        object.__setattr__(self, "shifts", shifts)
        object.__setattr__(self, "noise_ratio", None if noise_ratio is None else float(noise_ratio))
        if self.base_shift != AUTO:
            object.__setattr__(self, "base_shift", float(self.base_shift))

    @classmethod
    def preset(cls, name: str, **overrides) -> RALUConfig:
        """A named preset (see ``RALUConfig.PRESETS``), optionally with fields replaced."""
        if name not in cls.PRESETS:
            raise ValueError(f"preset must be one of {sorted(cls.PRESETS)}, got {name!r}")
        fields = {"ntdm_method": "reference", **cls.PRESETS[name], "name": name, **overrides}
        if {"steps", "ends"} & overrides.keys() and not {"shifts", "noise_ratio"} & overrides.keys():
            fields.update(shifts=None, noise_ratio=None, solved_shift=None)  # a new schedule: solve it
        return cls(**fields)

    @classmethod
    def for_speedup(cls, target: float, **options) -> RALUConfig:
        """The planner's best schedule for a FLOPs (or calibrated time) speedup; see :func:`ralu.planner.plan`."""
        from .planner import plan

        return plan(target, **options).best

    def replace(self, **changes) -> RALUConfig:
        """A copy with fields changed (validated again)."""
        return replace(self, **changes)

    @property
    def resolved(self) -> bool:
        """True when the base shift is a number and H, Z are known: the schedule is complete."""
        return self.base_shift != AUTO and self.shifts is not None and self.noise_ratio is not None

    def resolve(self, stock_shift: float, reference_shift: float | None = None) -> RALUConfig:
        """The schedule for a run whose stock scheduler shift is ``stock_shift``.

        A config with a numeric base shift is returned as it is. With base_shift "auto":
        - a preset (``solved_shift`` set) keeps its H and Z where the run matches what it was solved
          for, and is solved again elsewhere for ``solved_shift · stock_shift / reference_shift``:
          ``reference_shift`` is the scheduler's shift at the preset's reference size (1024²), so
          the preset's numbers hold exactly there and follow the scheduler's change of shift with
          size (FLUX's dynamic shifting). Without ``reference_shift`` the base shift is stock_shift;
        - a custom config gets base_shift = stock_shift, and NT-DM solves what is missing.
        Solves are cached (:func:`ralu.ntdm.solve_ntdm`).
        """
        if self.base_shift != AUTO:
            return self
        if not _is_real(stock_shift) or not stock_shift > 0:
            raise ValueError(f"stock_shift must be a finite number > 0, got {stock_shift!r}")
        base = float(stock_shift)
        if self.solved_shift is not None:
            if reference_shift is not None:
                if not _is_real(reference_shift) or not reference_shift > 0:
                    raise ValueError(f"reference_shift must be a finite number > 0, got {reference_shift!r}")
                base = self.solved_shift * stock_shift / reference_shift
            if math.isclose(base, self.solved_shift, rel_tol=1e-9):
                return replace(self, base_shift=self.solved_shift)
            return replace(self, base_shift=base, shifts=None, noise_ratio=None, solved_shift=None)
        return replace(self, base_shift=base)

    def _require_resolved(self) -> None:
        if self.shifts is None or self.noise_ratio is None:
            raise ValueError(f"{self.name or 'this config'} has base_shift='auto' and no solved shifts yet: "
                             "call config.resolve(<the stock scheduler's shift>) first (the pipelines do)")

    @property
    def restarts(self) -> tuple[float, ...]:
        """Restart progress s_k of each stage."""
        self._require_resolved()
        return restart_progress(self.ends, self.noise_ratio)

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The three stages with their σ grids and the renoising applied on entering each."""
        self._require_resolved()
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
        low = full_tokens // CHILDREN
        k = self.selected_tokens(low)
        return low, low - k + CHILDREN * k, full_tokens

    def describe(self) -> str:
        """One line: the schedule, then any variant option that differs from its default."""
        label = self.name or "custom"
        defaults = {name: self.__dataclass_fields__[name].default for name in VARIANT_OPTIONS}
        if self.name in self.PRESETS:
            defaults["ntdm_method"] = "reference"  # the presets' own recipe
        changed = [f"{name}={getattr(self, name)}" for name in VARIANT_OPTIONS if getattr(self, name) != defaults[name]]
        shifts = "auto" if self.shifts is None else tuple(round(h, 3) for h in self.shifts)
        ratio = "auto" if self.noise_ratio is None else f"{self.noise_ratio:.3f}"
        base = self.base_shift if self.base_shift == AUTO else f"{self.base_shift:.3f}"
        return (f"{label}: steps={self.steps} ends={self.ends} up_ratio={self.up_ratio} "
                f"shifts={shifts} noise_ratio={ratio} base_shift={base}"
                + (f" ({', '.join(changed)})" if changed else ""))


@dataclass(frozen=True)
class Baseline:
    """The stock single-resolution schedule, run through the same sampler as RALU.

    steps: model calls (50 for FLUX.1-dev in the paper, 28 for SD3).
    shift: scheduler shift h of the uniform grid ``linspace(1, 0, steps+1)``; None lets the
        pipeline use its scheduler's own shift (resolution-dependent for FLUX).
    sigmas: an explicit (steps+1,) grid, 1 → 0, e.g. a scheduler's own (SD3's pipeline lets the
        scheduler end its grid at a shifted σ_min before 0); overrides ``shift``.
    solver: "euler" (the stock scheduler), "dpmpp2m" or "unipc" (diffusers' DPM-Solver++ 2M or UniPC
        with flow sigmas, on this grid) or "ab2" (:mod:`ralu.solvers`).
    """

    steps: int = 50
    shift: float | None = None
    name: str | None = field(default=None, compare=False)
    sigmas: tuple[float, ...] | None = None
    solver: str = "euler"

    def __post_init__(self) -> None:
        if not _is_int(self.steps) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if self.shift is not None and (not _is_real(self.shift) or not self.shift > 0):
            raise ValueError(f"shift must be a finite number > 0 or None, got {self.shift!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.sigmas is not None:
            sigmas = _tuple("sigmas", self.sigmas, f"{self.steps + 1} noise levels")
            if not all(_is_real(x) for x in sigmas):
                raise ValueError(f"sigmas must be finite numbers, got {self.sigmas!r}")
            sigmas = tuple(float(x) for x in sigmas)
            if len(sigmas) != self.steps + 1 or sigmas[-1] != 0.0 or not sigmas[0] <= 1.0 or any(
                    a <= b for a, b in zip(sigmas, sigmas[1:])):
                raise ValueError(f"sigmas must be {self.steps + 1} decreasing noise levels from <= 1 to 0, got {self.sigmas!r}")
            object.__setattr__(self, "sigmas", sigmas)

    @property
    def resolved(self) -> bool:
        return self.sigmas is not None or self.shift is not None

    def resolve(self, shift: float) -> Baseline:
        """This baseline with the stock shift ``shift`` when it has neither a shift nor a σ grid."""
        return self if self.resolved else Baseline(self.steps, shift, name=self.name, solver=self.solver)

    @property
    def stages(self) -> tuple[Stage, ...]:
        if self.sigmas is not None:
            return (Stage("full", self.sigmas),)
        if self.shift is None:
            raise ValueError("Baseline has neither shift nor sigmas: resolve it first (the pipelines take their "
                             "scheduler's own grid)")
        return (Stage("full", tuple(float(s) for s in stage_sigmas(0.0, 1.0, self.steps, self.shift))),)

    def tokens_per_stage(self, full_tokens: int) -> tuple[int]:
        return (full_tokens,)

    def describe(self) -> str:
        grid = ("the scheduler's own grid" if self.sigmas is not None
                else "scheduler shift" if self.shift is None else f"shift={self.shift:.3f}")
        solver = "" if self.solver == "euler" else f", solver={self.solver}"
        return f"{self.name or 'baseline'}: steps={self.steps} ({grid}, full resolution{solver})"
