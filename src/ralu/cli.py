"""The ``ralu`` command: inspect schedules, generate images, run the offline timing demo.

Argument parsing and printing only; the schedule math lives in ``config`` and ``cost``.
torch and diffusers are imported by the subcommands that need them, so ``ralu schedule``
stays quick.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .config import VARIANT_OPTIONS, Baseline, RALUConfig
from .cost import combined_speedup, image_tokens, is_sd3_config, schedule_cost, speedup, vae_decode_flops

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")

# The offline demo's random transformer: FLUX-shaped (double then single blocks, 3-axis RoPE),
# wide enough that its calls dominate the run time next to the tiny text encoders and VAE.
DEMO_TRANSFORMER = dict(num_attention_heads=8, attention_head_dim=64, axes_dims_rope=(16, 24, 24), num_layers=2,
                        num_single_layers=4, joint_attention_dim=64, pooled_projection_dim=64)
DEMO_PROMPT = "a photo of a red puppy high fiving a blue kitten"
# FLUX.1-dev at 1024² pairs 4096 image tokens with 512 text tokens; the demo keeps that 8:1 ratio.
DEMO_IMAGE_TO_TEXT = 8


class UsageError(Exception):
    """Invalid command-line input: reported on one line, exit code 2."""


def _add_schedule_options(parser: argparse.ArgumentParser, baseline: bool) -> None:
    default = "the pipeline's: flux-dev-4x for FLUX.1-dev, sd3-2x for SD3" if baseline else "the flux-dev-4x preset"
    group = parser.add_argument_group(f"schedule (default: {default})")
    group.add_argument("--preset", choices=sorted(RALUConfig.PRESETS), help="a named RALU preset")
    group.add_argument("--steps", type=int, nargs=3, metavar=("N1", "N2", "N3"), help="model calls per stage")
    group.add_argument("--ends", type=float, nargs=3, metavar=("E1", "E2", "E3"),
                       help="progress at which each stage ends, e.g. 0.3 0.45 1.0")
    group.add_argument("--up-ratio", type=float, metavar="R", help="fraction of low-res tokens upsampled early")
    group.add_argument("--shifts", type=float, nargs=3, metavar=("H1", "H2", "H3"),
                       help="per-stage scheduler shifts (default: solved by NT-DM)")
    group.add_argument("--noise-ratio", type=float, metavar="Z", help="renoising ratio Z >= 2 (default: NT-DM)")
    group.add_argument("--base-shift", type=float, metavar="H0",
                       help="stock shift NT-DM matches (default 3.0); with --preset, re-solves its shifts")
    group.add_argument("--option", action="append", default=[], metavar="FIELD=VALUE",
                       help="set a RALUConfig variant field, repeatable: "
                            + "; ".join(f"{name} ({'|'.join(str(v).lower() for v in values)})"
                                        for name, values in VARIANT_OPTIONS.items()))
    if baseline:
        group.add_argument("--baseline", type=int, metavar="STEPS",
                           help="run the stock single-resolution schedule with STEPS calls instead of RALU")


def _config_from_args(args: argparse.Namespace, default: str = "flux-dev-4x") -> RALUConfig | Baseline:
    """The schedule the options describe (``default``: the preset when none is chosen);
    raises UsageError or ValueError on invalid input."""
    custom = [f"--{name.replace('_', '-')}" for name in ("steps", "ends", "up_ratio")
              if getattr(args, name) is not None]
    solver = {} if args.base_shift is None else {"base_shift": args.base_shift}
    baseline = getattr(args, "baseline", None)
    chosen = [flag for flag, given in (("--preset", args.preset is not None), ("--steps/--ends/--up-ratio", custom),
                                       ("--baseline", baseline is not None)) if given]
    if len(chosen) > 1:
        raise UsageError(f"choose one schedule: {' or '.join(chosen)}")
    options = _parse_options(args.option)
    if baseline is not None:
        if args.shifts or args.noise_ratio is not None or args.base_shift is not None or options:
            raise UsageError("--shifts, --noise-ratio, --base-shift and --option apply to RALU schedules, "
                             "not --baseline")
        return Baseline(baseline)
    overrides = dict(options)
    if args.shifts is not None:
        overrides["shifts"] = tuple(args.shifts)
    if args.noise_ratio is not None:
        overrides["noise_ratio"] = args.noise_ratio
    if custom:
        if len(custom) < 3:
            raise UsageError("--steps, --ends and --up-ratio go together; missing "
                             + ", ".join(sorted({"--steps", "--ends", "--up-ratio"} - set(custom))))
        return RALUConfig(steps=tuple(args.steps), ends=tuple(args.ends), up_ratio=args.up_ratio,
                          **solver, **overrides)
    if solver:  # the preset's shifts and Z were solved for base shift 3.0: solve again unless given
        overrides = {"shifts": None, "noise_ratio": None, **solver, **overrides}
    return RALUConfig.preset(args.preset or default, **overrides)


def _parse_options(items: Sequence[str]) -> dict:
    """``["table_positions=low_grid", "canny_clip_unit=true"]`` → RALUConfig field values (checked by RALUConfig)."""
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in VARIANT_OPTIONS:
            raise UsageError(f"--option must be FIELD=VALUE with FIELD one of {', '.join(VARIANT_OPTIONS)}, "
                             f"got {item!r}")
        if VARIANT_OPTIONS[name] == (False, True):
            if value.lower() not in ("true", "false"):
                raise UsageError(f"--option {name} must be true or false, got {value!r}")
            options[name] = value.lower() == "true"
        else:
            options[name] = value
    return options


def _format_tokens(tokens: Sequence[int]) -> str:
    return " / ".join(str(n) for n in tokens)


# Shipped transformer configs (ralu/data/configs) and each model family's stock defaults:
# baseline steps and text tokens per call (T5 512 for FLUX.1-dev, 256 for schnell; 77 CLIP + 256 T5 for SD3).
MODELS = {"flux-dev": (50, 512), "flux-schnell": (4, 256), "sd3-medium": (28, 333), "sd3.5-medium": (40, 333),
          "sd3.5-large": (28, 333)}
CONFIG_FILES = (*MODELS, "flux-vae")


def _model_for(config: RALUConfig, requested: str | None) -> str:
    if requested is not None:
        return requested
    if (config.name or "").startswith("sd3"):
        return "sd3-medium"
    return "flux-schnell" if config.base_shift == 1.0 else "flux-dev"


def _load_model_config(name: str) -> dict:
    import json
    from importlib import resources

    if name in CONFIG_FILES:
        return json.loads(resources.files("ralu").joinpath("data", "configs", f"{name}.json").read_text())
    path = Path(name)
    if not path.is_file():
        raise UsageError(f"--model must be one of {sorted(MODELS)} or a transformer config.json, got {name!r}")
    return json.loads(path.read_text())


def _vae_decode_flops(height: int, width: int):
    """FLOPs of one decode at (height/f, width/f) px with FLUX.1's VAE decoder (SD3's has the same
    architecture); ``decode(2)`` is RALU's half-resolution decode for region selection."""
    vae = _load_model_config("flux-vae")
    return lambda f: vae_decode_flops(vae, height // f, width // f)


def cmd_schedule(args: argparse.Namespace) -> int:
    config = _config_from_args(args)  # `schedule` has no --baseline: always a RALUConfig
    model = _model_for(config, args.model)
    model_config = _load_model_config(model)
    steps_default, text_default = MODELS.get(model, (50, 512))
    args.baseline_steps = args.baseline_steps or steps_default
    args.text_tokens = args.text_tokens or text_default
    full = image_tokens(args.height, args.width, multiple=32)
    cost = schedule_cost(config, full, model_config, text_tokens=args.text_tokens, skipped=args.skipped)
    base = schedule_cost(Baseline(args.baseline_steps), full, model_config, text_tokens=args.text_tokens)
    print(config.describe())
    print(f"  restarts s = ({', '.join(f'{s:.4f}' for s in config.restarts)})  "
          f"c = 1/Z^2 = {config.noise_ratio ** -2:.4f}  "
          f"base shift h0 = {config.base_shift:g}")
    print(f"  {args.width}x{args.height} px: {full} image tokens at full resolution, {args.text_tokens} text tokens; "
          f"transformer: {model} ({model_config.get('_class_name', 'config.json')})")
    print()
    header = f"{'stage':<7}{'resolution':<12}{'shift':>7}{'steps':>7}  {'sigma first -> last':<20}" \
             f"{'image tokens':>13}{'TFLOPs':>10}{'share':>8}"
    print(header)
    print("-" * len(header))
    for k, stage in enumerate(config.stages):
        sigmas = f"{stage.sigmas[0]:.4f} -> {stage.sigmas[-1]:.4f}"
        print(f"{k + 1:<7}{stage.resolution:<12}{config.shifts[k]:>7.3f}{stage.steps:>7}  {sigmas:<20}"
              f"{cost.tokens[k]:>13}{cost.flops[k] / 1e12:>10.1f}{cost.shares[k]:>8.1%}")
    print(f"{'total':<19}{'':>7}{sum(cost.steps):>7}  {'':<20}{'':>13}{cost.total / 1e12:>10.1f}{1:>8.0%}")
    print()
    print(f"baseline: {args.baseline_steps} steps x {full} tokens = {base.total / 1e12:.1f} TFLOPs")
    # end to end: classifier-free guidance doubles every call (SD3 by default); both runs decode the
    # final image, RALU also decodes its stage-1 estimate at half resolution for region selection
    branches = 2 if is_sd3_config(model_config) else 1
    if args.cfg is not None:
        branches = 2 if args.cfg else 1
    decode = _vae_decode_flops(args.height, args.width)
    ralu_total = branches * cost.total + decode(2) + decode(1)
    base_total = branches * base.total + decode(1)
    print(f"end to end ({branches} branch{'es' if branches == 2 else ''} per step{' (CFG)' if branches == 2 else ''}, "
          f"VAE decodes: final {decode(1) / 1e12:.1f} TFLOPs, RALU's region selection {decode(2) / 1e12:.1f}): "
          f"RALU {ralu_total / 1e12:.1f} vs baseline {base_total / 1e12:.1f} TFLOPs = {base_total / ralu_total:.2f}x")
    if args.skipped is None:
        print(f"analytic transformer speedup: {base.total / cost.total:.2f}x (text encoders excluded)")
        return 0
    combined = combined_speedup(config, full, args.skipped, args.baseline_steps, model_config, args.text_tokens)
    print(f"with {sum(args.skipped)} of {sum(cost.steps)} calls skipped by a cache (per stage {tuple(args.skipped)}):")
    print(f"  spatial (RALU) {combined.spatial:.2f}x  x  temporal (cache) {combined.temporal:.2f}x  "
          f"=  {combined.total:.2f}x transformer FLOPs speedup")
    return 0


def _resolve_device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        name = "float32" if device == "cpu" else "bfloat16"
    return getattr(torch, name)


def _dtype_argument(dtype) -> dict:
    """``dtype=`` where diffusers has renamed ``torch_dtype`` (the old name warns), else ``torch_dtype=``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _output_paths(output: Path, count: int) -> list[Path]:
    """out.png, out_1.png, out_2.png ... for ``count`` images."""
    return [output if i == 0 else output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(count)]


def _print_stages(output) -> None:
    for k, (steps, tokens, seconds) in enumerate(zip(output.stage_steps, output.stage_tokens, output.stage_seconds)):
        print(f"  stage {k + 1}: {steps:>3} steps  {tokens:>6} image tokens  {seconds:8.2f} s")


def _pipeline_class(model: str):
    """The RALU pipeline for a model folder or hub id, from the ``_class_name`` of its model_index.json."""
    from diffusers import DiffusionPipeline

    from .pipelines.flux import RALUFluxPipeline
    from .pipelines.sd3 import RALUStableDiffusion3Pipeline

    name = DiffusionPipeline.load_config(model).get("_class_name", "")
    for family, pipeline_class in (("StableDiffusion3", RALUStableDiffusion3Pipeline), ("Flux", RALUFluxPipeline)):
        if name.startswith(family) or name.startswith(f"RALU{family}"):
            return pipeline_class
    raise UsageError(f"{model} is a {name or 'pipeline without _class_name'}; ralu generate runs FLUX "
                     f"(FluxPipeline) and SD3/SD3.5 (StableDiffusion3Pipeline) models")


def cmd_generate(args: argparse.Namespace) -> int:
    _config_from_args(args)  # invalid schedule options fail before anything loads
    if args.output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise UsageError(f"--output must end in .png, .jpg, .jpeg or .webp, got {str(args.output)!r}")
    args.output.parent.mkdir(parents=True, exist_ok=True)  # fail before the model loads, not after the run
    import torch

    pipeline_class = _pipeline_class(args.model)
    options = ("preset", "steps", "ends", "up_ratio", "shifts", "noise_ratio", "base_shift", "baseline")
    # no schedule option: the pipeline picks its default for the loaded model (e.g. FLUX.1-schnell's)
    config = None
    if any(getattr(args, name) is not None for name in options):
        config = _config_from_args(args, default=pipeline_class.default_preset)
    device = _resolve_device(args.device)
    dtype = _resolve_dtype(args.dtype, device)
    start = time.perf_counter()
    pipe = pipeline_class.from_pretrained(args.model, **_dtype_argument(dtype)).to(device)
    print(f"loaded {args.model} on {device} ({str(dtype).removeprefix('torch.')}) in "
          f"{time.perf_counter() - start:.1f} s")
    print(config.describe() if config is not None else f"schedule: {pipeline_class.__name__}'s default preset")
    generator = torch.Generator("cpu").manual_seed(args.seed)
    start = time.perf_counter()
    guidance = {} if args.guidance is None else {"guidance_scale": args.guidance}
    output = pipe(args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width, **guidance,
                  num_images_per_prompt=args.num_images, generator=generator, config=config)
    total = time.perf_counter() - start
    _print_stages(output)
    print(f"  sampling {sum(output.stage_seconds):.2f} s, total {total:.2f} s "
          f"(text encoding and decoding included), {sum(output.stage_steps)} model calls")
    if output.regions is None:
        print("  regions: none (single-resolution schedule)")
    else:
        low = output.regions[0].numel()
        counts = ", ".join(str(int(r.sum())) for r in output.regions)
        print(f"  regions upsampled early: {counts} of {low} low-res tokens")
    for image, path in zip(output.images, _output_paths(args.output, len(output.images))):
        image.save(path)
        print(f"saved {path} ({image.width}x{image.height})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.random:
        return _random_timing_demo(args)
    import numpy as np
    import torch

    from . import toy
    from .shapes import check_prompt, parse_caption

    prompts = toy.DEMO_PROMPTS[:2] if args.quick else toy.DEMO_PROMPTS
    seeds = list(range(len(prompts)))
    steps = 8 if args.quick else (args.steps or 50)
    quick_steps = dict(steps=(1, 1, 2)) if args.quick else {}
    model = toy.load_toy()
    args.guidance = toy.DEFAULT_GUIDANCE if args.guidance is None else args.guidance
    print(f"RALU demo on the shipped toy model: a {sum(p.numel() for p in model.transformer.parameters()) / 1e6:.1f} M "
          f"parameter FluxTransformer2DModel trained on coloured shapes (ralu.toy), "
          f"{toy.RESOLUTION}x{toy.RESOLUTION} px, "
          f"{torch.get_num_threads()} CPU threads, guidance {args.guidance:g}")
    baseline = Baseline(steps, toy.BASE_SHIFT, name=f"baseline {steps}")
    presets = [RALUConfig.preset(name, **quick_steps) for name in ("flux-dev-4x", "flux-dev-7x")]
    full, text = toy.token_grid()[0] * toy.token_grid()[1], toy.MAX_WORDS
    model_config = dict(model.transformer.config)
    matched = max(1, round(steps / speedup(presets[0], full, steps, model_config, text)))
    methods = [baseline, presets[0], Baseline(matched, toy.BASE_SHIFT, name=f"baseline {matched}"), presets[1]]
    toy.generate(model, prompts[:1], seeds[:1], RALUConfig.preset("flux-dev-4x", steps=(1, 1, 1)))  # warm-up
    rows, table = [], []
    for config in methods:
        start = time.perf_counter()
        images, result = toy.generate(model, prompts, seeds, config, args.guidance)
        seconds = time.perf_counter() - start
        pictures = toy.to_uint8(images)
        regions = None if result.layout is None else result.layout.mask().cpu().numpy()
        label = config.name + ("" if result.layout is None else f" (r={config.up_ratio:g})")
        rows.append((label, pictures, regions))
        checks = [check_prompt(p.astype(np.float32) / 255, parse_caption(c))["all"] for p, c in zip(pictures, prompts)]
        table.append((config.name, result.model_calls, _format_tokens(result.stage_tokens), seconds,
                      speedup(config, full, steps, model_config, text), pictures, float(np.mean(checks))))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    toy.comparison_grid(rows, prompts).save(args.output)
    header = (f"{'method':<14}{'calls':>6}  {'tokens per stage':<17}{'wall s':>8}{'speedup':>9}{'FLOPs speedup':>15}"
              f"{'PSNR vs base':>14}{'prompt ok':>11}")
    print()
    print(header)
    print("-" * len(header))
    base_seconds, base_pictures = table[0][3], table[0][5]
    for name, calls, tokens, seconds, flops, pictures, ok in table:
        psnr = toy.psnr(pictures, base_pictures)
        print(f"{name:<14}{calls:>6}  {tokens:<17}{seconds:>8.2f}{base_seconds / seconds:>8.2f}x{flops:>14.2f}x"
              f"{'inf' if psnr == float('inf') else f'{psnr:.1f} dB':>14}{ok:>11.0%}")
    print()
    print(f"{len(prompts)} prompts in one batch per method. speedup: measured wall time of the batch vs the baseline; "
          f"FLOPs speedup: cost.py's transformer count for this model. PSNR: mean over the prompts against the "
          f"baseline's image of the same prompt and seed. prompt ok: share of images whose colours, shapes and "
          f"relation the data generator reads back as asked (ralu.shapes.check_prompt). RALU images: selected "
          f"upsampling regions outlined in cyan.")
    print(f"saved {args.output}")
    return 0


def _random_timing_demo(args: argparse.Namespace) -> int:
    import torch

    from .pipelines.flux import RALUFluxPipeline
    from .tiny import tiny_flux_components

    size, steps = (64, 20) if args.quick else (args.size, args.steps or 50)
    full = image_tokens(size, size, multiple=32)
    text_tokens = max(1, full // DEMO_IMAGE_TO_TEXT)
    pipe = RALUFluxPipeline(**tiny_flux_components(seed=0, **DEMO_TRANSFORMER))
    pipe.set_progress_bar_config(disable=True)
    model_config = dict(pipe.transformer.config)
    print("RALU offline demo: a RANDOM-weight FLUX-shaped pipeline (no trained model ships yet).")
    print("The images are noise; only the timing is meaningful.")
    t = DEMO_TRANSFORMER
    print(f"transformer: {t['num_layers']} double + {t['num_single_layers']} single blocks, "
          f"{t['num_attention_heads']} heads x {t['attention_head_dim']}; {size}x{size} px = {full} image tokens, "
          f"{text_tokens} text tokens (8:1, as FLUX.1-dev at 1024²); {torch.get_num_threads()} CPU threads")

    def run(config):
        start = time.perf_counter()
        out = pipe(DEMO_PROMPT, height=size, width=size, generator=torch.Generator("cpu").manual_seed(0),
                   config=config, max_sequence_length=text_tokens, output_type="np")
        return out, time.perf_counter() - start

    run(RALUConfig.preset("flux-dev-4x", steps=(1, 1, 1)))  # warm-up: every code path once
    baseline = Baseline(steps, name=f"baseline {steps}")
    rows = []
    for config in (baseline, RALUConfig.preset("flux-dev-4x"), RALUConfig.preset("flux-dev-7x")):
        out, seconds = run(config)
        flops = speedup(config, full, steps, model_config, text_tokens)
        rows.append((config.name, sum(out.stage_steps), _format_tokens(out.stage_tokens), sum(out.stage_seconds),
                     seconds, flops))
    header = (f"{'method':<14}{'calls':>6}  {'tokens per stage':<20}{'sampling s':>11}{'total s':>9}"
              f"{'speedup':>9}{'FLOPs speedup':>15}")
    print()
    print(header)
    print("-" * len(header))
    base_seconds = rows[0][4]
    for name, calls, tokens, sampling, total, flops in rows:
        print(f"{name:<14}{calls:>6}  {tokens:<20}{sampling:>11.2f}{total:>9.2f}"
              f"{base_seconds / total:>8.2f}x{flops:>14.2f}x")
    print()
    print("speedup: measured wall time of the whole call vs the baseline (text encoding, RALU's region-selection")
    print("decode and the final decode included); FLOPs speedup: cost.py's transformer-only count for this model.")
    return 0


def _run_benchmark(name: str, argv: list[str]) -> int:
    """Run ``benchmarks/<name>.py`` of a source checkout with ``argv`` (the benchmarks are not installed)."""
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    if not script.is_file():
        raise UsageError(f"ralu bench runs benchmarks/{name}.py of a source checkout; not found at {script}")
    spec = importlib.util.spec_from_file_location(f"ralu_benchmark_{name}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def cmd_quality(args: argparse.Namespace) -> int:
    argv = [f"--{name}={getattr(args, name)}" for name in ("out", "prompts", "seeds", "guidance", "model")
            if getattr(args, name) is not None]
    return _run_benchmark("quality", argv)


def cmd_bench(args: argparse.Namespace) -> int:
    return _run_benchmark(args.which, list(args.rest))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ralu", description="Region-Adaptive Latent Upsampling for FLUX and SD3.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    schedule = commands.add_parser("schedule", help="show a schedule's stages and analytic cost")
    _add_schedule_options(schedule, baseline=False)
    schedule.add_argument("--height", type=int, default=1024)
    schedule.add_argument("--width", type=int, default=1024)
    schedule.add_argument("--model", help=f"transformer for the cost: one of {sorted(MODELS)} or a config.json path "
                                          "(default: from the preset, flux-dev otherwise)")
    schedule.add_argument("--text-tokens", type=int, default=None,
                          help="text tokens per call (default: the model's, 512 for FLUX.1-dev)")
    schedule.add_argument("--cfg", action=argparse.BooleanOptionalAction, default=None,
                          help="count two branches per step (classifier-free guidance); default: on for SD3")
    schedule.add_argument("--skipped", type=int, nargs=3, metavar=("S1", "S2", "S3"),
                          help="calls per stage a temporal cache skipped (e.g. counted by TeaCacheStats): "
                               "report spatial x temporal speedups")
    schedule.add_argument("--baseline-steps", type=int, default=None,
                          help="baseline model calls (default: the model's, 50 for FLUX.1-dev, 28 for SD3)")
    schedule.set_defaults(handler=cmd_schedule)

    generate = commands.add_parser("generate", help="generate images with a FLUX or SD3/SD3.5 model")
    generate.add_argument("model", help="hub id or local folder of a FLUX or SD3/SD3.5 pipeline")
    generate.add_argument("--prompt", required=True)
    _add_schedule_options(generate, baseline=True)
    generate.add_argument("--height", type=int, help="px (default: the model's, 1024 for FLUX.1)")
    generate.add_argument("--width", type=int, help="px (default: the model's, 1024 for FLUX.1)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--guidance", type=float,
                          help="guidance scale (default: the pipeline's, 3.5 embedded for FLUX, 7.0 CFG for SD3)")
    generate.add_argument("--negative-prompt", help="negative prompt (SD3 guidance; FLUX uses it only with true CFG)")
    generate.add_argument("--num-images", type=int, default=1)
    generate.add_argument("--dtype", choices=DTYPES, default="auto",
                          help="default: float32 on cpu, bfloat16 elsewhere")
    generate.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    generate.add_argument("--output", type=Path, required=True, help="image path; more images get _1, _2 ...")
    generate.set_defaults(handler=cmd_generate)

    demo = commands.add_parser("demo", help="offline demo: baseline vs RALU on the shipped toy model, "
                                            "one comparison PNG")
    demo.add_argument("--output", type=Path, default=Path("ralu_demo.png"), help="grid PNG (default ralu_demo.png)")
    demo.add_argument("--steps", type=int, help="baseline model calls (default 50)")
    demo.add_argument("--guidance", type=float,
                      help="classifier-free guidance scale of the toy model (default: ralu.toy.DEFAULT_GUIDANCE)")
    demo.add_argument("--quick", action="store_true", help="few prompts and steps, for a smoke test")
    demo.add_argument("--random", action="store_true",
                      help="instead: the timing-only demo on a random-weight FLUX-shaped pipeline")
    demo.add_argument("--size", type=int, default=384, help="--random only: image side in px (default 384)")
    demo.set_defaults(handler=cmd_demo)

    quality = commands.add_parser("quality", help="quality benchmark at matched cost on the toy model "
                                                  "(runs benchmarks/quality.py of a source checkout)")
    quality.add_argument("--out", default="docs", help="folder for quality.md, quality.json (default docs)")
    quality.add_argument("--prompts", default="32", help="captions (default 32)")
    quality.add_argument("--seeds", default="2", help="seeds per caption (default 2)")
    quality.add_argument("--guidance", help="classifier-free guidance scale (default: ralu.toy.DEFAULT_GUIDANCE)")
    quality.add_argument("--model", help="a saved toy model folder (default: the shipped one)")
    quality.set_defaults(handler=cmd_quality)

    bench = commands.add_parser("bench", help="run a benchmark of a source checkout: --speed, --quality, "
                                              "--regions, --caching or --positions, then the benchmark's own options")
    which = bench.add_mutually_exclusive_group(required=True)
    for flag, script, text in (
            ("speed", "speed", "RALU vs baseline wall time, FLOPs ratio, efficiency, overheads (benchmarks/speed.py)"),
            ("quality", "quality", "quality at matched cost on the toy model (benchmarks/quality.py)"),
            ("regions", "regions", "decode-free vs Canny region choice, IoU (benchmarks/regions.py)"),
            ("caching", "caching", "RALU x temporal caches on the toy model (benchmarks/caching.py)"),
            ("positions", "sd3_positions", "SD3 table-position conventions on the SD3-architecture toy "
                                           "(benchmarks/sd3_positions.py)")):
        which.add_argument(f"--{flag}", dest="which", action="store_const", const=script, help=text)
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark, e.g. --size 1024")
    bench.set_defaults(handler=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ralu`` command; returns the exit code (2 for invalid input)."""
    parser = build_parser()
    try:
        # `ralu bench --speed --size 1024 ...` hands the options after the choice to the benchmark
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "bench":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "bench":
            args.rest = list(extra) + list(args.rest)
    except SystemExit as stop:  # argparse has printed its usage error (or --help)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return args.handler(args)
    except (UsageError, ValueError) as error:
        print(f"ralu {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a model folder or hub id that cannot be read, an unwritable output
        print(f"ralu {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
