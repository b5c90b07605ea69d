"""The ``ralu`` command: argument parsing and printing; the work lives in the library.

Heavy imports (torch, diffusers) happen inside the subcommands that need them, so ``ralu --help``,
``ralu schedule`` and ``ralu plan`` answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")
BENCHMARKS = ("speed", "calibrate", "quality", "regions", "caching", "positions", "planner", "presets", "sizes")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SCHEDULE_FLAGS = ("preset", "steps", "ends", "up_ratio", "shifts", "noise_ratio", "base_shift", "baseline")


class UsageError(Exception):
    """Invalid command-line input: reported on one line, exit code 2."""


# --- schedule options ---------------------------------------------------------------------------------

def _variant_options() -> dict:
    from .config import VARIANT_OPTIONS

    return VARIANT_OPTIONS


def _add_schedule_options(parser: argparse.ArgumentParser, baseline: bool) -> None:
    from .config import RALUConfig

    default = "the pipeline's: flux-dev-4x for FLUX.1-dev, sd3-2x for SD3, ..." if baseline else "flux-dev-4x"
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
                       help="stock shift NT-DM matches (default: auto, the model's scheduler shift at the size)")
    group.add_argument("--option", action="append", default=[], metavar="FIELD=VALUE",
                       help="set a RALUConfig variant field, repeatable: "
                            + "; ".join(f"{name} ({'|'.join(str(v).lower() for v in values)})"
                                        for name, values in _variant_options().items()))
    if baseline:
        group.add_argument("--baseline", type=int, metavar="STEPS",
                           help="run the stock single-resolution schedule with STEPS calls instead of RALU")


def _config_from_args(args: argparse.Namespace, default: str = "flux-dev-4x"):
    """The schedule the options describe (``default``: the preset when none is chosen)."""
    from .config import Baseline, RALUConfig

    custom = [f"--{name.replace('_', '-')}" for name in ("steps", "ends", "up_ratio") if getattr(args, name) is not None]
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
        if baseline < 1:
            raise UsageError(f"--baseline must be a number of steps >= 1, got {baseline}")
        return Baseline(baseline)
    overrides = dict(options)
    if args.shifts is not None:
        overrides["shifts"] = tuple(args.shifts)
    if args.noise_ratio is not None:
        overrides["noise_ratio"] = args.noise_ratio
    if args.base_shift is not None:
        overrides["base_shift"] = args.base_shift
    if custom:
        if len(custom) < 3:
            raise UsageError("--steps, --ends and --up-ratio go together; missing "
                             + ", ".join(sorted({"--steps", "--ends", "--up-ratio"} - set(custom))))
        return RALUConfig(steps=tuple(args.steps), ends=tuple(args.ends), up_ratio=args.up_ratio, **overrides)
    if args.base_shift is not None and args.shifts is None and args.noise_ratio is None:
        overrides.update(shifts=None, noise_ratio=None, solved_shift=None)  # solve again for the given base shift
    return RALUConfig.preset(args.preset or default, **overrides)


def _parse_options(items: Sequence[str]) -> dict:
    """``["table_positions=low_grid", "canny_clip_unit=true"]`` → RALUConfig field values (checked by RALUConfig)."""
    variants = _variant_options()
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in variants:
            raise UsageError(f"--option must be FIELD=VALUE with FIELD one of {', '.join(variants)}, got {item!r}")
        if variants[name] == (False, True):
            if value.lower() not in ("true", "false"):
                raise UsageError(f"--option {name} must be true or false, got {value!r}")
            options[name] = value.lower() == "true"
        else:
            options[name] = value
    return options


def _size(args: argparse.Namespace, default: tuple[int, int] | None = (1024, 1024)) -> tuple | None:
    """(height, width) from ``--size WxH`` or ``--height``/``--width``, checked positive. Without a
    default, a side not given stays None (the pipeline's own default), and nothing given gives None."""
    height, width = getattr(args, "height", None), getattr(args, "width", None)
    if getattr(args, "size", None):
        if height is not None or width is not None:
            raise UsageError("give either --size WxH or --height/--width, not both")
        text = args.size.lower()
        w, sep, h = text.partition("x")
        if not sep or not w.isdigit() or not h.isdigit():
            raise UsageError(f"--size must be WIDTHxHEIGHT in px, e.g. 1024x768, got {args.size!r}")
        width, height = int(w), int(h)
    if height is None and width is None and default is None:
        return None
    if default is not None:
        height = default[0] if height is None else height
        width = default[1] if width is None else width
    for name, value in (("height", height), ("width", width)):
        if value is not None and value <= 0:
            raise UsageError(f"--{name} must be a positive number of px, got {value}")
    return height, width


def _check_cost_size(height: int, width: int, multiple: int = 32, largest: int = 16384) -> None:
    for name, value in (("height", height), ("width", width)):
        if value % multiple:
            raise UsageError(f"--{name} must be a multiple of {multiple} px for RALU (whole tokens at half "
                             f"resolution), got {value}")
        if value > largest:
            raise UsageError(f"--{name} must be at most {largest} px, got {value}")


def _model_spec(name: str | None, config):
    """A shipped model by name, or one built around a transformer config.json (FLUX.1-dev's scheduler)."""
    import json
    from dataclasses import replace
    from types import MappingProxyType

    from . import models

    if name is None:
        return models.for_preset(getattr(config, "name", None) or "flux-dev-4x")
    if name in models.names():
        return models.get(name)
    if name == "toy":
        from .demo.model import model_spec

        return model_spec()
    path = Path(name)
    if not path.is_file():
        raise UsageError(f"--model must be one of {list(models.names())}, toy or a transformer config.json, "
                         f"got {name!r}")
    transformer = json.loads(path.read_text())
    family = "sd3" if transformer.get("_class_name") == "SD3Transformer2DModel" else "flux"
    base = models.get("sd3-medium" if family == "sd3" else "flux-dev")
    return replace(base, name=path.name, transformer=MappingProxyType(transformer))


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"--{name} must be >= 1, got {value}")


def _latency_model(path: Path | None, model: str | None = None):
    """The calibration at ``path``; without one, the saved calibration of ``model`` on this machine, if any."""
    from .calibrate import LatencyModel, default_path

    if path is None:
        if model is None or not default_path(model).is_file():
            return None
        path = default_path(model)
    return LatencyModel.load(path)


# --- commands ------------------------------------------------------------------------------------------

def cmd_schedule(args: argparse.Namespace) -> int:
    from .reports import schedule_report

    default = "flux-dev-4x"
    if args.model is not None and args.preset is None and args.steps is None:
        from . import models

        if args.model in models.names():
            default = models.get(args.model).preset  # the model's own default preset
    config = _config_from_args(args, default)
    spec = _model_spec(args.model, config)
    height, width = _size(args)
    _check_cost_size(height, width)
    _positive("baseline-steps", args.baseline_steps)
    _positive("text-tokens", args.text_tokens)
    branches = None if args.cfg is None else (2 if args.cfg else 1)
    print(schedule_report(config, spec, height, width, baseline_steps=args.baseline_steps, branches=branches,
                          skipped=args.skipped, text_tokens=args.text_tokens,
                          latency=None if args.no_calibration else _latency_model(args.calibration, spec.name)))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .planner import plan, plan_report

    spec = _model_spec(args.model, None)
    height, width = _size(args)
    _check_cost_size(height, width)
    _positive("baseline-steps", args.baseline_steps)
    _positive("top", args.top)
    latency = None if args.no_calibration else _latency_model(args.calibration, spec.name)
    objective = args.objective or ("time" if latency is not None else "flops")
    result = plan(args.speedup, model=spec, height=height, width=width, baseline_steps=args.baseline_steps,
                  objective=objective, latency=latency, tolerance=args.tolerance)
    print(plan_report(result, top=args.top))
    return 0


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available in this torch build or on this machine "
                         f"(torch {torch.__version__}); use --device cpu, or install a CUDA build of torch")
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Apple MPS is not available here; use --device cpu")
    return name


def _check_output(output: Path, count: int) -> list[Path]:
    """The image paths (out.png, out_1.png, ...), checked writable without creating anything."""
    if output.suffix.lower() not in IMAGE_SUFFIXES:
        raise UsageError(f"--output must end in {', '.join(IMAGE_SUFFIXES)}, got {str(output)!r}")
    existing = output.parent.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UsageError(f"--output: cannot write into {existing}")
    return [output if i == 0 else output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(count)]


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import GenerateRequest, run_generate

    _positive("num-images", args.num_images)
    config = _config_from_args(args) if any(getattr(args, n) is not None for n in SCHEDULE_FLAGS) or args.option else None
    size = _size(args, default=None)
    paths = _check_output(args.output, args.num_images)
    if args.negative_prompt is not None and args.true_cfg_scale is None and args.model != "toy":
        # FLUX uses a negative prompt only with true CFG; the other families with their guidance
        from .generate import family_of

        if family_of(args.model) in ("flux", "flux2"):
            raise UsageError("--negative-prompt needs --true-cfg-scale > 1 with FLUX models (true classifier-free "
                             "guidance); without it the negative prompt would be ignored")
    device = _resolve_device(args.device)
    request = GenerateRequest(model=args.model, prompt=args.prompt, config=config, size=size, seed=args.seed,
                              guidance=args.guidance, true_cfg_scale=args.true_cfg_scale,
                              negative_prompt=args.negative_prompt, num_images=args.num_images, dtype=args.dtype,
                              device=device, paths=paths)
    run_generate(request, say=print)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo, save_samples

    _positive("steps", args.steps)
    if args.samples is not None:
        save_samples(args.samples, steps=args.steps or 50)
        print(f"saved {args.samples}")
        return 0
    run_demo(args.output, steps=args.steps or 50, guidance=args.guidance, quick=args.quick)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    rest = list(args.rest)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    module = importlib.import_module(f"ralu.bench.{args.which}")
    try:
        return module.main(rest)
    except SystemExit as stop:  # the benchmark's own argparse: --help, or a usage error it printed
        return stop.code if isinstance(stop.code, int) else 2


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval import cli as eval_cli

    return eval_cli.main(list(args.rest))


# --- the parser -------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ralu", description="Region-Adaptive Latent Upsampling for diffusion "
                                     "transformers: FLUX.1, FLUX.2, SD3/3.5, Qwen-Image, Z-Image.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    schedule = commands.add_parser("schedule", help="show a schedule's stages and analytic cost for a model and size")
    _add_schedule_options(schedule, baseline=False)
    schedule.add_argument("--model", help="a shipped model (ralu.models.names()), toy (the shipped toy model) "
                                          "or a transformer config.json (default: the preset's model)")
    schedule.add_argument("--size", help="WIDTHxHEIGHT in px (default 1024x1024)")
    schedule.add_argument("--height", type=int)
    schedule.add_argument("--width", type=int)
    schedule.add_argument("--text-tokens", type=int, help="text tokens per call (default: the model's)")
    schedule.add_argument("--cfg", action=argparse.BooleanOptionalAction, default=None,
                          help="count two branches per step (classifier-free guidance); default: the model's")
    schedule.add_argument("--skipped", type=int, nargs=3, metavar=("S1", "S2", "S3"),
                          help="calls per stage a temporal cache skipped: report spatial x temporal speedups")
    schedule.add_argument("--baseline-steps", type=int, help="baseline model calls (default: the model's)")
    schedule.add_argument("--calibration", type=Path, help="a latency calibration (default: the model's saved by "
                                                           "ralu bench calibrate, if any): adds the predicted speedup")
    schedule.add_argument("--no-calibration", action="store_true", help="ignore a saved calibration")
    schedule.set_defaults(handler=cmd_schedule)

    plan = commands.add_parser("plan", help="find RALU schedules for a target speedup")
    plan.add_argument("--speedup", type=float, required=True, help="target speedup over the baseline, e.g. 5")
    plan.add_argument("--model", help="a shipped model (default flux-dev), toy (the shipped toy model) or a "
                                      "transformer config.json")
    plan.add_argument("--size", help="WIDTHxHEIGHT in px (default 1024x1024)")
    plan.add_argument("--height", type=int)
    plan.add_argument("--width", type=int)
    plan.add_argument("--baseline-steps", type=int, help="baseline model calls (default: the model's)")
    plan.add_argument("--objective", choices=("flops", "time"),
                      help="what the speedup counts (default: time with --calibration, else flops)")
    plan.add_argument("--calibration", type=Path, help="a latency calibration (default: the model's saved by "
                                                       "ralu bench calibrate, if any)")
    plan.add_argument("--no-calibration", action="store_true", help="ignore a saved calibration")
    plan.add_argument("--tolerance", type=float, default=0.03, help="relative band around the target (default 0.03)")
    plan.add_argument("--top", type=int, default=5, help="candidates to print (default 5)")
    plan.set_defaults(handler=cmd_plan)

    generate = commands.add_parser("generate", help="generate images with a FLUX, SD3, Qwen-Image or Z-Image "
                                                    "pipeline, or the shipped toy model ('toy')")
    generate.add_argument("model", help="hub id or local folder of a diffusers pipeline, or 'toy' (offline)")
    generate.add_argument("--prompt", required=True)
    _add_schedule_options(generate, baseline=True)
    generate.add_argument("--size", help="WIDTHxHEIGHT in px (default: the model's)")
    generate.add_argument("--height", type=int, help="px (default: the model's)")
    generate.add_argument("--width", type=int, help="px (default: the model's)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--guidance", type=float,
                          help="guidance scale (default: the pipeline's; embedded for FLUX, CFG for SD3)")
    generate.add_argument("--true-cfg-scale", type=float,
                          help="true classifier-free guidance scale for FLUX / Qwen-Image (needs --negative-prompt)")
    generate.add_argument("--negative-prompt", help="negative prompt (SD3, Z-Image guidance; FLUX with --true-cfg-scale)")
    generate.add_argument("--num-images", type=int, default=1)
    generate.add_argument("--dtype", choices=DTYPES, default="auto", help="default: float32 on cpu, bfloat16 elsewhere")
    generate.add_argument("--device", choices=DEVICES, default="auto", help="default: cuda, else mps, else cpu")
    generate.add_argument("--output", type=Path, required=True, help="image path; more images get _1, _2 ...")
    generate.set_defaults(handler=cmd_generate)

    demo = commands.add_parser("demo", help="offline demo: baseline, RALU and the same-cost step cut on the shipped "
                                            "toy model, one comparison PNG")
    demo.add_argument("--output", type=Path, default=Path("ralu_demo.png"), help="grid PNG (default ralu_demo.png)")
    demo.add_argument("--steps", type=int, help="baseline model calls (default 50)")
    demo.add_argument("--guidance", type=float, help="classifier-free guidance scale of the toy model (default 3)")
    demo.add_argument("--quick", action="store_true", help="few prompts and steps, for a smoke test")
    demo.add_argument("--samples", type=Path, metavar="PNG",
                      help="instead: held-out training pictures beside the baseline's samples of their captions")
    demo.set_defaults(handler=cmd_demo)

    bench = commands.add_parser("bench", help="run a benchmark: " + ", ".join(BENCHMARKS)
                                + " (its own options follow: ralu bench NAME -- --help)")
    bench.add_argument("which", choices=BENCHMARKS, metavar="NAME", help=" | ".join(BENCHMARKS))
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    bench.set_defaults(handler=cmd_bench)

    evaluate = commands.add_parser("eval", help="generate, score and report many images on real models "
                                                "(ralu eval -- --help)", add_help=False)
    evaluate.add_argument("rest", nargs=argparse.REMAINDER)
    evaluate.set_defaults(handler=cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ralu`` command; returns the exit code (2 for invalid input, 130 when interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse has printed its usage error (or --help)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return args.handler(args)
    except (UsageError, ValueError, TypeError) as error:
        if os.environ.get("RALU_DEBUG"):
            raise
        print(f"ralu {args.command}: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"ralu {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ralu {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ralu schedule | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
