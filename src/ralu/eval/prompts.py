"""Prompt sets for evaluation: built-in sets written for this project, and prompt files.

Each prompt is a :class:`Prompt`: its text and, for templated sets, the metadata a checker needs
(GenEval's ``tag`` / ``include`` fields). Built-in sets:
- ``geneval``: GenEval-style templated prompts (single object, two objects, counting, colours, colour
  attribution, positions), 80 COCO object classes, deterministic;
- ``quick``: 16 diverse prompts for a quick look;
- ``toy`` / ``toy:N``: captions of the toy model's held-out scenes (``ralu.demo.shapes``).
A file: ``.txt`` (one prompt per line), ``.json`` (a list of strings or of objects) or ``.jsonl``,
objects read from the field ``caption``, ``prompt`` or ``text``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
POSITIONS = ("left of", "right of", "above", "below")
NUMBERS = {2: "two", 3: "three", 4: "four"}
QUICK = (
    "a photo of a red fox sitting in fresh snow, morning light",
    "a bowl of ramen with a soft-boiled egg, top view",
    "an astronaut riding a horse on the moon, digital art",
    "a cozy reading nook with a cat asleep on a stack of books",
    "a lighthouse on a cliff during a storm, oil painting",
    "a close-up portrait of an old fisherman with a grey beard",
    "a red bicycle leaning against a yellow wall",
    "three blue cups on a wooden table",
    "a street sign that says 'RALU' in bold letters",
    "a futuristic city at night with flying cars and neon lights",
    "a watercolor painting of tulips in a glass vase",
    "a golden retriever puppy playing with a tennis ball on grass",
    "a minimalist logo of a mountain and a sun, flat vector",
    "a dog to the left of a cat, both sitting on a sofa",
    "an aerial view of a winding river through an autumn forest",
    "a plate of sushi with chopsticks, studio lighting",
)


@dataclass(frozen=True)
class Prompt:
    """A prompt and its metadata (GenEval-style ``tag`` and ``include`` for templated prompts)."""

    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def geneval_style(count: int = 500, seed: int = 0) -> list[Prompt]:
    """GenEval-style templated prompts, the six task kinds in turn, deterministic for (count, seed)."""
    rng = random.Random(seed)
    out: list[Prompt] = []
    kinds = ("single_object", "two_object", "counting", "colors", "color_attr", "position")
    while len(out) < count:
        kind = kinds[len(out) % len(kinds)]
        a, b = rng.sample(COCO_CLASSES, 2)
        if kind == "single_object":
            out.append(Prompt(f"a photo of {_a(a)}", dict(tag=kind, include=[dict(**{"class": a}, count=1)])))
        elif kind == "two_object":
            out.append(Prompt(f"a photo of {_a(a)} and {_a(b)}",
                              dict(tag=kind, include=[dict(**{"class": a}, count=1), dict(**{"class": b}, count=1)])))
        elif kind == "counting":
            n = rng.choice(tuple(NUMBERS))
            out.append(Prompt(f"a photo of {NUMBERS[n]} {a}s", dict(tag=kind, include=[dict(**{"class": a}, count=n)])))
        elif kind == "colors":
            c = rng.choice(COLOURS)
            out.append(Prompt(f"a photo of {_a(c + ' ' + a)}",
                              dict(tag=kind, include=[dict(**{"class": a}, count=1, color=c)])))
        elif kind == "color_attr":
            c, d = rng.sample(COLOURS, 2)
            out.append(Prompt(f"a photo of {_a(c + ' ' + a)} and {_a(d + ' ' + b)}",
                              dict(tag=kind, include=[dict(**{"class": a}, count=1, color=c),
                                                      dict(**{"class": b}, count=1, color=d)])))
        else:
            p = rng.choice(POSITIONS)
            out.append(Prompt(f"a photo of {_a(a)} {p} {_a(b)}",
                              dict(tag=kind, include=[dict(**{"class": b}, count=1),
                                                      dict(**{"class": a}, count=1, position=[p.split()[0], 0])])))
    return out


def toy_prompts(count: int = 256, seed: int = 2026) -> list[Prompt]:
    """Captions of held-out toy scenes (``shapes.scenes(seed, count)``; training uses other seeds)."""
    from ..demo.shapes import scenes

    return [Prompt(s.caption, dict(tag="toy", scene_seed=seed, index=i)) for i, s in enumerate(scenes(seed, count))]


def load(spec: str) -> list[Prompt]:
    """A built-in set (``geneval``, ``geneval:N``, ``quick``, ``toy``, ``toy:N``) or a prompt file."""
    name, _, number = spec.partition(":")
    if name in ("geneval", "quick", "toy") and not Path(spec).exists():
        if number and not number.isdigit():
            raise ValueError(f"prompts: the count after {name}: must be a positive integer, got {spec!r}")
        count = int(number) if number else None
        if name == "geneval":
            return geneval_style(count or 500)
        if name == "toy":
            return toy_prompts(count or 256)
        return [Prompt(p, dict(tag="quick")) for p in QUICK[:count]]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"prompts must be geneval[:N], quick[:N], toy[:N] or a .txt/.json/.jsonl file, got {spec!r}")
    if path.suffix == ".txt":
        prompts = [Prompt(line.strip()) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix in (".json", ".jsonl"):
        text = path.read_text()
        items = json.loads(text) if path.suffix == ".json" else [json.loads(l) for l in text.splitlines() if l.strip()]
        if isinstance(items, dict):
            items = items.get("annotations") or items.get("prompts") or list(items.values())
        prompts = [_from_item(item, path) for item in items]
    else:
        raise ValueError(f"prompts file must end in .txt, .json or .jsonl, got {path.name!r}")
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompts")
    return prompts


def _from_item(item, path: Path) -> Prompt:
    if isinstance(item, str):
        return Prompt(item)
    if isinstance(item, dict):
        for key in ("caption", "prompt", "text"):
            if isinstance(item.get(key), str):
                return Prompt(item[key], {k: v for k, v in item.items() if k != key})
    raise ValueError(f"{path}: every entry must be a string or an object with a 'caption', 'prompt' or 'text' "
                     f"field, got {str(item)[:80]!r}")
