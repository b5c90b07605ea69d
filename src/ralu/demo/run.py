"""``ralu demo``: the baseline, RALU presets and the same-cost step cut on the shipped toy model, in one picture."""

from __future__ import annotations

import json
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

DEMO_PROMPTS = ("a large red circle left of a small blue square", "a large yellow triangle",
                "a small green triangle above a large purple circle",
                "a large orange square right of a small green circle")
PRESETS = ("flux-dev-4x", "flux-dev-7x")
# the quality study of the shipped weights (tools/toy_study.sh): each method's read-back over held-out captions
STUDY = toy.DATA_DIR / "study.json"


@dataclass
class DemoRow:
    name: str
    calls: int
    tokens: tuple[int, ...]
    seconds: float
    flops_speedup: float
    pictures: np.ndarray
    regions: np.ndarray | None
    readback: dict | None  # the study's read-back of this method (mean, se), None where it was not studied


def study_key(config: RALUConfig | Baseline, baseline_steps: int) -> str:
    """The method's name in the study: ``baseline:N``, ``steps:N`` or the preset's name."""
    if isinstance(config, Baseline):
        return f"{'baseline' if config.steps == baseline_steps else 'steps'}:{config.steps}"
    return config.name


def study_readback(methods: Sequence[RALUConfig | Baseline], baseline_steps: int, guidance: float,
                   study: dict) -> list[dict | None] | None:
    """Each method's read-back from ``study`` (``STUDY``'s layout), or None where the demo's settings are not
    the study's: another guidance or baseline, or a method the study did not run (a changed preset)."""
    if guidance != study["guidance"] or f"baseline:{baseline_steps}" not in study["readback"]:
        return None

    def studied(config: RALUConfig | Baseline) -> bool:  # a preset with changed fields (--quick) was not
        return isinstance(config, Baseline) or (config.name in RALUConfig.PRESETS and
                                                config == RALUConfig.preset(config.name).resolve(study["base_shift"]))

    return [study["readback"].get(study_key(config, baseline_steps)) if studied(config) else None
            for config in methods]


def _methods(steps: int, full_tokens: int, model_config: dict, text_tokens: int,
             quick: bool) -> list[RALUConfig | Baseline]:
    """Baseline, then per preset: the preset and the stock schedule cut to the same FLOPs."""
    out: list[RALUConfig | Baseline] = [Baseline(steps, toy.BASE_SHIFT, name=f"baseline {steps}")]
    for name in PRESETS:
        preset = RALUConfig.preset(name, **(dict(steps=(1, 1, 2)) if quick else {})).resolve(toy.BASE_SHIFT)
        matched = matched_steps(preset, steps, full_tokens, model_config, text_tokens)
        out += [preset, Baseline(matched, toy.BASE_SHIFT, name=f"steps {matched}")]
    return out


def study_record(summary: dict, source: str, guidance: float = toy.DEFAULT_GUIDANCE) -> dict:
    """``STUDY``'s content from a toy study's ``summary.json`` (``ralu eval report``; the study runs at the
    default guidance): each method's overall read-back."""
    readback = {name: {key: method["scores"]["toy_readback.all"][key] for key in ("mean", "se")}
                for name, method in summary["methods"].items()}
    captions = summary["methods"][summary["reference"]]["scores"]["toy_readback.all"]["n"]
    return dict(source=source, captions=captions, guidance=guidance, base_shift=toy.BASE_SHIFT, readback=readback)


def _readback_cell(readback: dict | None) -> str:
    return "-" if readback is None else f"{readback['mean']:.3f} ± {2 * readback['se']:.3f}"


def run_demo(output: Path, steps: int = 50, guidance: float | None = None, quick: bool = False,
             say: Callable[[str], None] = print, study_path: Path = STUDY) -> list[DemoRow]:
    """Generate the demo prompts with every method, save the comparison PNG, print the table (with each
    method's read-back from the shipped quality study where the demo runs what the study ran)."""
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
    study = json.loads(study_path.read_text()) if study_path.is_file() else None
    readbacks = (study and study_readback(methods, steps, guidance, study)) or [None] * len(methods)
    for number, (config, readback) in enumerate(zip(methods, readbacks), 1):
        start = time.perf_counter()
        images, result = toy.generate(model, prompts, seeds, config, guidance)
        seconds = time.perf_counter() - start
        pictures = to_uint8(images)
        regions = None if result.layout is None else result.layout.mask().cpu().numpy()
        rows.append(DemoRow(config.name, result.model_calls, result.stage_tokens, seconds,
                            speedup(config, full, steps, model_config, text), pictures, regions, readback))
        say(f"  [{number}/{len(methods)}] {config.name}: {result.model_calls} calls, {seconds:.1f} s")
    show_readback = any(row.readback for row in rows)
    base = rows[0]
    picture_rows = []
    for row in rows:
        label = f"{row.name}\n{row.calls} calls\nFLOPs {row.flops_speedup:.2f}x\nmeasured {base.seconds / row.seconds:.2f}x"
        if row.readback:
            label += f"\nread-back {row.readback['mean']:.2f}"
        picture_rows.append((label, row.pictures, row.regions))
    output.parent.mkdir(parents=True, exist_ok=True)
    comparison_grid(picture_rows, prompts, title=f"RALU on the toy shapes model ({toy.RESOLUTION} px); "
                    f"speedups against {base.name}",
                    legend="Cyan outlines: the low-resolution tokens RALU upsampled early (stage 2), chosen by the "
                           "edges of its stage-1 clean estimate. 'steps N': the stock schedule cut to the preset's "
                           "transformer FLOPs." + (f" Read-back: share of {study['captions']} held-out captions drawn as "
                                                   f"asked, from {study['source']}." if show_readback else "")).save(output)
    header = (f"{'method':<14}{'calls':>6}  {'tokens per stage':<17}{'wall s':>8}{'measured':>10}{'FLOPs':>8}"
              + (f"{'read-back ± 2 SE':>18}" if show_readback else ""))
    say("")
    say(header)
    say("-" * len(header))
    for row in rows:
        say(f"{row.name:<14}{row.calls:>6}  {' / '.join(map(str, row.tokens)):<17}{row.seconds:>8.2f}"
            f"{base.seconds / row.seconds:>9.2f}x{row.flops_speedup:>7.2f}x"
            + (f"{_readback_cell(row.readback):>18}" if show_readback else ""))
    say("")
    say("measured: wall time of the batch against the baseline's; FLOPs: the cost model's transformer ratio"
        + (f"; read-back: share of {study['captions']} held-out captions whose colours, shapes and relation "
           f"read back as asked (ralu.demo.shapes.check_prompt), from the shipped weights' quality study "
           f"({study['source']})" if show_readback else "") + ".")
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
