"""RALU combined with temporal caching on the trained toy model: skipped calls, FLOPs, quality.

    ralu bench caching [--prompts 16] [--seeds 2] [--out DIR]

For the 50-step baseline and the RALU presets, with and without a cache (the TeaCache-style
hook of ``ralu.caching`` and diffusers' FirstBlockCache), it counts the calls whose block stack
was skipped in each stage, turns them into the spatial x temporal split of the transformer-FLOPs
speedup (``ralu.cost.combined_speedup``, the toy's own transformer config) and reports the PSNR
of every image against the uncached baseline image of the same prompt and seed. The toy model
has classifier-free guidance off here (one branch), so calls and stages map one to one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ralu import Baseline, RALUConfig, sample
from ralu.caching import IDENTITY_COEFFICIENTS, TeaCacheConfig, apply_teacache, remove_teacache, transformer_blocks
from ralu.cost import combined_speedup


def main(argv=None) -> int:
    from diffusers.hooks import FirstBlockCacheConfig

    from ralu.demo import images as pictures
    from ralu.demo import model as toy
    from ralu.demo.shapes import random_scene

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None, help="toy model folder (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    model = toy.load_toy(args.model)
    transformer = model.transformer
    rng = np.random.default_rng(0)
    captions = [random_scene(rng).caption for _ in range(args.prompts)]
    prompts = [c for c in captions for _ in range(args.seeds)]
    seeds = [i for _ in captions for i in range(args.seeds)]
    grid = toy.token_grid()
    full_tokens = grid[0] * grid[1]
    text_tokens = model.tokenizer.max_words
    model_config = dict(transformer.config)
    tail = transformer_blocks(transformer)[-1][1]

    def run(config, cache):
        """Images and the calls skipped per stage (a call computes iff its tail block really runs)."""
        computed_per_step = []
        last = [0]

        def on_step(info):
            computed_per_step.append(len(inner_calls) > last[0])
            last[0] = len(inner_calls)

        inner_calls = []
        handle = tail.proj_out.register_forward_pre_hook(lambda m, a: inner_calls.append(1))
        if cache == "teacache":
            apply_teacache(transformer, TeaCacheConfig(threshold=0.1, coefficients=IDENTITY_COEFFICIENTS))
        elif cache == "first_block":
            transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
        try:
            with torch.no_grad():
                result = sample(model.adapter(prompts), toy.initial_noise(seeds), config, grid,
                                generator=toy.renoise_generators(seeds), on_step=on_step)
        finally:
            handle.remove()
            if cache == "teacache":
                remove_teacache(transformer)
            elif cache == "first_block":
                transformer.disable_cache()
        steps = tuple(s.steps for s in config.stages)
        skipped, start = [], 0
        for n in steps:
            skipped.append(sum(not c for c in computed_per_step[start:start + n]))
            start += n
        images = toy.decode_tokens(result.latents, grid)
        return images, tuple(skipped)

    methods = [("baseline 50", Baseline(50, toy.BASE_SHIFT))] + [(n, RALUConfig.preset(n).resolve(toy.BASE_SHIFT))
                                                        for n in ("flux-dev-4x", "flux-dev-7x")]
    reference, _ = run(methods[0][1], None)
    rows = []
    for name, config in methods:
        for cache in (None, "teacache", "first_block"):
            images, skipped = run(config, cache)
            split = combined_speedup(config, full_tokens, skipped, 50, model_config, text_tokens)
            psnr = pictures.psnr(pictures.to_uint8(images), pictures.to_uint8(reference))
            rows.append(dict(method=name, cache=cache or "none", skipped=skipped, calls=sum(s.steps for s in config.stages),
                             spatial=split.spatial, temporal=split.temporal, total=split.total, psnr_vs_baseline=psnr))
    header = f"{'method':<14}{'cache':<13}{'calls':>6}{'skipped per stage':>20}{'spatial':>9}{'temporal':>10}{'total':>8}{'PSNR dB':>9}"
    print(f"toy model, {len(prompts)} images, thresholds: TeaCache 0.1 (identity polynomial), FirstBlockCache 0.05")
    print(header)
    for r in rows:
        print(f"{r['method']:<14}{r['cache']:<13}{r['calls']:>6}{str(r['skipped']):>20}{r['spatial']:>8.2f}x"
              f"{r['temporal']:>9.2f}x{r['total']:>7.2f}x{r['psnr_vs_baseline']:>9.2f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        record = dict(command="ralu bench caching " + " ".join(sys.argv[1:] if argv is None else argv), rows=rows)
        (args.out / "caching.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
