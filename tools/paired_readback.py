"""Two toy weights' 50-step read-back on the same held-out captions and seeds, paired.

    python tools/paired_readback.py MODEL_A MODEL_B [CAPTIONS=256] [THREADS=1]

Captions ``toy_prompts(CAPTIONS)``, image i from seed i, guidance 3, as ``tools/readback.py``. Prints each check's
mean for A and B and the mean paired difference B - A ± 2 SE (relation over two-object captions only). The
comparison behind shipping new toy weights (docs/judge/paired_256.txt).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ralu import Baseline
from ralu.demo.model import DEFAULT_GUIDANCE, generate, load_toy
from ralu.demo.shapes import check_prompt, parse_caption
from ralu.eval.prompts import toy_prompts


def rows(folder: str, captions: list[str]) -> list[dict]:
    model, out = load_toy(folder), []
    for i in range(0, len(captions), 32):
        batch = captions[i:i + 32]
        images, _ = generate(model, batch, list(range(i, i + len(batch))), Baseline(50), DEFAULT_GUIDANCE)
        pictures = (images.permute(0, 2, 3, 1).numpy() + 1) / 2
        out += [check_prompt(p, parse_caption(c)) for p, c in zip(pictures, batch)]
    return out


def main(argv: list[str]) -> int:
    first, second = argv[:2]
    count, threads = (int(a) for a in (argv[2:] + ["256", "1"][len(argv) - 2:])[:2])
    torch.set_num_threads(threads)
    captions = [p.text for p in toy_prompts(count)]
    a, b = rows(first, captions), rows(second, captions)
    for key in ("all", "colour", "shape", "relation"):
        pairs = [(x[key], y[key]) for x, y in zip(a, b) if x[key] is not None]
        d = np.array([y - x for x, y in pairs])
        print(f"{key}: {np.mean([x for x, _ in pairs]):.3f} -> {np.mean([y for _, y in pairs]):.3f}, "
              f"paired diff {d.mean():+.3f} ± {2 * d.std(ddof=1) / np.sqrt(len(d)):.3f} (n={len(d)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
