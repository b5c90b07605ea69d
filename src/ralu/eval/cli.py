"""``ralu eval generate | score | report | speed | export``: argument parsing; the work is in ralu.eval."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ..cli import UsageError, _check_output, _resolve_device  # noqa: F401  (shared checks)

DEFAULT_METHODS = ("baseline:50", "steps:10", "steps:7", "flux-dev-4x", "flux-dev-5x", "flux-dev-7x")


def parse_seeds(text: str) -> list[int]:
    """``0-3`` → [0, 1, 2, 3]; ``0,5,9`` → [0, 5, 9]; a number N alone → [0 .. N-1]."""
    try:
        if "-" in text:
            low, high = (int(t) for t in text.split("-", 1))
            seeds = list(range(low, high + 1))
        elif "," in text:
            seeds = [int(t) for t in text.split(",")]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise UsageError(f"--seeds must be N (seeds 0..N-1), A-B or a comma list, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds must name distinct seeds >= 0, got {text!r}")
    return seeds


def _size(text: str | None, default: tuple[int, int]) -> tuple[int, int]:
    if text is None:
        return default
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) <= 0 or int(h) <= 0:
        raise UsageError(f"--size must be WIDTHxHEIGHT in px, got {text!r}")
    return int(h), int(w)


def _runner(args, methods, size):
    """The runner for MODEL: the toy, or a RALU pipeline loaded from a folder or hub id (after every check)."""
    from .runners import PipelineRunner, ToyRunner

    if args.model == "toy":
        if size[0] != size[1] or size[0] % 8:
            raise UsageError(f"--size for the toy model must be square and a multiple of 8 px, got {size[1]}x{size[0]}")
        return ToyRunner(guidance=args.guidance, size=size[0])
    toy_only = [m.spec for m in methods if m.toy_only]
    if toy_only:
        raise UsageError(f"methods {toy_only} run on the toy model only")
    for name, value in zip(("height", "width"), size):
        if value % 32:
            raise UsageError(f"--size: {name} must be a multiple of 32 px for RALU, got {value}")
    import torch

    from .. import models
    from ..generate import dtype_argument, model_index, pipeline_class

    index = model_index(args.model)
    cls = pipeline_class(index)
    spec = None
    if args.spec:
        spec = models.get(args.spec)
    else:
        known = [n for n in models.names() if models.get(n).hub == args.model]
        spec = models.get(known[0]) if known else None
    from .generate import _state

    state = _state()
    device = (str(state.device) if state is not None else "cpu") if args.device == "auto" else _resolve_device(args.device)
    dtype = getattr(torch, "float32" if args.dtype == "auto" and device == "cpu" else
                    "bfloat16" if args.dtype == "auto" else args.dtype)
    pipe = cls.from_pretrained(args.model, **dtype_argument(dtype)).to(device)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {}
    if args.guidance is not None:
        kwargs["guidance_scale"] = args.guidance
    if args.true_cfg_scale is not None:
        kwargs["true_cfg_scale"] = args.true_cfg_scale
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
    branches = None
    if spec is not None and args.true_cfg_scale is not None:
        branches = 2 if args.true_cfg_scale > 1 and args.negative_prompt is not None else 1
    return PipelineRunner(pipe, spec, size, kwargs, name=args.model, branches=branches)


def cmd_generate(args) -> int:
    from . import generate, methods, prompts

    method_list = methods.parse_all(args.methods)
    prompt_list = prompts.load(args.prompts)
    seeds = parse_seeds(args.seeds)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    size = _size(args.size, (64, 64) if args.model == "toy" else (1024, 1024))
    runner = _runner(args, method_list, size)
    path = generate.run(runner, method_list, prompt_list, seeds, args.out, batch_size=args.batch_size)
    print(f"manifest: {path}")
    return 0


def split_pair(item: str) -> tuple[str, str]:
    """FIRST=SECOND at the one '=' that leaves two valid method specs (a spec may hold '=' itself:
    ``flux-dev-4x@solver=ab2=steps:11``)."""
    from . import methods

    splits = []
    for i, char in enumerate(item):
        if char == "=":
            try:
                methods.parse(item[:i]), methods.parse(item[i + 1:])
            except ValueError:
                continue
            splits.append((item[:i], item[i + 1:]))
    if len(splits) != 1:
        raise UsageError(f"--pair must be FIRST=SECOND with two method specs, got {item!r}"
                         + (" (ambiguous: more than one '=' splits it into two specs)" if splits else ""))
    return splits[0]


def cmd_score(args) -> int:
    from .score import score

    pairs = [split_pair(item) for item in args.pair]
    summary = score(args.folder, args.metrics, reference=args.reference, pairs=pairs)
    print(f"scored {sum(m['images'] for m in summary['methods'].values())} images of {len(summary['methods'])} "
          f"methods: {args.folder / 'summary.json'}")
    return 0


def cmd_report(args) -> int:
    from .report import report

    path = report(args.folder, title=args.title, keys=args.plot)
    print(path.read_text())
    print(f"wrote {path} and {path.parent / 'quality_vs_speedup.png'}")
    return 0


def cmd_speed(args) -> int:
    from . import methods
    from .speed import measure, table

    method_list = methods.parse_all(args.methods)
    size = _size(args.size, (64, 64) if args.model == "toy" else (1024, 1024))
    runner = _runner(args, method_list, size)
    if args.compile:
        import torch

        transformer = runner.model.transformer if args.model == "toy" else runner.pipe.transformer
        compiled = torch.compile(transformer, dynamic=True)
        if args.model == "toy":
            runner.model.transformer = compiled
        else:
            runner.pipe.transformer = compiled
    rows = measure(runner, method_list, args.prompt, repeats=args.repeats, warmup=args.warmup,
                   device=getattr(getattr(runner, "pipe", None), "device", "cpu"))
    print(table(rows))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "speed.json").write_text(json.dumps(rows, indent=1) + "\n")
        (args.out / "speed.md").write_text(table(rows) + "\n")
    return 0


def cmd_export(args) -> int:
    from .export import export

    target = export(args.folder, args.to, args.layout, args.method or None)
    print(f"exported to {target} ({args.layout} layout)")
    return 0


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="hub id or local folder of a diffusers pipeline, or 'toy'")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="method specs (ralu.eval.methods): baseline:50 steps:10 flux-dev-4x ralu:5,6,7:0.3,0.45:0.3 "
                             "plan:5 flux-dev-4x+teacache ... (default: the paper's Table 1 for FLUX.1-dev)")
    parser.add_argument("--size", help="WIDTHxHEIGHT px (default 1024x1024; 64x64 for the toy)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the pipeline's)")
    parser.add_argument("--true-cfg-scale", type=float, help="true CFG scale (FLUX, Qwen-Image)")
    parser.add_argument("--negative-prompt")
    parser.add_argument("--spec", help="the shipped model file for FLOPs (default: found by hub id)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                        help="default: accelerate's device for this process")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ralu eval", description="Generate every method on the same prompts and "
                                     "seeds (under accelerate launch: over many processes), score, report.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="generate images and a JSONL manifest (resumable)")
    _model_options(generate)
    generate.add_argument("--prompts", default="geneval", help="geneval[:N], quick[:N], toy[:N] or a .txt/.json/.jsonl "
                                                               "file (default geneval: 500 prompts)")
    generate.add_argument("--seeds", default="1", help="N (seeds 0..N-1), A-B or a comma list (default 1)")
    generate.add_argument("--batch-size", type=int, default=4)
    generate.add_argument("--out", type=Path, required=True)
    generate.set_defaults(handler=cmd_generate)

    score = commands.add_parser("score", help="score a generation folder")
    score.add_argument("folder", type=Path)
    score.add_argument("--metrics", nargs="+", required=True,
                       help="clip imagereward clipiqa niqe psnr ssim lpips fid (real models); toy_readback toy_edges "
                            "toy_fid (the toy model)")
    score.add_argument("--reference", help="the method paired and set metrics compare against (default: the "
                                           "baseline:N with the most steps)")
    score.add_argument("--pair", action="append", default=[], metavar="FIRST=SECOND",
                       help="also report paired differences FIRST − SECOND, repeatable")
    score.set_defaults(handler=cmd_score)

    report = commands.add_parser("report", help="markdown table in the paper's layout and quality-vs-speedup plots")
    report.add_argument("folder", type=Path)
    report.add_argument("--title", default="Evaluation")
    report.add_argument("--plot", nargs="+", help="metrics to plot (default: the first four)")
    report.set_defaults(handler=cmd_report)

    speed = commands.add_parser("speed", help="latency: warm-up excluded, synchronised, median of N, peak memory")
    _model_options(speed)
    speed.add_argument("--prompt", default="a photo of a red fox sitting in fresh snow")
    speed.add_argument("--repeats", type=int, default=5)
    speed.add_argument("--warmup", type=int, default=1)
    speed.add_argument("--compile", action="store_true", help="torch.compile the transformer (dynamic shapes)")
    speed.add_argument("--out", type=Path)
    speed.set_defaults(handler=cmd_speed)

    export = commands.add_parser("export", help="images and metadata in GenEval's or T2I-CompBench's layout")
    export.add_argument("folder", type=Path)
    export.add_argument("--to", type=Path, required=True)
    export.add_argument("--layout", choices=("geneval", "t2i-compbench"), default="geneval")
    export.add_argument("--method", action="append", default=[])
    export.set_defaults(handler=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return args.handler(args)
    except (UsageError, ValueError, TypeError) as error:
        import os

        if os.environ.get("RALU_DEBUG"):
            raise
        print(f"ralu eval {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ralu eval {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
