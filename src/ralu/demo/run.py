"""``ralu demo``: the baseline, RALU presets and the same-cost step cut on the shipped toy model, in one picture."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Baseline, RALUConfig
from ..cost import matched_steps, speedup
from . import model as toy
from .images import comparison_grid, to_uint8
from .shapes import check_prompt, parse_caption

DEMO_PROMPTS = ("a large red circle left of a small blue square", "a large yellow triangle",
                "a small green triangle above a large purple circle",
                "a large orange square right of a small green circle")
PRESETS = ("flux-dev-4x", "flux-dev-7x")
# the shipped model's read-back rate below which the demo hides the column (it would measure the model, not RALU)
READBACK_FLOOR = 0.5


@dataclass
class DemoRow:
    name: str
    calls: int
    tokens: tuple[int, ...]
    seconds: float
    flops_speedup: float
    pictures: np.ndarray
    regions: np.ndarray | None
    readback: float


def _methods(steps: int, full_tokens: int, model_config: dict, text_tokens: int,
             quick: bool) -> list[RALUConfig | Baseline]:
    """Baseline, then per preset: the preset and the stock schedule cut to the same FLOPs."""
    out: list[RALUConfig | Baseline] = [Baseline(steps, toy.BASE_SHIFT, name=f"baseline {steps}")]
    for name in PRESETS:
        preset = RALUConfig.preset(name, **(dict(steps=(1, 1, 2)) if quick else {})).resolve(toy.BASE_SHIFT)
        matched = matched_steps(preset, steps, full_tokens, model_config, text_tokens)
        out += [preset, Baseline(matched, toy.BASE_SHIFT, name=f"steps {matched}")]
    return out


def run_demo(output: Path, steps: int = 50, guidance: float | None = None, quick: bool = False,
             say: Callable[[str], None] = print) -> list[DemoRow]:
    """Generate the demo prompts with every method, save the comparison PNG, print the table."""
    import torch

    guidance = toy.DEFAULT_GUIDANCE if guidance is None else guidance
    prompts = DEMO_PROMPTS[:2] if quick else DEMO_PROMPTS
    seeds = list(range(len(prompts)))
    steps = 8 if quick else steps
    model = toy.load_toy()
    model_config = dict(model.transformer.config)
    grid = toy.token_grid()
    full, text = grid[0] * grid[1], toy.MAX_WORDS
    say(f"RALU demo on the shipped toy model: a {sum(p.numel() for p in model.transformer.parameters()) / 1e6:.1f} M "
        f"parameter FluxTransformer2DModel trained on coloured shapes, {toy.RESOLUTION}x{toy.RESOLUTION} px, "
        f"{len(prompts)} prompts per batch, guidance {guidance:g}, {torch.get_num_threads()} CPU threads")
    toy.generate(model, prompts[:1], seeds[:1], RALUConfig.preset("flux-dev-4x", steps=(1, 1, 1)).resolve(3.0))
    rows = []
    methods = _methods(steps, full, model_config, text, quick)
    for number, config in enumerate(methods, 1):
        start = time.perf_counter()
        images, result = toy.generate(model, prompts, seeds, config, guidance)
        seconds = time.perf_counter() - start
        pictures = to_uint8(images)
        regions = None if result.layout is None else result.layout.mask().cpu().numpy()
        checks = [check_prompt(p.astype(np.float32) / 255, parse_caption(c))["all"] for p, c in zip(pictures, prompts)]
        rows.append(DemoRow(config.name, result.model_calls, result.stage_tokens, seconds,
                            speedup(config, full, steps, model_config, text), pictures, regions, float(np.mean(checks))))
        say(f"  [{number}/{len(methods)}] {config.name}: {result.model_calls} calls, {seconds:.1f} s")
    base = rows[0]
    show_readback = base.readback >= READBACK_FLOOR
    picture_rows = []
    for row in rows:
        label = f"{row.name}\n{row.calls} calls\nFLOPs {row.flops_speedup:.2f}x\nmeasured {base.seconds / row.seconds:.2f}x"
        if show_readback:
            label += f"\nprompt ok {row.readback:.0%}"
        picture_rows.append((label, row.pictures, row.regions))
    output.parent.mkdir(parents=True, exist_ok=True)
    comparison_grid(picture_rows, prompts, title=f"RALU on the toy shapes model ({toy.RESOLUTION} px); "
                    f"speedups against {base.name}",
                    legend="Cyan outlines: the low-resolution tokens RALU upsampled early (stage 2), chosen by the "
                           "edges of its stage-1 clean estimate. 'steps N': the stock schedule cut to the preset's "
                           "transformer FLOPs.").save(output)
    header = (f"{'method':<14}{'calls':>6}  {'tokens per stage':<17}{'wall s':>8}{'measured':>10}{'FLOPs':>8}"
              + (f"{'prompt ok':>11}" if show_readback else ""))
    say("")
    say(header)
    say("-" * len(header))
    for row in rows:
        say(f"{row.name:<14}{row.calls:>6}  {' / '.join(map(str, row.tokens)):<17}{row.seconds:>8.2f}"
            f"{base.seconds / row.seconds:>9.2f}x{row.flops_speedup:>7.2f}x"
            + (f"{row.readback:>11.0%}" if show_readback else ""))
    say("")
    say("measured: wall time of the batch against the baseline's; FLOPs: the cost model's transformer ratio"
        + ("; prompt ok: share of images whose colours, shapes and relation read back as the prompt asks "
           "(ralu.demo.shapes.check_prompt)" if show_readback else "") + ".")
    say(f"saved {output}")
    return rows


def sample_grid(model: toy.ToyModel, scenes: Sequence, steps: int = 50,
                guidances: Sequence[float] = (1.0, toy.DEFAULT_GUIDANCE)):
    """A column per scene: its training picture, then the baseline's sample of its caption (seed 0) per guidance."""
    import torch

    from .shapes import render_batch

    captions = [scene.caption for scene in scenes]
    rows = [("training data", to_uint8(torch.from_numpy(render_batch(list(scenes), toy.RESOLUTION))), None)]
    for guidance in guidances:
        images, _ = toy.generate(model, list(captions), [0] * len(captions), Baseline(steps, toy.BASE_SHIFT), guidance)
        rows.append((f"baseline {steps}, guidance {guidance:g}", to_uint8(images), None))
    return comparison_grid(rows, captions)


def save_samples(path: Path, count: int = 8, seed: int = 99, steps: int = 50) -> Path:
    """docs/toy_samples.png: held-out scenes (``shapes.scenes(seed, count)``) beside the shipped model's samples."""
    from .shapes import scenes

    path.parent.mkdir(parents=True, exist_ok=True)
    sample_grid(toy.load_toy(), scenes(seed, count), steps).save(path)
    return path


if __name__ == "__main__":
    sys.exit(0 if run_demo(Path("ralu_demo.png")) else 1)
