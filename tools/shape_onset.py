"""Where the toy judge loses the asked shapes: read-back of pictures restored from the rendered truth noised to σ.

    python tools/shape_onset.py MODEL_DIR [SCENES=64] [THREADS=1]

For held-out scenes (``shapes.scenes(777, SCENES)``, one noise each), each rendered truth is noised to
σ ∈ {0.9, 0.7, 0.5, 0.3, 0.15} and restored two ways with the caption (no guidance): the one-step clean estimate
``x - σ·v`` and 20 Euler steps from σ to 0. Each row prints the read-back (colour, shape, relation) of both.
A model that knows the shapes but cannot choose them from noise restores them from low σ and loses them
from high σ; the σ where shape falls says where training or sampling must help.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ralu.demo.model import decode_tokens, encode_images, load_toy
from ralu.demo.shapes import check_prompt, render_batch, scenes
from ralu.layout import grid_positions

LEVELS = (0.9, 0.7, 0.5, 0.3, 0.15)
EULER_STEPS = 20


def read_back(tokens: torch.Tensor, batch, grid) -> str:
    pictures = (decode_tokens(tokens, grid).permute(0, 2, 3, 1).cpu().numpy() + 1) / 2
    rows = [check_prompt(p, s) for p, s in zip(pictures, batch)]
    return " ".join(f"{k} {np.mean([r[k] for r in rows if r[k] is not None]):.2f}"
                    for k in ("colour", "shape", "relation"))


def main(argv: list[str]) -> int:
    folder = argv[0]
    count, threads = (int(a) for a in (argv[1:] + ["64", "1"][len(argv) - 1:])[:2])
    torch.set_num_threads(threads)
    model = load_toy(folder)
    batch = scenes(777, count)
    clean = encode_images(torch.from_numpy(render_batch(batch, 64)))
    grid = (16, 16)
    adapter = model.adapter([s.caption for s in batch])
    positions = adapter.prepare_positions(grid_positions(grid).expand(count, -1, -1), grid)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    print(f"{folder}: {count} scenes; truth: {read_back(clean, batch, grid)}")
    print("| σ | one-step clean estimate | 20 Euler steps from σ |\n| --- | --- | --- |")
    with torch.no_grad():
        for level in LEVELS:
            x = (1 - level) * clean + level * noise
            estimate = x - level * adapter.velocity(x, positions, level)
            sigmas = np.linspace(level, 0.0, EULER_STEPS + 1)
            y = x
            for a, b in zip(sigmas[:-1], sigmas[1:]):
                y = y + float(b - a) * adapter.velocity(y, positions, float(a))
            print(f"| {level} | {read_back(estimate, batch, grid)} | {read_back(y, batch, grid)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
