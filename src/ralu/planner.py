"""The planner: RALU schedules for a target speedup, ranked by NT-DM and the paper's guidance.

Search (docs/planner.md):
- steps N_k from 1 to a bound that grows with the baseline's steps, stage ends e1 ∈ {0.1, …, 0.3}
  (early upsampling at progress ≤ 0.3), e2 − e1 ∈ {0.05, …, 0.2}, up_ratio r ∈ {0.1, …, 0.3};
- kept: schedules whose speedup over the baseline is within ``tolerance`` of the target. "flops"
  counts the model's end-to-end FLOPs (transformer calls times guidance branches, the final decode
  and RALU's region-selection decode); "time" uses a calibrated latency model of the transformer;
- for each (N, e), the r that lands closest to the target;
- ranked by ``score = JS + GAP_WEIGHT · (e2 − e1)``: JS is the NT-DM objective at the robust
  solution for the model's stock shift at the size (how far the schedule's noise levels are from
  the stock schedule's), the second term the paper's advice to keep the mixed stage short.
  For each pair of stage ends, a cheap proxy (stage step shares against the stock schedule's mass in
  each stage's range) chooses the ``per_ends`` step splits that get solved.
Pure Python and numpy (scipy for the solves).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import Baseline, RALUConfig
from .models import ModelSpec, get
from .ntdm import _cdf, ntdm_objective, solve_ntdm
from .schedule import restart_progress

FIRST_ENDS = (0.1, 0.15, 0.2, 0.25, 0.3)
GAPS = (0.05, 0.1, 0.15, 0.2)
UP_RATIOS = (0.1, 0.15, 0.2, 0.25, 0.3)
GAP_WEIGHT = 0.03
PROXY_NOISE_RATIO = 6.0  # restarts for the shortlist proxy; the solves find each schedule's own Z


@dataclass(frozen=True)
class Candidate:
    """A schedule the planner found: the config (resolved for the model and size), its speedups over
    the baseline (FLOPs end to end; time when calibrated), the NT-DM objective and the score."""

    config: RALUConfig
    flops_speedup: float
    time_speedup: float | None
    objective: float
    score: float

    def speedup(self, objective: str) -> float:
        return self.time_speedup if objective == "time" else self.flops_speedup


@dataclass(frozen=True)
class Plan:
    """The planner's answer: candidates best first; ``best`` is the first one's config."""

    target: float
    objective: str
    model: str
    size: tuple[int, int]
    baseline_steps: int
    tolerance: float
    reachable: tuple[float, float]
    considered: int
    candidates: tuple[Candidate, ...]

    @property
    def best(self) -> RALUConfig:
        return self.candidates[0].config


def _step_bound(baseline_steps: int) -> int:
    return max(2, math.ceil(0.6 * baseline_steps))


def plan(target: float, *, model: str | ModelSpec = "flux-dev", height: int = 1024, width: int = 1024,
         baseline_steps: int | None = None, objective: str = "flops", latency=None, tolerance: float = 0.03,
         per_ends: int = 2, branches: int | None = None) -> Plan:
    """Schedules whose speedup over ``Baseline(baseline_steps)`` is within ``tolerance`` of ``target``.

    model: a shipped model name or a :class:`ModelSpec`; height, width: px (multiples of 32);
    objective: "flops" or "time" (needs ``latency``, a :class:`ralu.calibrate.LatencyModel`);
    branches: transformer calls per step (default: the model's, 2 under CFG).
    Raises ValueError naming the reachable range when no schedule reaches the target.
    """
    spec = get(model) if isinstance(model, str) else model
    if objective not in ("flops", "time"):
        raise ValueError(f"objective must be 'flops' or 'time', got {objective!r}")
    if objective == "time" and latency is None:
        raise ValueError("objective 'time' needs a latency calibration (ralu bench calibrate)")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 1:
        raise ValueError(f"target speedup must be a finite number above 1 (a speedup over the baseline), got {target!r}")
    if not 0 < tolerance < 0.5:
        raise ValueError(f"tolerance must be in (0, 0.5), got {tolerance!r}")
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % 32:
            raise ValueError(f"{name} must be a positive multiple of 32 px, got {value!r}")
    baseline_steps = baseline_steps or spec.steps
    branches = spec.branches if branches is None else branches
    full = spec.image_tokens(height, width)
    bound = _step_bound(baseline_steps)
    counts = np.arange(1, bound + 1)
    n1, n2, n3 = (a.ravel() for a in np.meshgrid(counts, counts, counts, indexing="ij"))

    decodes = spec.decode(height, width) + spec.decode(height // 2, width // 2)
    base_flops = spec.cost(Baseline(baseline_steps), height, width, branches)
    if latency is not None:
        base_time = baseline_steps * branches * latency.call_seconds(full)

    found: dict[tuple, tuple[float, float, float | None, float]] = {}  # N -> (|distance|, flops, time, r)
    low, high = math.inf, 0.0
    for r in UP_RATIOS:
        tokens = RALUConfig(steps=(1, 1, 1), ends=(0.3, 0.45, 1.0), up_ratio=r, base_shift=1.0,
                            shifts=(1.0, 1.0, 1.0), noise_ratio=2.0).tokens_per_stage(full)
        calls = [spec.call_flops(t) for t in tokens]
        flops = base_flops / (branches * (n1 * calls[0] + n2 * calls[1] + n3 * calls[2]) + decodes)
        times = None
        if latency is not None:
            seconds = [latency.call_seconds(t) for t in tokens]
            times = base_time / (branches * (n1 * seconds[0] + n2 * seconds[1] + n3 * seconds[2]))
        measure = times if objective == "time" else flops
        low, high = min(low, float(measure.min())), max(high, float(measure.max()))
        for i in np.nonzero(np.abs(measure / target - 1) <= tolerance)[0]:
            key = (int(n1[i]), int(n2[i]), int(n3[i]))
            distance = abs(float(measure[i]) - target)
            if key not in found or distance < found[key][0]:
                found[key] = (distance, float(flops[i]), None if times is None else float(times[i]), r)
    if not found:
        what = "time" if objective == "time" else "FLOPs"
        raise ValueError(f"speedup {target:g}x is out of reach for {spec.name} at {width}x{height} against "
                         f"{baseline_steps} baseline steps: the searched schedules give {low:.2f}x to {high:.2f}x "
                         f"({what}; steps 1-{bound} per stage, up_ratio {UP_RATIOS[0]}-{UP_RATIOS[-1]})")

    h0 = spec.stock_shift(full, baseline_steps)
    # per pair of stage ends, the step splits whose stage shares best follow the stock schedule
    pairs = []
    for e1 in FIRST_ENDS:
        for gap in GAPS:
            ends = (e1, round(e1 + gap, 4), 1.0)
            pairs += [(steps, ends) for steps in sorted(found, key=lambda n: _proxy(n, ends, h0))[:per_ends]]
    candidates = []
    for steps, ends in pairs:
        shifts, ratio = solve_ntdm(steps, ends, h0)
        js = ntdm_objective(shifts, ratio, steps, ends, h0)
        _, flops, time, r = found[steps]
        config = RALUConfig(steps=steps, ends=ends, up_ratio=r, shifts=shifts, noise_ratio=ratio, base_shift=h0,
                            name=f"plan-{target:g}x")
        candidates.append(Candidate(config, flops, time, js, js + GAP_WEIGHT * (ends[1] - ends[0])))
    candidates.sort(key=lambda c: (c.score, abs(c.speedup(objective) - target)))
    return Plan(float(target), objective, spec.name, (height, width), baseline_steps, tolerance, (low, high),
                len(found) * len(FIRST_ENDS) * len(GAPS), tuple(candidates))


def _proxy(steps: Sequence[int], ends: Sequence[float], h0: float) -> float:
    """Total variation between the stages' step shares and the stock schedule's mass on their ranges."""
    starts = restart_progress(tuple(ends), PROXY_NOISE_RATIO)
    mass = np.array([_cdf(e, h0) - _cdf(s, h0) for s, e in zip(starts, ends)])
    share = np.asarray(steps, dtype=float) / sum(steps)
    return float(np.abs(share - mass / mass.sum()).sum())


def plan_report(result: Plan, top: int = 5) -> str:
    """The top candidates as a table, then the best one."""
    height, width = result.size
    lines = [f"target {result.target:g}x ({result.objective}) for {result.model} at {width}x{height} against "
             f"{result.baseline_steps} baseline steps: {len(result.candidates)} of {result.considered} schedules "
             f"within ±{result.tolerance:.0%} solved (reachable {result.reachable[0]:.2f}x-{result.reachable[1]:.2f}x)",
             ""]
    header = (f"{'#':>2}  {'steps':<12}{'ends':<18}{'r':>6}{'shifts':>22}{'Z':>7}{'FLOPs':>8}"
              + (f"{'time':>8}" if result.candidates[0].time_speedup is not None else "") + f"{'NT-DM':>9}{'score':>9}")
    lines += [header, "-" * len(header)]
    for i, c in enumerate(result.candidates[:top], 1):
        cfg = c.config
        shifts = "(" + ", ".join(f"{h:.2f}" for h in cfg.shifts) + ")"
        lines.append(f"{i:>2}  {str(cfg.steps):<12}{str(cfg.ends):<18}{cfg.up_ratio:>6.2f}{shifts:>22}"
                     f"{cfg.noise_ratio:>7.2f}{c.flops_speedup:>7.2f}x"
                     + (f"{c.time_speedup:>7.2f}x" if c.time_speedup is not None else "")
                     + f"{c.objective:>9.4f}{c.score:>9.4f}")
    best = result.candidates[0].config
    lines += ["", f"best: --steps {' '.join(map(str, best.steps))} --ends {' '.join(f'{e:g}' for e in best.ends)} "
                  f"--up-ratio {best.up_ratio:g}  (score = NT-DM + {GAP_WEIGHT:g} x (e2 - e1); docs/planner.md)"]
    return "\n".join(lines)
