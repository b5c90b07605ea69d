"""``ralu eval report``: the paper's table (method, latency, TFLOPs, speedup, metrics ± SE) and plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path


def _fmt(entry: dict | None, digits: int = 3) -> str:
    if not entry or entry.get("n", 0) == 0 or entry.get("mean") is None or not math.isfinite(entry["mean"]):
        return "–"
    se = entry.get("se")
    return f"{entry['mean']:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None and math.isfinite(se) else "")


def _set_value(sets: dict, metric: str, key: str, against: str) -> str:
    result = sets.get(metric, {}).get(against)
    if not result:
        return "–"
    value, se = result.get(key), result.get(f"{key}_se")
    if value is None:
        return "–"
    scale = 1000.0 if key == "kid" else 1.0
    text = f"{value * scale:.3g}"
    return text + (f" ± {se * scale:.2g}" if se is not None and math.isfinite(se) else "")


def markdown(summary: dict, title: str = "Evaluation", columns: Sequence[str] | None = None) -> str:
    """The summary as markdown: one row per method; scores as mean ± SE (a 2-SE interval is twice that)."""
    keys = list(columns) if columns else summary["metrics"]
    sets = sorted({(metric, against) for m in summary["methods"].values() for metric, r in m["sets"].items()
                   for against in r})
    header = ["method", "calls", "latency s/img", "TFLOPs/img", "speedup"] + [
        f"{k} {'↑' if summary['higher_is_better'].get(k, True) else '↓'}" for k in keys]
    for metric, against in sets:
        label = "ref" if against == "vs_reference" else "truth"
        header += [f"{metric} FID vs {label} ↓", f"{metric} KID×1e3 vs {label} ↓", f"{metric} prec/rec vs {label}"]
    lines = [f"# {title}", "", f"Reference (speedup 1x, paired and set metrics): `{summary['reference']}`. "
             "Scores: mean ± 1 SE over images; FID ± bootstrap SE, KID ± delete-one jackknife SE.", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, m in summary["methods"].items():
        row = [f"`{name}`", f"{m['model_calls']:.0f}" if m["model_calls"] else "–", _fmt(m["seconds"], 2),
               f"{m['flops'] / 1e12:.3g}" if m["flops"] else "–", f"{m['speedup']:.2f}x" if m["speedup"] else "–"]
        row += [_fmt(m["scores"].get(k)) for k in keys]
        for metric, against in sets:
            result = m["sets"].get(metric, {}).get(against, {})
            pr = (f"{result['precision']:.2f} / {result['recall']:.2f}" if result else "–")
            row += [_set_value(m["sets"], metric, "fid", against), _set_value(m["sets"], metric, "kid", against), pr]
        lines.append("| " + " | ".join(row) + " |")
    if summary.get("pairs"):
        set_keys = list(dict.fromkeys(k for p in summary["pairs"] for k in p["differences"] if k.startswith("set:")))
        labels = keys + [k.replace("set:", "").replace("/kid/vs_truth", " KID vs truth") for k in set_keys]
        lines += ["", "## Paired differences (first − second, mean ± 2 SE over the same prompts and seeds)", "",
                  "KID vs truth: the difference of the two sets' KID against the rendered truth of the same "
                  "captions, ± 2 delete-one jackknife SE over the captions (lower is better).", "",
                  "| first | second | " + " | ".join(labels) + " |", "|" + " --- |" * (len(labels) + 2)]
        for p in summary["pairs"]:
            cells = []
            for k in keys + set_keys:
                d = p["differences"].get(k)
                cells.append("–" if not d or d["n"] == 0 or not math.isfinite(d["se"]) else
                             f"{d['mean']:+.3f} ± {2 * d['se']:.3f}" + (" *" if abs(d["mean"]) > 2 * d["se"] else ""))
            lines.append(f"| `{p['first']}` | `{p['second']}` | " + " | ".join(cells) + " |")
        lines += ["", "`*`: the difference is larger than 2 SE."]
    return "\n".join(lines) + "\n"


SERIES = {"baseline": "baseline", "steps": "step cut (Euler)", "unipc": "step cut (UniPC)", "dpm": "step cut (DPM++)",
          "hires": "hires-fix", "naive": "naive upsampling",
          "mrflow": "MrFlow (refine)", "plan": "RALU planner",
          "ralu": "RALU (custom schedules)"}  # a preset name falls through to "RALU"


def series_label(spec: str) -> str:
    """The plot series a method spec belongs to: its kind (a preset is "RALU"), with its @options and +cache,
    so that one variant at several costs draws one line."""
    core, at, options = spec.partition("@")
    core, plus, cache = core.partition("+")
    if at:
        options, plus2, cache2 = options.partition("+")
        plus, cache = plus or plus2, cache or cache2
    head, _, rest = core.partition(":")
    label = SERIES.get(head, "RALU")
    if head == "mrflow" and rest.count(":") == 2:  # one series per refinement noise level, across costs
        label += f", S={rest.split(':')[1]}"
    return label + (f" @{options}" if at else "") + (f" +{cache}" if plus else "")


def plot(summary: dict, path: Path, keys: Sequence[str], groups: dict[str, str] | None = None,
         title: str = "quality vs speedup") -> Path:
    """Quality-vs-speedup scatter, one panel per metric; ``groups`` maps a method to its series label
    (default: :func:`series_label`); the legend sits right of the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if k in summary["metrics"] or "." in k or k.startswith("set:")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    groups = groups or {}
    for ax, key in zip(axes[0], keys):
        series: dict[str, list] = {}
        for name, m in summary["methods"].items():
            if not m["speedup"]:
                continue
            if key.startswith("set:"):
                metric, value, against = key[4:].split("/")
                result = m["sets"].get(metric, {}).get(against)
                if not result:
                    continue
                y, err = result[value], result.get(f"{value}_se") or 0.0
            else:
                entry = m["scores"].get(key)
                if not entry or entry["n"] == 0:
                    continue
                y, err = entry["mean"], entry["se"] if math.isfinite(entry["se"]) else 0.0
            series.setdefault(groups.get(name) or series_label(name), []).append((m["speedup"], y, 2 * err, name))
        for label, points in series.items():
            points.sort()
            xs, ys, es = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label, linestyle="-" if len(xs) > 1 else "none")
        ax.set_xlabel("FLOPs speedup (x)")
        ax.set_ylabel(key.replace("set:", ""))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def report(out: Path, title: str = "Evaluation", keys: Sequence[str] | None = None) -> Path:
    """``report.md`` and ``quality_vs_speedup.png`` next to ``summary.json``."""
    out = Path(out)
    path = out / "summary.json"
    if not path.is_file():
        raise ValueError(f"{out} has no summary.json: run `ralu eval score {out} --metrics ...` first")
    summary = json.loads(path.read_text())
    text = markdown(summary, title)
    (out / "report.md").write_text(text)
    plot(summary, out / "quality_vs_speedup.png", keys or summary["metrics"][:4])
    return out / "report.md"
