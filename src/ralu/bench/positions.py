"""Where SD3's absolute position table should put low-res and mixed tokens (issue 3), measured on
the SD3-architecture toy model (``ralu.toy.SD3_DATA_DIR``).

SD3 adds a centre crop of a 2-D sin-cos table to its tokens. The stock model at half resolution
crops a *smaller* window of the same table (it was trained that way), so a low-res token does not
sit where its full-resolution children sit. ``RALUConfig.table_positions`` chooses:

- ``low_grid``: stages 1 and 2 in the stock half-resolution crop (children at half cells);
- ``full_grid``: stages 1 and 2 in the stock full-resolution crop (low-res token at twice its
  index, ``token_position`` corner or center; children on their stage-3 cells);
- ``stock_then_full``: stage 1 as ``low_grid``, stage 2 as ``full_grid``.

Stage 3 is the stock full-resolution crop for all. The toy twin keeps SD3's table proportions (24
cells for a 16-token side, as SD3's 96 for 64) and was trained like the shipped FLUX toy, on 64 px
and 32 px pictures with the stock centre crops, as SD3 was trained at several resolutions.

Two measurements:

1. **Velocity error** on held-out training-distribution data, no sampling involved. For each
   scene: the 32 px and 64 px pictures' latents, noised at σ with independent noise; the model's
   velocity against the true one (``ε − x0``), mean squared error per token, conditional (no
   guidance). *Stage 1*: the low-res latent alone at each convention's stage-1 positions.
   *Stage 2*: a mixed sequence, the low-res tokens of the scene with the ``up_ratio`` most-edged
   ones (Canny on the 32 px picture, as RALU selects) replaced by their four children from the
   64 px latent; errors split into the kept low-res tokens and the children. *Stock*: the same
   tokens evaluated inside the stock single-resolution forward (low-res alone at the half-res
   crop; full latent at the full crop), the floor a mixed sequence can approach.
2. **Images**: each SD3 preset with each convention, 28-step stock-schedule baseline as the
   reference (PSNR, SSIM, edge error against the baseline image of the same prompt and seed) and
   prompt faithfulness read back from each image (``ralu.shapes.check_prompt``); metrics as in
   ``ralu.bench.closeness``.

``ralu bench positions --out docs``
writes ``sd3_positions.md``, ``sd3_positions.json`` and ``sd3_positions_examples.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


from ralu.bench import closeness as quality  # noqa: E402
from ralu.cost import matched_steps  # noqa: E402
from ralu.demo import images as picture_tools  # noqa: E402
from ralu.demo import model as toy  # noqa: E402
from ralu.demo import shapes  # noqa: E402
from ralu.config import Baseline, RALUConfig  # noqa: E402
from ralu.cost import schedule_cost  # noqa: E402
from ralu.layout import MixedLayout, children_indices, grid_positions, low_positions  # noqa: E402
from ralu.regions import edge_scores, select_tokens  # noqa: E402

BASELINE_STEPS = 28  # SD3's stock schedule, the one the sd3 presets are solved against
PRESETS = ("sd3-2x", "sd3-3x")
# (label, table_positions, token_position)
CONVENTIONS = (("low_grid", "low_grid", "corner"), ("stock_then_full", "stock_then_full", "corner"),
               ("full_grid", "full_grid", "corner"), ("full_grid center", "full_grid", "center"))
SIGMAS = (0.35, 0.5, 0.65, 0.8, 0.9)  # velocity-error noise levels; stages 1-2 of the presets span σ ≈ 1 → 0.6
DATA_SEED = 77_000_000  # held-out scenes (training used shapes.scenes(seed·1_000_003 + step) for small steps)
PROMPT_SEED = 2026
COMMAND = "ralu bench positions --out docs"


def _step(sigma: float) -> float:
    return sigma


def _mse(v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over tokens and channels: (B,)."""
    return ((v - target) ** 2).mean(dim=(1, 2))


@torch.no_grad()
def velocity_errors(model: toy.ToyModel, count: int, up_ratio: float, batch: int = 32) -> dict:
    """Velocity MSE per σ, per stage, per convention (mean and standard error over ``count`` scenes)."""
    grid = toy.token_grid()
    low_grid = (grid[0] // 2, grid[1] // 2)
    config = RALUConfig.preset("sd3-2x", up_ratio=up_ratio)
    rows: dict[str, dict[float, list[float]]] = {}

    def add(key: str, sigma: float, values: torch.Tensor) -> None:
        rows.setdefault(key, {}).setdefault(sigma, []).extend(values.tolist())

    generator = torch.Generator().manual_seed(DATA_SEED)
    for start in range(0, count, batch):
        chunk = shapes.scenes(DATA_SEED + start, min(batch, count - start))
        captions = [s.caption for s in chunk]
        low_images = torch.from_numpy(shapes.render_batch(chunk, toy.RESOLUTION // 2))
        x0_low = toy.encode_images(low_images)
        x0_full = toy.encode_images(torch.from_numpy(shapes.render_batch(chunk, toy.RESOLUTION)))
        scores = edge_scores(low_images, low_grid)
        layout = MixedLayout.from_selection(select_tokens(scores, config.selected_tokens(scores.shape[1]), low_grid),
                                            low_grid)
        children = children_indices(layout.selected, low_grid)
        n = len(chunk)
        stock = model.adapter(captions, 1.0, grid)  # the stock single-resolution forwards
        adapters = {label: model.adapter(captions, 1.0, grid, table) for label, table, _ in CONVENTIONS}
        for sigma in SIGMAS:
            eps_low, eps_full = torch.randn(x0_low.shape, generator=generator), torch.randn(x0_full.shape,
                                                                                           generator=generator)
            x_low, x_full = (1 - sigma) * x0_low + sigma * eps_low, (1 - sigma) * x0_full + sigma * eps_full
            t_low, t_full = eps_low - x0_low, eps_full - x0_full
            kept_x, _ = layout.split_low(x_low)
            kept_t, _ = layout.split_low(t_low)
            gather = children[..., None].expand(-1, -1, x_full.shape[-1])
            mixed_x = torch.cat([kept_x, torch.gather(x_full, 1, gather)], dim=1)
            mixed_t = torch.cat([kept_t, torch.gather(t_full, 1, gather)], dim=1)
            k = layout.num_kept
            v = stock.velocity(x_low, stock.prepare_positions(grid_positions(low_grid)[None].expand(n, -1, -1),
                                                              low_grid, "low"), _step(sigma))
            add("stage 1 · stock", sigma, _mse(v, t_low))
            add("stage 2 kept · stock", sigma, _mse(layout.split_low(v)[0], kept_t))
            v = stock.velocity(x_full, stock.prepare_positions(grid_positions(grid)[None].expand(n, -1, -1), grid,
                                                               "full"), _step(sigma))
            add("stage 2 children · stock", sigma, _mse(torch.gather(v, 1, gather), mixed_t[:, k:]))
            for label, _, token_position in CONVENTIONS:
                adapter = adapters[label]
                if label != "stock_then_full":  # its stage 1 is low_grid's
                    positions = low_positions(low_grid, token_position)[None].expand(n, -1, -1)
                    v = adapter.velocity(x_low, adapter.prepare_positions(positions, low_grid, "low"), _step(sigma))
                    add(f"stage 1 · {label}", sigma, _mse(v, t_low))
                v = adapter.velocity(mixed_x, adapter.prepare_positions(layout.mixed_positions(token_position),
                                                                        low_grid, "mixed"), _step(sigma))
                add(f"stage 2 kept · {label}", sigma, _mse(v[:, :k], mixed_t[:, :k]))
                add(f"stage 2 children · {label}", sigma, _mse(v[:, k:], mixed_t[:, k:]))
    out = {}
    for key, per_sigma in rows.items():
        out[key] = {f"{s:g}": quality.summary(values) for s, values in per_sigma.items()}
        everything = np.mean([per_sigma[s] for s in SIGMAS], axis=0)  # per-scene mean over σ
        out[key]["mean"] = quality.summary(everything.tolist())
        out[key]["per_scene"] = everything.tolist()
    return out


def methods(model_config: dict, full_tokens: int, text_tokens: int) -> list[dict]:
    out = [dict(name=f"baseline {BASELINE_STEPS}", group="baseline", config=Baseline(BASELINE_STEPS, toy.BASE_SHIFT))]
    for preset_name in PRESETS:
        preset = RALUConfig.preset(preset_name).resolve(toy.BASE_SHIFT)
        matched = matched_steps(preset, BASELINE_STEPS, full_tokens, model_config, text_tokens)
        out.append(dict(name=f"steps {matched} ({preset_name})", group=preset_name,
                        config=Baseline(matched, toy.BASE_SHIFT)))
        for label, table, token_position in CONVENTIONS:
            out.append(dict(name=f"{label} ({preset_name})", group=preset_name,
                            config=preset.replace(table_positions=table, token_position=token_position)))
    return out


@torch.no_grad()
def images(model: toy.ToyModel, prompts: int, seeds: int, guidance: float) -> tuple[list[dict], dict]:
    """Generate with every method and score; returns the per-method records and the pictures."""
    captions = [scene.caption for scene in shapes.scenes(PROMPT_SEED, prompts)]
    batch_prompts = [c for c in captions for _ in range(seeds)]
    batch_seeds = [i * seeds + s for i in range(len(captions)) for s in range(seeds)]
    targets = [shapes.parse_caption(c) for c in batch_prompts]
    grid = toy.token_grid()
    model_config, full_tokens = dict(model.transformer.config), grid[0] * grid[1]
    results, pictures, reference, base_flops = [], {}, None, None
    for method in methods(model_config, full_tokens, toy.MAX_WORDS):
        start = time.perf_counter()
        pixels, result = toy.generate(model, batch_prompts, batch_seeds, method["config"], guidance)
        seconds = time.perf_counter() - start
        batch = picture_tools.to_uint8(pixels).astype(np.float32) / 255.0
        reference = batch if reference is None else reference
        cost = schedule_cost(method["config"], full_tokens, model_config, toy.MAX_WORDS)
        base_flops = base_flops or cost.total
        per_image = quality.score_images(batch, reference, targets)
        results.append(dict(name=method["name"], group=method["group"], calls=sum(cost.steps),
                            tokens=" / ".join(str(t) for t in cost.tokens), flops_speedup=base_flops / cost.total,
                            seconds=seconds, config=repr(method["config"]),
                            metrics={k: quality.summary(v) for k, v in per_image.items()}, per_image=per_image))
        pictures[method["name"]] = (batch, None if isinstance(method["config"], Baseline)
                                    else result.layout.mask().cpu().numpy())
        m = results[-1]["metrics"]
        print(f"{method['name']:<32} {base_flops / cost.total:5.2f}x {seconds:6.1f} s  "
              f"PSNR {m['psnr']['mean'] or float('inf'):6.2f}  SSIM {m['ssim']['mean']:.3f}  "
              f"edge {m['edge_error']['mean'] or 0:.3f}  prompt ok {m['prompt_all']['mean']:.2f}", flush=True)
    return results, dict(pictures=pictures, captions=batch_prompts, seeds=seeds)


# (challenger, control): every convention against the reference's low_grid, and the two that
# differ only in stage 1 against each other
PAIRS = (("stock_then_full", "low_grid"), ("full_grid", "low_grid"), ("full_grid center", "low_grid"),
         ("full_grid", "stock_then_full"))


def _error_key(part: str, label: str) -> str:
    """The velocity-error row of a stage part under a convention (stock_then_full's stage 1 is low_grid's)."""
    return f"{part} · {'low_grid' if (part, label) == ('stage 1', 'stock_then_full') else label}"


def comparisons(errors: dict, results: list[dict]) -> list[dict]:
    """Paired differences challenger − control (:data:`PAIRS`): velocity errors and image metrics."""
    out = []
    for label, control in PAIRS:
        for part in ("stage 1", "stage 2 kept", "stage 2 children"):
            first, second = errors[_error_key(part, label)], errors[_error_key(part, control)]
            if first["per_scene"] != second["per_scene"]:  # else the same positions by construction
                out.append(dict(label=f"{part} velocity MSE: {label} − {control}", control=control,
                                velocity=quality.paired_difference(first["per_scene"], second["per_scene"])))
        for preset_name in PRESETS:
            a = next(r for r in results if r["name"] == f"{label} ({preset_name})")
            b = next(r for r in results if r["name"] == f"{control} ({preset_name})")
            out.append(dict(label=f"images ({preset_name}): {label} − {control}", control=control,
                            **{k: quality.paired_difference(a["per_image"][k], b["per_image"][k])
                               for k in ("psnr", "ssim", "edge_error", "prompt_all")}))
    return out


def _pm(d: dict, digits: int) -> str:
    return "—" if d["mean"] is None else f"{d['mean']:+.{digits}f} ± {d['ci']:.{digits}f}"


def markdown(record: dict) -> str:
    errors = record["velocity_errors"]
    lines = ["<!-- generated by src/ralu/bench/positions.py; edit the script, not this file -->",
             "# SD3 position convention for low-res and mixed tokens (SD3-architecture toy)", "",
             __doc__.split("\n\n", 1)[1].strip().replace("``", "`"), "",
             f"Model: `{record['model']}`. torch {record['torch']}. Regenerate with `{record['command']}`.", "",
             f"## Velocity error ({record['scenes']} held-out scenes, up_ratio {record['up_ratio']:g}, "
             f"{record['selected']} of 64 low-res tokens upsampled)", "",
             "Mean squared velocity error per token (mean ± standard error over scenes); lower is better. "
             "`stock` rows are the single-resolution forwards.", "",
             "| tokens · positions | " + " | ".join(f"σ={s:g}" for s in SIGMAS) + " | mean over σ |",
             "| --- |" + " --- |" * (len(SIGMAS) + 1)]
    for key, per_sigma in errors.items():
        cells = [f"{per_sigma[f'{s:g}']['mean']:.4f}" for s in SIGMAS]
        mean = per_sigma["mean"]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {mean['mean']:.4f} ± {mean['se']:.4f} |")
    lines += ["", f"## Images ({record['images_per_method']} per method, guidance {record['guidance']:g})", "",
              f"PSNR, SSIM and edge error against `baseline {BASELINE_STEPS}`'s image of the same prompt and seed; "
              "prompt ok read back from each image. Examples: `sd3_positions_examples.png` (RALU's early-upsampled "
              "regions outlined in cyan).", "", "![examples](sd3_positions_examples.png)", "",
              "| method | calls | tokens per stage | FLOPs speedup | PSNR dB ↑ | SSIM ↑ | edge error ↓ | prompt ok ↑ |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in record["methods"]:
        m = r["metrics"]
        ref = r["group"] == "baseline"
        lines.append(f"| {r['name']} | {r['calls']} | {r['tokens']} | {r['flops_speedup']:.2f}x | "
                     + ("ref. | ref. | ref." if ref else
                        f"{quality.fmt(m['psnr'], 2)} | {quality.fmt(m['ssim'], 3)} | "
                        f"{quality.fmt(m['edge_error'], 3)}")
                     + f" | {m['prompt_all']['mean']:.2f} |")
    lines += ["", "## Paired differences (mean ± 2 SE over the same scenes / prompts and seeds)",
              "", "| comparison | velocity MSE ↓ | PSNR dB ↑ | SSIM ↑ | edge error ↓ | prompt ok ↑ |",
              "| --- | --- | --- | --- | --- | --- |"]
    for c in record["comparisons"]:
        if "velocity" in c:
            lines.append(f"| {c['label']} | {_pm(c['velocity'], 4)} | | | | |")
        else:
            lines.append(f"| {c['label']} | | {_pm(c['psnr'], 2)} | {_pm(c['ssim'], 3)} | "
                         f"{_pm(c['edge_error'], 3)} | {_pm(c['prompt_all'], 2)} |")
    lines += ["", "## What the measurements say", "", *(f"- {_verdict(c)}" for c in record["comparisons"])]
    return "\n".join(lines) + "\n"


def _verdict(c: dict) -> str:
    """One line per comparison: which convention each metric favours, and whether ±2 SE excludes 0."""
    challenger = c["label"].split(": ", 1)[1].split(" − ")[0]
    parts = []
    for key, name, higher_is_better, digits in (("velocity", "velocity MSE", False, 4), ("psnr", "PSNR", True, 2),
                                                 ("ssim", "SSIM", True, 3), ("edge_error", "edge error", False, 3),
                                                 ("prompt_all", "prompt ok", True, 2)):
        d = c.get(key)
        if d is None or d["mean"] is None:
            continue
        if d["mean"] == 0:
            parts.append(f"{name} equal")
            continue
        side = challenger if (d["mean"] > 0) == higher_is_better else c["control"]
        parts.append(f"{name} {d['mean']:+.{digits}f} (favours {side}"
                     + ("" if abs(d["mean"]) > d["ci"] else ", within noise") + ")")
    return f"**{c['label']}**: " + "; ".join(parts) + "."


def run(out: Path, scenes: int = 128, prompts: int = 96, seeds: int = 2, guidance: float | None = None,
        threads: int = 2, model_folder: Path | None = None, up_ratio: float = 0.3) -> dict:
    torch.set_num_threads(threads)
    guidance = toy.DEFAULT_GUIDANCE if guidance is None else guidance
    folder = model_folder or toy.SD3_DATA_DIR
    model = toy.load_toy(folder)
    if model.architecture != "sd3":
        raise ValueError(f"--model must be an SD3-architecture toy (python -m ralu.toy train --arch sd3), got {folder}")
    start = time.perf_counter()
    errors = velocity_errors(model, scenes, up_ratio)
    print(f"velocity errors: {time.perf_counter() - start:.0f} s", flush=True)
    for key, per_sigma in errors.items():
        print(f"  {key:<36} {per_sigma['mean']['mean']:.4f} ± {per_sigma['mean']['se']:.4f}")
    results, shown = images(model, prompts, seeds, guidance)
    record = dict(command=COMMAND, model=str(folder if model_folder else "ralu/data/toy_sd3"), torch=torch.__version__,
                  machine=platform.machine(), threads=threads, scenes=scenes, up_ratio=up_ratio,
                  selected=RALUConfig.preset("sd3-2x", up_ratio=up_ratio).selected_tokens(64),
                  sigmas=list(SIGMAS), prompts=prompts, seeds=seeds,
                  images_per_method=prompts * seeds, guidance=guidance, baseline_steps=BASELINE_STEPS,
                  velocity_errors=errors, methods=results)
    record["comparisons"] = comparisons(errors, results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sd3_positions.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "sd3_positions.md").write_text(markdown(record))
    examples = list(range(0, prompts * seeds, seeds))[:6]
    rows = [(name, (pics[examples] * 255).round().astype(np.uint8), None if regions is None else regions[examples])
            for name, (pics, regions) in shown["pictures"].items()]
    picture_tools.comparison_grid(rows, [shown["captions"][i] for i in examples], scale=2).save(
        out / "sd3_positions_examples.png")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SD3 table-position conventions on the SD3-architecture toy.")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--scenes", type=int, default=128, help="held-out scenes for the velocity errors")
    parser.add_argument("--prompts", type=int, default=96, help="captions for the images (default 96)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--guidance", type=float, help=f"CFG scale (default {toy.DEFAULT_GUIDANCE:g})")
    parser.add_argument("--up-ratio", type=float, default=0.3, help="fraction upsampled in the mixed sequences")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a saved SD3 toy folder (default: ralu/data/toy_sd3)")
    args = parser.parse_args(argv)
    run(args.out, args.scenes, args.prompts, args.seeds, args.guidance, args.threads, args.model, args.up_ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
