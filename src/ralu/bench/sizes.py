"""Does ``base_shift="auto"`` matter? The toy model at sizes it was not trained at: ``ralu bench sizes``.

The toy's stock scheduler has a fixed shift (3.0), so for this experiment it gets FLUX.1-dev's dynamic
shifting, scaled so that the toy's 64 px (256 tokens) plays FLUX's 1024² (4096 tokens):
``h(n) = 3.0 · h_FLUX(16 n) / h_FLUX(4096)``, where ``h_FLUX(N) = exp(μ(N))`` is FLUX.1-dev's scheduler
shift at N tokens. At 48 px that is 2.22, at 80 px 4.43, at 64 px 3.0. At each size the methods are:
the stock schedule with 50 steps at h(n) (the reference), a preset re-solved by NT-DM for h(n)
("auto", the pipelines' default), the same preset with its 1024² numbers ("fixed"), and the stock
schedule cut to the preset's FLOPs. Scored by read-back and by FID and KID in the toy judge's (standardised) feature space
against the rendered ground truth (pictures resized to 64 px for the judge).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

from ralu import Baseline, RALUConfig
from ralu.cost import matched_steps, schedule_cost
from ralu.eval import stats

SIZES = (48, 64, 80)
PRESETS = ("flux-dev-4x", "flux-dev-7x")


def flux_shift(tokens: float) -> float:
    """FLUX.1-dev's scheduler shift at this many image tokens (dynamic shifting, exp(μ))."""
    return math.exp(0.5 + (tokens - 256) * (1.15 - 0.5) / (4096 - 256))


def toy_shift(px: int) -> float:
    """The toy's stock shift at ``px`` under FLUX-like dynamic shifting (3.0 at its 64 px)."""
    tokens = (px // 4) ** 2
    return 3.0 * flux_shift(16 * tokens) / flux_shift(4096)


def run(work: Path, prompts: int = 128, sizes=SIZES, presets=PRESETS, guidance: float | None = None,
        threads: int = 2, batch: int = 32) -> dict:
    import torch

    from ralu.demo import model as toy
    from ralu.demo.images import to_uint8
    from ralu.demo.judge import load_judge, standardised
    from ralu.demo.shapes import check_prompt, parse_caption, render_batch, scenes

    torch.set_num_threads(threads)
    guidance = toy.DEFAULT_GUIDANCE if guidance is None else guidance
    model, features = toy.load_toy(), standardised(load_judge())
    chosen = scenes(2026, prompts)
    captions = [s.caption for s in chosen]
    results = {}
    for px in sizes:
        h = toy_shift(px)
        grid = toy.token_grid(px)
        full = grid[0] * grid[1]
        config = dict(model.transformer.config)
        truth = to_uint8(torch.from_numpy(render_batch(chosen, px)))
        truth_features = features(_resize(truth, 64))
        methods = {"baseline 50": Baseline(50, h)}
        for name in presets:
            preset = RALUConfig.preset(name)
            auto = preset.resolve(h, 3.0)  # re-solved for h (the 64 px reference shift is 3.0)
            fixed = preset.resolve(3.0)
            n = matched_steps(fixed, 50, full, config, toy.MAX_WORDS)
            methods.update({f"{name} auto": auto, f"{name} fixed": fixed, f"steps {n} ({name})": Baseline(n, h)})
        row = {}
        for label, method in methods.items():
            images = []
            for start in range(0, prompts, batch):
                part = captions[start:start + batch]
                pixels, _ = toy.generate(model, part, list(range(start, start + len(part))), method, guidance, px)
                images.append(to_uint8(pixels))
            images = np.concatenate(images)
            checks = [check_prompt(i.astype(np.float32) / 255, parse_caption(c)) for i, c in zip(images, captions)]
            resized = _resize(images, 64)
            made = features(resized)
            fid, fid_se = stats.fid(made, truth_features)
            kid, kid_se = stats.kid_jackknife(made, truth_features)
            cost = schedule_cost(method, full, config, toy.MAX_WORDS).total
            row[label] = dict(readback=stats.mean_se([c["all"] for c in checks]),
                              shape=stats.mean_se([c["shape"] for c in checks]), fid=fid, fid_se=fid_se, kid=kid,
                              kid_se=kid_se,
                              flops=cost, base_shift=getattr(method, "base_shift", None) or method.shift,
                              shifts=getattr(method, "shifts", None), noise_ratio=getattr(method, "noise_ratio", None),
                              per_image=[c["all"] for c in checks])
            print(f"{px} px {label:<26} read-back {row[label]['readback']['mean']:.3f}  FID {fid:.2f} ± {fid_se:.2f}  "
                  f"KID {kid:.4f} ± {kid_se:.4f}",
                  flush=True)
        base = row["baseline 50"]["flops"]
        for r in row.values():
            r["speedup"] = base / r["flops"]
        results[str(px)] = dict(stock_shift=h, methods=row)
    return results


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if images.shape[1] == size:
        return images
    return np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BILINEAR)) for i in images])


def markdown(record: dict) -> str:
    lines = ["<!-- generated by `ralu bench sizes --out docs`; edit src/ralu/bench/sizes.py, not this file -->",
             "# The auto base shift at other sizes (toy model)", "", __doc__.split("\n\n", 1)[1].strip(), "",
             f"Command: `{record['command']}`; {record['prompts']} held-out captions per method and size.", "",
             "| size | stock shift h | method | base shift | FLOPs speedup | read-back (± SE) | FID vs truth (± SE) | "
             "KID vs truth (± SE) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for px, entry in record["results"].items():
        for label, r in entry["methods"].items():
            lines.append(f"| {px} px | {entry['stock_shift']:.2f} | {label} | {r['base_shift']:.2f} | "
                         f"{r['speedup']:.2f}x | {r['readback']['mean']:.3f} ± {r['readback']['se']:.3f} | "
                         f"{r['fid']:.2f} ± {r['fid_se']:.2f} | {r['kid']:.4f} ± {r['kid_se']:.4f} |")
    lines += ["", "Paired read-back differences, auto − fixed (mean ± 2 SE):", ""]
    for px, entry in record["results"].items():
        for name in PRESETS:
            a, f = entry["methods"].get(f"{name} auto"), entry["methods"].get(f"{name} fixed")
            if a and f:
                d = stats.paired_difference(a["per_image"], f["per_image"])
                lines.append(f"- {px} px, {name}: {d['mean']:+.3f} ± {2 * d['se']:.3f}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ralu bench sizes", description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="folder for sizes.md and sizes.json (default: print only)")
    args = parser.parse_args(argv)
    if any(s % 8 or s <= 0 for s in args.sizes) or args.prompts < 4:
        parser.error("--sizes must be positive multiples of 8 px and --prompts >= 4 (FID and KID with its jackknife "
                     "SE need that many images per method)")
    record = dict(command="ralu bench sizes " + " ".join(sys.argv[1:] if argv is None else argv), prompts=args.prompts,
                  results=run(Path(tempfile.gettempdir()), args.prompts, args.sizes, threads=args.threads))
    text = markdown(record)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sizes.md").write_text(text)
        (args.out / "sizes.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
