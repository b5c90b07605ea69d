"""Generation for evaluation: every method on the same prompts and seeds, sharded over processes, resumable.

Work is cut into batches that depend only on the method list, the prompts, the seeds and the batch
size (never on the number of processes), and each sample draws its noise from its own generator
seeded by its seed: the image of a (method, prompt, seed) is the same on 1 GPU or 8. Under
``accelerate launch`` the batches are split with ``PartialState().split_between_processes``; each
process appends one JSONL row per image to its own manifest, and the main process merges them
into ``manifest.jsonl``. An image already on disk is not generated again.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .methods import Method
from .prompts import Prompt


@dataclass(frozen=True)
class Batch:
    method: Method
    items: tuple[tuple[int, int], ...]  # (prompt index, seed)


class Runner(Protocol):
    """Generates images of one model: a RALU pipeline, or the toy model."""

    name: str
    size: tuple[int, int]

    def generate(self, method: Method, prompts: Sequence[str], seeds: Sequence[int]) -> tuple[list[np.ndarray], dict]:
        """uint8 images (H, W, 3), one per (prompt, seed), and a dict of per-image facts
        (model_calls, flops, skipped)."""


def batches(methods: Sequence[Method], prompts: Sequence[Prompt], seeds: Sequence[int], batch_size: int) -> list[Batch]:
    """All work, in a fixed order: per method, (prompt, seed) pairs in prompt-major order, cut into batches."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = [(i, s) for i in range(len(prompts)) for s in seeds]
    return [Batch(m, tuple(pairs[k:k + batch_size])) for m in methods for k in range(0, len(pairs), batch_size)]


def image_path(out: Path, method: Method, prompt_index: int, seed: int) -> Path:
    return out / "images" / method.slug / f"{prompt_index:05d}_{seed}.png"


def versions() -> dict[str, str]:
    import diffusers
    import torch

    from .. import __version__

    return dict(ralu=__version__, torch=torch.__version__, diffusers=diffusers.__version__,
                python=platform.python_version())


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS of the process so far


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def noise_seed(prompt_index: int, seed: int) -> int:
    """The generator seed of one image: a different noise for every caption and seed (``--seeds 0`` must not
    give all captions one noise, or a set's diversity would come from the captions alone), the same across
    methods, so that paired metrics compare images of the same noise. Recorded in the manifest."""
    return seed * 1_000_003 + prompt_index


def run(runner: Runner, methods: Sequence[Method], prompts: Sequence[Prompt], seeds: Sequence[int], out: Path,
        batch_size: int = 4, say: Callable[[str], None] = print, state=None) -> Path:
    """Generate what is missing under ``out``; returns the merged manifest's path (on every process).

    state: an ``accelerate.PartialState`` (made here when accelerate is installed and None is given).
    """
    from PIL import Image

    out = Path(out)
    work = batches(methods, prompts, seeds, batch_size)
    state = state if state is not None else _state()
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    mine = _split(work, state)
    (out / "images").mkdir(parents=True, exist_ok=True)
    manifest = out / f"manifest.rank{rank}.jsonl"
    info = versions()
    done_before = sum(all(image_path(out, b.method, i, s).is_file() for i, s in b.items) for b in mine)
    say(f"[{rank + 1}/{world}] {len(mine)} of {len(work)} batches here, {done_before} already on disk")
    for number, batch in enumerate(mine, 1):
        paths = [image_path(out, batch.method, i, s) for i, s in batch.items]
        if all(p.is_file() for p in paths):
            continue
        _reset_peak()
        start = time.perf_counter()
        images, facts = runner.generate(batch.method, [prompts[i].text for i, _ in batch.items],
                                        [noise_seed(i, s) for i, s in batch.items])
        seconds = time.perf_counter() - start
        memory = _peak_memory_mb()
        rows = []
        for (i, s), image, path in zip(batch.items, images, paths):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.png")
            Image.fromarray(image).save(tmp)
            tmp.replace(path)
            rows.append(dict(method=batch.method.spec, prompt=prompts[i].text, prompt_index=i, seed=s,
                             noise_seed=noise_seed(i, s),
                             height=image.shape[0], width=image.shape[1], model_calls=facts.get("model_calls"),
                             flops=facts.get("flops"), skipped=facts.get("skipped"),
                             wall_seconds=seconds / len(batch.items), batch_size=len(batch.items),
                             peak_memory_mb=round(memory, 1), path=str(path.relative_to(out)), model=runner.name,
                             versions=info, meta=prompts[i].meta))
        with manifest.open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        say(f"[{rank + 1}/{world}] batch {number}/{len(mine)}: {batch.method.spec}, {len(batch.items)} images, "
            f"{seconds:.1f} s")
    if state is not None:
        state.wait_for_everyone()
    merged = out / "manifest.jsonl"
    if rank == 0:
        merge_manifests(out, methods)
    if state is not None:
        state.wait_for_everyone()
    return merged


def _state():
    """accelerate's PartialState, on the CPU (gloo) where there is no CUDA or accelerate launch --cpu asked for it."""
    try:
        from accelerate import PartialState
    except ImportError:
        return None
    import os

    import torch

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _split(work: list[Batch], state) -> list[Batch]:
    if state is None or state.num_processes == 1:
        return work
    with state.split_between_processes(work) as part:
        return list(part)


def merge_manifests(out: Path, methods: Sequence[Method] | None = None) -> Path:
    """Merge ``manifest.rank*.jsonl`` (and an earlier ``manifest.jsonl``) into ``manifest.jsonl``: one row per
    (method, prompt index, seed), the newest, ordered by method then prompt then seed."""
    out = Path(out)
    rows: dict[tuple, dict] = {}
    for path in [out / "manifest.jsonl", *sorted(out.glob("manifest.rank*.jsonl"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    rows[(row["method"], row["prompt_index"], row["seed"])] = row
    order = {m.spec: k for k, m in enumerate(methods or [])}
    ordered = sorted(rows.values(), key=lambda r: (order.get(r["method"], len(order)), r["method"], r["prompt_index"],
                                                   r["seed"]))
    merged = out / "manifest.jsonl"
    tmp = merged.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in ordered))
    tmp.replace(merged)
    for path in out.glob("manifest.rank*.jsonl"):
        path.unlink()
    return merged


def read_manifest(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / "manifest.jsonl"
    if not path.is_file():
        raise ValueError(f"{out} has no manifest.jsonl: run `ralu eval generate ... --out {out}` first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
