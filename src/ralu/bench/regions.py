"""How well the decode-free region source agrees with the paper's Canny-on-decoded-image choice.

    ralu bench regions [--prompts 16] [--seeds 4] [--preset flux-dev-4x] [--out DIR]

On the shipped toy model (``ralu.toy``): for each prompt x seed, stage 1 of a RALU preset runs,
and its clean estimate x0 is scored twice: Canny edges of the decoded image (``region_source=
"decoded"``, the paper) and the Sobel magnitude of the latent itself (``region_source="latent"``).
Both choose ``floor(r·M)`` tokens; the table reports the IoU of the two chosen sets, against the
IoU of a random choice of the same size (the chance level), and the time of each scoring.
"""

from __future__ import annotations

import argparse
import json
import sys
import statistics
import time
from pathlib import Path

import torch

from ralu import RALUConfig, sample
from ralu.regions import edge_scores, latent_edge_scores, select_tokens


def iou(a: torch.Tensor, b: torch.Tensor, tokens: int) -> float:
    sa = torch.zeros(tokens, dtype=torch.bool)
    sb = torch.zeros(tokens, dtype=torch.bool)
    sa[a], sb[b] = True, True
    union = (sa | sb).sum().item()
    return (sa & sb).sum().item() / union if union else 1.0


def main(argv=None) -> int:
    from ralu.demo.model import initial_noise, load_toy, renoise_generators, token_grid

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--preset", default="flux-dev-4x")
    parser.add_argument("--model", type=Path, default=None, help="toy model folder (default: the shipped one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import numpy as np

    from ralu.demo.shapes import random_scene

    rng = np.random.default_rng(0)  # the toy's own prompt distribution
    captions = [random_scene(rng).caption for _ in range(args.prompts)]
    model = load_toy(args.model)
    config = RALUConfig.preset(args.preset, steps=(RALUConfig.preset(args.preset).steps[0], 1, 1))
    grid = token_grid()
    low = (grid[0] // 2, grid[1] // 2)
    tokens = low[0] * low[1]
    k = config.selected_tokens(tokens)
    ious, chance, t_decoded, t_latent = [], [], [], []
    gen = torch.Generator().manual_seed(0)
    for seed in range(args.seeds):
        adapter = model.adapter(captions)
        seeds = [seed * 1000 + i for i in range(len(captions))]
        clean = {}  # the clean estimate of stage 1's last step: what region selection scores

        def keep(info):
            if info.stage == 0:
                clean["x0"] = info.denoised

        with torch.no_grad():
            sample(adapter, initial_noise(seeds), config.resolve(3.0), grid, generator=renoise_generators(seeds),
                   on_step=keep)
            start = time.perf_counter()
            decoded = select_tokens(edge_scores(adapter.decode(clean["x0"], low), low), k, low)
            t_decoded.append(time.perf_counter() - start)
            start = time.perf_counter()
            latent = select_tokens(latent_edge_scores(clean["x0"], low), k, low)
            t_latent.append(time.perf_counter() - start)
        for a, b in zip(decoded, latent):
            ious.append(iou(a, b, tokens))
            chance.append(iou(a, torch.randperm(tokens, generator=gen)[:k], tokens))
    record = dict(command="ralu bench regions " + " ".join(sys.argv[1:] if argv is None else argv), preset=args.preset, images=len(ious),
                  selected=k, low_tokens=tokens, iou_mean=statistics.mean(ious), iou_median=statistics.median(ious),
                  chance_iou_mean=statistics.mean(chance), decoded_canny_s=statistics.median(t_decoded),
                  latent_sobel_s=statistics.median(t_latent))
    print(f"{len(ious)} toy images, {k} of {tokens} low-res tokens selected ({args.preset} up_ratio)")
    print(f"IoU(decoded Canny, latent Sobel): mean {record['iou_mean']:.3f}, median {record['iou_median']:.3f}; "
          f"random choice: {record['chance_iou_mean']:.3f}")
    print(f"scoring time per batch of {len(captions)}: decoded+Canny {record['decoded_canny_s'] * 1000:.1f} ms, "
          f"latent Sobel {record['latent_sobel_s'] * 1000:.1f} ms")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "regions.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
