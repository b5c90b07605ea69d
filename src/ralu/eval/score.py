"""``ralu eval score``: metrics for every image of a generation folder, and a per-method summary.

Writes ``scores.jsonl`` (the manifest row of each image with its per-image and paired scores) and
``summary.json`` (per method: images, model calls, FLOPs and speedup against the reference method,
latency, each metric's mean ± SE, the set metrics, and paired differences when asked for).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import stats
from .generate import read_manifest
from .metrics import Metric, resolve


def _load(out: Path, rows: Sequence[dict]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(out / r["path"]).convert("RGB")) for r in rows])


def _truth(rows: Sequence[dict]) -> np.ndarray | None:
    """The rendered ground truth of toy prompts (their scenes), or None for other prompts."""
    if not rows or rows[0].get("meta", {}).get("tag") != "toy":
        return None
    from ..demo.images import to_uint8
    from ..demo.shapes import render_batch, scenes

    import torch

    picked = []
    for r in rows:
        meta = r["meta"]
        picked.append(scenes(meta["scene_seed"], meta["index"] + 1)[meta["index"]])
    return to_uint8(torch.from_numpy(render_batch(picked, rows[0]["height"])))


def default_reference(rows: Sequence[dict]) -> str:
    baselines = [r["method"] for r in rows if r["method"].startswith("baseline:")]
    if not baselines:
        raise ValueError("no baseline:N method in the manifest: pass --reference METHOD (the images the paired and "
                         "set metrics compare against)")
    return max(baselines, key=lambda m: int(m.split(":")[1].split("+")[0].split("@")[0]))


# precision/recall (k = 3 nearest neighbours) needs k + 1 images in each set
SET_MINIMUM = 4


def score(out: Path, metric_names: Sequence[str], reference: str | None = None,
          pairs: Sequence[tuple[str, str]] = (), batch: int = 32, say: Callable[[str], None] = print) -> dict:
    """Score a generation folder; returns the summary (also written to ``summary.json``)."""
    out = Path(out)
    rows = read_manifest(out)
    metrics: list[Metric] = resolve(metric_names)
    reference = reference or default_reference(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} is not in the manifest; it has {methods}")
    for a, b in pairs:
        for m in (a, b):
            if m not in methods:
                raise ValueError(f"pair {a!r} vs {b!r}: {m!r} is not in the manifest")
    _merge_earlier(out, rows, reference)
    by_method = {m: [r for r in rows if r["method"] == m] for m in methods}
    fewest = min(len(group) for group in by_method.values())
    for metric in metrics:
        if metric.kind == "set" and fewest < SET_MINIMUM:
            raise ValueError(f"set metric {metric.name} (FID, KID, precision/recall with k=3) needs at least "
                             f"{SET_MINIMUM} images per method; the smallest method here has {fewest}")
    ref_rows = {(r["prompt_index"], r["seed"]): r for r in by_method[reference]}
    ref_images = None
    truth_cache: dict[str, np.ndarray | None] = {}
    set_results: dict[str, dict] = {m: dict(_earlier_sets(out, reference).get(m, {})) for m in methods}
    pair_sets: dict[tuple[str, str], dict] = {}
    for metric in metrics:
        fn = metric.fn()
        if metric.kind == "set" and pairs and getattr(fn, "features", None) is not None:
            say(f"scoring {metric.name} (paired KID differences against the truth)")
            cache: dict = {}
            for a, b in pairs:
                result = _paired_kid(out, by_method[a], by_method[b], fn.features, cache)
                if result is not None:
                    pair_sets.setdefault((a, b), {})[f"set:{metric.name}/kid/vs_truth"] = result
        say(f"scoring {metric.name} ({metric.kind})")
        for method in methods:
            group = by_method[method]
            if metric.kind == "set":
                images = _load(out, group)
                if ref_images is None:
                    ref_images = _load(out, by_method[reference])
                result = {"vs_reference": fn(images, ref_images)}
                if method not in truth_cache:
                    truth_cache[method] = _truth(group)
                if truth_cache[method] is not None:
                    result["vs_truth"] = fn(images, truth_cache[method])
                set_results[method][metric.name] = result
                continue
            for start in range(0, len(group), batch):
                chunk = group[start:start + batch]
                images = list(_load(out, chunk))
                if metric.kind == "image":
                    values = fn(images, [r["prompt"] for r in chunk])
                else:
                    missing = [r for r in chunk if (r["prompt_index"], r["seed"]) not in ref_rows]
                    if missing:
                        raise ValueError(f"{method}: {len(missing)} images have no {reference} image of the same "
                                         "prompt and seed to compare against")
                    refs = list(_load(out, [ref_rows[(r["prompt_index"], r["seed"])] for r in chunk]))
                    values = fn(images, refs)
                for row, value in zip(chunk, values):
                    if isinstance(value, dict):
                        for key, v in value.items():
                            row.setdefault("scores", {})[f"{metric.name}.{key}"] = v
                    else:
                        row.setdefault("scores", {})[metric.name] = value
    (out / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarise(rows, methods, reference, set_results, pairs, metrics, pair_sets)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_jsonable) + "\n")
    return summary


def _matched(first: Sequence[dict], second: Sequence[dict]) -> list[tuple[dict, dict]]:
    """(first's row, second's row) for every prompt and seed both have, in first's order."""
    index = {(r["prompt_index"], r["seed"]): r for r in second}
    return [(r, index[(r["prompt_index"], r["seed"])]) for r in first if (r["prompt_index"], r["seed"]) in index]


def _paired_kid(out: Path, first: Sequence[dict], second: Sequence[dict], features, cache: dict) -> dict | None:
    """KID(first, truth) − KID(second, truth) over the prompts and seeds both have, jackknife SE
    (:func:`ralu.eval.stats.kid_difference`); None without a rendered truth or with fewer than
    SET_MINIMUM matched images. ``cache`` keeps each image's (and truth's) features between pairs."""
    matched = _matched(first, second)
    if len(matched) < SET_MINIMUM:
        return None

    def of(rows: list[dict], truth: bool = False) -> np.ndarray | None:
        keys = [("truth", r["prompt_index"], r["seed"]) if truth else r["path"] for r in rows]
        missing = [(k, r) for k, r in zip(keys, rows) if k not in cache]
        if missing:
            pictures = _truth([r for _, r in missing]) if truth else _load(out, [r for _, r in missing])
            if pictures is None:
                return None
            cache.update(zip([k for k, _ in missing], features(pictures)))
        return np.stack([cache[k] for k in keys])

    truth = of([r for r, _ in matched], truth=True)
    if truth is None:
        return None
    return stats.kid_difference(of([r for r, _ in matched]), of([r for _, r in matched]), truth)


def _merge_earlier(out: Path, rows: Sequence[dict], reference: str) -> None:
    """Keep the scores an earlier ``ralu eval score`` wrote (another metric set, maybe from another
    environment), when it used the same reference."""
    path = out / "scores.jsonl"
    if not path.is_file() or _earlier_reference(out) != reference:
        return
    earlier = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            earlier[(row["method"], row["prompt_index"], row["seed"])] = row.get("scores", {})
    for row in rows:
        row["scores"] = dict(earlier.get((row["method"], row["prompt_index"], row["seed"]), {}))


def _earlier_reference(out: Path) -> str | None:
    path = out / "summary.json"
    return json.loads(path.read_text()).get("reference") if path.is_file() else None


def _earlier_sets(out: Path, reference: str) -> dict:
    if _earlier_reference(out) != reference:
        return {}
    methods = json.loads((out / "summary.json").read_text()).get("methods", {})
    return {m: entry.get("sets", {}) for m, entry in methods.items()}


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


def summarise(rows: Sequence[dict], methods: Sequence[str], reference: str, set_results: dict,
              pairs: Sequence[tuple[str, str]], metrics: Sequence[Metric], pair_sets: dict | None = None) -> dict:
    by_method = {m: [r for r in rows if r["method"] == m] for m in methods}
    keys = list(dict.fromkeys(k for r in rows for k in r.get("scores", {})))
    ref_flops = stats.mean_se([r.get("flops") for r in by_method[reference]])["mean"]
    higher = {m.name: m.higher for m in metrics}
    out = dict(reference=reference, metrics=keys, higher_is_better={k: _higher(k, higher) for k in keys},
               methods={})
    for m in methods:
        group = by_method[m]
        flops = stats.mean_se([r.get("flops") for r in group])["mean"]
        entry = dict(images=len(group), model_calls=stats.mean_se([r.get("model_calls") for r in group])["mean"],
                     flops=flops, speedup=ref_flops / flops if flops and ref_flops else None,
                     seconds=stats.mean_se([r.get("wall_seconds") for r in group]),
                     scores={k: stats.mean_se([_number(r.get("scores", {}).get(k)) for r in group]) for k in keys},
                     sets=set_results.get(m, {}))
        out["methods"][m] = entry
    out["pairs"] = []
    for a, b in pairs:
        matched = _matched(by_method[a], by_method[b])
        diffs = {k: stats.paired_difference([_number(x.get("scores", {}).get(k)) for x, _ in matched],
                                            [_number(y.get("scores", {}).get(k)) for _, y in matched]) for k in keys}
        diffs.update((pair_sets or {}).get((a, b), {}))
        out["pairs"].append(dict(first=a, second=b, differences=diffs))
    return out


def _higher(key: str, higher: dict[str, bool]) -> bool:
    base = key.split(".")[0]
    if key.endswith((".block4", ".block8", ".fringe")):
        return False
    return higher.get(base, True)


def _number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None if value is None else float(value)
    value = float(value)
    return value if math.isfinite(value) else None
