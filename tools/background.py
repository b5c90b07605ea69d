"""Mean grey level of the background (unsaturated pixels) per method of a toy ``ralu eval`` run, against the
rendered ground truth of the same captions: the darkening docs/verdict.md reports.

    python tools/background.py WORK_DIR [METHOD ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ralu.demo.images import to_uint8
from ralu.demo.shapes import NEUTRAL, render_batch, scenes


def background(images: np.ndarray) -> np.ndarray:
    """Per image: mean grey level in [0, 1] of the pixels whose max - min channel is below NEUTRAL."""
    x = images.astype(np.float32) / 255
    grey = x.max(-1) - x.min(-1) < NEUTRAL
    return np.array([x[i][grey[i]].mean() for i in range(len(x))])


def main(argv: list[str]) -> int:
    work = Path(argv[0])
    rows = [json.loads(line) for line in (work / "manifest.jsonl").read_text().splitlines()]
    methods = argv[1:] or list(dict.fromkeys(r["method"] for r in rows))
    first = [r for r in rows if r["method"] == methods[0]]
    truth = to_uint8(torch.from_numpy(render_batch(
        [scenes(r["meta"]["scene_seed"], r["meta"]["index"] + 1)[r["meta"]["index"]] for r in first], first[0]["height"])))
    b = background(truth)
    print(f"| method | background grey (mean) | spread (SD over images) |\n| --- | --- | --- |\n| truth | {b.mean():.3f} | {b.std():.3f} |")
    for method in methods:
        images = np.stack([np.asarray(Image.open(work / r["path"]).convert("RGB")) for r in rows if r["method"] == method])
        b = background(images)
        print(f"| `{method}` | {b.mean():.3f} | {b.std():.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
