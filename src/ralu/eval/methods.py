"""Method specs for evaluation: what to run, written the way a user types it.

- ``baseline:N``: the stock schedule with N steps at full resolution (the reference when N is the
  model's default); ``steps:N`` is the same schedule under the name of a same-cost step cut;
- a preset name (``flux-dev-4x``), ``ralu:N1,N2,N3:E1,E2:R`` (a custom RALU schedule), ``plan:X`` (the
  planner's schedule for a X-times speedup at the run's model and size);
- on the toy model also: ``unipc:N`` / ``dpm:N`` (a higher-order flow solver from diffusers with N
  steps), ``hires:N1:E1:N3`` (half resolution to progress E1, everything upsampled and renoised onto the
  flow path, N3 full-resolution steps), ``naive:N1:E1:N3`` (the same without renoising),
  ``mrflow:N1:S:N3`` (MrFlow: a whole half-resolution image in N1 steps, upsampled, fresh noise to σ = S,
  N3 full-resolution steps);
- options after ``@``: RALUConfig fields, ``flux-dev-4x@noise_downsample=nearest,up_ratio=0.2``;
- cache suffixes: ``+teacache[=δ]``, ``+fbc[=δ]`` (diffusers' FirstBlockCache), ``+taylorseer[=interval]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import VARIANT_OPTIONS, Baseline, RALUConfig

SOLVERS = ("unipc", "dpm")
CACHES = {"teacache": 0.1, "fbc": 0.05, "taylorseer": 2.0}  # default threshold / interval


@dataclass(frozen=True)
class CacheSpec:
    """A temporal cache applied during the method: kind and its threshold (TaylorSeer: its interval)."""

    kind: str
    value: float


@dataclass(frozen=True)
class TwoStage:
    """Half resolution for ``low_steps`` to progress ``end``, then every token upsampled and
    ``full_steps`` at full resolution; ``renoise`` puts the upsampled latent back on the flow path.
    ``refine``: MrFlow's recipe instead, the half-resolution image finished (``end`` = 1) and fresh
    noise added up to σ = ``refine`` before the full-resolution steps."""

    low_steps: int
    end: float
    full_steps: int
    renoise: bool
    refine: float | None = None


@dataclass(frozen=True)
class Method:
    """One method of an evaluation; ``spec`` is its name in manifests and reports."""

    spec: str
    kind: str  # "baseline", "ralu", "plan", "solver", "two_stage"
    config: RALUConfig | Baseline | None = None
    solver: str | None = None
    steps: int | None = None
    two_stage: TwoStage | None = None
    plan_target: float | None = None
    cache: CacheSpec | None = None

    @property
    def slug(self) -> str:
        """A folder name for the method's images."""
        return "".join(c if c.isalnum() or c in "-._" else "_" for c in self.spec)

    @property
    def toy_only(self) -> bool:
        return self.kind in ("solver", "two_stage")


def _int(text: str, what: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {text!r}")
    return int(text)


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    return value


def _options(text: str, spec: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        fields = {"up_ratio", *VARIANT_OPTIONS}
        if not sep or key not in fields:
            raise ValueError(f"method {spec!r}: options after @ must be FIELD=VALUE with FIELD one of "
                             f"{sorted(fields)}, got {item!r}")
        if key == "up_ratio":
            out[key] = _float(value, "up_ratio")
        elif VARIANT_OPTIONS[key] == (False, True):
            out[key] = value.lower() == "true"
        else:
            out[key] = value
    return out


def parse(spec: str) -> Method:
    """A :class:`Method` from its spec; ValueError naming what is wrong."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a method must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    body, *suffixes = spec.split("+")
    cache = None
    for suffix in suffixes:
        kind, _, value = suffix.partition("=")
        if kind not in CACHES:
            raise ValueError(f"method {spec!r}: cache suffix must be one of {['+' + k for k in CACHES]}, got '+{kind}'")
        if cache is not None:
            raise ValueError(f"method {spec!r}: one cache per method")
        cache = CacheSpec(kind, _float(value, f"{kind} value") if value else CACHES[kind])
    body, _, option_text = body.partition("@")
    options = _options(option_text, spec)
    head, _, rest = body.partition(":")
    parts = rest.split(":") if rest else []

    def only_ralu_options():
        if options:
            raise ValueError(f"method {spec!r}: @options apply to RALU schedules only")

    if head in ("baseline", "steps"):
        only_ralu_options()
        if len(parts) != 1:
            raise ValueError(f"method {spec!r}: write {head}:N")
        steps = _int(parts[0], f"{head} steps")
        return Method(spec, "baseline", Baseline(steps, name=f"{head} {steps}"), steps=steps, cache=cache)
    if head in SOLVERS:
        only_ralu_options()
        if len(parts) != 1:
            raise ValueError(f"method {spec!r}: write {head}:N")
        return Method(spec, "solver", solver=head, steps=_int(parts[0], f"{head} steps"), cache=cache)
    if head in ("hires", "naive", "mrflow"):
        only_ralu_options()
        middle = "S" if head == "mrflow" else "E1"
        if len(parts) != 3:
            raise ValueError(f"method {spec!r}: write {head}:N1:{middle}:N3")
        value = _float(parts[1], middle)
        if not 0 < value < 1:
            what = "S (the refinement's noise level)" if head == "mrflow" else "E1"
            raise ValueError(f"method {spec!r}: {what} must be in (0, 1), got {value}")
        n1, n3 = _int(parts[0], "N1"), _int(parts[2], "N3")
        stage = (TwoStage(n1, 1.0, n3, renoise=False, refine=value) if head == "mrflow"
                 else TwoStage(n1, value, n3, renoise=head == "hires"))
        return Method(spec, "two_stage", two_stage=stage, cache=cache)
    if head == "plan":
        if len(parts) != 1:
            raise ValueError(f"method {spec!r}: write plan:X, X the target speedup")
        return Method(spec, "plan", plan_target=_float(parts[0], "plan target"), cache=cache,
                      config=RALUConfig(steps=(1, 1, 1), ends=(0.3, 0.45, 1.0), up_ratio=0.1, **options)
                      if options else None)
    if head == "ralu":
        if len(parts) != 3:
            raise ValueError(f"method {spec!r}: write ralu:N1,N2,N3:E1,E2:R")
        steps = tuple(_int(n, "steps") for n in parts[0].split(","))
        ends = tuple(_float(e, "ends") for e in parts[1].split(","))
        if len(steps) != 3 or len(ends) != 2:
            raise ValueError(f"method {spec!r}: three step counts and two stage ends, e.g. ralu:5,6,7:0.3,0.45:0.3")
        config = RALUConfig(steps=steps, ends=(*ends, 1.0), up_ratio=_float(parts[2], "R"), name=body, **options)
        return Method(spec, "ralu", config, cache=cache)
    if parts:
        raise ValueError(f"method {spec!r}: unknown method kind {head!r}")
    if head not in RALUConfig.PRESETS:
        raise ValueError(f"method must be baseline:N, steps:N, a preset ({', '.join(sorted(RALUConfig.PRESETS))}), "
                         f"ralu:N1,N2,N3:E1,E2:R, plan:X, unipc:N, dpm:N, hires:N1:E1:N3, naive:N1:E1:N3 or mrflow:N1:S:N3, "
                         f"optionally with @FIELD=VALUE and +teacache/+fbc/+taylorseer; got {spec!r}")
    return Method(spec, "ralu", RALUConfig.preset(head, **options).replace(name=body), cache=cache)


def parse_all(specs) -> list[Method]:
    """Methods from a list of specs (or one comma-free, space-separated string); duplicates refused."""
    if isinstance(specs, str):
        specs = specs.split()
    methods = [parse(s) for s in specs]
    seen = set()
    for m in methods:
        if m.spec in seen:
            raise ValueError(f"method {m.spec!r} is listed twice")
        seen.add(m.spec)
    if not methods:
        raise ValueError("give at least one method")
    return methods
