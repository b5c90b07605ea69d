"""Image quality of RALU at matched transformer cost, on the shipped toy shapes model (issue 4).

For a fixed set of prompts × seeds, every method is compared with the full baseline's image of
the same prompt and seed (PSNR, SSIM, edge error) and read back by the data generator
(prompt faithfulness). Methods, for each RALU preset P (flux-dev-4x, flux-dev-7x):

- ``baseline 50``: the stock schedule, 50 steps at full resolution (the reference images);
- ``steps N (P)``: the stock schedule with N steps, N = round(50 / P's FLOPs speedup);
- ``naive (P)``: P's stage-1 steps at half resolution on the stock shift, then every token
  nearest-upsampled (``latent_nearest``) with no renoising and no region selection, and as many
  full-resolution steps from there as P's FLOPs allow (stock shift);
- ``RALU no NT-DM (P)``: P with stock shifts H = (h0, h0, h0), renoising kept;
- ``RALU (P)``: the preset as shipped;
- variants on P = flux-dev-4x, each one field changed from the preset: those of docs/method.md §7
  (``upsample=latent_nearest``, ``canny_clip_unit=True``, ``token_position=center``,
  ``exact_kept_noise=True``) and the paper's stage-1 noise, ``noise_downsample=nearest``
  (ralu's default is ``block_sum``).

Metrics (images in [0, 1], 64×64):
- PSNR, SSIM: scikit-image (``data_range=1``, SSIM over the RGB channels, 7×7 window).
- edge error: mean |∇I − ∇R| over a band around the reference's edges, divided by mean |∇R|
  there. ∇ is the Sobel gradient magnitude of the grey image (skimage.filters.sobel); the band
  is the reference's Canny edges (σ = 1) dilated by one pixel (3×3). 0 for identical images;
  blurred, shifted, doubled or jagged (blocky) edges all raise it.
- prompt ok / colour / shape / relation: :func:`ralu.shapes.check_prompt` on the method's image,
  against the caption (not against the baseline).

``python benchmarks/quality.py --out docs`` (or ``ralu quality --out docs``) writes
``quality.md``, ``quality.json`` and ``quality_examples.png`` there.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ralu.demo import images as pictures
from ralu.demo import model as toy
from ralu.demo import shapes
from ralu.config import Baseline, RALUConfig
from ralu.cost import schedule_cost
from ralu.layout import MixedLayout, downsample_tokens, low_positions, upsample_tokens
from ralu.schedule import stage_sigmas

BASELINE_STEPS = 50
PRESETS = ("flux-dev-4x", "flux-dev-7x")
VARIANT_PRESET = "flux-dev-4x"
VARIANTS = (("upsample", "latent_nearest"), ("canny_clip_unit", True), ("token_position", "center"),
            ("exact_kept_noise", True), ("noise_downsample", "nearest"))
PROMPT_SEED = 2026  # the captions: shapes.scenes(PROMPT_SEED, prompts)
COMMAND = "python benchmarks/quality.py --out docs"


# --- metrics -------------------------------------------------------------------------------------

def _grey(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray

    return rgb2gray(image)


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of an (H, W, 3) image in [0, 1] against the reference (inf when identical)."""
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(image, reference):
        return math.inf
    return float(peak_signal_noise_ratio(reference, image, data_range=1.0))


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """SSIM of (H, W, 3) images in [0, 1] (scikit-image, 7×7 window, mean over channels)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(reference, image, channel_axis=-1, data_range=1.0))


def edge_band(reference: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool: the reference's Canny edges (σ = 1) dilated by ``width`` px."""
    from scipy import ndimage
    from skimage.feature import canny

    edges = canny(_grey(reference), sigma=1.0)
    return ndimage.binary_dilation(edges, iterations=width) if width else edges


def edge_error(image: np.ndarray, reference: np.ndarray) -> float:
    """Relative gradient error in the band around the reference's edges (NaN when it has none)."""
    from skimage.filters import sobel

    band = edge_band(reference)
    if not band.any():
        return math.nan
    g_image, g_reference = sobel(_grey(image)), sobel(_grey(reference))
    return float(np.abs(g_image - g_reference)[band].mean() / max(g_reference[band].mean(), 1e-8))


# --- methods -------------------------------------------------------------------------------------

def _euler(adapter, x: torch.Tensor, positions: torch.Tensor, grid: tuple[int, int], sigmas: np.ndarray,
           stage: int) -> torch.Tensor:
    """Plain Euler steps over ``sigmas`` (the sampler's update, without its stage bookkeeping)."""
    prepared = adapter.prepare_positions(positions.expand(x.shape[0], -1, -1), grid)
    sig = torch.tensor(sigmas, dtype=torch.float32)
    steps = len(sig) - 1
    for i in range(steps):
        v = adapter.velocity(x, prepared, sig[i])
        x = x + (sig[i + 1] - sig[i]) * v
    return x


def naive_steps(preset: RALUConfig, full_tokens: int, model_config: dict, text_tokens: int) -> int:
    """Full-resolution steps the naive method can afford after P's stage 1 within P's FLOPs."""
    budget = schedule_cost(preset, full_tokens, model_config, text_tokens).total
    low = schedule_cost(preset, full_tokens, model_config, text_tokens).flops[0]
    per_full = schedule_cost(Baseline(1), full_tokens, model_config, text_tokens).total
    return max(1, math.floor((budget - low) / per_full + 1e-9))


def naive_upsampling(model: toy.ToyModel, prompts: Sequence[str], seeds: Sequence[int], preset: RALUConfig,
                     full_steps: int, guidance: float) -> torch.Tensor:
    """Low-res stage, nearest upsampling of every token without renoising, then full resolution.

    Both parts follow the stock shift h0; the change happens at P's first stage end e1.
    Returns images (B, 3, 64, 64) in [-1, 1].
    """
    adapter = model.adapter(prompts, guidance)
    grid = toy.token_grid()
    low_grid = (grid[0] // 2, grid[1] // 2)
    end = preset.ends[0]
    with torch.no_grad():
        x = downsample_tokens(toy.initial_noise(seeds), grid)
        x = _euler(adapter, x, low_positions(low_grid, "corner")[None], low_grid,
                   stage_sigmas(0.0, end, preset.steps[0], toy.BASE_SHIFT), 0)
        nothing = torch.zeros(x.shape[0], 0, dtype=torch.long)
        layout = MixedLayout.from_selection(nothing, low_grid)  # every token kept, then upsampled
        x, positions = layout.to_raster(upsample_tokens(x, "latent_nearest"), x[:, :0])
        x = _euler(adapter, x, positions[:1], grid, stage_sigmas(end, 1.0, full_steps, toy.BASE_SHIFT), 1)
        return toy.decode_tokens(x, grid)


def matched_steps(preset: RALUConfig, baseline_steps: int, full_tokens: int, model_config: dict,
                  text_tokens: int) -> int:
    """Stock-schedule steps with the preset's transformer FLOPs: round(baseline_steps / FLOPs speedup)."""
    base = schedule_cost(Baseline(baseline_steps), full_tokens, model_config, text_tokens).total
    ratio = base / schedule_cost(preset, full_tokens, model_config, text_tokens).total
    return max(1, round(baseline_steps / ratio))


def methods(full_tokens: int, model_config: dict, text_tokens: int) -> list[dict]:
    """Every method: name, group, and either a sampler config or the naive method's settings."""
    out = [dict(name=f"baseline {BASELINE_STEPS}", group="baseline", config=Baseline(BASELINE_STEPS, toy.BASE_SHIFT))]
    for name in PRESETS:
        preset = RALUConfig.preset(name).resolve(toy.BASE_SHIFT)
        matched = matched_steps(preset, BASELINE_STEPS, full_tokens, model_config, text_tokens)
        out.append(dict(name=f"steps {matched} ({name})", group=name, config=Baseline(matched, toy.BASE_SHIFT)))
        out.append(dict(name=f"naive ({name})", group=name, naive=preset,
                        full_steps=naive_steps(preset, full_tokens, model_config, text_tokens)))
        h0 = toy.BASE_SHIFT
        out.append(dict(name=f"RALU no NT-DM ({name})", group=name, config=preset.replace(shifts=(h0, h0, h0))))
        out.append(dict(name=f"RALU ({name})", group=name, config=preset))
    preset = RALUConfig.preset(VARIANT_PRESET).resolve(toy.BASE_SHIFT)
    for field, value in VARIANTS:
        out.append(dict(name=f"RALU {field}={value} ({VARIANT_PRESET})", group="variants",
                        config=preset.replace(**{field: value})))
    return out


def method_cost(method: dict, full_tokens: int, model_config: dict, text_tokens: int) -> tuple[int, float, str]:
    """(model calls, transformer FLOPs per image, tokens per stage)."""
    if "naive" in method:
        preset = method["naive"]
        low = schedule_cost(preset, full_tokens, model_config, text_tokens)
        full = schedule_cost(Baseline(method["full_steps"]), full_tokens, model_config, text_tokens)
        return preset.steps[0] + method["full_steps"], low.flops[0] + full.total, f"{low.tokens[0]} / {full_tokens}"
    cost = schedule_cost(method["config"], full_tokens, model_config, text_tokens)
    return sum(cost.steps), cost.total, " / ".join(str(n) for n in cost.tokens)


# --- the run ---------------------------------------------------------------------------------------

def score_images(batch: np.ndarray, reference: np.ndarray, targets: Sequence) -> dict[str, list]:
    """Per-image metrics of (B, H, W, 3) images in [0, 1]: PSNR, SSIM, edge error against the
    reference images, and the prompt checks (all, colour, shape, relation) against the targets."""
    per_image = dict(psnr=[psnr(i, r) for i, r in zip(batch, reference)],
                     ssim=[ssim(i, r) for i, r in zip(batch, reference)],
                     edge_error=[edge_error(i, r) for i, r in zip(batch, reference)])
    checks = [shapes.check_prompt(i, t) for i, t in zip(batch, targets)]
    for key in ("all", "colour", "shape", "relation"):
        per_image[f"prompt_{key}"] = [c[key] for c in checks]
    return per_image


def paired_difference(first: Sequence[float | None], second: Sequence[float | None]) -> dict:
    """Mean of first − second over the pairs where both are finite, with 2 standard errors (ci) and n."""
    diff = [x - y for x, y in zip(first, second)
            if x is not None and y is not None and np.isfinite(x) and np.isfinite(y)]
    s = _summary(diff)
    return dict(mean=s["mean"], ci=None if s["se"] is None else 2 * s["se"], n=s["n"])


def _summary(values: Sequence[float]) -> dict:
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(finite) == 0:
        return dict(mean=None, se=None, n=0)
    se = float(finite.std(ddof=1) / np.sqrt(len(finite))) if len(finite) > 1 else 0.0
    return dict(mean=float(finite.mean()), se=se, n=int(len(finite)))


def run(out: Path, prompts: int = 32, seeds: int = 2, guidance: float | None = None, threads: int = 2,
        model_folder: Path | None = None) -> dict:
    """Generate with every method, score, and write quality.json, quality.md and quality_examples.png to ``out``."""
    torch.set_num_threads(threads)
    guidance = toy.DEFAULT_GUIDANCE if guidance is None else guidance
    model = toy.load_toy(model_folder)
    captions = [scene.caption for scene in shapes.scenes(PROMPT_SEED, prompts)]
    batch_prompts = [c for c in captions for _ in range(seeds)]
    # a distinct noise seed for every image: the noise alone fixes much of a picture (its background
    # brightness, say), so images that shared a seed would not be independent samples
    batch_seeds = [i * seeds + s for i in range(len(captions)) for s in range(seeds)]
    targets = [shapes.parse_caption(c) for c in batch_prompts]
    grid = toy.token_grid()
    full_tokens, text_tokens = grid[0] * grid[1], toy.MAX_WORDS
    model_config = dict(model.transformer.config)
    base_flops = method_cost(methods(full_tokens, model_config, text_tokens)[0], full_tokens, model_config,
                             text_tokens)[1]
    results, pictures, reference = [], {}, None
    for method in methods(full_tokens, model_config, text_tokens):
        start = time.perf_counter()
        layout = None
        if "naive" in method:
            images = naive_upsampling(model, batch_prompts, batch_seeds, method["naive"], method["full_steps"],
                                      guidance)
        else:
            images, result = toy.generate(model, batch_prompts, batch_seeds, method["config"], guidance)
            layout = result.layout
        seconds = time.perf_counter() - start
        batch = pictures.to_uint8(images).astype(np.float32) / 255.0
        reference = batch if reference is None else reference
        calls, flops, tokens = method_cost(method, full_tokens, model_config, text_tokens)
        per_image = score_images(batch, reference, targets)
        results.append(dict(name=method["name"], group=method["group"], calls=calls, tokens=tokens,
                            flops_speedup=base_flops / flops, seconds=seconds,
                            config=repr(method.get("config") or method["naive"]),
                            metrics={k: _summary(v) for k, v in per_image.items()}, per_image=per_image))
        pictures[method["name"]] = (batch, None if layout is None else layout.mask().cpu().numpy())
        m = results[-1]["metrics"]
        print(f"{method['name']:<42} calls {calls:>3}  {base_flops / flops:5.2f}x  {seconds:6.1f} s  "
              f"PSNR {m['psnr']['mean'] or float('inf'):6.2f}  SSIM {m['ssim']['mean']:.3f}  "
              f"edge {m['edge_error']['mean'] or 0:.3f}  prompt ok {m['prompt_all']['mean']:.2f}", flush=True)
    record = dict(command=COMMAND, prompts=prompts, seeds=seeds, images_per_method=len(batch_prompts),
                  guidance=guidance, prompt_seed=PROMPT_SEED, baseline_steps=BASELINE_STEPS,
                  base_shift=toy.BASE_SHIFT, threads=threads, torch=torch.__version__, machine=platform.machine(),
                  captions=captions, comparisons=comparisons(results), methods=results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "quality.md").write_text(markdown(record))
    examples = list(range(0, len(batch_prompts), seeds))[:6]  # the first image of the first captions
    rows = [(name, (images[examples] * 255).round().astype(np.uint8), None if regions is None else regions[examples])
            for name, (images, regions) in pictures.items()]
    pictures.comparison_grid(rows, [batch_prompts[i] for i in examples], scale=2).save(out / "quality_examples.png")
    return record


PAIRS = (
    ("RALU vs step reduction", "RALU ({p})", "steps * ({p})"),
    ("RALU vs naive upsampling", "RALU ({p})", "naive ({p})"),
    ("NT-DM shifts vs stock shifts", "RALU ({p})", "RALU no NT-DM ({p})"),
)


def _find(results: list[dict], pattern: str) -> dict:
    from fnmatch import fnmatchcase

    return next(r for r in results if fnmatchcase(r["name"], pattern))


def comparisons(results: list[dict]) -> list[dict]:
    """Paired differences (first − second, same prompt and seed), mean ± 2 standard errors."""
    pairs = [(f"{label} ({p})", a.format(p=p), b.format(p=p)) for p in PRESETS for label, a, b in PAIRS]
    default = f"RALU ({VARIANT_PRESET})"
    pairs += [(f"{field}={value} vs preset ({VARIANT_PRESET})", f"RALU {field}={value} ({VARIANT_PRESET})", default)
              for field, value in VARIANTS]
    out = []
    for label, a, b in pairs:
        first, second = _find(results, a), _find(results, b)
        entry = dict(label=label, first=first["name"], second=second["name"])
        for key in ("psnr", "ssim", "edge_error", "prompt_all"):
            entry[key] = paired_difference(first["per_image"][key], second["per_image"][key])
        out.append(entry)
    return out


def _fmt(summary: dict, digits: int) -> str:
    if summary["mean"] is None:
        return "—"
    return f"{summary['mean']:.{digits}f} ± {summary['se']:.{digits}f}"


def markdown(record: dict) -> str:
    """The results as markdown: the method table and the paired comparisons."""
    lines = [
        "<!-- generated by benchmarks/quality.py; edit the script, not this file -->",
        "# RALU quality at matched transformer cost (toy shapes model)",
        "",
        __doc__.split("\n\n", 1)[1].strip().replace("``", "`"),
        "",
        "## Results",
        "",
        f"{record['images_per_method']} images per method ({record['prompts']} captions × {record['seeds']} noise seeds, "
        f"a different seed for every image), "
        f"64×64 px, guidance {record['guidance']:g}, torch {record['torch']}. Regenerate with `{record['command']}`.",
        "PSNR, SSIM and edge error are against `baseline 50`'s image of the same prompt and seed (mean ± standard "
        "error); prompt ok (every check passed), colour, shape and relation are read back from each method's own "
        "images. Examples (the first image of the first captions, a row per method, RALU's early-upsampled regions "
        "outlined in cyan): `quality_examples.png`.",
        "",
        "![examples](quality_examples.png)",
        "",
        "| method | calls | tokens per stage | FLOPs speedup | PSNR dB ↑ | SSIM ↑ | edge error ↓ "
        "| prompt ok ↑ | colour ↑ | shape ↑ | relation ↑ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["methods"]:
        m = r["metrics"]
        psnr_text = "ref." if m["psnr"]["n"] == 0 else _fmt(m["psnr"], 2)
        ssim_text = "ref." if r["group"] == "baseline" else _fmt(m["ssim"], 3)
        edge_text = "ref." if r["group"] == "baseline" else _fmt(m["edge_error"], 3)
        relation = m["prompt_relation"]["mean"]
        lines.append(f"| {r['name']} | {r['calls']} | {r['tokens']} | {r['flops_speedup']:.2f}x | {psnr_text} | "
                     f"{ssim_text} | {edge_text} | {m['prompt_all']['mean']:.2f} | {m['prompt_colour']['mean']:.2f} | "
                     f"{m['prompt_shape']['mean']:.2f} | "
                     f"{'—' if relation is None else format(relation, '.2f')} |")
    lines += ["", "### Paired differences (first − second; mean ± 2 SE over the same prompts and seeds)", "",
              "| comparison | PSNR dB | SSIM | edge error | prompt ok |", "| --- | --- | --- | --- | --- |"]
    for c in record["comparisons"]:
        cells = []
        for key, digits in (("psnr", 2), ("ssim", 3), ("edge_error", 3), ("prompt_all", 2)):
            d = c[key]
            cells.append("—" if d["mean"] is None else f"{d['mean']:+.{digits}f} ± {d['ci']:.{digits}f}")
        lines.append(f"| {c['label']} | " + " | ".join(cells) + " |")
    lines += ["", "## What the measurements say", ""]
    lines += [f"- {_verdict(c)}" for c in record["comparisons"]]
    return "\n".join(lines) + "\n"


def _verdict(c: dict) -> str:
    """One sentence per comparison: which side each metric favours, and whether ±2 SE excludes 0."""
    parts = []
    for key, name, higher_is_better, digits in (("psnr", "PSNR", True, 2), ("ssim", "SSIM", True, 3),
                                                 ("edge_error", "edge error", False, 3),
                                                 ("prompt_all", "prompt ok", True, 2)):
        d = c[key]
        if d["mean"] is None:
            continue
        if d["mean"] == 0:
            parts.append(f"{name} equal")
            continue
        better = (d["mean"] > 0) == higher_is_better
        clear = abs(d["mean"]) > d["ci"]
        side = c["first"] if better else c["second"]
        strength = "" if clear else ", within noise"
        parts.append(f"{name} {d['mean']:+.{digits}f} (favours {side}{strength})")
    return f"**{c['label']}**: " + "; ".join(parts) + "."


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RALU quality at matched cost on the toy shapes model.")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for quality.md/.json (default docs)")
    parser.add_argument("--prompts", type=int, default=32, help="captions (default 32)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per caption (default 2)")
    parser.add_argument("--guidance", type=float, help=f"CFG scale (default {toy.DEFAULT_GUIDANCE:g})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a saved toy model folder (default: the shipped one)")
    args = parser.parse_args(argv)
    run(args.out, args.prompts, args.seeds, args.guidance, args.threads, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
