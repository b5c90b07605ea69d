"""The toy model's judges: a feature network trained on the shapes data, and edge-quality measures.

- :class:`FeatureNet`: a small CNN that reads a 64 px picture's objects (colour, kind, size and
  position of up to two objects, and their relation) from ``shapes.Scene`` labels. Its 128-d
  penultimate layer is the feature space of the toy's FID, KID and precision/recall, as Inception's
  is for photographs. ``python -m ralu.demo.judge --out DIR`` trains it (minutes on one core).
- :func:`blockiness`: how much stronger the gradient is across a token grid's lines than elsewhere
  (1 for pictures without grid structure); the artefact of latent upsampling.
- :func:`fringe`: the share of coloured pixels that are no palette colour: blurred or mixed edges.
numpy and torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .shapes import COLOURS, KINDS, NEUTRAL, SIZES, Scene, colour_labels, render_batch, scenes

JUDGE_DIR = Path(__file__).resolve().parent.parent / "data" / "toy_judge"
POSITION_BINS = 4  # centre x and y, each in 4 bins of the image width
HEADS = {"colour": len(COLOURS) + 1, "kind": len(KINDS) + 1, "size": len(SIZES) + 1,
         "x": POSITION_BINS + 1, "y": POSITION_BINS + 1}
FEATURES = 128


AXES = ("horizontal", "vertical")  # the relation's axis; which object is first follows from the picture


def labels(scene: Scene) -> dict[str, list[int]]:
    """Class indices per head for object slots 0 and 1 (the last class of each head: no object), and the
    relation's axis. The slots are in picture order (left to right for a horizontal relation, top to bottom
    for a vertical one), so that the labels follow from the picture alone (a caption may name either first)."""
    out: dict[str, list[int]] = {name: [] for name in HEADS}
    objects = list(scene.objects)
    axis = None
    if scene.relation is not None:
        axis = 0 if scene.relation in ("left of", "right of") else 1
        objects.sort(key=lambda shape: shape.center[axis])
    for slot in range(2):
        if slot < len(objects):
            shape = objects[slot]
            values = dict(colour=list(COLOURS).index(shape.colour), kind=KINDS.index(shape.kind),
                          size=list(SIZES).index(shape.size),
                          x=min(POSITION_BINS - 1, int(shape.center[0] * POSITION_BINS)),
                          y=min(POSITION_BINS - 1, int(shape.center[1] * POSITION_BINS)))
        else:
            values = {name: count - 1 for name, count in HEADS.items()}
        for name in HEADS:
            out[name].append(values[name])
    out["relation"] = [len(AXES) if axis is None else axis]
    return out


class FeatureNet(nn.Module):
    """64 px pictures (B, 3, 64, 64) in [-1, 1] → features (B, 128) and per-head logits."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GELU(), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 128, 3, padding=1), nn.GELU(), nn.Conv2d(128, 128, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(128, 128, 3, stride=2, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(128 * 16, FEATURES),
            nn.GELU())
        self.heads = nn.ModuleDict({f"{name}{slot}": nn.Linear(FEATURES, count)
                                    for name, count in HEADS.items() for slot in range(2)})
        self.heads["relation"] = nn.Linear(FEATURES, len(AXES) + 1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.body(images)
        return features, {name: head(features) for name, head in self.heads.items()}


def _targets(batch: Sequence[Scene]) -> dict[str, torch.Tensor]:
    per = [labels(s) for s in batch]
    out = {f"{name}{slot}": torch.tensor([p[name][slot] for p in per]) for name in HEADS for slot in range(2)}
    out["relation"] = torch.tensor([p["relation"][0] for p in per])
    return out


def train_judge(out: str | Path, steps: int = 3000, batch: int = 64, seed: int = 7, lr: float = 2e-3,
                threads: int = 1) -> dict:
    """Train :class:`FeatureNet` on rendered scenes (64 px, light noise and blur augmentation) and save it."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = FeatureNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    start, log = time.perf_counter(), []
    for step in range(steps):
        batch_scenes = scenes(seed * 7_919_993 + step, batch)  # not the seeds of the toy model's training
        images = torch.from_numpy(render_batch(batch_scenes, 64))
        images = _augment(images, generator)
        _, logits = model(images)
        targets = _targets(batch_scenes)
        loss = sum(F.cross_entropy(logits[name], targets[name]) for name in logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            log.append(dict(step=step + 1, loss=round(loss.item(), 4), seconds=round(time.perf_counter() - start, 1)))
            print(json.dumps(log[-1]), flush=True)
    accuracy = evaluate(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / "judge.safetensors"))
    record = dict(command=f"python -m ralu.demo.judge --out {out} --steps {steps}", steps=steps, batch=batch,
                  seed=seed, lr=lr, held_out_accuracy=accuracy, wall_seconds=round(time.perf_counter() - start, 1),
                  parameters=sum(p.numel() for p in model.parameters()), log=log)
    (out / "judge.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild noise and blur, so that generated pictures (never exactly rendered) stay in range."""
    noise = torch.rand(images.shape[0], 1, 1, 1, generator=generator) * 0.1
    images = images + noise * torch.randn(images.shape, generator=generator)
    blur = torch.rand(images.shape[0], generator=generator) < 0.3
    if blur.any():
        kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
        images[blur] = F.conv2d(F.pad(images[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    return images.clamp(-1, 1)


@torch.no_grad()
def evaluate(model: FeatureNet, count: int = 512, seed: int = 424_242) -> dict[str, float]:
    """Per-head accuracy on held-out rendered scenes."""
    model.eval()
    batch_scenes = scenes(seed, count)
    _, logits = model(torch.from_numpy(render_batch(batch_scenes, 64)))
    targets = _targets(batch_scenes)
    model.train()
    return {name: round(float((logits[name].argmax(1) == targets[name]).float().mean()), 4) for name in logits}


def load_judge(folder: str | Path | None = None) -> FeatureNet:
    """The shipped feature network (``ralu/data/toy_judge``), eval mode."""
    from safetensors.torch import load_file

    path = Path(folder or JUDGE_DIR) / "judge.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no toy judge at {path}: train one with python -m ralu.demo.judge --out DIR")
    model = FeatureNet()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@torch.no_grad()
def features(model: FeatureNet, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """uint8 pictures (B, 64, 64, 3) → features (B, 128) float64."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
        out.append(model(x)[0].double().numpy())
    return np.concatenate(out)


STANDARDISE_SEED, STANDARDISE_COUNT = 777_777, 1024


def standardised(model: FeatureNet) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`features`, centred on the mean over ``STANDARDISE_COUNT`` rendered ground-truth pictures
    (a fixed seed, no evaluation caption) and divided by one number, their root-mean-square spread per
    dimension.

    The raw features have norms near 130, where KID's cubic kernel ``(x·y / d + 1)³`` is dominated by
    a few directions and its estimate swings by thousands between two samples of the same
    distribution. After this map ``x·y / d`` is of order 1, the scale the kernel was designed for
    (Inception's features), and FID is in units of the truth's own variance. One scale for every
    dimension keeps the geometry (precision and recall are unchanged); a per-dimension z-score would
    blow up dimensions that are nearly constant on the truth and not on generated images.
    """
    from .images import to_uint8

    raw = features(model, to_uint8(torch.from_numpy(render_batch(scenes(STANDARDISE_SEED, STANDARDISE_COUNT), 64))))
    mean, scale = raw.mean(axis=0), float(np.sqrt(raw.var(axis=0).mean()))

    return lambda images: (features(model, images) - mean) / scale


def blockiness(image: np.ndarray, period: int) -> float:
    """Mean |gradient| across the lines of a ``period``-px grid over that elsewhere (grey image, both axes).

    image: (H, W, 3) uint8 or float. About 1 for a picture with no grid structure; above 1 when its
    content changes in steps of ``period`` px (upsampled tokens).
    """
    grey = np.asarray(image, np.float64).mean(axis=-1)
    dx, dy = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
    on_x = (np.arange(dx.shape[1]) % period) == period - 1
    on_y = (np.arange(dy.shape[0]) % period) == period - 1
    across = np.concatenate([dx[:, on_x].ravel(), dy[on_y, :].ravel()]).mean()
    inside = np.concatenate([dx[:, ~on_x].ravel(), dy[~on_y, :].ravel()]).mean()
    return float(across / max(inside, 1e-9))


def fringe(image: np.ndarray) -> float:
    """Share of coloured pixels (not grey) whose colour is no palette colour: blurred or mixed edges.

    image: (H, W, 3) uint8 or in [0, 1].
    """
    rgb = np.asarray(image, np.float32)
    rgb = rgb / 255.0 if rgb.max() > 1.0 else rgb
    coloured = rgb.max(axis=-1) - rgb.min(axis=-1) >= NEUTRAL
    if not coloured.any():
        return float("nan")
    return float(((colour_labels(rgb) == -1) & coloured).sum() / coloured.sum())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ralu.demo.judge", description="Train the toy feature network.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    record = train_judge(args.out, args.steps, threads=args.threads)
    print(f"saved {args.out}: held-out accuracy {record['held_out_accuracy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
