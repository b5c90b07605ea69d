"""The toy judge's own test: its 50-step baseline's prompt read-back on held-out captions.

    python tools/readback.py MODEL_DIR [CAPTIONS=64] [STEPS=50] [THREADS=1] [DEVICE=cpu]

Captions are ``ralu.eval.prompts.toy_prompts(CAPTIONS)`` (held out from training); image i uses seed i,
guidance 3 (the demo's and the benchmarks' default). Prints the share of captions passing
``check_prompt`` overall and per check (colour, shape, relation), each ± 2 SE; then shape read-back for
one-object and two-object captions apart, and which kind was drawn for each kind asked
(``shapes.drawn_kinds``; "-": the object's colour was not found); last, for captions asking two different
kinds, whether each object got the kind asked, the other object's (words bound to the wrong object), neither,
or was missing (``shapes.kind_bindings``). The numbers in
``src/ralu/data/toy/training.json`` ("note") and docs/verdict.md ("Toy weights") come from
``python tools/readback.py src/ralu/data/toy 128 50 2``.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import torch

from ralu import Baseline
from ralu.demo.model import DEFAULT_GUIDANCE, generate, load_toy
from ralu.demo.shapes import BINDINGS, KINDS, check_prompt, drawn_kinds, kind_bindings, parse_caption
from ralu.eval.prompts import toy_prompts


def main(argv: list[str]) -> int:
    folder = argv[0]
    count, steps, threads = (int(a) for a in (argv[1:] + ["64", "50", "1"][len(argv) - 1:])[:3])
    device = argv[4] if len(argv) > 4 else "cpu"
    torch.set_num_threads(threads)
    model = load_toy(folder, device)
    captions = [p.text for p in toy_prompts(count)]
    rows, asked_drawn, bindings = [], Counter(), Counter()
    for i in range(0, count, 32):
        batch = captions[i:i + 32]
        images, _ = generate(model, batch, list(range(i, i + len(batch))), Baseline(steps), DEFAULT_GUIDANCE)
        pictures = (images.permute(0, 2, 3, 1).cpu().numpy() + 1) / 2
        for picture, caption in zip(pictures, batch):
            scene = parse_caption(caption)
            rows.append(dict(check_prompt(picture, scene), objects=len(scene.objects)))
            asked, drawn = [o.kind for o in scene.objects], drawn_kinds(picture, scene)
            asked_drawn.update(zip(asked, drawn))
            if len(set(asked)) == 2:
                bindings.update(kind_bindings(asked, drawn))
    parts = []
    for key in ("all", "colour", "shape", "relation"):
        values = np.array([r[key] for r in rows if r[key] is not None], dtype=float)
        parts.append(f"{key} {values.mean():.3f} ± {2 * values.std(ddof=1) / np.sqrt(len(values)):.3f}")
    print(f"{folder}: {count} captions, {steps} steps: " + ", ".join(parts))
    for objects in (1, 2):
        shape = [r["shape"] for r in rows if r["objects"] == objects]
        print(f"  {objects}-object captions: {len(shape)}, shape {np.mean(shape):.3f}")
    print("  asked → drawn: " + "; ".join(
        f"{asked} → " + " ".join(f"{drawn or '-'} {asked_drawn[asked, drawn]}" for drawn in (*KINDS, None))
        for asked in KINDS))
    print(f"  two different kinds asked, {sum(bindings.values())} objects drawn with the kind: "
          + ", ".join(f"{label} {bindings[label]}" for label in BINDINGS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
