"""``ralu eval speed``: latency done properly: warm-up runs excluded, device synchronised, the median of
N runs with their spread, peak memory, optionally ``torch.compile``; printed beside the FLOPs ratio."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

from .methods import Method


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure(runner, methods: Sequence[Method], prompt: str, repeats: int = 5, warmup: int = 1, device="cpu",
            say: Callable[[str], None] = print) -> list[dict]:
    """Seconds per image (batch of one) for each method: median and range over ``repeats`` runs after
    ``warmup`` runs; peak memory (CUDA: max_memory_allocated; CPU: the process's peak RSS)."""
    from .generate import _peak_memory_mb, _reset_peak

    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    rows = []
    for method in methods:
        for _ in range(warmup):
            runner.generate(method, [prompt], [0])
        _sync(device)
        _reset_peak()
        times, facts = [], {}
        for r in range(repeats):
            _sync(device)
            start = time.perf_counter()
            _, facts = runner.generate(method, [prompt], [r])
            _sync(device)
            times.append(time.perf_counter() - start)
        rows.append(dict(method=method.spec, median=statistics.median(times), low=min(times), high=max(times),
                         repeats=repeats, flops=facts.get("flops"), model_calls=facts.get("model_calls"),
                         peak_memory_mb=_peak_memory_mb()))
        say(f"  {method.spec}: median {rows[-1]['median']:.3f} s ({rows[-1]['low']:.3f}-{rows[-1]['high']:.3f})")
    base = rows[0]
    for row in rows:
        row["speedup"] = base["median"] / row["median"]
        row["flops_speedup"] = base["flops"] / row["flops"] if row["flops"] and base["flops"] else None
        row["efficiency"] = row["speedup"] / row["flops_speedup"] if row["flops_speedup"] else None
    return rows


def table(rows: Sequence[dict]) -> str:
    lines = ["| method | calls | median s | range s | speedup | FLOPs speedup | efficiency | peak MiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        fs = f"{r['flops_speedup']:.2f}x" if r["flops_speedup"] else "–"
        eff = f"{r['efficiency']:.3f}" if r["efficiency"] else "–"
        lines.append(f"| `{r['method']}` | {r['model_calls']} | {r['median']:.3f} | {r['low']:.3f}-{r['high']:.3f} | "
                     f"{r['speedup']:.2f}x | {fs} | {eff} | {r['peak_memory_mb']:.0f} |")
    return "\n".join(lines)
