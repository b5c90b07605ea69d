"""Image quality of RALU against every same-cost alternative, on the shipped toy model.

``ralu bench quality --out docs`` runs the evaluation harness (``ralu.eval``) on the toy model:
the same held-out captions and seeds for every method, scored with metrics that do not favour one
method by construction, and writes ``quality.md``, ``quality.json``, ``quality_vs_speedup.png`` and
``quality_examples.png`` to ``--out``. The images go to ``--work`` (default: a folder under the
system's temporary directory), which makes a rerun resume.

Methods, at three costs (the FLOPs of flux-dev-4x, flux-dev-5x and flux-dev-7x on this model,
about 4x, 5x and 7x fewer than 50 steps), each matched on the cost model:
- the RALU preset; ``steps:N``, the stock schedule cut to the same FLOPs (Euler); ``unipc:N``,
  diffusers' UniPC (order 2, flow sigmas) with as many steps;
- ``hires:N1:E1:N3``: half resolution to the preset's first stage end, then everything upsampled and
  renoised onto the flow path (stage shifts and Z from NT-DM), then N3 full-resolution steps (the
  two-stage family of Bottleneck Sampling, made exact); ``naive:N1:E1:N3``: the same
  without renoising. Both start from RALU's stage-1 noise; ``mrflow:N1:S:1``: MrFlow's recipe, a whole
  half-resolution image, upsampled, fresh noise to σ = S and one full-resolution step;
- RALU with TeaCache at one operating point, the planner's picks for 3x-8x, and single-field variants
  of the presets: the paper's stage-1 noise (``noise_downsample=nearest``), edge scores from the latent
  (``region_source=latent``) and a second-order solver inside each stage (``solver=dpmpp2m``, ``ab2``,
  ``unipc``); others with ``--variants``.

Metrics (docs/quality.md explains them): prompt read-back by the data generator (all, colour, shape,
relation); FID, KID, precision and recall in the feature space of a CNN trained on the shapes data
(``ralu.demo.judge``), against the rendered ground truth of the same captions and against the
50-step baseline; blockiness at the 4 and 8 px token grids and fringe (mixed-colour edge pixels);
and, as secondary columns of closeness to the same-seed 50-step image, PSNR and SSIM.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from ralu import RALUConfig
from ralu.eval import generate, methods, prompts, score
from ralu.eval.report import markdown as report_markdown
from ralu.eval.report import plot
from ralu.eval.runners import ToyRunner

PRESETS = ("flux-dev-4x", "flux-dev-5x", "flux-dev-7x")
PLANNED = (3.0, 4.0, 5.0, 6.0, 8.0)
BASELINE = "baseline:50"
METRICS = ("toy_readback", "toy_edges", "toy_fid", "psnr", "ssim")
MRFLOW_SIGMA = 0.4  # where MrFlow's one full-resolution step starts: the better of 0.2 and 0.4 on KID (docs/mrflow.md)
DEFAULT_VARIANTS = ("noise_downsample=nearest", "region_source=latent", "solver=dpmpp2m", "solver=ab2",
                    "solver=unipc")


def _steps_for(runner: ToyRunner, flops: float) -> int:
    """Full-resolution stock steps with the closest FLOPs."""
    per_step = runner.baseline_flops(1)
    return max(1, round(flops / per_step))


def _two_stage_for(runner: ToyRunner, preset: RALUConfig, flops: float) -> tuple[int, float, int]:
    """(N1, E1, N3): the preset's first stage, then the full-resolution steps closest to its FLOPs."""
    spec = runner.spec
    full = spec.image_tokens(*runner.size)
    low = runner.branches * preset.steps[0] * spec.call_flops(full // 4)
    per_full = runner.branches * spec.call_flops(full)
    return preset.steps[0], preset.ends[0], max(1, round((flops - low) / per_full))


def _refine_for(runner: ToyRunner, flops: float, full_steps: int = 1) -> int:
    """N1 of MrFlow's recipe: the half-resolution steps that, with ``full_steps`` at full resolution, come
    closest to ``flops``."""
    spec = runner.spec
    full = spec.image_tokens(*runner.size)
    per_low, per_full = (runner.branches * spec.call_flops(n) for n in (full // 4, full))
    return max(1, round((flops - full_steps * per_full) / per_low))


def method_list(runner: ToyRunner, variants=DEFAULT_VARIANTS, quick: bool = False):
    """The methods, their plot series, the paired comparisons and the cost level of each."""
    specs, series, pairs, level = [BASELINE], {BASELINE: "baseline 50"}, [], {BASELINE: "baseline"}
    for name in PRESETS:
        preset = RALUConfig.preset(name, **(dict(steps=(1, 1, 2)) if quick else {}))
        flops = runner.spec.cost(preset.resolve(3.0), *runner.size, runner.branches) - runner.spec.decode(*runner.size)
        n = _steps_for(runner, flops)
        n1, e1, n3 = _two_stage_for(runner, preset, flops)
        preset_spec = name if not quick else f"ralu:{','.join(map(str, preset.steps))}:{preset.ends[0]},{preset.ends[1]}:{preset.up_ratio}"
        group = [(preset_spec, "RALU presets"), (f"steps:{n}", "step cut (Euler)"), (f"unipc:{n}", "step cut (UniPC)"),
                 (f"hires:{n1}:{e1}:{n3}", "hires-fix (renoised)"), (f"naive:{n1}:{e1}:{n3}", "naive upsampling"),
                 (f"mrflow:{_refine_for(runner, flops)}:{MRFLOW_SIGMA:g}:1", "MrFlow (refine)")]
        for spec, label in group:
            if spec not in specs:
                specs.append(spec)
                series[spec] = label
                level[spec] = name
        pairs += [(preset_spec, other) for other, _ in group[1:]]
        for variant in variants if not quick else ():
            spec = f"{name}@{variant}"
            specs.append(spec)
            series[spec] = f"RALU @{variant}"
            level[spec] = name
            pairs.append((spec, name))
            if variant.startswith("solver="):  # a candidate default: against the same-cost step cuts too
                pairs += [(spec, f"steps:{n}"), (spec, f"unipc:{n}")]
    if not quick:
        spec = "flux-dev-4x+teacache=0.3"
        specs.append(spec)
        series[spec] = "RALU + TeaCache"
        level[spec] = "flux-dev-4x"
        pairs.append((spec, "flux-dev-4x"))
        for target in PLANNED:
            spec = f"plan:{target:g}"
            specs.append(spec)
            series[spec] = "RALU planner"
            level[spec] = "planner"
    return methods.parse_all(specs), series, pairs, level


def run(out: Path | None, work: Path, prompt_count: int = 256, seeds: int = 1, guidance: float | None = None,
        model_folder: Path | None = None, variants=DEFAULT_VARIANTS, quick: bool = False, threads: int = 2,
        batch_size: int = 32, bfloat16: bool | None = None, command: str | None = None) -> dict:
    import torch

    from ralu.demo import model as toy

    torch.set_num_threads(threads)
    bfloat16 = toy.bf16_is_fast() if bfloat16 is None else bfloat16
    runner = ToyRunner(toy.load_toy(model_folder), guidance, bfloat16=bfloat16)
    method_objects, series, pairs, level = method_list(runner, variants, quick)
    prompt_list = prompts.toy_prompts(prompt_count)
    seed_list = list(range(seeds))
    generate.run(runner, method_objects, prompt_list, seed_list, work, batch_size=batch_size)
    summary = score.score(work, METRICS, reference=BASELINE, pairs=pairs)
    record = dict(command=command or "ralu bench quality " + " ".join(sys.argv[1:]), prompts=prompt_count, seeds=seeds,
                  bfloat16=bfloat16,
                  images_per_method=prompt_count * seeds, guidance=runner.guidance, threads=threads,
                  torch=torch.__version__, machine=platform.machine(), series=series, levels=level,
                  summary=summary)
    if out is not None:
        write(out, work, record, method_objects)
    return record


def write(out: Path, work: Path, record: dict, method_objects) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = record["summary"]
    (out / "quality.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    keys = ["toy_readback.all", "set:toy_fid/fid/vs_truth", "toy_edges.block8", "toy_readback.relation"]
    plot(summary, out / "quality_vs_speedup.png", keys, groups=record["series"],
         title=f"toy model, {record['images_per_method']} images per method: quality against FLOPs speedup "
               "(±2 SE)")
    _examples(work, out / "quality_examples.png", [m.spec for m in method_objects], summary)
    text = report_markdown(summary, "Results")
    header = ("<!-- generated by `ralu bench quality --out docs`; edit src/ralu/bench/quality.py, not this file -->\n"
              "# RALU against every same-cost alternative (toy shapes model)\n\n"
              + __doc__.split("\n\n", 1)[1].replace("``", "`") + "\n" + _toy_facts() +
              f"\nCommand: `{record['command']}`; {record['images_per_method']} images per method ({record['prompts']} "
              f"held-out captions x {record['seeds']} seeds), 64 px, guidance {record['guidance']:g}, "
              f"{'bfloat16 autocast' if record.get('bfloat16') else 'float32'}, torch "
              f"{record['torch']}.\n\n![quality vs speedup](quality_vs_speedup.png)\n\n"
              "![examples](quality_examples.png)\n\n")
    (out / "quality.md").write_text(header + text.split("\n", 1)[1])


def _toy_facts() -> str:
    """The model and judge being used, from their shipped records."""
    from ralu.demo.judge import JUDGE_DIR
    from ralu.demo.model import DATA_DIR

    lines = ["## The model and its judge", ""]
    training = json.loads((DATA_DIR / "training.json").read_text())
    params = training.get("parameters", {})
    lines.append(f"- Model: `ralu/data/toy`, a {params.get('transformer', 0) / 1e6:.1f} M-parameter "
                 "FluxTransformer2DModel on a Haar pixel latent (64 px, 256 tokens), trained from scratch on the "
                 f"shapes data: `{training.get('command')}` ({training.get('wall_seconds', 0) / 3600:.1f} h; "
                 "earlier phases under `previous` in its training.json).")
    judge = JUDGE_DIR / "judge.json"
    if judge.is_file():
        record = json.loads(judge.read_text())
        accuracy = record["held_out_accuracy"]
        lines.append(f"- Judge features: `ralu/data/toy_judge`, a {record['parameters'] / 1e6:.2f} M-parameter CNN trained "
                     f"to read each object's colour, kind, size and position and the relation's axis from rendered "
                     f"pictures (`{record['command']}`); held-out accuracy {min(accuracy.values()):.1%}-"
                     f"{max(accuracy.values()):.1%} per head.")
    lines.append("- Read-back (`ralu.demo.shapes.check_prompt`): the data generator's own palette and shape templates "
                 "read each picture against its caption; on the rendered ground truth it passes every check.")
    return "\n".join(lines) + "\n"


def _examples(work: Path, path: Path, specs, summary, count: int = 6) -> None:
    from PIL import Image

    from ralu.demo.images import comparison_grid

    rows_by = {}
    for line in (work / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["seed"] == 0 and row["prompt_index"] < count:
            rows_by.setdefault(row["method"], []).append(row)
    grid_rows, captions = [], None
    for spec in specs:
        rows = sorted(rows_by.get(spec, []), key=lambda r: r["prompt_index"])
        if not rows:
            continue
        captions = [r["prompt"] for r in rows]
        images = np.stack([np.asarray(Image.open(work / r["path"]).convert("RGB")) for r in rows])
        m = summary["methods"][spec]
        grid_rows.append((f"{spec}\n{m['speedup']:.2f}x FLOPs", images, None))
    comparison_grid(grid_rows, captions, scale=2, label_width=170).save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ralu bench quality", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="folder for quality.md/.json/.png (default: print only)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ralu-quality",
                        help="folder for the images and manifest (resumable)")
    parser.add_argument("--prompts", type=int, default=256, help="held-out captions (default 256)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per caption (default 1)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance (default: the toy's 3)")
    parser.add_argument("--model", type=Path, help="a saved toy model folder (default: the shipped one)")
    parser.add_argument("--variants", nargs="*", default=list(DEFAULT_VARIANTS),
                        help="RALUConfig FIELD=VALUE variants of each preset to compare")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="one-step stages, no variants or planner: a smoke test")
    from ralu.demo.model import AUTOCAST_CHOICES

    parser.add_argument("--dtype", choices=tuple(AUTOCAST_CHOICES), default="auto",
                        help="bf16: bfloat16 autocast for the transformer; auto (default): bf16 where the CPU has "
                             "bf16 instructions, else fp32")
    args = parser.parse_args(argv)
    for name, value in (("prompts", args.prompts), ("seeds", args.seeds), ("batch-size", args.batch_size)):
        if value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.prompts * args.seeds < score.SET_MINIMUM:
        parser.error(f"--prompts x --seeds must be >= {score.SET_MINIMUM} (FID and precision/recall need that many "
                     f"images per method), got {args.prompts * args.seeds}")
    record = run(args.out, args.work, args.prompts, args.seeds, args.guidance, args.model, tuple(args.variants),
                 args.quick, args.threads, args.batch_size,
                 AUTOCAST_CHOICES[args.dtype],
                 "ralu bench quality " + " ".join(sys.argv[1:] if argv is None else argv))
    print(report_markdown(record["summary"], "RALU against every same-cost alternative (toy shapes model)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
