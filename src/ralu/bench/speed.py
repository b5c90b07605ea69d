"""Speed benchmark: RALU presets against the full baseline, through the same sampler loop.

    python benchmarks/speed.py [--size 384] [--reps 3] [--double 1 --single 1] [--dtype bfloat16] [--out DIR]
    ralu bench --speed [same options]

One process, one FLUX-shaped transformer with the real width of FLUX.1-dev (hidden 3072 =
24 heads x 128, text width 4096, 64 latent channels) and random weights; few blocks so that a
CPU gets through it. Methods run alternately, ``--reps`` times; medians and spread are printed
with the analytic FLOPs ratio of ``ralu.cost`` for this very model, and their quotient
(efficiency = measured speedup / FLOPs speedup; 1.0 means RALU runs at the speed its FLOPs allow).

RALU's own overheads are timed separately, at the benchmark's size and at 1024x1024 token
counts: correlated-noise sampling, edge detection, token reordering and position bookkeeping,
per-sample RoPE; the decode for region selection is reported on its own (the tiny VAE used here,
and an AutoencoderKL with FLUX.1's real decoder architecture). The reference script's dense
multivariate-normal noise is timed next to ours at 512, 1024 and 2048 px.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from ralu import Baseline, RALUConfig, sample
from ralu.adapters.flux import FluxAdapter
from ralu.cost import schedule_cost
from ralu.layout import MixedLayout, upsample_tokens
from ralu.regions import edge_scores, latent_edge_scores
from ralu.sampler import _renoise

FLUX_WIDTH = dict(num_attention_heads=24, attention_head_dim=128, joint_attention_dim=4096, pooled_projection_dim=768,
                  in_channels=64, axes_dims_rope=(16, 56, 56), guidance_embeds=True, patch_size=1)
FLUX_VAE_DECODER = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory(args, method: str) -> float:
    """Peak memory (MiB) of one generation with ``method`` in a fresh process: CUDA's
    max_memory_allocated on a GPU, else the process's peak resident set size."""
    import subprocess

    command = [sys.executable, __file__, "--memory-child", method, "--size", str(args.size), "--double",
               str(args.double), "--single", str(args.single), "--dtype", str(args.dtype).replace("torch.", ""),
               "--device", args.device, "--baseline-steps", str(args.baseline_steps), "--presets", *args.presets]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _memory_child(args) -> None:
    import resource

    model_config, transformer, vae = build(args)
    gen = torch.Generator().manual_seed(0)
    side = args.size // 16
    dev = dict(device=args.device, dtype=args.dtype)
    adapter = FluxAdapter(transformer, vae, torch.randn(1, args.text_tokens, 4096, generator=gen).to(**dev),
                          torch.randn(1, 768, generator=gen).to(**dev), torch.zeros(args.text_tokens, 3, device=args.device),
                          guidance=torch.full([1], 3.5, device=args.device))
    noise = torch.randn(1, side * side, 64, generator=gen).to(**dev)
    config = benchmark_methods(args)[args.memory_child]
    if str(args.device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        sample(adapter, noise, config, (side, side), generator=torch.Generator().manual_seed(1))
    if str(args.device).startswith("cuda"):
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _timed(fn, reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(args):
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    from ralu.tiny import TINY_VAE

    torch.manual_seed(0)
    config = dict(FLUX_WIDTH, num_layers=args.double, num_single_layers=args.single)
    transformer = FluxTransformer2DModel(**config).to(args.device, args.dtype).eval()
    vae = AutoencoderKL(**TINY_VAE).to(args.device).eval()
    return config, transformer, vae


def benchmark_methods(args) -> dict:
    methods = {"baseline": Baseline(args.baseline_steps, shift=3.0)}
    methods.update({name: RALUConfig.preset(name) for name in args.presets})
    return methods


def run_methods(args, transformer, vae, model_config) -> dict:
    """Time every method (and, with ``--cache``, each with the TeaCache-style hook) alternately."""
    from ralu.caching import TeaCacheConfig, apply_teacache, remove_teacache

    tokens_side = args.size // 16
    grid, text = (tokens_side, tokens_side), args.text_tokens
    gen = torch.Generator().manual_seed(0)
    dev = dict(device=args.device, dtype=args.dtype)
    embeds = torch.randn(1, text, 4096, generator=gen).to(**dev)
    pooled = torch.randn(1, 768, generator=gen).to(**dev)
    adapter = FluxAdapter(transformer, vae, embeds, pooled, torch.zeros(text, 3, device=args.device),
                          guidance=torch.full([1], 3.5, device=args.device))
    noise = torch.randn(1, tokens_side**2, 64, generator=gen).to(**dev)
    methods = benchmark_methods(args)
    runs = [(name, False) for name in methods] + ([(name, True) for name in methods] if args.cache is not None else [])
    full = schedule_cost(methods["baseline"], tokens_side**2, model_config, text).total

    def once(name, cached):
        stats = apply_teacache(transformer, TeaCacheConfig(threshold=args.cache)) if cached else None
        try:
            _sync(args.device)
            start = time.perf_counter()
            result = sample(adapter, noise, methods[name], grid, generator=torch.Generator().manual_seed(1))
            _sync(args.device)
            return time.perf_counter() - start, result, stats
        finally:
            if cached:
                remove_teacache(transformer)

    with torch.no_grad():
        sample(adapter, noise, RALUConfig.preset("flux-dev-7x", steps=(1, 1, 1)), grid)  # warm-up: every token count
        times = {run: [] for run in runs}
        stages, skipped = {}, {}
        for rep in range(args.reps):
            for run in (runs if rep % 2 == 0 else list(reversed(runs))):
                seconds, result, stats = once(*run)
                times[run].append(seconds)
                stages[run] = [round(t, 4) for t in result.stage_seconds]
                if stats is not None:
                    skipped[run] = stats.skipped_per_stage(tuple(st.steps for st in methods[run[0]].stages))
    base = statistics.median(times[("baseline", False)])
    rows = {}
    for name, cached in runs:
        config, med = methods[name], statistics.median(times[(name, cached)])
        cost = schedule_cost(config, tokens_side**2, model_config, text, skipped.get((name, cached)))
        label = f"{name}+teacache" if cached else name
        rows[label] = dict(median_s=med, min_s=min(times[(name, cached)]), max_s=max(times[(name, cached)]),
                           measured_speedup=base / med, flops_speedup=full / cost.total,
                           efficiency=base / med / (full / cost.total), stage_seconds=stages[(name, cached)],
                           calls=sum(st.steps for st in config.stages), skipped=list(cost.skipped))
    return rows


def overheads(args, transformer, vae) -> dict:
    """RALU's own work per generation, at 1024x1024 token counts (64x64 full grid) unless noted."""
    out = {}
    config = RALUConfig.preset("flux-dev-4x")
    grid_low = (32, 32)
    device = args.device
    low = torch.randn(1, 1024, 64, device=device)
    selected = torch.randperm(1024, device=device)[: config.selected_tokens(1024)][None]
    layout = MixedLayout.from_selection(selected, grid_low)
    stages = config.stages
    gen = torch.Generator(device).manual_seed(0)

    def noise_both():
        kept, parents = layout.split_low(low)
        kept, children = _renoise(kept, parents, stages[1], config, gen)
        mixed = torch.cat([kept, children], 1)
        kept_low, full = layout.split_mixed(mixed)
        _renoise(full, kept_low, stages[2], config, gen)

    out["correlated noise, both transitions"] = _timed(lambda: (noise_both(), _sync(device)))

    def bookkeeping():
        lay = MixedLayout.from_selection(selected, grid_low)
        lay.mixed_positions("corner")
        kept, parents = lay.split_low(low)
        mixed = torch.cat([kept, upsample_tokens(parents, "token_repeat")], 1)
        kept_low, full = lay.split_mixed(mixed)
        lay.to_raster(upsample_tokens(kept_low, "token_repeat"), full)

    out["token reordering + positions"] = _timed(lambda: (bookkeeping(), _sync(device)))
    image = torch.rand(1, 3, 512, 512) * 2 - 1
    out["Canny edge scores (512x512 decode)"] = _timed(lambda: edge_scores(image, grid_low))
    out["latent edge scores (region_source='latent', no decode)"] = _timed(
        lambda: (latent_edge_scores(low, grid_low), _sync(device)))
    dev = dict(device=device, dtype=args.dtype)
    embeds = torch.randn(2, args.text_tokens, 4096).to(**dev)
    adapter = FluxAdapter(transformer, vae, embeds, torch.randn(2, 768).to(**dev),
                          torch.zeros(args.text_tokens, 3, device=device), guidance=torch.full([2], 3.5, device=device))
    other = MixedLayout.from_selection(torch.randperm(1024, device=device)[:307][None], grid_low)
    positions = torch.stack([layout.mixed_positions("corner")[0], other.mixed_positions("corner")[0]])
    out["per-sample RoPE tables, batch of 2 (once per stage)"] = _timed(
        lambda: (adapter.prepare_positions(positions, grid_low), _sync(device)))
    x0 = torch.randn(1, 1024, 64, device=device)
    tiny = FluxAdapter(transformer, vae, embeds[:1], None, torch.zeros(args.text_tokens, 3, device=device))
    with torch.no_grad():
        out["decode for region selection, tiny VAE (512x512)"] = _timed(lambda: tiny.decode(x0, grid_low), reps=1)
        if args.real_vae:
            from diffusers import AutoencoderKL

            real = FluxAdapter(transformer, AutoencoderKL(**FLUX_VAE_DECODER).to(device).eval(), embeds[:1], None,
                               torch.zeros(args.text_tokens, 3, device=device))
            out["decode for region selection, FLUX-architecture VAE (512x512)"] = _timed(
                lambda: real.decode(x0, grid_low), reps=1)
    return out


def dense_noise_seconds(single: int, groups: int, noise_ratio: float, dim: int = 64) -> float:
    """The reference's approach for one transition: a dense block-diagonal covariance over the new
    sequence (identity for ``single`` tokens, I - 11ᵀ/Z² for ``groups`` groups of 4 copies) and one
    MultivariateNormal per latent channel (``dim`` of them), each factorising the whole matrix."""
    block = torch.eye(4) - torch.ones(4, 4) / noise_ratio**2 + 1e-6 * torch.eye(4)
    start = time.perf_counter()
    cov = torch.block_diag(torch.eye(single), *[block] * groups)
    for _ in range(dim):
        torch.distributions.MultivariateNormal(torch.zeros(cov.shape[0]), covariance_matrix=cov).sample((1,))
    return time.perf_counter() - start


def noise_comparison(max_dense_px: int) -> list[dict]:
    rows = []
    config = RALUConfig.preset("flux-dev-4x")
    for px in (512, 1024, 2048):
        tokens = (px // 16) ** 2
        low = torch.randn(1, tokens // 4, 64)
        selected = torch.arange(config.selected_tokens(tokens // 4))[None]
        side = px // 32
        layout = MixedLayout.from_selection(selected, (side, side))
        gen = torch.Generator().manual_seed(0)

        def ours():
            kept, parents = layout.split_low(low)
            _renoise(kept, parents, config.stages[1], config, gen)
            kept_low, full = layout.split_mixed(torch.randn(1, tokens // 4 - selected.shape[1] + 4 * selected.shape[1], 64))
            _renoise(full, kept_low, config.stages[2], config, gen)

        row = dict(px=px, ours_s=_timed(ours))
        if px <= max_dense_px:
            # both transitions, as the reference draws them: stage-2 and stage-3 sequences
            k, kept = selected.shape[1], tokens // 4 - selected.shape[1]
            row["dense_mvn_s"] = (dense_noise_seconds(kept, k, config.noise_ratio)
                                  + dense_noise_seconds(4 * k, kept, config.noise_ratio))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=384, help="image side in px, multiple of 32 (1024 on a GPU)")
    parser.add_argument("--text-tokens", type=int, default=None, help="default: image tokens / 8, FLUX.1-dev's ratio")
    parser.add_argument("--double", type=int, default=1, help="double-stream blocks (FLUX.1-dev: 19)")
    parser.add_argument("--single", type=int, default=1, help="single-stream blocks (FLUX.1-dev: 38)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--baseline-steps", type=int, default=50)
    parser.add_argument("--presets", nargs="+", default=["flux-dev-4x", "flux-dev-7x"])
    parser.add_argument("--dense-noise-max-px", type=int, default=1024,
                        help="largest size at which the reference's dense noise is timed (2048 takes very long)")
    parser.add_argument("--real-vae", action="store_true", help="also time a FLUX-architecture VAE decode (slow on CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cache", type=float, default=None, metavar="THRESHOLD",
                        help="also run every method with the TeaCache-style hook at this threshold (FLUX coefficients); "
                             "FLOPs then count the skipped calls (random weights: the skip pattern is illustrative)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory per method (fresh processes)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="write speed.json here")
    args = parser.parse_args(argv)
    if args.size % 32:
        parser.error(f"--size must be a multiple of 32, got {args.size}")
    args.text_tokens = args.text_tokens or max(1, (args.size // 16) ** 2 // 8)
    args.dtype = getattr(torch, args.dtype)
    if args.memory_child:
        _memory_child(args)
        return 0
    model_config, transformer, vae = build(args)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"FLUX-width transformer: {args.double} double + {args.single} single blocks, hidden 3072, "
          f"{args.size}x{args.size} px = {(args.size // 16) ** 2} image + {args.text_tokens} text tokens, "
          f"{str(args.dtype).replace('torch.', '')}; {machine}")
    rows = run_methods(args, transformer, vae, model_config)
    print(f"\n{'method':<24}{'calls':>6}{'skipped':>9}{'median s':>10}{'spread s':>16}{'measured':>10}{'FLOPs':>8}"
          f"{'efficiency':>12}")
    for name, r in rows.items():
        spread = f"{r['min_s']:.2f}-{r['max_s']:.2f}"
        print(f"{name:<24}{r['calls']:>6}{sum(r['skipped']):>9}{r['median_s']:>10.2f}{spread:>16}"
              f"{r['measured_speedup']:>9.2f}x{r['flops_speedup']:>7.2f}x{r['efficiency']:>12.3f}")
    costs = overheads(args, transformer, vae)
    total_4x = rows.get("flux-dev-4x", {}).get("median_s")
    print("\nRALU overheads per generation (1024x1024 token counts: 4096 full, 1024 low):")
    for name, seconds in costs.items():
        print(f"  {name:<58}{seconds * 1000:>10.2f} ms")
    noise = noise_comparison(args.dense_noise_max_px)
    print("\ncorrelated noise for both transitions: ours vs the reference's dense multivariate normal")
    for row in noise:
        dense = f"{row['dense_mvn_s']:.2f} s" if "dense_mvn_s" in row else "not run"
        print(f"  {row['px']:>5} px: ours {row['ours_s'] * 1000:8.2f} ms   dense {dense}")
    memory = {}
    if args.memory:
        memory = {name: peak_memory(args, name) for name in benchmark_methods(args)}
        unit = "max_memory_allocated" if str(args.device).startswith("cuda") else "peak RSS"
        print(f"\npeak memory ({unit}, one generation per fresh process):")
        for name, mib in memory.items():
            print(f"  {name:<14}{mib:>10.0f} MiB")
    record = dict(command="python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  machine=machine, size=args.size, text_tokens=args.text_tokens, blocks=(args.double, args.single),
                  dtype=str(args.dtype), methods=rows, overheads_s=costs, noise=noise, peak_memory_mib=memory,
                  ralu_4x_median_s=total_4x)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "speed.json").write_text(json.dumps(record, indent=2))
        (args.out / "speed.md").write_text(markdown(record))
        print(f"\nwrote {args.out / 'speed.json'} and {args.out / 'speed.md'}")
    return 0


def markdown(record: dict) -> str:
    """The results as markdown tables."""
    lines = ["# Speed benchmark", "", f"Command: `{record['command']}`  ", f"Machine: {record['machine']}  ",
             f"Model: FLUX-width transformer ({record['blocks'][0]} double + {record['blocks'][1]} single blocks, "
             f"hidden 3072), {record['size']}x{record['size']} px, {record['text_tokens']} text tokens, "
             f"{record['dtype'].replace('torch.', '')}", "",
             "| method | calls | skipped | median s | min-max s | measured speedup | FLOPs speedup | efficiency |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in record["methods"].items():
        lines.append(f"| {name} | {r['calls']} | {sum(r.get('skipped', []))} | {r['median_s']:.2f} | "
                     f"{r['min_s']:.2f}-{r['max_s']:.2f} | "
                     f"{r['measured_speedup']:.2f}x | {r['flops_speedup']:.2f}x | {r['efficiency']:.3f} |")
    lines += ["", "RALU's own overheads per generation, at 1024x1024 token counts:", "", "| work | ms |", "| --- | --- |"]
    lines += [f"| {name} | {seconds * 1000:.2f} |" for name, seconds in record["overheads_s"].items()]
    lines += ["", "Correlated noise for both transitions:", "", "| px | ours ms | reference dense MVN s |",
              "| --- | --- | --- |"]
    for row in record["noise"]:
        dense = f"{row['dense_mvn_s']:.2f}" if "dense_mvn_s" in row else "not run"
        lines.append(f"| {row['px']} | {row['ours_s'] * 1000:.2f} | {dense} |")
    if record.get("peak_memory_mib"):
        lines += ["", "| method | peak memory MiB |", "| --- | --- |"]
        lines += [f"| {name} | {mib:.0f} |" for name, mib in record["peak_memory_mib"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
