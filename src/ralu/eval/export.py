"""Export a generation folder in the layouts that GenEval's and T2I-CompBench's scripts read.

- GenEval (``evaluation/evaluate_images.py``): ``<out>/<method>/<index:05d>/metadata.jsonl`` (the prompt's
  metadata: ``tag``, ``include``, ``prompt``) and ``samples/<seed:04d>.png``;
- T2I-CompBench: ``<out>/<method>/samples/<prompt>_<index:06d>.png``.
Images are linked (hard links where possible, else copied).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .generate import read_manifest


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def export(out: Path, target: Path, layout: str, methods: Sequence[str] | None = None) -> Path:
    """Write ``target/<method>/...`` in ``layout`` ("geneval" or "t2i-compbench"); returns target."""
    out, target = Path(out), Path(target)
    rows = read_manifest(out)
    if layout not in ("geneval", "t2i-compbench"):
        raise ValueError(f"layout must be 'geneval' or 't2i-compbench', got {layout!r}")
    chosen = set(methods) if methods else None
    for row in rows:
        if chosen is not None and row["method"] not in chosen:
            continue
        folder = target / "".join(c if c.isalnum() or c in "-._" else "_" for c in row["method"])
        if layout == "geneval":
            item = folder / f"{row['prompt_index']:05d}"
            meta = {k: v for k, v in row.get("meta", {}).items() if k in ("tag", "include")}
            item.mkdir(parents=True, exist_ok=True)
            (item / "metadata.jsonl").write_text(json.dumps({**meta, "prompt": row["prompt"]}) + "\n")
            _place(out / row["path"], item / "samples" / f"{row['seed']:04d}.png")
        else:
            name = row["prompt"].replace("/", " ")[:200]
            _place(out / row["path"], folder / "samples" / f"{name}_{row['prompt_index'] * 1000 + row['seed']:06d}.png")
    return target
