"""Where the toy judge loses the asked shapes: read-back of pictures restored from the rendered truth noised to σ.

    python tools/shape_onset.py MODEL_DIR [SCENES=64] [THREADS=1]

For held-out scenes (``shapes.scenes(777, SCENES)``, one noise each), each rendered truth is noised to
σ ∈ {0.9, 0.7, 0.5, 0.3, 0.15} and restored two ways with the caption (no guidance): the one-step clean estimate
``x - σ·v`` and 20 Euler steps from σ to 0. Each row prints the read-back (colour, shape, relation) of both.
A model that knows the shapes but cannot choose them from noise restores them from low σ and loses them
from high σ; the σ where shape falls says where training or sampling must help.

A second table asks whether the model draws the caption's kind or reads the kind off the noisy picture: the
single-object scenes among ``shapes.scenes(777, 4·SCENES)`` are restored (20 Euler steps) with the caption's
kind replaced by the next one (circle → square → triangle → circle); it prints the share of drawn shapes of
the caption's kind and of the picture's kind, beside the same with the true caption.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ralu.demo.model import decode_tokens, encode_images, load_toy
from ralu.demo.shapes import (KINDS, check_prompt, classify_shape, colour_labels, largest_blob, render_batch,
                              scenes)
from ralu.layout import grid_positions

LEVELS = (0.9, 0.7, 0.5, 0.3, 0.15)
EULER_STEPS = 20


def read_back(tokens: torch.Tensor, batch, grid) -> str:
    pictures = (decode_tokens(tokens, grid).permute(0, 2, 3, 1).cpu().numpy() + 1) / 2
    rows = [check_prompt(p, s) for p, s in zip(pictures, batch)]
    return " ".join(f"{k} {np.mean([r[k] for r in rows if r[k] is not None]):.2f}"
                    for k in ("colour", "shape", "relation"))


def restore(model, captions: list[str], x: torch.Tensor, level: float, grid) -> torch.Tensor:
    """20 Euler steps from ``x`` at σ = level to 0, conditioned on the captions (no guidance)."""
    adapter = model.adapter(captions)
    positions = adapter.prepare_positions(grid_positions(grid).expand(len(captions), -1, -1), grid)
    y = x
    sigmas = np.linspace(level, 0.0, EULER_STEPS + 1)
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        y = y + float(b - a) * adapter.velocity(y, positions, float(a))
    return y


def drawn_kind(picture: np.ndarray, colour: str) -> str | None:
    """The kind :func:`classify_shape` reads from the largest blob of ``colour`` (None if there is none)."""
    blob = largest_blob(colour_labels(picture), colour)
    return None if blob is None else classify_shape(blob)


def kind_table(model, count: int) -> None:
    single = [s for s in scenes(777, 4 * count) if s.relation is None][:count]
    grid = (16, 16)
    clean = encode_images(torch.from_numpy(render_batch(single, 64)))
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    pictured = [s.objects[0].kind for s in single]
    swapped = [KINDS[(KINDS.index(k) + 1) % len(KINDS)] for k in pictured]
    print(f"\n{len(single)} one-object scenes; shares of drawn shapes of the caption's kind and of the picture's kind")
    print("| σ | true caption: its kind | kind swapped: caption's kind | kind swapped: picture's kind |")
    print("| --- | --- | --- | --- |")
    with torch.no_grad():
        for level in (1.0, *LEVELS[:3]):
            x = (1 - level) * clean + level * noise
            shares = []
            for kinds in (pictured, swapped):
                captions = [s.objects[0].phrase.replace(s.objects[0].kind, k) for s, k in zip(single, kinds)]
                images = decode_tokens(restore(model, captions, x, level, grid), grid)
                pictures = (images.permute(0, 2, 3, 1).cpu().numpy() + 1) / 2
                drawn = [drawn_kind(p, s.objects[0].colour) for p, s in zip(pictures, single)]
                shares.append((np.mean([d == k for d, k in zip(drawn, kinds)]),
                               np.mean([d == k for d, k in zip(drawn, pictured)])))
            print(f"| {level} | {shares[0][0]:.2f} | {shares[1][0]:.2f} | {shares[1][1]:.2f} |", flush=True)


def main(argv: list[str]) -> int:
    folder = argv[0]
    count, threads = (int(a) for a in (argv[1:] + ["64", "1"][len(argv) - 1:])[:2])
    torch.set_num_threads(threads)
    model = load_toy(folder)
    batch = scenes(777, count)
    clean = encode_images(torch.from_numpy(render_batch(batch, 64)))
    grid = (16, 16)
    captions = [s.caption for s in batch]
    adapter = model.adapter(captions)
    positions = adapter.prepare_positions(grid_positions(grid).expand(count, -1, -1), grid)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    print(f"{folder}: {count} scenes; truth: {read_back(clean, batch, grid)}")
    print("| σ | one-step clean estimate | 20 Euler steps from σ |\n| --- | --- | --- |")
    with torch.no_grad():
        for level in LEVELS:
            x = (1 - level) * clean + level * noise
            estimate = x - level * adapter.velocity(x, positions, level)
            y = restore(model, captions, x, level, grid)
            print(f"| {level} | {read_back(estimate, batch, grid)} | {read_back(y, batch, grid)} |", flush=True)
    kind_table(model, count)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
