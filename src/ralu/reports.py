"""Plain-text reports of schedules and plans, for the CLI. Pure Python: no torch."""

from __future__ import annotations

from collections.abc import Sequence

from .config import AUTO, Baseline, RALUConfig
from .cost import combined_speedup, schedule_cost
from .models import REFERENCE_SIZE, ModelSpec


def schedule_report(config: RALUConfig, spec: ModelSpec, height: int, width: int, *, baseline_steps: int | None = None,
                    branches: int | None = None, skipped: Sequence[int] | None = None,
                    text_tokens: int | None = None, latency=None) -> str:
    """The schedule as the model's pipeline would run it at this size: stages, σ, tokens, FLOPs and speedups.

    latency: a :class:`ralu.calibrate.LatencyModel`, to add the predicted wall-clock speedup.
    """
    if text_tokens is not None:
        from dataclasses import replace

        spec = replace(spec, text_tokens=text_tokens)
    baseline_steps = baseline_steps or spec.steps
    branches = spec.branches if branches is None else branches
    full = spec.image_tokens(height, width)
    resolved = spec.resolve(config, height, width)
    lines = [resolved.describe()]
    if config.base_shift == AUTO:
        stock = spec.stock_shift(full)
        kept = resolved.shifts == config.shifts and config.shifts is not None
        note = (f"the preset's numbers, solved for {config.solved_shift:g}, hold at "
                f"{REFERENCE_SIZE[0]}x{REFERENCE_SIZE[1]}" if kept else "H and Z solved by NT-DM for it")
        lines.append(f"  base shift h0 = {resolved.base_shift:.3f} (auto: {spec.name}'s scheduler shift at "
                     f"{width}x{height} is {stock:.3f}; {note})")
    lines.append(f"  restarts s = ({', '.join(f'{s:.4f}' for s in resolved.restarts)})  "
                 f"c = 1/Z^2 = {resolved.noise_ratio ** -2:.4f}")
    lines.append(f"  {width}x{height} px: {full} image tokens at full resolution, {spec.text_tokens} text tokens; "
                 f"transformer: {spec.name} ({spec.transformer.get('_class_name', 'config.json')})")
    lines.append("")
    cost = schedule_cost(resolved, full, spec.transformer, spec.text_tokens, skipped)
    base = schedule_cost(Baseline(baseline_steps), full, spec.transformer, spec.text_tokens)
    header = (f"{'stage':<7}{'resolution':<12}{'shift':>7}{'steps':>7}  {'sigma first -> last':<20}"
              f"{'image tokens':>13}{'TFLOPs':>10}{'share':>8}")
    lines += [header, "-" * len(header)]
    for k, stage in enumerate(resolved.stages):
        sigmas = f"{stage.sigmas[0]:.4f} -> {stage.sigmas[-1]:.4f}"
        lines.append(f"{k + 1:<7}{stage.resolution:<12}{resolved.shifts[k]:>7.3f}{stage.steps:>7}  {sigmas:<20}"
                     f"{cost.tokens[k]:>13}{cost.flops[k] / 1e12:>10.1f}{cost.shares[k]:>8.1%}")
    lines.append(f"{'total':<19}{'':>7}{sum(cost.steps):>7}  {'':<20}{'':>13}{cost.total / 1e12:>10.1f}{1:>8.0%}")
    lines.append("")
    lines.append(f"baseline: {baseline_steps} steps x {full} tokens = {base.total / 1e12:.1f} TFLOPs")
    ralu_total = branches * cost.total + spec.decode(height // 2, width // 2) + spec.decode(height, width)
    base_total = branches * base.total + spec.decode(height, width)
    kind = f"{branches} branch{'es' if branches == 2 else ''} per step{' (CFG)' if branches == 2 else ''}"
    lines.append(f"end to end ({kind}, VAE decodes: final {spec.decode(height, width) / 1e12:.1f} TFLOPs, RALU's "
                 f"region selection {spec.decode(height // 2, width // 2) / 1e12:.1f}): RALU {ralu_total / 1e12:.1f} "
                 f"vs baseline {base_total / 1e12:.1f} TFLOPs = {base_total / ralu_total:.2f}x")
    if skipped is None:
        lines.append(f"analytic transformer speedup: {base.total / cost.total:.2f}x (text encoders excluded)")
    else:
        combined = combined_speedup(resolved, full, skipped, baseline_steps, spec.transformer, spec.text_tokens)
        lines.append(f"with {sum(skipped)} of {sum(cost.steps)} calls skipped by a cache (per stage {tuple(skipped)}):")
        lines.append(f"  spatial (RALU) {combined.spatial:.2f}x  x  temporal (cache) {combined.temporal:.2f}x  "
                     f"=  {combined.total:.2f}x transformer FLOPs speedup")
    if latency is not None:
        predicted = latency.speedup(resolved, Baseline(baseline_steps), full, branches=branches)
        lines.append(f"predicted latency speedup: {predicted:.2f}x of transformer time ({latency.describe()})")
    return "\n".join(lines)
