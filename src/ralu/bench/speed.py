"""Speed of RALU against the baseline across image sizes: measured, FLOPs and calibrated-latency speedups.

    ralu bench speed [--sizes 256 384 512] [--reps 3] [--dtype float32] [--baseline-steps 20] [--out DIR]

One process, one FLUX-shaped transformer with FLUX.1-dev's width (hidden 3072 = 24 heads x 128, text
width 4096, 64 latent channels) and random weights, ``--double``/``--single`` blocks so that a CPU gets
through it. For each size, the methods and a short calibration run alternately ``--reps`` times through
the same sampler; the table gives the median and range, the speedup over the baseline measured (paired
by repetition) and predicted (by the cost model's FLOPs, and by a latency calibration of this very model
made once first), and the efficiencies (measured / predicted), also against the calibration timed in
the same repetition. Each stage's seconds per call in the run are compared with the calibrated call. RALU's own work (noise, token bookkeeping, positions, edge
scores) is timed separately. ``--dense-noise`` also times the reference script's dense multivariate
normal (minutes at 1024 px). The host (CPU model, AMX / avx512_bf16 flags, threads, dtype, torch) is
recorded. ``--out`` writes ``performance.md``, ``performance.json`` and ``efficiency.png``; nothing is
written without it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import MappingProxyType

import torch

from ralu import Baseline, RALUConfig, sample
from ralu.adapters.base import Conditioning
from ralu.adapters.flux import FluxAdapter
from ralu.calibrate import LatencyModel, host, time_calls
from ralu.cost import schedule_cost
from ralu.layout import MixedLayout, upsample_tokens
from ralu.regions import edge_scores, latent_edge_scores
from ralu.sampler import _renoise

FLUX_WIDTH = dict(num_attention_heads=24, attention_head_dim=128, joint_attention_dim=4096, pooled_projection_dim=768,
                  in_channels=64, axes_dims_rope=(16, 56, 56), guidance_embeds=True, patch_size=1)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Bench:
    """The transformer, its conditioning and a calibration, shared by every size."""

    def __init__(self, args):
        from diffusers import FluxTransformer2DModel

        torch.manual_seed(0)
        self.args = args
        self.config = dict(FLUX_WIDTH, num_layers=args.double, num_single_layers=args.single)
        with torch.device(args.device):  # random init where it runs: 12B parameters take minutes on a CPU
            # nn.Module.to: a random model has no fp32-only modules to keep, so no diffusers warning about them
            self.transformer = torch.nn.Module.to(FluxTransformer2DModel(**self.config), args.dtype).eval()
        self.dev = dict(device=args.device, dtype=args.dtype)

    def adapter(self, text_tokens: int, batch: int = 1) -> FluxAdapter:
        gen = torch.Generator().manual_seed(0)
        embeds = torch.randn(batch, text_tokens, 4096, generator=gen).to(**self.dev)
        pooled = torch.randn(batch, 768, generator=gen).to(**self.dev)
        return FluxAdapter(self.transformer, Conditioning(embeds, pooled, torch.zeros(text_tokens, 3, device=self.args.device)),
                           embedded_guidance=torch.full([batch], 3.5, device=self.args.device),
                           decoder=lambda x0, grid: torch.zeros(x0.shape[0], 3, 16 * grid[0], 16 * grid[1]))

    def calibrate(self, token_counts: list[int], text_tokens: int, reps: int | None = None,
                  min_seconds: float = 5.0) -> LatencyModel:
        """Time one call of this transformer at each token count (the latency model of this run)."""
        adapter = self.adapter(text_tokens)

        def run(n: int) -> None:
            positions = torch.stack([torch.arange(n) // 64, torch.arange(n) % 64], dim=-1).float()[None].to(self.args.device)
            x = torch.randn(1, n, 64, **self.dev)
            with torch.no_grad():
                adapter.velocity(x, adapter.prepare_positions(positions, (64, 64)), 0.5)

        seconds, spread = time_calls(run, token_counts, reps=reps or max(5, self.args.reps),
                                     sync=lambda: _sync(self.args.device), min_seconds=min_seconds)
        return LatencyModel(tuple(token_counts), tuple(seconds), "flux-width benchmark model", str(self.args.device),
                            str(self.args.dtype).replace("torch.", ""), text_tokens, 1,
                            (self.args.double, self.args.single), tuple(round(s, 4) for s in spread), host())

    def methods(self) -> dict:
        methods = {"baseline": Baseline(self.args.baseline_steps, shift=3.0)}
        methods.update({name: RALUConfig.preset(name).resolve(3.0) for name in self.args.presets})
        return methods

    def size(self, px: int) -> dict:
        """Every method at one size, alternately ``reps`` times, with a fresh calibration in each repetition."""
        args = self.args
        side = px // 16
        full, text = side * side, max(1, side * side // 8)  # FLUX.1-dev's 4096 image : 512 text tokens
        methods = self.methods()
        counts = sorted({t for config in methods.values() for t in config.tokens_per_stage(full)})
        once = self.calibrate(counts, text, min_seconds=args.calibration_seconds)  # as a user would: one calibration, then predictions
        adapter = self.adapter(text)
        noise = torch.randn(1, full, 64, generator=torch.Generator().manual_seed(0)).to(**self.dev)
        model_config = MappingProxyType(self.config)
        base_cost = schedule_cost(methods["baseline"], full, model_config, text).total
        flops = {name: base_cost / schedule_cost(config, full, model_config, text).total
                 for name, config in methods.items()}
        items = [*methods, CALIBRATION]
        times = {name: [] for name in methods}
        stage_seconds = {name: [] for name in methods}
        per_rep: list[LatencyModel] = []
        with torch.no_grad():
            sample(adapter, noise, RALUConfig.preset("flux-dev-7x", steps=(1, 1, 1)).resolve(3.0), (side, side))
            for rep in range(args.reps):
                for name in items if rep % 2 == 0 else reversed(items):
                    if name == CALIBRATION:
                        per_rep.append(self.calibrate(counts, text, reps=2, min_seconds=0.0))
                        continue
                    _sync(args.device)
                    start = time.perf_counter()
                    result = sample(adapter, noise, methods[name], (side, side),
                                    generator=torch.Generator().manual_seed(1))
                    _sync(args.device)
                    times[name].append(time.perf_counter() - start)
                    stage_seconds[name].append(result.stage_seconds)
        rows = summarise(methods, times, flops, once, per_rep, full)
        for name, config in methods.items():
            rows[name]["stages"] = in_run_calls(config, stage_seconds[name], per_rep, full)
        return dict(px=px, image_tokens=full, text_tokens=text, calibration=dict(tokens=once.tokens,
                    seconds=once.seconds, spread=once.spread),
                    calibration_per_rep=[list(latency.seconds) for latency in per_rep], methods=rows)


CALIBRATION = "(calibration)"


def summarise(methods: dict, times: dict, flops: dict, once: LatencyModel, per_rep: list[LatencyModel],
              full: int) -> dict:
    """Measured speedups paired by repetition (the baseline's time in repetition r over the method's), and
    efficiencies against the FLOPs ratio, against a calibration made once before the sweep, and against the
    calibration timed in the same repetition (which takes the host's drift between repetitions out)."""
    baseline = methods["baseline"]
    rows = {}
    for name, config in methods.items():
        measured = [b / t for b, t in zip(times["baseline"], times[name])]
        same_rep = [m / latency.speedup(config, baseline, full) for m, latency in zip(measured, per_rep)]
        median, speedup = statistics.median(times[name]), statistics.median(measured)
        predicted = once.speedup(config, baseline, full)
        rows[name] = dict(calls=sum(s.steps for s in config.stages), median_s=median, min_s=min(times[name]),
                          max_s=max(times[name]), spread=(max(times[name]) - min(times[name])) / median,
                          measured_speedup=speedup, measured_range=(min(measured), max(measured)),
                          flops_speedup=flops[name], predicted_speedup=predicted,
                          efficiency_flops=speedup / flops[name], efficiency_predicted=speedup / predicted,
                          efficiency_same_rep=statistics.median(same_rep),
                          efficiency_same_rep_range=(min(same_rep), max(same_rep)),
                          transformer_predicted_s=once.schedule_seconds(config, full))
    return rows


def in_run_calls(config, stage_seconds: list, per_rep: list[LatencyModel], full: int) -> list[dict]:
    """Per stage: seconds per call inside the sampler (stage time / calls, RALU's own work between the calls
    included) against the same repetition's calibrated call at that token count; medians over repetitions."""
    steps = [stage.steps for stage in config.stages]
    out = []
    for k, (n, tokens) in enumerate(zip(steps, config.tokens_per_stage(full))):
        in_run = [seconds[k] / n for seconds in stage_seconds]
        ratio = [s / latency.call_seconds(tokens) for s, latency in zip(in_run, per_rep)]
        out.append(dict(tokens=tokens, calls=n, in_run_s=statistics.median(in_run), ratio=statistics.median(ratio)))
    return out


def overheads(bench: Bench) -> dict:
    """RALU's own work per generation, at 1024x1024 token counts (64x64 full grid, 32x32 low)."""
    out = {}
    config = RALUConfig.preset("flux-dev-4x").resolve(3.0)
    grid_low = (32, 32)
    device = bench.args.device
    low = torch.randn(1, 1024, 64, device=device)
    selected = torch.randperm(1024, device=device)[: config.selected_tokens(1024)][None]
    layout = MixedLayout.from_selection(selected, grid_low)
    stages = config.stages
    gen = torch.Generator(device).manual_seed(0)

    def noise_both():
        kept, parents = layout.split_low(low)
        kept, children = _renoise(kept, parents, stages[1], config, gen)
        kept_low, full = layout.split_mixed(torch.cat([kept, children], 1))
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
    adapter = bench.adapter(512, batch=2)
    other = MixedLayout.from_selection(torch.randperm(1024, device=device)[:307][None], grid_low)
    positions = torch.stack([layout.mixed_positions("corner")[0], other.mixed_positions("corner")[0]])
    with adapter.session():
        out["per-sample RoPE tables, batch of 2 (once per stage)"] = _timed(
            lambda: (adapter.prepare_positions(positions, grid_low), _sync(device)))
    return out


def dense_noise_seconds(single: int, groups: int, noise_ratio: float, dim: int = 64) -> float:
    """The reference script's approach for one transition: a dense block-diagonal covariance over the new
    sequence and one MultivariateNormal per latent channel, each factorising the whole matrix."""
    block = torch.eye(4) - torch.ones(4, 4) / noise_ratio**2 + 1e-6 * torch.eye(4)
    start = time.perf_counter()
    cov = torch.block_diag(torch.eye(single), *[block] * groups)
    for _ in range(dim):
        torch.distributions.MultivariateNormal(torch.zeros(cov.shape[0]), covariance_matrix=cov).sample((1,))
    return time.perf_counter() - start


def noise_comparison(sizes=(512, 1024)) -> list[dict]:
    rows = []
    config = RALUConfig.preset("flux-dev-4x").resolve(3.0)
    for px in sizes:
        tokens = (px // 16) ** 2
        k, kept = config.selected_tokens(tokens // 4), tokens // 4 - config.selected_tokens(tokens // 4)
        rows.append(dict(px=px, dense_mvn_s=dense_noise_seconds(kept, k, config.noise_ratio)
                         + dense_noise_seconds(4 * k, kept, config.noise_ratio)))
    return rows


def markdown(record: dict) -> str:
    h = record["host"]
    lines = ["<!-- generated by `ralu bench speed --out DIR`; edit src/ralu/bench/speed.py, not this file -->",
             "# Performance: speed across sizes", "",
             "FLOPs overstate RALU's wall-clock speedup: its low-resolution and mixed stages run matmuls on fewer "
             "tokens, and fewer tokens get fewer FLOP/s, by an amount that depends on the device, dtype, size and "
             "batch. This page measures it on one host and compares it with two predictions: the cost model's FLOPs "
             "ratio, and a latency calibration (one transformer call timed at each token count the schedules use, "
             "`ralu.calibrate`). `ralu bench calibrate` makes such a calibration for your own device; `ralu schedule` "
             "and `ralu plan` then use it.", "", f"Command: `{record['command']}`  ",
             f"Host: {h.get('cpu')}, AMX {'yes' if h.get('amx_bf16') else 'no'}, avx512_bf16 "
             f"{'yes' if h.get('avx512_bf16') else 'no'}, avx512f {'yes' if h.get('avx512f') else 'no'}, "
             f"{h.get('threads')} threads, torch {h.get('torch')}, GPU {h.get('gpu')}  ",
             f"Model: FLUX-width transformer ({record['blocks'][0]} double + {record['blocks'][1]} single blocks, hidden "
             f"3072), random weights, {record['dtype']}, batch 1; text tokens = image tokens / 8.", "",
             "Measured speedup = the baseline's time over the method's in the same repetition (the methods and a "
             "fresh calibration run alternately); median and range over the repetitions. Efficiency = measured / "
             "predicted speedup: against the FLOPs ratio; against a calibration of the same model made once before "
             "the sweep, as a user would (`once`); and against the calibration timed in the same repetition "
             "(`same rep.`), which takes the host's drift between repetitions out and leaves the latency model's "
             "own error.", "",
             "| px | method | calls | median s | measured | range | FLOPs | calibrated | eff. vs FLOPs | eff. vs "
             "once | eff. vs same rep. (range) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for size in record["sizes"]:
        for name, r in size["methods"].items():
            low, high = r["measured_range"]
            lo, hi = r["efficiency_same_rep_range"]
            lines.append(f"| {size['px']} | {name} | {r['calls']} | {r['median_s']:.2f} | {r['measured_speedup']:.2f}x | "
                         f"{low:.2f}-{high:.2f} | {r['flops_speedup']:.2f}x | {r['predicted_speedup']:.2f}x | "
                         f"{r['efficiency_flops']:.3f} | {r['efficiency_predicted']:.3f} | "
                         f"{r['efficiency_same_rep']:.3f} ({lo:.3f}-{hi:.3f}) |")
    lines += ["", "Calibrated prediction error over the sweep (RALU rows): " + prediction_errors(record), "",
              "![efficiency](efficiency.png)", "",
              "Seconds per transformer call inside the sampler (each stage's time over its calls, RALU's work "
              "between the calls included) against the same repetition's calibrated call at that token count "
              "(medians over repetitions): above 1 is time the per-call latency model does not see.", "",
              "| px | method | stage tokens | s per call in run | in run / calibrated |", "| --- | --- | --- | --- | --- |"]
    for size in record["sizes"]:
        for name, r in size["methods"].items():
            stages = r.get("stages", [])
            tokens = " / ".join(str(stage["tokens"]) for stage in stages)
            in_run = " / ".join(f"{stage['in_run_s']:.3f}" for stage in stages)
            ratio = " / ".join(f"{stage['ratio']:.3f}" for stage in stages)
            lines.append(f"| {size['px']} | {name} | {tokens} | {in_run} | {ratio} |")
    lines += ["", "RALU's own work per generation, at 1024x1024 token counts:", "", "| work | ms |", "| --- | --- |"]
    lines += [f"| {name} | {seconds * 1000:.2f} |" for name, seconds in record.get("overheads_s", {}).items()]
    lines += ["", "## On a GPU", ""]
    if on_gpu(record):
        lines += [f"This page is a GPU run ({record['host']['gpu']}), timed with CUDA synchronisation; the CPU "
                  "named above only launched the kernels. `bash tools/gpu_session.sh` repeats it (with the toy "
                  "judge's training after it)."]
    else:
        lines += ["The same benchmark at FLUX.1-dev's real size and depth, timed with CUDA synchronisation, in "
                  "bfloat16:", "", "```bash",
                  "ralu bench speed --sizes 512 768 1024 --double 19 --single 38 --dtype bfloat16 --baseline-steps 50 "
                  "--presets flux-dev-4x flux-dev-5x flux-dev-7x --calibration-seconds 1 --out gpu-speed", "```", "",
                  "docs/performance-h200/ holds that run on an NVIDIA H200."]
    lines += ["", "For end-to-end latency of a real pipeline (text encoders, VAE, guidance included): "
              "`ralu eval speed black-forest-labs/FLUX.1-dev --methods baseline:50 steps:10 flux-dev-5x --repeats 10` "
              "(docs/evaluation.md)."]
    if record.get("dense_noise"):
        lines += ["", "| px | the reference's dense noise, both transitions, s |", "| --- | --- |"]
        lines += [f"| {row['px']} | {row['dense_mvn_s']:.1f} |" for row in record["dense_noise"]]
    return "\n".join(lines) + "\n"


def on_gpu(record: dict) -> bool:
    """Whether a run was timed on its host's GPU (records before 2026-12-04 name no device: a GPU if the host had one)."""
    return bool(record["host"].get("gpu")) and str(record.get("device", "cuda")).startswith("cuda")


def prediction_errors(record: dict) -> str:
    """|measured / predicted - 1| over the RALU rows: a calibration made once, and one per repetition."""
    rows = [r for s in record["sizes"] for n, r in s["methods"].items() if n != "baseline"]
    once = [abs(r["efficiency_predicted"] - 1) for r in rows]
    text = f"calibrated once: largest {max(once):.1%}, mean {statistics.mean(once):.1%}"
    if all("efficiency_same_rep" in r for r in rows):
        same = [abs(r["efficiency_same_rep"] - 1) for r in rows]
        text += f"; calibrated in the same repetition: largest {max(same):.1%}, mean {statistics.mean(same):.1%}"
    return text + "."


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    names = [n for n in record["sizes"][0]["methods"] if n != "baseline"]
    px = [s["px"] for s in record["sizes"]]
    for colour, name in zip(("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"), names):
        for key, style, label in (("efficiency_flops", "o-", "vs FLOPs"), ("efficiency_predicted", "s--",
                                  "vs calibrated once"), ("efficiency_same_rep", "^:", "vs calibrated, same rep.")):
            ax.plot(px, [s["methods"][name][key] for s in record["sizes"]], style, color=colour,
                    label=f"{name} {label}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("image side (px)")
    ax.set_ylabel("measured / predicted speedup")
    device = record["host"].get("gpu") if on_gpu(record) else record["host"].get("cpu")
    ax.set_title(f"{device}, {record['dtype']}, {record['blocks'][0]} + {record['blocks'][1]} blocks", fontsize=8)
    ax.legend(fontsize=6, ncol=2 if len(names) > 2 else 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(record: dict, out: Path | None) -> None:
    """performance.md, performance.json and efficiency.png under ``out`` (nothing when it is None)."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "performance.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "performance.md").write_text(markdown(record))
    plot(record, out / "efficiency.png")
    print(f"wrote {out / 'performance.md'}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ralu bench speed", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512], help="image sides in px (multiples of 32)")
    parser.add_argument("--double", type=int, default=1, help="double-stream blocks (FLUX.1-dev: 19)")
    parser.add_argument("--single", type=int, default=1, help="single-stream blocks (FLUX.1-dev: 38)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--baseline-steps", type=int, default=20)
    parser.add_argument("--presets", nargs="+", default=["flux-dev-4x", "flux-dev-7x"])
    parser.add_argument("--calibration-seconds", type=float, default=5.0,
                        help="timed seconds at least per token count in the calibration made before each size")
    parser.add_argument("--dense-noise", action="store_true", help="also time the reference's dense noise (slow)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write performance.md, performance.json and efficiency.png here")
    parser.add_argument("--render", type=Path, metavar="DIR",
                        help="only rewrite DIR's performance.md and efficiency.png from its performance.json")
    args = parser.parse_args(argv)
    if args.render:
        source = args.render / "performance.json"
        if not source.is_file():
            parser.error(f"--render: no performance.json in {args.render}")
        record = json.loads(source.read_text())
        try:
            markdown(record)
        except KeyError as missing:
            parser.error(f"--render: {source} predates the field {missing} this version writes; rerun the benchmark")
        write(record, args.render)
        return 0
    bad = [s for s in args.sizes if s <= 0 or s % 32]
    if bad or args.reps < 1 or args.baseline_steps < 1 or args.calibration_seconds < 0:
        parser.error(f"--sizes must be positive multiples of 32 (got {bad}), --reps and --baseline-steps >= 1, "
                     f"--calibration-seconds >= 0")
    unknown = [p for p in args.presets if p not in RALUConfig.PRESETS]
    if unknown:
        parser.error(f"--presets must be among {sorted(RALUConfig.PRESETS)}, got {unknown}")
    args.dtype = getattr(torch, args.dtype)
    bench = Bench(args)
    record = dict(command="ralu bench speed " + " ".join(sys.argv[1:] if argv is None else argv), host=host(),
                  dtype=str(args.dtype).replace("torch.", ""), blocks=(args.double, args.single),
                  device=str(args.device), sizes=[])
    print(f"host: {record['host']}")
    for px in args.sizes:
        size = bench.size(px)
        record["sizes"].append(size)
        for name, r in size["methods"].items():
            print(f"{px:>5} px {name:<14} {r['median_s']:8.2f} s  measured {r['measured_speedup']:.2f}x  FLOPs "
                  f"{r['flops_speedup']:.2f}x  calibrated {r['predicted_speedup']:.2f}x  eff {r['efficiency_flops']:.3f}"
                  f" / {r['efficiency_predicted']:.3f} / same rep. {r['efficiency_same_rep']:.3f}", flush=True)
        write(record, args.out)  # after each size: a run stopped at a time limit keeps what it measured
    record["overheads_s"] = overheads(bench)
    if args.dense_noise:
        record["dense_noise"] = noise_comparison()
    print(markdown(record))
    write(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
